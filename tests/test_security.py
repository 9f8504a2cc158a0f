"""Rate limits, CORS, auth hardening and workspace confinement through a real server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from waiting import fresh_minute

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.http.keys import RUNTIME
from minidevin.runtime.auth import hash_api_key, new_api_key
from minidevin.runtime.events import utc_now
from minidevin.runtime.schemas import ApiKey
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import new_id

SECRET = "security-secret-" + "x" * 32
PASSWORD = "correct horse battery"
LAPSED = "2021-01-01T00:00:00Z"  # an expiry in the past


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "jwt_secret": SECRET,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "rate_limit_login": 0,
        "allow_unsandboxed_multiuser": True,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
async def serve(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> AsyncIterator[Any]:
    async def start(**overrides: Any) -> TestClient:
        return await aiohttp_client(
            create_app(Runtime(make_settings(tmp_path, database_url, **overrides)))
        )

    yield start


async def register(client: TestClient, email: str = "a@example.com") -> dict[str, str]:
    """Register and log in; the Authorization header."""
    await client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "A"}
    )
    answer = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    token = (await answer.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


def is_error(body: Any, code: str) -> bool:
    return set(body) == {"detail", "code", "timestamp"} and body["code"] == code


# -- rate limits -------------------------------------------------------------------------------


async def test_anonymous_requests_are_limited_per_address_with_headers(serve: Any) -> None:
    await fresh_minute()
    client = await serve(rate_limit_anonymous=3, rate_limit_authenticated=0)
    body = {"email": "nobody@example.com", "password": "wrong-password"}
    answers = [await client.post("/api/auth/login", json=body) for _ in range(4)]
    assert [a.status for a in answers] == [401, 401, 401, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["X-RateLimit-Limit"] == "3" for a in answers)
    reset = int(answers[0].headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 60
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert is_error(await answers[3].json(), "RATE_LIMITED")
    assert (await client.get("/health")).status == 200  # exempt
    assert "X-RateLimit-Limit" not in (await client.get("/health")).headers


async def test_authenticated_requests_count_per_user(serve: Any) -> None:
    await fresh_minute()
    client = await serve(rate_limit_anonymous=0, rate_limit_authenticated=5)
    alice = await register(client, "alice@example.com")
    bob = await register(client, "bob@example.com")
    statuses = [(await client.get("/api/sessions", headers=alice)).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    answer = await client.get("/api/sessions", headers=bob)
    assert answer.status == 200 and answer.headers["X-RateLimit-Remaining"] == "4"


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(serve: Any) -> None:
    await fresh_minute()
    untrusted = await serve(rate_limit_anonymous=2)
    statuses = [
        (await untrusted.get("/api/sessions", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status
        for i in range(3)
    ]
    assert statuses == [401, 401, 429]


async def test_forwarded_for_is_the_client_behind_a_trusted_proxy(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    await fresh_minute()
    settings = make_settings(
        tmp_path, database_url, rate_limit_anonymous=2, trust_forwarded_for=True
    )
    client = await aiohttp_client(create_app(Runtime(settings)))
    statuses = [
        (await client.get("/api/sessions", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status
        for i in range(3)
    ]
    assert statuses == [401, 401, 401]
    # what the client put before the proxy's own entry does not make it someone else
    spoofed = [
        (
            await client.get("/api/sessions", headers={"X-Forwarded-For": f"10.1.0.{i}, 192.0.2.7"})
        ).status
        for i in range(3)
    ]
    assert spoofed == [401, 401, 429]


# -- CORS ---------------------------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers(serve: Any) -> None:
    client = await serve(rate_limit_anonymous=10)
    preflight = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    answer = await client.options("/api/sessions", headers=preflight)
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    stranger = await client.options(
        "/api/sessions", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in stranger.headers
    simple = await client.get("/api/sessions", headers={"Origin": "http://localhost:3000"})
    assert simple.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "X-RateLimit-Remaining" in simple.headers["Access-Control-Expose-Headers"]


async def test_cors_origins_setting_replaces_the_defaults(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {"CORS_ORIGINS": "https://app.example.com"},
        data_dir=tmp_path / "data",
        jwt_secret=SECRET,
    )
    client = await aiohttp_client(create_app(Runtime(settings)))
    allowed = await client.get("/health", headers={"Origin": "https://app.example.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    default = await client.get("/health", headers={"Origin": "http://localhost:5173"})
    assert "Access-Control-Allow-Origin" not in default.headers


# -- auth hardening ------------------------------------------------------------------------------


async def test_api_keys_list_without_secrets_and_revoke_at_once(serve: Any) -> None:
    client = await serve()
    auth = await register(client)
    created = await (
        await client.post("/api/auth/api-keys", json={"name": "ci"}, headers=auth)
    ).json()
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/api/sessions", headers=key)).status == 200
    listed = await (await client.get("/api/auth/api-keys", headers=key)).json()
    assert listed == [{k: created[k] for k in ("id", "name", "created_at", "expires_at")}]
    assert created["key"] not in str(listed)
    other = await register(client, "other@example.com")
    foreign = await client.delete(f"/api/auth/api-keys/{created['id']}", headers=other)
    assert foreign.status == 404
    assert (await client.delete(f"/api/auth/api-keys/{created['id']}", headers=auth)).status == 204
    refused = await client.get("/api/sessions", headers=key)
    assert refused.status == 401 and is_error(await refused.json(), "UNAUTHORIZED")
    assert await (await client.get("/api/auth/api-keys", headers=auth)).json() == []


async def test_expired_api_keys_and_past_expiry_are_refused(serve: Any) -> None:
    client = await serve()
    auth = await register(client)
    past = await client.post(
        "/api/auth/api-keys",
        json={"name": "old", "expires_at": "2020-01-01T00:00:00Z"},
        headers=auth,
    )
    assert past.status == 422
    created = await (
        await client.post(
            "/api/auth/api-keys",
            json={"name": "soon", "expires_at": "2999-01-01T00:00:00Z"},
            headers=auth,
        )
    ).json()
    assert (await client.get("/api/sessions", headers={"X-API-Key": created["key"]})).status == 200
    # a key of that user whose expiry has passed since it was made (the store takes any)
    store = client.server.app[RUNTIME].store
    owner = await store.api_key_by_hash(hash_api_key(created["key"]))
    lapsed = new_api_key()
    stored = ApiKey(id=new_id(), name="lapsed", created_at=utc_now(), expires_at=LAPSED)
    await store.insert_api_key(stored, owner["user_id"], hash_api_key(lapsed), lapsed[:8], None)
    answer = await client.get("/api/sessions", headers={"X-API-Key": lapsed})
    assert answer.status == 401 and "expired" in (await answer.json())["detail"]


@pytest.mark.parametrize(
    "claims, algorithm, secret",
    [
        ({"sub": "USER", "iat": 1, "exp": 2}, "HS256", SECRET),  # expired
        ({"sub": "USER", "iat": 1}, "HS256", SECRET),  # no exp
        ({"sub": "USER", "iat": 1, "exp": 4_000_000_000}, "HS256", "another-secret-" + "y" * 32),
        ({"sub": "USER", "iat": 1, "exp": 4_000_000_000}, "none", None),
        ({"sub": "nobody", "iat": 1, "exp": 4_000_000_000}, "HS256", SECRET),  # no such user
    ],
)
async def test_bad_tokens_are_refused(
    serve: Any, claims: dict[str, Any], algorithm: str, secret: str | None
) -> None:
    client = await serve()
    auth = await register(client)
    good = auth["Authorization"].split()[1]
    user_id = jwt.decode(good, options={"verify_signature": False})["sub"]
    claims = {k: (user_id if v == "USER" else v) for k, v in claims.items()}
    token = jwt.encode(claims, secret, algorithm=algorithm)
    for headers, path in (
        ({"Authorization": f"Bearer {token}"}, "/api/sessions"),
        ({}, f"/ws/tasks/x?token={token}"),
    ):
        answer = await client.get(path, headers=headers)
        assert answer.status == 401 and is_error(await answer.json(), "UNAUTHORIZED")


async def test_login_answers_alike_and_never_stalls_the_loop(serve: Any) -> None:
    client = await serve()
    await register(client)

    async def login(email: str) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        answer = await client.post(
            "/api/auth/login", json={"email": email, "password": "nope-nope"}
        )
        return answer.status, await answer.json(), time.monotonic() - started

    async def health_latency() -> float:
        started = time.monotonic()
        await client.get("/health")
        return time.monotonic() - started

    unknown, wrong, health = await asyncio.gather(
        login("ghost@example.com"), login("a@example.com"), health_latency()
    )
    assert unknown[0] == wrong[0] == 401
    assert unknown[1]["detail"] == wrong[1]["detail"]
    assert 0.33 < unknown[2] / wrong[2] < 3, (unknown[2], wrong[2])
    assert health < min(unknown[2], wrong[2]), "bcrypt must run off the event loop"


@pytest.mark.parametrize("password", ["short", "x" * 73, "é" * 37])
async def test_passwords_must_be_8_to_72_bytes(serve: Any, password: str) -> None:
    client = await serve()
    answer = await client.post(
        "/api/auth/register", json={"email": "p@example.com", "password": password, "name": "P"}
    )
    assert answer.status == 422 and "password" in (await answer.json())["detail"]


async def test_a_72_byte_password_works(serve: Any) -> None:
    client = await serve()
    password = "é" * 36  # 72 bytes
    body = {"email": "p@example.com", "password": password, "name": "P"}
    assert (await client.post("/api/auth/register", json=body)).status == 201
    assert (await client.post("/api/auth/login", json=body)).status == 200


# -- workspaces ------------------------------------------------------------------------------------


async def test_working_directories_must_stay_inside_the_roots(serve: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "sneaky")
    client = await serve(workspace_roots=(root,))
    auth = await register(client)

    async def create(directory: Path | str) -> Any:
        return await client.post(
            "/api/sessions", json={"name": "s", "working_directory": str(directory)}, headers=auth
        )

    assert (await create(root / "project")).status == 201
    for escape in (outside, root / "sneaky", f"{root}/project/../../outside", "/etc"):
        answer = await create(escape)
        assert answer.status == 403 and is_error(await answer.json(), "FORBIDDEN"), escape
    missing = await create(root / "missing")  # the same answer: nothing told about the host
    assert missing.status == 403 and is_error(await missing.json(), "FORBIDDEN")
