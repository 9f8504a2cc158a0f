"""Stalled WebSocket clients are cut within `ws_send_timeout`; slow ones that keep up are not.

A raw-socket client does the handshake by hand, with a tiny receive buffer,
then never reads while its task streams megabytes of tokens: once the server's
buffers are full, a send cannot finish, and the server must abort the socket
within the send deadline and free everything the client held (hub
subscription, per-user socket count, the descriptor itself: the client sees a
reset). A reader that is slow but drains gets every event and a 1000 close.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from http_helpers import (
    FIX_DESCRIPTION,
    GatedModel,
    User,
    check_sequence,
    create_session,
    create_task,
    get_task,
    serve,
    sign_up,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.http.keys import RUNTIME, WEBSOCKETS
from minidevin.http.websocket import OPEN_PER_USER
from minidevin.runtime.settings import Settings

SEND_TIMEOUT = 0.5  # seconds: the deadline under test
TOKEN = "x" * 32_000  # one large token (a word: the scripted model streams one per word)


@pytest.fixture
async def client(settings: Settings, openai_server: ScriptedOpenAIServer) -> AsyncIterator[Any]:
    quick = settings.model_copy(
        update={"ws_send_timeout": SEND_TIMEOUT, "max_turn_output_bytes": 64 << 20}
    )
    async with serve(quick, openai_server) as test_client:
        yield test_client


def runtime_of(client: TestClient) -> Runtime:
    return client.server.app[RUNTIME]


async def gated_task(
    client: TestClient, openai_server: ScriptedOpenAIServer, repo: Path, tokens: int
) -> tuple[User, dict[str, Any], asyncio.Event]:
    """A task whose model, once the gate opens, streams `tokens` large tokens and ends."""
    model, gate = GatedModel(), asyncio.Event()
    model.add(FIX_DESCRIPTION, ScriptedTurn(text=" ".join([TOKEN] * tokens)), gate)
    openai_server.responder = model
    user = await sign_up(client)
    session = await create_session(client, user, repo)
    task = await create_task(client, user, session["id"])
    await openai_server.wait_for_requests(1, timeout=20)  # running, its model held
    return user, task, gate


def stalled_socket(client: TestClient, path: str) -> socket.socket:
    """A client that does the WebSocket handshake by hand and then never reads.

    (Blocking: run it in a thread, the server shares the test's event loop.)
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: the window)
    sock.settimeout(10)
    sock.connect((str(client.host), int(client.port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:  # only as far as the 101's head
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def read_all(
    client: TestClient, path: str, pause: float = 0.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the close, `pause` seconds after each (a slow reader); (them, code)."""
    ws = await client.ws_connect(path, max_msg_size=64 << 20)  # (the final message is large)
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while True:
            message = await ws.receive()
            if message.type != WSMsgType.TEXT:
                break
            messages.append(message.json())
            if pause:
                await asyncio.sleep(pause)  # slow, not a synchronisation: the reader under test
    assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), message
    await ws.close()
    return messages, ws.close_code


def reset_by_server(sock: socket.socket) -> bool:
    """Whether the server has dropped the connection (a reset, or an end after the data)."""
    sock.settimeout(5)
    try:
        for _ in range(100_000):  # (bounded: far more than the buffers can hold)
            if not sock.recv(1 << 16):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


async def test_a_client_that_never_reads_is_cut_within_the_deadline(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    runtime = runtime_of(client)
    user, task, gate = await gated_task(client, openai_server, buggy_repo, tokens=300)  # ~9.6 MB
    sock = await asyncio.to_thread(stalled_socket, client, ws_path(task["id"], user.token))
    try:
        await until(lambda: runtime.hub.subscriber_count(task["id"]) == 1, what="subscribed")
        assert client.server.app[OPEN_PER_USER] == {user.id: 1}
        gate.set()

        async def ended() -> bool:
            return (await get_task(client, user, task["id"]))["status"] == "completed"

        await until(ended, timeout=20, what="the task's end")
        ended_at = time.monotonic()

        def freed() -> bool:
            app = client.server.app
            return (
                runtime.hub.subscriber_count() == 0
                and not app[OPEN_PER_USER]
                and not app[WEBSOCKETS]
            )

        await until(freed, timeout=SEND_TIMEOUT + 5, what="the stalled client's resources freed")
        cut_after = time.monotonic() - ended_at
        assert cut_after < SEND_TIMEOUT + 1.0, cut_after
        print(f"stalled client freed {cut_after:.3f}s after its task ended")
        assert await asyncio.to_thread(reset_by_server, sock)  # its descriptor is gone too
    finally:
        sock.close()
    # the server is fine: a new reader gets the whole log and a 1000 close
    events, code = await read_all(client, ws_path(task["id"], user.token))
    assert code == 1000
    check_sequence(events, task["id"])
    assert events[-1]["status"] == "completed"


async def test_a_slow_reader_that_keeps_up_gets_every_event_and_1000(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    runtime = runtime_of(client)
    user, task, gate = await gated_task(client, openai_server, buggy_repo, tokens=150)  # ~4.8 MB
    subscribed = asyncio.Event()

    async def open_gate() -> None:
        await until(lambda: runtime.hub.subscriber_count(task["id"]) == 1, what="subscribed")
        subscribed.set()
        gate.set()

    opener = asyncio.create_task(open_gate())
    messages, code = await read_all(client, ws_path(task["id"], user.token), pause=0.01)
    await opener
    assert subscribed.is_set()
    assert code == 1000, (code, len(messages), messages[-1]["type"] if messages else None)
    check_sequence(messages, task["id"])
    assert messages[-1]["type"] == "status" and messages[-1]["status"] == "completed"
    text = "".join(m["content"] for m in messages if m["type"] == "token")
    assert text.count(TOKEN) == 150
    await until(lambda: runtime.hub.subscriber_count() == 0, what="the reader unsubscribed")
