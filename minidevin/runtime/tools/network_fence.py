"""What an `online` command's namespace may reach: slirp's addresses and the fence.

The `unreachable` routes and DNS policy rules that `UserNetwork` installs in the
namespace, and the `/etc/resolv.conf` it binds there; why these, and in which
order they are set up, is told in the docstring of `minidevin.runtime.tools.network`.

slirp's DNS address needs more than a route: libslirp's address translation
maps it to the host's resolver whatever the port (TCP or UDP), so a plain route
to it could reach every service of the resolver's host (often a private
address). Some libslirp builds refuse other ports on their own (4.7.0 answers
them with ICMP "net unreachable"); the fence does not rely on that. The DNS
address is `unreachable` in the main table, and only UDP and TCP to port 53
are routed to it, by two policy rules (`ip rule ... ipproto udp|tcp dport 53`,
Linux >= 4.17, iproute2 >= 4.17) that look up a table of their own. Without
that support `ip -batch` fails, and so does every `online` command (and the
startup probe says why): the fence fails closed.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

TAP = "tap0"
CIDR = "10.0.2.0/24"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
DNS_PORT = 53
DNS_TABLE = 53  # the routing table holding the only route to DNS
DNS_RULE_PREF = 1000  # before the main table (32766)
BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "240.0.0.0/4",
    "fc00::/7",
    "fe80::/10",
)


def route_script(addresses: list[str], *, ipv6: bool) -> str:
    """The `ip -batch` input that fences the namespace (see the docstring of `network`)."""
    blocked = [ipaddress.ip_network(net) for net in BLOCKED]
    lines = [
        f"route add {DNS}/32 dev {TAP} scope link table {DNS_TABLE}",
        *(
            f"rule add to {DNS}/32 ipproto {proto} dport {DNS_PORT} lookup {DNS_TABLE}"
            f" pref {DNS_RULE_PREF + n}"
            for n, proto in enumerate(("udp", "tcp"))
        ),
        f"route add unreachable {DNS}/32",  # any other port: slirp would reach the resolver's host
        f"route del {CIDR} dev {TAP}",
    ]
    lines += [f"route add unreachable {net}" for net in blocked if ipv6 or net.version == 4]
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if address in seen or address.is_loopback or (address.version == 6 and not ipv6):
            continue  # the namespace's own loopback is not the host's
        if str(address) == DNS or any(address in net for net in blocked):
            continue
        seen.add(address)
        lines.append(f"route add unreachable {address}/{address.max_prefixlen}")
    return "\n".join(lines) + "\n"


def resolv_conf() -> bytes:
    """The sandbox's `/etc/resolv.conf`: slirp's DNS, the host's search and options."""
    kept = []
    try:
        for line in Path("/etc/resolv.conf").read_text(errors="replace").splitlines():
            if line.split()[:1] and line.split()[0] in ("search", "domain", "options"):
                kept.append(line)
    except OSError:
        pass
    return "\n".join([f"nameserver {DNS}", *kept]).encode() + b"\n"
