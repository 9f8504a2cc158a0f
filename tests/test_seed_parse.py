"""The seed's own parts, with real git: the repository's index read in one pass
(`runtime/git_index.py`), the trees packed without git (`runtime/git_trees.py`), and a
snapshot asked for while another was being taken (`runtime/snapshots.py`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_snapshots import git, store_objects

from minidevin.runtime.git_index import (
    IndexEntry,
    UnusableIndex,
    file_identity,
    read_stat_cache,
    write_index,
    write_stat_cache,
)
from minidevin.runtime.snapshots import INDEX, snapshots_for

# names whose order in an index differs from a naive sort of their directories
NAMES = [
    "a",
    "a-b/x",
    "a.b",
    "a0",
    "b/c/d/e.txt",
    "b/c/f.txt",
    "b/c.txt",
    "b/c0/g",
    "run.sh",
    "same1/x",
    "same2/x",
    "z/y/z",
]


def tricky_repo(root: Path) -> Path:
    repo = root / "repo"
    for name in NAMES:
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("same\n" if name.startswith("same") else f"{name}\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("a")
    past = time.time() - 10  # (git trusts no stat from the second its index is written in)
    for path in repo.rglob("*"):
        os.utime(path, (past, past), follow_symlinks=False)
    git(repo, "init", "--quiet")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "start")
    return repo


def test_the_packed_trees_are_the_ones_git_writes(tmp_path: Path) -> None:
    repo = tricky_repo(tmp_path)
    snapshots = snapshots_for(tmp_path / "snapshots", repo, None)
    tree = snapshots.take()
    index = snapshots.git_dir / INDEX
    assert tree == git(repo, "rev-parse", "HEAD^{tree}").strip()
    scratch = {**os.environ, "GIT_DIR": str(snapshots.git_dir), "GIT_INDEX_FILE": str(index)}
    written = subprocess.run(  # (git's own computation of the store's index: the same)
        ["git", "write-tree", "--missing-ok"], cwd=repo, env=scratch, capture_output=True, text=True
    )
    assert written.stdout.strip() == tree, written.stderr
    assert store_objects(snapshots) == 0  # every tree was in the pack: none written loose
    (index,) = (snapshots.git_dir / "objects" / "pack").glob("*.idx")
    checked = subprocess.run(["git", "verify-pack", "-v", str(index)], capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert b"non delta: 9 objects" in checked.stdout  # same1's and same2's tree: packed once


def entries_of(paths: list[bytes]) -> list[IndexEntry]:
    fields = (0, 0, 1, 0, 0, 0, 0o100644, 0, 0, 1)
    return [IndexEntry(path, fields, b"\1" * 20) for path in sorted(paths)]


def index_of(tmp_path: Path, paths: list[bytes]) -> bytes:
    write_index(tmp_path / "index", entries_of(paths))
    return (tmp_path / "index").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        b"a/./b",
        b"a//b",
        b"/abs",
        b"a/",
        b".git/config",
        b"a/.GIT/hooks",
        b"a/..",
        b"../a",
        b"x\\y",
        b"a/.git\n",  # (`$` matches before a last newline: refused, as always)
        b"a/" + b"q" * 256,
    ],
)
def test_an_index_with_a_path_git_would_refuse_is_not_used(tmp_path: Path, path: bytes) -> None:
    for others in ([], [b"0first"], [b"~last"]):
        with pytest.raises(UnusableIndex):
            read_stat_cache(index_of(tmp_path, [path, *others]), 1 << 62, lambda p: True)


def test_paths_near_the_refused_ones_are_kept(tmp_path: Path) -> None:
    paths = [b".gitignore", b"a/.gitx", b"a/..b", b"a\n/b", b"q" * 255, b"x.git/y"]
    kept = read_stat_cache(index_of(tmp_path, paths), 1 << 62, lambda p: True)
    assert kept.paths == sorted(paths)


def test_the_index_written_is_clean_whatever_the_padding_or_version_read(
    tmp_path: Path,
) -> None:
    repo = tricky_repo(tmp_path)
    data = (repo / ".git" / "index").read_bytes()
    clean = tmp_path / "clean"
    write_stat_cache(clean, read_stat_cache(data, 1 << 62, lambda p: True))
    assert (
        git(repo, "ls-files", "--stage")
        == subprocess.run(
            ["git", "ls-files", "--stage"],
            cwd=repo,
            env={**os.environ, "GIT_INDEX_FILE": str(clean)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    # every entry's padding after its name's NUL made non-zero, the checksum made again
    body = bytearray(data[:-20])
    offset = 12
    for _ in range(int.from_bytes(data[8:12], "big")):
        stop = body.index(0, offset + 62)
        end = offset + ((stop - offset + 8) & ~7)  # (a version-2 entry: 62 bytes and a name)
        body[stop + 1 : end] = b"\xff" * (end - stop - 1)
        offset = end
    dirty = bytes(body) + hashlib.sha1(body).digest()
    assert dirty != data
    again = tmp_path / "again"
    write_stat_cache(again, read_stat_cache(dirty, 1 << 62, lambda p: True))
    assert again.read_bytes() == clean.read_bytes()
    # and version 4 (names as prefixes of the last one's) reads to the same entries
    git(repo, "update-index", "--index-version", "4")
    version_4 = (repo / ".git" / "index").read_bytes()
    assert version_4[4:8] == b"\0\0\0\4"
    write_stat_cache(again, read_stat_cache(version_4, 1 << 62, lambda p: True))
    assert again.read_bytes() == clean.read_bytes()


def test_a_snapshot_asked_for_before_another_began_may_take_its_tree_never_after(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("a\n")
    asked = time.monotonic_ns()  # a snapshot asked for now, its store's lock held meanwhile
    first = snapshots_for(tmp_path / "snapshots", work, None).take()  # (another's, after)
    (work / "a.txt").write_text("changed\n")
    waiting = snapshots_for(tmp_path / "snapshots", work, None)
    assert waiting._take(asked) == first  # the tree as it stood after it was asked for
    later = snapshots_for(tmp_path / "snapshots", work, None)
    changed = later.take()
    assert changed != first  # asked for after: its own (the change in it)
    # a store lost since that tree was taken: its tree is not taken (the store is made again)
    shutil.rmtree(later.git_dir)
    again = snapshots_for(tmp_path / "snapshots", work, None)
    assert again._take(asked) == changed
    assert (again.git_dir / INDEX).exists()


def test_an_index_rewritten_alike_in_inode_size_and_time_is_another_index(
    tmp_path: Path,
) -> None:
    """The "index unchanged" shortcut must not be fooled by a later write that reuses the
    inode, keeps the size (a tenant can pick a name of the same length) and falls in the
    same tick of a coarse clock: the index's own checksum tells them apart."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    index = repo / ".git" / "index"
    before = file_identity(index)
    stamp = os.stat(index).st_mtime_ns
    kept = tmp_path / "first-index"
    os.link(index, kept)  # (the first index's inode, for the rewrite to land in)
    (repo / "a.txt").write_text("two\n")  # (another blob: the same entry size)
    git(repo, "add", "a.txt")
    with open(kept, "r+b") as handle:  # (in place: the same inode, as a reused one would be)
        handle.write(index.read_bytes())
    os.utime(kept, ns=(stamp, stamp))  # (the same second on a coarse clock)
    kept.replace(index)
    after = file_identity(index)
    assert before is not None and after is not None
    assert before[:3] == after[:3]  # inode, size and time alike...
    assert before != after  # ...and still another index
