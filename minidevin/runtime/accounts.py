"""Users, logins and API keys on top of the store."""

from __future__ import annotations

import sqlite3
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


class Accounts:
    def __init__(self, store: Store, tokens: TokenIssuer) -> None:
        self.store = store
        self.tokens = tokens

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
        expiry = request.expiry_utc()
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

    async def authenticate_token(self, token: str) -> Principal:
        try:
            user_id = self.tokens.verify(token)
        except AuthError as exc:
            raise Unauthorized(str(exc)) from None
        if not await records.user_exists(self.store, user_id):
            raise Unauthorized("invalid token")
        return Principal(user_id, "jwt")

    async def authenticate_api_key(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise Unauthorized("invalid API key")
        row = await records.api_key_by_hash(self.store, hash_api_key(key))
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized("invalid API key")
        if row["expires_at"] is not None:
            expires = datetime.fromisoformat(row["expires_at"].replace("Z", "+00:00"))
            if expires <= datetime.now(UTC):
                raise Unauthorized("API key expired")
        return Principal(row["user_id"], "api_key")

    async def local_user_id(self) -> str:
        """The owner of sessions created through the embedding API without a user."""
        row = await records.user_by_email(self.store, LOCAL_USER_EMAIL)
        if row is not None:
            return row["id"]
        try:
            user = await records.insert_user(self.store, LOCAL_USER_EMAIL, "local", None)
        except (StoreError, sqlite3.IntegrityError):
            row = await records.user_by_email(self.store, LOCAL_USER_EMAIL)
            assert row is not None
            return row["id"]
        return user.id
