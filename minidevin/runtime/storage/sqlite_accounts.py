"""Users, API keys and revoked tokens in SQLite: a part of `SqliteStore`."""

from __future__ import annotations

from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.events import utc_now
from minidevin.runtime.storage.interface import new_id
from minidevin.runtime.storage.sqlite_batch import first_row
from minidevin.runtime.storage.sqlite_engine import SqliteEngine

# every key a key created, and theirs: revoking a key revokes what it created
_KEY_CHAIN = (
    "WITH RECURSIVE chain(id) AS (SELECT ? UNION "
    "SELECT k.id FROM api_keys k JOIN chain c ON k.parent_key_id = c.id) "
)


class SqliteAccounts(SqliteEngine):
    async def insert_user(self, email: str, name: str, password_hash: str | None) -> schemas.User:
        user = schemas.User(id=new_id(), email=email, name=name, created_at=utc_now())
        await self.write(
            "INSERT INTO users (id, email, name, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (user.id, user.email, user.name, password_hash, user.created_at),
        )
        return user

    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        return first_row(self.fetch_point("SELECT * FROM users WHERE email = ?", (email.strip(),)))

    def has_users_besides(self, email: str) -> bool:
        return bool(self.fetch_point("SELECT 1 FROM users WHERE email != ? LIMIT 1", (email,)))

    async def password_hash(self, user_id: str) -> str | None:
        rows = self.fetch_point("SELECT password_hash FROM users WHERE id = ?", (user_id,))
        return rows[0]["password_hash"] if rows else None

    async def token_version(self, user_id: str) -> int | None:
        rows = self.fetch_point("SELECT token_version FROM users WHERE id = ?", (user_id,))
        return rows[0]["token_version"] if rows else None

    async def set_password(self, user_id: str, password_hash: str) -> None:
        await self.write(
            "UPDATE users SET password_hash = ?, token_version = token_version + 1 WHERE id = ?",
            (password_hash, user_id),
        )

    async def revoke_token(self, jti: str, user_id: str, expires_at: float, now: float) -> None:
        await self.write("DELETE FROM revoked_tokens WHERE expires_at < ?", (now,))
        await self.write(
            "INSERT OR IGNORE INTO revoked_tokens (jti, user_id, expires_at) VALUES (?, ?, ?)",
            (jti, user_id, expires_at),
        )

    async def token_revoked(self, jti: str) -> bool:
        return bool(self.fetch_point("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)))

    async def insert_api_key(
        self,
        key: schemas.ApiKey,
        user_id: str,
        key_hash: str,
        prefix: str,
        parent_key_id: str | None,
    ) -> None:
        await self.write(
            "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at, expires_at, "
            "parent_key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.id, user_id, key.name, key_hash, prefix, key.created_at, key.expires_at,
             parent_key_id),
        )  # fmt: skip

    async def list_api_keys(self, user_id: str) -> list[schemas.ApiKey]:
        rows = await self.fetch_all(
            "SELECT id, name, created_at, expires_at FROM api_keys "
            "WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at",
            (user_id,),
        )
        return [schemas.ApiKey(**row) for row in rows]

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return first_row(
            self.fetch_point(
                "SELECT id, user_id, expires_at, revoked_at FROM api_keys WHERE key_hash = ?",
                (key_hash,),
            )
        )

    async def revoke_api_key(self, user_id: str, key_id: str, now: str) -> set[str] | None:
        live = await self.fetch_one(
            "SELECT 1 FROM api_keys WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
            (key_id, user_id),
        )
        if live is None:
            return None
        await self.write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ?",
            (now, key_id, user_id),
        )
        chain = await self.fetch_all(_KEY_CHAIN + "SELECT id FROM chain", (key_id,))
        await self.write(
            _KEY_CHAIN + "UPDATE api_keys SET revoked_at = ? "
            "WHERE id IN (SELECT id FROM chain) AND revoked_at IS NULL",
            (key_id, now),
        )
        return {row["id"] for row in chain}

    async def revoke_user_api_keys(self, user_id: str, now: str) -> None:
        await self.write(
            "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            (now, user_id),
        )
