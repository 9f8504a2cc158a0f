"""Artifact files: stored under the data directory by id, never by a client's path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from minidevin.runtime.events import utc_now
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
    patch: str | Path,
    trajectory: dict[str, Any],
) -> list[ArtifactRow]:
    """Write a finished task's three artifact files; returns the rows to store.

    `patch` is the diff's text, or a file (written and synced already) moved in
    as the `diff.patch` artifact, so a large diff is never read into memory.
    """
    artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    contents = {
        "plan": json.dumps(plan, indent=2).encode(),
        "diff": patch if isinstance(patch, Path) else patch.encode(),
        "trajectory": json.dumps(trajectory, indent=2, default=str).encode(),
    }
    rows = []
    for name, type_, content_type in TASK_ARTIFACTS:
        artifact_id = new_id()
        data = contents[type_]
        path = artifact_path(artifacts_dir, artifact_id)
        if isinstance(data, Path):
            size = data.stat().st_size
            data.replace(path)
        else:
            size = len(data)
            temporary = path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
        rows.append(ArtifactRow(artifact_id, task_id, name, type_, content_type, size, utc_now()))
    return rows


def remove_artifact_files(artifacts_dir: Path, artifact_ids: list[str]) -> None:
    for artifact_id in artifact_ids:
        artifact_path(artifacts_dir, artifact_id).unlink(missing_ok=True)
