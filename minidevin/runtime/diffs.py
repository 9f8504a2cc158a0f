"""`diff.patch` written straight to a file, capped, without holding it in memory.

`git diff` runs in the task's private snapshot git directory (two trees, no
work tree) and its output is copied to the file in bounded pieces. The diff
comes file by file (`diff --git a/X b/X` sections); a section that would take
the file past the cap is cut back out and left out whole, later smaller
sections may still fit. The files left out
are listed in a note at the end, after the last section (`git apply` ignores
it):

    # minidevin: diff.patch capped at 20 MiB (MINIDEVIN_MAX_DIFF_MB); files left out (1):
    # big/generated.bin

Files whose old content could not be had (`Snapshots.complete`) are named in a
note at the top (all of them) and diffed as if added.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from minidevin.runtime.snapshots import git_environment

GIT_TIMEOUT = 300  # seconds for the whole diff; the process is killed beyond
PIECE = 64 * 1024  # bytes read at a time: a long line is copied in pieces
LISTED_AT_MOST = 1000  # names in the note; the rest are counted
SECTION = b"diff --git "


@dataclass
class DiffResult:
    path: Path
    size: int  # bytes of the patch, the note included
    left_out: list[str] = field(default_factory=list)


def write_diff(
    git_dir: Path,
    before: str,
    after: str,
    out: Path,
    max_bytes: int,
    unreadable: Sequence[str] = (),
) -> DiffResult:
    """Write `git diff --binary before after` to `out`, at most `max_bytes` of sections;
    `unreadable` (files whose old content could not be had, shown as added) are named in a
    note at the top, every one."""
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    left_out: list[str] = []
    with open(out, "wb", opener=_private) as sink:
        if unreadable:
            sink.write(_unreadable_note(unreadable))
        _copy_sections(git_dir, [before, after], sink, max_bytes, left_out)
        if left_out:
            sink.write(_note(max_bytes, left_out))
        size = sink.tell()  # (durable with the task's artifacts: `group_sync.ARTIFACTS`)
    return DiffResult(out, size, left_out)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _git(git_dir: Path, *args: str) -> list[str]:
    return ["git", f"--git-dir={git_dir}", "-c", "core.quotepath=off", *args]


DIFF_OPTIONS = ("--no-color", "--no-ext-diff")


def _copy_sections(
    git_dir: Path,
    trees: list[str],
    sink: BinaryIO,
    max_bytes: int,
    left_out: list[str],
) -> None:
    process = subprocess.Popen(
        _git(git_dir, "diff", "--binary", *DIFF_OPTIONS, *trees),
        env=git_environment(git_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watchdog = threading.Timer(GIT_TIMEOUT, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        name = ""  # the file whose section is being copied
        start = 0  # where that section starts in the sink
        skipping = False
        at_line_start = True
        while piece := process.stdout.readline(PIECE):
            if at_line_start and piece.startswith(SECTION):
                name, start, skipping = _section_name(piece), sink.tell(), False
            at_line_start = piece.endswith(b"\n")
            if skipping:
                continue
            if sink.tell() + len(piece) > max_bytes:  # this file does not fit: drop it whole
                sink.seek(start)
                sink.truncate()
                skipping = True
                left_out.append(name)
                continue
            sink.write(piece)
        if process.wait() != 0:
            raise RuntimeError(f"git diff failed (exit {process.returncode})")
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _section_name(header: bytes) -> str:
    """The file of a `diff --git a/X b/X` header (its new name when renamed)."""
    rest = header[len(SECTION) :].rstrip(b"\n").decode(errors="replace")
    half = (len(rest) - 1) // 2
    if len(rest) % 2 and rest[half] == " " and rest[:half][2:] == rest[half + 1 :][2:]:
        name = rest[half + 1 :]  # "a/X b/X" (or, quoted, "\"a/X\" \"b/X\"")
    else:
        name = rest.rsplit(" b/", 1)[-1]  # renamed: "a/OLD b/NEW"
    quoted = name.startswith('"') and name.endswith('"')
    name = name[1:-1] if quoted else name
    return name.removeprefix("b/")


def _note(max_bytes: int, left_out: list[str]) -> bytes:
    mib = max_bytes / (1 << 20)
    lines = [
        f"# minidevin: diff.patch capped at {mib:g} MiB (MINIDEVIN_MAX_DIFF_MB); "
        f"files left out ({len(left_out)}):"
    ]
    return _listed(lines, left_out)


def _unreadable_note(unreadable: Sequence[str]) -> bytes:
    """Every name (a task could bury one among many): the old content of these files was
    gone or forged in the repository's objects; each shows whole, as added (or, deleted, not
    at all)."""
    lines = [
        "# minidevin: the old content of these files could not be read from the repository's "
        f"objects (changed or deleted during the task); each is shown whole, as added, or, "
        f"deleted, only here ({len(unreadable)}):",
        *("# " + name.replace("\n", "\\n") for name in unreadable),
    ]
    return ("\n".join(lines) + "\n").encode(errors="surrogateescape")


def _listed(lines: list[str], names: Sequence[str]) -> bytes:
    lines += ["# " + name.replace("\n", "\\n") for name in names[:LISTED_AT_MOST]]
    if len(names) > LISTED_AT_MOST:
        lines.append(f"# ... and {len(names) - LISTED_AT_MOST} more")
    return ("\n".join(lines) + "\n").encode()
