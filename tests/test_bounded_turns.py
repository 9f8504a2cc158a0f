"""Bounded model turns: long deltas in pieces, an output cap, Retry-After up to a bound,
stalled streams retried. Real SDKs against the scripted providers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from http_helpers import create_session, create_task, sign_up, ws_path
from scripted_anthropic import ScriptedAnthropicServer
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.events import Event
from minidevin.runtime.providers.streaming import split_delta
from minidevin.runtime.settings import Settings

MIB = 1 << 20
PIECE = 256 * 1024
FINISH_CALL = ("finish", {"summary": "done", "success": True})
# one "word" (the scripted servers stream a word per delta): ASCII, 2-byte and 4-byte characters
UNIT = "abcdefgh" * 6 + "é" * 5 + "😀" * 3
HUGE = UNIT * (10_000_000 // len(UNIT.encode()))  # ~10 MB, a single delta


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path.with_name(tmp_path.name + "-data"),
        "jwt_secret": "s" * 40,
        "provider_retry_base_delay": 0.01,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "rate_limit_login": 0,
        "allow_unsandboxed_multiuser": True,
    }
    return Settings(**{**values, **overrides})


def openai_env(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}


async def run_tasks(
    settings: Settings, env: dict[str, str], workdir: Path, count: int = 1, **fields: Any
) -> list[tuple[list[Event], Any]]:
    """`count` tasks one after the other in one session: (events, detail) of each."""
    runs = []
    async with Runtime(settings, provider_env=env) as runtime:
        session = await runtime.create_session("s", workdir)
        for _ in range(count):
            task = await runtime.create_task(session.id, "do it", context="fresh", **fields)
            events = [event async for event in runtime.events(task.id)]
            runs.append((events, await runtime.get_task(task.id)))
    return runs


async def run_task(
    settings: Settings, env: dict[str, str], workdir: Path, **fields: Any
) -> tuple[list[Event], Any]:
    return (await run_tasks(settings, env, workdir, **fields))[0]


def tokens(events: list[Event]) -> list[str]:
    return [e.data["content"] for e in events if e.type == "token"]


def error_of(events: list[Event]) -> dict[str, Any]:
    return next(e.data for e in events if e.type == "error")


# -- (a) no message over 1 MiB ---------------------------------------------------------------


def test_split_delta_keeps_characters_and_surrogate_pairs_whole() -> None:
    pair = "\ud83d\ude00"  # a surrogate pair held as two code points
    for text in (HUGE[:3_000_000], "x" + pair * 200_000, "\x01" * 400_000):
        pieces = split_delta(text)
        assert "".join(pieces) == text and len(pieces) > 1
        for piece in pieces:
            assert len(piece.encode("utf-8", "surrogatepass")) <= PIECE
            assert len(json.dumps({"content": piece})) < MIB  # escaped as the socket sends it
            assert not "\ud800" <= piece[-1] <= "\udbff"  # never half a pair
    assert split_delta("short") == ["short"]


async def test_a_10mb_delta_arrives_as_token_events_under_1mib(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.script([ScriptedTurn(text=HUGE, tool_calls=[FINISH_CALL])])
    settings = make_settings(tmp_path, database_url, max_turn_output_bytes=16 * MIB)
    events, detail = await run_task(settings, openai_env(openai_server), tmp_path)
    assert detail.status == "completed"
    pieces = tokens(events)
    assert "".join(pieces) == HUGE and len(pieces) >= 40
    for event in events:
        if event.type == "token":
            assert len(event.data["content"].encode()) <= PIECE
            assert len(json.dumps(event.to_message())) <= MIB


async def test_a_client_with_a_1mib_message_limit_reads_the_whole_stream(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    """Default cap (1 MiB): the 10 MB delta streams up to the cap in pieces, then the task
    fails clearly; a client refusing messages over 1 MiB reads it all, and again on resume."""
    openai_server.script([ScriptedTurn(text=HUGE, tool_calls=[FINISH_CALL])])
    runtime = Runtime(make_settings(tmp_path, database_url), provider_env=openai_env(openai_server))
    async with TestClient(TestServer(create_app(runtime))) as client:
        user = await sign_up(client)
        session = await create_session(client, user, tmp_path)
        task = await create_task(client, user, session["id"], "write a lot")
        for after in (None, 0):
            ws = await client.ws_connect(ws_path(task["id"], user.token, after), max_msg_size=MIB)
            messages = []
            while (message := await ws.receive(timeout=20)).type == WSMsgType.TEXT:
                messages.append(message.json())
            await ws.close()
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), message
            assert ws.close_code == 1000
            streamed = "".join(m["content"] for m in messages if m["type"] == "token")
            assert len(streamed.encode()) <= MIB and HUGE.startswith(streamed)
            assert len(streamed.encode()) > MIB - len(UNIT.encode())  # up to the cap
            assert [m["code"] for m in messages if m["type"] == "error"] == [
                "TURN_OUTPUT_TOO_LARGE"
            ]
            assert messages[-1]["type"] == "status" and messages[-1]["status"] == "failed"


async def test_a_whole_turn_over_1mib_reaches_a_1mib_client_cut_and_runs_whole(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    """A turn of 700 KB of text and a 700 KB file: its `model_turn` (and the text in it)
    is cut on the wire only; the editor writes the whole file, the log keeps it all."""
    text, body = "t" * 700_000, "line\n" * 140_000
    write = ("editor", {"command": "create", "path": "big.txt", "file_text": body})
    openai_server.script(
        [ScriptedTurn(text=text, tool_calls=[write]), ScriptedTurn(tool_calls=[FINISH_CALL])]
    )
    settings = make_settings(tmp_path, database_url, max_turn_output_bytes=4 * MIB)
    runtime = Runtime(settings, provider_env=openai_env(openai_server))
    async with TestClient(TestServer(create_app(runtime))) as client:
        user = await sign_up(client)
        session = await create_session(client, user, tmp_path)
        task = await create_task(client, user, session["id"], "write a big file")
        ws = await client.ws_connect(ws_path(task["id"], user.token, None), max_msg_size=MIB)
        messages = []
        while (message := await ws.receive(timeout=20)).type == WSMsgType.TEXT:
            assert len(message.data) <= MIB
            messages.append(message.json())
        await ws.close()
        logged = [event async for event in runtime.events(task["id"], owner=user.id)]
    assert ws.close_code == 1000 and messages[-1]["status"] == "completed"
    turn = next(m for m in messages if m["type"] == "model_turn")
    assert turn["cut"] is True and "characters cut from this message" in json.dumps(turn)
    assert "".join(m["content"] for m in messages if m["type"] == "token") == text
    whole = next(e for e in logged if e.type == "model_turn")  # the log keeps it whole
    assert whole.data["content"] == text and "cut" not in whole.data
    assert (tmp_path / "big.txt").read_text() == body


# -- (b) the turn's output cap ---------------------------------------------------------------


async def test_a_turn_over_the_cap_is_cut_and_fails_clearly(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    chatty = ScriptedTurn(text="word " * 1000)  # 5,000 bytes in 1,000 deltas
    big_call = ScriptedTurn(tool_calls=[("terminal", {"command": "echo " + "y" * 5000})])
    openai_server.script([chatty, big_call])
    settings = make_settings(tmp_path, database_url, max_turn_output_bytes=2048)
    env = openai_env(openai_server)
    (events, detail), (events_b, detail_b) = await run_tasks(settings, env, tmp_path, 2)
    assert detail.status == "failed"
    error = error_of(events)
    assert error["code"] == "TURN_OUTPUT_TOO_LARGE" and "2048 bytes" in error["error"]
    assert len("".join(tokens(events))) <= 2048 and "turn_restart" not in {e.type for e in events}
    events, detail = events_b, detail_b
    assert detail.status == "failed" and error_of(events)["code"] == "TURN_OUTPUT_TOO_LARGE"
    assert not any(e.type == "tool_call" for e in events)
    assert len(openai_server.requests) == 2  # never retried


async def test_the_cap_holds_for_anthropic_too(tmp_path: Path, database_url: str | None) -> None:
    async with ScriptedAnthropicServer() as server:
        server.script([ScriptedTurn(text="word " * 1000)])
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-123", "ANTHROPIC_BASE_URL": server.base_url}
        settings = make_settings(tmp_path, database_url, max_turn_output_bytes=2048)
        events, detail = await run_task(settings, env, tmp_path, model="claude-3-5-sonnet-20241022")
    assert detail.status == "failed" and error_of(events)["code"] == "TURN_OUTPUT_TOO_LARGE"
    assert len("".join(tokens(events))) <= 2048


# -- (c) Retry-After up to a bound --------------------------------------------------------


async def test_retry_after_is_honoured_up_to_the_max_and_fails_beyond(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    settings = make_settings(
        tmp_path, database_url, provider_retry_max_delay=0.05, provider_max_retry_delay=0.5
    )
    env = openai_env(openai_server)
    limited = ScriptedTurn(error_status=429, headers={"Retry-After": "0.2"})
    too_long = ScriptedTurn(error_status=429, headers={"Retry-After": "5"})
    openai_server.script([limited, ScriptedTurn(text="all good"), too_long])
    started = time.monotonic()
    (events, detail), (events_b, detail_b) = await run_tasks(settings, env, tmp_path, 2)
    assert time.monotonic() - started < 4  # the second failed, not slept
    assert detail.status == "completed"
    restart = next(e.data for e in events if e.type == "turn_restart")
    assert restart["delay"] == pytest.approx(0.2)  # not cut to the 0.05 s backoff cap
    assert restart["code"] == "PROVIDER_RATE_LIMITED"

    events, detail = events_b, detail_b
    assert detail.status == "failed" and len(openai_server.requests) == 3
    error = error_of(events)
    assert error["code"] == "PROVIDER_RATE_LIMITED" and "retry after 5 s" in error["error"]
    assert "turn_restart" not in {e.type for e in events}


# -- (d) stalled streams ------------------------------------------------------------------


async def test_a_stalled_stream_is_abandoned_and_the_turn_retried(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    stalled = ScriptedTurn(text="Thinking very hard about it", stall=True)
    openai_server.script([stalled, ScriptedTurn(text="all good")])
    settings = make_settings(tmp_path, database_url, provider_stall_seconds=0.3)
    started = time.monotonic()
    async with asyncio.timeout(10):  # (unwatched, the stream would hang for 600 s)
        events, detail = await run_task(settings, openai_env(openai_server), tmp_path)
    assert time.monotonic() - started >= 0.3
    assert detail.status == "completed" and detail.result.summary == "all good"
    restart = next(e.data for e in events if e.type == "turn_restart")
    assert restart["code"] == "PROVIDER_STALLED" and restart["attempt"] == 2
    await until(lambda: openai_server.client_disconnects == 1, 5, "the stalled stream closed")


async def test_stalls_count_against_the_attempts(tmp_path: Path, database_url: str | None) -> None:
    async with ScriptedAnthropicServer() as server:
        server.script([ScriptedTurn(text="Hmm let me think", stall=True)] * 2)
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-123", "ANTHROPIC_BASE_URL": server.base_url}
        settings = make_settings(
            tmp_path, database_url, provider_stall_seconds=0.3, provider_max_attempts=2
        )
        events, detail = await run_task(settings, env, tmp_path, model="claude-3-5-sonnet-20241022")
        assert detail.status == "failed" and error_of(events)["code"] == "PROVIDER_STALLED"
        assert len(server.requests) == 2
        await until(lambda: server.client_disconnects == 2, 5, "both stalled streams closed")
