"""Fan-out that scales: one serialization per event, token deltas coalesced, store outages told.

Through a real server (aiohttp test server, the real runtime and SQLite store)
and the scripted OpenAI server: many subscribers get byte-identical messages;
a turn's tiny deltas are logged as fewer `token` events with the same text
(or one a delta with coalescing off); a delta followed by a pause is not held
back; text is flushed before the turn's tool call; `EventHub.interrupt` ends
a subscriber with `STORE_UNAVAILABLE` and 1011.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from http_helpers import (
    GatedModel,
    check_sequence,
    create_session,
    create_task,
    read_until,
    read_until_closed,
    serve,
    sign_up,
    stream,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import until

from minidevin.http.keys import RUNTIME
from minidevin.runtime.events import Event
from minidevin.runtime.providers.streaming import TOKEN_PIECE_BYTES
from minidevin.runtime.settings import Settings
from minidevin.runtime.token_coalescer import TokenCoalescer

WORDS = " ".join(f"w{i}" for i in range(200))  # the scripted server streams one delta a word
DESCRIPTION = "Fix the failing test in test_calc.py"

Serve = Callable[[float], AbstractAsyncContextManager[TestClient]]


@pytest.fixture
def server(settings: Settings, openai_server: ScriptedOpenAIServer) -> Serve:
    """A server whose token window is the given number of milliseconds."""

    def make(window_ms: float) -> AbstractAsyncContextManager[TestClient]:
        return serve(settings.model_copy(update={"token_coalesce_ms": window_ms}), openai_server)

    return make


async def start_task(client: TestClient, repo: Path) -> tuple[str, str]:
    """(task id, token of its owner)."""
    user = await sign_up(client)
    session = await create_session(client, user, repo)
    task = await create_task(client, user, session["id"])
    return task["id"], user.token


def tokens(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["type"] == "token"]


def test_the_wire_form_is_the_message_serialized_once() -> None:
    event = Event("t1", 7, "token", {"content": 'a "quoted" é'}, "2026-01-01T00:00:00.000Z")
    assert json.loads(event.wire()) == event.to_message()
    assert event.wire() == json.dumps(event.to_message())
    assert event.wire() is event.wire()  # cached: computed once for every subscriber


def test_coalesced_text_is_still_cut_into_pieces_a_message_carries() -> None:
    emitted: list[str] = []
    coalescer = TokenCoalescer(emitted.append, 0.02)
    deltas = ["é" * 1000] * 300 + ["x" * 700_000, "tail"]  # many small, one huge, one small
    for delta in deltas:
        coalescer.add(delta)
    coalescer.flush()
    assert "".join(emitted) == "".join(deltas)
    assert all(len(piece.encode()) <= TOKEN_PIECE_BYTES for piece in emitted)
    assert len(emitted) < 20  # joined, not one a delta


async def test_many_subscribers_get_identical_bytes_and_every_seq(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    model, gate = GatedModel(), asyncio.Event()
    model.add(DESCRIPTION, ScriptedTurn(text=WORDS), gate)
    model.add(DESCRIPTION, finish())
    openai_server.responder = model
    async with server(20) as client:
        task_id, token = await start_task(client, buggy_repo)
        await openai_server.wait_for_requests(1, timeout=20)  # running, its model waits
        sockets = [await client.ws_connect(ws_path(task_id, token)) for _ in range(25)]
        first = [await ws.receive_str(timeout=10) for ws in sockets]  # each subscribed
        gate.set()

        async def rest(ws: Any) -> list[str]:
            texts = []
            async with asyncio.timeout(20):
                while (message := await ws.receive()).type == WSMsgType.TEXT:
                    texts.append(message.data)
            return texts

        raw = [
            [head, *tail]
            for head, tail in zip(first, await asyncio.gather(*map(rest, sockets)), strict=True)
        ]
        assert [ws.close_code for ws in sockets] == [1000] * len(sockets)
        assert all(texts == raw[0] for texts in raw)  # byte for byte
        messages = [json.loads(text) for text in raw[0]]
        check_sequence(messages, task_id)
        assert messages[-1]["status"] == "completed"
        assert "".join(tokens(messages)) == WORDS


async def test_tiny_deltas_are_logged_as_fewer_token_events_with_the_same_text(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script([ScriptedTurn(text=WORDS), finish()])
    async with server(20) as client:
        task_id, token = await start_task(client, buggy_repo)
        messages, code = await stream(client, task_id, token)
    assert code == 1000
    check_sequence(messages, task_id)
    pieces = tokens(messages)
    assert "".join(pieces) == WORDS
    assert len(pieces) <= 200 // 2, len(pieces)  # 200 deltas in a few ms: a handful of events


async def test_with_coalescing_off_each_delta_is_one_event(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script([ScriptedTurn(text=WORDS), finish()])
    async with server(0) as client:
        task_id, token = await start_task(client, buggy_repo)
        messages, code = await stream(client, task_id, token)
    assert code == 1000
    assert tokens(messages) == [WORDS.split(" ")[0]] + [" " + w for w in WORDS.split(" ")[1:]]


async def test_a_delta_followed_by_a_pause_is_not_held_back(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    """The provider sends one delta and then nothing: it must still arrive, within the window."""
    openai_server.script(ScriptedTurn(text="Thinking very hard", stall=True))
    async with server(20) as client:
        task_id, token = await start_task(client, buggy_repo)
        ws = await client.ws_connect(ws_path(task_id, token))
        seen = await read_until(ws, lambda m: m["type"] == "token", timeout=10)
        assert seen[-1]["content"] == "Thinking"  # while the provider still holds the rest
        await ws.send_json({"type": "stop"})
        rest = await read_until_closed(ws)
        assert rest[-1]["status"] == "stopped"
        assert tokens(rest) == []


async def test_text_is_flushed_before_the_turns_tool_call(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    turn = ScriptedTurn(text=WORDS, tool_calls=[("finish", {"summary": "ok", "success": True})])
    openai_server.script(turn)
    async with server(20) as client:
        task_id, token = await start_task(client, buggy_repo)
        messages, code = await stream(client, task_id, token)
    assert code == 1000
    kinds = [m["type"] for m in messages]
    call = kinds.index("tool_call")
    assert "".join(tokens(messages[:call])) == WORDS  # all the text, before the call
    assert tokens(messages[call:]) == []


async def test_interrupt_tells_subscribers_the_store_is_unavailable(
    server: Serve, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(ScriptedTurn(text="Thinking very hard", stall=True))
    async with server(20) as client:
        task_id, token = await start_task(client, buggy_repo)
        sockets = [await client.ws_connect(ws_path(task_id, token)) for _ in range(2)]
        seen = [await read_until(ws, lambda m: m["type"] == "token") for ws in sockets]
        hub = client.server.app[RUNTIME].hub
        await until(lambda: hub.subscriber_count(task_id) == 2, what="both subscribed")
        assert hub.interrupt(None, "the disk is full") == 2
        for ws in sockets:
            rest = await read_until_closed(ws)
            assert len(rest) == 1 and "seq" not in rest[0], rest
            assert rest[0]["type"] == "error" and rest[0]["code"] == "STORE_UNAVAILABLE"
            assert rest[0]["error"] == "the disk is full"
            assert ws.close_code == 1011
        await until(lambda: hub.subscriber_count(task_id) == 0, what="subscriptions freed")
        resumed = await client.ws_connect(ws_path(task_id, token, after=seen[0][-1]["seq"]))
        await resumed.send_json({"type": "stop"})  # the client resumes where it was
        after = await read_until_closed(resumed)
        check_sequence(after, task_id, first=seen[0][-1]["seq"] + 1)
        assert after[-1]["status"] == "stopped"
