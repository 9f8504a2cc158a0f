"""The SQLite store's capacity on its own (informational, beside item 6's figure under load).

The `SqliteStore` (aiosqlite, one batching writer) is fed token events from
another thread as fast as it takes them, through the storage interface; the
baseline is plain `sqlite3` inserting the same rows with the same pragmas and
batch size, in one thread with no loop. (This module benchmarks the SQLite
backend itself, so it may speak SQL.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.storage.sqlite import SqliteStore
from minidevin.runtime.storage.sqlite_batch import encode_json
from minidevin.runtime.storage.sqlite_engine import MAX_BATCH


async def store_events_per_second(path: Path, count: int) -> float:
    store = SqliteStore(path)
    await store.open()
    try:
        user = await store.insert_user("cap@example.com", "cap", None)
        session = await store.insert_session(user.id, "cap", str(path.parent))
        request = schemas.TaskRequest(description="capacity")
        await store.insert_task("t", session.id, request, "m", 1, utc_now())
        stamp = utc_now()
        events = [Event("t", seq, "token", {"content": "x "}, stamp) for seq in range(1, count + 1)]
        started = time.perf_counter()
        feeder = threading.Thread(target=lambda: [store.append(event) for event in events])
        feeder.start()
        await asyncio.to_thread(feeder.join)
        await store.flush()
        return count / (time.perf_counter() - started)
    finally:
        await store.close()


def sqlite_events_per_second(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "CREATE TABLE events (task_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
        "data TEXT NOT NULL, timestamp TEXT NOT NULL, PRIMARY KEY (task_id, seq)) WITHOUT ROWID"
    )
    stamp, data = utc_now(), encode_json({"content": "x "})
    rows = [("t", seq, "token", data, stamp) for seq in range(1, count + 1)]
    started = time.perf_counter()
    for start in range(0, count, MAX_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO events (task_id, seq, type, data, timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            rows[start : start + MAX_BATCH],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def stored_events(path: Path) -> int:
    """How many events the database at `path` holds (read beside the running store)."""
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(count)
