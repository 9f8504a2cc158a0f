"""Snapshots at a cost proportional to what changed (`runtime/snapshots.py`), with real git:
a directory's store shared by its tasks, a repository's `.git` byte for byte unchanged
(its index as a stat cache: `test_snapshot_seed.py`), diffs exactly as before: added, changed,
deleted, renamed, binary and ignored files; changes made before the task left out."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from minidevin.runtime.snapshots import Snapshots, snapshots_for


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def fingerprint(directory: Path) -> str:
    """Every file under `directory` with its bytes and mode (and every directory)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mode).encode())
    return digest.hexdigest()


def store_objects(snapshots: Snapshots) -> int:
    """Objects the store holds itself (not through alternates)."""
    return sum(1 for p in (snapshots.git_dir / "objects").glob("??/*"))


def fill(directory: Path, files: int = 300) -> None:
    (directory / "src").mkdir(parents=True)
    for n in range(files):
        (directory / "src" / f"m{n}.py").write_text(f"value = {n}\n" * 20)
    (directory / "keep.txt").write_text("keep\n")
    (directory / "gone.txt").write_text("to delete\n")
    (directory / "old-name.txt").write_text("renamed\n" * 10)
    (directory / "image.bin").write_bytes(bytes(range(256)) * 8)
    (directory / ".gitignore").write_text("*.log\nbuild/\n")


def the_task(directory: Path) -> None:
    """What an agent's task does to the tree."""
    (directory / "new.txt").write_text("added\n")
    (directory / "keep.txt").write_text("keep\nchanged\n")
    (directory / "gone.txt").unlink()
    (directory / "old-name.txt").rename(directory / "new-name.txt")
    (directory / "image.bin").write_bytes(bytes(reversed(range(256))) * 8)
    (directory / "debug.log").write_text("ignored\n")
    (directory / "build").mkdir()
    (directory / "build" / "out.o").write_bytes(b"\0ignored")


def check_diff(patch: str) -> None:
    assert "new.txt" in patch and "+added" in patch
    assert "+changed" in patch
    assert "deleted file mode" in patch and "gone.txt" in patch
    assert "new-name.txt" in patch
    assert "GIT binary patch" in patch and "image.bin" in patch
    assert "debug.log" not in patch and "out.o" not in patch  # .gitignore honoured


def applies(patch: str, before: Path, after: Path, tmp_path: Path) -> None:
    """`git apply` turns the `before` tree into the `after` tree (ignored files aside)."""
    copy = tmp_path / "applied"
    shutil.copytree(before, copy, ignore=shutil.ignore_patterns(".git"))
    (tmp_path / "task.patch").write_text(patch)
    subprocess.run(["git", "apply", str(tmp_path / "task.patch")], cwd=copy, check=True)
    for name in ("new.txt", "keep.txt", "new-name.txt", "image.bin"):
        assert (copy / name).read_bytes() == (after / name).read_bytes(), name
    assert not (copy / "gone.txt").exists() and not (copy / "old-name.txt").exists()


def test_a_repository_is_left_untouched_and_only_the_tasks_changes_are_in_the_diff(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    fill(repo)
    git(repo, "init", "--quiet")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "start")
    # the user's work in progress, before the task: staged, unstaged, untracked
    (repo / "src" / "m1.py").write_text("staged change\n")
    git(repo, "add", "src/m1.py")
    (repo / "src" / "m2.py").write_text("unstaged change\n")
    (repo / "notes.md").write_text("untracked\n")
    before_git = fingerprint(repo / ".git")
    pristine = tmp_path / "pristine"
    shutil.copytree(repo, pristine, ignore=shutil.ignore_patterns(".git"))

    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    before = snapshots.take()
    assert not (snapshots.git_dir / "objects" / "info" / "alternates").exists()
    the_task(repo)
    after = snapshots.take()
    patch = snapshots.diff(before, after)
    check_diff(patch)
    for earlier in ("staged change", "unstaged change", "untracked"):
        assert earlier not in patch  # only the task's changes
    applies(patch, pristine, repo, tmp_path)
    assert fingerprint(repo / ".git") == before_git  # the user's repository: not a byte


def test_a_plain_directory_shares_one_store_among_its_tasks(tmp_path: Path) -> None:
    work = tmp_path / "work"
    fill(work)
    pristine = tmp_path / "pristine"
    shutil.copytree(work, pristine)
    first = snapshots_for(tmp_path / "snapshots", work, None)
    before = first.take()
    full = store_objects(first)
    assert full > 300  # the first snapshot of a plain directory hashes every file
    the_task(work)
    after = first.take()
    patch = first.diff(before, after)
    check_diff(patch)
    applies(patch, pristine, work, tmp_path)
    # the next task of the directory: the same store, and only what changed is new
    second = snapshots_for(tmp_path / "snapshots", work, None)
    assert second.git_dir == first.git_dir
    assert second.take() == after  # nothing changed in between
    (work / "src" / "m7.py").write_text("one more\n")
    later = second.take()
    assert store_objects(second) - full < 15
    assert "+one more" in second.diff(after, later)


def test_a_damaged_store_is_rebuilt(tmp_path: Path) -> None:
    work = tmp_path / "work"
    fill(work, files=5)
    snapshots = snapshots_for(tmp_path / "snapshots", work, None)
    before = snapshots.take()
    shutil.rmtree(snapshots.git_dir / "objects")  # (a disk fault, a crash mid-write)
    (snapshots.git_dir / "objects").mkdir()
    (work / "keep.txt").write_text("after the damage\n")
    after = snapshots.take()
    assert after != before  # the snapshot still works (the old tree is gone with it)


def test_an_unchanged_small_tree_is_not_handed_to_git_again(tmp_path: Path) -> None:
    work = tmp_path / "work"
    fill(work, files=20)
    snapshots = snapshots_for(tmp_path / "snapshots", work, None)
    snapshots.racy_ns = 0  # (the files were just made: their times are no clock tick old)
    before = snapshots.take()
    index = snapshots.git_dir / "snapshot-index"
    stamp = index.stat().st_mtime_ns
    assert snapshots.take() == before  # nothing changed: no git ran (the index untouched)
    assert index.stat().st_mtime_ns == stamp
    (work / "keep.txt").write_text("keep\n")  # the same bytes again: a new ctime
    assert snapshots.take() == before and index.stat().st_mtime_ns != stamp  # git decided
    (work / "src" / "m3.py").write_text("value = 3\n")
    assert snapshots.take() != before


def test_a_signature_of_files_changed_within_the_clocks_tick_does_not_vouch(
    tmp_path: Path,
) -> None:
    """On a file system with coarse times, a file rewritten in the same tick keeps its stat:
    a signature with entries that recent is not kept, so git decides next time."""
    work = tmp_path / "work"
    fill(work, files=5)
    snapshots = snapshots_for(tmp_path / "snapshots", work, None)
    snapshots.take()  # (its files are milliseconds old)
    assert snapshots._last is None
    snapshots.racy_ns = 0
    snapshots.take()
    assert snapshots._last is not None
