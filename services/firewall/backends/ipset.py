"""ipset + iptables backend, for hosts whose firewall is managed with iptables.

Two `hash:net` sets with timeouts (`<table>_v4`, `<table>_v6`) and one chain per family
(`<TABLE>`) jumped to from INPUT and FORWARD. A batch is one `ipset restore -exist` run: lines
apply in order (not atomically), and `add -exist` re-arms the timeout of an existing element.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

from services.firewall.errors import BackendError, BackendUnavailable
from services.firewall.model import Element, Op, comment_for, offences_from_comment
from services.firewall.targets import family, is_host, parse_allow_entries

LINE_RE = re.compile(r'^add (\S+) (\S+)(?: timeout (\d+))?.*?(?: comment "([^"]*)")?\s*$')


def _run(args: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise BackendUnavailable(
            f"`{args[0]}` not found", "backend", "apt-get install ipset iptables"
        ) from None
    if proc.returncode != 0:
        raise BackendError(
            f"{args[0]} failed: {proc.stderr.strip()[:300]}", " ".join(args[:4]), "see the message"
        )
    return proc.stdout


class IpsetBackend:
    """Bans as ipset elements; iptables/ip6tables rules drop their sources."""

    name = "ipset"

    def __init__(self, table: str) -> None:
        for tool in ("ipset", "iptables", "ip6tables"):
            if shutil.which(tool) is None:
                raise BackendUnavailable(f"`{tool}` not found", "backend", "apt-get install ipset iptables")
        self.sets = {"v4": f"{table}_v4", "v6": f"{table}_v6"}
        self.chain = table.upper()

    def setup(self) -> None:
        for fam, name in self.sets.items():
            inet = "inet" if fam == "v4" else "inet6"
            _run(
                [
                    "ipset",
                    "create",
                    name,
                    "hash:net",
                    "family",
                    inet,
                    "timeout",
                    "3600",
                    "comment",
                    "maxelem",
                    "1048576",
                    "-exist",
                ]
            )
        for tool, fam in (("iptables", "v4"), ("ip6tables", "v6")):
            subprocess.run([tool, "-w", "-N", self.chain], capture_output=True, check=False)
            _run([tool, "-w", "-F", self.chain])
            _run(
                [
                    tool,
                    "-w",
                    "-A",
                    self.chain,
                    "-m",
                    "set",
                    "--match-set",
                    self.sets[fam],
                    "src",
                    "-j",
                    "DROP",
                ]
            )
            for hook in ("INPUT", "FORWARD"):
                check = subprocess.run(
                    [tool, "-w", "-C", hook, "-j", self.chain], capture_output=True, check=False
                )
                if check.returncode != 0:
                    _run([tool, "-w", "-I", hook, "1", "-j", self.chain])

    def read(self) -> list[Element]:
        out: list[Element] = []
        for name in self.sets.values():
            try:
                text = _run(["ipset", "save", name])
            except BackendError as exc:
                if "does not exist" in exc.what:
                    continue
                raise
            for line in text.splitlines():
                m = LINE_RE.match(line)
                if not m or m.group(1) != name:
                    continue
                net = parse_allow_entries([m.group(2)], f"ipset {name}")[0]
                left = int(m.group(3) or 0) * 1000
                out.append(Element(net, left, left, offences_from_comment(m.group(4))))
        return out

    def apply(self, ops: Sequence[Op]) -> None:
        lines = []
        for op in ops:
            name = self.sets[family(op.net)]
            key = str(op.net.network_address) if is_host(op.net) else str(op.net)
            if op.kind == "add":
                secs = max(1, round(op.timeout_ms / 1000))
                lines.append(f'add {name} {key} timeout {secs} comment "{comment_for(op.offences)}"')
            else:
                lines.append(f"del {name} {key}")
        _run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def flush(self) -> int:
        n = len(self.read())
        for name in self.sets.values():
            _run(["ipset", "flush", name])
        return n

    def close(self) -> None:
        pass
