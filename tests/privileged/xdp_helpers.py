"""Network namespaces with a veth pair, and a capture process for the XDP / AF_PACKET tests.

Layout: namespace `<name>-tx` holds `mldtx` (where tcpreplay or a socket sends), namespace
`<name>-rx` holds `mldrx` (where the capture runs). No addresses and IPv6 off on both, so the only
frames on the wire are the ones a test sends. Deleting the namespaces removes the veth.

Run as a script inside the rx namespace, this module is the capture process: it opens a source by
name, prints READY, prints one JSON line per flow record and, after SIGTERM, a final STATS line.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python")
TX_IF = "mldtx"
RX_IF = "mldrx"


def run(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the error shows the command and its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class VethPair:
    """Two fresh namespaces joined by a veth; `close()` deletes both (also after a failure)."""

    def __init__(self, mtu: int = 9000) -> None:
        base = f"mldx{os.getpid() % 10000}{uuid.uuid4().hex[:6]}"
        self.tx_ns = f"{base}-tx"
        self.rx_ns = f"{base}-rx"
        self.created: list[str] = []
        try:
            for ns in (self.tx_ns, self.rx_ns):
                run(["ip", "netns", "add", ns])
                self.created.append(ns)
                for key in ("all", "default"):
                    run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
            run(
                ["ip", "-n", self.tx_ns, "link", "add", TX_IF, "mtu", str(mtu), "type", "veth", "peer", "name",
                 RX_IF, "mtu", str(mtu), "netns", self.rx_ns]
            )  # fmt: skip
            run(["ip", "-n", self.rx_ns, "link", "set", RX_IF, "up"])
            run(["ip", "-n", self.tx_ns, "link", "set", TX_IF, "up"])
        except BaseException:
            self.close()
            raise

    def exec(
        self, ns: str, cmd: list[str], timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *cmd], timeout=timeout, check=check)

    def replay(self, pcap: Path | str, extra: tuple[str, ...] = ("--topspeed",), timeout: float = 60) -> str:
        """tcpreplay the capture into the veth from the tx side (pinned to one CPU: order kept)."""
        cmd = ["taskset", "-c", "0", "tcpreplay", "-q", "-i", TX_IF, *extra, str(pcap)]
        return self.exec(self.tx_ns, cmd, timeout=timeout).stdout

    def xdp_prog(self) -> str:
        """`ip link` line of the rx interface (shows an attached XDP program)."""
        return self.exec(self.rx_ns, ["ip", "-d", "link", "show", RX_IF]).stdout

    def close(self) -> None:
        for ns in reversed(self.created):
            run(["ip", "netns", "del", ns], check=False)
        self.created.clear()


class Capture:
    """The capture process (this file as a script) running in the rx namespace."""

    def __init__(
        self, pair: VethPair, source: str, settings: dict[str, Any] | None = None, count_only: bool = False
    ) -> None:
        doc = {"capture": {"source": source, "interface": RX_IF}} | (settings or {})
        extra = ["--count-only"] if count_only else []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.rx_ns, PY, __file__, json.dumps(doc), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.records: list[dict[str, Any]] = []
        self.arrivals: list[int] = []  # wall clock (ns) when each record was read, for latency tests
        self.stats: dict[str, Any] | None = None
        self.progress: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready = threading.Event()
        self.ready_cpu: dict[str, float] = {}
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if line.startswith("READY"):
                self.ready_cpu = json.loads(line[6:] or "{}")
                self.ready.set()
            elif line.startswith("STATS "):
                self.stats = json.loads(line[6:])
            elif line.startswith("PROGRESS "):
                self.progress.put(json.loads(line[9:]))
            elif line.startswith("{"):
                self.arrivals.append(time.time_ns())
                self.records.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self._err.join(2)
                raise AssertionError(
                    f"capture did not start (exit {self.proc.returncode}): " + "\n".join(self.stderr[-20:])
                )

    def live_stats(self, timeout: float = 5) -> dict[str, Any]:
        """The source's stats now (SIGUSR1 -> one PROGRESS line)."""
        self.proc.send_signal(signal.SIGUSR1)
        return self.progress.get(timeout=timeout)

    def wait_packets(self, count: int, timeout: float = 20) -> dict[str, Any]:
        """Poll until the source has counted `count` frames; returns its stats."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.live_stats()
            if st["packets"] >= count:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"capture counted {st['packets']} of {count} frames after {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> dict[str, Any]:
        """SIGTERM, wait for the drain; returns the final stats."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("capture did not stop within the deadline") from None
        self._reader.join(5)
        self._err.join(5)
        if self.proc.returncode != 0 or self.stats is None:
            raise AssertionError(f"capture exited {self.proc.returncode}: " + "\n".join(self.stderr[-20:]))
        return self.stats

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def veth_pair(mtu: int = 9000) -> Iterator[VethPair]:
    pair = VethPair(mtu)
    try:
        yield pair
    finally:
        pair.close()


# ---------------------------------------------------------------------- crafted frames
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def ip4(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def ip6(text: str) -> bytes:
    import ipaddress

    return ipaddress.IPv6Address(text).packed


def eth(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    """Ethernet frame; `vlans` are 802.1Q tags, outermost first (0x88a8 for the outer of two)."""
    head = MAC_B + MAC_A
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if (len(vlans) > 1 and i == 0) else 0x8100
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str, dst: str, proto: int, l4: bytes, ihl: int = 5, frag: int = 0, total: int | None = None
) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else 20 + len(l4), 1, frag, 64, proto, 0,
        ip4(src), ip4(dst),
    )  # fmt: skip
    return hdr + bytes(max(ihl * 4 - 20, 0)) + l4


def ipv6(src: str, dst: str, nh: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64, ip6(src), ip6(dst)) + l4


def udp(sport: int, dport: int, payload: bytes = b"x" * 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"", doff: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 65535, 0, 0) + payload


def icmp(kind: int, code: int) -> bytes:
    return struct.pack("!BBHI", kind, code, 0, 0) + b"ping" * 4


def write_pcap(path: Path, frames: list[bytes], start_s: int = 1_700_000_000, step_us: int = 1000) -> Path:
    """A classic microsecond pcap of `frames`, one every `step_us`."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for i, frame in enumerate(frames):
        t_us = i * step_us
        out.append(
            struct.pack("<IIII", start_s + t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def record_json(rec: Any) -> dict[str, Any]:
    from libs.common.events import features_dict, flow_dict

    return flow_dict(rec) | {"features": features_dict(rec.features)}


def _main(doc: str, count_only: bool = False) -> int:
    """Capture process: source by name until SIGTERM, records as JSON lines (or only counted, for
    benchmarks: `records` and `record_packets` in STATS), then STATS."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "proto"))
    from libs.common.lifecycle import StopFlag
    from services.sniffer.config import SnifferSettings
    from services.sniffer.sources import open_source

    def cpu() -> dict[str, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime}

    settings = SnifferSettings.model_validate(json.loads(doc))
    stop = StopFlag()
    stop.install_signal_handlers()
    source = open_source(settings)
    signal.signal(signal.SIGUSR1, lambda *_: print("PROGRESS " + json.dumps(source.stats()), flush=True))
    try:
        print("READY " + json.dumps(cpu()), flush=True)
        counted = {"records": 0, "record_packets": 0}
        for batch in source.batches(stop):
            counted["records"] += len(batch)
            counted["record_packets"] += sum(r.features.bidirectional_packets for r in batch)
            if not count_only:
                for rec in batch:
                    print(json.dumps(record_json(rec)), flush=True)
        print("STATS " + json.dumps(source.stats() | cpu() | counted), flush=True)
    finally:
        source.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1], "--count-only" in sys.argv[2:]))
