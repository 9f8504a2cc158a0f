"""Flood limits through a real server: WebSocket messages, pending inputs, open
WebSockets, half-open connections (slowloris) and a huge diff.

Numbers measured here (RSS growth, `/health` latency) are printed; run with
`-s` to see them.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from http_helpers import (
    ERROR_KEYS,
    create_session,
    create_task,
    expect_error,
    handshake_headers,
    next_message,
    read_until,
    serve,
    sign_up,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from waiting import fresh_minute

from minidevin.runtime.settings import Settings

STALL = ScriptedTurn(text="Thinking", stall=True)  # the task stays mid-turn until stopped
MiB = 1 << 20


def config(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "jwt_secret": "flood-secret-" + "x" * 32,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        **overrides,
    }
    return Settings(**values)


def rss() -> int:
    """This process's resident memory (the in-process server's), in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


async def running_task(client: TestClient, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    user = await sign_up(client)
    workspace = tmp_path / "work"
    workspace.mkdir(exist_ok=True)
    session = await create_session(client, user, workspace)
    task = await create_task(client, user, session["id"])
    return user, task


async def ws_reply(ws: ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    """Send a client message and read up to the server's `error` answer to it."""
    await ws.send_json(message)
    return (await read_until(ws, lambda m: m["type"] == "error"))[-1]


async def test_websocket_messages_count_against_the_rate_limit(
    tmp_path: Path, database_url: str | None
) -> None:
    async with ScriptedOpenAIServer() as server:
        server.script([STALL])
        async with serve(
            config(tmp_path, database_url, rate_limit_authenticated=8), server
        ) as client:
            await fresh_minute()  # (once the server is up: what follows is the count)
            user, task = await running_task(client, tmp_path)
            ws = await client.ws_connect(ws_path(task["id"], user.token))
            replies = []
            for _ in range(10):  # more than the budget left this minute
                replies.append(await ws_reply(ws, {"type": "nonsense"}))
                if replies[-1]["code"] == "RATE_LIMITED":
                    break
            assert replies[0]["code"] == "VALIDATION_ERROR"  # counted, and answered
            assert replies[-1]["code"] == "RATE_LIMITED", replies
            assert "rate limit" in replies[-1]["error"]
            assert not ws.closed  # dropped, not disconnected
            over = await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)
            await expect_error(over, 429, "RATE_LIMITED")  # REST shares the budget
            await ws.close()


async def test_pending_inputs_are_bounded_and_a_flood_costs_no_memory(
    tmp_path: Path, database_url: str | None
) -> None:
    async with ScriptedOpenAIServer() as server:
        server.script([STALL])
        settings = config(tmp_path, database_url, max_pending_inputs=16)
        async with serve(settings, server) as client:
            user, task = await running_task(client, tmp_path)
            await server.wait_for_requests(1)  # the task is mid-turn: inputs queue
            content = "x" * 100_000
            for _ in range(16):
                accepted = await client.post(
                    f"/api/tasks/{task['id']}/input", json={"content": content}, headers=user.key
                )
                assert accepted.status == 202, await accepted.text()
            full = await client.post(
                f"/api/tasks/{task['id']}/input", json={"content": content}, headers=user.key
            )
            body = await expect_error(full, 429, "TOO_MANY_INPUTS")
            assert "16 unread inputs" in body["detail"]

            ws = await client.ws_connect(ws_path(task["id"], user.token))
            before = rss()
            for _ in range(1500):
                reply = await ws_reply(ws, {"type": "input", "content": content})
                assert reply["code"] == "TOO_MANY_INPUTS", reply
            growth = rss() - before
            print(f"\nRSS growth after 1,500 x 100 KB inputs: {growth / MiB:.1f} MiB")
            assert growth < 40 * MiB, growth  # (the inputs alone are 146 MiB)
            assert not ws.closed
            await ws.close()
            await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)


async def test_open_websockets_per_user_are_capped(
    tmp_path: Path, database_url: str | None
) -> None:
    async with ScriptedOpenAIServer() as server:
        server.script([STALL])
        async with serve(
            config(tmp_path, database_url, max_websockets_per_user=2), server
        ) as client:
            user, task = await running_task(client, tmp_path)
            first = await client.ws_connect(ws_path(task["id"], user.token))
            second = await client.ws_connect(ws_path(task["id"], user.token))
            await next_message(first)
            await next_message(second)
            refused = await client.get(ws_path(task["id"], user.token), headers=handshake_headers())
            body = await expect_error(refused, 429, "TOO_MANY_WEBSOCKETS")
            assert set(body) == ERROR_KEYS
            await first.close()
            third = await client.ws_connect(ws_path(task["id"], user.token))  # room again
            await next_message(third)
            for ws in (second, third):
                await ws.close()
            await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)


# -- slowloris against a real `minidevin serve` ---------------------------------------------

HALF_HEAD = b"GET /health HTTP/1.1\r\nHost: minidevin\r\nX-Slow: "


async def health_from(port: int, source: str) -> float:
    """Seconds one `GET /health` takes from a client socket bound to `source`."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: minidevin\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 200"), status
        await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return time.monotonic() - started


async def test_slowloris_from_one_address_cannot_take_health_down(tmp_path: Path) -> None:
    # The head deadline (3 s) is well past the time the server takes to accept all 200 on a
    # loaded machine: a held connection closed before the last is accepted frees its slot for
    # another, which is the cap working, not failing, but would blur the counts below.
    head_timeout = 3.0
    env = {
        "MINIDEVIN_REQUEST_HEAD_TIMEOUT": str(head_timeout),
        "MINIDEVIN_MAX_CONNECTIONS_PER_ADDRESS": "64",
    }
    server = ServeProcess(tmp_path / "data", env)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        started = time.monotonic()
        for _ in range(200):  # half a request head each, from 127.0.0.1
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(HALF_HEAD)
            opened.append((reader, writer))
        latencies = [await health_from(server.port, "127.0.0.2")]

        async def outcome(reader: asyncio.StreamReader) -> tuple[bytes, float]:
            try:
                data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
            except ConnectionResetError:  # refused while its half head was unread
                data = b"HTTP/1.1 429 (reset)"
            return data, time.monotonic() - started

        waiting = asyncio.gather(*(outcome(reader) for reader, _ in opened))
        while not waiting.done():  # /health keeps answering while they are cut off
            latencies.append(await health_from(server.port, "127.0.0.2"))
        results = await waiting
        latencies += [await health_from(server.port, "127.0.0.2") for _ in range(5)]

        refused = [data for data, _ in results if b" 429 " in data]
        held = [seconds for data, seconds in results if not data]
        assert len(refused) + len(held) == 200
        assert len(held) <= 64 and len(refused) >= 136, (len(held), len(refused))
        first, last = min(held), max(held)  # each closed at about the head deadline
        assert head_timeout - 0.1 < first and last < head_timeout + 1.5, (first, last)
        p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
        print(
            f"\nslowloris: {len(held)} held then closed (last after {max(held):.2f} s), "
            f"{len(refused)} refused; /health x{len(latencies)} p95 {p95 * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        assert p95 < 0.5, latencies
    finally:
        for _, writer in opened:
            writer.close()
        server.close()


def test_the_per_address_cap_refuses_the_65th_connection(tmp_path: Path) -> None:
    env = {"MINIDEVIN_REQUEST_HEAD_TIMEOUT": "30", "MINIDEVIN_MAX_CONNECTIONS_PER_ADDRESS": "64"}
    server = ServeProcess(tmp_path / "data", env)
    sockets = []
    try:
        for _ in range(64):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        for held in sockets:  # each is accepted and open: nothing to read yet
            held.setblocking(False)
            with pytest.raises(BlockingIOError):
                held.recv(1)
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sockets.append(extra)
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 429"), answer
        other = socket.create_connection(
            ("127.0.0.1", server.port), timeout=5, source_address=("127.0.0.2", 0)
        )
        sockets.append(other)
        other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert other.recv(12) == b"HTTP/1.1 200"  # another address is not affected
    finally:
        for sock in sockets:
            sock.close()
        server.close()


# -- a diff larger than the cap ---------------------------------------------------------------


def peak_rss_reset() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; returns that."""
    Path("/proc/self/clear_refs").write_text("5")
    return vm("VmRSS")


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


async def test_a_huge_diff_is_capped_and_never_held_in_memory(
    tmp_path: Path, database_url: str | None
) -> None:
    from minidevin.api import Runtime

    work = tmp_path / "work"
    work.mkdir()
    (work / "small.txt").write_text("before\n")
    command = "seq 1 3700000 > big.txt && echo after > small.txt"  # ~30 MB of text
    async with ScriptedOpenAIServer() as server:
        server.script(
            [
                ScriptedTurn(tool_calls=[("terminal", {"command": "echo warm > warm.txt"})]),
                ScriptedTurn(tool_calls=[("finish", {"summary": "warm", "success": True})]),
                ScriptedTurn(tool_calls=[("terminal", {"command": command})]),
                ScriptedTurn(tool_calls=[("finish", {"summary": "made", "success": True})]),
            ]
        )
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}
        async with Runtime(
            config(tmp_path, database_url, max_diff_mb=1), provider_env=env
        ) as runtime:
            session = await runtime.create_session("diff", work)
            warm = await runtime.create_task(session.id, "warm up", model="gpt-4o")
            assert (await runtime.wait(warm.id)).status == "completed"  # threads, caches
            baseline = peak_rss_reset()
            task = await runtime.create_task(session.id, "make a big file", model="gpt-4o")
            assert (await runtime.wait(task.id)).status == "completed"
            growth = vm("VmHWM") - baseline
            artifacts = {a.name: a for a in await runtime.list_artifacts(task.id)}
            _, path = await runtime.artifact_file(task.id, artifacts["diff.patch"].id)
    big = (work / "big.txt").stat().st_size
    patch = path.read_text()
    print(
        f"\ndiff: file {big / MiB:.1f} MiB, diff.patch {len(patch) / 1024:.1f} KiB, "
        f"peak RSS growth {growth / MiB:.1f} MiB"
    )
    assert big > 25 * MiB
    assert path.stat().st_size == artifacts["diff.patch"].size
    assert len(patch.encode()) <= MiB + 1024
    assert (
        "diff --git a/small.txt b/small.txt" in patch
        and "warm.txt" not in patch
        and "+after" in patch
    )
    note = patch[patch.index("# minidevin: diff.patch capped at 1 MiB") :]
    assert note.splitlines()[1:] == ["# big.txt"]
    assert growth < 12 * MiB, growth  # well under the file (and the old 2-3x of it)
