"""A hostile tenant's commands against the sandbox: real bwrap, real cgroups, real processes.

Each attack runs through the real TerminalTool with the context a task gets
(`tool_context`), and the tree-killing ones also through a Runtime task. Needs a
root server (the uid switch and cgroups); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import pids_running, until

from minidevin.actors.children import tool_context
from minidevin.api import Runtime
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.settings import Settings
from minidevin.runtime.tools import TerminalTool, ToolContext, ToolResult, cgroups
from minidevin.runtime.tools.environment import kill_task_processes
from minidevin.runtime.tools.sandbox import sandbox_status

STATUS = sandbox_status()
ROOT = os.geteuid() == 0
CGROUPS = cgroups.cgroup_support()
needs_root = pytest.mark.skipif(not ROOT, reason="the uid switch needs a root server")
needs_bwrap = pytest.mark.skipif(not STATUS.works, reason=f"no bubblewrap: {STATUS.reason}")
needs_cgroups = pytest.mark.skipif(CGROUPS.version is None, reason=f"{CGROUPS.reason}")
SMALL = {"sandbox_memory_mb": 64, "sandbox_pids": 32, "sandbox_tmp_mb": 4}
pytestmark = needs_root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jwt_secret").write_text("the-jwt-secret")
    return data


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A root-owned working directory handed to the sandbox uid, as session creation does."""
    directory = tmp_path / "ws"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    return directory


def context_for(
    work: Path, data_dir: Path, *, sandbox: str = "auto", task_id: str = "", **settings: Any
) -> ToolContext:
    merged = {**SMALL, **settings}
    chosen = Settings(data_dir=data_dir, sandbox=sandbox, **merged)
    return tool_context(work, chosen, CancelToken(), "offline", task_id or uuid.uuid4().hex)


def term(context: ToolContext, command: str, timeout: float = 30) -> ToolResult:
    return TerminalTool().run({"command": command, "timeout": timeout}, context)


MODES = [
    pytest.param("auto", marks=needs_bwrap, id="sandboxed"),
    pytest.param("off", id="unsandboxed"),
]


def alive_with(mark: str) -> list[int]:
    """Host pids whose command line contains `mark` (not zombies)."""
    return pids_running(mark)


def escaped(mark: str) -> list[int]:
    """Host pids of the `sleep MARK` itself (not the shells or bwrap that name it)."""
    found = []
    for pid in pids_running(mark):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{mark}\0".encode():
                found.append(pid)
        except OSError:
            continue
    return found


# -- who commands are ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_commands_never_run_as_root(work: Path, data_dir: Path, mode: str) -> None:
    result = term(context_for(work, data_dir, sandbox=mode), "id -u; id -g; id -G")
    assert result.success, result.output
    assert result.output.split() == ["65534", "65534", "65534"]


@needs_bwrap
def test_kernel_settings_are_read_only(work: Path, data_dir: Path) -> None:
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    context = context_for(work, data_dir)
    result = term(context, "echo '|/tmp/evil %p' > /proc/sys/kernel/core_pattern")
    assert not result.success and "Permission denied" in result.output
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before
    sysrq = term(context, "echo h > /proc/sysrq-trigger")
    assert not sysrq.success


@pytest.mark.parametrize("mode", MODES)
def test_no_setuid_root_file_can_be_planted(work: Path, data_dir: Path, mode: str) -> None:
    result = term(context_for(work, data_dir, sandbox=mode), "cp /usr/bin/id x && chmod 4755 x")
    planted = work / "x"
    assert result.success and planted.exists(), result.output
    info = planted.stat()
    assert info.st_mode & 0o4000 and info.st_uid == 65534  # setuid to nobody, not to root


# -- what commands see -----------------------------------------------------------------


@pytest.fixture
def other_workspace(tmp_path: Path) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="minidevin-other-"))
    (directory / "theirs.txt").write_text("another tenant's file")
    directory.chmod(0o755)
    (directory / "theirs.txt").chmod(0o644)
    yield directory
    shutil.rmtree(directory)


@needs_bwrap
def test_the_host_is_out_of_sight(
    work: Path, data_dir: Path, other_workspace: Path, tmp_path: Path
) -> None:
    (data_dir / "jwt_secret").chmod(0o644)  # readable by mode: only the view hides it
    marker_file = Path(f"/root/minidevin-hostile-{uuid.uuid4().hex}")
    marker_file.write_text("root's")
    try:
        script = "\n".join(
            f"ls -A {path} 2>/dev/null | head -3; test -e {path} && echo 'SEES {path}'"
            for path in ("/home", "/var", "/srv", str(marker_file), str(other_workspace))
        )
        script += f"\ncat {data_dir}/jwt_secret {other_workspace}/theirs.txt 2>&1"
        script += "\ncat /etc/shadow /etc/gshadow 2>&1 | head -c 200; echo; python3 -c 'print(7*6)'"
        script += "\ngit --version >/dev/null && make --version >/dev/null && echo TOOLS"
        result = term(context_for(work, data_dir), script)
    finally:
        marker_file.unlink()
    output = result.output
    assert "SEES" not in output, output
    assert "the-jwt-secret" not in output and "another tenant" not in output
    assert "root:" not in output  # /etc/shadow
    assert "42" in output and "TOOLS" in output


@pytest.mark.parametrize("mode", MODES)
def test_server_variables_never_reach_commands(
    work: Path, data_dir: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIDEVIN_JWT_SECRET", "env-jwt-secret-" + "s" * 32)
    monkeypatch.setenv("FOO_TOKEN", "foo-token-value")
    monkeypatch.setenv("SERVER_ONLY_VAR", "harmless-but-private")
    result = term(context_for(work, data_dir, sandbox=mode), "env")
    for value in ("env-jwt-secret", "foo-token-value", "harmless-but-private"):
        assert value not in result.output, result.output
    assert "USER=nobody" in result.output and "MINIDEVIN_TASK_ID=" in result.output


def test_unsandboxed_commands_cannot_touch_the_server(
    work: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOO_TOKEN", "foo-token-value")
    server = os.getpid()
    context = context_for(work, data_dir, sandbox="off")
    result = term(
        context,
        f"cat /proc/{server}/environ; echo; kill -9 {server} || echo KILL_REFUSED; "
        "cat /proc/$PPID/environ 2>&1 | head -c 100",
    )
    assert "foo-token-value" not in result.output and "KILL_REFUSED" in result.output
    assert "Permission denied" in result.output


# -- limits ------------------------------------------------------------------------------

ALLOCATE = "python3 -c 'b = bytearray(300 << 20); print(len(b))'; echo AFTER"


@needs_cgroups
@pytest.mark.parametrize("mode", MODES)
def test_memory_limit_ends_the_command_and_says_so(work: Path, data_dir: Path, mode: str) -> None:
    result = term(context_for(work, data_dir, sandbox=mode), ALLOCATE)
    assert not result.success
    assert "memory limit" in result.output and "64 MB" in result.output, result.output
    assert "314572800" not in result.output


@needs_cgroups
@pytest.mark.parametrize("mode", MODES)
def test_process_limit_bounds_a_fork_loop(work: Path, data_dir: Path, mode: str) -> None:
    mark = f"300.{uuid.uuid4().int % 10**9}"
    command = f"for i in $(seq 200); do sleep {mark} & done; wait"
    result = term(context_for(work, data_dir, sandbox=mode), command)
    assert not result.success
    assert "process limit (32" in result.output, result.output
    assert not alive_with(mark)


@needs_bwrap
def test_tmp_is_size_limited(work: Path, data_dir: Path) -> None:
    result = term(context_for(work, data_dir), "head -c 6000000 /dev/zero > /tmp/big")
    assert not result.success and "No space left on device" in result.output, result.output
    assert "/tmp holds at most 4 MB" in result.output
    fits = term(context_for(work, data_dir), "head -c 1000000 /dev/zero > /tmp/small && echo OK")
    assert fits.output == "OK\n"


# -- the whole tree dies ------------------------------------------------------------------

ESCAPE = "setsid env -i /bin/sh -c 'sleep {mark} & :' < /dev/null > /dev/null 2>&1 &"


@needs_cgroups
@pytest.mark.parametrize("mode", MODES)
def test_a_double_forked_setsid_process_dies_with_the_command(
    work: Path, data_dir: Path, mode: str
) -> None:
    mark = f"300.{uuid.uuid4().int % 10**9}"
    result = term(
        context_for(work, data_dir, sandbox=mode), ESCAPE.format(mark=mark) + " sleep 0.3"
    )
    assert result.success, result.output
    assert not alive_with(mark), "the escaped process survived its command"


DEAD_SERVER = """
import sys
from pathlib import Path
from minidevin.actors.children import tool_context
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.settings import Settings
from minidevin.runtime.tools import TerminalTool
settings = Settings(data_dir=Path(sys.argv[1]), sandbox=sys.argv[3])
context = tool_context(Path(sys.argv[2]), settings, CancelToken(), "offline", "t-dead")
TerminalTool().run({"command": sys.argv[4]}, context)
"""


@needs_cgroups
@pytest.mark.parametrize("mode", MODES)
async def test_the_reaper_kills_what_a_killed_server_left(
    work: Path, data_dir: Path, mode: str
) -> None:
    mark = f"300.{uuid.uuid4().int % 10**9}"
    command = ESCAPE.format(mark=mark) + " sleep 300"
    server = subprocess.Popen(
        [sys.executable, "-c", DEAD_SERVER, str(data_dir), str(work), mode, command],
        stdin=subprocess.DEVNULL,
    )
    try:
        await until(lambda: bool(escaped(mark)), what="the escaped process")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        if mode == "off":  # nothing but the cgroup holds it now
            assert escaped(mark)
        # another runtime's reaper leaves it alone; this data directory's kills it
        kill_task_processes(set(), data_dir.parent / "another-data-dir")
        kill_task_processes(set(), data_dir)
        await until(lambda: not alive_with(mark), what="the orphan to die by the reaper")
    finally:
        server.kill()
        server.wait(10)


# -- end to end: a task, stopped -------------------------------------------------------------


@needs_cgroups
@pytest.mark.parametrize("mode", MODES)
async def test_stopping_a_task_kills_even_an_escaped_process(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, mode: str
) -> None:
    mark = f"300.{uuid.uuid4().int % 10**9}"
    command = ESCAPE.format(mark=mark) + " sleep 300"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})])])
    env = {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": openai_server.base_url}
    settings = Settings(data_dir=tmp_path / "data", sandbox=mode, **SMALL)
    workdir = tmp_path / "ws"
    workdir.mkdir()
    async with Runtime(settings, provider_env=env) as runtime:
        session = await runtime.create_session("s", workdir)
        task = await runtime.create_task(session.id, "escape")
        await until(lambda: bool(escaped(mark)), what="the escaped process")
        uids = {os.stat(f"/proc/{pid}").st_uid for pid in escaped(mark)}
        assert uids == {65534}
        assert (await runtime.stop_task(task.id)).status == "stopped"
        await until(lambda: not alive_with(mark), timeout=10, what="the escaped process to die")
