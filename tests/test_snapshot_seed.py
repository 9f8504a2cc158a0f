"""A repository's first snapshot starts from its own index (`runtime/git_index.py`), and a
diff copies in old content with the task's uid (`runtime/repository_objects.py`), with real
git: nothing unchanged is hashed, marks that would hide a change are not trusted, a planted
link is followed only with the tenant's rights, a forged or deleted object leaves its file
out of the diff, named in a note."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_snapshots import git, store_objects
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime.git_index import read_repository_index, stat_cache, write_index
from minidevin.runtime.snapshots import snapshots_for
from minidevin.runtime.tools.sandbox import SETPRIV

NOBODY = 65534


def committed_repo(root: Path, files: int = 300) -> Path:
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    for n in range(files):
        (repo / "src" / f"m{n}.py").write_text(f"value = {n}\n" * 20)
    (repo / "a.txt").write_text("old a\n")
    (repo / "b.txt").write_text("old b\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "tracked.log").write_text("tracked although ignored\n")
    past = time.time() - 10  # (git trusts no stat from the second its index is written in)
    for path in repo.rglob("*"):
        os.utime(path, (past, past))
    git(repo, "init", "--quiet")
    git(repo, "add", "-A")
    git(repo, "add", "-f", "tracked.log")
    git(repo, "commit", "--quiet", "-m", "start")
    return repo


def store_objects_in(git_dir: Path) -> int:
    return sum(1 for _ in (git_dir / "objects").glob("??/*"))


def loose_object(repo: Path, path: str) -> Path:
    oid = git(repo, "rev-parse", f"HEAD:{path}").strip()
    return repo / ".git" / "objects" / oid[:2] / oid[2:]


def test_a_repositorys_first_snapshot_hashes_only_what_changed(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path)
    (repo / "src" / "m5.py").write_text("the user's unstaged change\n")
    pristine = tmp_path / "pristine"
    shutil.copytree(repo, pristine, ignore=shutil.ignore_patterns(".git"))
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    assert store_objects(snapshots) < 10  # trees and m5.py, not 300 blobs
    (repo / "a.txt").write_text("new a\n")
    (repo / "c.txt").write_text("added\n")
    (repo / "tracked.log").write_text("changed, but ignored as before\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "-old a" in patch and "+new a" in patch and "+added" in patch
    assert "m5.py" not in patch and "tracked.log" not in patch
    assert "minidevin:" not in patch
    copy = tmp_path / "applied"
    shutil.copytree(pristine, copy)
    (tmp_path / "p.patch").write_text(patch)
    subprocess.run(["git", "apply", str(tmp_path / "p.patch")], cwd=copy, check=True)
    assert (copy / "a.txt").read_text() == "new a\n" and (copy / "c.txt").exists()


def test_marks_that_would_hide_a_change_are_not_trusted(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path, files=3)
    git(repo, "update-index", "--assume-unchanged", "a.txt")
    git(repo, "update-index", "--skip-worktree", "b.txt")
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    (repo / "a.txt").write_text("new a\n")
    (repo / "b.txt").write_text("new b\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "+new a" in patch and "+new b" in patch


def test_a_file_whose_old_content_is_gone_still_shows_whole_and_named(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path, files=3)
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    # the task forges one object (other bytes under its id) and deletes another
    forged = loose_object(repo, "b.txt")
    forged.chmod(0o644)
    forged.write_bytes(zlib.compress(b"blob 9\0forged b\n"))  # well formed, other bytes
    loose_object(repo, "a.txt").unlink()
    (repo / "a.txt").write_text("new a\n")
    (repo / "b.txt").write_text("new b\n")
    (repo / "c.txt").write_text("added\n")
    patch = snapshots.diff(before, snapshots.take())
    assert patch.startswith("# minidevin: the old content of these files")
    assert "(2):\n# a.txt\n# b.txt\n" in patch  # named, every one, at the top
    assert "+added" in patch and "forged" not in patch
    assert "+new a" in patch and "+new b" in patch  # never hidden: shown whole


def test_many_old_blobs_are_copied_without_the_pipes_filling_up(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path, files=2_500)
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    shutil.rmtree(repo / "src")  # (2,500 old blobs to copy: far past a pipe's 64 KiB)
    patch = snapshots.diff(before, snapshots.take())
    assert patch.count("deleted file mode") == 2_500 and "minidevin:" not in patch


def test_an_index_that_would_grow_without_bound_is_not_used(tmp_path: Path) -> None:
    """A version-4 index whose every name is the last plus a suffix: small on disk, huge
    once decoded (the server would run out of memory)."""
    repo = committed_repo(tmp_path, files=3)
    body = bytearray(struct.pack(">4sII", b"DIRC", 4, 20_000))
    for n in range(20_000):
        name_length = min((n + 1) * 100, 0xFFF)
        body += struct.pack(">10I20sH", *([0] * 6), 0o100644, 0, 0, 1, b"\1" * 20, name_length)
        body += b"\0" + b"x" * 100 + b"\0"  # strip nothing, add 100 bytes
    (repo / ".git" / "index").write_bytes(bytes(body) + hashlib.sha1(body).digest())
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()  # (not seeded: hashed from the work tree)
    assert not (snapshots.git_dir / "seeded-from-repository").exists()
    (repo / "a.txt").write_text("new a\n")
    assert "-old a" in snapshots.diff(before, snapshots.take())


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every uid can pass through (a test's own tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="minidevin-seed-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_old_content_is_read_with_the_tasks_uid_only(tmp_path: Path, open_root: Path) -> None:
    repo = committed_repo(open_root, files=3)
    # a link planted in the objects to a copy only root may read: the server could follow it
    hidden = tmp_path / "root-only"
    hidden.mkdir(mode=0o700)
    planted = loose_object(repo, "a.txt")
    shutil.move(planted, hidden / "object")
    planted.symlink_to(hidden / "object")
    refresh = ["git", "-c", "safe.directory=*", "update-index", "-q", "--refresh"]
    subprocess.run(["chown", "-R", "-h", f"{NOBODY}:{NOBODY}", str(repo)], check=True)
    subprocess.run(refresh, cwd=repo, check=True)  # (the chown changed every ctime)
    os.chown(repo / ".git" / "index", NOBODY, NOBODY)  # (as the tenant's git would leave it)
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None, run_as=(NOBODY, NOBODY))
    before = snapshots.take()
    assert store_objects(snapshots) < 10  # seeded: neither a.txt nor b.txt hashed
    (repo / "a.txt").write_text("new a\n")
    (repo / "b.txt").write_text("new b\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "-old b" in patch and "+new b" in patch  # read as the tenant: allowed
    assert "-old a" not in patch and "(1):\n# a.txt\n" in patch and "+new a" in patch
    assert (hidden / "object").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (two tenants' uids)")
def test_alternates_cannot_reach_past_the_tasks_own_view(tmp_path: Path, open_root: Path) -> None:
    """Another workspace of the same uid, readable on the host: the copy runs in the
    sandbox's view (this working directory only), so alternates pointing there find
    nothing."""
    other = committed_repo(open_root / "other", files=3)
    repo = committed_repo(open_root, files=3)
    secret = loose_object(other, "a.txt")
    loose_object(repo, "a.txt").unlink()
    shutil.copy(secret, open_root / "decoy")  # (the same blob elsewhere: still not reachable)
    alternates = repo / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(f"{other / '.git' / 'objects'}\n")
    refresh = ["git", "-c", "safe.directory=*", "update-index", "-q", "--refresh"]
    for tree in (other, repo):
        subprocess.run(["chown", "-R", "-h", f"{NOBODY}:{NOBODY}", str(tree)], check=True)
        subprocess.run(refresh, cwd=tree, check=True)
        os.chown(tree / ".git" / "index", NOBODY, NOBODY)
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None, run_as=(NOBODY, NOBODY))
    before = snapshots.take()
    (repo / "a.txt").write_text("new a\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "-old a" not in patch and "(1):\n# a.txt\n" in patch


def test_an_index_that_does_not_check_out_is_not_used(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path, files=50)
    index = repo / ".git" / "index"
    data = bytearray(index.read_bytes())
    data[200] ^= 0xFF  # (the checksum no longer holds)
    index.write_bytes(bytes(data))
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    assert store_objects(snapshots) > 50  # hashed from the work tree, as without an index
    (repo / "a.txt").write_text("new a\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "-old a" in patch and "+new a" in patch


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to hand a tree over)")
def test_a_tree_handed_over_to_the_sandbox_uid_is_not_hashed_whole(
    tmp_path: Path, open_root: Path
) -> None:
    repo = committed_repo(open_root, files=100)
    # what a session on a root-owned tree does (`workspace.hand_over`): every ctime changes
    subprocess.run(["chown", "-R", "-h", f"{NOBODY}:{NOBODY}", str(repo)], check=True)
    (repo / "src" / "m9.py").write_text("changed after the hand-over\n")
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None, run_as=(NOBODY, NOBODY))
    before = snapshots.take()
    assert store_objects(snapshots) < 10  # m9.py and trees, not 100 blobs
    (repo / "a.txt").write_text("new a\n")
    patch = snapshots.diff(before, snapshots.take())
    assert "-old a" in patch and "+new a" in patch and "m9.py" not in patch


def test_an_index_forged_by_an_earlier_task_is_never_read(tmp_path: Path) -> None:
    """Trust on first use: an earlier task forges the index to claim, for a.txt, the bytes a
    later write will give it (with a.txt's stat); a store made again later (lost, damaged)
    must not believe it, or that later write would vanish from its diff."""
    repo = committed_repo(tmp_path, files=3)
    first = snapshots_for(tmp_path / "snapshots", repo, None)
    first.take()  # the directory's first task: the index is the user's
    (tmp_path / "backdoor").write_text("backdoor\n")
    backdoor = git(repo, "hash-object", "-w", str(tmp_path / "backdoor")).strip()
    directory = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        data, mtime = read_repository_index(directory, {os.geteuid()}) or (b"", 0)
    finally:
        os.close(directory)
    forged = [
        entry._replace(oid=bytes.fromhex(backdoor)) if entry.path == b"a.txt" else entry
        for entry in stat_cache(data, mtime + 1, keep=lambda path: True)
    ]
    write_index(repo / ".git" / "index", forged)
    shutil.rmtree(first.git_dir)  # (the store lost: made again on the next snapshot)
    later = snapshots_for(tmp_path / "snapshots", repo, None)
    before = later.take()
    (repo / "a.txt").write_text("backdoor\n")  # what the forged index claimed
    patch = later.diff(before, later.take())
    assert "-old a" in patch and "+backdoor" in patch


async def test_a_new_session_takes_its_first_snapshot_before_its_first_task(
    tmp_path: Path, runtime: Runtime
) -> None:
    repo = committed_repo(tmp_path, files=100)
    await runtime.create_session("warm", repo)
    store = snapshots_for(runtime.settings.snapshots_dir, repo, None).git_dir.parent
    seeded = await until(
        lambda: next(store.glob("*.git/seeded-from-repository"), None), what="the warmed store"
    )
    assert store_objects_in(seeded.parent) < 10  # seeded, not hashed


def test_git_runs_on_the_checked_directory_even_if_its_path_is_swapped(tmp_path: Path) -> None:
    """Between the check of a working directory and the git that reads it, its path may be
    pointed elsewhere (moved away, a link put there: to `/`, say): git starts from the
    descriptor that was checked, never from the path."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "mine.txt").write_text("the session's\n")
    (elsewhere / "other.txt").write_text("not the session's\n")
    identity = (work.stat().st_dev, work.stat().st_ino)
    snapshots = snapshots_for(tmp_path / "snapshots", work, identity)
    with snapshots._pinned():  # (checked and held, as a snapshot does, then swapped)
        work.rename(tmp_path / "moved")
        work.symlink_to(elsewhere)
        tree = snapshots.take()
    listing = git(tmp_path / "moved", "--git-dir", str(snapshots.git_dir), "ls-tree", tree)
    assert "mine.txt" in listing and "other.txt" not in listing
