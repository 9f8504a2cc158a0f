"""The bubblewrap (`bwrap`) sandbox around `terminal` commands.

What a sandboxed command sees and may do:

- the whole filesystem read-only (`--ro-bind / /`), except the working
  directory, bound read-write;
- a private, empty `/tmp`, `/var/tmp` and `/run` (tmpfs): the host's temporary
  files, and the sockets under `/run` (Docker, D-Bus, ...), are out of sight;
  writes there vanish with the command. A working directory under `/tmp` is
  bound after the tmpfs, so it still works;
- the `hide` paths (the server's data directory: database, generated JWT
  secret, artifacts, snapshots) covered by an empty tmpfs. A working directory
  inside a hidden directory is bound back on top, so only it shows, not its
  siblings;
- fresh pid, IPC and UTS namespaces: the server's processes (and their
  `/proc/<pid>/environ`) are invisible, and `--unshare-pid` makes bwrap's
  reaper pid 1 of the namespace, so when it dies the kernel kills every process
  inside, whatever process group or session they moved to;
- one process group with the bwrap that the TerminalTool starts (in a session
  of its own, `start_new_session`, so without a controlling terminal: no
  TIOCSTI keystroke injection). The tool's `killpg` therefore kills that pid 1
  directly. No `--new-session`: it would `setsid` pid 1 out of the group and
  leave its death to `--die-with-parent` (PR_SET_PDEATHSIG) alone, which, seen
  here, left the whole tree running in about one `minidevin serve` shutdown in
  four. `--die-with-parent` stays, for when the server itself dies;
- no capabilities (`--cap-drop ALL`): when the server runs as root, bwrap would
  otherwise keep them, and the command could remount `/` read-write or unmount
  the tmpfs that hides the data directory;
- no network at all (`--unshare-net`: only its own loopback) unless `network`;
- `HOME=/tmp` (writable, private), and none of the server's secrets in its
  environment (`SECRET_ENV` and every `MINIDEVIN_*` variable are unset).

Still readable, read-only: everything else on the host filesystem that the
server's user can read (e.g. the server user's home directory, other sessions'
working directories outside `/tmp`).
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
from functools import cache
from pathlib import Path

from minidevin.runtime.errors import Unavailable

PROBE_TIMEOUT = 15.0
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run")
SECRET_ENV = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
)
SECRET_ENV_PREFIX = "MINIDEVIN_"


@dataclass(frozen=True)
class SandboxStatus:
    """Whether bwrap works on this machine; `reason` says why not."""

    works: bool
    reason: str | None = None
    bwrap: str | None = None  # the executable's path

    def as_health(self, mode: str) -> dict[str, object]:
        return {"available": self.works, "mode": mode, "reason": self.reason}


class SandboxUnavailable(Unavailable):
    """A task asked for under `sandbox=required` on a machine where bwrap does not work."""

    code = "SANDBOX_UNAVAILABLE"


_lock = threading.Lock()


def sandbox_status() -> SandboxStatus:
    """Checked once per process (then cached): does `bwrap` exist and really work here?"""
    with _lock:
        return _probe()


@cache
def _probe() -> SandboxStatus:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxStatus(False, "bwrap (bubblewrap) is not installed")
    with tempfile.TemporaryDirectory(prefix="minidevin-sandbox-probe-") as directory:
        argv = _build(bwrap, ["true"], Path(directory), network=False, hide=())
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
) -> list[str]:
    """The bwrap command line that runs `argv` sandboxed in `working_directory`.

    Start it in a new session (`start_new_session=True`) and kill its process
    group to end it: see the module docstring.
    """
    bwrap = sandbox_status().bwrap or "bwrap"
    return _build(bwrap, argv, working_directory, network=network, hide=hide)


def _build(
    bwrap: str,
    argv: Sequence[str],
    working_directory: Path,
    *,
    network: bool,
    hide: Sequence[Path],
) -> list[str]:
    workdir = Path(working_directory).resolve()
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for private in PRIVATE_DIRS:
        if os.path.isdir(private):
            args += ["--tmpfs", private]
    args += _keep_resolv_conf()
    args += _keep_interpreter()
    hidden = [path.resolve() for path in hide if os.path.lexists(path)]
    # A hidden path around the workdir is covered first, then the workdir bound on
    # top; one inside the workdir is covered after the bind, or the bind reveals it.
    for path in hidden:
        if not path.is_relative_to(workdir):
            args += _cover(path)
    args += ["--bind", str(workdir), str(workdir)]
    for path in hidden:
        if path.is_relative_to(workdir) and path != workdir:
            args += _cover(path)
    args += ["--chdir", str(workdir), "--setenv", "HOME", "/tmp"]
    secrets = {*SECRET_ENV, *(name for name in os.environ if name.startswith(SECRET_ENV_PREFIX))}
    for name in sorted(secrets):
        args += ["--unsetenv", name]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if not network:
        args.append("--unshare-net")
    args += ["--cap-drop", "ALL", "--die-with-parent", "--", *argv]
    return args


def _cover(path: Path) -> list[str]:
    """Hide `path`: an empty tmpfs over a directory, /dev/null over a file."""
    if path.is_dir():
        return ["--tmpfs", str(path)]
    return ["--ro-bind", "/dev/null", str(path)]


def _keep_interpreter() -> list[str]:
    """Keep the server's own Python (say, a virtualenv under /tmp) usable, read-only."""
    args: list[str] = []
    for prefix in sorted({Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}):
        if any(prefix.is_relative_to(p) for p in PRIVATE_DIRS) and prefix.is_dir():
            args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def _keep_resolv_conf() -> list[str]:
    """Keep DNS working when /etc/resolv.conf links into the now private /run."""
    target = Path("/etc/resolv.conf").resolve()
    if any(target.is_relative_to(p) for p in PRIVATE_DIRS if p != "/tmp") and target.is_file():
        return ["--ro-bind", str(target), str(target)]
    return []
