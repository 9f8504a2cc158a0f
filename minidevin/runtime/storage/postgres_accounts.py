"""Users, API keys, revoked tokens and secrets in PostgreSQL: a part of `PostgresStore`.

`has_users_besides` is answered at once (the interface's promise; the
registration check calls it synchronously): the store keeps up to two
distinct emails of its users, read at open and added to as `insert_user`
commits. Users are never deleted, so an answer of "yes" never goes stale; a
"no" also reads the table again in the background, so a user another process
sharing the database registered is seen by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.events import utc_now
from minidevin.runtime.storage.interface import new_id
from minidevin.runtime.storage.postgres_engine import PostgresEngine

# every key a key created, and theirs: revoking a key revokes what it created
_KEY_CHAIN = (
    'WITH RECURSIVE chain(id) AS (SELECT $1::text COLLATE "C" UNION '
    "SELECT k.id FROM api_keys k JOIN chain c ON k.parent_key_id = c.id) "
)
_KNOWN_EMAILS = 2  # enough to answer "anyone but X?" for every X


class PostgresAccounts(PostgresEngine):
    _emails: set[str]
    _emails_reading: asyncio.Task[None] | None = None

    async def _opened(self) -> None:
        await super()._opened()
        self._emails = set()
        await self._read_emails()

    async def close(self) -> None:
        if self._emails_reading is not None:
            self._emails_reading.cancel()
            await asyncio.gather(self._emails_reading, return_exceptions=True)
        await super().close()

    async def _read_emails(self) -> None:
        rows = await self.fetch_all(
            f"SELECT DISTINCT lower(email) AS email FROM users LIMIT {_KNOWN_EMAILS}"
        )
        self._emails |= {row["email"] for row in rows}

    async def _read_emails_quietly(self) -> None:
        with contextlib.suppress(Exception):  # (a store that is down: the next call asks)
            await self._read_emails()

    async def insert_user(self, email: str, name: str, password_hash: str | None) -> schemas.User:
        user = schemas.User(id=new_id(), email=email, name=name, created_at=utc_now())
        await self.write(
            "INSERT INTO users (id, email, name, password_hash, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            user.id, user.email, user.name, password_hash, user.created_at,
        )  # fmt: skip
        if len(self._emails) < _KNOWN_EMAILS:
            self._emails.add(email.lower())
        return user

    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            "SELECT id, email, name, password_hash, created_at, token_version FROM users "
            "WHERE lower(email) = lower($1)",
            email.strip(),
        )

    def has_users_besides(self, email: str) -> bool:
        if any(known != email.lower() for known in self._emails):
            return True
        if self._emails_reading is None or self._emails_reading.done():
            with contextlib.suppress(RuntimeError):  # (off the loop: the next call asks)
                self._emails_reading = asyncio.get_running_loop().create_task(
                    self._read_emails_quietly()
                )
        return False

    async def password_hash(self, user_id: str) -> str | None:
        row = await self.fetch_one("SELECT password_hash FROM users WHERE id = $1", user_id)
        return None if row is None else row["password_hash"]

    async def token_version(self, user_id: str) -> int | None:
        row = await self.fetch_one("SELECT token_version FROM users WHERE id = $1", user_id)
        return None if row is None else row["token_version"]

    async def set_password(self, user_id: str, password_hash: str) -> None:
        await self.write(
            "UPDATE users SET password_hash = $1, token_version = token_version + 1 "
            "WHERE id = $2",
            password_hash, user_id,
        )  # fmt: skip

    async def revoke_token(self, jti: str, user_id: str, expires_at: float, now: float) -> None:
        await self.write("DELETE FROM revoked_tokens WHERE expires_at < $1", now)
        await self.write(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            jti, user_id, expires_at,
        )  # fmt: skip

    async def token_revoked(self, jti: str) -> bool:
        return bool(await self.fetch_one("SELECT 1 FROM revoked_tokens WHERE jti = $1", jti))

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
            "parent_key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            key.id, user_id, key.name, key_hash, prefix, key.created_at, key.expires_at,
            parent_key_id,
        )  # fmt: skip

    async def list_api_keys(self, user_id: str) -> list[schemas.ApiKey]:
        rows = await self.fetch_all(
            "SELECT id, name, created_at, expires_at FROM api_keys "
            "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at",
            user_id,
        )
        return [schemas.ApiKey(**row) for row in rows]

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            "SELECT id, user_id, expires_at, revoked_at FROM api_keys WHERE key_hash = $1",
            key_hash,
        )

    async def revoke_api_key(self, user_id: str, key_id: str, now: str) -> set[str] | None:
        live = await self.fetch_one(
            "SELECT 1 FROM api_keys WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            key_id, user_id,
        )  # fmt: skip
        if live is None:
            return None
        await self.write(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3",
            now, key_id, user_id,
        )  # fmt: skip
        chain = await self.fetch_all(_KEY_CHAIN + "SELECT id FROM chain", key_id)
        await self.write(
            _KEY_CHAIN + "UPDATE api_keys SET revoked_at = $2 "
            "WHERE id IN (SELECT id FROM chain) AND revoked_at IS NULL",
            key_id, now,
        )  # fmt: skip
        return {row["id"] for row in chain}

    async def revoke_user_api_keys(self, user_id: str, now: str) -> None:
        await self.write(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            now, user_id,
        )  # fmt: skip

    # -- secrets (values stored sealed; this module never sees them open) --------------

    async def put_secret(
        self, user_id: str, name: str, sealed: bytes, now: str
    ) -> schemas.SecretInfo:
        await self.write(
            "INSERT INTO secrets (user_id, name, value, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, name) "
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            user_id, name, sealed, now, now,
        )  # fmt: skip
        row = await self.fetch_one(
            "SELECT name, created_at, updated_at FROM secrets WHERE user_id = $1 AND name = $2",
            user_id, name,
        )  # fmt: skip
        assert row is not None
        return schemas.SecretInfo(**row)

    async def list_secrets(self, user_id: str) -> list[schemas.SecretInfo]:
        rows = await self.fetch_all(
            "SELECT name, created_at, updated_at FROM secrets WHERE user_id = $1 ORDER BY name",
            user_id,
        )
        return [schemas.SecretInfo(**row) for row in rows]

    async def delete_secret(self, user_id: str, name: str) -> bool:
        if not await self.fetch_one(
            "SELECT 1 FROM secrets WHERE user_id = $1 AND name = $2", user_id, name
        ):
            return False
        await self.write("DELETE FROM secrets WHERE user_id = $1 AND name = $2", user_id, name)
        return True

    async def session_secret_names(self, session_id: str) -> list[str]:
        row = await self.fetch_one("SELECT secrets FROM sessions WHERE id = $1", session_id)
        return list(json.loads(row["secrets"] or "[]")) if row else []

    async def secret_values(self, user_id: str, names: list[str]) -> dict[str, bytes]:
        if not names:
            return {}
        rows = await self.fetch_all(
            "SELECT name, value FROM secrets WHERE user_id = $1 AND name = ANY($2::text[])",
            user_id, names,
        )  # fmt: skip
        return {row["name"]: bytes(row["value"]) for row in rows}
