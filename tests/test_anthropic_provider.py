"""AnthropicModel: the real `anthropic` SDK over real HTTP to a scripted server."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest
from scripted_anthropic import ScriptedAnthropicServer, ScriptedAnthropicTurn, error_body
from scripted_provider import ScriptedTurn

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.anthropic_messages import (
    AnthropicModel,
    anthropic_client,
    to_anthropic_messages,
)
from minidevin.runtime.providers.base import ModelTurn, ProviderError

API_KEY = "sk-ant-test-SECRETKEY0123456789"
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
    },
    {
        "type": "function",
        "function": {
            "name": "run_shell",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    },
]
# An OpenAI-format conversation: two tool calls, their results, then the user speaks again.
CONVERSATION = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the failing test."},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "calc.py"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "run_shell", "arguments": '{"command": "pytest -q"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "def add(a, b): return a - b"},
    {"role": "tool", "tool_call_id": "call_2", "content": "1 failed"},
    {"role": "user", "content": "Hurry up, please."},
    {"role": "system", "content": "Be brief."},
]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedAnthropicServer]:
    async with ScriptedAnthropicServer() as scripted:
        yield scripted


def make_client(server: ScriptedAnthropicServer, max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=API_KEY, base_url=server.base_url, max_retries=max_retries, timeout=10.0
    )


@pytest.fixture
def client(server: ScriptedAnthropicServer) -> Iterator[anthropic.Anthropic]:
    sdk = make_client(server)
    yield sdk
    sdk.close()


async def run_turn(
    model: AnthropicModel,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    cancel: CancelToken | None = None,
) -> tuple[ModelTurn, list[str]]:
    tokens: list[str] = []
    turn = await asyncio.to_thread(
        model.stream_turn,
        messages or MESSAGES,
        tools or [],
        tokens.append,
        cancel or CancelToken(),
    )
    return turn, tokens


async def test_streamed_tokens_arrive_in_order(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    server.script(ScriptedTurn(text=text, chunk_delay=0.02))
    arrivals: list[tuple[float, str]] = []
    model = AnthropicModel("claude-test", client)

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
    assert turn.finish_reason == "end_turn"
    # Tokens were handed over as they streamed, not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.05


async def test_several_tool_use_blocks_in_one_turn(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(
        ScriptedTurn(
            text="Let me look.",
            tool_calls=[
                ("read_file", {"path": "src/main.py", "limit": 200}),
                ("run_shell", {"command": "ls -la && git status --short"}),
                ("noop", ""),
            ],
        )
    )
    turn, tokens = await run_turn(AnthropicModel("claude-test", client), tools=TOOLS)

    assert "".join(tokens) == turn.text == "Let me look."
    assert turn.finish_reason == "tool_use"
    assert [call.id for call in turn.tool_calls] == ["toolu_1", "toolu_2", "toolu_3"]
    assert [call.name for call in turn.tool_calls] == ["read_file", "run_shell", "noop"]
    assert json.loads(turn.tool_calls[0].arguments) == {"path": "src/main.py", "limit": 200}
    assert json.loads(turn.tool_calls[1].arguments) == {"command": "ls -la && git status --short"}
    assert turn.tool_calls[2].arguments == "{}"  # no input_json_delta text at all
    message = turn.as_message()
    assert message["tool_calls"][1]["function"]["name"] == "run_shell"


async def test_scripted_stream_follows_the_wire_protocol(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    arguments = {"path": "src/main.py", "limit": 200}
    server.script(ScriptedTurn(text="Hi you", tool_calls=[("read_file", arguments)] * 2))
    stream = await asyncio.to_thread(
        client.messages.create,
        model="claude-test",
        max_tokens=100,
        messages=[MESSAGES[1]],
        stream=True,
    )
    events = await asyncio.to_thread(list, stream)  # the SDK skips `ping`s

    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [event for event in events if event.type == "content_block_start"]
    assert [start.content_block.type for start in starts] == ["text", "tool_use", "tool_use"]
    assert kinds.count("content_block_stop") == 3
    for index in (1, 2):
        pieces = [
            event.delta.partial_json
            for event in events
            if event.type == "content_block_delta" and event.index == index
        ]
        assert len(pieces) > 1  # the input is split over several input_json_delta
        assert json.loads("".join(pieces)) == arguments


async def test_usage_counts_cache_tokens_as_prompt(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(
        [
            ScriptedTurn(text="ok", prompt_tokens=1234, completion_tokens=56),
            ScriptedAnthropicTurn(
                text="ok",
                prompt_tokens=100,
                completion_tokens=7,
                cache_creation_input_tokens=20,
                cache_read_input_tokens=3000,
            ),
        ]
    )
    model = AnthropicModel("claude-test", client)
    first, _ = await run_turn(model)
    second, _ = await run_turn(model)
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (1234, 56)
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (3120, 7)


async def test_request_translates_an_openai_conversation(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(ScriptedTurn(text="ok"))
    model = AnthropicModel("smart", client, api_model="claude-sonnet-test", max_tokens=1024)
    await run_turn(model, messages=CONVERSATION, tools=TOOLS)

    assert model.model_id == "smart"
    [body] = server.requests
    assert body["model"] == "claude-sonnet-test"
    assert body["max_tokens"] == 1024
    assert body["stream"] is True
    assert body["system"] == "You are a coding agent.\n\nBe brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "read_file",
                    "input": {"path": "calc.py"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "run_shell",
                    "input": {"command": "pytest -q"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": "def add(a, b): return a - b",
                },
                {"type": "tool_result", "tool_use_id": "call_2", "content": "1 failed"},
                {"type": "text", "text": "Hurry up, please."},
            ],
        },
    ]
    roles = [message["role"] for message in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert body["tools"] == [
        {
            "name": "read_file",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
        {
            "name": "run_shell",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    ]
    # anthropic 2.x sends the key as a bearer token, not as `x-api-key`.
    assert server.api_key == API_KEY


async def test_tools_and_system_omitted_when_empty(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(ScriptedTurn(text="ok"))
    await run_turn(AnthropicModel("claude-test", client), messages=[MESSAGES[1]], tools=[])
    [body] = server.requests
    assert "tools" not in body
    assert "system" not in body
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 8192


def test_translation_merges_same_roles_and_keeps_bad_arguments() -> None:
    system, messages = to_anthropic_messages(
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call:9", "function": {"name": "ls", "arguments": "{not json"}},
                    {"id": "call_10", "function": {"name": "pwd", "arguments": ""}},
                ],
            },
            {"role": "assistant", "content": "And more."},
            {"role": "tool", "tool_call_id": "call:9", "content": "a.py"},
            {"role": "assistant", "content": ""},  # empty: dropped
            {"role": "tool", "tool_call_id": "call_10", "content": "/repo"},
        ]
    )
    assert system is None
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert [block["text"] for block in messages[0]["content"]] == ["one", "two"]
    first, second, text = messages[1]["content"]
    assert first == {
        "type": "tool_use",
        "id": "call_9",
        "name": "ls",
        "input": {"raw": "{not json"},
    }
    assert second["input"] == {}
    assert text == {"type": "text", "text": "And more."}
    assert [block["tool_use_id"] for block in messages[2]["content"]] == ["call_9", "call_10"]


def _error_turn(status: int, **kwargs: Any) -> ScriptedTurn:
    error_type = kwargs.pop("error_type", "invalid_request_error")
    message = kwargs.pop("message", f"Something is wrong with key {API_KEY} (status {status})")
    return ScriptedTurn(error_status=status, error_body=error_body(error_type, message), **kwargs)


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (_error_turn(401, error_type="authentication_error"), "PROVIDER_AUTH_FAILED"),
        (_error_turn(403, error_type="permission_error"), "PROVIDER_AUTH_FAILED"),
        (
            _error_turn(429, error_type="rate_limit_error", headers={"retry-after": "1"}),
            "PROVIDER_RATE_LIMITED",
        ),
        (_error_turn(500, error_type="api_error"), "PROVIDER_UNAVAILABLE"),
        (_error_turn(529, error_type="overloaded_error"), "PROVIDER_UNAVAILABLE"),
        (
            _error_turn(400, message="prompt is too long: 210000 tokens > 200000 maximum"),
            "CONTEXT_LENGTH_EXCEEDED",
        ),
        (_error_turn(400), "PROVIDER_BAD_REQUEST"),
        (_error_turn(404, error_type="not_found_error"), "PROVIDER_BAD_REQUEST"),
        (_error_turn(413, error_type="request_too_large"), "PROVIDER_BAD_REQUEST"),
        (_error_turn(408, error_type="timeout_error"), "PROVIDER_TIMEOUT"),
    ],
    ids=lambda value: str(value.error_status) if isinstance(value, ScriptedTurn) else value,
)
async def test_http_errors_map_to_provider_codes(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic, turn: ScriptedTurn, expected: str
) -> None:
    server.script(turn)
    with pytest.raises(ProviderError) as caught:
        await run_turn(AnthropicModel("claude-test", client))

    assert caught.value.code == expected
    assert len(server.requests) == 1  # max_retries=0: no retry
    for text in (str(caught.value), caught.value.message, repr(caught.value)):
        assert API_KEY not in text
    if turn.error_status == 429:  # the server's Retry-After reaches our retry policy
        assert caught.value.retry_after == 1.0
        assert "SECRETKEY" not in text


async def test_default_error_body_and_code(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(ScriptedTurn(error_status=400, error_code="context_length_exceeded"))
    with pytest.raises(ProviderError) as caught:
        await run_turn(AnthropicModel("claude-test", client))
    assert caught.value.code == "CONTEXT_LENGTH_EXCEEDED"


async def test_sdk_retries_an_overload(server: ScriptedAnthropicServer) -> None:
    retry = {"x-should-retry": "true", "retry-after-ms": "10"}
    turns = [_error_turn(529, error_type="overloaded_error", headers=retry), ScriptedTurn("back")]
    server.script(turns)
    sdk = make_client(server, max_retries=1)
    try:
        turn, _ = await run_turn(AnthropicModel("claude-test", sdk))
    finally:
        sdk.close()
    assert turn.text == "back"
    assert len(server.requests) == 2


async def test_dropped_connection_mid_stream(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    # message_start, ping, content_block_start, then three text deltas: cut after those.
    turn = ScriptedTurn(text="one two three four five six", drop_midway=True, drop_after=6)
    server.script(turn)
    tokens: list[str] = []
    model = AnthropicModel("claude-test", client)
    with pytest.raises(ProviderError) as caught:
        await asyncio.to_thread(model.stream_turn, MESSAGES, [], tokens.append, CancelToken())
    assert caught.value.code == "PROVIDER_UNAVAILABLE"
    assert tokens == ["one", " two", " three"]
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("eof", "PROVIDER_UNAVAILABLE"),  # ends cleanly, but without message_stop
        ("garbage", "PROVIDER_UNAVAILABLE"),
        ("error", "PROVIDER_UNAVAILABLE"),  # `event: error` with an overloaded_error
    ],
)
async def test_truncated_malformed_or_failed_stream(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic, mode: str, expected: str
) -> None:
    server.script(
        ScriptedTurn(text="one two three", drop_midway=True, drop_after=4, drop_mode=mode)
    )
    with pytest.raises(ProviderError) as caught:
        await run_turn(AnthropicModel("claude-test", client))
    assert caught.value.code == expected


async def test_rate_limit_error_event_inside_the_stream(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    body = error_body("rate_limit_error", f"slow down, {API_KEY}")
    server.script(ScriptedTurn(text="a b", drop_midway=True, drop_mode="error", error_body=body))
    with pytest.raises(ProviderError) as caught:
        await run_turn(AnthropicModel("claude-test", client))
    assert caught.value.code == "PROVIDER_RATE_LIMITED"
    assert "SECRETKEY" not in str(caught.value)


async def test_read_timeout_on_a_stalled_stream(server: ScriptedAnthropicServer) -> None:
    server.script(ScriptedTurn(text="thinking very hard", stall=True))
    sdk = anthropic.Anthropic(api_key=API_KEY, base_url=server.base_url, max_retries=0, timeout=0.5)
    try:
        with pytest.raises(ProviderError) as caught:
            await run_turn(AnthropicModel("claude-test", sdk))
    finally:
        sdk.close()
    assert caught.value.code == "PROVIDER_TIMEOUT"


async def test_cancel_while_server_stalls_mid_stream(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(ScriptedTurn(text="thinking very hard", stall=True))
    cancel = CancelToken()
    first_token = threading.Event()
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        first_token.set()

    model = AnthropicModel("claude-test", client)
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

    assert elapsed < 1.0
    assert tokens == ["thinking"]


async def test_cancelled_before_start_sends_nothing(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        await run_turn(AnthropicModel("claude-test", client), cancel=cancel)
    assert server.requests == []


async def test_errors_from_on_token_are_not_provider_errors(
    server: ScriptedAnthropicServer, client: anthropic.Anthropic
) -> None:
    server.script(ScriptedTurn(text="boom"))

    def on_token(_token: str) -> None:
        raise RuntimeError("sink broke")

    model = AnthropicModel("claude-test", client)
    with pytest.raises(RuntimeError, match="sink broke"):
        await asyncio.to_thread(model.stream_turn, MESSAGES, [], on_token, CancelToken())


async def test_concurrent_turns_with_a_responder() -> None:
    def responder(body: dict[str, Any]) -> ScriptedTurn:
        return ScriptedTurn(text=f"echo: {body['messages'][-1]['content'][0]['text']}")

    async with ScriptedAnthropicServer(responder=responder) as server:
        sdk = make_client(server)
        model = AnthropicModel("claude-test", sdk)
        try:
            turns = await asyncio.gather(
                *(
                    run_turn(model, messages=[{"role": "user", "content": f"task {i}"}])
                    for i in range(4)
                )
            )
        finally:
            sdk.close()
        await server.wait_for_requests(4, timeout=5)
    assert [turn.text for turn, _ in turns] == [f"echo: task {i}" for i in range(4)]


def test_threaded_server_serves_a_sync_caller_non_streaming() -> None:
    with ScriptedAnthropicServer() as server:
        server.script(ScriptedTurn(text="plain answer", tool_calls=[("ls", {"path": "."})]))
        with anthropic.Anthropic(api_key=API_KEY, base_url=server.base_url, max_retries=0) as sdk:
            message = sdk.messages.create(
                model="claude-test", max_tokens=100, messages=[MESSAGES[1]]
            )
        server.wait_for_requests_sync(1, timeout=5)
    text, tool_use = message.content
    assert text.type == "text" and text.text == "plain answer"
    assert tool_use.type == "tool_use" and tool_use.id == "toolu_1"
    assert tool_use.input == {"path": "."}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)


def test_anthropic_client_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    sdk = anthropic_client(max_retries=0, timeout=5.0)
    assert sdk.api_key == "sk-ant-from-env"
    assert str(sdk.base_url).startswith("http://127.0.0.1:9")
    assert sdk.max_retries == 0
    sdk.close()

    explicit = anthropic_client(api_key="sk-ant-explicit", base_url="http://localhost:1")
    assert explicit.api_key == "sk-ant-explicit"
    assert str(explicit.base_url).startswith("http://localhost:1")
    explicit.close()


def test_anthropic_client_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProviderError) as caught:
        anthropic_client()
    assert caught.value.code == "PROVIDER_NOT_CONFIGURED"
