"""A user's secrets: names like environment variables, values encrypted at rest.

Values are sealed with Fernet (AES-128-CBC and HMAC-SHA256, from
`cryptography`) under one key: `MINIDEVIN_SECRETS_KEY`, or a key generated
into the data directory at the first start (`secrets_key`, mode 0600, written
atomically). A damaged key file stops the start with an error naming it; a
value sealed under another key cannot be opened and says so. Values never
leave through the API: listing gives names and dates only.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from minidevin.runtime import schemas
from minidevin.runtime.auth import SecretFileError, write_private_file
from minidevin.runtime.errors import ApiError, NotFound
from minidevin.runtime.events import utc_now
from minidevin.runtime.storage import Store

KEY_FILE = "secrets_key"
NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def load_secrets_key(data_dir: Path, configured: str | None) -> Fernet:
    """The configured key, else the one under the data directory (generated once)."""
    if configured:
        try:
            return Fernet(configured.encode())
        except ValueError:
            raise SecretFileError(
                "MINIDEVIN_SECRETS_KEY is not a Fernet key (urlsafe base64 of 32 bytes)"
            ) from None
    path = data_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Fernet.generate_key()
        try:
            write_private_file(path, key)
        except OSError as exc:
            raise SecretFileError(f"cannot write {path}: {exc.strerror or exc}") from None
        return Fernet(key)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        path.chmod(0o600)
        return Fernet(data.strip())
    except (OSError, ValueError):
        raise SecretFileError(
            f"{path} is damaged (not a Fernet key); restore it from a backup, or delete it "
            "and store the secrets again (values sealed under it are then lost)"
        ) from None


class SecretUnreadable(ApiError):
    """A stored value cannot be opened with this server's key (the key was changed)."""

    status = 503
    code = "SECRETS_UNREADABLE"


class Secrets:
    """The secrets API of one runtime: per user, sealed in the store."""

    def __init__(self, store: Store, box: Fernet) -> None:
        self.store = store
        self.box = box

    def seal(self, text: str) -> str:
        """`text` encrypted under this server's key (for other secrets it keeps, such as a
        session's webhook secret)."""
        return self.box.encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self.box.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "a stored secret cannot be opened with this server's secrets key"
            ) from None

    async def put(self, user_id: str, name: str, value: str) -> schemas.SecretInfo:
        """Store (or replace) `name`; its first creation time is kept."""
        sealed = self.box.encrypt(value.encode())
        return await self.store.put_secret(user_id, name, sealed, utc_now())

    async def list(self, user_id: str) -> list[schemas.SecretInfo]:
        return await self.store.list_secrets(user_id)

    async def delete(self, user_id: str, name: str) -> None:
        if not await self.store.delete_secret(user_id, name):
            raise NotFound("secret not found")

    async def missing(self, user_id: str, names: list[str]) -> list[str]:
        """The names in `names` this user has no secret for."""
        known = {info.name for info in await self.store.list_secrets(user_id)}
        return [name for name in names if name not in known]

    async def values(self, user_id: str, names: list[str]) -> dict[str, str]:
        """The opened values of `names` (those that exist)."""
        sealed = await self.store.secret_values(user_id, names)
        try:
            return {name: self.box.decrypt(value).decode() for name, value in sealed.items()}
        except InvalidToken:
            raise SecretUnreadable(
                "a stored secret cannot be opened with this server's secrets key "
                "(MINIDEVIN_SECRETS_KEY or DATA_DIR/secrets_key changed?)"
            ) from None
