"""Artifact files: stored under the data directory by id, never by a client's path.

On PostgreSQL the database also holds each artifact's bytes (`artifact_contents`,
committed with its row), so every node serves it: the node that ran the task from
the file it wrote, another from a copy of the database's bytes it writes into its own
artifacts directory on the first download (`ArtifactCopies`). A file's
modification time is its artifact's `created_at` on every node, so a download has
the same `ETag` and `Last-Modified` wherever it is served.

A file is served only while its size is its row's: one cut short (a power cut before
its data reached the disk) is not served; on PostgreSQL it is copied again from the
database's bytes. A copy is read from the database a part at a time (`COPY_PART`
bytes) straight into its file, once per artifact at a time on a node however many
downloads ask for it meanwhile, and fsynced before it takes its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Container
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime.events import timestamp_ns, utc_now
from minidevin.runtime.group_sync import ARTIFACTS
from minidevin.runtime.storage import ArtifactRow, new_id

TASK_ARTIFACTS = (
    # name, type, content type
    ("plan.json", "plan", "application/json"),
    ("diff.patch", "diff", "text/x-diff; charset=utf-8"),
    ("trajectory.json", "trajectory", "application/json"),
)
COPY_PART = 1 << 20  # bytes of an artifact read from the database at a time
STALE_COPY_SECONDS = 3600.0  # a `*.tmp` file older than this is a copy whose writer died
log = structlog.get_logger(__name__)

# (offset, length) -> that part of an artifact's bytes in the database; None: it holds none
ReadPart = Callable[[int, int], Awaitable[bytes | None]]


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
    try:
        artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return [], [f"{name}: {exc}" for name, _, _ in TASK_ARTIFACTS]
    for name, type_, content_type in TASK_ARTIFACTS:
        if type_ == "diff" and patch is None:
            failures.append(f"{name}: the diff could not be made")
            continue
        artifact_id, created_at = new_id(), utc_now()
        path = artifact_path(artifacts_dir, artifact_id)
        try:  # (dated by `created_at`, as every node's copy is)
            size = _write_file(path, contents[type_](), timestamp_ns(created_at))
        except OSError as exc:
            with contextlib.suppress(OSError):  # (none, or one cut short)
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


def _write_file(path: Path, data: bytes | Path, stamp: int) -> int:
    """Put `data` (bytes, or a file moved in) at `path`, dated `stamp` (ns); its size. Made
    durable by the caller's group sync (`runtime/group_sync.py`), not here.

    The bytes go straight to their final name, which is a fresh id (`O_EXCL`): no
    temporary file and rename, which cost a directory entry each when a thousand tasks
    end at once. A file cut short by a crash is never served: its row is stored after it
    is written, and a file is served only while its size is its row's."""
    if isinstance(data, Path):
        size = data.stat().st_size
        data.replace(path)
        os.utime(path, ns=(stamp, stamp))
        return size
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    with open(os.open(path, flags, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.utime(handle.fileno(), ns=(stamp, stamp))
    return len(data)


def remove_artifact_files(artifacts_dir: Path, artifact_ids: list[str]) -> None:
    for artifact_id in artifact_ids:
        artifact_path(artifacts_dir, artifact_id).unlink(missing_ok=True)


class ContentMismatch(Exception):
    """The database holds another number of bytes for an artifact than its row says."""


def regular_file_size(path: Path) -> int | None:
    """The size of the regular file at `path`; None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


class ArtifactCopies:
    """The artifact files a node serves: its own, or copies of the database's bytes it
    writes on their first download (see the module's docstring). One per runtime, used on
    its event loop; `part` and `stale_after` are `COPY_PART` and `STALE_COPY_SECONDS`."""

    def __init__(
        self,
        artifacts_dir: Path,
        *,
        sync: bool = False,
        part: int = COPY_PART,
        stale_after: float = STALE_COPY_SECONDS,
    ) -> None:
        self.artifacts_dir = artifacts_dir
        self.sync = sync  # (`MINIDEVIN_SYNC=full`: a copy's name is made durable too)
        self.part = part
        self.stale_after = stale_after
        self._copying: dict[str, asyncio.Task[Path | None]] = {}  # artifact id -> its copy
        self._swept_at: float | None = None  # (time.monotonic)

    async def path(
        self, artifact_id: str, size: int, created_at: str, read_part: ReadPart
    ) -> Path | None:
        """The path of the artifact's whole file on this node: the file there if it has
        the row's `size`, else a copy of the database's bytes (`read_part`, which gives None
        where the database holds none: SQLite's), written now or by the download already
        writing it. None if there is neither. `OSError` if the copy cannot be written,
        `ContentMismatch` if the database's bytes are not `size` long."""
        path = artifact_path(self.artifacts_dir, artifact_id)
        found = regular_file_size(path)
        if found == size:
            return path
        if found is not None:  # (cut short by a power cut: never served)
            log.error("artifact_file_damaged", artifact_id=artifact_id, size=found, expected=size)
        copying = self._copying.get(artifact_id)
        if copying is None:
            copying = asyncio.ensure_future(self._copy(artifact_id, size, created_at, read_part))
            self._copying[artifact_id] = copying
            copying.add_done_callback(lambda done: self._copied(artifact_id, done))
        return await asyncio.shield(copying)  # (a download cancelled leaves it to the others)

    def _copied(self, artifact_id: str, copy: asyncio.Task[Path | None]) -> None:
        if self._copying.get(artifact_id) is copy:
            del self._copying[artifact_id]
        if not copy.cancelled():
            copy.exception()  # (retrieved: every download waiting for it has it already)

    async def _copy(
        self, artifact_id: str, size: int, created_at: str, read_part: ReadPart
    ) -> Path | None:
        """Write the database's bytes into the artifact's file, a part at a time; its
        path, or None if the database holds none (any more)."""
        now = time.monotonic()
        if self._swept_at is None or now - self._swept_at >= self.stale_after:
            self._swept_at = now
            busy = self._copying.keys()  # (live: a copy begun meanwhile is spared too)
            await asyncio.to_thread(sweep_stale_copies, self.artifacts_dir, busy, self.stale_after)
        path = artifact_path(self.artifacts_dir, artifact_id)
        temporary = self.artifacts_dir / f"{artifact_id}.{uuid.uuid4().hex}.tmp"
        handle = await asyncio.to_thread(_create_private, self.artifacts_dir, temporary)
        placed = False
        try:
            written = reads = 0
            while True:  # (up to one byte past `size`: the database must hold no more)
                asked = min(self.part, size + 1 - written)
                data = await read_part(written, asked)
                reads += 1
                if data is None:
                    return None
                if data:
                    await asyncio.to_thread(handle.write, data)
                written += len(data)
                if len(data) < asked or written > size:
                    break
            if written != size:
                more = " or more" if written > size else ""
                raise ContentMismatch(
                    f"the database holds {written}{more} bytes of artifact {artifact_id}, "
                    f"its row says {size}"
                )
            await asyncio.to_thread(_place_copy, handle, temporary, path, created_at)
            placed = True
        finally:
            if not placed:
                handle.close()
                with contextlib.suppress(OSError):
                    temporary.unlink(missing_ok=True)
        log.info("artifact_copied", artifact_id=artifact_id, size=size, reads=reads)
        if self.sync:
            try:  # (a copy is whole whenever it has its name; this keeps the name too)
                await asyncio.to_thread(ARTIFACTS.wait, self.artifacts_dir)
            except OSError as exc:
                log.warning("artifact_copy_not_synced", artifact_id=artifact_id, error=str(exc))
        return path


def _create_private(artifacts_dir: Path, temporary: Path) -> Any:
    """A new file at `temporary`, readable by the server's user only, open for writing."""
    artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return open(descriptor, "wb")  # (closed by the caller)


def _place_copy(handle: Any, temporary: Path, path: Path, created_at: str) -> None:
    """Sync the written copy, date it `created_at`, and give it the artifact's name: the
    name, once there (after a power cut too), always holds every byte."""
    with handle:
        handle.flush()
        os.fsync(handle.fileno())
    stamp = timestamp_ns(created_at)
    os.utime(temporary, ns=(stamp, stamp))
    temporary.replace(path)


def sweep_stale_copies(artifacts_dir: Path, busy: Container[str], older_than: float) -> int:
    """Remove the `*.tmp` files in `artifacts_dir` last written more than `older_than`
    seconds ago (copies or task artifact files whose writer died), but for the artifacts
    in `busy` (being copied now); how many were removed."""
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = os.scandir(artifacts_dir)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            if not entry.name.endswith(".tmp") or entry.name.split(".", 1)[0] in busy:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
    if removed:
        log.info("artifact_stale_copies_removed", directory=str(artifacts_dir), count=removed)
    return removed
