"""The SQL of a user's secrets (values stored sealed; this module never sees them open)."""

from __future__ import annotations

import json

from minidevin.runtime import schemas
from minidevin.runtime.storage.sqlite_engine import SqliteEngine


class SqliteSecrets(SqliteEngine):
    async def put_secret(
        self, user_id: str, name: str, sealed: bytes, now: str
    ) -> schemas.SecretInfo:
        await self.write(
            "INSERT INTO secrets (user_id, name, value, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, name) "
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (user_id, name, sealed, now, now),
        )
        rows = self.fetch_point(
            "SELECT name, created_at, updated_at FROM secrets WHERE user_id = ? AND name = ?",
            (user_id, name),
        )
        return schemas.SecretInfo(**rows[0])

    async def list_secrets(self, user_id: str) -> list[schemas.SecretInfo]:
        rows = await self.fetch_all(
            "SELECT name, created_at, updated_at FROM secrets WHERE user_id = ? ORDER BY name",
            (user_id,),
        )
        return [schemas.SecretInfo(**row) for row in rows]

    async def delete_secret(self, user_id: str, name: str) -> bool:
        if not self.fetch_point(
            "SELECT 1 FROM secrets WHERE user_id = ? AND name = ?", (user_id, name)
        ):
            return False
        await self.write("DELETE FROM secrets WHERE user_id = ? AND name = ?", (user_id, name))
        return True

    async def session_secret_names(self, session_id: str) -> list[str]:
        rows = self.fetch_point("SELECT secrets FROM sessions WHERE id = ?", (session_id,))
        return list(json.loads(rows[0]["secrets"] or "[]")) if rows else []

    async def secret_values(self, user_id: str, names: list[str]) -> dict[str, bytes]:
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = await self.fetch_all(
            f"SELECT name, value FROM secrets WHERE user_id = ? AND name IN ({marks})",
            (user_id, *names),
        )
        return {row["name"]: bytes(row["value"]) for row in rows}
