"""Artifacts in PostgreSQL, a part of `PostgresStore`: their rows, and their bytes, which
every node reads.

A row goes in with its bytes in one statement (`artifact_contents`, schema 3), so no
node ever lists an artifact whose bytes are not in the database yet; it is queued in
order with the task's events like any write, so the final status that announces the
artifacts commits with them or after. Deleting a row (a session deleted, retention)
deletes its bytes by `ON DELETE CASCADE`; setting aside renames the row, the bytes
stay under its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from minidevin.runtime import schemas
from minidevin.runtime.storage.interface import ArtifactRow
from minidevin.runtime.storage.postgres_batch import Write
from minidevin.runtime.storage.postgres_engine import PostgresEngine

log = structlog.get_logger(__name__)

_COLUMNS = "id, task_id, name, type, content_type, size, created_at"
_INSERT_ROW = f"INSERT INTO artifacts ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
# the row and its bytes in one statement (the bytes' foreign key is checked at its end)
_INSERT_WITH_CONTENT = (
    f"WITH artifact AS ({_INSERT_ROW} RETURNING id) "
    "INSERT INTO artifact_contents (artifact_id, content) SELECT id, $8 FROM artifact"
)


def file_content(row: ArtifactRow) -> bytes | None:
    """The bytes of the file the row was written from; None (logged) if there is none to
    read: the row then goes in alone, served only where its file is."""
    if row.file is None:
        return None
    try:
        return row.file.read_bytes()
    except OSError as exc:
        log.error("artifact_unreadable", artifact_id=row.id, task_id=row.task_id, error=str(exc))
        return None


class PostgresArtifacts(PostgresEngine):
    """Artifact rows and their bytes (see the module's docstring)."""

    def add_artifacts(self, rows: Sequence[ArtifactRow]) -> None:
        """Queue each row with its file's bytes (read here, on the caller's thread: never
        on the loop)."""
        for row in rows:
            values = (row.id, row.task_id, row.name, row.type, row.content_type, row.size,
                      row.created_at)  # fmt: skip
            content = file_content(row)
            if content is None:
                self.submit(Write(_INSERT_ROW, values))
            else:
                self.submit(Write(_INSERT_WITH_CONTENT, (*values, content)))

    async def set_aside_artifacts(self, task_id: str) -> None:
        rows = await self.fetch_all("SELECT name FROM artifacts WHERE task_id = $1", task_id)
        names = {row["name"] for row in rows}
        run = 1 + sum(1 for name in names if name.startswith("run") and name.endswith("-plan.json"))
        # (ILIKE: SQLite's LIKE ignores ASCII case)
        await self.write(
            "UPDATE artifacts SET name = $1 || name WHERE task_id = $2 "
            "AND name NOT ILIKE 'run%-%'",
            f"run{run}-", task_id,
        )  # fmt: skip

    async def list_artifacts(self, task_id: str) -> list[schemas.Artifact]:
        rows = await self.fetch_all(
            "SELECT id, name, type, size, created_at FROM artifacts WHERE task_id = $1 "
            "ORDER BY created_at, name",
            task_id,
        )
        return [schemas.Artifact(**row) for row in rows]

    async def artifact_row(self, task_id: str, artifact_id: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            f"SELECT {_COLUMNS} FROM artifacts WHERE id = $1 AND task_id = $2",
            artifact_id, task_id,
        )  # fmt: skip

    async def artifact_content_part(
        self, artifact_id: str, offset: int, length: int
    ) -> bytes | None:
        """At most `length` of the artifact's bytes from `offset` (0 is the first), fewer
        at its end; None when the database holds none for it. The server sends only that
        part, so a large artifact is read a part at a time, never whole."""
        row = await self.fetch_one(
            "SELECT substring(content FROM $2 FOR $3) AS part FROM artifact_contents "
            "WHERE artifact_id = $1",
            artifact_id, offset + 1, length,
        )  # fmt: skip
        return None if row is None else bytes(row["part"])
