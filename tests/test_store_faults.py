"""A locked or full database, on each backend: writes wait, then fail clearly (503);
reads keep working. The faults are the backend's own (`store_backends.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store_backends import Backend, backend  # noqa: F401 (the fixture)

from minidevin.api import Runtime
from minidevin.http.app import create_app


async def test_a_locked_database_fails_writes_clearly_and_keeps_reads(
    aiohttp_client: Any,
    tmp_path: Path,
    backend: Backend,  # noqa: F811
) -> None:
    settings = backend.settings(
        jwt_secret="f" * 40,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        store_retry_seconds=0.3,
    )
    client = await aiohttp_client(create_app(Runtime(settings)))
    user = {"email": "l@example.com", "password": "password123", "name": "L"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    body = {"name": "before", "working_directory": str(tmp_path)}
    assert (await client.post("/api/sessions", json=body, headers=auth)).status == 201

    with backend.write_lock_held():  # another process holds the write lock
        refused = await client.post("/api/sessions", json={**body, "name": "during"}, headers=auth)
        assert refused.status == 503
        error = await refused.json()
        assert error["code"] == "STORE_UNAVAILABLE" and backend.locked_words in error["detail"]
        reads = await client.get("/api/sessions", headers=auth)
        assert reads.status == 200 and [s["name"] for s in await reads.json()] == ["before"]
    after = await client.post("/api/sessions", json={**body, "name": "after"}, headers=auth)
    assert after.status == 201
    names = {s["name"] for s in await (await client.get("/api/sessions", headers=auth)).json()}
    assert names == {"before", "after"}


async def test_a_full_database_fails_writes_clearly_and_keeps_reads(
    aiohttp_client: Any,
    tmp_path: Path,
    backend: Backend,  # noqa: F811
) -> None:
    settings = backend.settings(
        jwt_secret="f" * 40,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        store_retry_seconds=0.3,
    )
    runtime = Runtime(settings)
    client = await aiohttp_client(create_app(runtime))
    user = {"email": "full@example.com", "password": "password123", "name": "F"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    body = {"name": "before", "working_directory": str(tmp_path)}
    assert (await client.post("/api/sessions", json=body, headers=auth)).status == 201

    await backend.fill_up(runtime.store)
    big = {"name": "x" * 150, "working_directory": str(tmp_path)}
    refused = None
    for _ in range(200):  # fill the last free pages until a write no longer fits
        refused = await client.post("/api/sessions", json=big, headers=auth)
        if refused.status != 201:
            break
    assert refused is not None and refused.status == 503
    error = await refused.json()
    assert error["code"] == "STORE_UNAVAILABLE" and backend.full_words in error["detail"]
    reads = await client.get("/api/sessions", headers=auth)
    assert reads.status == 200 and "before" in {s["name"] for s in await reads.json()}

    await backend.make_room(runtime.store)  # space again
    after = await client.post("/api/sessions", json={**body, "name": "after"}, headers=auth)
    assert after.status == 201
