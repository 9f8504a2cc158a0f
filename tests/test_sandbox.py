"""The bubblewrap sandbox of `terminal` commands: real bwrap, real processes, real sockets.

Each promise is shown through the TerminalTool with a sandboxed ToolContext, and
end to end through a Runtime task. Processes are found on the host by a unique
marker in their command line: inside the sandbox's pid namespace, `$!` means
nothing on the host.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until, wait_for

import minidevin.startup
from minidevin.actors.children import tool_context
from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime import cancel as cancel_module
from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.settings import Settings
from minidevin.runtime.tools import TerminalTool, ToolContext, ToolResult
from minidevin.runtime.tools import sandbox as sandbox_module
from minidevin.runtime.tools.sandbox import SandboxStatus, SandboxUnavailable, sandbox_status

STATUS = sandbox_status()
HOST_PID_NAMESPACE = os.readlink("/proc/self/ns/pid")
needs_bwrap = pytest.mark.skipif(
    not STATUS.works, reason=f"bubblewrap does not work on this machine: {STATUS.reason}"
)

# -- helpers ---------------------------------------------------------------------------


NOBODY = 65534
AS_ROOT = os.geteuid() == 0


def own(directory: Path) -> Path:
    """Hand a test directory to the uid commands run as (the server does it for sessions)."""
    if AS_ROOT:
        os.chown(directory, NOBODY, NOBODY)
    return directory


def sandboxed(work: Path, *, network: bool = False, hidden: tuple[Path, ...] = ()) -> ToolContext:
    uid = NOBODY if AS_ROOT else None
    return ToolContext(
        working_directory=own(work),
        sandbox=True,
        network=network,
        hidden_paths=hidden,
        uid=uid,
        gid=uid,
    )


def term(context: ToolContext, command: str, **extra: Any) -> ToolResult:
    return TerminalTool().run({"command": command, **extra}, context)


def marker() -> str:
    """A unique `sleep` argument: `sleep 300.<digits>` is findable from the host."""
    return f"300.{uuid.uuid4().int % 10**9}"


def marked(mark: str) -> list[tuple[int, str]]:
    """(host pid, command line) of live processes whose command line contains `mark`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if mark in cmdline and state not in ("Z", "X"):
            found.append((int(entry.name), cmdline))
    return found


def sleep_runs(mark: str) -> bool:
    return any(cmdline == f"sleep {mark}" for _, cmdline in marked(mark))


def probe_script(sibling: Path, mark: str, port: int, data: Path) -> str:
    """One shell script that tries everything the sandbox forbids, printing verdicts."""
    home = Path.home()
    lines = [
        "echo inside > inside.txt && echo INSIDE_WROTE",
        f"(echo x > {sibling}/escape.txt) 2>/dev/null && echo SIBLING_WROTE",
        f"(echo x > /etc/minidevin-{mark}) 2>/dev/null && echo ETC_WROTE",
        f"(echo x > {home}/minidevin-{mark}) 2>/dev/null && echo HOME_WROTE",
        f"echo private > /tmp/minidevin-{mark} && echo TMP_WROTE",
        f"cat {data}/jwt_secret 2>/dev/null && echo SECRET_READ",
        f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo NET_CONNECTED",
        f"sleep {mark} &",
        "echo DONE",
    ]
    return "\n".join(lines)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP server socket on the host's 127.0.0.1."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def connection_arrived(server: socket.socket) -> bool:
    """Whether a client has connected (the client command has finished by now)."""
    server.setblocking(False)
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


@pytest.fixture
def work(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


# -- the filesystem ------------------------------------------------------------------------


@needs_bwrap
def test_writes_inside_the_working_directory_reach_the_host(work: Path) -> None:
    result = term(sandboxed(work), "mkdir -p sub && echo hello > sub/out.txt && pwd")
    assert result.success, result.output
    assert result.output.strip() == str(work.resolve())
    assert (work / "sub" / "out.txt").read_text() == "hello\n"


@needs_bwrap
def test_writes_outside_the_working_directory_fail(work: Path, tmp_path: Path) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    mark = uuid.uuid4().hex
    targets = [sibling / "f.txt", Path.home() / f"minidevin-{mark}", Path(f"/etc/minidevin-{mark}")]
    targets.append(Path(f"/usr/minidevin-{mark}"))
    command = "\n".join(
        f"if (echo x > {target}) 2>/dev/null; then echo 'WROTE {target}'; "
        f"else echo 'DENIED {target}'; fi"
        for target in targets
    )
    result = term(sandboxed(work), command)
    assert result.output.splitlines() == [f"DENIED {target}" for target in targets]
    assert not any(target.exists() for target in targets)
    # a write the user asked for fails loudly, with the reason
    denied = term(sandboxed(work), f"touch /etc/minidevin-{mark}")
    assert not denied.success and "Read-only file system" in denied.output


@needs_bwrap
def test_tmp_is_private_to_each_command(work: Path) -> None:
    mark = uuid.uuid4().hex
    host_file = Path(f"/tmp/minidevin-host-{mark}")
    host_file.write_text("host only")
    try:
        inside = term(
            sandboxed(work),
            f"echo private > /tmp/inside-{mark} && "
            f"cat /tmp/inside-{mark} && test ! -e {host_file} && echo HOST_TMP_INVISIBLE && "
            'echo "HOME=$HOME" && touch "$HOME/.rc" && echo HOME_WRITABLE',
        )
        assert inside.success, inside.output
        expected = ["private", "HOST_TMP_INVISIBLE", "HOME=/tmp", "HOME_WRITABLE"]
        assert inside.output.split() == expected
        assert not Path(f"/tmp/inside-{mark}").exists()
        later = term(sandboxed(work), f"test ! -e /tmp/inside-{mark} && echo FRESH")
        assert later.output.strip() == "FRESH"
    finally:
        host_file.unlink()


def make_data_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jwt_secret").write_text("the-jwt-secret")
    (directory / "jwt_secret").chmod(0o600)
    (directory / "minidevin.sqlite3").write_bytes(b"SQLite format 3\x00")
    return directory


@needs_bwrap
def test_the_data_directory_inside_the_workdir_is_hidden(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data")
    (data / "jwt_secret").chmod(0o644)  # readable by mode: only the cover protects it
    context = sandboxed(tmp_path, hidden=(data,))
    listing = term(context, "ls -A data")
    assert listing.success and listing.output == ""
    read = term(context, "cat data/jwt_secret")
    assert not read.success and "the-jwt-secret" not in read.output
    term(context, "echo gone > data/new")
    assert not (data / "new").exists()  # the cover is a tmpfs: nothing reaches the host
    assert (data / "jwt_secret").read_text() == "the-jwt-secret"
    # without the hide the same command would read it: the cover is what protects it
    assert "the-jwt-secret" in term(sandboxed(tmp_path), "cat data/jwt_secret").output


@needs_bwrap
def test_a_workdir_inside_the_data_directory_shows_only_itself(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data")
    workspace = data / "workspaces" / "w1"
    workspace.mkdir(parents=True)
    (workspace / "code.py").write_text("print(1)\n")
    (data / "jwt_secret").chmod(0o644)
    context = sandboxed(workspace, hidden=(data,))
    result = term(context, "cat code.py && echo new > new.txt")
    assert result.success and result.output == "print(1)\n"
    assert (workspace / "new.txt").read_text() == "new\n"
    listing = term(context, f"ls -A {data} {data}/workspaces")
    assert listing.output.split() == [f"{data}:", "workspaces", f"{data}/workspaces:", "w1"]
    read = term(context, f"cat {data}/jwt_secret")
    assert not read.success and "the-jwt-secret" not in read.output


@needs_bwrap
def test_server_secrets_and_processes_are_out_of_sight(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIDEVIN_JWT_SECRET", "env-jwt-secret-" + "e" * 32)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
    monkeypatch.setenv("MINIDEVIN_SANDBOX_PROBE_VISIBLE", "kept?")
    result = term(sandboxed(work), "env; echo PIDS $(ls /proc | grep -c '^[0-9]')")
    assert result.success, result.output
    assert "env-jwt-secret" not in result.output and "sk-env-key" not in result.output
    assert "MINIDEVIN_" not in result.output
    pids = int(result.output.split("PIDS ")[1].split()[0])
    assert pids <= 5, result.output  # bwrap's reaper, bash, ls, grep: not the host's
    capabilities = term(sandboxed(work), "grep CapEff /proc/self/status")
    assert capabilities.output.split() == ["CapEff:", "0000000000000000"]
    no_tty = term(sandboxed(work), "(: < /dev/tty) 2>/dev/null || echo NO_CONTROLLING_TTY")
    assert no_tty.output == "NO_CONTROLLING_TTY\n"  # so no TIOCSTI keystroke injection


# -- the network ------------------------------------------------------------------------


def connect_command(port: int, token: str) -> str:
    return f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo {token} >&3 && echo CONNECTED"


@needs_bwrap
def test_offline_commands_cannot_reach_a_loopback_server(
    work: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    result = term(sandboxed(work, network=False), connect_command(port, "offline"))
    assert not result.success and "CONNECTED" not in result.output
    assert not connection_arrived(listener)


@needs_bwrap
def test_online_commands_cannot_reach_the_hosts_loopback(
    work: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    result = term(sandboxed(work, network=True), connect_command(port, "online-hello"))
    assert not result.success and "CONNECTED" not in result.output, result.output
    assert not connection_arrived(listener)


# -- the process tree ------------------------------------------------------------------------


def run_in_thread(
    context: ToolContext, command: str, **extra: Any
) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(term(context, command, **extra))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@needs_bwrap
def test_timeout_kills_the_whole_tree_inside_the_sandbox(work: Path) -> None:
    mark = marker()
    thread, outcome = run_in_thread(sandboxed(work), f"sleep {mark} & wait", timeout=3)
    wait_for(lambda: sleep_runs(mark), what="the grandchild to start")
    thread.join(30)
    assert not thread.is_alive()
    result = outcome[0]
    assert isinstance(result, ToolResult) and "timed out after 3 seconds" in result.output
    wait_for(
        lambda: not marked(mark), timeout=5, what=lambda: f"the tree to die, left: {marked(mark)}"
    )


@needs_bwrap
def test_cancel_kills_the_whole_tree_inside_the_sandbox(work: Path) -> None:
    mark = marker()
    context = sandboxed(work)
    thread, outcome = run_in_thread(context, f"bash -c 'sleep {mark} & wait'; echo never")
    wait_for(lambda: sleep_runs(mark), what="the grandchild to start")
    context.cancel.cancel()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], Cancelled)
    wait_for(
        lambda: not marked(mark), timeout=5, what=lambda: f"the tree to die, left: {marked(mark)}"
    )


SERVER_STAND_IN = """
import os, sys
from pathlib import Path
from minidevin.runtime.tools import TerminalTool, ToolContext
uid = 65534 if os.geteuid() == 0 else None
context = ToolContext(
    working_directory=Path(sys.argv[1]), sandbox=True, network=False, uid=uid, gid=uid
)
TerminalTool().run({"command": sys.argv[2]}, context)
"""


@needs_bwrap
def test_the_tree_dies_when_the_server_process_is_killed(work: Path) -> None:
    mark = marker()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_STAND_IN, str(work), f"sleep {mark} & wait"],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: sleep_runs(mark), what="the grandchild to start")
        server.kill()  # SIGKILL: no cleanup runs, only --die-with-parent and the pid namespace
        server.wait(10)
        wait_for(
            lambda: not marked(mark),
            timeout=5,
            what=lambda: f"the tree to die, left: {marked(mark)}",
        )
    finally:
        server.kill()
        server.wait(10)


@needs_bwrap
def test_background_processes_die_when_the_command_ends(work: Path) -> None:
    mark = marker()
    result = term(sandboxed(work), f"sleep {mark} & echo started")
    assert result.success and result.output == "started\n"
    wait_for(
        lambda: not marked(mark), timeout=5, what=lambda: f"the tree to die, left: {marked(mark)}"
    )


# -- settings and the off switch --------------------------------------------------------------


def test_tool_context_follows_the_setting_and_the_run_mode(tmp_path: Path) -> None:
    token = cancel_module.CancelToken()
    auto = Settings(data_dir=tmp_path / "data", sandbox="auto")
    offline = tool_context(tmp_path, auto, token, "offline")
    online = tool_context(tmp_path, auto, token, "online")
    assert offline.sandbox is STATUS.works and online.sandbox is STATUS.works
    assert (offline.network, online.network) == (False, True)
    assert offline.hidden_paths == (auto.data_dir,)
    owner = tmp_path.stat().st_uid
    assert offline.uid == (owner or auto.sandbox_uid) and offline.uid != 0
    assert (offline.memory_mb, offline.pids, offline.tmp_mb) == (2048, 256, 512)
    assert tool_context(tmp_path, auto, token).network is False  # offline unless said
    off = tool_context(tmp_path, Settings(data_dir=tmp_path / "data", sandbox="off"), token)
    assert off.sandbox is False


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory the command's uid can reach by path (pytest's own tree is 0700 root)."""
    directory = own(Path(tempfile.mkdtemp(prefix="minidevin-test-")))
    yield directory
    shutil.rmtree(directory)


def test_sandbox_off_runs_commands_unsandboxed(work: Path, tmp_path: Path, reachable: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", sandbox="off")
    context = tool_context(work, settings, cancel_module.CancelToken(), "offline")
    assert TerminalTool().build_argv("true", context)[-3:] == ["bash", "-c", "true"]
    assert "bwrap" not in " ".join(TerminalTool().build_argv("true", context))
    outside = reachable
    result = term(context, f"echo free > {outside}/f && readlink /proc/$$/ns/pid")
    assert result.success and (outside / "f").read_text() == "free\n", result.output
    assert result.output.strip() == HOST_PID_NAMESPACE
    inside = term(sandboxed(work), "readlink /proc/$$/ns/pid") if STATUS.works else None
    assert inside is None or inside.output.strip() != HOST_PID_NAMESPACE


def test_wrap_builds_a_private_view(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data")
    inner = data / "ws"
    inner.mkdir()
    argv = sandbox_module.wrap(["bash", "-c", "x"], inner, network=False, hide=(data,))
    assert argv[1:4] != ["--ro-bind", "/", "/"] and argv[-4:] == ["--", "bash", "-c", "x"]
    position = {tuple(argv[i : i + 2]): i for i in range(len(argv) - 1)}
    assert position[("--ro-bind", "/usr")] < position[("--tmpfs", "/tmp")]
    assert position[("--tmpfs", "/tmp")] < position[("--bind", str(inner))]
    assert ("--tmpfs", str(data)) not in position  # only the workdir is bound: no cover needed
    assert ("--ro-bind", "/dev/null") in position and "/etc/shadow" in argv
    assert "--unshare-net" in argv and "--cap-drop" in argv  # uid None: no switch, no caps
    online = sandbox_module.wrap(["true"], tmp_path, network=True, hide=(data,))
    assert "--unshare-net" not in online
    assert online.index("--bind") < online.index(str(data))  # inside the workdir: after it
    if AS_ROOT:  # a uid to switch to: setpriv inside, after bwrap (which keeps its caps)
        switched = sandbox_module.wrap(["true"], tmp_path, network=False, uid=NOBODY, gid=NOBODY)
        assert "--cap-drop" not in switched and "--reuid=65534" in switched
        assert switched.index("--") < switched.index("--reuid=65534")


# -- end to end through a Runtime -----------------------------------------------------------


async def tool_outputs(runtime: Runtime, task_id: str) -> list[str]:
    return [
        event.data["output"]
        async for event in runtime.events(task_id)
        if event.type == "tool_result"
    ]


def finish() -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[("finish", {"summary": "done", "success": True})])


def workspace(tmp_path: Path) -> Path:
    """A working directory beside the data directory (never around it)."""
    directory = tmp_path / "ws"
    directory.mkdir(exist_ok=True)
    return directory


def runtime_for(tmp_path: Path, server: ScriptedOpenAIServer, **settings: Any) -> Runtime:
    env = {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}
    return Runtime(Settings(data_dir=tmp_path / "data", **settings), provider_env=env)


@pytest.fixture
def sibling(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path.parent / f"{tmp_path.name}-sibling"
    directory.mkdir()
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


@needs_bwrap
@pytest.mark.parametrize("run_mode", ["offline", "online"])
async def test_a_task_runs_its_commands_in_the_sandbox(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    listener: socket.socket,
    sibling: Path,
    run_mode: str,
) -> None:
    mark = marker()
    script = probe_script(sibling, mark, listener.getsockname()[1], tmp_path / "data")
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": script})]), finish()])
    async with runtime_for(tmp_path, openai_server) as runtime:  # jwt_secret generated
        assert (tmp_path / "data" / "jwt_secret").is_file()
        session = await runtime.create_session("s", workspace(tmp_path))
        task = await runtime.create_task(session.id, "probe the sandbox", run_mode=run_mode)
        output = (await tool_outputs(runtime, task.id))[0]
    verdicts = set(output.split())
    assert {"INSIDE_WROTE", "TMP_WROTE", "DONE"} <= verdicts, output
    assert not verdicts & {"SIBLING_WROTE", "ETC_WROTE", "HOME_WROTE", "SECRET_READ"}, output
    secret = (tmp_path / "data" / "jwt_secret").read_text().strip()
    assert secret not in output
    assert (tmp_path / "ws" / "inside.txt").read_text() == "inside\n"
    assert not (sibling / "escape.txt").exists()
    assert not Path(f"/tmp/minidevin-{mark}").exists()
    assert "NET_CONNECTED" not in verdicts, output  # online or not: never the host's loopback
    assert not connection_arrived(listener)
    wait_for(
        lambda: not marked(mark), timeout=5, what=lambda: f"the tree to die, left: {marked(mark)}"
    )


@needs_bwrap
async def test_stopping_a_task_kills_its_sandboxed_process_tree(
    tmp_path: Path, openai_server: ScriptedOpenAIServer
) -> None:
    mark = marker()
    command = f"bash -c 'sleep {mark} & wait'; echo never"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})])])
    async with runtime_for(tmp_path, openai_server) as runtime:
        session = await runtime.create_session("s", workspace(tmp_path))
        task = await runtime.create_task(session.id, "run something long")
        await until(lambda: sleep_runs(mark), what="the sandboxed grandchild")
        assert any("bwrap" in cmdline for _, cmdline in marked(mark))
        assert (await runtime.stop_task(task.id)).status == "stopped"
        await until(lambda: not marked(mark), timeout=5, what="the tree to die")


async def test_sandbox_off_lets_a_task_write_outside(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, reachable: Path
) -> None:
    sibling = reachable
    command = f"echo free > {sibling}/escape.txt"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})]), finish()])
    async with runtime_for(tmp_path, openai_server, sandbox="off") as runtime:
        session = await runtime.create_session("s", workspace(tmp_path))
        task = await runtime.create_task(session.id, "write outside")
        await tool_outputs(runtime, task.id)
    assert (sibling / "escape.txt").read_text() == "free\n"


# -- an unusable sandbox, and /health -------------------------------------------------------


@pytest.fixture
def broken_sandbox(monkeypatch: pytest.MonkeyPatch) -> SandboxStatus:
    broken = SandboxStatus(False, "bwrap does not work here: simulated")
    monkeypatch.setattr(sandbox_module, "_probe", lambda: broken)
    return broken


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))


async def test_required_refuses_tasks_when_the_sandbox_does_not_work(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    broken_sandbox: SandboxStatus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = RecordingLog()
    monkeypatch.setattr(minidevin.startup, "log", log)
    async with runtime_for(tmp_path, openai_server, sandbox="required") as runtime:
        session = await runtime.create_session("s", workspace(tmp_path))
        with pytest.raises(SandboxUnavailable) as refused:
            await runtime.create_task(session.id, "anything")
        assert refused.value.status == 503 and refused.value.code == "SANDBOX_UNAVAILABLE"
        assert "simulated" in refused.value.detail
        assert await runtime.list_tasks(session.id) == []
    warnings = [fields for event, fields in log.records if event == "sandbox_unavailable"]
    assert warnings and warnings[0]["reason"] == broken_sandbox.reason


async def test_auto_warns_and_runs_unsandboxed_when_the_sandbox_does_not_work(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    broken_sandbox: SandboxStatus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = RecordingLog()
    monkeypatch.setattr(minidevin.startup, "log", log)
    command = "readlink /proc/$$/ns/pid"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})]), finish()])
    async with runtime_for(tmp_path, openai_server, sandbox="auto") as runtime:
        session = await runtime.create_session("s", workspace(tmp_path))
        task = await runtime.create_task(session.id, "works anyway")
        output = (await tool_outputs(runtime, task.id))[0]
    assert output.strip() == HOST_PID_NAMESPACE  # no sandbox: the host's pid namespace
    (warning,) = [fields for event, fields in log.records if event == "sandbox_unavailable"]
    assert warning["consequence"] == "commands run unsandboxed"


async def test_health_reports_the_sandbox(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(Runtime(Settings(data_dir=tmp_path / "data"))))
    body = await (await client.get("/health")).json()
    sandbox = body["sandbox"]
    assert sandbox["available"] is STATUS.works and sandbox["mode"] == "auto"
    assert sandbox["reason"] == STATUS.reason
    assert sandbox["uid_isolation"] is AS_ROOT
    assert sandbox["limits"] in ("cgroup v1", "cgroup v2", "rlimit")
    assert sandbox["network"] in ("user-mode (slirp4netns)", "none")


async def test_health_reports_an_unusable_sandbox(
    aiohttp_client: Any, tmp_path: Path, broken_sandbox: SandboxStatus
) -> None:
    settings = Settings(data_dir=tmp_path / "data", sandbox="required")
    client = await aiohttp_client(create_app(Runtime(settings)))
    response = await client.get("/health")
    assert response.status == 200
    sandbox = (await response.json())["sandbox"]
    assert (sandbox["available"], sandbox["mode"]) == (False, "required")
    assert sandbox["reason"] == broken_sandbox.reason


def test_the_probe_runs_once_and_explains_a_missing_bwrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert sandbox_status() is sandbox_status()
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    sandbox_module._probe.cache_clear()
    try:
        missing = sandbox_status()
        assert not missing.works and "not installed" in (missing.reason or "")
    finally:
        monkeypatch.undo()
        sandbox_module._probe.cache_clear()
        assert sandbox_status() == STATUS
