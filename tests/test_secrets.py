"""Passwords, tokens and keys never show in logs, events, artifacts or answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.logging import configure_logging
from minidevin.runtime.settings import Settings

PASSWORD = "hunter2-but-longer"
PROVIDER_KEY = "sk-provider-SECRET-0123456789"


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("debug", "json")
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


async def test_no_secret_leaks_anywhere(
    aiohttp_client: Any,
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    json_logs: None,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)  # as on a real server
    monkeypatch.setenv("MINIDEVIN_JWT_SECRET", "jwt-SECRET-" + "z" * 32)
    echo_key = {
        "error": {
            "message": f"Incorrect API key provided: {PROVIDER_KEY}",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    openai_server.script(
        [
            ScriptedTurn(
                tool_calls=[("terminal", {"command": "env; cat ~/.bash_history 2>/dev/null"})]
            ),
            ScriptedTurn(tool_calls=[("finish", {"summary": "looked around"})]),
            ScriptedTurn(error_status=401, error_body=echo_key),
        ]
    )
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="jwt-SECRET-" + "z" * 32,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
    )
    env = {"OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": openai_server.base_url}
    client = await aiohttp_client(create_app(Runtime(settings, provider_env=env)))
    answers: list[str] = []

    async def call(method: str, path: str, **kw: Any) -> Any:
        response = await client.request(method, path, **kw)
        text = await response.text()
        answers.append(text)
        json_body = response.content_type == "application/json" and text
        return await response.json() if json_body else None

    user = {"email": "s@example.com", "password": PASSWORD, "name": "S"}
    await call("POST", "/api/auth/register", json=user)
    token = await client.post("/api/auth/login", json=user)
    access = (await token.json())["access_token"]
    auth = {"Authorization": f"Bearer {access}"}
    key = (
        await (await client.post("/api/auth/api-keys", json={"name": "k"}, headers=auth)).json()
    )["key"]
    await call("POST", "/api/auth/login", json={**user, "password": PASSWORD + "x"})
    session = await call(
        "POST",
        "/api/sessions",
        json={"name": "s", "working_directory": str(tmp_path)},
        headers={"X-API-Key": key},
    )
    for description in ("look around", "fail on auth"):
        task = await call(
            "POST",
            f"/api/sessions/{session['id']}/tasks",
            json={"description": description},
            headers=auth,
        )
        async with client.ws_connect(f"/ws/tasks/{task['id']}?token={access}") as ws:
            answers.extend([message.data async for message in ws])
        await call("GET", f"/api/tasks/{task['id']}", headers=auth)
        for artifact in await call("GET", f"/api/tasks/{task['id']}/artifacts", headers=auth):
            await call("GET", f"/api/tasks/{task['id']}/artifacts/{artifact['id']}", headers=auth)
    await call("GET", "/api/auth/api-keys", headers=auth)
    assert any('"code": "PROVIDER_AUTH_FAILED"' in a for a in answers)

    logs = capfd.readouterr()
    stored = b"".join(
        path.read_bytes()
        for path in tmp_path.with_name(tmp_path.name + "-data").rglob("*")
        if path.is_file()
    )
    secrets = {
        "password": PASSWORD,
        "access token": access,
        "API key": key,
        "provider key": PROVIDER_KEY,
        "JWT secret": settings.jwt_secret,
    }
    for name, secret in secrets.items():
        assert secret not in logs.out + logs.err, f"{name} in the logs"
        assert all(secret not in answer for answer in answers), f"{name} in an answer"
        if name != "JWT secret":  # (the generated secret file is the one place it lives)
            assert secret.encode() not in stored, f"{name} in the database or artifacts"
    assert "runtime_started" in logs.err, "the logs were captured"
