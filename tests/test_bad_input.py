"""Hostile inputs found in review: each a clear 4xx, never a 500 or a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings


async def serve(aiohttp_client: Any, tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "jwt_secret": "b" * 40,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "rate_limit_login": 0,
        "allow_unsandboxed_multiuser": True,
    }
    settings = Settings(**{**values, **overrides})
    return await aiohttp_client(create_app(Runtime(settings)))


async def login(client: Any, email: str = "b@example.com") -> dict[str, str]:
    user = {"email": email, "password": "password123", "name": "B"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_hostile_bodies_are_422(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await serve(aiohttp_client, tmp_path)
    auth = await login(client)
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = await client.post("/api/sessions", data=deep, headers=auth)
    assert answer.status == 422
    nul = {"name": "s", "working_directory": f"{tmp_path}\u0000x"}
    answer = await client.post("/api/sessions", json=nul, headers=auth)
    assert answer.status == 422 and "NUL" in (await answer.json())["detail"]
    far = {"name": "k", "expires_at": "9999-12-31T23:59:59-23:00"}
    answer = await client.post("/api/auth/api-keys", json=far, headers=auth)
    assert answer.status == 422 and (await answer.json())["code"] == "VALIDATION_ERROR"


async def test_a_replay_file_outside_the_replay_dir_is_refused(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    client = await serve(aiohttp_client, tmp_path, workspace_roots=(root,))
    auth = await login(client)
    directory = str(root / "project")
    session = await (
        await client.post(
            "/api/sessions", json={"name": "s", "working_directory": directory}, headers=auth
        )
    ).json()
    body = {"description": "x", "model": "replay:/etc/passwd"}
    answer = await client.post(f"/api/sessions/{session['id']}/tasks", json=body, headers=auth)
    assert answer.status == 400 and (await answer.json())["code"] == "REPLAY_REFUSED"


async def test_racing_registrations_both_get_an_answer(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await serve(aiohttp_client, tmp_path)
    user = {"email": "race@example.com", "password": "password123", "name": "R"}
    answers = await asyncio.wait_for(
        asyncio.gather(*(client.post("/api/auth/register", json=user) for _ in range(4))), 20
    )
    assert sorted(a.status for a in answers) == [201, 409, 409, 409]
