"""User-mode networking for `online` sandboxed commands: the outside, not the host.

An `online` command gets a network namespace of its own (bwrap `--unshare-net`),
exactly like an `offline` one, plus a `tap0` device served by `slirp4netns`
running on the host side. slirp4netns is a user-mode TCP/IP stack: it turns the
namespace's packets into ordinary `connect()`/`sendto()` calls of its own, so
nothing is bridged, no host firewall rule or veth is needed, and what the
command reaches is decided in two places:

- slirp4netns itself (`--disable-host-loopback`): its gateway `10.0.2.2` would
  otherwise be the host's `127.0.0.1`; with the flag, connections to it are
  refused. Its DNS address `10.0.2.3` forwards to the host's own resolver (the
  first `nameserver` of the host's `/etc/resolv.conf`) on *any* port.
- routes inside the namespace, installed by the (root) server before the
  command starts: `unreachable` routes for 0/8, 10/8, 100.64/10, 169.254/16
  (cloud metadata), 172.16/12, 192.168/16, 240/4, fc00::/7, fe80::/10 and every
  address of the host's own interfaces (a public address of the host would
  otherwise reach its services through slirp's `connect()`). slirp's subnet
  10.0.2.0/24 lies inside 10/8: its on-link route is deleted, so only the
  gateway (as next hop of the default route, never as a destination) and the
  DNS address stay usable, the latter for UDP and TCP port 53 only (policy
  rules, see `network_fence`); a connection to any other private address or
  port fails at once with "No route to host" instead of leaving the host.
  IPv6 is off on `tap0` (slirp4netns runs without `--enable-ipv6`), so no
  IPv6 packet leaves the namespace at all.

The namespace's own loopback (`127.0.0.1`, `::1`) is the command's own, not the
host's: it keeps working, so a test suite may still serve on `localhost`.
The routes hold because the command has no capability in its namespace
(`--cap-drop ALL`, or a user namespace of its own uid): it cannot change them.

Order (see `UserNetwork`): bwrap is started with `--info-fd` (it writes the
sandbox's pid) and `--block-fd` (the sandbox waits before running the command);
the server reads the pid, checks that `/proc/PID/ns/net` is the namespace bwrap
made (its inode is in bwrap's info), starts slirp4netns on it (`--ready-fd`),
installs the routes with `nsenter --net ... ip -batch -`, and only then lets the
command start. `/etc/resolv.conf` inside is replaced (`--ro-bind-data`) by one
naming slirp's DNS address. slirp4netns gets `--exit-fd`: the server holds the
other end of that pipe, so slirp4netns exits when `close()` closes it and also
when the server dies, even by SIGKILL (the kernel closes the server's fds).
It runs with `--enable-sandbox` and `--enable-seccomp` when they work here.

slirp4netns rather than `pasta`: `--disable-host-loopback`, `--ready-fd`,
`--exit-fd` and a netns given by path make the handshake above exact.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import IO

import structlog

from minidevin.runtime.tools.network_fence import CIDR, TAP, resolv_conf, route_script

log = structlog.get_logger(__name__)

MTU = 65520
SANDBOX_FLAGS = ("--enable-sandbox", "--enable-seccomp")
STOP_GRACE = 1.0
PROBE_TIMEOUT = 10.0


class NetworkSetupError(Exception):
    """The namespace of an `online` command could not be given its network."""


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def host_addresses() -> list[str]:
    """Every address of the host's interfaces (IPv4 and IPv6), from `ip -j addr`."""
    ip = _tool("ip") or "ip"
    try:
        out = subprocess.run(
            [ip, "-j", "addr", "show"], capture_output=True, timeout=5, check=True
        ).stdout
        entries = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise NetworkSetupError(f"could not list the host's addresses: {exc}") from exc
    return [
        info["local"] for entry in entries for info in entry.get("addr_info", []) if "local" in info
    ]


def _read_until(fd: int, deadline: float, done: object) -> bytes:
    """Read `fd` until `done(data)` or EOF; NetworkSetupError on the deadline."""
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while not done(data):  # type: ignore[operator]
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetworkSetupError("timed out")
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _wait_for_loopback(pid: int, deadline: float) -> None:
    """Wait until bwrap has brought the sandbox's `lo` up (before `--block-fd`).

    bwrap sets `lo` up over netlink and checks that the reply's port id is its
    pid; a netlink socket of ours opened in the namespace at that moment can
    take that port id and make bwrap fail ("loopback: Failed RTM_NEWADDR"), so
    nothing of ours touches the namespace before. `lo` is up once its broadcast
    route exists.
    """
    while True:
        try:
            if b"127.255.255.255" in Path(f"/proc/{pid}/net/fib_trie").read_bytes():
                return
        except OSError as exc:
            raise NetworkSetupError("the sandbox ended before its network was up") from exc
        if time.monotonic() > deadline:
            raise NetworkSetupError("bwrap did not set up the sandbox's loopback in time")
        time.sleep(0.001)


def _json_complete(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


class UserNetwork:
    """User-mode networking for one sandboxed command's own network namespace.

    Use: `net = UserNetwork()`; put `net.bwrap_args()` in the bwrap argv (after
    every filesystem option: it binds `/etc/resolv.conf`); start bwrap with
    `pass_fds=net.pass_fds()`; call `net.attach()` right after `Popen` (the
    command waits until then); call `net.close()` when the command has ended
    (or `attach` failed: then kill the sandbox, it would run without network).
    """

    def __init__(self) -> None:
        self._slirp: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._open: set[int] = set()  # fds of ours still open
        self._info_r, self._info_w = self._pipe()
        self._block_r, self._block_w = self._pipe()
        self._resolv_r, resolv_w = self._pipe()
        try:
            os.write(resolv_w, resolv_conf())  # a few bytes: fits in the pipe
        finally:
            self._close(resolv_w)
        self._exit_w = -1

    def bwrap_args(self) -> list[str]:
        """bwrap options: own netns, info and block fds, resolv.conf for slirp's DNS."""
        fds = ["--info-fd", str(self._info_w), "--block-fd", str(self._block_r)]
        return ["--unshare-net", *fds, "--ro-bind-data", str(self._resolv_r), "/etc/resolv.conf"]

    def pass_fds(self) -> tuple[int, ...]:
        """The child ends of the pipes, for `Popen(pass_fds=...)`."""
        return (self._info_w, self._block_r, self._resolv_r)

    def attach(self, timeout: float = 5.0) -> None:
        """Connect the sandbox started with `bwrap_args()`, then let its command start.

        Raises NetworkSetupError (everything started here is stopped again) on
        any failure or after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        for fd in self.pass_fds():
            self._close(fd)
        try:
            pid, ns_fd = self._sandbox_netns(deadline)
            try:
                self._start_slirp(ns_fd, deadline, _slirp_flags())
                self._install_routes(ns_fd, deadline)
            finally:
                os.close(ns_fd)
            os.write(self._block_w, b"1")
        except BrokenPipeError as exc:
            self.close()
            raise NetworkSetupError("the sandbox ended before its network was up") from exc
        except NetworkSetupError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise NetworkSetupError(f"network setup failed: {exc}") from exc
        self._close(self._block_w)
        log.debug("network.attached", pid=pid, seconds=round(time.monotonic() - started, 4))

    def close(self) -> None:
        """Stop slirp4netns and close every fd; safe to call more than once."""
        slirp, self._slirp = self._slirp, None
        self._close(self._exit_w)
        if slirp is not None:
            try:
                slirp.wait(STOP_GRACE)  # it exits by itself once the exit fd is closed
            except subprocess.TimeoutExpired:
                slirp.kill()
                slirp.wait()
        for fd in list(self._open):
            self._close(fd)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- steps -----------------------------------------------------------------

    def _sandbox_netns(self, deadline: float) -> tuple[int, int]:
        """(pid, fd of its netns) of the sandbox, checked against bwrap's info."""
        try:
            data = _read_until(self._info_r, deadline, _json_complete)
        except NetworkSetupError as exc:
            raise NetworkSetupError("bwrap did not report its sandbox in time") from exc
        try:
            info = json.loads(data)
            pid = int(info["child-pid"])
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkSetupError(f"bwrap failed before the sandbox started: {data!r}") from exc
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkSetupError(f"the sandbox ended before its network was up: {exc}") from exc
        inode = os.fstat(ns_fd).st_ino
        expected = info.get("net-namespace")
        if inode == os.stat("/proc/thread-self/ns/net").st_ino or (expected and inode != expected):
            os.close(ns_fd)
            raise NetworkSetupError("the sandbox has no network namespace of its own")
        try:
            _wait_for_loopback(pid, deadline)
        except NetworkSetupError:
            os.close(ns_fd)
            raise
        return pid, ns_fd

    def _start_slirp(self, ns_fd: int, deadline: float, flags: tuple[str, ...]) -> None:
        slirp = _tool("slirp4netns")
        if slirp is None:
            raise NetworkSetupError("slirp4netns is not installed")
        ready_r, ready_w = self._pipe()
        exit_r, self._exit_w = self._pipe()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        argv = [
            slirp,
            "--configure",
            f"--mtu={MTU}",
            f"--cidr={CIDR}",
            "--disable-host-loopback",
            *flags,
            f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}",
            "--netns-type=path",
            f"/proc/self/fd/{ns_fd}",
            TAP,
        ]
        try:
            self._slirp = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(ready_w, exit_r, ns_fd),
                start_new_session=True,
            )
        finally:
            self._close(ready_w)
            self._close(exit_r)
        try:
            ready = _read_until(ready_r, deadline, bool)
        except NetworkSetupError as exc:
            raise NetworkSetupError("slirp4netns was not ready in time") from exc
        finally:
            self._close(ready_r)
        if ready != b"1":
            raise NetworkSetupError(f"slirp4netns failed: {self._slirp_output()}")

    def _install_routes(self, ns_fd: int, deadline: float) -> None:
        ipv6 = os.path.isdir("/proc/sys/net/ipv6")
        script = route_script(host_addresses(), ipv6=ipv6)
        ip = _tool("ip") or "ip"
        nsenter = _tool("nsenter") or "nsenter"
        # net sysctls are those of the writer's netns: this one turns IPv6 off on tap0
        shell = f"echo 1 > /proc/sys/net/ipv6/conf/{TAP}/disable_ipv6 && " if ipv6 else ""
        argv = [nsenter, f"--net=/proc/self/fd/{ns_fd}", "--", "/bin/sh", "-c"]
        argv.append(shell + f'exec "{ip}" -batch -')
        try:
            done = subprocess.run(
                argv,
                input=script.encode(),
                capture_output=True,
                pass_fds=(ns_fd,),
                timeout=max(deadline - time.monotonic(), 0.01),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NetworkSetupError("installing the routes timed out") from exc
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()
            raise NetworkSetupError(f"installing the routes failed: {why}")

    def _slirp_output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace").strip()

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._open.update((read, write))
        return read, write

    def _close(self, fd: int) -> None:
        """Close `fd` once: a number closed twice may by then be someone else's fd."""
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)


# -- availability ------------------------------------------------------------------


@cache
def _slirp_flags() -> tuple[str, ...]:
    """`--enable-sandbox --enable-seccomp` when slirp4netns accepts them here."""
    flags, _ = _probe()
    return flags


@cache
def network_status() -> tuple[bool, str | None]:
    """(works, reason): can `online` commands get user-mode networking here? Cached.

    Needs root (to enter a sandbox's namespace and make its tap device),
    slirp4netns, nsenter and ip; probed once on a throwaway namespace.
    """
    _, reason = _probe()
    return reason is None, reason


@cache
def _probe() -> tuple[tuple[str, ...], str | None]:
    if os.geteuid() != 0:
        return (), "user-mode networking needs the server to run as root"
    for name in ("slirp4netns", "nsenter", "ip", "unshare"):
        if _tool(name) is None:
            return (), f"{name} is not installed"
    reason = "no probe ran"
    for flags in (SANDBOX_FLAGS, ()):
        reason = _probe_once(flags)
        if reason is None:
            return flags, None
    return (), reason


def _probe_once(flags: tuple[str, ...]) -> str | None:
    """Run slirp4netns on a throwaway namespace; None when it came up."""
    holder = subprocess.Popen(
        [_tool("unshare") or "unshare", "--net", "--", "sh", "-c", "echo; read _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    network = UserNetwork()
    try:
        deadline = time.monotonic() + PROBE_TIMEOUT
        if _read_until(holder.stdout.fileno(), deadline, bool) != b"\n":
            return "unshare --net does not work here"
        ns_fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(ns_fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
                return "unshare --net does not work here"
            network._start_slirp(ns_fd, deadline, flags)
            network._install_routes(ns_fd, deadline)  # policy rules need Linux >= 4.17
        finally:
            os.close(ns_fd)
        return None
    except (NetworkSetupError, OSError) as exc:
        return f"slirp4netns does not work here: {exc}"
    finally:
        network.close()
        holder.stdin.close()
        holder.stdout.close()
        holder.kill()
        holder.wait()
