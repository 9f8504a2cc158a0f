"""Per-command cgroups: the limits of a task's commands, and how their tree is found.

Every `terminal` command runs in a fresh cgroup
`<server's own cgroup>/minidevin-<hash of the data directory>/<task>-<pid>-<n>`
(one directory per controller on cgroup v1: memory, pids, cpu; one directory on
cgroup v2). The command is put into it before it can fork: its argv starts with
a tiny `/bin/sh` (still root) that writes its own pid into every
`cgroup.procs` and then `exec`s the rest (the uid switch, bubblewrap, bash).

Limits, written before the command starts:

- memory: `memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes` when swap
  is accounted) on v1, `memory.max` (+ `memory.swap.max` 0) on v2. The private
  `/tmp` is a tmpfs whose pages are charged here too;
- processes: `pids.max`;
- CPU: `cpu.cfs_quota_us` = cpus x `cpu.cfs_period_us` on v1, `cpu.max` on v2.

A command that hits the memory limit (an OOM kill is counted) or the process
limit (a fork was refused) is ended and its output says which limit. At the end
of every command every process still in the cgroup is killed, whatever it did
(double fork, `setsid`, an empty environment), then the directory is removed.
A restarted server removes what a dead one left in its data directory's
cgroups (`reap`); several runtimes with different data directories never touch
each other's cgroups.

Where the server cannot write cgroups (not root, or cgroup v2 without a
delegated subtree), `rlimit_argv` gives the fallback: `prlimit` with
RLIMIT_AS (address space, not resident memory: a rough memory bound) and
RLIMIT_NPROC (counted per uid across all of that uid's processes, so shared by
every task running as the same uid). There is no CPU rate limit without
cgroups (RLIMIT_CPU is total CPU seconds, not a rate), and the tree is then
found by the sandbox's pid namespace and the task marker in the environment.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_KILL_ROUNDS = 200
_RMDIR_GRACE = 2.0
_REAP_DEPTH = 6  # how deep `reap` looks for a previous server's cgroups
_REAP_BREADTH = 5000
_counter = itertools.count(1)
_lock = threading.Lock()


@dataclass(frozen=True)
class CgroupSupport:
    """Which cgroups this server can use: `version` 1, 2 or None (`reason` says why)."""

    version: int | None
    parents: tuple[Path, ...] = ()  # the server's own cgroup, one per controller (v1) or one
    reason: str | None = None
    roots: tuple[Path, ...] = ()  # the hierarchies' mount points, searched by `reap`

    @property
    def label(self) -> str:
        return f"cgroup v{self.version}" if self.version else "rlimit"


def group_name(data_dir: Path | None) -> str:
    """`minidevin-<hash>`: the cgroup directory that holds one data directory's commands."""
    if data_dir is None:  # a tool used without a server: this process's own
        return f"minidevin-local-{os.getpid()}"
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()
    return f"minidevin-{digest[:12]}"


def cgroup_support() -> CgroupSupport:
    """Probed once per process (then cached)."""
    with _lock:
        return _probe()


@cache
def _probe() -> CgroupSupport:
    own = _own_cgroups()
    mounts = _mounts()
    if os.geteuid() != 0:
        return CgroupSupport(None, reason="the server is not root: cgroups are not writable")
    unified = mounts.get("cgroup2")
    if unified is not None and "" in own:
        directory = unified / own[""].lstrip("/")
        try:
            available = (directory / "cgroup.controllers").read_text().split()
        except OSError:
            available = []
        if set(V2_CONTROLLERS) <= set(available):
            if os.access(directory, os.W_OK):
                return CgroupSupport(2, (directory,), roots=(unified,))
            return CgroupSupport(None, reason=f"cgroup v2 directory not writable: {directory}")
    parents = []
    for controller in V1_CONTROLLERS:
        mount = mounts.get(controller)
        if mount is None or controller not in own:
            return CgroupSupport(None, reason=f"no cgroup v1 '{controller}' controller mounted")
        directory = mount / own[controller].lstrip("/")
        if not os.access(directory, os.W_OK):
            return CgroupSupport(None, reason=f"cgroup v1 directory not writable: {directory}")
        parents.append(directory)
    roots = tuple(mounts[controller] for controller in V1_CONTROLLERS)
    return CgroupSupport(1, tuple(parents), roots=roots)


def _own_cgroups() -> dict[str, str]:
    """controller name ("" for v2) -> this process's cgroup path."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    return own


def _mounts() -> dict[str, Path]:
    """controller name (or "cgroup2") -> its mount point, from /proc/self/mountinfo."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3].split(",")
            if fields[3] != "/":  # a subtree mounted (a container): own paths won't line up
                continue
            mount = Path(fields[4])
            if fstype == "cgroup2":
                mounts.setdefault("cgroup2", mount)
            elif fstype == "cgroup":
                for option in options:
                    if option in V1_CONTROLLERS:
                        mounts.setdefault(option, mount)
    return mounts


class CommandCgroup:
    """One command's cgroup: create with limits, enter (argv prefix), watch, kill, remove."""

    def __init__(
        self, support: CgroupSupport, data_dir: Path | None, task_id: str, limits: Limits
    ) -> None:
        self.support = support
        self.limits = limits
        task = "".join(c for c in task_id if c.isalnum() or c in "-_")[:64] or "command"
        name = f"{task}-{os.getpid()}-{next(_counter)}"
        group = group_name(data_dir)
        self.dirs: tuple[Path, ...] = tuple(p / group / name for p in support.parents)
        self._create(group)

    def _create(self, group: str) -> None:
        for parent, directory in zip(self.support.parents, self.dirs, strict=True):
            base = parent / group
            for attempt in range(3):  # the last command of another task may remove `base`
                if not base.is_dir():
                    with contextlib.suppress(FileExistsError):
                        base.mkdir()
                    if self.support.version == 2:
                        _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
                try:
                    directory.mkdir()
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        try:
            self._write_limits()
        except OSError:
            self.remove()
            raise

    def _write_limits(self) -> None:
        memory = self.limits.memory_mb * 1024 * 1024
        if self.support.version == 2:
            (directory,) = self.dirs
            _write(directory / "memory.max", str(memory))
            with contextlib.suppress(FileNotFoundError):
                _write(directory / "memory.swap.max", "0")
            _write(directory / "pids.max", str(self.limits.pids))
            _write(directory / "cpu.max", f"{int(self.limits.cpus * 100_000)} 100000")
            return
        memory_dir, pids_dir, cpu_dir = self.dirs
        _write(memory_dir / "memory.limit_in_bytes", str(memory))
        if (memory_dir / "memory.memsw.limit_in_bytes").exists():
            _write(memory_dir / "memory.memsw.limit_in_bytes", str(memory))
        _write(pids_dir / "pids.max", str(self.limits.pids))
        period = int((cpu_dir / "cpu.cfs_period_us").read_text())
        _write(cpu_dir / "cpu.cfs_quota_us", str(max(1000, int(self.limits.cpus * period))))

    def enter_argv(self) -> list[str]:
        """Prefix an argv with this: a root shell joins the cgroup, then `exec`s the rest."""
        script = 'for f in "$@"; do case $f in --) shift; exec "$@";; esac; '
        script += 'echo $$ > "$f" || exit 125; shift; done; exit 125'
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", script, "sh", *procs, "--"]

    def exceeded(self) -> str | None:
        """Which limit the command hit, as a sentence for the model; None if none."""
        if self.support.version == 2:
            memory_events = pids_events = self.dirs[0]
            oom = _counter_in(memory_events / "memory.events", "oom_kill")
        else:
            memory_events, pids_events = self.dirs[0], self.dirs[1]
            oom = _counter_in(memory_events / "memory.oom_control", "oom_kill")
        if oom:
            return (
                f"the command ran out of memory: the memory limit of a task's commands is "
                f"{self.limits.memory_mb} MB (including files in /tmp); it was killed"
            )
        if _counter_in(pids_events / "pids.events", "max"):
            return (
                f"the command reached the process limit ({self.limits.pids} processes and "
                f"threads for a task's commands): a fork failed and it was killed"
            )
        return None

    def kill(self) -> None:
        """SIGKILL everything in the cgroup until it is empty (bounded)."""
        for directory in self.dirs[:1] if self.support.version == 2 else self.dirs:
            _kill_all(directory)

    def remove(self) -> None:
        """Kill what is left and remove the directories (retrying while exits finish)."""
        self.kill()
        for directory in self.dirs:
            _remove(directory)
            with contextlib.suppress(OSError):  # the data directory's group, once unused
                directory.parent.rmdir()


@dataclass(frozen=True)
class Limits:
    """What one task's commands may use together."""

    memory_mb: int
    pids: int
    cpus: float


def rlimit_argv(limits: Limits) -> list[str]:
    """The fallback without cgroups: `prlimit` setting RLIMIT_AS and RLIMIT_NPROC (hard)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    memory = limits.memory_mb * 1024 * 1024
    return [prlimit, f"--as={memory}:{memory}", f"--nproc={limits.pids}:{limits.pids}", "--"]


def reap(data_dir: Path | None) -> int:
    """Kill every process in `data_dir`'s leftover command cgroups and remove them; how many."""
    group = group_name(data_dir)
    killed = 0
    for root in cgroup_support().roots:
        for base in _find(root, group, _REAP_DEPTH):
            for directory in [d for d in base.iterdir() if d.is_dir()]:
                killed += len(_pids(directory))
                _remove(directory)
    return killed


def _find(root: Path, name: str, depth: int) -> list[Path]:
    """Directories called `name` under `root` (a previous server may have run elsewhere)."""
    found, level = [], [root]
    for _ in range(depth):
        below = []
        for directory in level:
            with contextlib.suppress(OSError):
                for child in directory.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        (found if child.name == name else below).append(child)
        level = below[:_REAP_BREADTH]
    return found


def _pids(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_all(directory: Path) -> None:
    if (directory / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            _write(directory / "cgroup.kill", "1")
    for _ in range(_KILL_ROUNDS):
        pids = _pids(directory)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def _remove(directory: Path) -> None:
    deadline = time.monotonic() + _RMDIR_GRACE
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            _kill_all(directory)
            time.sleep(0.005)


def _counter_in(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)
