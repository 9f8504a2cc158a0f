"""Tests for the terminal and editor tools, path containment and run_tool."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.tools import (
    EditorTool,
    TerminalTool,
    ToolContext,
    ToolError,
    ToolResult,
    run_tool,
    tool_schema,
)
from minidevin.runtime.tools.environment import command_environment
from minidevin.runtime.tools.paths import resolve_in_workspace

# --- helpers -----------------------------------------------------------------


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), what=str(path))
    return int(path.read_text())


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return ToolContext(working_directory=workspace)


def term(ctx: ToolContext, command: str, **extra: Any) -> ToolResult:
    return TerminalTool().run({"command": command, **extra}, ctx)


# --- terminal ----------------------------------------------------------------


def test_terminal_captures_output_and_stderr(ctx: ToolContext) -> None:
    result = term(ctx, "echo out; echo err >&2; pwd")
    assert result.success
    assert result.output == f"out\nerr\n{ctx.working_directory}\n"


def test_terminal_nonzero_exit_code(ctx: ToolContext) -> None:
    result = term(ctx, "echo partial; exit 3")
    assert not result.success
    assert result.output == "partial\n[exit code: 3]"
    assert term(ctx, "false").output == "[exit code: 1]"


def test_terminal_environment(ctx: ToolContext) -> None:
    ctx.env = {"PATH": os.environ["PATH"], "FOO": "bar"}
    result = term(ctx, "echo $FOO $PAGER $GIT_PAGER $TERM; read x; echo read=$?")
    assert result.output == "bar cat cat dumb\nread=1\n"
    assert ctx.env == {"PATH": os.environ["PATH"], "FOO": "bar"}  # not mutated


def test_terminal_decodes_invalid_utf8(ctx: ToolContext) -> None:
    result = term(ctx, r"printf 'caf\xc3\xa9 \xff\n'")
    assert result.output == "café \ufffd\n"


def test_terminal_truncates_keeping_head_and_tail(ctx: ToolContext) -> None:
    ctx.output_limit = 1000
    result = term(ctx, "echo HEAD; seq 1 100000; echo TAIL")
    assert result.success
    head, marker, tail = result.output.partition("[... ")
    assert marker
    assert head.startswith("HEAD\n1\n2\n")
    assert len(head.rstrip("\n")) <= 500
    assert result.output.rstrip().endswith("99999\n100000\nTAIL")
    full = len("HEAD\n") + sum(len(f"{n}\n") for n in range(1, 100001)) + len("TAIL\n")
    omitted = int(tail.split(" characters omitted ...]")[0])
    assert omitted == full - 1000
    assert len(result.output) < 1100


def test_terminal_large_output_does_not_deadlock(ctx: ToolContext) -> None:
    result = term(ctx, "head -c 5000000 /dev/zero | tr '\\0' 'x'; echo; echo done", timeout=60)
    assert result.success
    assert result.output.endswith("xxx\ndone\n")
    assert "characters omitted" in result.output
    assert len(result.output) < ctx.output_limit + 100


def test_terminal_timeout_kills_process_tree(ctx: ToolContext) -> None:
    pidfile = ctx.working_directory / "grandchild.pid"
    start = time.monotonic()
    result = term(
        ctx, "echo started; (sleep 300 & echo $! > grandchild.pid; wait); echo never", timeout=1
    )
    elapsed = time.monotonic() - start
    assert not result.success
    assert result.output.startswith("started\n")
    assert "timed out after 1 seconds" in result.output
    assert "never" not in result.output
    assert elapsed < 5
    pid = read_pid(pidfile)
    wait_for(lambda: not is_alive(pid), what=f"grandchild {pid} to die after the timeout")


def test_terminal_timeout_capped_by_max_timeout(ctx: ToolContext) -> None:
    ctx.max_timeout = 0.5
    start = time.monotonic()
    result = term(ctx, "sleep 300", timeout=1000)
    assert time.monotonic() - start < 5
    assert "timed out after 0.5 seconds" in result.output


def test_terminal_default_timeout(ctx: ToolContext) -> None:
    ctx.default_timeout = 0.5
    result = term(ctx, "sleep 300")
    assert not result.success
    assert "timed out after 0.5 seconds" in result.output


def test_terminal_background_child_does_not_hang_and_is_killed(ctx: ToolContext) -> None:
    start = time.monotonic()
    result = term(ctx, "sleep 1000 & echo $! > bg.pid; echo done")
    assert time.monotonic() - start < 5
    assert result.success
    assert result.output == "done\n"
    pid = read_pid(ctx.working_directory / "bg.pid")
    wait_for(lambda: not is_alive(pid), what=f"background child {pid} to die")


def test_terminal_cancel_from_another_thread(ctx: ToolContext) -> None:
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def worker() -> None:
        try:
            outcome["result"] = term(ctx, "echo $$ > bash.pid; sleep 300 & sleep 300")
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            finished.set()

    thread = threading.Thread(target=worker)
    thread.start()
    pgid = read_pid(ctx.working_directory / "bash.pid")
    wait_for(lambda: len(group_members(pgid)) >= 2, what="two group members")
    start = time.monotonic()
    ctx.cancel.cancel()
    assert finished.wait(5)
    elapsed = time.monotonic() - start
    thread.join(5)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert elapsed < 2
    wait_for(
        lambda: not group_members(pgid),
        what=lambda: f"the group to die, left: {group_members(pgid)}",
    )


def test_terminal_already_cancelled(ctx: ToolContext) -> None:
    ctx.cancel.cancel()
    with pytest.raises(Cancelled):
        term(ctx, "touch ran")
    assert not (ctx.working_directory / "ran").exists()


def test_terminal_unregisters_cancel_callback(ctx: ToolContext) -> None:
    term(ctx, "true")
    assert ctx.cancel._callbacks == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "command"),
        ({"command": ""}, "command"),
        ({"command": "   "}, "command"),
        ({"command": 5}, "command"),
        ({"command": "true", "timeout": "10"}, "timeout"),
        ({"command": "true", "timeout": True}, "timeout"),
        ({"command": "true", "timeout": 0}, "timeout"),
        ({"command": "true", "timeout": -1}, "timeout"),
        ({"command": "true", "timeout": float("nan")}, "timeout"),
    ],
)
def test_terminal_validates_arguments(
    ctx: ToolContext, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError, match=message):
        TerminalTool().run(arguments, ctx)


def test_terminal_build_argv_and_schema(ctx: ToolContext) -> None:
    tool = TerminalTool()
    assert tool.build_argv("ls", ctx)[-3:] == ["bash", "-c", "ls"]
    schema = tool_schema(tool)
    assert schema["function"]["name"] == "terminal"
    assert schema["function"]["parameters"]["required"] == ["command"]
    json.dumps(schema)


# --- paths -------------------------------------------------------------------


def test_resolve_inside(ctx: ToolContext) -> None:
    root = ctx.working_directory.resolve()
    (root / "sub").mkdir()
    assert resolve_in_workspace(root, "sub/../a.txt") == root / "a.txt"
    assert resolve_in_workspace(root, ".") == root
    assert resolve_in_workspace(root, str(root / "sub" / "new.txt")) == root / "sub" / "new.txt"
    (root / "inner").symlink_to(root / "sub")
    assert resolve_in_workspace(root, "inner/x") == root / "sub" / "x"


@pytest.mark.parametrize("path", ["..", "../x", "sub/../../x", "/etc/passwd", "/", ""])
def test_resolve_refuses_escapes(ctx: ToolContext, path: str) -> None:
    (ctx.working_directory / "sub").mkdir()
    with pytest.raises(ToolError):
        resolve_in_workspace(ctx.working_directory, path)


def test_resolve_refuses_symlinks_outside(ctx: ToolContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = ctx.working_directory
    (root / "file_link").symlink_to(outside / "secret")
    (root / "dir_link").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "missing")
    for path in ["file_link", "dir_link", "dir_link/secret", "dir_link/new_file", "dangling"]:
        with pytest.raises(ToolError, match="outside"):
            resolve_in_workspace(root, path)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(ToolError):
        resolve_in_workspace(root, "loop/x")


def test_editor_refuses_escapes(ctx: ToolContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ctx.working_directory / "link").symlink_to(outside)
    editor = EditorTool()
    for args in [
        {"command": "create", "path": "../evil.txt", "file_text": "x"},
        {"command": "create", "path": "link/evil.txt", "file_text": "x"},
        {"command": "view", "path": str(tmp_path)},
    ]:
        with pytest.raises(ToolError, match="outside"):
            editor.run(args, ctx)
    assert not (tmp_path / "evil.txt").exists()
    assert not (outside / "evil.txt").exists()


# --- editor ------------------------------------------------------------------


@pytest.fixture
def edit(ctx: ToolContext) -> Callable[..., str]:
    editor = EditorTool()

    def call(command: str, path: str, **arguments: Any) -> str:
        result = editor.run({"command": command, "path": path, **arguments}, ctx)
        assert result.success
        return result.output

    return call


def test_editor_create_and_view(ctx: ToolContext, edit: Callable[..., str]) -> None:
    out = edit("create", "pkg/mod.py", file_text="a = 1\nb = 2\nc = 3\n")
    assert "created" in out
    assert (ctx.working_directory / "pkg/mod.py").read_text() == "a = 1\nb = 2\nc = 3\n"
    view = edit("view", "pkg/mod.py")
    assert view.endswith("     1\ta = 1\n     2\tb = 2\n     3\tc = 3\n")
    assert edit("view", "pkg/mod.py", view_range=[2, -1]).endswith("     2\tb = 2\n     3\tc = 3\n")
    assert edit("view", "pkg/mod.py", view_range=[2, 2]).endswith("     2\tb = 2\n")
    assert "3\tc = 3" not in edit("view", "pkg/mod.py", view_range=[1, 2])


def test_editor_view_errors(ctx: ToolContext, edit: Callable[..., str]) -> None:
    edit("create", "f.txt", file_text="one\ntwo\n")
    editor = EditorTool()
    root = ctx.working_directory
    (root / "bin.dat").write_bytes(b"abc\x00def")
    (root / "big.txt").write_bytes(b"x" * (5 * 1024 * 1024))
    cases = [
        ({"path": "missing.txt"}, "does not exist"),
        ({"path": "bin.dat"}, "binary"),
        ({"path": "big.txt"}, "too large"),
        ({"path": "f.txt", "view_range": [0, 1]}, "start"),
        ({"path": "f.txt", "view_range": [3, 3]}, "start"),
        ({"path": "f.txt", "view_range": [2, 1]}, "end"),
        ({"path": "f.txt", "view_range": [1]}, "two integers"),
        ({"path": ".", "view_range": [1, 2]}, "directory"),
    ]
    for arguments, message in cases:
        with pytest.raises(ToolError, match=message):
            editor.run({"command": "view", **arguments}, ctx)


def test_editor_view_truncates_to_output_limit(ctx: ToolContext, edit: Callable[..., str]) -> None:
    ctx.output_limit = 200
    edit("create", "long.txt", file_text="".join(f"line {n}\n" for n in range(1, 101)))
    out = edit("view", "long.txt")
    assert "use `view_range`" in out
    assert len(out) < 400


def test_editor_view_directory(ctx: ToolContext, edit: Callable[..., str]) -> None:
    root = ctx.working_directory
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_text("")
    (root / "a" / "one.txt").write_text("")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("")
    (root / "top.txt").write_text("")
    out = edit("view", ".")
    lines = out.splitlines()[1:]
    assert lines == ["a/", "a/b/", "a/one.txt", "top.txt"]


def test_editor_str_replace(ctx: ToolContext, edit: Callable[..., str]) -> None:
    edit("create", "f.py", file_text="def f():\n    return 1\n\nx = 2\n")
    out = edit("str_replace", "f.py", old_str="return 1", new_str="return 42")
    assert "     2\t    return 42" in out
    assert (ctx.working_directory / "f.py").read_text() == "def f():\n    return 42\n\nx = 2\n"
    edit("str_replace", "f.py", old_str="\nx = 2\n")  # new_str defaults to ""
    assert (ctx.working_directory / "f.py").read_text() == "def f():\n    return 42\n"


def test_editor_str_replace_errors(ctx: ToolContext, edit: Callable[..., str]) -> None:
    edit("create", "f.txt", file_text="a\nb\na\nc\na\n")
    editor = EditorTool()
    with pytest.raises(ToolError, match=r"occurs 3 times.*lines 1, 3, 5"):
        editor.run({"command": "str_replace", "path": "f.txt", "old_str": "a"}, ctx)
    with pytest.raises(ToolError, match="does not occur"):
        editor.run({"command": "str_replace", "path": "f.txt", "old_str": "zzz"}, ctx)
    with pytest.raises(ToolError, match="old_str"):
        editor.run({"command": "str_replace", "path": "f.txt", "old_str": ""}, ctx)
    with pytest.raises(ToolError, match="does not exist"):
        editor.run({"command": "str_replace", "path": "nope.txt", "old_str": "a"}, ctx)
    assert (ctx.working_directory / "f.txt").read_text() == "a\nb\na\nc\na\n"


def test_editor_insert(ctx: ToolContext, edit: Callable[..., str]) -> None:
    path = ctx.working_directory / "f.txt"
    edit("create", "f.txt", file_text="one\ntwo\n")
    out = edit("insert", "f.txt", insert_line=0, new_str="zero")
    assert "     1\tzero" in out
    assert path.read_text() == "zero\none\ntwo\n"
    edit("insert", "f.txt", insert_line=3, new_str="three\nfour\n")
    assert path.read_text() == "zero\none\ntwo\nthree\nfour\n"
    edit("insert", "f.txt", insert_line=2, new_str="one and a half")
    assert path.read_text() == "zero\none\none and a half\ntwo\nthree\nfour\n"
    path.write_bytes(b"a\r\nb")  # CRLF, no final newline
    edit("insert", "f.txt", insert_line=2, new_str="c")
    assert path.read_bytes() == b"a\r\nb\r\nc"
    edit("insert", "f.txt", insert_line=1, new_str="x")
    assert path.read_bytes() == b"a\r\nx\r\nb\r\nc"


def test_editor_insert_errors(ctx: ToolContext, edit: Callable[..., str]) -> None:
    edit("create", "f.txt", file_text="one\ntwo\n")
    editor = EditorTool()
    for arguments, message in [
        ({"insert_line": 3, "new_str": "x"}, "between 0 and 2"),
        ({"insert_line": -1, "new_str": "x"}, "between 0 and 2"),
        ({"insert_line": "1", "new_str": "x"}, "insert_line"),
        ({"new_str": "x"}, "insert_line"),
        ({"insert_line": 1}, "new_str"),
    ]:
        with pytest.raises(ToolError, match=message):
            editor.run({"command": "insert", "path": "f.txt", **arguments}, ctx)


def test_editor_undo(ctx: ToolContext, edit: Callable[..., str]) -> None:
    path = ctx.working_directory / "f.txt"
    edit("create", "f.txt", file_text="v1\n")
    edit("str_replace", "f.txt", old_str="v1", new_str="v2")
    edit("create", "f.txt", file_text="v3\n")
    edit("insert", "f.txt", insert_line=1, new_str="v4")
    assert path.read_text() == "v3\nv4\n"
    edit("undo_edit", "f.txt")
    assert path.read_text() == "v3\n"
    edit("undo_edit", "f.txt")
    assert path.read_text() == "v2\n"
    edit("undo_edit", "f.txt")
    assert path.read_text() == "v1\n"
    assert "removed" in edit("undo_edit", "f.txt")
    assert not path.exists()
    with pytest.raises(ToolError, match="No edit to undo"):
        EditorTool().run({"command": "undo_edit", "path": "f.txt"}, ctx)


def test_editor_undo_is_per_instance(ctx: ToolContext, edit: Callable[..., str]) -> None:
    edit("create", "f.txt", file_text="x")
    with pytest.raises(ToolError, match="No edit to undo"):
        EditorTool().run({"command": "undo_edit", "path": "f.txt"}, ctx)


def test_editor_preserves_content_exactly(ctx: ToolContext, edit: Callable[..., str]) -> None:
    path = ctx.working_directory / "raw.txt"
    original = b"a\r\n\tb  \rc\xff\xfe tail \xe2\x82\xac"  # CRLF, CR, invalid UTF-8, no EOL
    path.write_bytes(original)
    edit("str_replace", "raw.txt", old_str="tail", new_str="TAIL")
    assert path.read_bytes() == original.replace(b"tail", b"TAIL")
    edit("undo_edit", "raw.txt")
    assert path.read_bytes() == original
    view = edit("view", "raw.txt")
    assert "\ufffd" in view
    json.dumps(view).encode("utf-8")  # displayable: no lone surrogates


def test_editor_create_errors(ctx: ToolContext) -> None:
    editor = EditorTool()
    (ctx.working_directory / "d").mkdir()
    for arguments, message in [
        ({"path": "d", "file_text": "x"}, "directory"),
        ({"path": "f.txt"}, "file_text"),
        ({"path": "f.txt", "file_text": 3}, "file_text"),
    ]:
        with pytest.raises(ToolError, match=message):
            editor.run({"command": "create", **arguments}, ctx)


def test_editor_bad_command_and_path(ctx: ToolContext) -> None:
    editor = EditorTool()
    with pytest.raises(ToolError, match="command"):
        editor.run({"command": "delete", "path": "f"}, ctx)
    with pytest.raises(ToolError, match="path"):
        editor.run({"command": "view"}, ctx)


# --- run_tool ----------------------------------------------------------------


class _Crashing:
    name = "crashing"
    description = "crashes"
    parameters: dict[str, Any] = {"type": "object", "properties": {}}

    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise KeyError("boom")


class _Cancelling(_Crashing):
    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise Cancelled()


def test_run_tool(ctx: ToolContext) -> None:
    tool = TerminalTool()
    assert run_tool(tool, '{"command": "echo hi"}', ctx) == ToolResult("hi\n", True)
    bad = run_tool(tool, '{"command": "echo', ctx)
    assert not bad.success and "not valid JSON" in bad.output
    not_object = run_tool(tool, '["echo hi"]', ctx)
    assert not not_object.success and "JSON object" in not_object.output
    refused = run_tool(tool, "{}", ctx)
    assert not refused.success and "command" in refused.output
    assert not run_tool(tool, "", ctx).success
    crashed = run_tool(_Crashing(), "{}", ctx)
    assert crashed == ToolResult("tool crashed: KeyError: 'boom'", False)
    with pytest.raises(Cancelled):
        run_tool(_Cancelling(), "{}", ctx)


def test_an_edit_within_the_same_second_runs_the_new_code(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands run without bytecode caches: a same-size edit in the same second counts."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # not inherited: set for them
    ctx.env = command_environment("task-1")
    module = ctx.working_directory / "calc.py"
    module.write_text("def add(a, b):\n    return a - b\n")
    stamp = module.stat().st_mtime_ns
    run = "python3 -c 'import calc; print(calc.add(2, 3))'"
    assert term(ctx, run).output == "-1\n"
    EditorTool().run(
        {"command": "str_replace", "path": "calc.py", "old_str": "a - b", "new_str": "a + b"}, ctx
    )
    os.utime(module, ns=(stamp, stamp))  # the edit landed within the same second
    assert term(ctx, run).output == "5\n"
    assert not (ctx.working_directory / "__pycache__").exists()
