"""The environment a task's commands see, and the reaper of what a dead server left.

Commands get an allowlist, never the server's own variables (provider keys,
the JWT secret, anything else the operator exported): `PATH`, `LANG`, `LC_*`,
`TERM`, `TZ`, `SHELL` from the server; `HOME`, `USER` and `LOGNAME` of the uid
the commands run as; and `MINIDEVIN_TASK_ID`, which marks every process of a
task so a restarted server can find (and kill) what a crashed one left where
cgroups are not available. Sandboxed or not, the allowlist is the same (inside
bubblewrap `HOME` is the private `/tmp`).

`PYTHONDONTWRITEBYTECODE=1` is set: an agent edits a module and runs it again
within the same second, and a same-size edit would otherwise run the stale
`__pycache__` bytecode (its check is the source's whole-second mtime and size);
it also keeps bytecode out of the user's tree.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
from collections.abc import Mapping
from pathlib import Path

from minidevin.runtime.tools import cgroups
from minidevin.runtime.variables import unsafe_name

ALLOWED = ("PATH", "LANG", "TERM", "TZ", "SHELL")
ALLOWED_PREFIXES = ("LC_",)
TASK_MARKER = "MINIDEVIN_TASK_ID"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def user_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """`variables` without the names `unsafe_name` refuses (stored before they were)."""
    return {name: value for name, value in variables.items() if not unsafe_name(name)}


def command_environment(
    task_id: str, uid: int | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allowlisted environment of a task's commands, running as `uid` (None: the server's)."""
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if name in ALLOWED or name.startswith(ALLOWED_PREFIXES)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if uid is None or uid == os.geteuid():
        for name in ("HOME", "USER", "LOGNAME"):
            if name in source:
                env[name] = source[name]
    else:
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = str(uid), "/"
        env.update(USER=name, LOGNAME=name)
        env["HOME"] = home if os.path.isdir(home) else "/tmp"
    if task_id:
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


def kill_task_processes(task_ids: set[str], data_dir: Path | None = None) -> int:
    """SIGKILL what a dead server left; how many processes.

    Everything in `data_dir`'s leftover command cgroups (whatever it did to hide:
    double fork, `setsid`, an empty environment), then every process (and its
    process group) marked with one of `task_ids`.
    """
    killed = cgroups.reap(data_dir) if data_dir is not None else 0
    pids = processes_of_tasks(task_ids) if task_ids else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return killed + len(pids)
