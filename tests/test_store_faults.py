"""A locked database: writes wait, then fail clearly (503); reads keep working."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings


async def test_a_locked_database_fails_writes_clearly_and_keeps_reads(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
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

    other = sqlite3.connect(settings.database_path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        refused = await client.post("/api/sessions", json={**body, "name": "during"}, headers=auth)
        assert refused.status == 503
        error = await refused.json()
        assert error["code"] == "STORE_UNAVAILABLE" and "locked" in error["detail"]
        reads = await client.get("/api/sessions", headers=auth)
        assert reads.status == 200 and [s["name"] for s in await reads.json()] == ["before"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    after = await client.post("/api/sessions", json={**body, "name": "after"}, headers=auth)
    assert after.status == 201
    names = {s["name"] for s in await (await client.get("/api/sessions", headers=auth)).json()}
    assert names == {"before", "after"}


async def test_a_full_database_fails_writes_clearly_and_keeps_reads(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
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

    # SQLite's own size cap makes the disk "full" for this database: SQLITE_FULL
    writer = runtime.store._writer
    assert writer is not None
    (pages,) = await (await writer.execute("PRAGMA page_count")).fetchone()  # type: ignore[misc]
    await writer.execute(f"PRAGMA max_page_count = {pages}")
    big = {"name": "x" * 150, "working_directory": str(tmp_path)}
    refused = None
    for _ in range(200):  # fill the last free pages until a write no longer fits
        refused = await client.post("/api/sessions", json=big, headers=auth)
        if refused.status != 201:
            break
    assert refused is not None and refused.status == 503
    error = await refused.json()
    assert error["code"] == "STORE_UNAVAILABLE" and "full" in error["detail"]
    reads = await client.get("/api/sessions", headers=auth)
    assert reads.status == 200 and "before" in {s["name"] for s in await reads.json()}

    await writer.execute("PRAGMA max_page_count = 1073741823")  # space again
    after = await client.post("/api/sessions", json={**body, "name": "after"}, headers=auth)
    assert after.status == 201
