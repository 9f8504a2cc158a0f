"""A repository's first snapshot starts from its own index (`runtime/git_index.py`), and a
diff copies in old content with the task's uid (`runtime/repository_objects.py`), with real
git: nothing unchanged is hashed, marks that would hide a change are not trusted, a planted
link is followed only with the tenant's rights, a forged or deleted object leaves its file
out of the diff, named in a note."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_snapshots import git, store_objects

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


def test_a_file_whose_old_content_is_gone_is_left_out_and_named(tmp_path: Path) -> None:
    repo = committed_repo(tmp_path, files=3)
    pristine = tmp_path / "pristine"
    shutil.copytree(repo, pristine, ignore=shutil.ignore_patterns(".git"))
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
    assert "+added" in patch and "forged" not in patch
    assert "diff --git a/a.txt" not in patch and "diff --git a/b.txt" not in patch
    assert "files left out (2):\n# a.txt\n# b.txt" in patch
    copy = tmp_path / "applied"
    shutil.copytree(pristine, copy)
    (tmp_path / "p.patch").write_text(patch)
    subprocess.run(["git", "apply", str(tmp_path / "p.patch")], cwd=copy, check=True)
    assert (copy / "c.txt").read_text() == "added\n"


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
    assert "-old a" not in patch and "files left out (1):\n# a.txt" in patch
    assert (hidden / "object").exists()


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
