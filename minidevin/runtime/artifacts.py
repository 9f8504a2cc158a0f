"""Artifact files: stored under the data directory by id, never by a client's path.

On PostgreSQL the database also holds each artifact's bytes (`artifact_contents`,
committed with its row), so every node serves it: the node that ran the task from
the file it wrote, another from a copy of the database's bytes it writes into its own
artifacts directory on the first download (`keep_artifact_copy`). A file's
modification time is its artifact's `created_at` on every node, so a download has
the same `ETag` and `Last-Modified` wherever it is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from minidevin.runtime.events import utc_now
from minidevin.runtime.group_sync import ARTIFACTS
from minidevin.runtime.storage import ArtifactRow, new_id

TASK_ARTIFACTS = (
    # name, type, content type
    ("plan.json", "plan", "application/json"),
    ("diff.patch", "diff", "text/x-diff; charset=utf-8"),
    ("trajectory.json", "trajectory", "application/json"),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def artifact_path(artifacts_dir: Path, artifact_id: str) -> Path:
    return artifacts_dir / artifact_id


def created_at_ns(created_at: str) -> int:
    """An artifact's `created_at` (ISO 8601, `utc_now`) in nanoseconds since the epoch:
    its file's modification time, the same on every node."""
    when = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def keep_artifact_copy(
    artifacts_dir: Path, artifact_id: str, content: bytes, created_at: str
) -> Path:
    """Write the database's bytes of an artifact another node made into this node's
    artifacts directory (readable by the server's user only, dated `created_at`); its
    path. Written under a name of its own then renamed, so two downloads writing it
    at once each put a whole file in place and a reader never sees part of one."""
    artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = artifact_path(artifacts_dir, artifact_id)
    temporary = artifacts_dir / f"{artifact_id}.{uuid.uuid4().hex}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "wb") as handle:
            handle.write(content)
        stamp = created_at_ns(created_at)
        os.utime(temporary, ns=(stamp, stamp))
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_task_artifacts(
    artifacts_dir: Path,
    task_id: str,
    plan: dict[str, Any],
    patch: str | Path | None,
    trajectory: dict[str, Any],
    *,
    sync: bool = False,
) -> tuple[list[ArtifactRow], list[str]]:
    """Write a finished task's three artifact files: the rows to store, and what failed.

    `patch` is the diff's text, or a file (written and synced already) moved in
    as the `diff.patch` artifact, so a large diff is never read into memory;
    None: the diff could not be made (no `diff.patch`, and that is a failure).
    Each file is written on its own: one that cannot be (a full disk) is named
    in the failures (`"diff.patch: [Errno 28] No space left on device"`), and
    the others are still written. With `sync` (`MINIDEVIN_SYNC=full`) they are also
    fsynced, in a group with the other tasks ending meanwhile, before this returns;
    without, they are in the page cache, as durable as the database's own commits
    (`synchronous=NORMAL`): they survive the process's death, not a power cut.
    """
    contents = {
        "plan": lambda: json.dumps(plan, indent=2).encode(),
        "diff": lambda: patch if isinstance(patch, Path) else (patch or "").encode(),
        "trajectory": lambda: json.dumps(trajectory, indent=2, default=str).encode(),
    }
    rows, failures, written = [], [], []
    for name, type_, content_type in TASK_ARTIFACTS:
        if type_ == "diff" and patch is None:
            failures.append(f"{name}: the diff could not be made")
            continue
        artifact_id, created_at = new_id(), utc_now()
        path = artifact_path(artifacts_dir, artifact_id)
        try:
            artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            size = _write_file(path, contents[type_]())
            stamp = created_at_ns(created_at)  # (as every node's copy is dated)
            os.utime(path, ns=(stamp, stamp))
        except OSError as exc:
            with contextlib.suppress(OSError):  # (none, or one that could not be dated)
                path.unlink(missing_ok=True)
            failures.append(f"{name}: {exc}")
            continue
        written.append(path)
        rows.append(
            ArtifactRow(artifact_id, task_id, name, type_, content_type, size, created_at, path)
        )
    if written and sync:
        try:  # durable before the task's final status is (one sync for the tasks ending now)
            ARTIFACTS.wait(artifacts_dir, written)
        except OSError as exc:
            failures += [f"{row.name}: not made durable: {exc}" for row in rows]
            rows = []
    return rows, failures


def _write_file(path: Path, data: bytes | Path) -> int:
    """Put `data` (bytes, or a file moved in) at `path`; its size. Made durable by the
    caller's group sync (`runtime/group_sync.py`), not here."""
    if isinstance(data, Path):
        size = data.stat().st_size
        data.replace(path)
        return size
    temporary = path.with_suffix(".tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "wb") as handle:
            handle.write(data)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # (a full disk: free what was written)
        raise
    return len(data)


def remove_artifact_files(artifacts_dir: Path, artifact_ids: list[str]) -> None:
    for artifact_id in artifact_ids:
        artifact_path(artifacts_dir, artifact_id).unlink(missing_ok=True)
