"""Webhooks through the real server: a receiver on 127.0.0.1 that fails first, signatures,
order, the same `delivery_id` on a retry, delivery after `kill -9` and a restart, and the
address checks at session creation and at delivery time."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from http_helpers import User, create_task, expect_error, expect_json, serve, sign_up
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import until

from minidevin.api import Runtime
from minidevin.http.keys import RUNTIME
from minidevin.runtime.settings import Settings

SECRET = "whsec-test-0123456789"
STATUSES = ["queued", "running", "completed"]


@dataclass
class Receiver:
    """An aiohttp app on 127.0.0.1 that answers 500 to the first `fail_first` attempts
    (or to all while `accepting` is False) and records every attempt."""

    fail_first: int = 1
    accepting: bool = True
    attempts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        accepted = self.accepting and len(self.attempts) >= self.fail_first
        self.attempts.append(
            {"raw": raw, "body": json.loads(raw), "headers": dict(request.headers),
             "accepted": accepted}
        )  # fmt: skip
        return web.json_response({}, status=200 if accepted else 500)

    def accepted(self) -> list[dict[str, Any]]:
        return [attempt["body"] for attempt in self.attempts if attempt["accepted"]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield receiver
    await runner.cleanup()


def webhook_settings(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_retry_base_delay": 0.05,
            "webhook_retry_max_delay": 0.2,
            "sandbox": "off",
            **overrides,
        }
    )


def once(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`bodies` without repeats of a `delivery_id`, in order of first arrival."""
    return list({body["delivery_id"]: body for body in reversed(bodies)}.values())[::-1]


def check_signature(attempt: dict[str, Any]) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), attempt["raw"], hashlib.sha256).hexdigest()
    assert attempt["headers"]["X-Minidevin-Signature"] == expected


async def make_session(client: Any, user: User, work: Path, **fields: Any) -> Any:
    body = {"name": "hooked", "working_directory": str(work), **fields}
    return await client.post("/api/sessions", json=body, headers=user.key)


async def test_every_status_arrives_in_order_signed_and_retried_with_the_same_id(
    settings: Settings, openai_server: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path
) -> None:
    openai_server.script([finish("all good")])
    async with serve(webhook_settings(settings), openai_server) as client:
        user = await sign_up(client)
        session = await expect_json(
            await make_session(
                client, user, tmp_path, webhook_url=receiver.url, webhook_secret=SECRET
            ),
            201,
        )
        task = await create_task(client, user, session["id"], "say all good")
        delivered = await until(
            lambda: len(receiver.accepted()) == len(STATUSES) and receiver.accepted(),
            10,
            lambda: f"three deliveries, got {receiver.attempts}",
        )
    assert [body["status"] for body in delivered] == STATUSES
    for body in delivered:
        assert body["event"] == "task.status"
        assert body["task_id"] == task["id"] and body["session_id"] == session["id"]
        assert body["error"] is None and body["timestamp"].endswith("Z")
    assert delivered[-1]["result"] == {"success": True, "summary": "all good"}
    assert len({body["delivery_id"] for body in delivered}) == len(STATUSES)
    # the first attempt failed (500); its retry carries the same delivery, byte for byte
    first, retry = receiver.attempts[0], receiver.attempts[1]
    assert not first["accepted"] and retry["accepted"]
    assert first["raw"] == retry["raw"]
    assert retry["body"]["delivery_id"] == delivered[0]["delivery_id"]
    for attempt in receiver.attempts:
        check_signature(attempt)


async def test_a_failed_task_reports_its_error(
    settings: Settings, openai_server: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail_first = 0
    openai_server.script([ScriptedTurn(error_status=401)])
    async with serve(webhook_settings(settings), openai_server) as client:
        user = await sign_up(client)
        session = await expect_json(
            await make_session(client, user, tmp_path, webhook_url=receiver.url), 201
        )
        task = await create_task(client, user, session["id"], "fail")
        delivered = await until(
            lambda: len(receiver.accepted()) == len(STATUSES) and receiver.accepted(),
            10,
            lambda: f"three deliveries, got {receiver.attempts}",
        )
        log = await client.server.app[RUNTIME].store.task_log(task["id"])
    assert [body["status"] for body in delivered] == ["queued", "running", "failed"]
    assert [body["error"] for body in delivered[:2]] == [None, None]
    (error,) = [event.data for event in log if event.type == "error"]
    assert delivered[2]["error"] == {"code": error["code"], "message": error["error"]}
    assert "X-Minidevin-Signature" not in receiver.attempts[0]["headers"]  # no secret: unsigned


async def test_addresses_and_schemes_refused_at_creation(
    settings: Settings, openai_server: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path
) -> None:
    strict = webhook_settings(settings, webhook_allow_private=False)
    async with serve(strict, openai_server) as client:
        user = await sign_up(client)
        for url in (
            receiver.url,  # loopback
            "http://10.1.2.3/hook",  # private
            "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
            "http://[::ffff:127.0.0.1]/hook",  # loopback, as IPv4-mapped IPv6
            "http://localhost/hook",  # a name resolving to loopback
            "ftp://example.com/hook",  # not http(s)
            "file:///etc/passwd",
            "not a url",
        ):
            response = await make_session(client, user, tmp_path, webhook_url=url)
            await expect_error(response, 422, "VALIDATION_ERROR")
        sessions = await expect_json(await client.get("/api/sessions", headers=user.key))
        assert sessions == []
        # a public address is taken (nothing is sent until a task changes status)
        public = await make_session(client, user, tmp_path, webhook_url="https://8.8.8.8/hook")
        await expect_json(public, 201)
    assert receiver.attempts == []


async def test_a_private_address_is_refused_at_delivery_time(
    settings: Settings, openai_server: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path
) -> None:
    """A session made while private addresses were allowed; the server restarted without
    that: its deliveries are refused, and nothing reaches the receiver."""
    openai_server.script([finish("all good")])
    async with serve(webhook_settings(settings), openai_server) as client:
        user = await sign_up(client)
        session = await expect_json(
            await make_session(client, user, tmp_path, webhook_url=receiver.url), 201
        )
    strict = webhook_settings(settings, webhook_allow_private=False, webhook_max_attempts=2)
    async with serve(strict, openai_server) as client:
        await create_task(client, user, session["id"], "say all good")
        store = client.server.app[RUNTIME].store

        async def given_up() -> list[dict[str, Any]] | None:
            rows = await store.fetch_all("SELECT * FROM webhook_deliveries ORDER BY seq")
            done = len(rows) == len(STATUSES) and all(row["attempts"] == 2 for row in rows)
            return rows if done else None

        rows = await until(given_up, 10, "every delivery given up as refused")
    assert len(rows) == len(STATUSES)
    for row in rows:
        assert "127.0.0.1 is a loopback address" in row["last_error"]
        assert row["delivered_at"] is None
    assert receiver.attempts == []


async def test_pending_deliveries_go_out_after_kill_9_and_restart(
    scripted: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path, database_url: str | None
) -> None:
    receiver.accepting = False
    scripted.script([finish("all good")])
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": scripted.base_url,
        "MINIDEVIN_SANDBOX": "off",
        "MINIDEVIN_WEBHOOK_ALLOW_PRIVATE": "true",
        "MINIDEVIN_WEBHOOK_RETRY_BASE_DELAY": "0.05",
        "MINIDEVIN_WEBHOOK_RETRY_MAX_DELAY": "0.2",
        "MINIDEVIN_WEBHOOK_MAX_ATTEMPTS": "1000",
    }
    account = {"email": "w@example.com", "password": "password123", "name": "W"}
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        server.request("POST", "/api/auth/register", account)
        token = server.request("POST", "/api/auth/login", account)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = {"name": "s", "working_directory": str(work), "webhook_url": receiver.url,
                "webhook_secret": SECRET}  # fmt: skip
        session = server.request("POST", "/api/sessions", body, auth)
        tasks = f"/api/sessions/{session['id']}/tasks"
        task = server.request("POST", tasks, {"description": "say all good"}, auth)
        path = f"/api/tasks/{task['id']}"
        await until(
            lambda: server.request("GET", path, None, auth)["status"] == "completed",
            10,
            "the task to complete",
        )
        # (in order: the final status is tried only once the two before it are delivered)
        await until(
            lambda: any(a["body"]["status"] == "queued" for a in receiver.attempts),
            10,
            "a refused attempt",
        )
        server.signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        server.close()
    refused = {a["body"]["delivery_id"] for a in receiver.attempts}
    receiver.accepting = True
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        # at least once: a request the killed server had already sent may be read (and
        # accepted) only now, so deliveries count once per `delivery_id`
        delivered = await until(
            lambda: len(once(receiver.accepted())) == len(STATUSES) and once(receiver.accepted()),
            20,
            lambda: f"three deliveries after the restart, got {receiver.attempts}",
        )
    finally:
        server.close()
    assert [body["status"] for body in delivered] == STATUSES
    assert all(body["task_id"] == task["id"] for body in delivered)
    assert delivered[0]["delivery_id"] in refused  # the same delivery, sent again
    for attempt in receiver.attempts:
        check_signature(attempt)


def test_ipv4_addresses_inside_ipv6_forms_are_judged_as_ipv4() -> None:
    from minidevin.runtime.webhooks import refused_address

    for address in ("2002:7f00:1::1", "2002:a00:1::1", "::ffff:10.0.0.1"):
        assert refused_address(address) is not None, address
    assert refused_address("2002:808:808::1") is None  # 6to4 of 8.8.8.8: public


async def test_the_webhook_secret_is_stored_sealed(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"webhook_allow_private": True})
    (tmp_path / "w").mkdir()
    async with Runtime(settings) as runtime:
        await runtime.create_session(
            "s", tmp_path / "w", webhook_url="http://127.0.0.1:9/hook", webhook_secret=SECRET
        )
    stored = b"".join(p.read_bytes() for p in settings.data_dir.iterdir() if p.is_file())
    assert SECRET.encode() not in stored


async def test_a_slow_receiver_holds_only_its_own_line_and_settled_rows_are_pruned(
    settings: Settings, openai_server: ScriptedOpenAIServer, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail_first = 0
    gate = asyncio.Event()  # the slow receiver answers nothing until the test opens it
    slow_app = web.Application()

    async def hang(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({})

    slow_app.router.add_post("/hook", hang)
    runner = web.AppRunner(slow_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    slow_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    openai_server.script([finish("one"), finish("two")])
    try:
        async with serve(webhook_settings(settings), openai_server) as client:
            user = await sign_up(client)
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            slow = await expect_json(
                await make_session(client, user, tmp_path / "a", webhook_url=slow_url), 201
            )
            await create_task(client, user, slow["id"], "first")
            fast = await expect_json(
                await make_session(client, user, tmp_path / "b", webhook_url=receiver.url), 201
            )
            await create_task(client, user, fast["id"], "second")
            await until(lambda: len(receiver.accepted()) == len(STATUSES), 10, "the fast line")
            gate.set()
            store = client.app[RUNTIME].store

            async def delivered() -> int:
                rows = "SELECT count(*) AS n FROM webhook_deliveries WHERE delivered_at IS NOT NULL"
                return int((await store.fetch_one(rows))["n"])

            await until(lambda: _is(delivered(), 2 * len(STATUSES)), 10, "the slow line too")
            await store.forget_webhooks(time.time() + 1, 8)  # settled before now+1: all
            assert await delivered() == 0
    finally:
        gate.set()
        await runner.cleanup()


async def _is(count: Any, wanted: int) -> bool:
    return bool(await count == wanted)
