"""The `terminal` tool: run one shell command in the workspace."""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from pydantic import Field

from minidevin.runtime import metrics
from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.tools import cgroups, sandbox
from minidevin.runtime.tools.base import (
    NonBlank,
    ToolArguments,
    ToolContext,
    ToolError,
    ToolResult,
)
from minidevin.runtime.tools.environment import command_environment
from minidevin.runtime.tools.network import UserNetwork, network_status

log = structlog.get_logger(__name__)
_CHUNK = 65536
_LIMIT_POLL = 0.25  # how often a running command's cgroup is checked for a hit limit
_POLL_INTERVAL = 0.05  # only used when pidfd_open is unavailable
_DRAIN_GRACE = 1.0  # after bash exits, how long to wait for EOF on the output pipe


class _OutputBuffer:
    """Decodes output incrementally and keeps at most the head and the tail."""

    def __init__(self, limit: int, redactor: Any = None) -> None:
        self._redactor = redactor
        limit = max(limit, 0)
        self._limit = limit
        self._head_max = limit // 2
        self._tail_max = limit - self._head_max
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._total = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        self._total += len(text)
        room = self._head_max - self._head_len
        if room > 0:
            self._head.append(text[:room])
            self._head_len += len(self._head[-1])
            text = text[room:]
        if text:
            self._tail.append(text)
            self._tail_len += len(text)
            while self._tail and self._tail_len - len(self._tail[0]) >= self._tail_max:
                self._tail_len -= len(self._tail.popleft())

    def text(self) -> str:
        self.feed(b"", final=True)
        head, tail = "".join(self._head), "".join(self._tail)
        if self._total <= self._limit:
            return head + tail
        tail = tail[len(tail) - self._tail_max :]
        if self._redactor is not None:
            head, tail = self._redactor.trim_cut(head, tail)
        omitted = self._total - len(head) - len(tail)
        separator = "" if not head or head.endswith("\n") else "\n"
        return f"{head}{separator}[... {omitted} characters omitted ...]\n{tail}"


class _ProcessGroup:
    """Kills the bash process's group; safe to call from the cancel thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lock = threading.Lock()
        self._reaped = False

    def kill(self) -> None:
        # Never signal after reaping: the pid (= pgid) could have been reused.
        with self._lock:
            if not self._reaped:
                self._signal()

    def kill_and_reap(self) -> int:
        with self._lock:
            if not self._reaped:
                self._signal()
                self.process.wait()
                self._reaped = True
        return self.process.returncode

    def _signal(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def exited(self) -> bool:
        """Whether bash has exited, without reaping it (so its pgid stays reserved)."""
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self.process.pid, flags) is not None
        except ChildProcessError:  # already reaped elsewhere (e.g. SIGCHLD ignored)
            return True


class TerminalArguments(ToolArguments):
    command: NonBlank = Field(description="The bash command to run.")
    timeout: float | None = Field(
        None,
        gt=0,
        description="Optional time limit in seconds (the default is used if omitted; "
        "values above the maximum are capped).",
    )


class TerminalTool:
    """Runs `bash -c <command>` in the workspace and returns its combined output."""

    name = "terminal"
    description = (
        "Run a shell command with bash in the task's working directory and return its "
        "combined stdout and stderr. Each call starts a fresh non-interactive shell: `cd` "
        "and exported variables do not persist between calls (chain them with `&&`). "
        "stdin is empty, so never run interactive programs or editors (use flags like "
        "`-y`, `--no-pager`, `git --no-pager`). Pagers are disabled and TERM=dumb. "
        "Long outputs are truncated in the middle, so prefer targeted commands (grep, "
        "head, tail, sed -n). Background processes do not survive the end of the "
        "command. The command is killed after `timeout` seconds; a nonzero exit code "
        "is reported as a line `[exit code: N]`."
    )
    arguments = TerminalArguments

    def build_argv(
        self,
        command: str,
        context: ToolContext,
        *,
        workdir_fd: int | None = None,
        network_args: Sequence[str] | None = None,
    ) -> list[str]:
        """The argv that runs `command`: bash, as `context.uid`, in bwrap when `context.sandbox`.

        Raises `PermissionError` when it would run as root.
        """
        return sandboxed_argv(["bash", "-c", command], context, workdir_fd, network_args)

    def run(
        self, arguments: Mapping[str, Any] | TerminalArguments, context: ToolContext
    ) -> ToolResult:
        """Run the command; raises `Cancelled` if the task's cancel token fires."""
        valid = TerminalArguments.of(arguments, self.name)
        command = valid.command
        timeout = min(valid.timeout or float(context.default_timeout), context.max_timeout)
        context.cancel.raise_if_set()
        with contextlib.ExitStack() as stack:
            workdir_fd = _open_workdir(context)
            stack.callback(os.close, workdir_fd)
            group, cgroup, note = self._start(command, context, workdir_fd, stack)
            unregister = context.cancel.on_cancel(
                lambda: (group.kill(), cgroup.kill() if cgroup else None)
            )
            output = _OutputBuffer(context.output_limit, context.redactor)
            try:
                timed_out, limit = self._pump(group, output, timeout, cgroup)
            finally:
                unregister()
                exit_code = group.kill_and_reap()
                assert group.process.stdout is not None
                group.process.stdout.close()
            if cgroup is not None:
                limit = limit or cgroup.exceeded()
        if context.cancel.is_set():
            raise Cancelled()

        text = output.text()
        lines = [note] if note else []
        if limit:
            lines.append(f"[{limit}]")
        elif timed_out:
            lines.append(f"[command timed out after {timeout:g} seconds and was killed]")
        elif exit_code != 0:
            lines.append(f"[exit code: {exit_code}]")
        if context.sandbox and exit_code != 0 and "No space left on device" in text:
            lines.append(f"[note: the private /tmp holds at most {context.tmp_mb} MB]")
        if lines:
            if text and not text.endswith("\n"):
                text += "\n"
            text += "\n".join(lines)
        return ToolResult(output=text, success=not timed_out and not limit and exit_code == 0)

    def _start(
        self, command: str, context: ToolContext, workdir_fd: int, stack: contextlib.ExitStack
    ) -> tuple[_ProcessGroup, cgroups.CommandCgroup | None, str | None]:
        """Start the command in its cgroup (and user-mode network); cleanups go on `stack`.

        Returns the process group, the cgroup, and a note for the model, if any.
        """
        env = dict(context.env or command_environment(context.task_id, context.uid))
        env.update(PAGER="cat", GIT_PAGER="cat", TERM="dumb")
        limits = cgroups.Limits(context.memory_mb, context.pids, context.cpus)
        cgroup = _command_cgroup(context, limits)
        if cgroup is not None:
            stack.callback(cgroup.remove)
            prefix = cgroup.enter_argv()
        else:
            prefix = cgroups.rlimit_argv(limits)
        network, network_args, note = None, None, None
        if context.sandbox and context.network:
            works, why = network_status()
            if works:
                network = UserNetwork()
                stack.callback(network.close)
                network_args = network.bwrap_args()
            else:  # never the host's network: none at all
                metrics.count_sandbox_failure("no_network")
                network_args = ["--unshare-net"]
                note = f"[note: this command had no network: {why}]"
        pass_fds = (workdir_fd, *(network.pass_fds() if network else ()))
        try:
            argv = self.build_argv(
                command,
                context,
                workdir_fd=workdir_fd,
                network_args=network_args,
            )
            process = subprocess.Popen(
                [*prefix, *argv],
                cwd=f"/proc/self/fd/{workdir_fd}",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds if context.sandbox else (),
            )
        except (OSError, PermissionError) as exc:
            if context.sandbox:
                metrics.count_sandbox_failure("start")
            raise ToolError(f"could not start the command: {exc}") from exc
        group = _ProcessGroup(process)
        if network is not None:
            try:
                network.attach()
            except Exception as exc:
                metrics.count_sandbox_failure("network")
                group.kill_and_reap()
                assert process.stdout is not None
                said = process.stdout.read(2000).decode(errors="replace").strip()
                process.stdout.close()
                detail = f" ({said})" if said else ""
                raise ToolError(f"could not set up the command's network: {exc}{detail}") from exc
        return group, cgroup, note

    @staticmethod
    def _pump(
        group: _ProcessGroup,
        output: _OutputBuffer,
        timeout: float,
        cgroup: cgroups.CommandCgroup | None = None,
    ) -> tuple[bool, str | None]:
        """Read output until bash exits, the timeout passes or a limit is hit.

        Returns whether it timed out, and which limit was hit (a sentence) if any.
        """
        process = group.process
        assert process.stdout is not None
        fd = process.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            pidfd = None
        timed_out = False
        limit = None
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            if pidfd is not None:
                selector.register(pidfd, selectors.EVENT_READ)
            try:
                deadline = time.monotonic() + timeout
                eof = False
                while not group.exited():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        timed_out = True
                        group.kill()
                        break
                    wait = remaining if pidfd is not None else min(remaining, _POLL_INTERVAL)
                    if cgroup is not None:
                        wait = min(wait, _LIMIT_POLL)
                        if limit := cgroup.exceeded():
                            group.kill()
                            cgroup.kill()
                            break
                    for key, _ in selector.select(wait):
                        if key.fd == fd and not _read(fd, output):
                            selector.unregister(fd)
                            eof = True
                # Bash is gone (or being killed): kill what is left of its group, then
                # drain the pipe. Escaped processes may hold it open; stop after a grace.
                group.kill()
                if pidfd is not None:
                    selector.unregister(pidfd)
                deadline = time.monotonic() + _DRAIN_GRACE
                while not eof:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if selector.select(remaining) and not _read(fd, output):
                        eof = True
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        return timed_out, limit


def sandboxed_argv(
    argv: list[str],
    context: ToolContext,
    workdir_fd: int | None = None,
    network_args: Sequence[str] | None = None,
) -> list[str]:
    """`argv` as a task's command runs: as `context.uid`, in bwrap when `context.sandbox`
    (a terminal command, an MCP server). Raises `PermissionError` when it would run as root.
    """
    if not context.sandbox:
        # it dies with the server even on `kill -9` (the cgroup and a restart reap the rest)
        return [*sandbox.drop_privileges(context.uid, context.gid, pdeathsig=True), *argv]
    return sandbox.wrap(
        argv,
        context.working_directory,
        network=context.network,
        hide=context.hidden_paths,
        workdir_fd=workdir_fd,
        tmp_mb=context.tmp_mb,
        read_paths=context.read_paths,
        network_args=network_args,
        uid=context.uid,
        gid=context.gid,
    )


def _open_workdir(context: ToolContext) -> int:
    """An fd of the working directory, checked to be the one the session was created on."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    changed = (
        "the working directory changed since the session was created "
        "(it was moved, replaced or swapped for a link): refusing to run commands in it"
    )
    try:
        fd = os.open(context.working_directory, flags)
    except OSError as exc:
        if context.workspace_identity is not None:
            raise ToolError(changed) from exc
        raise ToolError(f"the working directory cannot be opened: {exc.strerror}") from exc
    info = os.fstat(fd)
    if context.workspace_identity not in (None, (info.st_dev, info.st_ino)):
        os.close(fd)
        raise ToolError(changed)
    return fd


def _command_cgroup(context: ToolContext, limits: cgroups.Limits) -> cgroups.CommandCgroup | None:
    """The command's cgroup, or None where cgroups are not usable (then rlimits apply)."""
    support = cgroups.cgroup_support()
    if support.version is None:
        return None
    try:
        return cgroups.CommandCgroup(support, context.data_dir, context.task_id, limits)
    except OSError as exc:
        log.warning("cgroup_unavailable", error=str(exc), consequence="rlimits only")
        return None


def _read(fd: int, output: _OutputBuffer) -> bool:
    """Read one chunk into `output`; False at end of file."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return True
    if not data:
        return False
    output.feed(data)
    return True
