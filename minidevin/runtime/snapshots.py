"""The snapshots behind `diff.patch`, at a cost proportional to what changed.

A working directory's tasks share one private git store under the data
directory (`snapshots_for`), so the user's own repository is never touched:
`git add --all` into the store's index records the tree as it stands, and the
diff at the end is `git diff --binary <before> <after>`, which `git apply`
accepts. The work tree's `.gitignore` files are honoured.

The store's index is git's stat cache: a file whose size and times did not change
is not read again. So only the first snapshot of a directory (after a server
start) hashes every file, and the next ones (this task's "after", the next task's
"before") only what changed. A small tree whose stat signature did not change
since the last snapshot is not handed to git at all. Snapshots of one directory
take an `flock` on the store, so two sessions on one directory do not mix their
indexes.

Not reused: the repository's own index and objects. Everything under `.git` is
written by the task's commands (they run as the directory's owner), so an index
there can claim any content for a file whose stat it copies, and its objects can
be links the server's git would follow with the server's rights: a snapshot
seeded from them could hide a change from the diff, or read what the task may
not. Every blob in the store was hashed by the server from the work tree itself.

The server's git runs with no configuration but ours (`git_environment`): the
tree it reads was written by a tenant's commands, and a filter, fsmonitor or
pager in a config would run as the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime.tools.paths import check_workspace

log = structlog.get_logger(__name__)

GIT_TIMEOUT = 120
SIGNATURE_LIMIT = 2_000  # entries: a smaller tree is compared by its stat first
RACY_NS = 100_000_000  # a signature with an entry this recent is not trusted later
INDEX = "snapshot-index"
EXCLUDE = ".git\n__pycache__/\n*.py[co]\n"  # never the user's repository, nor bytecode


def snapshots_for(
    snapshots_dir: Path, working_directory: Path, identity: tuple[int, int] | None
) -> Snapshots:
    """The snapshots of `working_directory`, in the store its tasks share."""
    key = f"{working_directory}\0{identity}".encode()
    name = hashlib.sha256(key).hexdigest()[:32]
    return Snapshots(working_directory, snapshots_dir / f"{name}.git", identity)


class Snapshots:
    """Snapshots of one working directory into one private git store."""

    def __init__(
        self, working_directory: Path, git_dir: Path, identity: tuple[int, int] | None = None
    ) -> None:
        self.working_directory = working_directory
        self.git_dir = git_dir
        self.identity = identity  # when known: a snapshot of a swapped directory is refused
        # the stat of a small tree at this object's last snapshot, and that snapshot's tree:
        # a tree whose every entry has the same stat is the same tree (no git run needed)
        self._last: tuple[tuple[tuple[Any, ...], ...], str] | None = None
        self.racy_ns = RACY_NS

    def _git(self, *args: str) -> str:
        env = {
            **git_environment(self.git_dir),
            "GIT_DIR": str(self.git_dir),
            "GIT_WORK_TREE": str(self.working_directory),
            "GIT_INDEX_FILE": str(self.git_dir / INDEX),
        }
        done = subprocess.run(
            ["git", "-c", "core.autocrlf=false", "-c", "core.quotepath=off",
             "-c", "core.untrackedCache=false", "-c", "core.fsmonitor=false", *args],
            cwd=self.working_directory,
            env=env,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode(errors="replace")

    def take(self) -> str:
        """Record the working tree; returns the tree id (`WorkspaceChanged` if it changed)."""
        if self.identity is not None:
            check_workspace(self.working_directory, self.identity)
        taken = time.time_ns()
        signature = tree_signature(self.working_directory)
        if signature is not None and self._last is not None and self._last[0] == signature:
            return self._last[1]
        tree = self._take()
        racy = signature is None or _racy(signature, taken - self.racy_ns)
        self._last = None if racy else (signature, tree)
        return tree

    def _take(self) -> str:
        with self._locked():
            for attempt in (1, 2):
                try:
                    if not (self.git_dir / "HEAD").exists():
                        self._create()
                    # (a git killed mid-write left its lock; we hold the store's: it is stale)
                    (self.git_dir / f"{INDEX}.lock").unlink(missing_ok=True)
                    self._git("add", "--all", ".")
                    return self._git("write-tree").strip()
                except RuntimeError as exc:
                    if attempt == 2:
                        raise
                    log.warning("snapshot_store_rebuilt", error=str(exc)[:500])
                    shutil.rmtree(self.git_dir, ignore_errors=True)  # (damaged: start over)
        raise AssertionError("unreachable")

    def diff(self, before: str, after: str) -> str:
        return self._git("diff", "--binary", "--no-color", "--no-ext-diff", before, after)

    def discard(self) -> None:
        """Nothing: the store is the directory's, for its next task (it goes at a restart)."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.git_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.git_dir.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _create(self) -> None:
        """A new store: bare, with our excludes."""
        shutil.rmtree(self.git_dir, ignore_errors=True)  # (a half-made one)
        self.git_dir.mkdir(mode=0o700, parents=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", str(self.git_dir)],
            env=git_environment(self.git_dir),
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=True,
        )
        (self.git_dir / "info").mkdir(exist_ok=True)
        (self.git_dir / "info" / "exclude").write_text(EXCLUDE)


def _racy(signature: tuple[tuple[Any, ...], ...], since: int) -> bool:
    """Whether a stat signature cannot vouch for its tree later: an entry changed since
    `since` (`RACY_NS` before it was taken) could change again within the clock's tick,
    keeping its stat (so git decides then); so could any, on a file system that keeps
    whole seconds only."""
    if signature and not any(entry[3] % 1_000_000_000 for entry in signature):
        return True  # (no sub-second times at all: a coarse file system)
    return any(max(entry[3], entry[4]) >= since for entry in signature)


def tree_signature(directory: Path) -> tuple[tuple[Any, ...], ...] | None:
    """Every entry under `directory` (`.git` aside) with its type, size, times and inode, in
    order; None past `SIGNATURE_LIMIT` entries (git's stat cache is then the cheaper)."""
    entries: list[tuple[Any, ...]] = []
    pending = [directory]
    try:
        while pending:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    if entry.name == ".git":
                        continue
                    info = entry.stat(follow_symlinks=False)
                    entries.append((entry.path, info.st_mode, info.st_size, info.st_mtime_ns,
                                    info.st_ctime_ns, info.st_ino))  # fmt: skip
                    if len(entries) > SIGNATURE_LIMIT:
                        return None
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(Path(entry.path))
    except OSError:
        return None  # (unreadable: git decides)
    return tuple(sorted(entries))


def git_environment(git_dir: Path) -> dict[str, str]:
    """What the server's own git (snapshots, diffs) runs with: no config but ours.

    Snapshot git runs as the server, over a tree a tenant's commands wrote: no
    system or global config (a filter, fsmonitor or pager there would run as the
    server), no `HOME` of the server's, none of the server's other variables.
    """
    env = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL") if name in os.environ}
    return {
        **env,
        "HOME": str(git_dir),
        "XDG_CONFIG_HOME": str(git_dir),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
