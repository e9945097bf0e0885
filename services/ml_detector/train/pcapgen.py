"""Packet crafting for labelled training captures: Ethernet/IPv4/TCP/UDP/ICMP built with struct,
written as classic pcap (microsecond, linktype Ethernet). TCP sessions follow the real exchange
(handshake, segmented data with ACKs, FIN or RST close), so the sniffer's extractor sees the same
packet sizes, flags and timings a capture of the real tool would show. Deterministic for a seed.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

MSS = 1460
_ETH_TYPE_IPV4 = 0x0800
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(ip: bytes) -> bytes:
    return b"\x02\x00" + ip


class Capture:
    """Packets of one capture, kept as (time ns, frame) and written sorted by time."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, int, bytes]] = []
        self._ident = 0

    def __len__(self) -> int:
        return len(self.packets)

    def ip(self, t: float, src: str, dst: str, proto: int, l4: bytes, ttl: int = 64) -> None:
        s = ipaddress.IPv4Address(src).packed
        d = ipaddress.IPv4Address(dst).packed
        self._ident = (self._ident + 1) & 0xFFFF
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), self._ident, 0x4000, ttl, proto, 0, s, d)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        dst_mac = b"\xff" * 6 if dst.endswith(".255") else _mac(d)
        frame = dst_mac + _mac(s) + struct.pack("!H", _ETH_TYPE_IPV4) + hdr + l4
        self.packets.append((int(t * 1e9), len(self.packets), frame))

    def tcp(
        self,
        t: float,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        payload: int = 0,
    ) -> None:
        opts = b"\x02\x04\x05\xb4" if flags & SYN else b""
        off = (20 + len(opts)) // 4
        hdr = struct.pack(
            "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags, 64240, 0, 0
        )
        self.ip(t, src, dst, 6, hdr + opts + b"\x00" * payload)

    def udp(self, t: float, src: str, dst: str, sport: int, dport: int, payload: int) -> None:
        self.ip(t, src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + payload, 0) + b"\x00" * payload)

    def icmp(
        self, t: float, src: str, dst: str, itype: int, code: int, ident: int, seq: int, payload: int
    ) -> None:
        body = struct.pack("!BBHHH", itype, code, 0, ident, seq) + b"\x00" * payload
        body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
        self.ip(t, src, dst, 1, body, ttl=64)

    def write(self, path: Path) -> int:
        """Write the capture sorted by time; returns the packet count."""
        self.packets.sort()
        with path.open("wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for t_ns, _, frame in self.packets:
                sec, rem = divmod(t_ns, 1_000_000_000)
                fh.write(struct.pack("<IIII", sec, rem // 1000, len(frame), len(frame)))
                fh.write(frame)
        return len(self.packets)


class Tcp:
    """One TCP connection between client c and server s, advanced through time by its methods."""

    def __init__(self, cap: Capture, t: float, c: str, s: str, cport: int, sport: int, rtt: float) -> None:
        self.cap, self.t, self.c, self.s, self.cp, self.sp, self.rtt = cap, t, c, s, cport, sport, rtt
        self.cseq, self.sseq = (cport * 7919) & 0xFFFFFFF, (sport * 104729 + cport) & 0xFFFFFFF

    def handshake(self, answer: str = "open") -> bool:
        """SYN; open -> SYN-ACK + ACK, closed -> RST-ACK, filtered -> no reply, synonly -> SYN-ACK
        answered by the prober's RST (nmap -sS, hping3). True when the connection is open."""
        cap = self.cap
        cap.tcp(self.t, self.c, self.s, self.cp, self.sp, SYN, self.cseq, 0)
        self.cseq += 1
        if answer == "filtered":
            return False
        self.t += self.rtt
        if answer == "closed":
            cap.tcp(self.t, self.s, self.c, self.sp, self.cp, RST | ACK, 0, self.cseq)
            return False
        cap.tcp(self.t, self.s, self.c, self.sp, self.cp, SYN | ACK, self.sseq, self.cseq)
        self.sseq += 1
        if answer == "synonly":
            self.t += 0.0001
            cap.tcp(self.t, self.c, self.s, self.cp, self.sp, RST, self.cseq, 0)
            return False
        self.t += 0.0002
        cap.tcp(self.t, self.c, self.s, self.cp, self.sp, ACK, self.cseq, self.sseq)
        return True

    def send(self, from_client: bool, nbytes: int, gap: float = 0.0) -> None:
        """nbytes of data in MSS segments, the receiver ACKing every second segment."""
        cap = self.cap
        self.t += gap
        a, b = (self.c, self.s) if from_client else (self.s, self.c)
        ap, bp = (self.cp, self.sp) if from_client else (self.sp, self.cp)
        seg = 0
        left = nbytes
        while left > 0:
            n = min(MSS, left)
            left -= n
            seq = self.cseq if from_client else self.sseq
            ack = self.sseq if from_client else self.cseq
            cap.tcp(self.t, a, b, ap, bp, ACK | (PSH if left == 0 else 0), seq, ack, n)
            if from_client:
                self.cseq += n
            else:
                self.sseq += n
            seg += 1
            self.t += 0.00012
            if seg % 2 == 0 or left == 0:
                self.t += self.rtt / 2
                cap.tcp(
                    self.t,
                    b,
                    a,
                    bp,
                    ap,
                    ACK,
                    self.sseq if from_client else self.cseq,
                    self.cseq if from_client else self.sseq,
                )

    def close(self, how: str = "fin", by_client: bool = True) -> None:
        cap = self.cap
        self.t += 0.001
        a, b = (self.c, self.s) if by_client else (self.s, self.c)
        ap, bp = (self.cp, self.sp) if by_client else (self.sp, self.cp)
        sa, sb = (self.cseq, self.sseq) if by_client else (self.sseq, self.cseq)
        if how == "rst":
            cap.tcp(self.t, a, b, ap, bp, RST | ACK, sa, sb)
            return
        if how == "none":
            return
        cap.tcp(self.t, a, b, ap, bp, FIN | ACK, sa, sb)
        self.t += self.rtt / 2
        cap.tcp(self.t, b, a, bp, ap, FIN | ACK, sb, sa + 1)
        self.t += self.rtt / 2
        cap.tcp(self.t, a, b, ap, bp, ACK, sa + 1, sb + 1)
