"""The task as its log: how big the log is, and how fast a conversation is rebuilt from it.

(a) A 1,000-iteration task's log, as a real task writes it (status, system
prompt, task message, then per model turn: `turn_start`, the text's `token`s,
`model_turn`, `usage`, `tool_call`, a `tool_result` of a few hundred bytes;
a final status), committed through the store on a scratch data directory.
Timed: a newly opened store reading the whole log (`events_after`) plus the
fold (`TaskHistory.rebuild`), which is what a resume costs before the model's
next turn; and the fold alone. Informational, no target.

(b) The log of the README's first `minidevin run` (the shipped example
repository with its replay recording): events, and the bytes its events take
in the database (SQLite pages of the `events` table, from `dbstat`, and the
JSON payload).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Config, Row, bench_settings
from minidevin.api import Runtime
from minidevin.runtime import event_types as ev
from minidevin.runtime.events import Event, TaskEventLog, utc_now
from minidevin.runtime.providers.replay import split_words
from minidevin.runtime.schemas import TaskRequest
from minidevin.runtime.storage import open_store
from minidevin.runtime.task_history import TaskHistory

EXAMPLE = REPO / "examples" / "buggy-calc"
RECORDING = REPO / "examples" / "buggy-calc.trajectory.json"
README_TASK = "Fix the failing test in test_calc.py"
ITERATIONS = 1000
TASK_ID = "bench-rebuild-task"


def tool_output(turn: int) -> str:
    """A pytest-like result of a few hundred bytes."""
    lines = [
        "============================= test session starts ==============================",
        f"collected {turn % 40 + 3} items",
        "",
        f"tests/test_module_{turn % 17}.py ..F.                                          [100%]",
        "",
        f"FAILED tests/test_module_{turn % 17}.py::test_case_{turn} - AssertionError: 3 != 4",
        "========================= 1 failed, 3 passed in 0.04s ==========================",
    ]
    return "\n".join(lines)


def turn_events(turn: int) -> list[ev.EventBody]:
    """One model turn with its tool call and result, as the TaskActor emits them."""
    text = f"The test for module {turn % 17} still fails; I'll look at case {turn} and rerun it."
    command = {"command": f"python3 -m pytest tests/test_module_{turn % 17}.py -q"}
    arguments = json.dumps(command)
    call_id = f"call_{turn:05d}"
    usage = {"prompt_tokens": 1200 * turn, "completion_tokens": 40 * turn, "cost_usd": 0.0}
    return [
        ev.TurnStart(iteration=turn),
        *(ev.Token(content=piece) for piece in split_words(text)),
        ev.ModelTurnEvent(
            content=text,
            tool_calls=[ev.ModelToolCall(id=call_id, name="terminal", arguments=arguments)],
            finish_reason="tool_calls",
        ),
        ev.UsageUpdate(usage=usage, iteration=turn),
        ev.ToolCallEvent(call_id=call_id, tool="terminal", input=command),
        ev.ToolResultEvent(
            call_id=call_id, tool="terminal", output=tool_output(turn), success=True
        ),
    ]


def long_log(system_prompt: str) -> list[ev.EventBody]:
    events: list[ev.EventBody] = [
        ev.Status(status="queued", message="Task queued"),
        ev.Status(status="running", message="Task started"),
        ev.SystemPrompt(content=system_prompt),
        ev.UserMessage(content="Make every test of the project pass.", source="task"),
    ]
    for turn in range(1, ITERATIONS + 1):
        events += turn_events(turn)
    events.append(ev.Status(status="failed", message=f"Stopped after {ITERATIONS} iterations"))
    return events


def table_bytes(database: Path, task_id: str) -> dict[str, int]:
    """Events, the SQLite pages of the events table, and the JSON payload of one task."""
    with sqlite3.connect(database) as conn:
        count, payload = conn.execute(
            "SELECT count(*), coalesce(sum(length(CAST(data AS BLOB))), 0) FROM events "
            "WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        (pages,) = conn.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
            "(SELECT name FROM sqlite_master WHERE tbl_name = 'events')"
        ).fetchone()
        (tasks,) = conn.execute("SELECT count(DISTINCT task_id) FROM events").fetchone()
    assert tasks == 1, "the events table holds this one task only"
    return {"events": count, "table_bytes": pages, "payload_bytes": payload}


async def example_log(workdir: Path) -> tuple[dict[str, int], dict[str, int], str]:
    """Run the README's example; its log's sizes, its event types, its system prompt."""
    repo = Path(shutil.copytree(EXAMPLE, workdir / "buggy-calc"))
    settings = bench_settings(workdir / "example-data")
    async with Runtime(settings) as runtime:
        session = await runtime.create_session("example", str(repo))
        task = await runtime.create_task(session.id, README_TASK, model=f"replay:{RECORDING}")
        detail = await runtime.wait(task.id)
        assert detail.status == "completed", detail
        events = await runtime.store.events_after(task.id, 0)
    types: dict[str, int] = {}
    for event in events:
        types[event.type] = types.get(event.type, 0) + 1
    prompt = next(e.data["content"] for e in events if e.type == "system_prompt")
    return table_bytes(settings.database_path, task.id), types, prompt


async def commit_long_log(data_dir: Path, system_prompt: str) -> tuple[int, float]:
    """The 1,000-iteration log committed through the store: (events, seconds to commit)."""
    store = open_store(bench_settings(data_dir))
    await store.open()
    try:
        user = await store.insert_user("rebuild@example.com", "rebuild", None)
        session = await store.insert_session(user.id, "rebuild", str(data_dir))
        request = TaskRequest(description="Make every test of the project pass.")
        await store.insert_task(TASK_ID, session.id, request, "gpt-4o", ITERATIONS, utc_now())
        bodies = long_log(system_prompt)
        log = TaskEventLog(TASK_ID, store.append)
        started = time.perf_counter()
        for body in bodies:
            log.emit(body)
        await store.flush()
        return len(bodies), time.perf_counter() - started
    finally:
        await store.close()


async def read_and_fold(data_dir: Path) -> tuple[float, float, float, TaskHistory]:
    """A newly opened store: seconds to read the log, to fold it, and to open the store."""
    store = open_store(bench_settings(data_dir))
    started = time.perf_counter()
    await store.open()
    try:
        opened = time.perf_counter()
        events: list[Event] = await store.events_after(TASK_ID, 0)
        read = time.perf_counter()
        history = TaskHistory.rebuild(events)
        folded = time.perf_counter()
    finally:
        await store.close()
    return read - opened, folded - read, opened - started, history


async def run(cfg: Config) -> list[Row]:
    workdir = cfg.workdir / "rebuild"
    workdir.mkdir(parents=True, exist_ok=True)
    example, types, prompt = await example_log(workdir)
    example_notes = ", ".join(f"{n} {t}" for t, n in sorted(types.items(), key=lambda x: -x[1]))

    data_dir = workdir / "long-data"
    count, commit_seconds = await commit_long_log(data_dir, prompt)
    sizes = table_bytes(bench_settings(data_dir).database_path, TASK_ID)
    assert sizes["events"] == count
    reads, folds, opens = [], [], []
    for _ in range(1 if cfg.quick else 5):
        read, fold, opened, history = await read_and_fold(data_dir)
        reads.append(read)
        folds.append(fold)
        opens.append(opened)
    assert history.iterations == ITERATIONS and len(history.messages) == 2 + 2 * ITERATIONS
    assert not history.open_calls
    read_ms, fold_ms = statistics.median(reads) * 1000, statistics.median(folds) * 1000
    long_notes = (
        f"{count} events, {sizes['table_bytes'] / 2**20:.1f} MiB of events table "
        f"({sizes['payload_bytes'] / 2**20:.1f} MiB JSON); median of {len(reads)}; "
        f"store open {statistics.median(opens) * 1000:.0f} ms more; "
        f"committing the log took {commit_seconds:.2f} s"
    )
    extra: dict[str, Any] = {"long_log": sizes, "example_types": types}
    return [
        Row(
            "rebuild",
            "1,000-iteration task: read log + fold",
            read_ms + fold_ms,
            "ms",
            notes=long_notes,
            extra=extra,
        ),
        Row("rebuild", "1,000-iteration task: fold alone", fold_ms, "ms"),
        Row("rebuild", "1,000-iteration task: events", count, "events"),
        Row("rebuild", "1,000-iteration task: events table", sizes["table_bytes"] / 1024, "KiB"),
        Row("rebuild", "README example: events", example["events"], "events", notes=example_notes),
        Row("rebuild", "README example: events table", example["table_bytes"] / 1024, "KiB"),
        Row("rebuild", "README example: JSON payload", example["payload_bytes"] / 1024, "KiB"),
    ]
