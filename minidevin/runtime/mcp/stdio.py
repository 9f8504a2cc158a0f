"""A stdio MCP server, started the way the `terminal` tool starts a command.

The server runs in the task's working directory (bound from a checked directory
fd), as the task's uid, under bubblewrap when the task is sandboxed (an offline
task: no network; an online one: user-mode network when this machine has it,
else none), in a cgroup of its own (or under rlimits), in a process group of
its own. Its environment is the task's (`context.env`: the allowlist plus the
session's secrets) with the server's `env` on top, never the runtime's own.

`StdioServerProcess.connect()` is the transport: an async context manager giving
the read and write streams an `mcp.ClientSession` takes, speaking newline-
delimited JSON-RPC over the process's stdin/stdout. Its stderr is kept (the last
few KB) to explain a failed start or a death. Leaving the context stops the
server: stdin closed, a short grace, then SIGKILL to its whole process group and
cgroup (bubblewrap's pid namespace takes anything that left the group).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import mcp_types
import structlog
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from minidevin.runtime.mcp.config import McpStdioServer
from minidevin.runtime.tools import cgroups
from minidevin.runtime.tools.base import ToolContext
from minidevin.runtime.tools.environment import command_environment, user_variables
from minidevin.runtime.tools.network import UserNetwork, network_status

# the terminal's own checks: the same working-directory identity and cgroup rules
from minidevin.runtime.tools.terminal import _command_cgroup, _open_workdir, sandboxed_argv

log = structlog.get_logger(__name__)
# what an `mcp.ClientSession` reads from and writes to
Streams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]

STOP_GRACE = 0.5  # after stdin closes, how long the server may take to exit by itself
REAP_WAIT = 1.0  # how long to wait for the exit status once the process is gone
STDERR_TAIL = 4000  # bytes of stderr kept to explain a failure
MAX_MESSAGE = 32 * 1024 * 1024  # a line longer than this ends the connection


class StdioServerProcess:
    """One stdio MCP server process of a task: started, spoken to, stopped."""

    def __init__(self, server: McpStdioServer, context: ToolContext) -> None:
        self.server = server
        self.context = context
        self.pid: int | None = None
        self.ended = anyio.Event()  # set once the process has gone (or its stdout closed)
        self._stderr: deque[bytes] = deque()
        self._stderr_size = 0
        self._returncode: int | None = None
        self._broken: str | None = None  # a protocol failure of ours (an oversized line)

    def why_ended(self, when: str = "") -> str:
        """What is known of the end (`exited with status 3 <when>; its stderr ends with: ...`)."""
        if self._broken:
            status = self._broken
        elif self._returncode is None:
            status = "closed its output"
        elif self._returncode < 0:
            status = f"was killed by signal {-self._returncode}"
        else:
            status = f"exited with status {self._returncode}"
        status = f"{status} {when}" if when else status
        tail = self.stderr_tail()
        return f"{status}; its stderr ends with: {tail}" if tail else f"{status} (no stderr)"

    def stderr_tail(self) -> str:
        text = b"".join(self._stderr).decode(errors="replace").strip()
        return text[-STDERR_TAIL:].replace("\n", " | ")[-1000:]

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Streams]:
        """Start the server; the (read, write) streams of its JSON-RPC; stop it on exit."""
        async with contextlib.AsyncExitStack() as cleanup:
            process, cgroup = await self._spawn(cleanup)
            read_in, read_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            write_in, write_out = anyio.create_memory_object_stream[SessionMessage](0)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read_stdout, process, read_in)
                tasks.start_soon(self._write_stdin, process, write_out)
                assert process.stderr is not None
                tasks.start_soon(self._read_stderr, process.stderr)
                try:
                    yield read_out, write_in
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._stop(process, cgroup)
                        for stream in (read_in, read_out, write_in, write_out):
                            await stream.aclose()
                    tasks.cancel_scope.cancel()

    # -- start ---------------------------------------------------------------------------

    async def _spawn(
        self, cleanup: contextlib.AsyncExitStack
    ) -> tuple[Process, cgroups.CommandCgroup | None]:
        context = self.context
        env = dict(context.env or command_environment(context.task_id, context.uid))
        env.update(user_variables(self.server.env))  # (checked at creation; again here)
        limits = cgroups.Limits(context.memory_mb, context.pids, context.cpus)
        cgroup = _command_cgroup(context, limits)
        if cgroup is not None:
            cleanup.push_async_callback(anyio.to_thread.run_sync, cgroup.remove)
            prefix = cgroup.enter_argv()
        else:
            prefix = cgroups.rlimit_argv(limits)
        network = self._network()
        if network is not None:
            cleanup.push_async_callback(anyio.to_thread.run_sync, network.close)
        workdir_fd = _open_workdir(context)
        try:
            argv = self._argv(workdir_fd, network)
            pass_fds = (workdir_fd, *(network.pass_fds() if network else ()))
            process = await anyio.open_process(
                [*prefix, *argv],
                cwd=f"/proc/self/fd/{workdir_fd}",
                env=env,
                start_new_session=True,
                pass_fds=pass_fds if context.sandbox else (),
            )
        finally:
            os.close(workdir_fd)
        self.pid = process.pid
        if network is not None:
            try:
                await anyio.to_thread.run_sync(network.attach)
            except Exception:
                with anyio.CancelScope(shield=True):
                    await self._stop(process, cgroup, grace=0)
                raise
        return process, cgroup

    def _network(self) -> UserNetwork | None:
        """User-mode network for an online sandboxed server, when this machine has it."""
        if not (self.context.sandbox and self.context.network):
            return None
        works, why = network_status()
        if works:
            return UserNetwork()
        log.info("mcp_server_offline", server=self.server.name, reason=why)
        return None

    def _argv(self, workdir_fd: int, network: UserNetwork | None) -> list[str]:
        # (offline, or no user-mode network here: never the host's network)
        network_args = network.bwrap_args() if network is not None else ["--unshare-net"]
        command = [self.server.command, *self.server.args]
        return sandboxed_argv(command, self.context, workdir_fd, network_args)

    # -- the pipes ---------------------------------------------------------------------------

    async def _read_stdout(
        self, process: Process, into: MemoryObjectSendStream[SessionMessage | Exception]
    ) -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async for chunk in process.stdout:
                *lines, buffer = (buffer + chunk).split(b"\n")
                if len(buffer) > MAX_MESSAGE:
                    self._broken = f"sent a message over {MAX_MESSAGE} bytes"
                    return
                for line in lines:
                    if line.strip():
                        await into.send(_parse(line))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            # the exit status first, so the calls that fail on the closed stream can say why
            with anyio.CancelScope(shield=True), anyio.move_on_after(REAP_WAIT):
                if self._broken:
                    self._kill(process)
                self._returncode = await process.wait()
            self.ended.set()
            into.close()

    async def _write_stdin(
        self, process: Process, messages: MemoryObjectReceiveStream[SessionMessage]
    ) -> None:
        assert process.stdin is not None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async with messages:
                async for message in messages:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(data.encode() + b"\n")

    async def _read_stderr(self, stderr: ByteReceiveStream) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for chunk in stderr:
                self._stderr.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size - len(self._stderr[0]) >= STDERR_TAIL:
                    self._stderr_size -= len(self._stderr.popleft())

    # -- stop --------------------------------------------------------------------------------

    async def _stop(
        self, process: Process, cgroup: cgroups.CommandCgroup | None, grace: float = STOP_GRACE
    ) -> None:
        """Close stdin, give the server `grace` seconds, then kill its group and cgroup."""
        assert process.stdin is not None
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
        with anyio.move_on_after(grace):
            while process.returncode is None:
                await anyio.sleep(0.02)
        self._kill(process)
        if cgroup is not None:
            cgroup.kill()
        with anyio.move_on_after(REAP_WAIT):
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    await pipe.aclose()

    @staticmethod
    def _kill(process: Process) -> None:
        # never after the exit status was collected: the pid (= pgid) could be reused
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _parse(line: bytes) -> Any:
    """One JSON-RPC message, or the error for the session to see."""
    try:
        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError as exc:
        return exc
    return SessionMessage(message)
