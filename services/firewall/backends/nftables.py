"""nftables backend: table `inet <table>` with timeout sets per family and a drop chain.

Layout (created when missing, never flushed on restart):
  set ban_v4 / ban_v6          hosts, `flags timeout`
  set ban_v4_net / ban_v6_net  prefixes, `flags interval, timeout`
  chain input, forward         `ip saddr @ban_v4 drop` ... at priority `chain_priority`
Only our chains are rewritten at setup, inside the same transaction, so there is no moment
without the drop rules. Batches go through libnftables in process (no fork per batch) or the `nft`
command; both take the same text, and one buffer is one kernel transaction.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from services.firewall.errors import BackendError, BackendUnavailable
from services.firewall.model import Element, Op, comment_for, offences_from_comment
from services.firewall.targets import Net, family, is_host, parse_allow_entries

LIBNFT = "libnftables.so.1"
NFT_CTX_OUTPUT_JSON = 1 << 4


class LibNft:
    """libnftables through ctypes: one context, output and errors captured in buffers."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBNFT)
        except OSError:
            raise BackendUnavailable(
                f"{LIBNFT} not found",
                "nft_interface",
                "apt-get install libnftables1, or set nft_interface to 'cli'",
            ) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise BackendUnavailable("nft_ctx_new failed", "nft_interface", "check libnftables")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, cmd: str, json_out: bool = False) -> str:
        with self.lock:
            self.lib.nft_ctx_output_set_flags(self.ctx, NFT_CTX_OUTPUT_JSON if json_out else 0)
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, cmd.encode())
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        if rc != 0:
            raise _nft_error(cmd, err)
        return out

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


class NftCli:
    """The `nft` command, one process per call (baseline and fallback)."""

    def run(self, cmd: str, json_out: bool = False) -> str:
        # with -j, `-f` would expect JSON input: listings (one command) go as arguments instead
        args = ["nft", "-j", *cmd.split()] if json_out else ["nft", "-f", "-"]
        try:
            proc = subprocess.run(
                args, input=None if json_out else cmd, capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            raise BackendUnavailable("`nft` not found", "nft_interface", "apt-get install nftables") from None
        if proc.returncode != 0:
            raise _nft_error(cmd, proc.stderr)
        return proc.stdout

    def close(self) -> None:
        pass


def _nft_error(cmd: str, err: str) -> BackendError:
    first = next((ln for ln in err.splitlines() if ln.startswith("Error")), err.strip()[:300])
    fix = "run as root (CAP_NET_ADMIN)" if "Operation not permitted" in err else "see the nft message"
    head = cmd.strip().splitlines()[0][:120] if cmd.strip() else ""
    return BackendError(f"nft refused the transaction: {first}", f"nft ({head} ...)", fix)


def set_name(net: Net) -> str:
    return f"ban_{family(net)}" + ("" if is_host(net) else "_net")


SETS = (
    ("ban_v4", "ipv4_addr", "timeout"),
    ("ban_v4_net", "ipv4_addr", "interval, timeout"),
    ("ban_v6", "ipv6_addr", "timeout"),
    ("ban_v6_net", "ipv6_addr", "interval, timeout"),
)


def render_setup(table: str, priority: int) -> str:
    """One transaction that creates what is missing and rewrites only our two chains."""
    t = f"inet {table}"
    lines = [f"add table {t}"]
    lines += [f"add set {t} {name} {{ type {typ}; flags {flags}; }}" for name, typ, flags in SETS]
    for chain in ("input", "forward"):
        lines.append(
            f"add chain {t} {chain} {{ type filter hook {chain} priority {priority}; policy accept; }}"
        )
        lines.append(f"flush chain {t} {chain}")
        for name, typ, _ in SETS:
            proto = "ip" if typ == "ipv4_addr" else "ip6"
            lines.append(f"add rule {t} {chain} {proto} saddr @{name} counter drop")
    return "\n".join(lines) + "\n"


def _render(t: str, ops: Sequence[Op]) -> str:
    ensure: dict[str, list[str]] = {}  # must exist before a delete: deleting a gone element fails
    delete: dict[str, list[str]] = {}
    add: dict[str, list[str]] = {}
    for op in ops:
        s = set_name(op.net)
        key = str(op.net.network_address) if is_host(op.net) else str(op.net)
        if op.kind == "delete" or op.replace:
            ensure.setdefault(s, []).append(key)
            delete.setdefault(s, []).append(key)
        if op.kind == "add":
            add.setdefault(s, []).append(
                f'{key} timeout {op.timeout_ms}ms comment "{comment_for(op.offences)}"'
            )
    lines = [f"add element {t} {s} {{ {', '.join(v)} }}" for s, v in ensure.items()]
    lines += [f"delete element {t} {s} {{ {', '.join(v)} }}" for s, v in delete.items()]
    lines += [f"add element {t} {s} {{ {', '.join(v)} }}" for s, v in add.items()]
    return "\n".join(lines) + "\n"


def render_ops(table: str, ops: Sequence[Op]) -> list[str]:
    """The transactions for one batch: one, or two when prefixes are replaced by wider ones.

    `nft` checks interval overlaps against the kernel before the batch runs, so deleting
    198.51.100.0/25 and adding 198.51.100.0/24 cannot share one transaction: removals go first.
    """
    if not ops:
        return []
    t = f"inet {table}"
    removals = [op for op in ops if op.kind == "delete"]
    adds = [op for op in ops if op.kind == "add"]
    removed_sets = {set_name(op.net) for op in removals if not is_host(op.net)}
    if removed_sets and any(set_name(op.net) in removed_sets for op in adds):
        return [_render(t, removals), _render(t, adds)]
    return [_render(t, ops)]


def _parse_val(val: Any) -> Net | None:
    if isinstance(val, str):  # an address: inet_pton + int is ~2x cheaper than ip_network(str)
        try:
            if ":" in val:
                return ipaddress.IPv6Network(int.from_bytes(socket.inet_pton(socket.AF_INET6, val), "big"))
            return ipaddress.IPv4Network(int.from_bytes(socket.inet_pton(socket.AF_INET, val), "big"))
        except OSError:
            return parse_allow_entries([val], "kernel set")[0]  # raises with the offending value
    if isinstance(val, dict) and "prefix" in val:
        p = val["prefix"]
        return parse_allow_entries([f"{p['addr']}/{p['len']}"], "kernel set")[0]
    return None  # ranges are not written by us; ignored


def parse_listing(text: str) -> list[Element]:
    """Elements of our sets from `nft -j list table` output (timeouts in seconds there)."""
    doc = json.loads(text)
    out: list[Element] = []
    for item in doc.get("nftables", []):
        st = item.get("set")
        if not st or not str(st.get("name", "")).startswith("ban_"):
            continue
        for e in st.get("elem", []):
            body = e.get("elem", e) if isinstance(e, dict) else e
            if isinstance(body, dict) and "val" in body:
                net = _parse_val(body["val"])
                timeout_s = int(body.get("timeout", 0))
                expires_s = int(body.get("expires", timeout_s))
                comment = body.get("comment")
            else:
                net, timeout_s, expires_s, comment = _parse_val(body), 0, 0, None
            if net is not None:
                out.append(Element(net, timeout_s * 1000, expires_s * 1000, offences_from_comment(comment)))
    return out


class NftablesBackend:
    """Bans as elements of nftables sets with per-element timeouts."""

    name = "nftables"

    def __init__(self, table: str, priority: int = -5, interface: str = "libnftables") -> None:
        self.table = table
        self.priority = priority
        self.nft: LibNft | NftCli = LibNft() if interface == "libnftables" else NftCli()

    def setup(self) -> None:
        self.nft.run(render_setup(self.table, self.priority))

    def read(self) -> list[Element]:
        try:
            text = self.nft.run(f"list table inet {self.table}", json_out=True)
        except BackendError as exc:
            if "No such file or directory" in exc.what:
                return []
            raise
        return parse_listing(text)

    def apply(self, ops: Sequence[Op]) -> None:
        for cmd in render_ops(self.table, ops):
            self.nft.run(cmd)

    def flush(self) -> int:
        n = len(self.read())
        t = f"inet {self.table}"
        try:
            self.nft.run("\n".join(f"flush set {t} {name}" for name, _, _ in SETS) + "\n")
        except BackendError as exc:
            if "No such file or directory" in exc.what:
                return 0  # no table: nothing to flush
            raise
        return n

    def close(self) -> None:
        self.nft.close()
