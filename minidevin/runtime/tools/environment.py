"""The environment a task's commands see: the server's, minus its secrets.

A command the model runs could print its environment into the conversation,
the events and the trajectory, so variables that look like credentials
(`*KEY*`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*CREDENTIAL*`, `*AUTH*`) and
minidevin's own settings are removed. `MINIDEVIN_TASK_ID` marks every process
of a task, so a restarted server can find (and kill) what a crashed one left.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
TASK_MARKER = "MINIDEVIN_TASK_ID"


def command_environment(task_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if not name.startswith("MINIDEVIN_")
        and not any(marker in name.upper() for marker in SECRET_MARKERS)
    }
    env[TASK_MARKER] = task_id
    return env


def processes_of_tasks(task_ids: set[str]) -> list[int]:
    """Host pids whose environment carries one of `task_ids` as `MINIDEVIN_TASK_ID`."""
    wanted = {f"{TASK_MARKER}={task_id}".encode() for task_id in task_ids}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(variables):
            found.append(int(entry.name))
    return found


def kill_task_processes(task_ids: set[str]) -> int:
    """SIGKILL every process (and its process group) left by `task_ids`; how many."""
    pids = processes_of_tasks(task_ids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
