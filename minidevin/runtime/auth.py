"""Passwords (bcrypt), access tokens (JWT HS256) and API keys (`md_...`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import jwt

MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it
API_KEY_PREFIX = "md_"
JWT_SECRET_NAME = "jwt_secret"
SECRET_MIN_BYTES = 32  # (what MINIDEVIN_JWT_SECRET must have too)
# A real hash of a random password: login verifies against it when the email is
# unknown, so both answers take the same time.
_DUMMY_HASH = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt()).decode()
T = TypeVar("T")


class AuthError(Exception):
    """Credentials missing, wrong, expired or revoked."""


class HashBusy(Exception):
    """More password hashes are waiting than the queue holds: retry in a moment."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, and how they proved it.

    `credential` is the token's `jti` or the API key's id; `expires` the
    credential's expiry (epoch seconds; None: never).
    """

    user_id: str
    method: str  # "jwt" or "api_key"
    credential: str | None = None
    expires: float | None = None


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    jti: str
    version: int
    expires: float


class HashPool:
    """bcrypt on its own threads: at most `workers` at once, at most `queue` waiting.

    A dedicated executor, so a login flood never starves the default one (the
    store, the sandbox probe...); beyond the queue, `HashBusy` at once.
    """

    def __init__(self, workers: int = 1, queue: int = 16) -> None:
        self.capacity = workers + queue
        self.in_flight = 0
        self.peak = 0  # the most checks ever in flight at once (never above `capacity`)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="bcrypt")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self.in_flight >= self.capacity:
            raise HashBusy("too many password checks at once; retry in a second")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_DEFAULT_POOL: HashPool | None = None


def _default_pool() -> HashPool:
    global _DEFAULT_POOL
    if _DEFAULT_POOL is None:
        _DEFAULT_POOL = HashPool()
    return _DEFAULT_POOL


def password_bytes(password: str) -> bytes:
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    if b"\0" in encoded:
        raise ValueError("password contains a NUL character")
    return encoded


async def hash_password(password: str, pool: HashPool | None = None) -> str:
    """bcrypt in a worker thread (about 0.3 s): the event loop keeps serving."""
    data = password_bytes(password)
    hashed = await (pool or _default_pool()).run(bcrypt.hashpw, data, bcrypt.gensalt())
    return hashed.decode()


async def verify_password(
    password: str, password_hash: str | None, pool: HashPool | None = None
) -> bool:
    """Constant work whether or not the user exists (pass `None` for no user)."""
    try:
        data = password_bytes(password)
    except ValueError:
        data = b""
    stored = (password_hash or _DUMMY_HASH).encode()
    ok = await (pool or _default_pool()).run(bcrypt.checkpw, data, stored)
    return ok and password_hash is not None and bool(data)


class SecretFileError(RuntimeError):
    """A secret file the server keeps for itself is missing its content or unreadable."""


def load_jwt_secret(data_dir: Path, configured: str | None) -> str:
    """The configured secret, else the one kept under the data dir (mode 0600),
    generated and written atomically at the first start.

    An empty, short or damaged file raises `SecretFileError` naming it: a server
    must not start with a secret that no token can be checked against.
    """
    if configured:
        return configured
    path = data_dir / JWT_SECRET_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(48)
        try:
            write_private_file(path, secret.encode())
        except OSError as exc:
            raise SecretFileError(f"cannot write {path}: {_reason(exc)}") from None
        return secret
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {_reason(exc)}") from None
    try:
        path.chmod(0o600)  # (older versions may have left it readable)
    except OSError as exc:
        raise SecretFileError(f"cannot make {path} private: {_reason(exc)}") from None
    return _valid_secret(path, data)


def _valid_secret(path: Path, data: bytes) -> str:
    """The secret in `data` (the file `path`), or `SecretFileError` saying what is wrong."""
    fix = (
        "restore it, or delete it to have a new one generated (signed-in users must "
        "sign in again), or set MINIDEVIN_JWT_SECRET"
    )
    text = data.strip()
    if not text:
        raise SecretFileError(f"{path} is empty (a write lost in a crash?): {fix}")
    if len(text) < SECRET_MIN_BYTES or not all(0x21 <= byte <= 0x7E for byte in text):
        raise SecretFileError(f"{path} is corrupt (not a secret this server wrote): {fix}")
    return text.decode("ascii")


def write_private_file(path: Path, data: bytes) -> None:
    """Write `path` (0600) atomically: a temporary file beside it, fsync, rename over
    `path`, fsync of the directory. After a crash there is the old file or the new one,
    whole, never an empty or partial one."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:  # (mkstemp: mode 0600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


class TokenIssuer:
    """Issues and checks HS256 access tokens."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: str, version: int = 0) -> str:
        """A token with a unique `jti` (logout revokes it) and the user's token `ver`.

        A password change bumps the user's version: every older token is refused.
        """
        now = int(time.time())
        claims = {
            "sub": user_id,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "typ": "access",
            "jti": uuid.uuid4().hex,
            "ver": version,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> str:
        """The token's user id; `AuthError` if it is malformed, tampered or expired."""
        return self.claims(token).user_id

    def claims(self, token: str) -> TokenClaims:
        """What a valid token says; `AuthError` if it is malformed, tampered or expired."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError, UnicodeError):
            raise AuthError("invalid token") from None
        subject, jti, version = claims.get("sub"), claims.get("jti"), claims.get("ver", 0)
        if not isinstance(subject, str) or not subject or not isinstance(jti, str) or not jti:
            raise AuthError("invalid token")
        if not isinstance(version, int) or isinstance(version, bool):
            raise AuthError("invalid token")
        return TokenClaims(subject, jti, version, float(claims["exp"]))


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 is right here: keys are 256 random bits, not guessable passwords."""
    return hashlib.sha256(key.encode()).hexdigest()
