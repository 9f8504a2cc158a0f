"""Artifact files: stored under the data directory by id, never by a client's path."""

from __future__ import annotations

import json
import os
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


def artifact_path(artifacts_dir: Path, artifact_id: str) -> Path:
    return artifacts_dir / artifact_id


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
        artifact_id = new_id()
        path = artifact_path(artifacts_dir, artifact_id)
        try:
            artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            size = _write_file(path, contents[type_]())
        except OSError as exc:
            failures.append(f"{name}: {exc}")
            continue
        written.append(path)
        rows.append(ArtifactRow(artifact_id, task_id, name, type_, content_type, size, utc_now()))
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
