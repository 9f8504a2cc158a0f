"""Users, logins and API keys on top of the store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from minidevin.runtime import records, schemas
from minidevin.runtime.auth import (
    API_KEY_PREFIX,
    AuthError,
    Principal,
    TokenIssuer,
    hash_api_key,
    hash_password,
    new_api_key,
    verify_password,
)
from minidevin.runtime.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from minidevin.runtime.store import Store, StoreError

LOCAL_USER_EMAIL = "local@minidevin.invalid"
KEY_CACHE_SECONDS = 30.0  # a key row is read again after this (changes made elsewhere)
KEY_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class _KnownKey:
    key_id: str
    user_id: str
    expires_at: datetime | None
    checked: float = field(default_factory=time.monotonic)


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


class Accounts:
    def __init__(self, store: Store, tokens: TokenIssuer) -> None:
        self.store = store
        self.tokens = tokens
        # what authentication learned, so a request costs no database read:
        self._known_users: set[str] = set()
        self._keys: dict[str, _KnownKey] = {}  # by key hash; revocation evicts at once

    async def register(self, request: schemas.RegisterRequest) -> schemas.User:
        if await records.user_by_email(self.store, request.email) is not None:
            raise Conflict("a user with this email already exists", code="EMAIL_TAKEN")
        password_hash = await hash_password(request.password)
        try:
            return await records.insert_user(self.store, request.email, request.name, password_hash)
        except StoreError as exc:  # a concurrent registration won the race
            if "UNIQUE" in str(exc):
                raise Conflict(
                    "a user with this email already exists", code="EMAIL_TAKEN"
                ) from None
            raise

    async def login(self, request: schemas.LoginRequest) -> schemas.AccessToken:
        """Same answer and about the same time whether or not the email exists."""
        user = await records.user_by_email(self.store, request.email.lower())
        ok = await verify_password(request.password, user["password_hash"] if user else None)
        if not ok or user is None:
            raise Unauthorized("invalid email or password")
        return schemas.AccessToken(
            access_token=self.tokens.issue(user["id"]), expires_in=self.tokens.ttl_seconds
        )

    async def create_api_key(
        self, user_id: str, request: schemas.ApiKeyRequest
    ) -> schemas.ApiKeyCreated:
        try:
            expiry = request.expiry_utc()
        except OverflowError:
            raise ValidationFailed("expires_at: out of range") from None
        if expiry is not None and expiry <= datetime.now(UTC):
            raise ValidationFailed("expires_at: must be in the future")
        key = new_api_key()
        expires_at = expiry.isoformat().replace("+00:00", "Z") if expiry else None
        stored = await records.insert_api_key(
            self.store, user_id, request.name, hash_api_key(key), key[:8], expires_at
        )
        return schemas.ApiKeyCreated(**stored.model_dump(), key=key)

    async def list_api_keys(self, user_id: str) -> list[schemas.ApiKey]:
        return await records.list_api_keys(self.store, user_id)

    async def revoke_api_key(self, user_id: str, key_id: str) -> None:
        """Revoke at once: the next request with the key is refused."""
        if not await records.revoke_api_key(self.store, user_id, key_id):
            raise NotFound("API key not found")
        for key_hash, known in list(self._keys.items()):
            if known.key_id == key_id:
                del self._keys[key_hash]

    async def authenticate_token(self, token: str) -> Principal:
        try:
            user_id = self.tokens.verify(token)
        except AuthError as exc:
            raise Unauthorized(str(exc)) from None
        if user_id not in self._known_users:  # users are never deleted: remember them
            if not await records.user_exists(self.store, user_id):
                raise Unauthorized("invalid token")
            self._known_users.add(user_id)
        return Principal(user_id, "jwt")

    async def authenticate_api_key(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise Unauthorized("invalid API key")
        key_hash = hash_api_key(key)
        cached = self._keys.get(key_hash)
        if cached is None or cached.checked + KEY_CACHE_SECONDS < time.monotonic():
            row = await records.api_key_by_hash(self.store, key_hash)
            if row is None or row["revoked_at"] is not None:
                self._keys.pop(key_hash, None)
                raise Unauthorized("invalid API key")
            cached = _KnownKey(row["id"], row["user_id"], _parse_time(row["expires_at"]))
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[key_hash] = cached
        if cached.expires_at is not None and cached.expires_at <= datetime.now(UTC):
            raise Unauthorized("API key expired")
        return Principal(cached.user_id, "api_key")

    async def local_user_id(self) -> str:
        """The owner of sessions created through the embedding API without a user."""
        row = await records.user_by_email(self.store, LOCAL_USER_EMAIL)
        if row is not None:
            return row["id"]
        # (the Runtime serialises first calls, so there is no race to lose here)
        return (await records.insert_user(self.store, LOCAL_USER_EMAIL, "local", None)).id
