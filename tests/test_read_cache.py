"""Polled details are served from a cache that never outlives a committed write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app


async def register(client: Any, email: str) -> dict[str, str]:
    user = {"email": email, "password": "password123", "name": "R"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_cached_details_follow_every_write_and_stay_per_user(
    aiohttp_client: Any, runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(runtime, manage_runtime=False))
    auth = await register(client, "r@example.com")
    body = {"name": "s", "working_directory": str(tmp_path)}
    session = await (await client.post("/api/sessions", json=body, headers=auth)).json()
    url = f"/api/sessions/{session['id']}"
    first = await (await client.get(url, headers=auth)).json()
    assert await (await client.get(url, headers=auth)).json() == first  # (from the cache)
    assert first["tasks"] == []

    openai_server.script([ScriptedTurn(tool_calls=[("finish", {"summary": "done"})])])
    task = await (await client.post(f"{url}/tasks", json={"description": "x"}, headers=auth)).json()
    listed = (await (await client.get(url, headers=auth)).json())["tasks"]
    assert [t["id"] for t in listed] == [task["id"]], "a created task shows at once"

    async with client.ws_connect(f"/ws/tasks/{task['id']}", headers=auth) as ws:
        assert [m.json() async for m in ws][-1]["status"] == "completed"
    detail = await (await client.get(f"/api/tasks/{task['id']}", headers=auth)).json()
    assert detail["status"] == "completed" and detail["result"]["summary"] == "done"
    listed = (await (await client.get(url, headers=auth)).json())["tasks"]
    assert listed[0]["status"] == "completed"

    other = await register(client, "s@example.com")
    assert (await client.get(url, headers=other)).status == 404
    assert (await client.get(f"/api/tasks/{task['id']}", headers=other)).status == 404
