"""The bubblewrap (`bwrap`) sandbox around `terminal` commands, and who they run as.

Who: commands never run as root. `run_identity` picks the uid/gid: the working
directory's owner when that is not root, else `MINIDEVIN_SANDBOX_UID` (gid the
same number). When the server is root, bwrap runs as root to build the view
(it resolves even `--bind-fd` sources by path, so an unprivileged bwrap could
not reach a working directory under a 0700 parent), and inside it
`drop_privileges` puts `setpriv` in front of the command (new uid/gid, no
supplementary groups, no capabilities, empty bounding set, `no_new_privs`)
before anything of the command runs: a file the command makes belongs to that
uid (a `chmod 4755` copy of a program is setuid to it, not to root), and
`/proc/sys`, `/proc/sysrq-trigger` and the rest of the kernel-writable `/proc`
are read-only by their mode. bwrap's own pid 1 stays root without effective
capabilities. When the server is not root, bwrap runs unprivileged in a user
namespace, commands run as the server's uid and `/health` says
`uid_isolation: false`.

What a sandboxed command sees (a private root, not the host's `/`):

- read-only: `/usr` and the `/bin`, `/sbin`, `/lib*` links or directories the
  host has; `/etc` with `shadow`, `gshadow` (and their `-` backups) covered by
  `/dev/null`, and `/etc/resolv.conf`'s target when it links elsewhere (DNS);
  the interpreter's install directories when they are outside `/usr` (a
  virtualenv); `MINIDEVIN_SANDBOX_READ_PATHS`;
- a minimal `/dev`, a fresh `/proc` of its own pid namespace, a private `/tmp`
  tmpfs of `MINIDEVIN_SANDBOX_TMP_MB` (its pages count as the command's memory);
- the working directory, read-write, bound from a directory fd the tool opened
  itself (`O_PATH|O_NOFOLLOW`) after checking it is the directory the session
  was created on, so a directory swapped for a link is refused, not followed;
- nothing else: not `/root`, `/home`, `/var`, `/srv`, `/opt`, other workspaces,
  the server's data directory, nor the server's processes (`--unshare-pid`:
  bwrap's reaper is pid 1, and when it dies the kernel kills everything inside);
  `hide` paths inside a bound directory are covered (an empty tmpfs);
- fresh IPC and UTS namespaces, no capabilities (`--cap-drop ALL`), no network
  (`--unshare-net`: only its own loopback) unless `network`;
- one process group with the bwrap that the TerminalTool starts in a session of
  its own (no controlling terminal: no TIOCSTI). `--die-with-parent` ends it
  with the server; the task's cgroup (see `cgroups.py`) kills the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from minidevin.runtime.errors import Unavailable
from minidevin.runtime.tools import cgroups
from minidevin.runtime.tools.network import network_status

PROBE_TIMEOUT = 15.0
PROBE_UID = 65534
SETPRIV = shutil.which("setpriv")
READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
COVERED_ETC = ("shadow", "shadow-", "gshadow", "gshadow-")


@dataclass(frozen=True)
class SandboxStatus:
    """Whether bwrap works on this machine; `reason` says why not."""

    works: bool
    reason: str | None = None
    bwrap: str | None = None  # the executable's path

    def as_health(self, mode: str) -> dict[str, object]:
        isolated, why = uid_isolation()
        support = cgroups.cgroup_support()
        health: dict[str, object] = {
            "available": self.works,
            "mode": mode,
            "reason": self.reason,
            "uid_isolation": isolated,
            "limits": support.label,
        }
        if why:
            health["uid_isolation_reason"] = why
        if support.reason:
            health["limits_reason"] = support.reason
        online, why = network_status()
        health["network"] = "user-mode (slirp4netns)" if online else "none"
        if why:
            health["network_reason"] = why
        return health


class SandboxUnavailable(Unavailable):
    """A task asked for under `sandbox=required` on a machine where bwrap does not work."""

    code = "SANDBOX_UNAVAILABLE"


_lock = threading.Lock()


def sandbox_status() -> SandboxStatus:
    """Checked once per process (then cached): does `bwrap` exist and really work here?"""
    with _lock:
        return _probe()


def run_identity(working_directory: Path, fallback_uid: int) -> tuple[int, int]:
    """The uid/gid commands in `working_directory` run as: its owner, or `fallback_uid`."""
    try:
        info = os.stat(working_directory)
    except OSError:  # refused later, when the tool opens it
        return fallback_uid, fallback_uid
    if info.st_uid != 0:
        return info.st_uid, info.st_gid if info.st_gid != 0 else info.st_uid
    return fallback_uid, fallback_uid


def uid_isolation() -> tuple[bool, str | None]:
    """Whether commands run as a uid other than the server's (only a root server can switch)."""
    uid = os.geteuid()
    if uid != 0:
        return False, f"the server runs as uid {uid}, not root: commands run as that uid"
    if SETPRIV is None:
        return False, "setpriv (util-linux) is not installed: commands are refused"
    return True, None


def drop_privileges(uid: int | None, gid: int | None, *, pdeathsig: bool = False) -> list[str]:
    """The argv prefix that switches to `uid`/`gid` (empty when nothing to switch).

    Raises `PermissionError` rather than let a root server run a command as root.
    """
    current = os.geteuid()
    target = current if uid is None else uid
    death = ["--pdeathsig", "KILL"] if pdeathsig else []
    if current != 0 or (target == 0 and uid is None):
        # not root (cannot switch), or a caller that asked for no switch (uid None)
        return [SETPRIV, *death, "--"] if SETPRIV and death else []
    if target == 0:
        raise PermissionError("commands never run as root")
    if SETPRIV is None:
        raise PermissionError("setpriv (util-linux) is not installed: cannot leave root")
    gid = target if gid is None else gid
    return [
        SETPRIV,
        f"--reuid={target}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *death,
        "--",
    ]


@cache
def _probe() -> SandboxStatus:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxStatus(False, "bwrap (bubblewrap) is not installed")
    with tempfile.TemporaryDirectory(prefix="minidevin-sandbox-probe-") as directory:
        try:
            inner = [*drop_privileges(PROBE_UID, PROBE_UID), "true"]
        except PermissionError as exc:
            return SandboxStatus(False, str(exc), bwrap)
        keep = os.geteuid() == 0
        argv = _build(bwrap, inner, Path(directory), network=False, keep_caps=keep)
        try:
            probe = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return SandboxStatus(False, f"bwrap did not finish within {PROBE_TIMEOUT:g} s", bwrap)
        except OSError as exc:
            return SandboxStatus(False, f"bwrap could not be started: {exc}", bwrap)
    if probe.returncode != 0:
        detail = probe.stderr.decode(errors="replace").strip().splitlines()
        why = detail[-1] if detail else f"exit code {probe.returncode}"
        return SandboxStatus(False, f"bwrap does not work here: {why}", bwrap)
    return SandboxStatus(True, None, bwrap)


def wrap(
    argv: Sequence[str],
    working_directory: Path,
    *,
    network: bool,
    hide: Sequence[Path] = (),
    workdir_fd: int | None = None,
    tmp_mb: int | None = None,
    read_paths: Sequence[Path] = (),
    network_args: Sequence[str] | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> list[str]:
    """The bwrap command line that runs `argv` sandboxed in `working_directory` as `uid`.

    With `workdir_fd` (pass it to the child; bwrap closes it once bound) the
    working directory is bound from that fd. `network_args` replace the host
    network of a `network` command (a user-mode network namespace). Start it in a
    new session (`start_new_session=True`) and kill its process group to end it.
    Raises `PermissionError` rather than run as root.
    """
    bwrap = sandbox_status().bwrap or "bwrap"
    inner = [*drop_privileges(uid, gid), *argv]
    return _build(
        bwrap,
        inner,
        working_directory,
        network=network,
        hide=hide,
        workdir_fd=workdir_fd,
        tmp_mb=tmp_mb,
        network_args=network_args,
        extras=extra_paths(read_paths),
        keep_caps=inner[:1] == [SETPRIV] and inner != argv,
    )


def extra_paths(read_paths: Sequence[Path] = ()) -> tuple[Path, ...]:
    """The read-only paths besides /usr, /etc...: the interpreter's, DNS, `read_paths`."""
    return _extra_paths(tuple(read_paths))


@lru_cache(maxsize=32)
def _extra_paths(read_paths: tuple[Path, ...]) -> tuple[Path, ...]:
    extra = [*_interpreter_dirs(), *_resolv_conf(), *read_paths]
    found: list[Path] = []
    for path in sorted({Path(p).resolve() for p in extra}):
        covered = any(path.is_relative_to(f) for f in (*found, Path("/usr"), Path("/etc")))
        if path.exists() and not covered:
            found.append(path)
    return tuple(found)


def _build(
    bwrap: str,
    argv: Sequence[str],
    working_directory: Path,
    *,
    network: bool,
    hide: Sequence[Path] = (),
    workdir_fd: int | None = None,
    tmp_mb: int | None = None,
    network_args: Sequence[str] | None = None,
    extras: Sequence[Path] = (),
    keep_caps: bool = False,
) -> list[str]:
    """A root bwrap builds the view (it can reach any path) and `setpriv` in `argv`
    drops to the command's uid before anything of the command runs (`keep_caps`: bwrap
    keeps the capability that switch needs). Not root: bwrap runs in a user namespace.
    """
    workdir = Path(working_directory).absolute()
    view, made, mounted = _view(tuple(extras), tmp_mb)
    args = [bwrap, *view]
    bound = [*mounted, workdir]
    made = set(made)
    args += _parents(workdir, made)
    if workdir_fd is None:
        args += ["--bind", str(workdir), str(workdir)]
    else:
        args += ["--bind-fd", str(workdir_fd), str(workdir)]
    for path in hide:
        path = Path(path).absolute()
        inside = any(path.is_relative_to(b) for b in bound)
        if os.path.lexists(path) and path != workdir and inside:
            cover = ["--tmpfs"] if path.is_dir() else ["--ro-bind", "/dev/null"]
            args += [*cover, str(path)]
    args += ["--chdir", str(workdir), "--setenv", "HOME", "/tmp"]
    if not network:
        args.append("--unshare-net")
    elif network_args is not None:
        for arg in network_args:  # data bound in (resolv.conf) readable by the command's uid
            if arg in ("--ro-bind-data", "--bind-data", "--file") and args[-2:-1] != ["--perms"]:
                args += ["--perms", "0644"]
            args.append(arg)
    if not keep_caps:
        args += ["--cap-drop", "ALL"]
    args += ["--die-with-parent", "--", *argv]
    return args


@lru_cache(maxsize=32)
def _view(
    extras: tuple[Path, ...], tmp_mb: int | None
) -> tuple[tuple[str, ...], frozenset[Path], tuple[Path, ...]]:
    """The part of the view every command shares: (bwrap args, made dirs, bound dirs)."""
    args = []
    if os.geteuid() != 0:
        args.append("--unshare-user")
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    bound: list[Path] = []
    for top in READ_ONLY:
        args += _host_entry(Path(top), bound)
    for name in COVERED_ETC:
        if os.path.lexists(f"/etc/{name}"):
            args += ["--ro-bind", "/dev/null", f"/etc/{name}"]
    args += ["--dev", "/dev", "--proc", "/proc"]
    if tmp_mb is not None:
        args += ["--size", str(tmp_mb * 1024 * 1024)]
    args += ["--perms", "1777", "--tmpfs", "/tmp"]
    made: set[Path] = {Path("/"), Path("/tmp"), *bound}
    for path in extras:
        args += [*_parents(path, made), "--ro-bind", str(path), str(path)]
        bound.append(path)
    return tuple(args), frozenset(made), tuple(bound)


def _parents(path: Path, made: set[Path]) -> list[str]:
    """Traversable (0755) directories on the way to a bound path, which bwrap would make 0700."""
    args: list[str] = []
    mounted = made - {Path("/"), Path("/tmp")}
    for parent in reversed(path.parents):
        if parent not in made and not any(parent.is_relative_to(m) for m in mounted):
            args += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
    return args


def _host_entry(path: Path, bound: list[Path]) -> list[str]:
    """`/bin` and friends as the host has them: a symlink, a directory, or nothing."""
    if path.is_symlink():
        return ["--symlink", os.readlink(path), str(path)]
    if path.is_dir():
        bound.append(path)
        return ["--ro-bind", str(path), str(path)]
    return []


def _interpreter_dirs() -> list[Path]:
    """The server's Python (a virtualenv, its base installation), so `python3` of it works."""
    return [Path(sys.prefix), Path(sys.base_prefix)]


def _resolv_conf() -> list[Path]:
    """Keep DNS working when /etc/resolv.conf links outside /etc (e.g. into /run)."""
    target = Path("/etc/resolv.conf").resolve()
    if target.is_file() and not target.is_relative_to("/etc"):
        return [target]
    return []
