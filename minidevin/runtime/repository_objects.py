"""Blobs copied out of a tenant's repository into a snapshot store, with the tenant's rights.

A store seeded from a repository's index (`snapshots.py`) names blobs it does not
hold: the content of files nobody changed. A diff needs the old content of the
files a task did change, so those few blobs are copied in just before it, by
`git cat-file --batch` run as the uid the task's commands run as
(`drop_privileges`), over the repository's objects and nothing else of its
`.git` (an empty git directory of ours: no config, hooks or filters of the
tenant's). A link planted under `.git/objects` is followed with the tenant's
rights, never the server's. Each blob is hashed again as it is written into
the store: one whose bytes do not match its id is not taken.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from minidevin.runtime.tools.sandbox import drop_privileges

COPY_TIMEOUT = 120  # seconds for one batch
CHUNK = 1 << 20


def copy_blobs(
    repository_objects: Path,
    oids: Iterable[str],
    store_objects: Path,
    run_as: tuple[int, int] | None,
    environment: dict[str, str],
) -> set[str]:
    """Copy the blobs `oids` from `repository_objects` into `store_objects` (loose objects);
    the ids copied. Whatever cannot be read as `run_as`, or is not the blob it is named
    for, is left out."""
    wanted = sorted({oid for oid in oids if _is_oid(oid)})
    if not wanted:
        return set()
    neutral = Path(tempfile.mkdtemp(prefix="minidevin-objects-"))
    try:
        (neutral / "refs").mkdir()
        (neutral / "HEAD").write_text("ref: refs/heads/none\n")
        for path in (neutral, neutral / "refs", neutral / "HEAD"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        uid, gid = run_as if run_as is not None else (None, None)
        process = subprocess.Popen(
            [*drop_privileges(uid, gid), "git", "cat-file", "--batch"],
            cwd=neutral,
            env={
                **environment,
                "HOME": str(neutral),
                "XDG_CONFIG_HOME": str(neutral),
                "GIT_DIR": str(neutral),
                "GIT_OBJECT_DIRECTORY": str(repository_objects),
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write("".join(f"{oid}\n" for oid in wanted).encode())
            process.stdin.close()
            copied = {oid for oid in wanted if _copy_one(process.stdout, oid, store_objects)}
            process.wait(timeout=COPY_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        return copied
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()
    finally:
        shutil.rmtree(neutral, ignore_errors=True)


def _is_oid(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def _copy_one(stream: BinaryIO, oid: str, store_objects: Path) -> bool:
    """Read `cat-file --batch`'s answer for `oid`; write it as a loose object if it is the blob
    named. Raises ValueError when the stream is out of step (nothing more can be read)."""
    header = stream.readline().decode(errors="replace").split()
    if len(header) == 2 and header[0] == oid and header[1] == "missing":
        return False
    if len(header) != 3 or header[0] != oid or not header[2].isdigit():
        raise ValueError("cat-file answered out of step")
    kind, size = header[1], int(header[2])
    target = store_objects / oid[:2] / oid[2:]
    target.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = target.with_name(f".{oid[2:]}.{os.getpid()}.tmp")
    digest = hashlib.sha1(f"{kind} {size}\0".encode())
    packer = zlib.compressobj(1)
    with open(temporary, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(packer.compress(f"{kind} {size}\0".encode()))
        left = size
        while left:
            piece = stream.read(min(left, CHUNK))
            if not piece:
                raise ValueError("cat-file ended early")
            digest.update(piece)
            out.write(packer.compress(piece))
            left -= len(piece)
        out.write(packer.flush())
    if stream.read(1) != b"\n":
        temporary.unlink(missing_ok=True)
        raise ValueError("cat-file answered out of step")
    if kind != "blob" or digest.hexdigest() != oid:
        temporary.unlink(missing_ok=True)
        return False  # (not what the index claimed: the file's old content stays unknown)
    os.replace(temporary, target)
    return True
