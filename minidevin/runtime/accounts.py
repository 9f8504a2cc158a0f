"""Users, logins, logouts, password changes and API keys on top of the store.

What authentication learns is cached (a user's token version, a key's row),
so a request costs no database write; logout, a password change and a key's
revocation update the cache at once, so a revoked credential is refused by
the very next request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.auth import (
    API_KEY_PREFIX,
    AuthError,
    HashPool,
    Principal,
    TokenIssuer,
    hash_api_key,
    hash_password,
    new_api_key,
    verify_password,
)
from minidevin.runtime.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from minidevin.runtime.events import utc_now
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import AlreadyExists, Store, new_id

LOCAL_USER_EMAIL = f"local@{schemas.RESERVED_EMAIL_DOMAIN}"
KEY_CACHE_SECONDS = 30.0  # a key row is read again after this (changes made elsewhere)
KEY_CACHE_SIZE = 10_000
SINGLE_USER = (
    "registration is closed: commands run without a sandbox here, so this server serves one "
    "user (set MINIDEVIN_ALLOW_UNSANDBOXED_MULTIUSER=true to allow more)"
)


@dataclass(frozen=True)
class _KnownKey:
    key_id: str
    user_id: str
    expires_at: datetime | None
    checked: float = field(default_factory=time.monotonic)


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def commands_unsandboxed(settings: Settings) -> bool:
    """True when terminal commands run without bubblewrap on this server."""
    if settings.sandbox == "off":
        return True
    if settings.sandbox == "required":
        return False  # tasks are refused without it: nothing runs unsandboxed
    from minidevin.runtime.tools.sandbox import sandbox_status

    return not sandbox_status().works


class Accounts:
    def __init__(self, store: Store, tokens: TokenIssuer, settings: Settings | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.settings = settings or Settings()
        self.hashes = HashPool(
            self.settings.password_hash_concurrency, self.settings.password_hash_queue
        )
        self._versions: dict[str, int] = {}  # user id -> token version (users are never deleted)
        self._keys: dict[str, _KnownKey] = {}  # by key hash; revocation evicts at once
        # with nodes, nothing is cached: a revocation or a new password on another node
        # must hold here at the next request
        self.cached = True
        self._register_lock = asyncio.Lock()

    def close(self) -> None:
        self.hashes.close()

    # -- registration and login --------------------------------------------------------

    def registration_open_to_more(self) -> bool:
        """False when the server must stay single-user (no sandbox, not allowed)."""
        return self.settings.allow_unsandboxed_multiuser or not commands_unsandboxed(self.settings)

    def has_users(self) -> bool:
        return self.store.has_users_besides(LOCAL_USER_EMAIL)

    def registration_status(self) -> str:
        return "open" if self.registration_open_to_more() or not self.has_users() else "closed"

    async def register(self, request: schemas.RegisterRequest) -> schemas.User:
        email = schemas.normalize_email(request.email)
        if email.rpartition("@")[2] == schemas.RESERVED_EMAIL_DOMAIN:
            raise ValidationFailed(f"email: the domain {schemas.RESERVED_EMAIL_DOMAIN} is reserved")
        if self.registration_open_to_more():
            return await self._register(email, request)
        async with self._register_lock:  # check and insert as one, or two could slip in
            if self.has_users():
                raise Forbidden(SINGLE_USER, code="REGISTRATION_CLOSED")
            return await self._register(email, request)

    async def _register(self, email: str, request: schemas.RegisterRequest) -> schemas.User:
        if await self.store.user_by_email(email) is not None:
            raise Conflict("a user with this email already exists", code="EMAIL_TAKEN")
        password_hash = await hash_password(request.password, self.hashes)
        try:
            return await self.store.insert_user(email, request.name, password_hash)
        except AlreadyExists:  # a concurrent registration won the race
            raise Conflict("a user with this email already exists", code="EMAIL_TAKEN") from None

    async def login(self, request: schemas.LoginRequest) -> schemas.AccessToken:
        """Same answer and about the same time whether or not the email exists."""
        user = await self.store.user_by_email(schemas.normalize_email(request.email))
        password_hash = user["password_hash"] if user else None
        ok = await verify_password(request.password, password_hash, self.hashes)
        if not ok or user is None:
            raise Unauthorized("invalid email or password")
        return self._token_for(user["id"], user["token_version"])

    def _token_for(self, user_id: str, version: int) -> schemas.AccessToken:
        self._versions[user_id] = version
        return schemas.AccessToken(
            access_token=self.tokens.issue(user_id, version), expires_in=self.tokens.ttl_seconds
        )

    async def logout(self, principal: Principal) -> None:
        """Revoke the token the request came with; it is refused from now on."""
        if principal.method != "jwt" or principal.credential is None:
            raise BadRequest(
                "logout revokes an access token; revoke an API key with "
                "DELETE /api/auth/api-keys/{key_id}"
            )
        now = time.time()
        await self.store.revoke_token(
            principal.credential, principal.user_id, principal.expires or now, now
        )

    async def change_password(
        self, principal: Principal, request: schemas.PasswordChangeRequest
    ) -> schemas.AccessToken:
        """New password; every token issued before is refused, and with
        `revoke_api_keys` every key too. Answers a fresh token."""
        password_hash = await self.store.password_hash(principal.user_id)
        if not await verify_password(request.current_password, password_hash, self.hashes):
            raise Forbidden("current_password is wrong", code="WRONG_PASSWORD")
        new_hash = await hash_password(request.new_password, self.hashes)
        await self.store.set_password(principal.user_id, new_hash)
        version = await self._token_version(principal.user_id, fresh=True)
        if request.revoke_api_keys:
            await self.store.revoke_user_api_keys(principal.user_id, utc_now())
            self._evict_keys(lambda known: known.user_id == principal.user_id)
        return self._token_for(principal.user_id, version or 0)

    # -- API keys ---------------------------------------------------------------------------

    async def create_api_key(
        self,
        user_id: str,
        request: schemas.ApiKeyRequest,
        creator: Principal | None = None,
    ) -> schemas.ApiKeyCreated:
        """A new key. A key made with a key never outlives it: its expiry is at most
        the creator's, and revoking the creator revokes it."""
        try:
            expiry = request.expiry_utc()
        except OverflowError:
            raise ValidationFailed("expires_at: out of range") from None
        if expiry is not None and expiry <= datetime.now(UTC):
            raise ValidationFailed("expires_at: must be in the future")
        parent = None
        if creator is not None and creator.method == "api_key":
            parent = creator.credential
            if creator.expires is not None:
                bound = datetime.fromtimestamp(creator.expires, UTC)
                expiry = bound if expiry is None else min(expiry, bound)
        key = new_api_key()
        stored = schemas.ApiKey(
            id=new_id(),
            name=request.name,
            created_at=utc_now(),
            expires_at=_iso(expiry) if expiry else None,
        )
        await self.store.insert_api_key(stored, user_id, hash_api_key(key), key[:8], parent)
        return schemas.ApiKeyCreated(**stored.model_dump(), key=key)

    async def list_api_keys(self, user_id: str) -> list[schemas.ApiKey]:
        return await self.store.list_api_keys(user_id)

    async def revoke_api_key(self, user_id: str, key_id: str) -> None:
        """Revoke at once (and every key it created): the next request with it is refused."""
        ids = await self.store.revoke_api_key(user_id, key_id, utc_now())
        if ids is None:
            raise NotFound("API key not found")
        self._evict_keys(lambda known: known.key_id in ids)

    def _evict_keys(self, predicate: Any) -> None:
        for key_hash, known in list(self._keys.items()):
            if predicate(known):
                del self._keys[key_hash]

    # -- authentication ---------------------------------------------------------------------

    async def _token_version(self, user_id: str, *, fresh: bool = False) -> int | None:
        """The user's token version (None: no such user), cached."""
        if fresh or not self.cached or user_id not in self._versions:
            version = await self.store.token_version(user_id)
            if version is None:
                return None
            self._versions[user_id] = version
        return self._versions[user_id]

    async def authenticate_token(self, token: str) -> Principal:
        try:
            claims = self.tokens.claims(token)
        except AuthError as exc:
            raise Unauthorized(str(exc)) from None
        version = await self._token_version(claims.user_id)
        if version is None:
            raise Unauthorized("invalid token")
        if claims.version != version:
            raise Unauthorized("token revoked (the password changed): log in again")
        if await self.store.token_revoked(claims.jti):
            raise Unauthorized("token revoked (logged out): log in again")
        return Principal(claims.user_id, "jwt", claims.jti, claims.expires)

    async def authenticate_api_key(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise Unauthorized("invalid API key")
        key_hash = hash_api_key(key)
        cached = self._keys.get(key_hash)
        if (
            cached is None
            or not self.cached
            or cached.checked + KEY_CACHE_SECONDS < time.monotonic()
        ):
            row = await self.store.api_key_by_hash(key_hash)
            if row is None or row["revoked_at"] is not None:
                self._keys.pop(key_hash, None)
                raise Unauthorized("invalid API key")
            cached = _KnownKey(row["id"], row["user_id"], _parse_time(row["expires_at"]))
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[key_hash] = cached
        if cached.expires_at is not None and cached.expires_at <= datetime.now(UTC):
            raise Unauthorized("API key expired")
        expires = cached.expires_at.timestamp() if cached.expires_at else None
        return Principal(cached.user_id, "api_key", cached.key_id, expires)

    async def local_user_id(self) -> str:
        """The owner of sessions created through the embedding API without a user."""
        row = await self.store.user_by_email(LOCAL_USER_EMAIL)
        if row is not None:
            return row["id"]
        try:  # (the Runtime serialises its own first calls; another node may win the race)
            return (await self.store.insert_user(LOCAL_USER_EMAIL, "local", None)).id
        except AlreadyExists:
            row = await self.store.user_by_email(LOCAL_USER_EMAIL)
            if row is None:
                raise
            return str(row["id"])
