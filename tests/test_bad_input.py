"""Hostile inputs found in review: each a clear 4xx, never a 500 or a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import provider_env
from scripted_provider import ScriptedOpenAIServer, finish

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings


async def serve(
    aiohttp_client: Any,
    tmp_path: Path,
    database_url: str | None,
    provider_env: dict[str, str] | None = None,
    **overrides: Any,
) -> Any:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "jwt_secret": "b" * 40,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "rate_limit_login": 0,
        "allow_unsandboxed_multiuser": True,
    }
    settings = Settings(**{**values, **overrides})
    return await aiohttp_client(create_app(Runtime(settings, provider_env=provider_env)))


async def login(client: Any, email: str = "b@example.com") -> dict[str, str]:
    user = {"email": email, "password": "password123", "name": "B"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_hostile_bodies_are_422(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    client = await serve(aiohttp_client, tmp_path, database_url)
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
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    client = await serve(aiohttp_client, tmp_path, database_url, workspace_roots=(root,))
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


async def test_racing_registrations_both_get_an_answer(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    client = await serve(aiohttp_client, tmp_path, database_url)
    user = {"email": "race@example.com", "password": "password123", "name": "R"}
    answers = await asyncio.wait_for(
        asyncio.gather(*(client.post("/api/auth/register", json=user) for _ in range(4))), 20
    )
    assert sorted(a.status for a in answers) == [201, 409, 409, 409]


async def test_text_with_nul_and_soh_is_kept_as_given(
    aiohttp_client: Any,
    tmp_path: Path,
    database_url: str | None,
    openai_server: ScriptedOpenAIServer,
) -> None:
    """PostgreSQL holds no NUL in text where SQLite does: on both, a name or description
    with one (or with U+0001, the PostgreSQL store's escape) is stored and read back as
    sent."""
    openai_server.script([finish("done")])
    client = await serve(aiohttp_client, tmp_path, database_url, provider_env(openai_server))
    auth = await login(client)
    (tmp_path / "w").mkdir()
    names = ["a\u0000b", "a\u0001b", "a\u00010", "\u0001\u0000", "plain"]
    created = []
    for name in names:
        body = {"name": name, "working_directory": str(tmp_path / "w")}
        answer = await client.post("/api/sessions", json=body, headers=auth)
        assert answer.status == 201, await answer.text()
        created.append((await answer.json())["id"])
    listing = await (await client.get("/api/sessions", headers=auth)).json()
    assert sorted(session["name"] for session in listing) == sorted(names)
    for session_id, name in zip(created, names, strict=True):
        detail = await (await client.get(f"/api/sessions/{session_id}", headers=auth)).json()
        assert detail["name"] == name
    description = "fix \u0000 and \u0001 please"
    body = {"description": description, "model": "gpt-4o"}
    answer = await client.post(f"/api/sessions/{created[0]}/tasks", json=body, headers=auth)
    assert answer.status == 201, await answer.text()
    task = await (
        await client.get(f"/api/tasks/{(await answer.json())['id']}", headers=auth)
    ).json()
    assert task["description"] == description
    key = await client.post("/api/auth/api-keys", json={"name": "k\u0000ey"}, headers=auth)
    assert key.status == 201, await key.text()
    keys = await (await client.get("/api/auth/api-keys", headers=auth)).json()
    assert "k\u0000ey" in [k["name"] for k in keys]
