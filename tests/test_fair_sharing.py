"""Fair sharing of task slots between users, through a real runtime.

Per-user caps (`max_tasks_per_user`) next to the global one, no head-of-line
blocking of one user by another's queue, and tasks waiting for a person
(`ask_user`) holding no slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime import schemas
from minidevin.runtime.settings import Settings

PASSWORD = "correct horse battery"
TurnsFor = Callable[[str], list[ScriptedTurn]]


def wait_for_gate() -> ScriptedTurn:
    """A command that runs until a file `gate` appears in its working directory."""
    command = "while [ ! -f gate ]; do sleep 0.02; done"
    return ScriptedTurn(tool_calls=[("terminal", {"command": command, "timeout": 60})])


def open_gates(*workspaces: Path) -> None:
    for workspace in workspaces:
        (workspace / "gate").write_text("go")


def ask(question: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[("ask_user", {"question": question})])


class PerTask:
    """Scripted turns per task description (tasks run concurrently, in any order)."""

    def __init__(self) -> None:
        self.turns: dict[str, deque[ScriptedTurn]] = {}

    def add(self, description: str, *turns: ScriptedTurn) -> str:
        self.turns[description] = deque(turns)
        return description

    def __call__(self, body: dict[str, Any]) -> ScriptedTurn:
        description = next(  # the task's own (after any earlier tasks of its session)
            m["content"]
            for m in body["messages"]
            if m["role"] == "user" and m["content"] in self.turns
        )
        return self.turns[description].popleft()


@asynccontextmanager
async def runtime_with(
    tmp_path: Path, database_url: str | None, **settings: Any
) -> AsyncIterator[tuple[Runtime, PerTask]]:
    script = PerTask()
    async with ScriptedOpenAIServer(responder=script) as server:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}
        config = Settings(
            database_url=database_url, data_dir=tmp_path / "data", jwt_secret="f" * 40, **settings
        )
        async with Runtime(config, provider_env=env) as runtime:
            yield runtime, script


async def user(runtime: Runtime, name: str) -> str:
    request = schemas.RegisterRequest(email=f"{name}@example.com", password=PASSWORD, name=name)
    return (await runtime.accounts.register(request)).id


OWNERS: dict[str, str] = {}  # task id -> its user's id


async def start(runtime: Runtime, owner: str, workspace: Path, description: str) -> str:
    workspace.mkdir(parents=True, exist_ok=True)
    session = await runtime.create_session(description, workspace, owner=owner)
    task_id = (await runtime.create_task(session.id, description, owner=owner, model="gpt-4o")).id
    OWNERS[task_id] = owner
    return task_id


async def status(runtime: Runtime, task_id: str) -> str:
    return (await runtime.get_task(task_id, owner=OWNERS[task_id])).status


async def wait(runtime: Runtime, task_id: str) -> schemas.TaskDetail:
    return await runtime.wait(task_id, owner=OWNERS[task_id])


async def send(runtime: Runtime, task_id: str, content: str) -> bool:
    return await runtime.send_input(task_id, content, owner=OWNERS[task_id])


async def statuses(runtime: Runtime, task_ids: list[str]) -> list[str]:
    return [await status(runtime, task_id) for task_id in task_ids]


async def eventually(runtime: Runtime, task_id: str, wanted: str, timeout: float = 20) -> None:
    """Poll the task's stored status until it is `wanted` (fails after `timeout`)."""
    current = ""

    async def reached() -> bool:
        nonlocal current
        current = await status(runtime, task_id)
        return current == wanted

    await until(reached, timeout, what=lambda: f"task to become {wanted}: still {current}")


async def test_one_users_queue_does_not_block_another_user(
    tmp_path: Path, database_url: str | None
) -> None:
    async with runtime_with(
        tmp_path, database_url, max_concurrent_tasks=3, max_tasks_per_user=2
    ) as (rt, script):
        ada, bob = await user(rt, "ada"), await user(rt, "bob")
        ada_tasks = []
        for n in range(4):
            description = script.add(f"ada {n}", wait_for_gate(), finish(f"ada {n}"))
            ada_tasks.append(await start(rt, ada, tmp_path / f"ada{n}", description))
        assert await statuses(rt, ada_tasks) == ["running", "running", "queued", "queued"]
        assert rt.slots.running(ada) == 2 and rt.slots.running() == 2

        first = await start(
            rt, bob, tmp_path / "bob0", script.add("bob 0", wait_for_gate(), finish("b0"))
        )
        second = await start(rt, bob, tmp_path / "bob1", script.add("bob 1", finish("b1")))
        assert await statuses(rt, [first, second]) == ["running", "queued"]

        # bob's first task ends: its slot goes to bob's second task, not to ada's
        # tasks queued before it (ada is at her own cap)
        open_gates(tmp_path / "bob0")
        assert (await wait(rt, first)).status == "completed"
        assert (await wait(rt, second)).result.summary == "b1"
        assert await statuses(rt, ada_tasks) == ["running", "running", "queued", "queued"]

        open_gates(*(tmp_path / f"ada{n}" for n in range(4)))
        for task_id in ada_tasks:
            assert (await wait(rt, task_id)).status == "completed"
        await until(lambda: rt.slots.running() == 0, what="no slot held")


async def test_tasks_waiting_for_a_person_hold_no_slot(
    tmp_path: Path, database_url: str | None
) -> None:
    async with runtime_with(
        tmp_path, database_url, max_concurrent_tasks=2, max_tasks_per_user=8
    ) as (rt, script):
        ada, bob = await user(rt, "ada"), await user(rt, "bob")
        asking = []
        for n in range(8):
            description = script.add(f"ask {n}", ask(f"question {n}?"), finish(f"answered {n}"))
            asking.append(await start(rt, ada, tmp_path / f"ask{n}", description))
        for task_id in asking:  # all eight get to ask, two slots at a time
            await eventually(rt, task_id, "waiting_input")
        await until(lambda: rt.slots.running() == 0, what="no slot held")

        other = await start(rt, bob, tmp_path / "bob", script.add("bob works", finish("done")))
        assert (await wait(rt, other)).status == "completed"

        for n, task_id in enumerate(asking):
            assert await send(rt, task_id, f"answer {n}")
        for n, task_id in enumerate(asking):
            assert (await wait(rt, task_id)).result.summary == f"answered {n}"
        await until(lambda: rt.slots.running() == 0, what="no slot held")


async def test_an_answered_task_queues_for_a_slot_and_then_runs(
    tmp_path: Path, database_url: str | None
) -> None:
    async with runtime_with(tmp_path, database_url, max_concurrent_tasks=1) as (rt, script):
        ada, bob = await user(rt, "ada"), await user(rt, "bob")
        asker = await start(rt, ada, tmp_path / "a", script.add("ask", ask("ok?"), finish("yes")))
        await eventually(rt, asker, "waiting_input")
        holder = await start(
            rt, bob, tmp_path / "b", script.add("hold", wait_for_gate(), finish("held"))
        )
        assert await status(rt, holder) == "running"  # the asker gave the only slot back

        assert await send(rt, asker, "yes")
        await eventually(rt, asker, "queued")  # answered, but no slot is free
        open_gates(tmp_path / "b")
        assert (await wait(rt, holder)).status == "completed"
        assert (await wait(rt, asker)).result.summary == "yes"
        events = [event async for event in rt.events(asker, owner=ada)]
        seen = [e.data["status"] for e in events if e.type == "status"]
        assert seen == ["queued", "running", "waiting_input", "queued", "running", "completed"]


async def test_stopping_a_task_queued_after_its_answer_frees_the_line(
    tmp_path: Path, database_url: str | None
) -> None:
    async with runtime_with(tmp_path, database_url, max_concurrent_tasks=1) as (rt, script):
        ada, bob = await user(rt, "ada"), await user(rt, "bob")
        asker = await start(rt, ada, tmp_path / "a", script.add("ask", ask("ok?"), finish("x")))
        await eventually(rt, asker, "waiting_input")
        holder = await start(
            rt, bob, tmp_path / "b", script.add("hold", wait_for_gate(), finish("held"))
        )
        assert await send(rt, asker, "yes")
        await eventually(rt, asker, "queued")
        assert (await rt.stop_task(asker, owner=ada)).status == "stopped"
        open_gates(tmp_path / "b")
        assert (await wait(rt, holder)).status == "completed"
        after = await start(rt, ada, tmp_path / "c", script.add("after", finish("after")))
        assert (await wait(rt, after)).result.summary == "after"
        await until(lambda: rt.slots.running() == 0, what="no slot held")
