"""A hostile tenant against accounts and input: each attack through the real server.

`replay:` for operators only, non-UTF-8 credentials, oversized integers, strict
types, normalized emails, password rules, keys that would outlive their
creator, logout, password change, the reserved local user, data file modes,
login limits per address and per account, bounded bcrypt under a login flood,
and a single user when commands run without a sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    PASSWORD,
    User,
    expect_error,
    expect_json,
    handshake_headers,
    serve,
    sign_up,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import fresh_minute

from minidevin.api import Runtime
from minidevin.http.keys import RUNTIME
from minidevin.runtime.providers.base import ProviderError
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TRAJECTORY = ROOT / "examples" / "buggy-calc.trajectory.json"
BIG_INT = "1" * 4301  # over Python's int-string limit (4,300 digits)


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "jwt_secret": "hostile-secret-" + "x" * 32,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "rate_limit_login": 0,
        "allow_unsandboxed_multiuser": True,
    }
    return Settings(**{**values, **overrides})


@asynccontextmanager
async def server(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None, **overrides: Any
) -> AsyncIterator[TestClient]:
    async with serve(make_settings(tmp_path, database_url, **overrides), openai_server) as client:
        yield client


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def raw_request(client: TestClient, head: bytes) -> tuple[int, bytes]:
    """Send a hand-made request head (any bytes); (status, body) of the answer."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- replay: ------------------------------------------------------------------------------------


async def task_answer(client: TestClient, user: User, session: str, model: str) -> Any:
    body = {"description": "replay it", "model": model}
    return await client.post(f"/api/sessions/{session}/tasks", json=body, headers=user.key)


async def new_session(client: TestClient, user: User, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    answer = await client.post(
        "/api/sessions", json={"name": "s", "working_directory": str(directory)}, headers=user.key
    )
    return (await expect_json(answer, 201))["id"]


async def test_replay_without_a_replay_dir_refuses_everything_alike(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        session = await new_session(client, user, tmp_path / "work")
        before = rss_mib()
        bodies = []
        for model in (
            "replay:/dev/zero",
            f"replay:{TRAJECTORY}",  # a good recording, but no replay dir is set
            f"replay:{tmp_path / 'missing.json'}",
            "replay:/etc/passwd",
            "replay:/proc/self/environ",
        ):
            started = time.monotonic()
            body = await expect_error(
                await task_answer(client, user, session, model), 400, "REPLAY_REFUSED"
            )
            assert time.monotonic() - started < 1.0, model
            bodies.append((body["detail"], body["code"]))
        assert len(set(bodies)) == 1 and bodies[0][1] == "REPLAY_REFUSED", bodies
        assert rss_mib() - before < 50  # /dev/zero was never read


async def test_replay_reads_only_regular_small_files_beneath_the_replay_dir(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    replays = tmp_path / "replays"
    (replays / "sub").mkdir(parents=True)
    shutil.copy(TRAJECTORY, replays / "good.json")
    shutil.copy(TRAJECTORY, replays / "sub" / "good.json")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(TRAJECTORY, outside / "good.json")
    (outside / "notes.txt").write_text("not a trajectory\n")
    (replays / "notes.txt").write_text("not a trajectory\n")
    os.symlink(outside / "good.json", replays / "link.json")
    os.symlink(outside, replays / "linkdir")
    os.symlink("/dev/zero", replays / "zero.json")
    os.mkfifo(replays / "fifo.json")
    with open(replays / "huge.json", "wb") as handle:
        handle.truncate(10 * 1024 * 1024 + 1)  # sparse: costs no disk
    async with server(tmp_path, openai_server, database_url, replay_dir=replays) as client:
        user = await sign_up(client)
        session = await new_session(client, user, tmp_path / "work")
        for good in (f"replay:{replays / 'good.json'}", "replay:sub/good.json"):
            await expect_json(await task_answer(client, user, session, good), 201)
        bodies = set()
        for bad in (
            "replay:missing.json",
            "replay:notes.txt",  # exists, not a recording: the same answer as missing
            f"replay:{outside / 'notes.txt'}",
            f"replay:{outside / 'good.json'}",
            f"replay:{replays}/../outside/good.json",
            "replay:link.json",
            "replay:linkdir/good.json",
            "replay:zero.json",
            "replay:fifo.json",  # never blocks on a FIFO
            "replay:huge.json",
            "replay:sub",
            "replay:/dev/zero",
        ):
            started = time.monotonic()
            body = await expect_error(
                await task_answer(client, user, session, bad), 400, "REPLAY_REFUSED"
            )
            assert time.monotonic() - started < 1.0, bad
            bodies.add(body["detail"])
        assert len(bodies) == 1, bodies


def test_replay_is_checked_again_when_read(tmp_path: Path) -> None:
    replays = tmp_path / "replays"
    replays.mkdir()
    recording = replays / "run.json"
    shutil.copy(TRAJECTORY, recording)
    registry = ProviderRegistry({})
    registry.restrict_replay(replays)
    model_id = registry.check_configured(f"replay:{recording}").id
    assert registry.create(model_id).remaining > 0
    recording.unlink()  # swapped for a link after the task was accepted
    os.symlink("/etc/passwd", recording)
    with pytest.raises(ProviderError) as refused:
        registry.create(model_id)
    assert refused.value.code == "REPLAY_REFUSED"
    local = ProviderRegistry({})  # `minidevin run` and embedders: any local path
    assert local.create(f"replay:{TRAJECTORY}").remaining > 0


# -- input hygiene ------------------------------------------------------------------------------


async def test_non_utf8_credentials_are_401_on_rest_and_websocket(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        await sign_up(client)
        upgrade = "".join(f"{k}: {v}\r\n" for k, v in handshake_headers().items()).encode()
        for path, extra in (("/api/sessions", b""), ("/ws/tasks/some-task", upgrade)):
            for header in (b"Authorization: Bearer \xff\xfe\x80abc", b"X-API-Key: md_\xc3\x28\xff"):
                head = (
                    f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".encode()
                    + extra
                    + header
                    + b"\r\n\r\n"
                )
                status, body = await raw_request(client, head)
                assert status == 401, (path, header, status, body)
                assert b'"code": "UNAUTHORIZED"' in body and b"Traceback" not in body
        health = await client.get("/health")
        assert health.status == 200


async def test_oversized_integers_are_422_on_rest_and_an_error_on_websocket(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        session = await new_session(client, user, tmp_path / "work")
        raw = f'{{"description": "x", "max_iterations": {BIG_INT}}}'.encode()
        headers = {**user.key, "Content-Type": "application/json"}
        answer = await client.post(f"/api/sessions/{session}/tasks", data=raw, headers=headers)
        await expect_error(answer, 422, "VALIDATION_ERROR")
        login = f'{{"email": "a@example.com", "password": {BIG_INT}}}'.encode()
        answer = await client.post("/api/auth/login", data=login, headers=headers)
        await expect_error(answer, 422, "VALIDATION_ERROR")
        task = await expect_json(
            await task_answer(client, user, session, "gpt-4o"), 201
        )  # (it fails: the scripted server has no turn for it; the socket still works)
        ws = await client.ws_connect(f"/ws/tasks/{task['id']}?token={user.token}")
        try:
            await ws.send_str(f'{{"type": "input", "content": "x", "n": {BIG_INT}}}')
            async with asyncio.timeout(10):
                while True:
                    message = await ws.receive()
                    if message.type.name != "TEXT":
                        break  # closed cleanly (the task ended): no traceback was sent
                    data = message.json()
                    assert "Traceback" not in message.data
                    if data["type"] == "error" and "task_id" not in data:
                        assert data["code"] == "VALIDATION_ERROR", data
                        break
        finally:
            await ws.close()
        assert ws.close_code in (None, 1000), ws.close_code


async def test_known_fields_are_strictly_typed(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        session = await new_session(client, user, tmp_path / "work")
        url = f"/api/sessions/{session}/tasks"
        for field, value in (
            ("max_iterations", "5"),
            ("max_iterations", True),
            ("max_iterations", 5.0),
            ("description", 5),
            ("max_cost_usd", "1.5"),
        ):
            body = {"description": "x", "model": "gpt-4o", field: value}
            answer = await client.post(url, json=body, headers=user.key)
            assert field in (await expect_error(answer, 422, "VALIDATION_ERROR"))["detail"]
        body = {"description": "x", "model": "gpt-4o", "max_iterations": 5, "max_cost_usd": 2}
        await expect_json(await client.post(url, json=body, headers=user.key), 201)


# -- accounts -----------------------------------------------------------------------------------


async def register(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return await client.post(
        "/api/auth/register", json={"email": email, "password": password, "name": "N"}
    )


async def login(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_emails_are_normalized_and_control_characters_refused(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        nfc = unicodedata.normalize("NFC", "José@example.com")
        nfd = unicodedata.normalize("NFD", "José@example.com")
        assert nfc != nfd
        user = await expect_json(await register(client, nfc), 201)
        assert user["email"] == nfc.lower()
        await expect_error(await register(client, f"  {nfd.upper()} "), 409, "EMAIL_TAKEN")
        for spelling in (
            nfd,
            nfc.upper(),
            f" {nfd} ",
            "\uff2a\uff2f\uff33\uff25\u0301@example.com",
        ):
            await expect_json(await login(client, spelling))
        for bad in ("a\x00b@example.com", "a\x07b@example.com", "ab\u200b@example.com"):
            body = await expect_error(await register(client, bad), 422, "VALIDATION_ERROR")
            assert "email" in body["detail"]


async def test_passwords_without_nul_and_not_all_whitespace(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        for password in ("correct\x00horse", " " * 12, "\t\n  \u3000   "):
            body = await expect_error(
                await register(client, "p@example.com", password), 422, "VALIDATION_ERROR"
            )
            assert "password" in body["detail"]
        await expect_json(await register(client, "p@example.com", " spaced out ok "), 201)


async def test_the_local_user_cannot_be_registered(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        for email in ("local@minidevin.invalid", "LOCAL@MINIDEVIN.INVALID", "x@minidevin.invalid"):
            body = await expect_error(await register(client, email), 422, "VALIDATION_ERROR")
            assert "reserved" in body["detail"]


async def test_a_key_never_outlives_the_key_that_created_it(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        soon = datetime.now(UTC) + timedelta(hours=1)
        parent = await expect_json(
            await client.post(
                "/api/auth/api-keys",
                json={"name": "parent", "expires_at": soon.isoformat()},
                headers=user.bearer,
            ),
            201,
        )
        as_parent = {"X-API-Key": parent["key"]}
        later = (datetime.now(UTC) + timedelta(days=365)).isoformat()
        for request in ({"name": "forever"}, {"name": "later", "expires_at": later}):
            child = await expect_json(
                await client.post("/api/auth/api-keys", json=request, headers=as_parent), 201
            )
            expiry = datetime.fromisoformat(child["expires_at"].replace("Z", "+00:00"))
            assert expiry <= soon, child
        grandchild = await expect_json(
            await client.post(
                "/api/auth/api-keys", json={"name": "g"}, headers={"X-API-Key": child["key"]}
            ),
            201,
        )
        for key in (child["key"], grandchild["key"]):
            await expect_json(await client.get("/api/sessions", headers={"X-API-Key": key}))
        revoked = await client.delete(f"/api/auth/api-keys/{parent['id']}", headers=user.bearer)
        assert revoked.status == 204
        for key in (parent["key"], child["key"], grandchild["key"]):  # refused at once
            answer = await client.get("/api/sessions", headers={"X-API-Key": key})
            await expect_error(answer, 401, "UNAUTHORIZED")
        await expect_json(await client.get("/api/sessions", headers=user.key))  # another chain


async def test_logout_revokes_the_token(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        other = (await expect_json(await login(client, user.email)))["access_token"]
        assert (await client.post("/api/auth/logout", headers=user.bearer)).status == 204
        for path in ("/api/sessions", f"/ws/tasks/x?token={user.token}"):
            await expect_error(await client.get(path, headers=user.bearer), 401, "UNAUTHORIZED")
        await expect_json(
            await client.get("/api/sessions", headers={"Authorization": f"Bearer {other}"})
        )
        await expect_error(
            await client.post("/api/auth/logout", headers=user.key), 400, "BAD_REQUEST"
        )


async def test_a_password_change_revokes_tokens_and_optionally_keys(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
        second = (await expect_json(await login(client, user.email)))["access_token"]
        wrong = {"current_password": "not it at all", "new_password": "a new password 1"}
        answer = await client.post("/api/auth/password", json=wrong, headers=user.bearer)
        await expect_error(answer, 403, "WRONG_PASSWORD")
        change = {"current_password": PASSWORD, "new_password": "a new password 1"}
        answer = await client.post("/api/auth/password", json=change, headers=user.bearer)
        fresh = (await expect_json(answer))["access_token"]
        for token in (user.token, second):
            answer = await client.get("/api/sessions", headers={"Authorization": f"Bearer {token}"})
            await expect_error(answer, 401, "UNAUTHORIZED")
        await expect_json(
            await client.get("/api/sessions", headers={"Authorization": f"Bearer {fresh}"})
        )
        await expect_json(await client.get("/api/sessions", headers=user.key))  # keys kept
        await expect_error(await login(client, user.email), 401, "UNAUTHORIZED")
        again = {
            "current_password": "a new password 1",
            "new_password": "a third password",
            "revoke_api_keys": True,
        }
        answer = await client.post("/api/auth/password", json=again, headers=user.key)
        newest = (await expect_json(answer))["access_token"]
        await expect_error(await client.get("/api/sessions", headers=user.key), 401, "UNAUTHORIZED")
        await expect_json(
            await client.get("/api/sessions", headers={"Authorization": f"Bearer {newest}"})
        )


async def test_data_files_are_private(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "artifacts").mkdir(mode=0o755)
    (data / "artifacts" / "old").write_text("x")
    (data / "artifacts" / "old").chmod(0o644)
    async with server(tmp_path, openai_server, database_url, jwt_secret=None) as client:
        await sign_up(client)
        modes = {
            path.name: stat.S_IMODE(path.stat().st_mode)
            for path in [data, *data.rglob("*")]
            if not path.is_symlink()
        }
    assert modes["data"] == 0o700 and modes["artifacts"] == 0o700, modes
    database_files = ("minidevin.sqlite3", "minidevin.sqlite3-wal") if not database_url else ()
    for name in (*database_files, "jwt_secret", "old"):
        assert modes[name] == 0o600, (name, modes)
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


async def test_artifact_files_are_private(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(
        [ScriptedTurn(tool_calls=[("finish", {"summary": "done", "success": True})])]
    )
    session = await runtime.create_session("s", buggy_repo)
    task = await runtime.create_task(session.id, "finish", model="gpt-4o")
    assert (await runtime.wait(task.id)).status == "completed"
    files = list(runtime.settings.artifacts_dir.iterdir())
    assert len(files) == 3
    assert stat.S_IMODE(runtime.settings.artifacts_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}


async def test_no_statement_parameters_in_debug_logs(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    database_url: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with server(tmp_path, openai_server, database_url) as client:
        user = await sign_up(client)
    key_hash = hashlib.sha256(user.api_key.encode()).hexdigest()
    assert caplog.records  # debug logging was on
    for secret in (key_hash, "$2b$", user.api_key, PASSWORD):
        assert secret not in caplog.text


def test_serve_refuses_a_short_jwt_secret(tmp_path: Path) -> None:
    env = {**os.environ, "MINIDEVIN_JWT_SECRET": "a", "MINIDEVIN_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "minidevin.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "MINIDEVIN_JWT_SECRET" in done.stderr, done
    assert "Traceback" not in done.stderr


# -- floods -------------------------------------------------------------------------------------


async def test_login_limits_per_account_and_per_address_whatever_credentials(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(
        tmp_path, openai_server, database_url, rate_limit_login=4, trust_forwarded_for=True
    ) as client:
        await fresh_minute()  # (once the server is up: what follows is the count)
        user = await sign_up(client)  # (a register and a login: two of the account's four)
        wrong = {"email": user.email, "password": "guess guess"}
        answers = []
        for number in range(4):  # one account, four addresses, a valid key attached
            headers = {"X-Forwarded-For": f"10.0.0.{number + 1}", **user.key}
            answers.append(await client.post("/api/auth/login", json=wrong, headers=headers))
        assert [a.status for a in answers] == [401, 401, 429, 429]
        assert "Retry-After" in answers[-1].headers
        assert answers[-1].headers["X-RateLimit-Limit"] == "4"
        await expect_error(answers[-1], 429, "RATE_LIMITED")
        answers = []
        for number in range(5):  # one address, five accounts, a valid key attached
            body = {"email": f"victim{number}@example.com", "password": "guess guess"}
            headers = {"X-Forwarded-For": "10.9.9.9", **user.key}
            answers.append(await client.post("/api/auth/login", json=body, headers=headers))
        assert [a.status for a in answers] == [401, 401, 401, 401, 429]
        answer = await client.post(
            "/api/auth/register",
            json={"email": "new@example.com", "password": PASSWORD, "name": "N"},
            headers={"X-Forwarded-For": "10.9.9.9", **user.bearer},
        )
        await expect_error(answer, 429, "RATE_LIMITED")


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


async def test_a_login_flood_keeps_health_and_authenticated_requests_fast(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, database_url: str | None
) -> None:
    async with server(
        tmp_path,
        openai_server,
        database_url,
        trust_forwarded_for=True,  # (200 fake client addresses)
        password_hash_concurrency=1,
        password_hash_queue=4,  # (a short test: 5 hashes in all)
    ) as client:
        user = await sign_up(client)
        wrong = {"email": user.email, "password": "wrong wrong"}

        async def guess(number: int) -> int:
            headers = {"X-Forwarded-For": f"10.{number // 250}.{number % 250}.1"}
            answer = await client.post("/api/auth/login", json=wrong, headers=headers)
            if answer.status == 429:
                assert answer.headers["Retry-After"] == "1"
            return answer.status

        async def timed(path: str, headers: dict[str, str]) -> float:
            started = time.monotonic()
            answer = await client.get(path, headers=headers)
            assert answer.status == 200
            return time.monotonic() - started

        flood = [asyncio.create_task(guess(n)) for n in range(200)]
        health: list[float] = []
        authenticated: list[float] = []
        while not all(task.done() for task in flood) or len(health) < 20:
            health.append(await timed("/health", {}))
            authenticated.append(await timed("/api/sessions", user.key))
        statuses = await asyncio.gather(*flood)
        peak = client.app[RUNTIME].accounts.hashes.peak
    busy = statuses.count(429)
    print(
        f"login flood: {statuses.count(401)} checked, {busy} refused busy; "
        f"/health p95 {p95(health) * 1000:.1f} ms over {len(health)}, "
        f"authenticated p95 {p95(authenticated) * 1000:.1f} ms over {len(authenticated)}"
    )
    # at most 1 hashing + 4 waiting at any moment (a slot freed mid-flood takes one more)
    assert peak == 5 and set(statuses) <= {401, 429} and busy >= 180
    assert p95(health) < 0.05 and p95(authenticated) < 0.05  # (measured: ~1 ms and ~5 ms)


async def test_without_a_sandbox_the_server_serves_one_user(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    database_url: str | None,
    another_database_url: Callable[[], str | None],
) -> None:
    async with server(
        tmp_path / "one",
        openai_server,
        database_url,
        sandbox="off",
        allow_unsandboxed_multiuser=False,
    ) as client:
        assert (await expect_json(await client.get("/health")))["registration"] == "open"
        first, second = await asyncio.gather(
            register(client, "first@example.com"), register(client, "second@example.com")
        )
        assert sorted([first.status, second.status]) == [201, 403]
        refused = first if first.status == 403 else second
        body = await expect_error(refused, 403, "REGISTRATION_CLOSED")
        assert "MINIDEVIN_ALLOW_UNSANDBOXED_MULTIUSER" in body["detail"]
        assert (await expect_json(await client.get("/health")))["registration"] == "closed"
    async with server(
        tmp_path / "many",
        openai_server,
        another_database_url(),
        sandbox="off",
        allow_unsandboxed_multiuser=True,
    ) as client:
        for email in ("first@example.com", "second@example.com"):
            await expect_json(await register(client, email), 201)
        assert (await expect_json(await client.get("/health")))["registration"] == "open"
