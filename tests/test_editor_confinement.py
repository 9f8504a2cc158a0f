"""The editor stays beneath the working directory: no link followed, no check-then-use race.

Run twice: with `openat2` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and with the
component-by-component O_NOFOLLOW walk used where the kernel lacks it.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minidevin.runtime.tools import EditorTool, ToolContext, ToolError
from minidevin.runtime.tools import paths as paths_module
from minidevin.runtime.tools.paths import WorkspaceChanged

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
has_exchange = hasattr(_libc, "renameat2")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid needs root")


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "walk":  # as on a kernel without openat2
        monkeypatch.setattr(paths_module, "_openat2_missing", True)
    yield request.param


@pytest.fixture
def layout(tmp_path: Path) -> tuple[ToolContext, Path]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    info = workspace.stat()
    context = ToolContext(
        working_directory=workspace, workspace_identity=(info.st_dev, info.st_ino)
    )
    return context, outside


def edit(context: ToolContext, **arguments: object) -> str:
    return EditorTool().run(dict(arguments), context).output


def exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


@pytest.mark.skipif(not has_exchange, reason="renameat2 is not in this C library")
def test_a_directory_swapped_for_a_link_in_a_loop_never_lets_a_write_out(
    mode: str, layout: tuple[ToolContext, Path]
) -> None:
    context, outside = layout
    root = context.working_directory
    (root / "d").mkdir()
    (root / "spare").symlink_to(outside)  # `d` and `spare` trade places, over and over
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set() and swaps < 2_000_000:
            exchange(root / "d", root / "spare")
            swaps += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    written = refused = 0
    deadline = time.monotonic() + 2.0
    try:
        for n in range(1000):  # (about 0.3 s here; the old check-then-open let 1-2 % out)
            if time.monotonic() > deadline:
                break
            try:
                edit(context, command="create", path=f"d/f{n}.txt", file_text="x\n")
                written += 1
            except ToolError:
                refused += 1
    finally:
        stop.set()
        thread.join()
    assert list(outside.iterdir()) == [outside / "secret.txt"], (written, refused)
    assert written + refused > 0 and swaps > 0
    inside = {p.name for p in (root / "d").iterdir()} | {p.name for p in (root / "spare").iterdir()}
    assert len(inside - {"secret.txt"}) == written  # every write landed in the workspace


def test_links_are_never_followed(mode: str, layout: tuple[ToolContext, Path]) -> None:
    context, outside = layout
    root = context.working_directory
    (root / "inner").mkdir()
    (root / "inner" / "real.txt").write_text("inside\n")
    (root / "out").symlink_to(outside)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "alias").symlink_to(root / "inner")  # even a link that stays inside
    for arguments in (
        {"command": "create", "path": "out/new.txt", "file_text": "x"},
        {"command": "create", "path": "secret.txt", "file_text": "overwritten"},
        {"command": "view", "path": "out"},
        {"command": "view", "path": "secret.txt"},
        {"command": "str_replace", "path": "secret.txt", "old_str": "secret", "new_str": "x"},
        {"command": "insert", "path": "out/secret.txt", "insert_line": 0, "new_str": "x"},
        {"command": "view", "path": "alias/real.txt"},
    ):
        with pytest.raises(ToolError, match="does not follow symbolic links"):
            edit(context, **arguments)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert "inside" in edit(context, command="view", path="inner/real.txt")
    listing = edit(context, command="view", path=".")
    assert "out" in listing.splitlines() and "out/" not in listing  # listed, never entered


def test_paths_out_of_the_working_directory_are_refused(
    mode: str, layout: tuple[ToolContext, Path]
) -> None:
    context, outside = layout
    root = context.working_directory
    for path in ("..", "../outside/secret.txt", "a/../../x", str(outside / "x"), "/etc/passwd"):
        with pytest.raises(ToolError, match="outside the working directory"):
            edit(context, command="create", path=path, file_text="x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert "created" in edit(
        context, command="create", path=str(root / "a" / "ok.txt"), file_text=""
    )
    assert "created" in edit(context, command="create", path="a/../b.txt", file_text="")
    assert sorted(p.name for p in root.iterdir()) == ["a", "b.txt"]


def test_a_working_directory_swapped_after_the_check_fails_the_call(
    mode: str, layout: tuple[ToolContext, Path]
) -> None:
    context, outside = layout
    root = context.working_directory
    edit(context, command="create", path="f.txt", file_text="one\n")
    root.rename(root.with_name("ws.moved"))
    root.symlink_to(outside)
    with pytest.raises(WorkspaceChanged, match="not the directory this session was created on"):
        edit(context, command="create", path="f.txt", file_text="x")
    root.unlink()
    root.mkdir()  # the same path, another directory
    with pytest.raises(WorkspaceChanged):
        edit(context, command="view", path=".")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def fsuid() -> int:
    status = Path("/proc/thread-self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[4])


@needs_root
def test_the_editor_works_as_the_command_uid(mode: str, layout: tuple[ToolContext, Path]) -> None:
    context, _ = layout
    root = context.working_directory
    os.chown(root, 54321, 54321)
    (root / "roots.txt").write_text("root's\n")  # 0644, owned by root
    context.uid = context.gid = 54321
    edit(context, command="create", path="pkg/mod.py", file_text="x = 1\n")
    for path in (root / "pkg", root / "pkg" / "mod.py"):
        assert (path.stat().st_uid, path.stat().st_gid) == (54321, 54321)
    with pytest.raises(ToolError, match="Permission denied"):
        edit(context, command="str_replace", path="roots.txt", old_str="root", new_str="mine")
    assert (root / "roots.txt").read_text() == "root's\n"
    assert fsuid() == 0  # the thread is root again afterwards
