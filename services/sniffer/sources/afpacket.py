"""AF_PACKET capture: raw frames from an interface into the same user-space flow table as pcap.

Frames come from a TPACKET_V3 ring (mmap): the kernel fills 1 MiB blocks, user space takes a whole
block at a time and decodes it with the vectorised decoder of the pcap path, straight from a copy of
the block — no Python object per packet and no syscall per packet. When the ring cannot be set up,
a recvmsg loop with SO_TIMESTAMPNS is the fallback. Either way the flow table is exactly the pcap
path's, so the records are identical for the same packets.

Only received frames are counted (PACKET_IGNORE_OUTGOING): the XDP path sees ingress only, and a
flow meter on a mirror port sees everything as ingress anyway. The kernel moves the outer 802.1Q
tag out of the frame before packet sockets see it; it is put back from the ring header (or
PACKET_AUXDATA), so VLAN ids and QinQ depth match the pcap and XDP paths.
"""

from __future__ import annotations

import logging
import mmap
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from libs.common.lifecycle import StopFlag
from ml_defender.v1 import flow_pb2
from services.sniffer.decode import decode
from services.sniffer.errors import SourceError
from services.sniffer.flows import FlowTable

if TYPE_CHECKING:
    from services.sniffer.config import SnifferSettings

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS
SO_RCVBUFFORCE = 33

# Ring geometry is capture.afpacket_* (default 64 blocks of 1 MiB: ~0.5 s of a saturated veth); a
# block is handed over when full or after afpacket_block_timeout_ms, which bounds the added latency.
FRAME_BYTES = 2048  # tpacket_req3 wants a frame size; V3 packs frames of any length in blocks
RCVBUF_BYTES = 64 << 20  # fallback path: absorbs bursts while a batch is aggregated
BATCH_FRAMES = 4096  # fallback path: frames per add_frames call at most
POLL_MS = 100  # longest wait for data (the stop flag is checked in between)
EXPIRE_INTERVAL_NS = 200_000_000  # at most; shorter when flows.export_interval_ms is

_TS = struct.Struct("=qq")  # struct timespec on x86_64
_STATS = struct.Struct("=II")  # struct tpacket_stats (the V3 form has one more u32, ignored)
_AUX = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_REQ3 = struct.Struct("=IIIIIII")  # struct tpacket_req3
_BLOCK = struct.Struct(
    "=IIIIII"
)  # version, offset_to_priv, block_status, num_pkts, offset_to_first_pkt, blk_len
_PKT = struct.Struct("=IIIIIIHHIIH")  # tpacket3_hdr: next, sec, nsec, snaplen, len, status, mac, net,
#                                       rxhash, vlan_tci, vlan_tpid


def _with_vlan(frame: bytes, status: int, tci: int, tpid: int) -> bytes:
    """Put back the 802.1Q tag the kernel took out of the frame."""
    if not status & TP_STATUS_VLAN_VALID or len(frame) < 12:
        return frame
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = 0x8100
    return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]


class AfPacketSource:
    """Capture source `afpacket`: a raw socket on `capture.interface`."""

    name = "afpacket"

    def __init__(self, settings: SnifferSettings) -> None:
        self.settings = settings
        self.interface = settings.capture.interface
        self.snaplen = settings.capture.snaplen
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.batches_read = 0
        self._ring: mmap.mmap | None = None
        self._block = 0
        cs = settings.capture
        self.block_bytes = cs.afpacket_block_kib * 1024
        self.block_count = cs.afpacket_blocks
        self.block_timeout_ms = cs.afpacket_block_timeout_ms
        try:
            socket.if_nametoindex(self.interface)
        except OSError:
            raise SourceError(
                f"interface {self.interface!r} not found",
                "capture.interface",
                "name an existing interface (ip link)",
            ) from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise SourceError(
                "raw AF_PACKET socket refused", "capture.source=afpacket", "run as root or grant CAP_NET_RAW"
            ) from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._ring = self._setup_ring(sock)
            if self._ring is None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((self.interface, ETH_P_ALL))
        except OSError as exc:
            if self._ring is not None:
                self._ring.close()
            sock.close()
            raise SourceError(
                f"cannot capture on interface {self.interface!r}: {exc.strerror or exc}",
                "capture.interface",
                "name an existing interface (ip link) and run as root",
            ) from None
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._anc = socket.CMSG_SPACE(_TS.size) + socket.CMSG_SPACE(_AUX.size)
        self.table = FlowTable(settings, interface=self.interface)
        log.info("afpacket capture open", extra={"interface": self.interface, "ring": self._ring is not None})

    def _setup_ring(self, sock: socket.socket) -> mmap.mmap | None:
        """A TPACKET_V3 receive ring, or None (then the recvmsg loop is used)."""
        bb, bc = self.block_bytes, self.block_count
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frames = bb * bc // FRAME_BYTES
            req = _REQ3.pack(bb, bc, FRAME_BYTES, frames, self.block_timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            return mmap.mmap(sock.fileno(), bb * bc, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            log.warning("TPACKET_V3 ring unavailable, reading with recvmsg", extra={"error": str(exc)})
            return None

    def update_settings(self, settings: SnifferSettings) -> None:
        """Hot fields: the flow timeouts of the table."""
        self.table.update_settings(settings.flows)
        self.settings = settings

    # -- TPACKET_V3 ring ----------------------------------------------------------------------

    def _read_blocks(self, ring: mmap.mmap) -> int:
        """Hand every ready block to the flow table in one batch; returns the number of frames.

        One decode + table update per call (not per block): the table's cost per batch grows with
        the distinct flows in it, so fewer, larger batches are much cheaper at high rates."""
        parts: list[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]] = []
        taken = 0
        bb = self.block_bytes
        for _ in range(self.block_count):
            base = self._block * bb
            _ver, _priv, status, npkts, first, used = _BLOCK.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                break
            if npkts:
                used = used if 0 < used <= bb else bb
                part = self._take_block(ring, base, npkts, first, used)
                if part is not None:
                    parts.append(part)
                taken += npkts
            struct.pack_into("=I", ring, base + 8, TP_STATUS_KERNEL)  # give the block back
            self._block = (self._block + 1) % self.block_count
        if parts:
            self.batches_read += 1
            shift = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
            data = b"".join(p[0] for p in parts)
            offsets = np.concatenate([p[1] + k for p, k in zip(parts, shift.tolist(), strict=True)])
            lens = np.concatenate([p[2] for p in parts])
            ts = np.concatenate([p[3] for p in parts])
            self.table.add_packets(decode(data, offsets, lens, ts))
        return taken

    def _take_block(
        self, ring: mmap.mmap, base: int, npkts: int, first: int, used: int
    ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:
        """(bytes, offsets, lengths, timestamps) of a block; a block with VLAN tags the kernel took
        out goes to the table directly (frames rebuilt) and gives None."""
        data = ring[base : base + used]  # one copy of the used part; the block goes back right after
        offs: list[int] = []
        snaps: list[int] = []
        stamps: list[int] = []
        tagged: list[tuple[int, int, int, int]] = []
        off = first
        unpack = _PKT.unpack_from
        for i in range(npkts):
            nxt, sec, nsec, snap, _wire, status, mac, _net, _hash, tci, tpid = unpack(data, off)
            offs.append(off + mac)
            snaps.append(snap)
            stamps.append(sec * 1_000_000_000 + nsec)
            if status & TP_STATUS_VLAN_VALID:
                tagged.append((i, status, tci, tpid))
            off += nxt
        offsets = np.array(offs, dtype=np.int64)
        lens = np.array(snaps, dtype=np.int64)
        ts = np.array(stamps, dtype=np.int64)
        if not tagged:
            return data, offsets, lens, ts
        frames = [data[o : o + n] for o, n in zip(offsets.tolist(), lens.tolist(), strict=True)]
        for i, status, tci, tpid in tagged:
            frames[i] = _with_vlan(frames[i], status, tci, tpid)
        self.table.add_frames(ts, frames)
        return None

    # -- recvmsg fallback ---------------------------------------------------------------------

    def _read_batch(self, sock: socket.socket) -> int:
        """Up to BATCH_FRAMES queued frames into the table; returns how many."""
        ts: list[int] = []
        frames: list[bytes] = []
        recvmsg = sock.recvmsg
        snap, anc, unpack = self.snaplen, self._anc, _TS.unpack
        for _ in range(BATCH_FRAMES):
            try:
                data, ancdata, _flags, _addr = recvmsg(snap, anc)
            except BlockingIOError:
                break
            t = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = unpack(payload[: _TS.size])
                    t = sec * 1_000_000_000 + nsec
                elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUX.size:
                    status, _len, _snap, _mac, _net, tci, tpid = _AUX.unpack(payload[: _AUX.size])
                    data = _with_vlan(data, status, tci, tpid)
            ts.append(t or time.time_ns())
            frames.append(data)
        if frames:
            self.batches_read += 1
            self.table.add_frames(ts, frames)
        return len(frames)

    # -- the source protocol ------------------------------------------------------------------

    def _read(self, wait_ms: int) -> int:
        sock = self._sock
        if sock is None:
            return 0
        if wait_ms > 0:
            ready, _, _ = select.select([sock], [], [], wait_ms / 1000)
            if not ready and self._ring is None:
                return 0
        if self._ring is not None:
            return self._read_blocks(self._ring)
        return self._read_batch(sock)

    def batches(self, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        """Records as flows end (timeouts on the wall clock); on stop: read what is queued, flush."""
        if self._sock is None:
            raise SourceError("the AF_PACKET source is closed", self.interface, "open a new source")
        next_expire = time.monotonic_ns()
        while not stop.is_set():
            interval = min(EXPIRE_INTERVAL_NS, self.settings.flows.export_interval_ms * 1_000_000)
            self._read(max(1, min(POLL_MS, (next_expire - time.monotonic_ns()) // 1_000_000)))
            if time.monotonic_ns() >= next_expire:
                next_expire = time.monotonic_ns() + interval
                # an empty batch too: the service gets the chance to send a partial batch on time
                yield self.table.expire(time.time_ns())
        yield from self.drain()

    def drain(self) -> Iterator[list[flow_pb2.FlowRecord]]:
        """Take the frames already captured, then every open flow (WINDOW, or FIN/RST when closed)."""
        if self._ring is not None:
            # a partly filled block is handed over after the block timeout: wait for it, bounded
            timeout_ms = self.block_timeout_ms
            deadline = time.monotonic() + 4 * timeout_ms / 1000
            while time.monotonic() < deadline:
                if not self._read(timeout_ms):
                    time.sleep(timeout_ms / 4000)
        else:
            while self._read(0):
                pass
        records = self.table.expire(time.time_ns()) + self.table.flush()
        if records:
            yield records

    def _kernel_counts(self) -> None:
        """PACKET_STATISTICS resets on read: accumulate."""
        if self._sock is None:
            return
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return
        packets, drops = _STATS.unpack(raw[: _STATS.size])
        self.kernel_packets += packets
        self.kernel_drops += drops

    def stats(self) -> dict[str, int]:
        """Cumulative counts in the sources' shared vocabulary, plus the socket's own drops."""
        self._kernel_counts()
        c = self.table.counters
        out = {
            "packets": c.packets,
            "bytes": c.bytes,
            "ip_packets": c.ip_packets,
            "flows": c.flows_exported,
            "evicted": c.evicted,
            "late_flows_absorbed": c.late_flows_absorbed,
            "late_packets_absorbed": c.late_packets_absorbed,
            "table_flows": len(self.table),
            "socket_packets": self.kernel_packets,
            "socket_drops": self.kernel_drops,
            "batches": self.batches_read,
            "ring": int(self._ring is not None),
        }
        out.update({f"malformed_{k}": v for k, v in c.malformed.items()})
        out.update({f"end_{k.lower()}": v for k, v in c.exported_by_reason.items()})
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._kernel_counts()
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self._sock.close()
            self._sock = None
