"""Health, CORS, registration, login, API keys, and the error format of every refusal."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from fix_a_test import fix_a_test_turns
from http_helpers import (
    ALLOWED_ORIGIN,
    PASSWORD,
    artifacts_of,
    expect_error,
    expect_json,
    get_task,
    handshake_headers,
    parse_timestamp,
    run_fix_a_test,
    sign_up,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer
from waiting import until

from minidevin import __version__
from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


async def test_health_needs_no_credentials(client: TestClient) -> None:
    health = await expect_json(await client.get("/health"))
    assert health["status"] == "healthy" and health["version"] == __version__


async def test_cors_answers_allowed_origins_only(client: TestClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    for origin in (ALLOWED_ORIGIN, "http://localhost:3000"):
        response = await client.options("/api/sessions", headers={"Origin": origin, **preflight})
        assert response.status < 300
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
        simple = await client.get("/health", headers={"Origin": origin})
        assert simple.headers["Access-Control-Allow-Origin"] == origin
    for origin in ("http://evil.example", "null", "http://localhost:5173.evil.example"):
        response = await client.options("/api/sessions", headers={"Origin": origin, **preflight})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Methods" not in response.headers
        simple = await client.get("/health", headers={"Origin": origin})
        assert simple.status == 200
        assert "Access-Control-Allow-Origin" not in simple.headers
    # refusals carry the CORS headers too, so a browser can read the error
    refused = await client.get("/api/sessions", headers={"Origin": ALLOWED_ORIGIN})
    await expect_error(refused, 401, "UNAUTHORIZED")
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


# -- registration, login, keys -----------------------------------------------------------------


async def test_register_login_and_api_keys_work_together(client: TestClient) -> None:
    user = await sign_up(client)
    for headers in (user.bearer, user.key):
        assert await expect_json(await client.get("/api/sessions", headers=headers)) == []
    # logging in again gives a token that works too; the email is case-insensitive
    login = await expect_json(
        await client.post(
            "/api/auth/login", json={"email": "  ADA@example.COM ", "password": PASSWORD}
        )
    )
    fresh = {"Authorization": f"Bearer {login['access_token']}"}
    assert await expect_json(await client.get("/api/sessions", headers=fresh)) == []
    # a key with an expiry reports it; every key is different
    expiry = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    key = await expect_json(
        await client.post(
            "/api/auth/api-keys",
            json={"name": "ci", "expires_at": expiry.isoformat()},
            headers=user.key,
        ),
        201,
    )
    assert parse_timestamp(key["expires_at"]) == expiry
    assert key["key"].startswith("md_") and key["key"] != user.api_key
    parse_timestamp(key["created_at"])
    listed = await client.get("/api/sessions", headers={"X-API-Key": key["key"]})
    assert listed.status == 200


async def test_duplicate_registration_is_409(client: TestClient) -> None:
    user = await sign_up(client)
    for email in ("ada@example.com", "ADA@Example.com"):
        response = await client.post(
            "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Ada 2"}
        )
        await expect_error(response, 409, {"CONFLICT", "EMAIL_TAKEN"})
    assert (await expect_json(await client.get("/api/sessions", headers=user.key))) == []


async def test_wrong_password_and_unknown_email_get_the_same_401(client: TestClient) -> None:
    await sign_up(client)
    bodies = []
    for email, password in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("ada@example.com", "x" * 100),  # over bcrypt's 72 bytes: still just wrong
    ]:
        response = await client.post("/api/auth/login", json={"email": email, "password": password})
        bodies.append(await expect_error(response, 401, "UNAUTHORIZED"))
    assert len({body["detail"] for body in bodies}) == 1


BAD_REGISTRATIONS: list[tuple[Any, str]] = [
    ({"password": PASSWORD, "name": "Ada"}, "email"),
    ({"email": "not-an-email", "password": PASSWORD, "name": "Ada"}, "email"),
    ({"email": "a@b", "password": PASSWORD, "name": "Ada"}, "email"),
    ({"email": "ada@example.com", "name": "Ada"}, "password"),
    ({"email": "ada@example.com", "password": "short", "name": "Ada"}, "password"),
    ({"email": "ada@example.com", "password": "x" * 73, "name": "Ada"}, "password"),
    ({"email": "ada@example.com", "password": "é" * 37, "name": "Ada"}, "password"),  # 74 bytes
    ({"email": "ada@example.com", "password": PASSWORD}, "name"),
    ({"email": "ada@example.com", "password": PASSWORD, "name": ""}, "name"),
    ({"email": "ada@example.com", "password": PASSWORD, "name": "   "}, "name"),
    (b"email=ada@example.com", "JSON"),
    (b'[{"email": "ada@example.com"}]', "JSON object"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_REGISTRATIONS)
async def test_bad_registrations_are_422_naming_the_field(
    client: TestClient, payload: Any, field: str
) -> None:
    if isinstance(payload, bytes):
        response = await client.post(
            "/api/auth/register", data=payload, headers={"Content-Type": "application/json"}
        )
    else:
        response = await client.post("/api/auth/register", json=payload)
    body = await expect_error(response, 422, "VALIDATION_ERROR")
    assert field in body["detail"], body


async def test_exactly_72_bytes_of_password_is_accepted(client: TestClient) -> None:
    password = "é" * 36  # 72 bytes
    await expect_json(
        await client.post(
            "/api/auth/register",
            json={"email": "long@example.com", "password": password, "name": "Long"},
        ),
        201,
    )
    login = await client.post(
        "/api/auth/login", json={"email": "long@example.com", "password": password}
    )
    assert (await expect_json(login))["token_type"] == "bearer"


async def test_bad_login_and_api_key_bodies_are_422(client: TestClient) -> None:
    response = await client.post("/api/auth/login", json={"email": "ada@example.com"})
    assert "password" in (await expect_error(response, 422, "VALIDATION_ERROR"))["detail"]
    user = await sign_up(client)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for payload, field in [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "k", "expires_at": past}, "expires_at"),
    ]:
        response = await client.post("/api/auth/api-keys", json=payload, headers=user.bearer)
        body = await expect_error(response, 422, "VALIDATION_ERROR")
        assert field in body["detail"], (payload, body)


# -- 401 ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512
async def test_missing_or_bad_credentials_are_401(client: TestClient, settings: Settings) -> None:
    user = await sign_up(client)
    secret = settings.jwt_secret
    assert secret is not None
    now = int(time.time())
    claims = {"sub": user.id, "iat": now, "exp": now + 600}
    credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {user.token}x"},
        {"Authorization": f"Basic {user.token}"},
        {"Authorization": "Bearer " + jwt.encode(claims, "another-secret-" + "y" * 32, "HS256")},
        {"Authorization": "Bearer " + jwt.encode({**claims, "exp": now - 60}, secret, "HS256")},
        {"Authorization": "Bearer " + jwt.encode({**claims, "sub": str(uuid.uuid4())}, secret)},
        {"Authorization": "Bearer " + jwt.encode({"sub": user.id, "iat": now}, secret, "HS256")},
        {"Authorization": "Bearer " + jwt.encode(claims, secret, "HS512")},
        {"Authorization": "Bearer " + jwt.encode(claims, None, "none")},
        {"X-API-Key": "md_not-a-real-key"},
        {"X-API-Key": user.api_key + "x"},
        {"X-API-Key": user.api_key[3:]},
        {"X-API-Key": user.token},
    ]
    for headers in credentials:
        response = await client.get("/api/sessions", headers=headers)
        await expect_error(response, 401, "UNAUTHORIZED")
    # every protected route refuses an anonymous caller in the same way
    some_id = str(uuid.uuid4())
    for method, path in [
        ("POST", "/api/auth/api-keys"),
        ("GET", "/api/models"),
        ("GET", "/api/providers"),
        ("POST", "/api/sessions"),
        ("GET", f"/api/sessions/{some_id}"),
        ("DELETE", f"/api/sessions/{some_id}"),
        ("GET", f"/api/sessions/{some_id}/tasks"),
        ("POST", f"/api/sessions/{some_id}/tasks"),
        ("GET", f"/api/tasks/{some_id}"),
        ("POST", f"/api/tasks/{some_id}/stop"),
        ("POST", f"/api/tasks/{some_id}/input"),
        ("GET", f"/api/tasks/{some_id}/artifacts"),
        ("GET", f"/api/tasks/{some_id}/artifacts/{some_id}"),
    ]:
        await expect_error(await client.request(method, path, json={}), 401, "UNAUTHORIZED")


async def test_an_api_key_past_its_expiry_is_401(client: TestClient, runtime: Runtime) -> None:
    user = await sign_up(client)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    key = await expect_json(
        await client.post(
            "/api/auth/api-keys",
            json={"name": "short-lived", "expires_at": soon.isoformat()},
            headers=user.bearer,
        ),
        201,
    )
    assert (await client.get("/api/sessions", headers={"X-API-Key": key["key"]})).status == 200
    await until(lambda: datetime.now(UTC) > soon, what="the key's expiry")  # time passes
    response = await client.get("/api/sessions", headers={"X-API-Key": key["key"]})
    await expect_error(response, 401, "UNAUTHORIZED")


# -- unknown routes and methods ----------------------------------------------------------------


async def test_unknown_routes_are_404_and_wrong_methods_405_in_the_error_format(
    client: TestClient,
) -> None:
    user = await sign_up(client)
    for path, headers in [
        ("/nope", {}),
        ("/api/nope", {}),
        ("/api/nope", user.bearer),
        ("/api/sessions/a/b/c", user.key),
    ]:
        await expect_error(await client.get(path, headers=headers), 404, "NOT_FOUND")
    for method, path, headers in [
        ("POST", "/health", {}),
        ("GET", "/api/auth/login", {}),
        ("PUT", "/api/sessions", user.bearer),
        ("DELETE", f"/api/tasks/{uuid.uuid4()}", user.bearer),
        ("PATCH", f"/api/sessions/{uuid.uuid4()}", user.key),
    ]:
        response = await client.request(method, path, headers=headers)
        await expect_error(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers.get("Allow"), (method, path)


async def test_a_body_over_the_limit_is_413_in_the_error_format(
    client: TestClient, settings: Settings
) -> None:
    user = await sign_up(client)
    big = {"name": "x" * (settings.max_body_bytes + 1), "working_directory": "/"}
    response = await client.post("/api/sessions", json=big, headers=user.bearer)
    await expect_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await expect_json(await client.get("/api/sessions", headers=user.bearer)) == []


async def test_models_and_providers_are_listed(client: TestClient) -> None:
    user = await sign_up(client)
    models = await expect_json(await client.get("/api/models", headers=user.bearer))
    gpt = next(m for m in models["models"] if m["id"] == "gpt-4o")
    assert gpt["provider"] == "openai" and gpt["context_window"] > 0
    only = await expect_json(await client.get("/api/models?provider=openai", headers=user.key))
    assert only["models"] and {m["provider"] for m in only["models"]} == {"openai"}
    response = await client.get("/api/models?provider=nobody", headers=user.key)
    assert "provider" in (await expect_error(response, 422, "VALIDATION_ERROR"))["detail"]
    providers = await expect_json(await client.get("/api/providers", headers=user.key))
    openai = next(p for p in providers["providers"] if p["id"] == "openai")
    assert openai["configured"] is True and openai["models_count"] >= 1
    assert isinstance(providers["default_model"], str)


# -- ownership ----------------------------------------------------------------------------------


async def test_another_users_resources_are_404_on_every_route(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(fix_a_test_turns())
    owner = await sign_up(client, "owner@example.com")
    session, task, _ = await run_fix_a_test(client, owner, buggy_repo)
    artifact = (await artifacts_of(client, owner, task["id"]))["plan.json"]
    intruder = await sign_up(client, "intruder@example.com")

    sid, tid, aid, kid = session["id"], task["id"], artifact["id"], owner.api_key_id
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("DELETE", f"/api/auth/api-keys/{kid}", None),
        ("GET", f"/api/sessions/{sid}", None),
        ("DELETE", f"/api/sessions/{sid}", None),
        ("GET", f"/api/sessions/{sid}/tasks", None),
        ("POST", f"/api/sessions/{sid}/tasks", {"description": "steal", "model": "gpt-4o"}),
        ("GET", f"/api/tasks/{tid}", None),
        ("POST", f"/api/tasks/{tid}/stop", None),
        ("POST", f"/api/tasks/{tid}/input", {"content": "hello"}),
        ("GET", f"/api/tasks/{tid}/artifacts", None),
        ("GET", f"/api/tasks/{tid}/artifacts/{aid}", None),
    ]
    for headers in (intruder.bearer, intruder.key):
        for method, url, payload in routes:
            response = await client.request(method, url, json=payload, headers=headers)
            await expect_error(response, 404, "NOT_FOUND")
        assert await expect_json(await client.get("/api/sessions", headers=headers)) == []
        keys = await expect_json(await client.get("/api/auth/api-keys", headers=headers))
        assert kid not in {key["id"] for key in keys}
    refused = await client.get(ws_path(tid, intruder.token), headers=handshake_headers())
    await expect_error(refused, 404, "NOT_FOUND")

    # unknown ids are the same 404 for the owner
    unknown = str(uuid.uuid4())
    for method, url, payload in [
        ("GET", f"/api/sessions/{unknown}", None),
        ("DELETE", f"/api/sessions/{unknown}", None),
        ("GET", f"/api/sessions/{unknown}/tasks", None),
        ("POST", f"/api/sessions/{unknown}/tasks", {"description": "x", "model": "gpt-4o"}),
        ("GET", f"/api/tasks/{unknown}", None),
        ("POST", f"/api/tasks/{unknown}/stop", None),
        ("GET", f"/api/tasks/{unknown}/artifacts", None),
        ("GET", f"/api/tasks/{tid}/artifacts/{unknown}", None),
        ("GET", f"/api/tasks/{tid}/artifacts/..%2F..%2Fminidevin.sqlite3", None),
    ]:
        response = await client.request(method, url, json=payload, headers=owner.bearer)
        await expect_error(response, 404, "NOT_FOUND")

    # the intruder changed nothing
    assert (await client.get("/api/sessions", headers=owner.key)).status == 200
    sessions = await expect_json(await client.get("/api/sessions", headers=owner.bearer))
    assert [(s["id"], s["task_count"]) for s in sessions] == [(sid, 1)]
    assert (await get_task(client, owner, tid))["status"] == "completed"
    assert len(openai_server.requests) == 3
