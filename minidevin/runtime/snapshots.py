"""The snapshots behind `diff.patch`, at a cost proportional to what changed.

A working directory's tasks share one private git store under the data
directory (`snapshots_for`), so the user's own repository is never touched:
`git add --all` into the store's index records the tree as it stands, and the
diff at the end is `git diff --binary <before> <after>`, which `git apply`
accepts. The work tree's `.gitignore` files are honoured.

The store's index is git's stat cache: a file whose size and times did not change
is not read again. So only the first snapshot of a plain directory hashes every
file, and the next ones (this task's "after", the next task's "before") only
what changed. A small tree whose stat signature did not change
since the last snapshot is not handed to git at all, nor is an index `git add`
left as it was to `write-tree` (git writes a new file each time). Snapshots of
one directory take an `flock` on the store, so two sessions on one directory do
not mix their indexes; a snapshot that waited there for another, begun after it
was asked for, takes that one's tree (the tree as it stood since: a task and its
session's warm-up, `snapshot_warmer.py`, hash a repository once).

A repository's first snapshot ever (no store of that directory was made
before: trust on first use) starts from the repository's own stat cache: its
index, parsed as untrusted data (`git_index.py`: checksum and paths checked,
marks that could hide a change dropped, no cache tree), written as the store's
index. Unchanged files are then neither hashed nor copied; the store names their
blobs without holding them (`write-tree --missing-ok`) and holds its trees (one
pack, `git_trees.py`). Before a diff, the old content of the files the task
changed is copied in from the repository's objects by a git running as the
task's uid in its sandbox, each blob hashed again (`repository_objects.py`):
the server's git never reads the tenant's `.git`, and a link planted there is
followed with the tenant's rights in the tenant's view. A file whose old
content cannot be had (the objects were deleted or forged during the task)
shows whole, as added, and is named in a note at the top. Why only the first
time: everything under `.git` is written by the task's commands; an index an
earlier task forged could claim, for a file, the content a later task's
process is going to write, and that write would vanish from the later diff.
Stores therefore outlive restarts (a `.known` mark beside each one stays even
when a damaged store is rebuilt, by hashing), so a repository's index is read
before any task of this server has run in it, never after.

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

from minidevin.runtime.git_index import (
    UnusableIndex,
    after_hand_over,
    file_identity,
    read_repository_index,
    read_stat_cache,
    write_stat_cache,
)
from minidevin.runtime.git_trees import create_store, write_tree_pack
from minidevin.runtime.repository_objects import copy_blobs
from minidevin.runtime.tools.paths import open_workspace

log = structlog.get_logger(__name__)

GIT_TIMEOUT = 120
SIGNATURE_LIMIT = 2_000  # entries: a smaller tree is compared by its stat first
RACY_NS = 100_000_000  # a signature with an entry this recent is not trusted later
INDEX = "snapshot-index"
EXCLUDE = ".git\n__pycache__/\n*.py[co]\n"  # never the user's repository, nor bytecode
SEEDED = "seeded-from-repository"  # in a store whose index began as the repository's
ZERO_OID = "0" * 40
BLOB_MODES = frozenset({"100644", "100755", "120000"})  # (not trees, nor submodules' commits)
RECENT_LIMIT = 4096  # stores whose last snapshot is remembered (`_RECENT`)


def snapshots_for(
    snapshots_dir: Path,
    working_directory: Path,
    identity: tuple[int, int] | None,
    run_as: tuple[int, int] | None = None,
) -> Snapshots:
    """The snapshots of `working_directory`, in the store its tasks share; `run_as` is the
    uid/gid its commands run as (what reads the repository's objects)."""
    key = f"{working_directory}\0{identity}".encode()
    name = hashlib.sha256(key).hexdigest()[:32]
    return Snapshots(working_directory, snapshots_dir / f"{name}.git", identity, run_as)


# each store's last snapshot in this process: when its `git add` began (monotonic ns), the
# store's index after it (`file_identity`) and the tree (read and written under its lock)
_RECENT: dict[Path, tuple[int, tuple[int, int, int, bytes] | None, str]] = {}


class Snapshots:
    """Snapshots of one working directory into one private git store."""

    def __init__(
        self,
        working_directory: Path,
        git_dir: Path,
        identity: tuple[int, int] | None = None,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        self.working_directory = working_directory
        self.git_dir = git_dir
        self.identity = identity  # when known: a snapshot of a swapped directory is refused
        self.run_as = run_as
        self._fd: int | None = None  # the pinned working directory, while git runs on it
        # the stat of a small tree at this object's last snapshot, and that snapshot's tree:
        # a tree whose every entry has the same stat is the same tree (no git run needed)
        self._last: tuple[tuple[tuple[Any, ...], ...], str] | None = None
        self.racy_ns = RACY_NS
        self._large: bool | None = None  # whether the tree is past `SIGNATURE_LIMIT`

    def _git(self, *args: str, stdin: bytes | None = None, index: Path | None = None) -> str:
        return os.fsdecode(self._git_bytes(*args, stdin=stdin, index=index))

    def _git_bytes(
        self, *args: str, stdin: bytes | None = None, index: Path | None = None
    ) -> bytes:
        env = {
            **git_environment(self.git_dir),
            "GIT_DIR": str(self.git_dir),
            "GIT_WORK_TREE": ".",  # (the directory git starts in: the pinned one)
            "GIT_INDEX_FILE": str(index or self.git_dir / INDEX),
        }
        with self._pinned() as fd:
            done = subprocess.run(
                ["git", "-c", "core.autocrlf=false", "-c", "core.quotepath=off",
                 "-c", "core.untrackedCache=false", "-c", "core.fsmonitor=false", *args],
                cwd=f"/proc/self/fd/{fd}",  # (the child's own copy of the descriptor)
                pass_fds=(fd,),
                env=env,
                input=stdin,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[int]:
        """A descriptor of the working directory, reached without any link (and, with the
        identity, checked to be the session's; `WorkspaceChanged` if not): git and the walk
        start from it, not from the path, which a swap could point anywhere meanwhile."""
        if self._fd is not None:
            yield self._fd
            return
        self._fd = open_workspace(self.working_directory, self.identity)
        try:
            yield self._fd
        finally:
            os.close(self._fd)
            self._fd = None

    def take(self) -> str:
        """Record the working tree; returns the tree id (`WorkspaceChanged` if it changed)."""
        requested = time.monotonic_ns()
        with self._pinned() as fd:
            return self._take_pinned(fd, requested)

    def _take_pinned(self, fd: int, requested: int) -> str:
        taken = time.time_ns()
        if self._large is None:  # (an object's first snapshot: later ones know from it)
            self._large = self._index_is_large(fd)
        signature = None if self._large else tree_signature(Path(f"/proc/self/fd/{fd}"))
        self._large = signature is None
        if signature is not None and self._last is not None and self._last[0] == signature:
            return self._last[1]
        tree = self._take(requested)
        racy = signature is None or _racy(signature, taken - self.racy_ns)
        self._last = None if racy else (signature, tree)
        return tree

    def _index_is_large(self, fd: int) -> bool:
        """Whether the store's index, or before there is one the repository's (a hint: at
        worst git runs where a signature would have done), is past `SIGNATURE_LIMIT` entries
        (of 64 bytes and more each: 256 is many names of 190 bytes)."""
        for path, directory in ((self.git_dir / INDEX, None), (".git/index", fd)):
            with contextlib.suppress(OSError):
                info = os.stat(path, dir_fd=directory, follow_symlinks=False)
                return info.st_size > SIGNATURE_LIMIT * 256
        return False

    def _take(self, requested: int) -> str:
        """The tree, from git; or the last snapshot of the store, when another thread took it
        after this one was asked for (the tree as it stood since: as good as our own). An
        index `git add` did not write again (git writes a new file) holds the last tree."""
        with self._locked():
            recent = _RECENT.get(self.git_dir)
            index = file_identity(self.git_dir / INDEX)
            if recent is not None and recent[0] >= requested and recent[1] == index:
                return recent[2]
            for attempt in (1, 2):
                try:
                    if not (self.git_dir / "HEAD").exists():
                        self._create()
                        known = self.git_dir.with_suffix(".known")
                        if not known.exists():  # (trust on first use, and only then)
                            known.touch()
                            self._seed()
                            recent = _RECENT.get(self.git_dir)  # (the seeded index's tree)
                    # (a git killed mid-write left its lock; we hold the store's: it is stale)
                    (self.git_dir / f"{INDEX}.lock").unlink(missing_ok=True)
                    began = time.monotonic_ns()
                    self._git("add", "--all", ".")
                    index = file_identity(self.git_dir / INDEX)
                    if recent is not None and index is not None and recent[1] == index:
                        tree = recent[2]  # (`git add` left the index as it was: the same tree)
                    else:
                        tree = self._git("write-tree", "--missing-ok").strip()
                        index = file_identity(self.git_dir / INDEX)
                    if len(_RECENT) >= RECENT_LIMIT:
                        _RECENT.clear()
                    _RECENT[self.git_dir] = (began, index, tree)
                    return tree
                except RuntimeError as exc:
                    if attempt == 2:
                        raise
                    log.warning("snapshot_store_rebuilt", error=str(exc)[:500])
                    shutil.rmtree(self.git_dir, ignore_errors=True)  # (damaged: start over)
                    recent = None  # (the removed store's)
        raise AssertionError("unreachable")

    def diff(self, before: str, after: str, max_bytes: int = 1 << 30) -> str:
        """The patch a task ending now would get (`diffs.write_diff`), as text."""
        from minidevin.runtime.diffs import write_diff  # (it uses this module)

        out = self.git_dir.with_name(self.git_dir.name + ".text.patch")
        try:
            old, unreadable = self.complete(before, after)
            write_diff(self.git_dir, old, after, out, max_bytes, unreadable)
            return out.read_text(errors="replace")
        finally:
            out.unlink(missing_ok=True)

    def complete(self, before: str, after: str) -> tuple[str, list[str]]:
        """Before a diff of `before` and `after`: copy in the blobs of changed files that a
        seeded store names without holding. Returns the tree to diff from: `before`, or,
        when some old content cannot be had, `before` without those files (so their new
        content shows whole, as added: a change is never left out), and those files."""
        if not (self.git_dir / SEEDED).exists():
            return before, []  # (every blob of an unseeded store was hashed into it)
        with self._locked():
            fields = self._git_bytes(
                "diff", "--raw", "--no-renames", "--no-abbrev", "-z", before, after
            ).split(b"\0")
            changed: list[tuple[bytes, set[str]]] = []
            for head, path in zip(fields[0::2], fields[1::2], strict=False):
                parts = head.decode(errors="replace").split()
                if len(parts) == 5:  # ":old-mode new-mode old-id new-id status"
                    blobs = {oid for mode, oid in zip(parts[:2], parts[2:4], strict=True)
                             if mode.lstrip(":") in BLOB_MODES}  # fmt: skip
                    changed.append((path, blobs))
            wanted = set().union(*(oids for _, oids in changed)) if changed else set()
            if not wanted:
                return before, []
            listing = "".join(f"{oid}\n" for oid in sorted(wanted)).encode()
            answers = self._git("cat-file", "--batch-check", stdin=listing).splitlines()
            missing = {line.split()[0] for line in answers if line.endswith(" missing")}
            if missing:
                missing -= copy_blobs(
                    self.working_directory,
                    self.identity,
                    missing,
                    self.git_dir / "objects",
                    self.run_as,
                    git_environment(self.git_dir),
                )
            unreadable = [path for path, oids in changed if oids & missing]
            if not unreadable:
                return before, []
            log.warning("snapshot_blobs_unreadable", files=len(unreadable))
            return self._without(before, unreadable), [os.fsdecode(p) for p in unreadable]

    def _without(self, tree: str, paths: list[bytes]) -> str:
        """`tree` less `paths` (a scratch index of the store's)."""
        scratch = self.git_dir / "scratch-index"
        scratch.unlink(missing_ok=True)
        removals = b"".join(b"0 " + ZERO_OID.encode() + b"\t" + path + b"\0" for path in paths)
        try:
            self._git("read-tree", tree, index=scratch)
            self._git("update-index", "-z", "--index-info", stdin=removals, index=scratch)
            return self._git("write-tree", "--missing-ok", index=scratch).strip()
        finally:
            scratch.unlink(missing_ok=True)

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

    def _seed(self) -> None:
        """A new store of a repository's top directory: its index from the repository's (see
        the module's notes); tracked files the store's excludes or `.gitignore` would leave
        out are taken out again, so the diff is what it would be without the seed."""
        with self._pinned() as fd:
            self._seed_pinned(fd)

    def _seed_pinned(self, fd: int) -> None:
        owner = os.fstat(fd).st_uid
        owners = {owner} | ({self.run_as[0]} if self.run_as else set())
        found = read_repository_index(fd, owners)
        if found is None:
            return
        try:
            kept = read_stat_cache(*found, keep=_not_excluded)
            tree = write_tree_pack(kept, self.git_dir / "objects" / "pack")  # (`git_trees.py`)
        except UnusableIndex as exc:
            log.info("snapshot_seed_skipped", reason=str(exc))
            return
        kept = after_hand_over(kept, fd, owner)
        write_stat_cache(self.git_dir / INDEX, kept)
        (self.git_dir / SEEDED).touch()
        _RECENT[self.git_dir] = (0, file_identity(self.git_dir / INDEX), tree)  # (as it is)
        if not any(p == b".gitignore" or p.endswith(b"/.gitignore") for p in kept.paths):
            return  # (no tracked file can be ignored: `_not_excluded` applied the store's own)
        ignored = self._git_bytes("ls-files", "-z", "--cached", "--ignored", "--exclude-standard")
        if ignored:
            _RECENT.pop(self.git_dir, None)  # (the index is not the seed's tree any more)
            self._git("--literal-pathspecs", "rm", "-q", "--cached", "--pathspec-from-file=-",
                      "--pathspec-file-nul", stdin=ignored)  # fmt: skip

    def _create(self) -> None:
        """A new store (`git_trees.create_store`), with our excludes."""
        _RECENT.pop(self.git_dir, None)
        shutil.rmtree(self.git_dir, ignore_errors=True)  # (a half-made one)
        create_store(self.git_dir, EXCLUDE)


def clear_leftovers(snapshots_dir: Path) -> None:
    """At start-up, before any task: the patches a previous process left (its stores stay,
    for the next tasks of their directories)."""
    for leftover in snapshots_dir.glob("*.patch"):
        leftover.unlink(missing_ok=True)


def _not_excluded(path: bytes) -> bool:
    """Whether `EXCLUDE` keeps `path` (a tracked file) in the store."""
    if path.endswith((b".pyc", b".pyo")):
        return False
    return b"__pycache__" not in path or b"__pycache__" not in path.split(b"/")


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
    top = len(str(directory))  # (paths are kept relative: the directory's name may change)
    try:
        while pending:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    if entry.name == ".git":
                        continue
                    info = entry.stat(follow_symlinks=False)
                    entries.append((entry.path[top:], info.st_mode, info.st_size,
                                    info.st_mtime_ns, info.st_ctime_ns, info.st_ino))  # fmt: skip
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
