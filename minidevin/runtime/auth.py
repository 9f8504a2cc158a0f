"""Passwords (bcrypt), access tokens (JWT HS256) and API keys (`md_...`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import jwt

MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it
API_KEY_PREFIX = "md_"
# A real hash of a random password: login verifies against it when the email is
# unknown, so both answers take the same time.
_DUMMY_HASH = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt()).decode()


class AuthError(Exception):
    """Credentials missing, wrong, expired or revoked."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, and how they proved it."""

    user_id: str
    method: str  # "jwt" or "api_key"


def password_bytes(password: str) -> bytes:
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    return encoded


async def hash_password(password: str) -> str:
    """bcrypt in a worker thread (about 0.3 s): the event loop keeps serving."""
    data = password_bytes(password)
    hashed = await asyncio.to_thread(bcrypt.hashpw, data, bcrypt.gensalt())
    return hashed.decode()


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant work whether or not the user exists (pass `None` for no user)."""
    try:
        data = password_bytes(password)
    except ValueError:
        data = b""
    ok = await asyncio.to_thread(bcrypt.checkpw, data, (password_hash or _DUMMY_HASH).encode())
    return ok and password_hash is not None and bool(data)


def load_jwt_secret(data_dir: Path, configured: str | None) -> str:
    """The configured secret, else one generated once under the data dir (mode 0600)."""
    if configured:
        return configured
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class TokenIssuer:
    """Issues and checks HS256 access tokens."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + self.ttl_seconds, "typ": "access"}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> str:
        """The token's user id; `AuthError` if it is malformed, tampered or expired."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token")
        return subject


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 is right here: keys are 256 random bits, not guessable passwords."""
    return hashlib.sha256(key.encode()).hexdigest()
