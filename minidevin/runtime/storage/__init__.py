"""Storage: the interface the runtime talks to, and its backends (SQLite, PostgreSQL).

Nothing outside this package writes SQL or imports a database driver; the
actors and the HTTP layer call the domain methods of `interface.Store`.
"""

from __future__ import annotations

from minidevin.runtime.settings import Settings
from minidevin.runtime.storage.files import secure_data_dir
from minidevin.runtime.storage.interface import (
    AlreadyExists,
    ArtifactRow,
    EventSink,
    Repository,
    Store,
    StoreError,
    new_id,
)
from minidevin.runtime.storage.rows import task_detail

__all__ = [
    "AlreadyExists",
    "ArtifactRow",
    "EventSink",
    "Repository",
    "Store",
    "StoreError",
    "new_id",
    "open_store",
    "secure_data_dir",
    "task_detail",
]


def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL at `settings.database_url` when it is set,
    else SQLite at `settings.database_path`.

    Not opened yet: the runtime opens it (`await store.open()`) on its loop.
    """
    if settings.database_url:
        from minidevin.runtime.storage.postgres import PostgresStore

        return PostgresStore(settings.database_url, retry_seconds=settings.store_retry_seconds)
    from minidevin.runtime.storage.sqlite import SqliteStore

    return SqliteStore(
        settings.database_path, retry_seconds=settings.store_retry_seconds, sync=settings.sync
    )
