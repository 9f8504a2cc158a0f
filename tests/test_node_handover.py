"""A node shut down gracefully hands its queued work over at once, and with shared storage for
working directories (`MINIDEVIN_SHARED_WORKSPACES`) any node may take a session over (issue 16,
items 3 and 4). Real `minidevin serve` nodes on one PostgreSQL database and one Redis."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from direct_db import direct_database
from redis_server import ThrowawayRedis
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from test_nodes import USER, Cluster, cluster, login, redis_server  # noqa: F401 (fixtures)
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime.settings import Settings
from minidevin.runtime.tools.paths import WorkspaceChanged
from minidevin.runtime.workspace import Workspaces

LEASE = 60.0  # long: what happens well within it is not a lease's expiry
SLEEP = ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 60"})])


def session_with_queue(
    node: ServeProcess, work: Path, descriptions: list[str]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A new user's session created on `node`, with one task each `descriptions`: the first
    runs, the others queue behind it. (auth, tasks)."""
    node.request("POST", "/api/auth/register", USER)
    auth = login(node)
    work.mkdir()
    body = {"name": "s", "working_directory": str(work)}
    session = node.request("POST", "/api/sessions", body, auth)
    tasks = [
        node.request("POST", f"/api/sessions/{session['id']}/tasks", {"description": d}, auth)
        for d in descriptions
    ]
    assert [t["status"] for t in tasks] == ["running"] + ["queued"] * (len(tasks) - 1)
    return auth, tasks


async def command_started(node: ServeProcess, auth: dict[str, str], task_id: str) -> None:
    """Until the task's command runs (watched on `node`)."""
    token = auth["Authorization"].split()[1]
    url = f"{node.url.replace('http', 'ws')}/ws/tasks/{task_id}?token={token}"
    async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
        async for message in ws:
            if json.loads(message.data).get("type") == "tool_call":
                return


def detail(node: ServeProcess, auth: dict[str, str], task: dict[str, Any]) -> dict[str, Any]:
    return node.request("GET", f"/api/tasks/{task['id']}", None, auth)  # type: ignore[no-any-return]


def handed_over(node: ServeProcess) -> dict[str, Any]:
    """The log line of the node's hand-over at its shutdown."""
    lines = [line for line in node.logs() if line.get("event") == "node_handed_over"]
    assert len(lines) == 1, node.log_path.read_text()[-3000:]
    return lines[0]


async def test_a_node_shut_down_gracefully_hands_its_queue_over_at_once(
    cluster: Cluster,  # noqa: F811 (test_nodes' fixture)
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    first, second, _third = cluster(3, MINIDEVIN_LEASE_SECONDS=str(LEASE))
    openai_server.script(
        [SLEEP, ScriptedTurn(text="Second done."), ScriptedTurn(text="Third done.")]
    )
    auth, tasks = session_with_queue(first, tmp_path / "work", ["long", "second", "third"])
    await asyncio.wait_for(command_started(second, auth, tasks[0]["id"]), 15)
    terminated = time.perf_counter()
    assert await asyncio.to_thread(first.terminate, 30) == 0  # SIGTERM: a graceful shutdown

    def queue_done() -> list[dict[str, Any]] | None:
        found = [detail(second, auth, task) for task in tasks[1:]]
        return found if all(d["status"] == "completed" for d in found) else None

    done = await until(
        queue_done, timeout=LEASE / 2, what="the queued tasks to complete on another node"
    )
    seconds = time.perf_counter() - terminated
    print(f"\nqueue done on another node {seconds:.2f} s after SIGTERM (lease {LEASE:.0f} s)")
    assert seconds < LEASE / 2
    assert {d["node_id"] for d in done} <= {"node2", "node3"}
    assert done[0]["completed_at"] <= done[1]["started_at"]  # in their order, one at a time
    assert [d["result"]["summary"] for d in done] == ["Second done.", "Third done."]
    assert detail(second, auth, tasks[0])["status"] == "stopped"  # the running one: stopped
    assert handed_over(first)["left"] == 0


@pytest.mark.parametrize("shared", ["off", "on", "link", "owner"])
async def test_shared_workspaces_let_a_node_on_another_device_take_a_session(
    cluster: Cluster,  # noqa: F811 (test_nodes' fixture)
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    shared: str,
) -> None:
    """The session's claim is made to say another device number for its directory, as the
    claim made by a node on another machine mounting the same share says (one machine here
    cannot show one directory under two devices). Without the setting no node takes it over:
    it is not the directory claimed; with it, the directory is recognised by path, inode and
    owner uid and gid and the session moves with its queue, whose tasks run there with the
    claim's device left as it is (a node compares no device then: the user's sessions on
    other machines keep working); a symbolic link on the path is still refused, and so is a
    directory of the same path and inode but another owner (another filesystem's root)."""
    first, second, _third = cluster(
        3,
        MINIDEVIN_LEASE_SECONDS=str(LEASE),
        MINIDEVIN_SHARED_WORKSPACES="false" if shared == "off" else "true",
    )
    openai_server.script([SLEEP, ScriptedTurn(text="Queued done.")])
    work = tmp_path / "shared" / "work"
    work.parent.mkdir()
    auth, tasks = session_with_queue(first, work, ["long", "queued"])
    await asyncio.wait_for(command_started(second, auth, tasks[0]["id"]), 15)
    real = os.stat(work)
    settings = Settings(database_url=first.env["MINIDEVIN_DATABASE_URL"])
    with direct_database(settings) as db:
        claimed = db.execute(
            "SELECT st_dev, st_ino, st_uid, st_gid FROM workspace_claims WHERE path = ?",
            [str(work)],
        )
        owner = (str(real.st_uid), str(real.st_gid))
        assert claimed == [(str(real.st_dev), str(real.st_ino), *owner)]
        other_machine = str(real.st_dev + 1)
        db.execute("UPDATE workspace_claims SET st_dev = ? WHERE path = ?",
                   [other_machine, str(work)])  # fmt: skip
        if shared == "owner":  # (what a directory of another owner would have claimed)
            db.execute("UPDATE workspace_claims SET st_uid = ? WHERE path = ?",
                       [str(real.st_uid + 1), str(work)])  # fmt: skip
    if shared == "link":  # the same directory (same inode), reached through a link now
        moved = work.rename(tmp_path / "elsewhere")
        work.symlink_to(moved)
    assert await asyncio.to_thread(first.terminate, 30) == 0
    queued = tasks[1]
    if shared == "on":
        done = await until(
            lambda: (d := detail(second, auth, queued))["status"] == "completed" and d,
            timeout=LEASE / 2,
            what="the queued task to complete on another node",
        )
        assert done["node_id"] in ("node2", "node3")
        assert handed_over(first)["left"] == 0
        with direct_database(settings) as db:  # (not rewritten: no node compares its device)
            claimed = db.execute("SELECT st_dev FROM workspace_claims WHERE path = ?",
                                 [str(work)])  # fmt: skip
        assert claimed == [(other_machine,)]
    else:
        record = handed_over(first)  # (written before it exited: the takeovers are done)
        assert record["left"] == 1 and sorted(record["taken_by"]) == ["node2", "node3"]
        left = detail(second, auth, queued)
        assert left["status"] == "queued" and left["node_id"] == "node1"  # kept, for node 1
    assert detail(second, auth, tasks[0])["status"] == "stopped"


async def test_with_shared_workspaces_a_gone_nodes_session_is_taken_over(
    cluster: Cluster,  # noqa: F811 (test_nodes' fixture)
    redis_server: ThrowawayRedis,  # noqa: F811 (test_nodes' fixture)
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    """Node 1 killed while Redis restarts: Redis forgets it ever joined, nobody watches its
    lease. A call for its session finds it gone; after a lease of grace it is taken over."""
    lease = 4.0
    first, second, third = cluster(
        3, MINIDEVIN_LEASE_SECONDS=str(lease), MINIDEVIN_SHARED_WORKSPACES="true"
    )
    openai_server.script([ScriptedTurn(text="Before."), ScriptedTurn(text="After.")])
    auth, tasks = session_with_queue(first, tmp_path / "work", ["before"])
    await until(lambda: detail(second, auth, tasks[0])["status"] == "completed", what="a task")
    redis_server.stop()
    first.close()  # kill -9 while Redis is away: no lease of it expires anywhere
    redis_server.start()
    session_id = detail(second, auth, tasks[0])["session_id"]

    def create() -> dict[str, Any] | None:
        path = f"/api/sessions/{session_id}/tasks"
        try:
            return second.request("POST", path, {"description": "after"}, auth)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as refused:
            assert refused.code == 503  # (node 1 is not running; then Redis is back)
            return None

    found_gone = time.perf_counter()
    task = await until(create, timeout=4 * lease, what="a task created once node 1 is taken over")
    print(f"\ngone node taken over {time.perf_counter() - found_gone:.2f} s after (lease {lease})")
    done = await until(
        lambda: (d := detail(second, auth, task))["status"] == "completed" and d,
        what="the new task to complete",
    )
    assert done["node_id"] in ("node2", "node3")
    logs = second.logs() + third.logs()
    assert any(line.get("event") == "node_found_gone" for line in logs)


async def test_a_takeover_checks_the_directory_as_a_new_session_here_would(
    runtime: Runtime, tmp_path: Path
) -> None:
    """What a taking node accepts (`Workspaces.seen_for_takeover`), with its own settings: the
    claimed directory, reached without a link, of the claim's inode and owner (uid and gid;
    the device too unless shared workspaces) and allowed here as a new session's directory
    would be (data directory, workspace roots, a tenant's rules). With shared workspaces a
    task's admission (`Workspaces.identity`) compares no device either."""
    store, settings = runtime.store, runtime.settings
    user = (await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)).id
    work = tmp_path / "work"
    work.mkdir()
    checked = await runtime.workspaces.claim(user, str(work))
    path, (device, inode) = str(checked.path), checked.identity
    real = os.stat(path)
    owner = real.st_uid, real.st_gid

    def taker(**changes: Any) -> Workspaces:
        return Workspaces(store, settings.model_copy(update=changes))

    async def seen(tenant: bool = True, **changes: Any) -> tuple[int, int] | None:
        return await taker(**changes).seen_for_takeover(user, path, tenant=tenant)

    assert await seen() == checked.identity
    assert await seen(workspace_roots=(tmp_path / "roots",)) is None  # (not inside them here)
    assert await seen(data_dir=tmp_path) is None  # (inside this node's data directory)
    assert await taker().seen_for_takeover("someone else", path, tenant=True) is None
    other_machine = (device + 1, inode)
    await store.put_workspace_claim(path, user, other_machine, owner)
    assert await seen() is None
    assert await seen(shared_workspaces=True) == checked.identity
    assert await taker(shared_workspaces=True).identity(user, path) == checked.identity
    with pytest.raises(WorkspaceChanged):
        await taker().identity(user, path)
    for other_owner in ((owner[0] + 1, owner[1]), (owner[0], owner[1] + 1)):
        await store.put_workspace_claim(path, user, other_machine, other_owner)
        assert await seen(shared_workspaces=True) is None
        with pytest.raises(WorkspaceChanged):
            await taker(shared_workspaces=True).identity(user, path)
    if os.geteuid() == 0:  # a directory of another local user: a tenant may not have it
        os.chown(path, 54321, 54321)
        await store.put_workspace_claim(path, user, checked.identity, (54321, 54321))
        assert await seen(tenant=False) == checked.identity
        assert await seen(tenant=True) is None
        os.chown(path, *owner)
    await store.put_workspace_claim(path, user, checked.identity, owner)
    moved = Path(path).rename(tmp_path / "elsewhere")  # the same directory, through a link
    Path(path).symlink_to(moved)
    assert await seen() is None
