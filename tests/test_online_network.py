"""`online` sandboxes: user-mode networking that reaches the outside, not the host.

Real bwrap (as root, and as uid 65534 through setpriv with a user namespace),
real slirp4netns, a small Python client inside. Two settings:

- the machine's own network namespace (as in production): only targets on this
  machine are connected to (its loopback, its own addresses, slirp's gateway);
  private ranges are checked with UDP `connect()`, which looks the route up and
  sends no packet, so nothing leaves the machine even if the fence were broken;
- a fenced test network made here from two throwaway network namespaces joined
  by a veth pair: a "host" (where slirp4netns runs, 203.0.113.1) and an
  "outside" (203.0.113.2) that also holds 10.1.2.3, 169.254.169.254,
  192.168.1.1, 172.16.0.1, 100.64.0.1 and the host's DNS server address. Here
  TCP really flows: the sandbox reaches the outside server and gets DNS
  answers, and every private address, though its server answers the host,
  fails at once in the sandbox with "No route to host". The resolver's
  address also serves other ports (TCP 22 and 80, UDP 5353): libslirp's
  translation maps its DNS address there on any port (some builds refuse
  other ports themselves, slowly for UDP); the fence routes port 53 only, so
  every other port fails at once in the sandbox.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from waiting import alive, process_gone, until

from minidevin.runtime.tools.network import NetworkSetupError, UserNetwork, network_status
from minidevin.runtime.tools.network_fence import DNS, GATEWAY

T = TypeVar("T")
BWRAP = shutil.which("bwrap")
SETPRIV = shutil.which("setpriv")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
WORKS, REASON = (
    network_status() if os.geteuid() == 0 and BWRAP and SETPRIV else (False, "needs root")
)
pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and BWRAP and SETPRIV and WORKS),
    reason=f"needs root, bwrap, setpriv and working slirp4netns ({REASON})",
)
IDENTITIES = ["root", "nobody"]
CLONE_NEWNET = 0x40000000
PRIVATE = ["10.1.2.3", "169.254.169.254", "192.168.1.1", "172.16.0.1", "100.64.0.1"]
FAST = 1.0  # seconds: an unreachable route fails at once, a dropped packet would hang

# The client run inside the sandbox: facts about its network, then one line per probe.
CLIENT = r"""
import errno, json, socket, sys, time
facts = {"resolv": open("/etc/resolv.conf").read()}
import fcntl, struct
with socket.socket() as s:  # SIOCGIFFLAGS: sysfs here is the host's, ioctl is ours
    try:
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"tap0", 0))
        facts["tap0_up"] = bool(struct.unpack("16sH14x", ifreq)[1] & 1)
    except OSError:
        facts["tap0_up"] = False
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000":
        facts["default"] = [f[0], socket.inet_ntoa(bytes.fromhex(f[2])[::-1])]
results = []
for kind, host, port in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = kind in ("udp", "dns")
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(3)
    start = time.monotonic()
    try:
        s.connect((host, port))
        outcome = "connected"
        if kind == "tcp":
            outcome = "echo:" + s.recv(64).decode()
        if kind == "dns":
            query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x01\x00\x01"
            s.send(query)
            reply = s.recv(512)
            outcome = "answer" if reply[:2] == b"\x12\x34" and reply[2] & 0x80 else "garbage"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, "timeout") if exc.errno else "timeout"
    results.append([kind, host, port, outcome, time.monotonic() - start])
    s.close()
print(json.dumps({"facts": facts, "results": results}))
"""

# -- helpers ---------------------------------------------------------------------------


def sandbox_argv(identity: str, network: UserNetwork, command: list[str]) -> list[str]:
    argv = [BWRAP or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--unshare-pid", "--die-with-parent"]
    if identity == "nobody":
        argv.insert(1, "--unshare-user")
        prefix = [SETPRIV or "setpriv", "--reuid", "65534", "--regid", "65534"]
        argv = [*prefix, "--clear-groups", "--inh-caps=-all", "--", *argv]
    else:
        argv += ["--cap-drop", "ALL"]
    return [*argv, *network.bwrap_args(), "--", *command]


def run_client(identity: str, probes: list[tuple[str, str, int]]) -> dict[str, Any]:
    """Run CLIENT in an online sandbox; its facts and {(kind, host, port): (outcome, s)}."""
    network = UserNetwork()
    argv = sandbox_argv(identity, network, [PYTHON, "-c", CLIENT, json.dumps(probes)])
    process = subprocess.Popen(
        argv, pass_fds=network.pass_fds(), stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        network.attach()
        out, _ = process.communicate(timeout=60)
    finally:
        network.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, out
    report = json.loads(out)
    results = {(k, h, p): (outcome, took) for k, h, p, outcome, took in report["results"]}
    return {"facts": report["facts"], "results": results}


class Listener:
    """A TCP server answering each connection with `name` and counting them."""

    def __init__(self, host: str, port: int, name: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.name = name
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(self.name.encode())

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class DnsResponder:
    """A UDP server answering every query with its id and the response bit set."""

    def __init__(self, host: str, port: int = 53) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.answered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.answered += 1
            self.sock.sendto(query[:2] + b"\x81\x80" + query[4:], peer)

    def close(self) -> None:
        self.sock.close()


def host_address() -> str:
    """A non-loopback address of this machine (the source of a route lookup)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # UDP connect: a route lookup, no packet
        return probe.getsockname()[0]


def in_netns(ns_path: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a thread that entered the network namespace `ns_path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def body() -> None:
        fd = os.open(ns_path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(120)
    if "error" in box:
        raise box["error"]
    return box["value"]


class Namespace:
    """A throwaway network namespace, held by a waiting `unshare --net` process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo; read _"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline() == b"\n"
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.ip("link set lo up")

    def ip(self, *commands: str) -> None:
        script = "\n".join(commands) + "\n"
        subprocess.run(
            ["nsenter", f"--net={self.path}", "ip", "-batch", "-"],
            input=script.encode(),
            check=True,
            timeout=10,
        )

    def close(self) -> None:
        assert self.holder.stdin is not None
        self.holder.stdin.close()
        self.holder.wait(10)


def first_nameserver() -> str | None:
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and "." in parts[1]:
            return parts[1]
    return None


def our_slirps() -> list[int]:
    """Live slirp4netns processes started by this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if name == "slirp4netns" and ppid == os.getpid() and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


# -- the machine's own network namespace -----------------------------------------------


@pytest.fixture
def host_servers() -> Iterator[tuple[Listener, Listener]]:
    loopback = Listener("127.0.0.1", 0, "loopback")
    anywhere = Listener("0.0.0.0", 0, "anywhere")
    yield loopback, anywhere
    loopback.close()
    anywhere.close()


@pytest.mark.parametrize("identity", IDENTITIES)
def test_sandbox_has_a_network_with_a_default_route(identity: str) -> None:
    probes = [("udp", "198.51.100.1", 9), ("udp", DNS, 53), ("udp", DNS, 5353)]
    report = run_client(identity, probes)
    facts = report["facts"]
    assert facts["tap0_up"] is True
    assert facts["default"] == ["tap0", GATEWAY]
    assert facts["resolv"].splitlines()[0] == f"nameserver {DNS}"
    # UDP connect only looks the route up: a public address and slirp's DNS are routable
    assert report["results"][("udp", "198.51.100.1", 9)][0] == "connected"
    assert report["results"][("udp", DNS, 53)][0] == "connected"
    assert report["results"][("udp", DNS, 5353)][0] == "EHOSTUNREACH"  # port 53 only


@pytest.mark.parametrize("identity", IDENTITIES)
def test_host_is_out_of_reach(identity: str, host_servers: tuple[Listener, Listener]) -> None:
    loopback, anywhere = host_servers
    own = host_address()
    probes = [
        ("tcp", "127.0.0.1", loopback.port),  # the sandbox's own loopback, not the host's
        ("tcp", own, anywhere.port),
        ("tcp", GATEWAY, loopback.port),
        ("tcp", GATEWAY, anywhere.port),
        ("tcp", DNS, anywhere.port),  # slirp's DNS address is routed for port 53 only
    ]
    results = run_client(identity, probes)["results"]
    assert results[("tcp", "127.0.0.1", loopback.port)][0] == "ECONNREFUSED"
    assert results[("tcp", own, anywhere.port)][0] == "EHOSTUNREACH"
    assert results[("tcp", GATEWAY, loopback.port)][0] == "EHOSTUNREACH"
    assert results[("tcp", GATEWAY, anywhere.port)][0] == "EHOSTUNREACH"
    assert results[("tcp", DNS, anywhere.port)][0] == "EHOSTUNREACH"
    assert all(took < FAST for _, took in results.values()), results
    assert loopback.accepted == 0 and anywhere.accepted == 0


@pytest.mark.parametrize("identity", IDENTITIES)
def test_private_ranges_have_no_route(identity: str) -> None:
    targets = [*PRIVATE, "0.0.0.1", "fd00::1", "fe80::1%tap0", "2001:db8::1"]
    results = run_client(identity, [("udp", target, 80) for target in targets])["results"]
    for target in targets:
        outcome, took = results[("udp", target, 80)]
        # a link-local address names tap0, where IPv6 is off: EINVAL, no packet sent
        refused = ("EHOSTUNREACH", "ENETUNREACH", *(("EINVAL",) if "%" in target else ()))
        assert outcome in refused, (target, outcome)
        assert took < FAST


# -- a fenced test network: real traffic, all of it between namespaces made here -------


@pytest.fixture
def fenced() -> Iterator[tuple[Namespace, dict[str, Any]]]:
    """A "host" namespace joined to an "outside" one, with servers on both sides."""
    host, outside = Namespace(), Namespace()
    nameserver = first_nameserver()
    servers: list[Any] = []
    try:
        host.ip(
            f"link add h0 type veth peer name o0 netns {outside.holder.pid}",
            "addr add 203.0.113.1/24 dev h0",
            "link set h0 up",
            *(f"route add {a}/32 via 203.0.113.2" for a in PRIVATE),
        )
        outside.ip(
            "addr add 203.0.113.2/24 dev o0",
            "link set o0 up",
            *(f"addr add {a}/32 dev o0" for a in PRIVATE),
        )
        dns_host = nameserver and not nameserver.startswith("127.")
        if dns_host:
            host.ip(f"route add {nameserver}/32 via 203.0.113.2")
            outside.ip(f"addr add {nameserver}/32 dev o0")

        def resolver_servers() -> None:
            """The resolver's host: DNS on UDP and TCP 53, and other services."""
            assert nameserver
            servers.append(DnsResponder(nameserver))
            servers.append(DnsResponder(nameserver, 5353))
            servers.append(Listener(nameserver, 53, "resolver-tcp53"))
            servers.append(Listener(nameserver, 22, "resolver-ssh"))

        def outside_servers() -> None:
            servers.append(Listener("0.0.0.0", 80, "outside"))  # also the resolver's port 80
            if dns_host:
                resolver_servers()

        def host_servers() -> None:
            servers.append(Listener("127.0.0.1", 8080, "host-loopback"))
            servers.append(Listener("0.0.0.0", 8081, "host-anywhere"))
            if nameserver and not dns_host:
                resolver_servers()

        in_netns(outside.path, outside_servers)
        in_netns(host.path, host_servers)
        yield host, {"servers": servers, "dns": bool(nameserver)}
    finally:
        for server in servers:
            server.close()
        host.close()
        outside.close()


@pytest.mark.parametrize("identity", IDENTITIES)
def test_fenced_network_reaches_the_outside_only(
    identity: str, fenced: tuple[Namespace, dict[str, Any]]
) -> None:
    host, extra = fenced

    def control() -> list[str]:
        """Seen from the host itself, every private server is there."""
        answers = []
        for address in PRIVATE:
            with socket.create_connection((address, 80), timeout=3) as conn:
                answers.append(conn.recv(64).decode())
        return answers

    assert in_netns(host.path, control) == ["outside"] * len(PRIVATE)
    probes = [("tcp", "203.0.113.2", 80), ("tcp", "127.0.0.1", 8080)]
    probes += [("tcp", "203.0.113.1", 8081), ("tcp", GATEWAY, 8080), ("tcp", GATEWAY, 8081)]
    probes += [("tcp", address, 80) for address in PRIVATE]
    if extra["dns"]:
        probes.append(("dns", DNS, 53))
    results = in_netns(host.path, lambda: run_client(identity, probes))["results"]

    assert results[("tcp", "203.0.113.2", 80)][0] == "echo:outside"
    if extra["dns"]:
        assert results[("dns", DNS, 53)][0] == "answer"
    assert results[("tcp", "127.0.0.1", 8080)][0] == "ECONNREFUSED"
    for probe in probes[2:]:
        if probe[0] == "tcp":
            assert results[probe][0] == "EHOSTUNREACH", (probe, results[probe])
            assert results[probe][1] < FAST, (probe, results[probe])
    accepted = {s.name: s.accepted for s in extra["servers"] if isinstance(s, Listener)}
    assert accepted["outside"] == len(PRIVATE) + 1
    assert accepted["host-loopback"] == accepted["host-anywhere"] == 0


@pytest.mark.parametrize("identity", IDENTITIES)
def test_dns_address_reaches_the_resolver_on_port_53_only(
    identity: str, fenced: tuple[Namespace, dict[str, Any]]
) -> None:
    """Only UDP and TCP port 53 of slirp's DNS address are routed; others fail at once."""
    host, extra = fenced
    if not extra["dns"]:
        pytest.skip("this machine's resolv.conf names no IPv4 nameserver")
    udp_53, udp_5353 = (s for s in extra["servers"] if isinstance(s, DnsResponder))
    listeners = {s.name: s for s in extra["servers"] if isinstance(s, Listener)}
    probes = [("dns", DNS, 53), ("tcp", DNS, 53), ("tcp", DNS, 22), ("tcp", DNS, 80)]
    probes.append(("dns", DNS, 5353))
    results = in_netns(host.path, lambda: run_client(identity, probes))["results"]

    assert results[("dns", DNS, 53)][0] == "answer"
    assert results[("tcp", DNS, 53)][0] == "echo:resolver-tcp53"
    for probe in probes[2:]:
        assert results[probe][0] == "EHOSTUNREACH", (probe, results[probe])
        assert results[probe][1] < FAST, (probe, results[probe])
    assert udp_53.answered == 1 and udp_5353.answered == 0
    assert listeners["resolver-tcp53"].accepted == 1
    assert listeners["resolver-ssh"].accepted == 0
    assert listeners["outside"].accepted == 0  # it serves the resolver's port 80 too


# -- lifecycle, failures, cost ----------------------------------------------------------


def test_close_stops_slirp_and_frees_every_fd() -> None:
    before = set(os.listdir("/proc/self/fd"))
    network = UserNetwork()
    process = subprocess.Popen(
        sandbox_argv("root", network, ["true"]), pass_fds=network.pass_fds(), start_new_session=True
    )
    network.attach()
    assert process.wait(30) == 0
    assert len(our_slirps()) == 1
    network.close()
    network.close()
    assert our_slirps() == []
    assert set(os.listdir("/proc/self/fd")) == before


SERVER = r"""
import subprocess, sys
from minidevin.runtime.tools.network import UserNetwork
network = UserNetwork()
argv = [sys.argv[1], "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-pid", "--die-with-parent",
        *network.bwrap_args(), "--", "sleep", "300"]
sandbox = subprocess.Popen(argv, pass_fds=network.pass_fds(), start_new_session=True)
network.attach()
print("pids", network._slirp.pid, sandbox.pid, flush=True)
sys.stdin.read()
"""


def test_slirp_dies_with_a_killed_server() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, BWRAP or "bwrap"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    lines = (server.stdout.readline().decode() for _ in range(20))  # logs may come first
    slirp, sandbox = map(int, next(line for line in lines if line.startswith("pids")).split()[1:])
    try:
        assert alive(slirp)
        server.kill()  # SIGKILL: no cleanup code runs
        server.wait(10)
        asyncio.run(until(lambda: process_gone(slirp), 5, "slirp4netns to exit"))
    finally:
        os.killpg(sandbox, signal.SIGKILL)


def test_attach_fails_cleanly_when_bwrap_fails() -> None:
    network = UserNetwork()
    argv = sandbox_argv("root", network, ["true"])
    argv.insert(1, "--no-such-option")
    process = subprocess.Popen(argv, pass_fds=network.pass_fds(), stderr=subprocess.DEVNULL)
    start = time.monotonic()
    with pytest.raises(NetworkSetupError, match="bwrap"):
        network.attach(timeout=5)
    assert time.monotonic() - start < 2
    assert process.wait(10) != 0
    assert our_slirps() == []


def test_attach_times_out() -> None:
    network = UserNetwork()
    silent = subprocess.Popen(["sleep", "30"], pass_fds=network.pass_fds())
    try:
        start = time.monotonic()
        with pytest.raises(NetworkSetupError, match="in time"):
            network.attach(timeout=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        silent.kill()
        silent.wait()
    assert our_slirps() == []


FAKE_BWRAP = r"""
import os, sys
os.write(int(sys.argv[1]), b'{"child-pid": %d}' % os.getpid())
sys.stdin.read()
"""


def test_a_namespace_that_is_not_the_sandboxs_own_is_refused() -> None:
    """A pid that reports the caller's own netns must never get a tap and routes."""
    scratch = Namespace()  # the caller's netns here: harmless even if the check failed
    try:

        def attempt() -> str:
            network = UserNetwork()
            fake = subprocess.Popen(
                [sys.executable, "-c", FAKE_BWRAP, str(network.pass_fds()[0])],
                pass_fds=network.pass_fds(),
                stdin=subprocess.PIPE,
            )
            try:
                network.attach(timeout=5)
                return "attached"
            except NetworkSetupError as exc:
                return str(exc)
            finally:
                fake.kill()
                fake.wait()

        assert "no network namespace of its own" in in_netns(scratch.path, attempt)
        links = subprocess.run(
            ["nsenter", f"--net={scratch.path}", "ip", "-o", "link"],
            capture_output=True,
            check=True,
        ).stdout
        assert b"tap0" not in links
    finally:
        scratch.close()


def test_attach_cost() -> None:
    timings = []
    for _ in range(10):
        network = UserNetwork()
        process = subprocess.Popen(
            sandbox_argv("root", network, ["true"]),
            pass_fds=network.pass_fds(),
            start_new_session=True,
        )
        start = time.monotonic()
        try:
            network.attach()
            timings.append(time.monotonic() - start)
        finally:
            process.wait(30)
            network.close()
    median = statistics.median(timings)
    print(f"attach: median {median * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")
    assert median < 1.0
