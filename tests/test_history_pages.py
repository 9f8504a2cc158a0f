"""A late subscriber to a long task reads its history in pages, then goes on live.

The log is written through the store (the runtime's own write path), the task
row through the store too, so no model runs: the test decides when each event
is committed. The store's page read is wrapped (the boundary between the
runtime and its storage) only to count the reads and to commit a live event
between two of them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    check_sequence,
    create_session,
    next_message,
    read_until_closed,
    sign_up,
    ws_path,
)

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.task_stream import HISTORY_PAGE

LOGGED = 5_000


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


def event(task_id: str, seq: int, type_: str, **data: Any) -> Event:
    return Event(task_id, seq, type_, data, utc_now())


class PageReads:
    """Wraps the store's history read (`events_wire_page`): records each read; after
    the first read of the task, commits `live` (the next event of the log) before answering, and
    holds the second read until `proceed` is set."""

    def __init__(self, runtime: Runtime, task_id: str, live: Event) -> None:
        self._store, self._read = runtime.store, runtime.store.events_wire_page
        self._task_id, self._live = task_id, live
        self.reads: list[tuple[int, int, int]] = []  # (after, limit, rows returned)
        self.proceed = asyncio.Event()

    async def events_wire_page(self, task_id: str, after: int, limit: int) -> list[Any]:
        if task_id == self._task_id and len(self.reads) == 1:
            await asyncio.wait_for(self.proceed.wait(), 10)
        page = await self._read(task_id, after, limit)
        if task_id == self._task_id:
            self.reads.append((after, limit, len(page)))
            if len(self.reads) == 1:  # committed between two pages: in the history AND live
                self._store.append(self._live)
                await self._store.flush()
        return page


async def test_a_long_history_streams_in_pages_then_live_without_gap_or_duplicate(
    runtime: Runtime,
    client: TestClient,
    buggy_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task_id = str(uuid.uuid4())
    request = schemas.TaskRequest(description="a long task")
    await runtime.store.insert_task(task_id, session["id"], request, "gpt-4o-mini", 50, utc_now())
    runtime.store.append(event(task_id, 1, "status", status="running"))
    for seq in range(2, LOGGED + 1):
        runtime.store.append(event(task_id, seq, "token", content=f"t{seq} "))
    await runtime.store.flush()

    live = event(task_id, LOGGED + 1, "status", status="waiting_input")
    reads = PageReads(runtime, task_id, live)
    monkeypatch.setattr(runtime.store, "events_wire_page", reads.events_wire_page)
    ws = await client.ws_connect(ws_path(task_id, user.token))
    try:
        # the first page is sent before the second is read: its events arrive first
        first_page = [await next_message(ws) for _ in range(HISTORY_PAGE)]
        assert len(reads.reads) == 1, reads.reads
        reads.proceed.set()
        received = first_page
        while received[-1]["seq"] < LOGGED + 1:
            received.append(await next_message(ws))
        assert runtime.hub.subscriber_count(task_id) == 1  # live now, still open
        runtime.store.append(event(task_id, LOGGED + 2, "status", status="completed"))
        received += await read_until_closed(ws)
    finally:
        await ws.close()

    check_sequence(received, task_id)  # in order, no gap, none twice
    assert len(received) == LOGGED + 2
    assert [m["status"] for m in received if m["type"] == "status"] == [
        "running",
        "waiting_input",
        "completed",
    ]
    assert ws.close_code == 1000
    # keyset pages of at most HISTORY_PAGE rows, each after the last seq sent
    assert all(limit == HISTORY_PAGE and rows <= limit for _, limit, rows in reads.reads)
    afters = [after for after, _, _ in reads.reads]
    assert afters == [HISTORY_PAGE * i for i in range(len(afters))]
    assert len(reads.reads) == (LOGGED + 1) // HISTORY_PAGE + 1, reads.reads
