"""How a task's conversation begins: fresh, as a follow-up, or rebuilt from its log."""

from __future__ import annotations

import structlog

from minidevin.actors.deps import Deps
from minidevin.actors.messages import TaskSpec
from minidevin.runtime import agent, event_types
from minidevin.runtime.context import input_budget
from minidevin.runtime.events import FINAL_STATUSES
from minidevin.runtime.followups import EarlierTask, session_context
from minidevin.runtime.instructions import instructions_for
from minidevin.runtime.providers.base import ToolCall
from minidevin.runtime.task_history import INTERRUPTED_OUTPUT, UNANSWERED_OUTPUT, TaskHistory
from minidevin.runtime.tools import ToolContext

log = structlog.get_logger(__name__)


def load_secrets(spec: TaskSpec, deps: Deps) -> dict[str, str]:
    """The values of the secrets the task's session hands its commands (name -> value)."""
    if deps.secrets is None:
        return {}
    store, secrets = deps.store, deps.secrets

    async def read() -> dict[str, str]:
        names = await store.session_secret_names(spec.session_id)
        return await secrets.values(spec.user_id, names) if names else {}

    return store.call_blocking(read)


def load_history(spec: TaskSpec, deps: Deps) -> TaskHistory:
    """A resumed task's history, folded from its whole committed log; empty for a new task."""
    if spec.resume is None:
        return TaskHistory()
    store = deps.store
    return TaskHistory.rebuild(store.call_blocking(lambda: store.task_log(spec.task_id)))


def interrupted_results(
    history: TaskHistory, skip: set[str] | frozenset[str] = frozenset()
) -> list[event_types.EventBody]:
    """For a resumed task: a result for each call its end cut short (but those in `skip`),
    before the model goes on (announced first with a `tool_call` if clients never saw one)."""
    answers: list[event_types.EventBody] = []
    for call in history.open_calls.values():
        call_id, tool = call["id"], call["name"]
        if call_id in skip:
            continue
        if call_id not in history.announced:
            arguments = ToolCall(call_id, tool, call["arguments"])
            answers.append(
                event_types.ToolCallEvent(
                    call_id=call_id, tool=tool, input=agent.input_of(arguments)
                )
            )
        output = UNANSWERED_OUTPUT if tool == "ask_user" else INTERRUPTED_OUTPUT
        answers.append(
            event_types.ToolResultEvent(call_id=call_id, tool=tool, output=output, success=False)
        )
    return answers


def opening_events(spec: TaskSpec, deps: Deps, context: ToolContext) -> list[event_types.EventBody]:
    """A new task's first conversation events: its system prompt (with the repository's
    AGENTS.md, read as its commands run), the session's earlier tasks unless its
    `context` is "fresh", and its description."""
    instructions = instructions_for(context)
    opening: list[event_types.EventBody] = [
        event_types.SystemPrompt(
            content=agent.system_message(spec.working_directory, instructions)["content"],
            instructions=instructions.record(),
        )
    ]
    earlier = earlier_tasks(spec, deps) if spec.context == "session" else []
    if earlier:
        budget = input_budget(deps.providers.resolve(spec.model).context_window) // 2
        opening.append(
            event_types.SessionContext(
                tasks=[task.task_id for task in earlier],
                messages=session_context(earlier, budget),
            )
        )
    opening.append(event_types.UserMessage(content=spec.description, source="task"))
    return opening


def earlier_tasks(spec: TaskSpec, deps: Deps) -> list[EarlierTask]:
    """The session's tasks created before this one that have ended, oldest first."""
    store = deps.store

    async def read() -> list[EarlierTask]:
        tasks = []
        for row in await store.tasks_before(spec.session_id, spec.task_id):
            if row["status"] not in FINAL_STATUSES:
                continue
            try:
                history = TaskHistory.rebuild(await store.task_log(row["id"]))
            except (KeyError, TypeError, ValueError) as exc:  # a log this version cannot fold
                log.warning("earlier_task_unreadable", task_id=row["id"], error=repr(exc))
                continue
            tasks.append(EarlierTask(row["id"], row["description"], row["status"], history))
        return tasks

    return store.call_blocking(read)
