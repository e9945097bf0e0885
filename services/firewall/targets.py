"""What may be blocked: parsing block targets and the allow-list. Pure functions, no sockets.

A target is one address (stored as a /32 or /128 network) or a CIDR prefix. Refusals carry the
metric reason (`invalid` or `allow_listed`) and a message that names the value and the fix.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from services.firewall.errors import TargetError

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_ALLOWED: tuple[Net, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)


def family(net: Net) -> str:
    return "v4" if net.version == 4 else "v6"


def is_host(net: Net) -> bool:
    return net.prefixlen == net.max_prefixlen


def net_text(net: Net) -> str:
    """An address without `/32` or `/128`, a prefix with it (the form operators type)."""
    return str(net.network_address) if is_host(net) else str(net)


def _invalid(text: str, why: str, fix: str) -> TargetError:
    return TargetError("invalid", f"{text!r} {why}", "block request", fix)


BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")


def _parse_host(text: str, raw: str) -> Net:
    """The common case, one address, without building networks from strings (hot path)."""
    try:  # inet_pton is strict (no leading zeros, no short forms) and far cheaper than ip_address(str)
        packed = socket.inet_pton(socket.AF_INET6 if ":" in raw else socket.AF_INET, raw)
    except OSError:
        raise _invalid(text, "is not an IP address", "send an IPv4/IPv6 address or a CIDR prefix") from None
    addr: Addr = ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_multicast or addr.is_unspecified:
        raise _invalid(text, "is a multicast or unspecified address, not a source", "block a unicast source")
    if addr == BROADCAST_V4:
        raise _invalid(text, "is the broadcast address, not a source", "block a unicast source")
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv4Network((int(addr), 32))
    return ipaddress.IPv6Network((int(addr), 128))


def parse_target(text: str, min_prefix_v4: int = 0, min_prefix_v6: int = 0) -> Net:
    """Validate one address or prefix; IPv4-mapped IPv6 becomes IPv4 so one ban covers both forms."""
    raw = text.strip()
    if not raw:
        raise _invalid(text, "is empty", "send an IPv4/IPv6 address or a CIDR prefix")
    if "%" in raw:
        raise _invalid(text, "has a zone index", "send the address without %zone")
    if "/" not in raw:
        return _parse_host(text, raw)
    try:
        net: Net = ipaddress.ip_network(raw, strict=True)
    except ValueError as exc:
        msg = str(exc)
        if "host bits set" in msg:
            fixed = ipaddress.ip_network(raw, strict=False)
            raise _invalid(text, "has host bits set", f"use {fixed}") from None
        raise _invalid(
            text, f"is not a valid prefix ({msg})", "use ADDRESS/LENGTH, e.g. 198.51.100.0/24"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    first = net.network_address
    if first.is_multicast or (net.num_addresses == 1 and first.is_unspecified):
        raise _invalid(text, "is a multicast or unspecified address, not a source", "block a unicast source")
    if net.num_addresses == 1 and first == ipaddress.IPv4Address("255.255.255.255"):
        raise _invalid(text, "is the broadcast address, not a source", "block a unicast source")
    minimum = min_prefix_v4 if net.version == 4 else min_prefix_v6
    if net.prefixlen < minimum:
        raise _invalid(
            text,
            f"is wider than /{minimum}",
            f"block narrower prefixes or lower min_prefix_v{net.version} (now {minimum})",
        )
    return net


def peer_host(peer: str) -> str:
    """`http://10.0.0.2:2379`, `tcp://[2001:db8::1]:5572`, `10.0.0.2:2379` or a bare host -> host."""
    p = peer.strip()
    if "://" in p:
        return urlsplit(p).hostname or ""
    if p.startswith("["):
        return p[1 : p.index("]")]
    if p.count(":") == 1:
        return p.split(":", 1)[0]
    return p


class AllowList:
    """Networks never blocked; a block target is refused when it overlaps any of them."""

    def __init__(self, entries: Iterable[Net] = ()) -> None:
        nets = tuple(dict.fromkeys([*ALWAYS_ALLOWED, *entries]))
        self.networks = nets
        v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
        v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
        self._v4: tuple[Net, ...] = tuple(ipaddress.collapse_addresses(v4))
        self._v6: tuple[Net, ...] = tuple(ipaddress.collapse_addresses(v6))
        # integer ranges: checking a request must cost microseconds (hot path)
        self._ranges = {
            4: [(int(n.network_address), int(n.broadcast_address), n) for n in self._v4],
            6: [(int(n.network_address), int(n.broadcast_address), n) for n in self._v6],
        }

    def match(self, target: Net) -> Net | None:
        """The allow-listed network that overlaps `target`, or None."""
        lo = int(target.network_address)
        hi = lo if target.prefixlen == target.max_prefixlen else int(target.broadcast_address)
        for start, end, n in self._ranges[target.version]:
            if lo <= end and start <= hi:
                return n
        return None

    def check(self, target: Net) -> None:
        hit = self.match(target)
        if hit is not None:
            raise TargetError(
                "allow_listed",
                f"{net_text(target)} is allow-listed (overlaps {hit})",
                "block request",
                "remove it from allow.cidrs/allow.peers if it really must be blocked",
            )


def parse_allow_entries(texts: Iterable[str], where: str) -> list[Net]:
    """Allow-list entries from settings: addresses or prefixes (host bits tolerated)."""
    out: list[Net] = []
    for t in texts:
        try:
            out.append(ipaddress.ip_network(t.strip(), strict=False))
        except ValueError:
            raise TargetError(
                "invalid", f"{t!r} is not an address or prefix", where, "write e.g. 192.0.2.1 or 192.0.2.0/24"
            ) from None
    return out
