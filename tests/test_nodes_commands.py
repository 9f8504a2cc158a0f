"""Commands sent to any node reach the task's own node (issue 16: "stop, input, approvals and
resume sent to any node reach the owning node's TaskActor through Redis"): three real
`minidevin serve` nodes on one PostgreSQL database and one Redis, the scripted OpenAI
provider; each command goes through a node other than the session's, is answered there, and
acts on the session's node (its command runs under that node's process). Each forwarded
call's HTTP round trip is measured and printed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from test_nodes import Cluster, cluster, redis_server, task_on  # noqa: F401 (fixtures)
from waiting import until

ROUND_TRIP_LIMIT = 0.5  # seconds (the benchmark: ~13 ms for a stop; CI machines are shared)
# prints the pids of the command's shell and of every process above it, one a line
ANCESTRY = {
    "command": 'p=$$; while [ "$p" -gt 1 ]; do echo "pid $p"; '
    "p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2); done"
}
Event = dict[str, Any]


def ws_url(node: ServeProcess, task_id: str, auth: dict[str, str]) -> str:
    """The task's event stream on `node`."""
    token = auth["Authorization"].split()[1]
    return f"{node.url.replace('http', 'ws')}/ws/tasks/{task_id}?token={token}"


async def watch(
    client: aiohttp.ClientSession, url: str, into: list[Event], last: Callable[[Event], bool]
) -> None:
    """The task's events (its log, then live) into `into`, up to the first that is `last`."""
    async with client.ws_connect(url) as ws:
        async for message in ws:
            into.append(json.loads(message.data))
            if last(into[-1]):
                return


def status_is(status: str) -> Callable[[Event], bool]:
    """Whether an event is the task's status becoming `status`."""
    return lambda event: event.get("type") == "status" and event.get("status") == status


async def timed(
    client: aiohttp.ClientSession, node: ServeProcess, path: str, body: Any, auth: dict[str, str]
) -> tuple[int, Any, float]:
    """POST `body` to `path` on `node`: (HTTP status, JSON answer, round trip in seconds)."""
    started = time.perf_counter()
    async with client.post(node.url + path, json=body, headers=auth) as response:
        answer = await response.json()
    return response.status, answer, time.perf_counter() - started


def ran_under(result: Event, node: ServeProcess) -> bool:
    """Whether the `ANCESTRY` command of this `tool_result` ran under `node`'s process."""
    return f"pid {node.process.pid}\n" in result["output"] + "\n"


def report(what: str, seconds: float) -> None:
    """Print a forwarded call's round trip; fail if it is over `ROUND_TRIP_LIMIT`."""
    print(f"\n{what}: {seconds * 1000:.1f} ms")
    assert seconds < ROUND_TRIP_LIMIT, f"{what}: {seconds:.3f} s"


async def test_an_approval_through_another_node_runs_the_command_on_the_sessions_node(
    cluster: Cluster,  # noqa: F811
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    first, second, third = cluster(3)
    openai_server.script(
        [ScriptedTurn(text="Checking.", tool_calls=[("terminal", ANCESTRY)]), ScriptedTurn("Done.")]
    )
    auth, task = task_on(first, tmp_path / "work", approval_policy="always")
    seen: list[Event] = []
    async with aiohttp.ClientSession() as client:
        watcher = asyncio.create_task(
            watch(client, ws_url(third, task["id"], auth), seen, status_is("completed"))
        )
        asked = await until(
            lambda: next((e for e in seen if e.get("type") == "approval_request"), None),
            what="the approval request",
        )
        assert not any(e.get("type") == "tool_result" for e in seen)  # (it waits: not run)
        waiting = second.request("GET", f"/api/tasks/{task['id']}", None, auth)
        assert waiting["status"] == "waiting_approval" and waiting["node_id"] == "node1"
        path = f"/api/tasks/{task['id']}/approvals/{asked['call_id']}"
        status, decided, seconds = await timed(client, second, path, {"decision": "approve"}, auth)
        assert status == 200, decided
        assert decided == {"call_id": asked["call_id"], "decision": "approve"}
        await asyncio.wait_for(watcher, 30)
    report("approval through node 2 of a task on node 1", seconds)
    result = next(e for e in seen if e.get("type") == "tool_result")
    assert result["call_id"] == asked["call_id"] and result["success"] is True, result
    assert ran_under(result, first) and not ran_under(result, second), result["output"]
    assert [e["status"] for e in seen if e.get("type") == "status"] == [
        "queued", "running", "waiting_approval", "running", "completed"
    ]  # fmt: skip
    assert len(openai_server.requests) == 2


async def test_input_through_another_node_reaches_the_models_next_turn(
    cluster: Cluster,  # noqa: F811
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    first, second, third = cluster(3)
    question = "Which branch should I use?"
    answer = "Use the release-7 branch, please."
    openai_server.script(
        [ScriptedTurn(tool_calls=[("ask_user", {"question": question})]), ScriptedTurn("Done.")]
    )
    auth, task = task_on(first, tmp_path / "work")
    seen: list[Event] = []
    async with aiohttp.ClientSession() as client:
        watcher = asyncio.create_task(
            watch(client, ws_url(second, task["id"], auth), seen, status_is("completed"))
        )
        asking = await until(
            lambda: next(filter(status_is("waiting_input"), seen), None), what="the question"
        )
        assert asking["message"] == question
        assert len(openai_server.requests) == 1  # (the model is not asked meanwhile)
        path = f"/api/tasks/{task['id']}/input"
        status, delivered, seconds = await timed(client, third, path, {"content": answer}, auth)
        assert status == 202, delivered
        assert delivered == {"id": task["id"], "delivered": True}
        await asyncio.wait_for(watcher, 30)
    report("input through node 3 of a task on node 1", seconds)
    assert len(openai_server.requests) == 2
    tool_message = openai_server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == answer
    assert answer not in json.dumps(openai_server.requests[0])
    detail = third.request("GET", f"/api/tasks/{task['id']}", None, auth)
    assert detail["status"] == "completed" and detail["node_id"] == "node1"


async def test_a_task_stopped_through_one_node_is_resumed_through_another_on_its_own(
    cluster: Cluster,  # noqa: F811
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    first, second, third = cluster(3)
    openai_server.script(
        [
            ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 60"})]),
            ScriptedTurn(text="Again.", tool_calls=[("terminal", ANCESTRY)]),
            ScriptedTurn("Done after the resume."),
        ]
    )
    auth, task = task_on(first, tmp_path / "work")
    task_path = f"/api/tasks/{task['id']}"
    seen: list[Event] = []
    async with aiohttp.ClientSession() as client:
        url = ws_url(third, task["id"], auth)
        watcher = asyncio.create_task(watch(client, url, seen, status_is("stopped")))
        await until(lambda: any(e.get("type") == "tool_call" for e in seen), what="the command")
        status, stopped, stop_seconds = await timed(client, second, f"{task_path}/stop", None, auth)
        assert status == 200 and stopped == {"id": task["id"], "status": "stopped"}, stopped
        await asyncio.wait_for(watcher, 30)

        message = "Carry on from where you were stopped."
        status, resumed, resume_seconds = await timed(
            client, third, f"{task_path}/resume", {"message": message}, auth
        )
        assert status == 202, resumed
        assert resumed["id"] == task["id"] and resumed["node_id"] == "node1"
        assert resumed["status"] not in ("stopped", "failed", "completed"), resumed["status"]
        whole: list[Event] = []  # (the log again from the start, through node 2, to its end)
        await asyncio.wait_for(
            watch(client, ws_url(second, task["id"], auth), whole, status_is("completed")), 30
        )
    report("stop through node 2 of a task on node 1", stop_seconds)
    report("resume through node 3 of a task on node 1", resume_seconds)
    statuses = [e["status"] for e in whole if e.get("type") == "status"]
    assert statuses[:3] == ["queued", "running", "stopped"], statuses
    assert statuses[-1] == "completed" and "stopped" not in statuses[3:], statuses
    result = [e for e in whole if e.get("type") == "tool_result"][-1]
    assert ran_under(result, first) and not ran_under(result, third), result["output"]
    assert len(openai_server.requests) == 3
    assert message in json.dumps(openai_server.requests[1]["messages"])
    detail = second.request("GET", task_path, None, auth)
    assert detail["status"] == "completed" and detail["node_id"] == "node1"
