"""Waiting on conditions with a deadline (never a fixed sleep to synchronise).

`wait_for` (blocking) and `until` (async) are the one way tests wait: both poll
a condition through the same deadline loop, return its first truthy value, and
fail with an `AssertionError` naming what was awaited when time runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# what was awaited, for the failure message: text, or a callable read at the deadline
What = str | Callable[[], object]


def _checks(timeout: float, interval: float) -> Iterator[float | None]:
    """The deadline loop: one item per check of the condition.

    Each item is the pause to take if that check fails; the last (at the
    deadline) is None: the condition had its final look.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield min(interval, left)
    yield None


def _timed_out(timeout: float, what: What, condition: object) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g}s waiting for {described or condition}")


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, what: What = "", interval: float = 0.01
) -> T:
    """Poll `condition` until it is truthy and return that value; fail after `timeout` s."""
    for pause in _checks(timeout, interval):
        if value := condition():
            return value
        if pause is None:
            raise _timed_out(timeout, what, condition)
        time.sleep(pause)
    raise AssertionError("unreachable")  # (_checks always ends with None)


async def until(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    what: What = "",
    interval: float = 0.01,
) -> T:
    """`wait_for` on the event loop: the condition may be a plain or an async callable."""
    for pause in _checks(timeout, interval):
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if pause is None:
            raise _timed_out(timeout, what, condition)
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def fresh_minute(needed: float = 8.0) -> None:
    """Wait, if need be, until at least `needed` s of the wall clock's minute are left.

    Rate limits count in fixed minutes: a test that counts requests up to a
    limit must not straddle a minute's end (the count starts again at 0 there).
    With the default, seven tests in eight do not wait.
    """
    await until(
        lambda: 60 - time.time() % 60 >= needed,
        timeout=needed + 5,
        what=f"a minute with {needed:g} s left",
        interval=0.1,
    )


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not process_gone(pid)


def pids_running(marker: str, *, prefix: bool = False) -> list[int]:
    """Host pids of live processes whose command line contains (or starts with) `marker`.

    Works whether or not the command ran in a sandbox with its own pid namespace
    (where a pid the command writes down means nothing on the host).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        matches = cmdline.startswith(marker) if prefix else marker in cmdline
        if matches and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found
