"""Artifacts every node reads (issue 16): on PostgreSQL an artifact's bytes go into the
database with its row, so a task's plan, diff and trajectory download byte for byte, with
the same headers, through any node, also once the node that ran the task was killed; a
set-aside keeps them, and a deleted task or session takes them along. Real `serve`
processes on one throwaway PostgreSQL and one Redis, and the stores themselves."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

import test_nodes
from direct_db import direct_database
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from test_nodes import Cluster, task_on
from waiting import until

from minidevin.runtime import schemas
from minidevin.runtime.artifacts import write_task_artifacts
from minidevin.runtime.events import utc_now
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import open_store

cluster = test_nodes.cluster  # (the fixtures: three nodes on one PostgreSQL and one Redis)
redis_server = test_nodes.redis_server

# what a download says about its bytes: the same wherever it is served
SAME_HEADERS = ("Content-Type", "Content-Disposition", "Content-Length", "ETag", "Last-Modified")


def download(
    node: ServeProcess, path: str, auth: dict[str, str], **headers: str
) -> tuple[bytes, dict[str, str]]:
    """The body of a GET through `node`, and the headers in `SAME_HEADERS` (status 200)."""
    request = urllib.request.Request(node.url + path, headers={**auth, **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 206)
        return response.read(), {name: response.headers[name] for name in SAME_HEADERS}


async def test_a_tasks_artifacts_download_the_same_through_every_node_even_after_its_node_died(
    cluster: Cluster, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    first, second, third = cluster(3)
    created = ("editor", {"command": "create", "path": "new.txt", "file_text": "\x01 é\n" * 50})
    openai_server.script([ScriptedTurn(text="Writing.", tool_calls=[created]), finish("made")])
    auth, task = task_on(first, tmp_path / "work")  # (its session runs on node 1)
    done = await until(
        lambda: (
            second.request("GET", f"/api/tasks/{task['id']}", None, auth)["status"]
            in ("completed", "failed", "stopped")
        ),
        timeout=30,
        what="the task to end, read through node 2",
    )
    assert done
    listed = second.request("GET", f"/api/tasks/{task['id']}/artifacts", None, auth)
    assert listed == first.request("GET", f"/api/tasks/{task['id']}/artifacts", None, auth)
    assert {a["name"] for a in listed} == {"plan.json", "diff.patch", "trajectory.json"}
    assert second.request("GET", f"/api/tasks/{task['id']}", None, auth)["status"] == "completed"

    served: dict[str, tuple[bytes, dict[str, str]]] = {}
    for artifact in listed:
        path = f"/api/tasks/{task['id']}/artifacts/{artifact['id']}"
        served[path] = download(first, path, auth)  # from the file node 1 wrote
        assert len(served[path][0]) == artifact["size"] > 0
        assert download(second, path, auth) == served[path]  # from the database's bytes
    diff = next(a for a in listed if a["name"] == "diff.patch")
    assert "+\x01 é" in served[f"/api/tasks/{task['id']}/artifacts/{diff['id']}"][0].decode()

    first.close()  # kill -9: nothing of node 1 answers any more

    for path, (content, headers) in served.items():
        assert download(second, path, auth) == (content, headers)  # (its own copy now)
        assert download(third, path, auth) == (content, headers)  # (never read it before)
        part, _ = download(third, path, auth, Range="bytes=3-40")
        assert part == content[3:41]


async def test_bytes_go_in_with_their_rows_stay_when_set_aside_and_go_with_them(
    settings: Settings, tmp_path: Path
) -> None:
    """On PostgreSQL the database holds each artifact's bytes from the commit of its row;
    resume's set-aside keeps them; retention and a session's deletion take them (by
    cascade). On SQLite the database holds none: the files are all."""
    store = open_store(settings)
    await store.open()
    on_postgres = settings.database_url is not None
    try:
        user = await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)
        session = await store.insert_session(user.id, "s", str(tmp_path))
        rows: dict[str, list[Any]] = {}
        for task_id in ("resumed", "expired"):
            request = schemas.TaskRequest(description=task_id)
            await store.insert_task(task_id, session.id, request, "m", 5, utc_now())
            rows[task_id], failures = write_task_artifacts(
                settings.artifacts_dir, task_id, {"steps": [task_id]}, "+\x00\x01 bytes\n",
                {"messages": [task_id]},
            )  # fmt: skip
            assert not failures
            store.add_artifacts(rows[task_id])
        await store.flush()

        async def contents(task_id: str) -> list[bytes | None]:
            return [await store.artifact_content(row.id) for row in rows[task_id]]

        files = {task_id: [row.file.read_bytes() for row in rows[task_id]] for task_id in rows}
        for task_id in rows:
            expected = files[task_id] if on_postgres else [None] * 3
            assert await contents(task_id) == expected

        await store.set_aside_artifacts("resumed")
        names = {artifact.name for artifact in await store.list_artifacts("resumed")}
        assert names == {"run1-plan.json", "run1-diff.patch", "run1-trajectory.json"}
        assert await contents("resumed") == (files["resumed"] if on_postgres else [None] * 3)

        with direct_database(settings) as db:
            db.execute(
                "UPDATE tasks SET status = 'completed', completed_at = ? WHERE id = 'expired'",
                ("2020-01-01T00:00:00.000Z",),
            )
        deleted = await store.delete_expired_task("expired", utc_now())
        assert sorted(deleted or []) == sorted(row.id for row in rows["expired"])
        assert await contents("expired") == [None] * 3

        assert sorted(await store.delete_session(session.id)) == sorted(
            row.id for row in rows["resumed"]
        )
        assert await contents("resumed") == [None] * 3
        if on_postgres:
            with direct_database(settings) as db:
                assert db.execute("SELECT count(*) FROM artifact_contents") == [(0,)]
    finally:
        await store.close()
