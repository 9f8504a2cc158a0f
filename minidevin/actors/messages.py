"""The messages actors exchange: small frozen facts and commands.

Requests from the asyncio side that need an answer carry a
`concurrent.futures.Future` (`reply`) that the actor resolves; the loop awaits
it with `asyncio.wrap_future`, never blocking on pykka futures.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minidevin.runtime.errors import ApiError
from minidevin.runtime.providers.base import ModelTurn
from minidevin.runtime.tools import ToolResult


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task needs to run, fixed when it is created."""

    task_id: str
    session_id: str
    description: str
    model: str
    run_mode: str
    max_iterations: int
    working_directory: Path
    max_cost_usd: float | None = None
    user_id: str = ""  # the owner: whose per-user task cap the task counts against
    # the working directory's (st_dev, st_ino) as claimed: checked at start and every tool call
    workspace_identity: tuple[int, int] | None = None
    context: str = "session"  # "session": starts with the session's earlier tasks; "fresh"
    # a resumed task: its conversation is rebuilt from its log, whose `resumed` event is
    # emitted by its session; `max_iterations`/`max_cost_usd` are then the new totals
    resume: dict[str, Any] | None = None
    # a task still queued when the server stopped, handed back at the next start: its log
    # goes on from `resume["last_seq"]` with no `resumed` event (nothing of it changed)
    requeued: bool = False
    approval_policy: str = "never"  # which terminal and editor calls wait for a person
    # the session's MCP servers (`McpServer.model_dump()`s, values in clear)
    mcp_servers: tuple[dict[str, Any], ...] = ()


# -- asyncio side -> SessionActor ---------------------------------------------------


@dataclass(frozen=True)
class SubmitTask:
    spec: TaskSpec
    reply: Future[str] = field(compare=False)  # the task's status once placed


@dataclass(frozen=True)
class StopTask:
    task_id: str
    reason: str = "Task stopped by user"
    reply: Future[str | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class UserInput:
    task_id: str
    content: str
    reply: Future[bool] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DecideApproval:
    """A person's decision on a call that waits. The reply: "approve" or "reject" (taken),
    "unknown" (no such request), "decided" (already), "ended", or "not_live"."""

    task_id: str
    call_id: str
    decision: str
    reason: str | None = None
    reply: Future[str] | None = field(default=None, compare=False)


class InputsFull(ApiError):
    """A task already holds `MINIDEVIN_MAX_PENDING_INPUTS` unread inputs (a `UserInput` reply)."""

    status = 429
    code = "TOO_MANY_INPUTS"


@dataclass(frozen=True)
class StopAll:
    """Stop every task of the session; reply once none is running any more."""

    reason: str
    reply: Future[None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Closing:
    """The session actor is about to be stopped for `reason` (its running task stops with
    it; its queued tasks stay queued in the store)."""

    reason: str


# -- among actors -----------------------------------------------------------------


@dataclass(frozen=True)
class SlotGranted:
    """A task slot is now this session's (to a task: it may go on running)."""


@dataclass(frozen=True)
class RetryStart:
    """To a session: try again to start its next task (the store could not claim it)."""


@dataclass(frozen=True)
class TaskParked:
    """The running task waits for a person (`ask_user`): its session gives up the slot."""

    task_id: str


@dataclass(frozen=True)
class TaskWantsSlot:
    """The parked task got its answer: it goes on once its session has a slot again."""

    task_id: str


@dataclass(frozen=True)
class TaskEnded:
    task_id: str
    status: str


@dataclass(frozen=True)
class StreamTurn:
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ModelTurnDone:
    turn: ModelTurn


@dataclass(frozen=True)
class ModelTurnFailed:
    code: str
    message: str


@dataclass(frozen=True)
class RunTool:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolDone:
    call_id: str
    result: ToolResult


@dataclass(frozen=True)
class StartMcp:
    """Start the task's MCP servers and add their tools to its registry."""


@dataclass(frozen=True)
class McpStarted:
    problems: tuple[tuple[str, str], ...]  # (server, what failed) for the ones that did not
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # per server up


@dataclass(frozen=True)
class McpFailed:
    """MCP servers found dead (or timed out) while a call ran: (server, why)."""

    problems: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TakeSnapshot:
    pass


@dataclass(frozen=True)
class SnapshotTaken:
    tree: str | None


@dataclass(frozen=True)
class MakeDiff:
    before: str
    path: Path | None = None  # where to write the patch (default: next to the snapshots)
    max_bytes: int = 20 << 20  # beyond: cut, with the files left out listed


@dataclass(frozen=True)
class StoreLost:
    """The task's log closed itself: the store was down past its retry window."""

    detail: str


@dataclass(frozen=True)
class DiffMade:
    patch: Path | str | None  # the patch file, "" for an empty one, or None without a diff


@dataclass(frozen=True)
class ChildCrashed:
    """A child actor died; `child` is "model" or "tools"."""

    child: str
    error: str
