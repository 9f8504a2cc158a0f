"""OpenAIChatModel: the real `openai` SDK over real HTTP to a scripted server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.base import ModelTurn, ProviderError
from minidevin.runtime.providers.openai_chat import OpenAIChatModel, openai_client

API_KEY = "sk-test-SECRETKEY0123456789"
MESSAGES = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "List the files."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAIServer]:
    async with ScriptedOpenAIServer() as scripted:
        yield scripted


def make_client(server: ScriptedOpenAIServer, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=API_KEY, base_url=server.base_url, max_retries=max_retries, timeout=10.0
    )


@pytest.fixture
def client(server: ScriptedOpenAIServer) -> Iterator[openai.OpenAI]:
    sdk = make_client(server)
    yield sdk
    sdk.close()


async def run_turn(
    model: OpenAIChatModel,
    tools: list[dict[str, Any]] | None = None,
    cancel: CancelToken | None = None,
) -> tuple[ModelTurn, list[str]]:
    tokens: list[str] = []
    turn = await asyncio.to_thread(
        model.stream_turn, MESSAGES, tools or [], tokens.append, cancel or CancelToken()
    )
    return turn, tokens


async def test_streamed_tokens_arrive_in_order(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    server.script(ScriptedTurn(text=text, chunk_delay=0.02))
    arrivals: list[tuple[float, str]] = []
    model = OpenAIChatModel("gpt-test", client)

    turn = await asyncio.to_thread(
        model.stream_turn,
        MESSAGES,
        [],
        lambda token: arrivals.append((time.monotonic(), token)),
        CancelToken(),
    )

    tokens = [token for _, token in arrivals]
    assert tokens == ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog"]
    assert "".join(tokens) == turn.text == text
    assert turn.tool_calls == ()
    assert turn.finish_reason == "stop"
    # Tokens were handed over as they streamed, not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.05


async def test_several_tool_calls_in_one_turn(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(
        ScriptedTurn(
            text="Let me look.",
            tool_calls=[
                ("read_file", {"path": "src/main.py", "limit": 200}),
                ("run_shell", {"command": "ls -la && git status --short"}),
                ("noop", "{}"),
            ],
        )
    )
    turn, tokens = await run_turn(OpenAIChatModel("gpt-test", client), tools=TOOLS)

    assert "".join(tokens) == turn.text == "Let me look."
    assert turn.finish_reason == "tool_calls"
    assert [call.id for call in turn.tool_calls] == ["call_1", "call_2", "call_3"]
    assert [call.name for call in turn.tool_calls] == ["read_file", "run_shell", "noop"]
    assert json.loads(turn.tool_calls[0].arguments) == {"path": "src/main.py", "limit": 200}
    assert json.loads(turn.tool_calls[1].arguments) == {"command": "ls -la && git status --short"}
    assert turn.tool_calls[2].arguments == "{}"
    message = turn.as_message()
    assert message["tool_calls"][1]["function"]["name"] == "run_shell"


async def test_usage_is_recorded(server: ScriptedOpenAIServer, client: openai.OpenAI) -> None:
    server.script(ScriptedTurn(text="ok", prompt_tokens=1234, completion_tokens=56))
    turn, _ = await run_turn(OpenAIChatModel("gpt-test", client))
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (1234, 56)


async def test_a_server_that_streams_no_usage_is_counted_approximately_and_says_so(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(ScriptedTurn(text="x" * 400, no_usage=True))
    turn, _ = await run_turn(OpenAIChatModel("gpt-test", client))
    assert turn.usage.estimated
    assert turn.usage.completion_tokens == 100  # about 4 characters a token
    sent = len(json.dumps(MESSAGES, ensure_ascii=False)) + len(json.dumps([]))
    assert turn.usage.prompt_tokens == -(-sent // 4) > 0
    server.script(ScriptedTurn(text="ok", prompt_tokens=7, completion_tokens=3))
    turn, _ = await run_turn(OpenAIChatModel("gpt-test", client))
    assert not turn.usage.estimated and turn.usage.prompt_tokens == 7


async def test_request_carries_messages_tools_and_model(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(ScriptedTurn(text="ok"))
    model = OpenAIChatModel("fast", client, api_model="gpt-4.1-mini")
    await run_turn(model, tools=TOOLS)

    assert model.model_id == "fast"
    [body] = server.requests
    assert body["model"] == "gpt-4.1-mini"
    assert body["messages"] == MESSAGES
    assert body["tools"] == TOOLS
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert server.authorization == f"Bearer {API_KEY}"


async def test_tools_omitted_when_empty(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(ScriptedTurn(text="ok"))
    await run_turn(OpenAIChatModel("gpt-test", client), tools=[])
    [body] = server.requests
    assert "tools" not in body
    assert body["model"] == "gpt-test"


def _error_turn(status: int, code: str | None = None, **kwargs: Any) -> ScriptedTurn:
    message = f"Something is wrong with key {API_KEY} (status {status})"
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return ScriptedTurn(error_status=status, error_body={"error": error}, **kwargs)


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (_error_turn(401, "invalid_api_key"), "PROVIDER_AUTH_FAILED"),
        (_error_turn(403), "PROVIDER_AUTH_FAILED"),
        (
            _error_turn(429, "rate_limit_exceeded", headers={"Retry-After": "1"}),
            "PROVIDER_RATE_LIMITED",
        ),
        (_error_turn(500), "PROVIDER_UNAVAILABLE"),
        (_error_turn(503), "PROVIDER_UNAVAILABLE"),
        (_error_turn(400, "context_length_exceeded"), "CONTEXT_LENGTH_EXCEEDED"),
        (_error_turn(400, "invalid_value"), "PROVIDER_BAD_REQUEST"),
        (_error_turn(404, "model_not_found"), "PROVIDER_BAD_REQUEST"),
        (_error_turn(422), "PROVIDER_BAD_REQUEST"),
        (_error_turn(409), "PROVIDER_ERROR"),
    ],
    ids=lambda value: str(value.error_status) if isinstance(value, ScriptedTurn) else value,
)
async def test_http_errors_map_to_provider_codes(
    server: ScriptedOpenAIServer, client: openai.OpenAI, turn: ScriptedTurn, expected: str
) -> None:
    server.script(turn)
    with pytest.raises(ProviderError) as caught:
        await run_turn(OpenAIChatModel("gpt-test", client))

    assert caught.value.code == expected
    assert len(server.requests) == 1  # max_retries=0: no retry
    for text in (str(caught.value), caught.value.message, repr(caught.value)):
        assert API_KEY not in text
        assert "SECRETKEY" not in text


async def test_context_length_detected_from_message_alone(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    body = {"error": {"message": "This model's maximum context length is 8192 tokens."}}
    server.script(ScriptedTurn(error_status=400, error_body=body))
    with pytest.raises(ProviderError) as caught:
        await run_turn(OpenAIChatModel("gpt-test", client))
    assert caught.value.code == "CONTEXT_LENGTH_EXCEEDED"


async def test_sdk_retries_a_transient_error(server: ScriptedOpenAIServer) -> None:
    retry = {"x-should-retry": "true", "retry-after-ms": "10"}
    server.script([_error_turn(500, headers=retry), ScriptedTurn(text="recovered")])
    sdk = make_client(server, max_retries=1)
    try:
        turn, _ = await run_turn(OpenAIChatModel("gpt-test", sdk))
    finally:
        sdk.close()
    assert turn.text == "recovered"
    assert len(server.requests) == 2


async def test_dropped_connection_mid_stream(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(ScriptedTurn(text="one two three four five six", drop_midway=True, drop_after=3))
    tokens: list[str] = []
    model = OpenAIChatModel("gpt-test", client)
    with pytest.raises(ProviderError) as caught:
        await asyncio.to_thread(model.stream_turn, MESSAGES, [], tokens.append, CancelToken())
    assert caught.value.code == "PROVIDER_UNAVAILABLE"
    assert tokens == ["one", " two", " three"]
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("mode", ["eof", "garbage"])
async def test_truncated_or_malformed_stream(
    server: ScriptedOpenAIServer, client: openai.OpenAI, mode: str
) -> None:
    server.script(ScriptedTurn(text="one two three", drop_midway=True, drop_mode=mode))
    with pytest.raises(ProviderError) as caught:
        await run_turn(OpenAIChatModel("gpt-test", client))
    assert caught.value.code == "PROVIDER_UNAVAILABLE"


async def test_cancel_while_server_stalls_mid_stream(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    server.script(ScriptedTurn(text="thinking very hard", stall=True))
    cancel = CancelToken()
    first_token = threading.Event()
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        first_token.set()

    model = OpenAIChatModel("gpt-test", client)
    worker = asyncio.create_task(
        asyncio.to_thread(model.stream_turn, MESSAGES, [], on_token, cancel)
    )
    await server.wait_for_requests(1, timeout=5)
    assert await asyncio.to_thread(first_token.wait, 5)
    assert not worker.done()

    started = time.monotonic()
    await asyncio.to_thread(cancel.cancel)  # from another thread, like the actor would
    with pytest.raises(Cancelled):
        await asyncio.wait_for(worker, timeout=5)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert tokens == ["thinking"]


async def test_cancelled_before_start_sends_nothing(
    server: ScriptedOpenAIServer, client: openai.OpenAI
) -> None:
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        await run_turn(OpenAIChatModel("gpt-test", client), cancel=cancel)
    assert server.requests == []


async def test_concurrent_turns_with_a_responder() -> None:
    def responder(body: dict[str, Any]) -> ScriptedTurn:
        return ScriptedTurn(text=f"echo: {body['messages'][-1]['content']}")

    async with ScriptedOpenAIServer(responder=responder) as server:
        sdk = make_client(server)
        model = OpenAIChatModel("gpt-test", sdk)
        try:
            turns = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        model.stream_turn,
                        [{"role": "user", "content": f"task {i}"}],
                        [],
                        lambda _token: None,
                        CancelToken(),
                    )
                    for i in range(4)
                )
            )
        finally:
            sdk.close()
        await server.wait_for_requests(4, timeout=5)
    assert [turn.text for turn in turns] == [f"echo: task {i}" for i in range(4)]


def test_threaded_server_serves_a_sync_caller_non_streaming() -> None:
    with ScriptedOpenAIServer() as server:
        server.script(ScriptedTurn(text="plain answer", tool_calls=[("ls", {"path": "."})]))
        with openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0) as sdk:
            completion = sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
        server.wait_for_requests_sync(1, timeout=5)
    message = completion.choices[0].message
    assert message.content == "plain answer"
    assert message.tool_calls is not None
    assert message.tool_calls[0].id == "call_1"
    assert completion.usage is not None and completion.usage.total_tokens == 15


def test_openai_client_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    sdk = openai_client(max_retries=0, timeout=5.0)
    assert sdk.api_key == "sk-from-env"
    assert str(sdk.base_url).startswith("http://127.0.0.1:9/v1")
    assert sdk.max_retries == 0
    sdk.close()

    explicit = openai_client(api_key="sk-explicit", base_url="http://localhost:1/v1")
    assert explicit.api_key == "sk-explicit"
    assert str(explicit.base_url).startswith("http://localhost:1/v1")
    explicit.close()


def test_openai_client_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError) as caught:
        openai_client()
    assert caught.value.code == "PROVIDER_NOT_CONFIGURED"
