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
        data_dir=tmp_path / "data",
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
