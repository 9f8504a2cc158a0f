"""The `terminal` tool: run one shell command in the workspace."""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.tools import sandbox
from minidevin.runtime.tools.base import ToolContext, ToolError, ToolResult

_CHUNK = 65536
SETPRIV = shutil.which("setpriv")
_POLL_INTERVAL = 0.05  # only used when pidfd_open is unavailable
_DRAIN_GRACE = 1.0  # after bash exits, how long to wait for EOF on the output pipe


class _OutputBuffer:
    """Decodes output incrementally and keeps at most the head and the tail."""

    def __init__(self, limit: int) -> None:
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
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The bash command to run."},
            "timeout": {
                "type": "number",
                "description": "Optional time limit in seconds (the default is used if "
                "omitted; values above the maximum are capped).",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def build_argv(self, command: str, context: ToolContext) -> list[str]:
        """The argv that runs `command`: bash, inside bubblewrap when `context.sandbox`."""
        argv = ["bash", "-c", command]
        if not context.sandbox:
            # bash dies with the server even on `kill -9` (a restart reaps the rest)
            return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv
        return sandbox.wrap(
            argv,
            context.working_directory,
            network=context.network,
            hide=context.hidden_paths,
        )

    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Run the command; raises `Cancelled` if the task's cancel token fires."""
        command = arguments.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("`command` is required and must be a non-empty string")
        timeout = self._timeout(arguments.get("timeout"), context)
        context.cancel.raise_if_set()

        env = dict(context.env) if context.env is not None else dict(os.environ)
        env.update(PAGER="cat", GIT_PAGER="cat", TERM="dumb")
        try:
            process = subprocess.Popen(
                self.build_argv(command, context),
                cwd=context.working_directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolError(f"could not start the command: {exc}") from exc

        group = _ProcessGroup(process)
        unregister = context.cancel.on_cancel(group.kill)
        output = _OutputBuffer(context.output_limit)
        try:
            timed_out = self._pump(group, output, timeout)
        finally:
            unregister()
            exit_code = group.kill_and_reap()
            assert process.stdout is not None
            process.stdout.close()
        if context.cancel.is_set():
            raise Cancelled()

        text = output.text()
        lines = []
        if timed_out:
            lines.append(f"[command timed out after {timeout:g} seconds and was killed]")
        elif exit_code != 0:
            lines.append(f"[exit code: {exit_code}]")
        if lines:
            if text and not text.endswith("\n"):
                text += "\n"
            text += "\n".join(lines)
        return ToolResult(output=text, success=not timed_out and exit_code == 0)

    @staticmethod
    def _timeout(value: Any, context: ToolContext) -> float:
        if value is None:
            timeout = float(context.default_timeout)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError("`timeout` must be a number of seconds")
        elif math.isnan(value) or value <= 0:
            raise ToolError("`timeout` must be a positive number of seconds")
        else:
            timeout = float(value)
        return min(timeout, context.max_timeout)

    @staticmethod
    def _pump(group: _ProcessGroup, output: _OutputBuffer, timeout: float) -> bool:
        """Read output until bash exits or the timeout passes; returns whether it timed out."""
        process = group.process
        assert process.stdout is not None
        fd = process.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            pidfd = None
        timed_out = False
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
        return timed_out


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
