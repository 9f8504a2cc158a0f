"""Helpers for the HTTP and WebSocket tests: users, error checks, WebSocket readers.

Everything here speaks to a real aiohttp server over 127.0.0.1 through a real
`aiohttp.test_utils.TestClient`; nothing of minidevin is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings

TIMEOUT = 20.0  # seconds any single wait may take before the test fails
PASSWORD = "correct horse battery"
FIX_DESCRIPTION = "Fix the failing test in test_calc.py"
ERROR_KEYS = {"detail", "code", "timestamp"}
ALLOWED_ORIGIN = "http://localhost:5173"


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 UTC timestamp with a `Z`, as the API document writes them."""
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def expect_error(
    response: ClientResponse, status: int, code: str | set[str]
) -> dict[str, Any]:
    """The response is `status` with a body of exactly {detail, code, timestamp}."""
    text = await response.text()
    assert response.status == status, f"{response.status} {text}"
    assert response.content_type == "application/json", response.content_type
    body = await response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] in ({code} if isinstance(code, str) else code), body
    assert isinstance(body["detail"], str) and body["detail"], body
    parse_timestamp(body["timestamp"])
    return body


async def expect_json(response: ClientResponse, status: int = 200) -> Any:
    text = await response.text()
    assert response.status == status, f"{response.status} {text}"
    assert response.content_type == "application/json", response.content_type
    return await response.json()


# -- users -------------------------------------------------------------------------------------


@dataclass
class User:
    id: str
    email: str
    token: str
    api_key: str
    api_key_id: str = ""

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def key(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


async def sign_up(client: TestClient, email: str = "ada@example.com", name: str = "Ada") -> User:
    """Register, log in, and create an API key: a user ready to call every route."""
    user = await expect_json(
        await client.post(
            "/api/auth/register", json={"email": email, "password": PASSWORD, "name": name}
        ),
        201,
    )
    login = await expect_json(
        await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    )
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    key = await expect_json(
        await client.post("/api/auth/api-keys", json={"name": "ci"}, headers=headers), 201
    )
    return User(user["id"], email, login["access_token"], key["key"], key["id"])


async def create_session(client: TestClient, user: User, directory: Any) -> dict[str, Any]:
    return await expect_json(
        await client.post(
            "/api/sessions",
            json={"name": "bug fix", "working_directory": str(directory)},
            headers=user.key,
        ),
        201,
    )


async def create_task(
    client: TestClient, user: User, session_id: str, description: str = FIX_DESCRIPTION
) -> dict[str, Any]:
    return await expect_json(
        await client.post(
            f"/api/sessions/{session_id}/tasks",
            json={"description": description, "model": "gpt-4o"},
            headers=user.key,
        ),
        201,
    )


async def get_task(client: TestClient, user: User, task_id: str) -> dict[str, Any]:
    return await expect_json(await client.get(f"/api/tasks/{task_id}", headers=user.bearer))


async def run_fix_a_test(
    client: TestClient, user: User, repo: Path
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(session, task, its events) of a fix-a-test task watched to its end."""
    session = await create_session(client, user, repo)
    task = await create_task(client, user, session["id"])
    events, code = await stream(client, task["id"], user.token)
    assert code == 1000 and events[-1]["status"] == "completed", events[-1]
    return session, task, events


async def artifacts_of(client: TestClient, user: User, task_id: str) -> dict[str, dict[str, Any]]:
    listing = await expect_json(
        await client.get(f"/api/tasks/{task_id}/artifacts", headers=user.bearer)
    )
    return {artifact["name"]: artifact for artifact in listing}


# -- WebSockets --------------------------------------------------------------------------------


def ws_path(task_id: str, token: str | None, after: int | None = None) -> str:
    query = [f"token={token}"] if token is not None else []
    if after is not None:
        query.append(f"after={after}")
    return f"/ws/tasks/{task_id}" + ("?" + "&".join(query) if query else "")


async def next_message(ws: ClientWebSocketResponse, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next server message; fails if the socket closes or nothing comes in time."""
    message = await asyncio.wait_for(ws.receive(), timeout)
    assert message.type == WSMsgType.TEXT, (message.type, message.data, message.extra)
    return message.json()


async def read_until_closed(
    ws: ClientWebSocketResponse, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Every message until the server closes the socket (which must happen in time)."""
    messages = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type == WSMsgType.TEXT:
                messages.append(message.json())
                continue
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), (
                message.type,
                message.data,
            )
            return messages


async def read_until(
    ws: ClientWebSocketResponse, predicate: Any, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Messages up to and including the first one `predicate` accepts."""
    messages = []
    async with asyncio.timeout(timeout):
        while True:
            message = await next_message(ws, timeout)
            messages.append(message)
            if predicate(message):
                return messages


async def stream(
    client: TestClient, task_id: str, token: str, after: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Connect, read everything until the server closes; (messages, close code)."""
    ws = await client.ws_connect(ws_path(task_id, token, after))
    try:
        messages = await read_until_closed(ws)
    finally:
        await ws.close()
    return messages, ws.close_code


def is_final(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and message["status"] in {"completed", "failed", "stopped"}


def check_sequence(messages: list[dict[str, Any]], task_id: str, first: int = 1) -> None:
    """Events numbered first, first+1, ... with no gap or duplicate, each well formed."""
    assert [m["seq"] for m in messages] == list(range(first, first + len(messages)))
    for message in messages:
        assert message["task_id"] == task_id, message
        parse_timestamp(message["timestamp"])


def handshake_headers() -> dict[str, str]:
    """The headers of a WebSocket upgrade request, sent by hand to read a refusal's body."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


# -- a model that waits when told to -----------------------------------------------------------


class GatedModel:
    """A responder for `ScriptedOpenAIServer`: turns per task description, optionally gated.

    `add(description, turn, gate)` queues a turn for the task whose user message
    is `description`; with a gate, the server holds the request until the test
    sets the event, so a task is reliably mid-run (its model call pending).
    """

    def __init__(self) -> None:
        self.turns: dict[str, deque[tuple[ScriptedTurn, asyncio.Event | None]]] = {}
        self.calls: list[str] = []

    def add(self, description: str, turn: ScriptedTurn, gate: asyncio.Event | None = None) -> None:
        self.turns.setdefault(description, deque()).append((turn, gate))

    async def __call__(self, body: dict[str, Any]) -> ScriptedTurn:
        description = next(  # the task's own (after any earlier tasks of its session)
            m["content"]
            for m in body["messages"]
            if m["role"] == "user" and m["content"] in self.turns
        )
        self.calls.append(description)
        turn, gate = self.turns[description].popleft()
        if gate is not None:
            await gate.wait()
        return turn


# -- a server over a runtime the app starts and closes -----------------------------------------


def provider_env(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}


@asynccontextmanager
async def serve(settings: Settings, server: ScriptedOpenAIServer) -> AsyncIterator[TestClient]:
    """A fresh Runtime and app on `settings`; the app starts and closes the runtime."""
    runtime = Runtime(settings, provider_env=provider_env(server))
    async with TestClient(TestServer(create_app(runtime))) as client:
        yield client
