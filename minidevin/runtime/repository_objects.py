"""Blobs copied out of a tenant's repository into a snapshot store, the way its commands run.

A store seeded from a repository's index (`snapshots.py`) names blobs it does not
hold: the content of files nobody changed. A diff needs the old content of the
files a task did change, so those few blobs are copied in just before it, by
`git cat-file --batch` run as the task's commands run: as their uid, in the
same bubblewrap view (the working directory and the system, no network), over
the repository's objects and nothing else of its `.git` (an empty git
directory of ours: no config, hooks or filters of the tenant's). A link or an
`alternates` entry planted under `.git/objects` is followed with the tenant's
rights in the tenant's view, never the server's. Each blob is hashed again as
it is written into the store: one whose bytes do not match its id is not taken.
Where the sandbox does not work (commands then run unsandboxed as well), only
the uid is dropped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from minidevin.runtime.tools.paths import open_workspace
from minidevin.runtime.tools.sandbox import drop_privileges, sandbox_status, wrap

COPY_TIMEOUT = 120.0  # seconds for one batch, whatever the repository holds (a FIFO...)
CHUNK = 1 << 20
SANDBOXED_GIT_DIR = "/tmp/.minidevin-objects"  # in the sandbox's own /tmp
MAKE_GIT_DIR = (
    f'mkdir -p {SANDBOXED_GIT_DIR}/refs && echo "ref: refs/heads/none" > {SANDBOXED_GIT_DIR}/HEAD'
    " && exec git cat-file --batch"
)


def copy_blobs(
    working_directory: Path,
    identity: tuple[int, int] | None,
    oids: Iterable[str],
    store_objects: Path,
    run_as: tuple[int, int] | None,
    environment: dict[str, str],
) -> set[str]:
    """Copy the blobs `oids` from the repository at `working_directory` into `store_objects`
    (loose objects); the ids copied. Whatever the task's commands could not read, or is not
    the blob it is named for, is left out."""
    wanted = sorted({oid for oid in oids if _is_oid(oid)})
    if not wanted:
        return set()
    uid, gid = run_as if run_as is not None else (None, None)
    env = {
        **environment,
        "GIT_OBJECT_DIRECTORY": str(working_directory / ".git" / "objects"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    workdir_fd: int | None = None
    neutral: Path | None = None
    try:
        if sandbox_status().works:
            workdir_fd = open_workspace(working_directory, identity)
            argv = wrap(["/bin/sh", "-c", MAKE_GIT_DIR], working_directory, network=False,
                        workdir_fd=workdir_fd, uid=uid, gid=gid)  # fmt: skip
            env |= {"GIT_DIR": SANDBOXED_GIT_DIR, "HOME": "/tmp", "XDG_CONFIG_HOME": "/tmp"}
        else:
            neutral = _neutral_git_dir()
            argv = [*drop_privileges(uid, gid), "git", "cat-file", "--batch"]
            env |= {"GIT_DIR": str(neutral), "HOME": str(neutral), "XDG_CONFIG_HOME": str(neutral)}
        return _exchange(argv, env, workdir_fd, wanted, store_objects)
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()
    finally:
        if workdir_fd is not None:
            os.close(workdir_fd)
        if neutral is not None:
            shutil.rmtree(neutral, ignore_errors=True)


def _neutral_git_dir() -> Path:
    """An empty git directory every uid may read (none may write)."""
    neutral = Path(tempfile.mkdtemp(prefix="minidevin-objects-"))
    (neutral / "refs").mkdir()
    (neutral / "HEAD").write_text("ref: refs/heads/none\n")
    for path in (neutral, neutral / "refs"):
        path.chmod(0o755)
    (neutral / "HEAD").chmod(0o644)
    return neutral


def _exchange(
    argv: list[str], env: dict[str, str], workdir_fd: int | None, wanted: list[str], store: Path
) -> set[str]:
    """Ask cat-file for `wanted` (written from a thread of its own, so neither pipe can fill
    up against the other) and read its answers, the whole under one deadline."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=() if workdir_fd is None else (workdir_fd,),
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    watchdog = threading.Timer(COPY_TIMEOUT, _kill, (process,))
    watchdog.start()
    writer = threading.Thread(target=_ask, args=(process.stdin, wanted), daemon=True)
    writer.start()
    try:
        return {oid for oid in wanted if _copy_one(process.stdout, oid, store)}
    finally:
        watchdog.cancel()
        _kill(process)
        process.wait()
        process.stdout.close()
        writer.join(timeout=5)


def _ask(stdin: BinaryIO, wanted: list[str]) -> None:
    try:
        for start in range(0, len(wanted), 1000):
            stdin.write("".join(f"{oid}\n" for oid in wanted[start : start + 1000]).encode())
        stdin.close()
    except OSError:
        pass  # (it was killed)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            process.kill()


def _is_oid(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def _copy_one(stream: BinaryIO, oid: str, store_objects: Path) -> bool:
    """Read `cat-file --batch`'s answer for `oid`; write it as a loose object if it is the blob
    named. Raises ValueError when the stream is out of step or ends (nothing more can be
    read)."""
    header = stream.readline().decode(errors="replace").split()
    if len(header) == 2 and header[0] == oid and header[1] == "missing":
        return False
    if len(header) != 3 or header[0] != oid or not header[2].isdigit():
        raise ValueError("cat-file answered out of step")
    kind, size = header[1], int(header[2])
    target = store_objects / oid[:2] / oid[2:]
    target.parent.mkdir(mode=0o700, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".copy-")
    digest = hashlib.sha1(f"{kind} {size}\0".encode())
    packer = zlib.compressobj(1)
    try:
        with os.fdopen(fd, "wb") as out:
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
            raise ValueError("cat-file answered out of step")
        if kind != "blob" or digest.hexdigest() != oid:
            return False  # (not what the index claimed: the file's old content stays unknown)
        os.replace(name, target)
        return True
    finally:
        Path(name).unlink(missing_ok=True)
