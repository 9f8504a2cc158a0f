"""Repository instructions: the `AGENTS.md` files a task's system prompt carries.

Read once, when the task starts: `AGENTS.md` in the working directory and, when
the working directory lies inside a git repository, every `AGENTS.md` from the
repository's root down to it, root first (the nearer file speaks last), at most
`MAX_INSTRUCTIONS_BYTES` in all; what the cap cuts is said in the prompt.

The working directory is a tenant's, so nothing here follows a symbolic link:
the working directory is opened as the editor opens it (`open_workspace`), its
`AGENTS.md` beneath that descriptor (`open_beneath`); the directories above it
are reached by `..` from that descriptor, never by path, up to the first one
holding a `.git` entry (the repository root) and never further, and only a
regular file reached without a link is read there. Beneath the working
directory's descriptor everything is read with the file-system identity
commands run as (`acting_as`), so a file the tenant's commands could not read
(a root-only file hard-linked in, say) never reaches the prompt. Git is not run.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime.tools.base import ToolContext, ToolError
from minidevin.runtime.tools.paths import WorkspaceChanged, acting_as, open_beneath, open_workspace

log = structlog.get_logger(__name__)

INSTRUCTIONS_FILE = "AGENTS.md"
MAX_INSTRUCTIONS_BYTES = 32 * 1024
MAX_LEVELS = 64  # directories walked up at most while looking for the repository root
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY

HEADING = "# Repository instructions (AGENTS.md)"
PREAMBLE = (
    "The repository gives these instructions for agents working in it, from its root down "
    "to the working directory; where they disagree, the later (nearer) file wins. Follow "
    "them unless the task says otherwise."
)


@dataclass(frozen=True)
class InstructionFile:
    path: str  # where it was found
    text: str  # what the prompt carries (all of it, or its head when `cut`)
    size: int  # its size in bytes
    cut: bool = False


@dataclass(frozen=True)
class Instructions:
    """The instruction files found, root first; `left_out` were over the cap entirely."""

    files: tuple[InstructionFile, ...] = ()
    left_out: tuple[InstructionFile, ...] = ()
    limit: int = MAX_INSTRUCTIONS_BYTES

    @property
    def truncated(self) -> bool:
        return bool(self.left_out) or any(item.cut for item in self.files)

    def prompt_section(self) -> str:
        """The text added to the system prompt; empty when there are no instructions."""
        if not self.files:
            return ""
        parts = [HEADING, PREAMBLE]
        for item in self.files:
            parts.append(f"## {item.path}\n\n{item.text.rstrip()}")
            if item.cut:
                parts.append(
                    f"[Cut here: the instructions are limited to {self.limit // 1024} KiB in "
                    f"all; the rest of this file ({item.size} bytes) was left out.]"
                )
        for item in self.left_out:
            parts.append(
                f"[Left out: {item.path} ({item.size} bytes), over the "
                f"{self.limit // 1024} KiB limit on instructions.]"
            )
        return "\n\n".join(parts)

    def record(self) -> list[dict[str, Any]]:
        """What the trajectory keeps of them: each file, its size, what was used."""
        used = [
            {"path": f.path, "size": f.size, "used_bytes": len(f.text.encode()), "cut": f.cut}
            for f in self.files
        ]
        dropped = [{"path": f.path, "size": f.size, "used_bytes": 0, "cut": True}
                   for f in self.left_out]  # fmt: skip
        return used + dropped


def instructions_for(context: ToolContext) -> Instructions:
    """The instructions for a task whose tools run with `context`."""
    return load_instructions(
        context.working_directory, context.workspace_identity, context.uid, context.gid
    )


def load_instructions(
    working_directory: Path,
    identity: tuple[int, int] | None = None,
    uid: int | None = None,
    gid: int | None = None,
    limit: int = MAX_INSTRUCTIONS_BYTES,
) -> Instructions:
    """The `AGENTS.md` files for a task in `working_directory` (see the module docstring).

    Never raises for what it finds: an unreadable file, a link or a directory that
    changed is skipped (and logged); the task itself checks its working directory.
    """
    root = os.path.abspath(working_directory)
    if identity is None:  # (as `open_workspace` does: the links given are resolved)
        root = os.path.realpath(root)
    try:  # (as the editor does: the session's directory, opened as the server)
        work_fd = open_workspace(Path(root), identity)
    except WorkspaceChanged:
        return Instructions(limit=limit)
    directories: list[tuple[int, str]] = []
    try:
        with acting_as(uid, gid):
            directories = [*_repository_parents(work_fd, Path(root)), (work_fd, root)]
            return _read_all(directories, limit)
    except ToolError as exc:  # (the uid could not be taken: read nothing rather than as root)
        log.warning("instructions_not_read", error=str(exc))
        return Instructions(limit=limit)
    finally:
        for fd, _ in directories:
            if fd != work_fd:
                os.close(fd)
        os.close(work_fd)


def _repository_parents(work_fd: int, root: Path) -> list[tuple[int, str]]:
    """(descriptor, path) of each directory from the repository root down to the
    working directory's parent; [] when the working directory is the root or in none.
    """
    found: list[tuple[int, str]] = []
    current, path = work_fd, root
    try:
        if _has_git(work_fd):
            return []
        for _ in range(MAX_LEVELS):
            parent = os.open("..", _DIRECTORY, dir_fd=current)
            if _same(parent, current):  # the file system's root: no repository above
                os.close(parent)
                break
            path = path.parent
            found.append((parent, str(path)))
            if _has_git(parent):
                return found[::-1]
            current = parent
    except OSError as exc:  # (e.g. a directory above that this uid may not search)
        log.info("instructions_walk_stopped", directory=str(path), error=exc.strerror)
    for fd, _ in found:
        os.close(fd)
    return []


def _has_git(directory_fd: int) -> bool:
    try:
        os.stat(".git", dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _same(first: int, second: int) -> bool:
    a, b = os.fstat(first), os.fstat(second)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_all(directories: list[tuple[int, str]], limit: int) -> Instructions:
    files: list[InstructionFile] = []
    left_out: list[InstructionFile] = []
    budget = limit
    for directory_fd, directory in directories:
        shown = os.path.join(directory, INSTRUCTIONS_FILE)
        try:
            fd = open_beneath(directory_fd, (INSTRUCTIONS_FILE,), _READ)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a link (ELOOP), not ours to read (EACCES), ...
            log.info("instructions_skipped", path=shown, error=exc.strerror)
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                log.info("instructions_skipped", path=shown, error="not a regular file")
                continue
            if budget <= 0:
                left_out.append(InstructionFile(shown, "", info.st_size, cut=True))
                continue
            data = _read_at_most(fd, budget + 1)
        except OSError as exc:
            log.info("instructions_skipped", path=shown, error=exc.strerror)
            continue
        finally:
            os.close(fd)
        cut = len(data) > budget
        data = data[:budget]
        budget -= len(data)
        text = data.decode("utf-8", errors="replace").replace("\x00", "")
        if cut:  # (a character the cut split in two)
            text = text.rstrip("\ufffd")
        files.append(InstructionFile(shown, text, max(info.st_size, len(data)), cut=cut))
    return Instructions(tuple(files), tuple(left_out), limit)


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, min(size, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
