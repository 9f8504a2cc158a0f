"""Polled details are served from a cache that never outlives a committed write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

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


async def test_a_warm_cache_answers_each_user_only_with_their_own_details(
    aiohttp_client: Any, runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    """Both users exist before the first read: only the cache key can keep them apart."""
    client = await aiohttp_client(create_app(runtime, manage_runtime=False))
    ada, bob = await register(client, "ada@example.com"), await register(client, "bob@example.com")
    finish = ScriptedTurn(tool_calls=[("finish", {"summary": "done"})])
    openai_server.script([finish, finish])
    mine: dict[str, dict[str, str]] = {}
    for name, auth in (("ada", ada), ("bob", bob)):
        (tmp_path / name).mkdir()  # (one user's working directory is not another's)
        body = {"name": name, "working_directory": str(tmp_path / name)}
        session = await (await client.post("/api/sessions", json=body, headers=auth)).json()
        url = f"/api/sessions/{session['id']}/tasks"
        task = await (await client.post(url, json={"description": name}, headers=auth)).json()
        async with client.ws_connect(f"/ws/tasks/{task['id']}", headers=auth) as ws:
            assert [m.json() async for m in ws][-1]["status"] == "completed"
        mine[name] = {
            "session": f"/api/sessions/{session['id']}",
            "task": f"/api/tasks/{task['id']}",
        }

    async def read(url: str, auth: dict[str, str]) -> tuple[int, Any]:
        answer = await client.get(url, headers=auth)
        return answer.status, await answer.json()

    async def warm_reads_stay_per_user() -> bool:
        """Ada's details cached, then Bob's reads, all at one store generation."""
        generation = runtime.store.generation
        for kind in ("session", "task"):
            status, ada_view = await read(mine["ada"][kind], ada)
            assert status == 200 and ada_view["id"] in mine["ada"][kind]
            assert await read(mine["ada"][kind], ada) == (200, ada_view)  # (from the cache)
            status, refused = await read(mine["ada"][kind], bob)
            assert status == 404 and refused["code"] == "NOT_FOUND", (kind, refused)
            status, bob_view = await read(mine["bob"][kind], bob)
            assert status == 200 and bob_view["id"] in mine["bob"][kind], bob_view
            assert (await read(mine["bob"][kind], ada))[0] == 404
            assert await read(mine["ada"][kind], ada) == (200, ada_view)
        assert (await read(mine["bob"]["session"], bob))[1]["name"] == "bob"
        # no write committed in between: every repeated read above was a cache hit
        return runtime.store.generation == generation

    await until(warm_reads_stay_per_user, timeout=10, what="reads with no write in between")
