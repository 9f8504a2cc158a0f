"""The snapshots behind `diff.patch`, at a cost proportional to what changed.

A working directory's tasks share one private git store under the data
directory (`snapshots_for`), so the user's own repository is never written:
`git add --all` into the store's index records the tree as it stands, and the
diff at the end is `git diff --binary <before> <after>`, which `git apply`
accepts. The work tree's `.gitignore` files are honoured.

The store's index is git's stat cache: a file whose size and times did not change
is not read again. So only the first snapshot of a directory hashes every file,
and the next ones (this task's "after", the next task's "before") only what
changed. When the directory is the top of a git repository, even the first one
is cheap: the store starts from a copy of the repository's index and reads its
objects through `objects/info/alternates`, so unchanged files are neither hashed
nor copied (a repository with a split index, alternates of its own, or entries
marked assume-unchanged or skip-worktree, whose changes `git add` would not see,
is snapshotted as a plain directory instead). Snapshots of one directory take an
`flock` on the store, so two sessions on one directory do not mix their indexes.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime.tools.paths import check_workspace

log = structlog.get_logger(__name__)

GIT_TIMEOUT = 120
SIGNATURE_LIMIT = 2_000  # entries: a smaller tree is compared by its stat first
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
        signature = tree_signature(self.working_directory)
        if signature is not None and self._last is not None and self._last[0] == signature:
            return self._last[1]
        tree = self._take()
        self._last = None if signature is None else (signature, tree)
        return tree

    def _take(self) -> str:
        with self._locked():
            if not (self.git_dir / "HEAD").exists():
                self._create()
            # (a git killed mid-write left its lock; we hold the store's, so it is stale)
            (self.git_dir / f"{INDEX}.lock").unlink(missing_ok=True)
            self._git("add", "--all", ".")
            return self._git("write-tree").strip()

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
        """A new store: bare, our excludes, and the repository's objects and index when the
        directory is the top of a usable one."""
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
        repository = _repository_at(self.working_directory)
        if repository is None:
            return
        alternates = self.git_dir / "objects" / "info" / "alternates"
        alternates.write_text(f"{repository / 'objects'}\n")
        shutil.copy2(repository / "index", self.git_dir / INDEX)  # (its time: racy-git checks)
        flags = self._git("ls-files", "-v", "-z").split("\0")
        if any(entry[:1].islower() or entry[:1] == "S" for entry in flags if entry):
            (self.git_dir / INDEX).unlink()  # its marks hide changes: start from nothing
            log.info("snapshot_index_not_reused", reason="assume-unchanged or skip-worktree")


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


def _repository_at(directory: Path) -> Path | None:
    """The git directory of the repository `directory` is the top of, when its index and
    objects can be reused as they are (read only, never written)."""
    dot_git = directory / ".git"
    if dot_git.is_symlink():
        return None
    if dot_git.is_file():  # a worktree or submodule: `gitdir: <path>`
        text = dot_git.read_text(errors="replace").strip()
        if not text.startswith("gitdir:"):
            return None
        target = Path(text.removeprefix("gitdir:").strip())
        dot_git = target if target.is_absolute() else directory / target
        if not dot_git.resolve().is_relative_to(directory.resolve()):
            return None  # (never read a repository outside the workspace: another's, say)
        if (dot_git / "commondir").exists():
            return None  # a linked worktree: its objects live elsewhere
    index, objects = dot_git / "index", dot_git / "objects"
    if index.is_symlink() or objects.is_symlink():
        return None  # (read as the server: never through a link the workspace holds)
    if not index.is_file() or not objects.is_dir():
        return None
    if (dot_git / "objects" / "info" / "alternates").exists():
        return None  # objects elsewhere still: not followed
    if _holds_links(objects):
        return None  # (an object linked to another's file would be read as the server)
    if any(dot_git.glob("sharedindex.*")):
        return None  # a split index: its other half lives beside it
    return dot_git


def _holds_links(objects: Path) -> bool:
    """Whether any entry of a git objects directory (two levels: `ab/...`, `pack/...`) is a
    symbolic link."""
    with os.scandir(objects) as top:
        for entry in top:
            if entry.is_symlink():
                return True
            if entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    if any(child.is_symlink() for child in inner):
                        return True
    return False


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
