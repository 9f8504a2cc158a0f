"""Artifacts every node reads (issue 16): on PostgreSQL an artifact's bytes go into the
database with its row, so a task's plan, diff and trajectory download byte for byte, with
the same headers, through any node, also once the node that ran the task was killed; a
set-aside keeps them, and a deleted task or session takes them along. A file cut short is
never served (copied again from the database's bytes); a node copies an artifact once,
a part at a time, however many first downloads ask for it at once. Real `serve`
processes on one throwaway PostgreSQL and one Redis, the stores and the runtime itself."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_nodes
from direct_db import direct_database
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from test_nodes import Cluster, task_on
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime import schemas
from minidevin.runtime.artifacts import COPY_PART, write_task_artifacts
from minidevin.runtime.errors import NotFound
from minidevin.runtime.events import utc_now
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import ArtifactRow, open_store

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
            return [await store.artifact_content_part(row.id, 0, 1 << 30) for row in rows[task_id]]

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


async def task_with_artifacts(
    runtime: Runtime, artifacts_dir: Path, diff: bytes
) -> tuple[str, str, list[ArtifactRow]]:
    """The owner and id of a task of a new user's with its three artifacts, their files written into
    `artifacts_dir` (this runtime's, or another node's) and their rows (and, on
    PostgreSQL, bytes) committed; `diff` is the diff's bytes."""
    store = runtime.store
    user = await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)
    session = await store.insert_session(user.id, "s", str(artifacts_dir.parent))
    task_id = str(uuid.uuid4())
    request = schemas.TaskRequest(description="d")
    await store.insert_task(task_id, session.id, request, "m", 5, utc_now())
    artifacts_dir.parent.mkdir(parents=True, exist_ok=True)
    patch = artifacts_dir.parent / f"{task_id}.patch"
    patch.write_bytes(diff)
    rows, failures = write_task_artifacts(
        artifacts_dir, task_id, {"steps": ["one"]}, patch, {"messages": []}
    )
    assert not failures
    store.add_artifacts(rows)
    await store.flush()
    return user.id, task_id, rows


def copied_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "artifact_copied" in r.getMessage()]


async def test_a_file_cut_short_is_never_served_and_on_postgresql_is_copied_again(
    runtime: Runtime, tmp_path: Path
) -> None:
    """As a power cut can leave it (its data not on the disk yet): empty, or part of it."""
    artifacts = runtime.settings.artifacts_dir
    owner, task_id, rows = await task_with_artifacts(runtime, artifacts, bytes(range(256)) * 40)
    on_postgres = runtime.settings.database_url is not None
    for row in rows:
        assert row.file is not None
        whole = row.file.read_bytes()
        for cut in (b"", whole[: len(whole) // 2]):
            row.file.write_bytes(cut)
            if not on_postgres:  # (the file is all there is: not served cut short)
                with pytest.raises(NotFound, match="artifact not found"):
                    await runtime.artifact_file(task_id, row.id, owner=owner)
                continue
            _, path = await runtime.artifact_file(task_id, row.id, owner=owner)
            assert path == row.file and path.read_bytes() == whole
    assert not list(artifacts.glob("*.tmp"))


async def test_concurrent_first_downloads_copy_once_a_part_at_a_time(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty downloads at once of an artifact this node never served: the database's bytes
    are read once, in parts of `COPY_PART`, and every download gets the same whole file."""
    if runtime.settings.database_url is None:
        pytest.skip("SQLite holds no artifact bytes: a node serves its own files only")
    caplog.set_level(logging.INFO, logger="minidevin.runtime.artifacts")
    other_node = tmp_path / "other-node" / "artifacts"  # (where the task ran)
    diff = os.urandom(2 * COPY_PART + 12345)
    owner, task_id, rows = await task_with_artifacts(runtime, other_node, diff)
    (row,) = [row for row in rows if row.name == "diff.patch"]

    served = await asyncio.gather(
        *(runtime.artifact_file(task_id, row.id, owner=owner) for _ in range(20))
    )

    paths = {path for _, path in served}
    assert paths == {runtime.settings.artifacts_dir / row.id}
    assert paths.pop().read_bytes() == diff
    (copied,) = copied_events(caplog)  # (one copy: one read of the database's bytes)
    assert row.id in copied and re.search(r"reads\W{1,4}3\b", copied), copied  # (3 parts)
    assert not list(runtime.settings.artifacts_dir.glob("*.tmp"))
    await runtime.artifact_file(task_id, row.id, owner=owner)  # (its own file now)
    assert len(copied_events(caplog)) == 1


async def test_a_copy_whose_writer_died_is_removed_when_the_node_next_copies(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A `*.tmp` file in the artifacts directory older than an hour is a copy (or a task's
    artifact file) whose writer died: the node's first copy sweeps it; a newer one stays."""
    if runtime.settings.database_url is None:
        pytest.skip("SQLite holds no artifact bytes: a node never copies one")
    artifacts = runtime.settings.artifacts_dir
    artifacts.mkdir(parents=True, exist_ok=True)
    stale, fresh = artifacts / f"{uuid.uuid4()}.ab12.tmp", artifacts / f"{uuid.uuid4()}.tmp"
    for left in (stale, fresh):
        left.write_bytes(b"part of a copy")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    owner, task_id, rows = await task_with_artifacts(
        runtime, tmp_path / "other" / "artifacts", b"+x\n"
    )

    _, path = await runtime.artifact_file(task_id, rows[0].id, owner=owner)

    assert path.parent == artifacts and not stale.exists() and fresh.exists()
