"""Reading pcap and pcapng files into one byte buffer plus per-packet offsets.

The record walk is the only per-packet Python loop on the pcap path (each record's position
depends on the previous one's length); everything after it is vectorised in `decode.py`.
Damage (a truncated record, a corrupt block) stops the walk and is reported as an error naming
the file, the packet number and the byte offset, while the packets read before it are kept.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.sniffer.errors import CaptureFileError
from services.sniffer.native import pcap_walk

LINKTYPE_ETHERNET = 1
MAX_RECORD_BYTES = 262_144  # libpcap's MAXIMUM_SNAPLEN: anything larger is a corrupt header

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microseconds, little endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
Buffer = bytes | mmap.mmap


@dataclass
class Capture:
    """Packets of one file: `data[offsets[i] : offsets[i] + caplens[i]]` is frame i."""

    path: str
    data: Buffer
    ts_ns: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    caplens: npt.NDArray[np.int64]
    linktypes: npt.NDArray[np.int64]
    error: CaptureFileError | None = None
    format: str = "pcap"
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def packets(self) -> int:
        return len(self.offsets)


def _map(path: str) -> Buffer:
    """The file's bytes, memory-mapped (no copy; pages are read as the decoder touches them)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4096:
            return f.read()
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_capture(path: Path | str) -> Capture:
    """Read a whole pcap/pcapng file; raises CaptureFileError when it cannot be opened at all."""
    p = str(path)
    try:
        data = _map(p)
    except FileNotFoundError:
        raise CaptureFileError("capture file not found", p, "check the path") from None
    except IsADirectoryError:
        raise CaptureFileError(
            "is a directory, not a capture file", p, "pass a .pcap or .pcapng file"
        ) from None
    except OSError as exc:
        raise CaptureFileError(f"cannot read: {exc.strerror}", p, "check the path and permissions") from None
    magic = data[:4]
    if magic in _PCAP_MAGICS:
        return _read_pcap(p, data)
    if magic == _PCAPNG_MAGIC:
        return _read_pcapng(p, data)
    if len(data) < 4:
        raise CaptureFileError(
            f"not a pcap or pcapng file: only {len(data)} bytes",
            p,
            "pass a capture written by tcpdump/tshark",
        )
    raise CaptureFileError(
        f"not a pcap or pcapng file (magic bytes {magic.hex()})",
        p,
        "pass a capture written by tcpdump/tshark, or convert it with `editcap -F pcap`",
    )


def _read_pcap(p: str, data: Buffer) -> Capture:
    endian, ts_mult = _PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        raise CaptureFileError(
            f"truncated pcap header: {len(data)} of 24 bytes", p, "the file is damaged; re-capture it"
        )
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise CaptureFileError(
            f"unsupported link type {linktype} (only Ethernet, 1, is decoded)",
            p,
            "capture on an Ethernet interface, or convert with `editcap -T ether`",
        )
    unpack = struct.Struct(endian + "IIII").unpack_from
    n = len(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    native = pcap_walk(buf, 24, endian == ">", MAX_RECORD_BYTES)
    if native is not None:
        rec, off = native
    else:
        offs = _walk_le(data, n) if endian == "<" else _walk_struct(data, n, unpack)
        off = offs.pop()  # the walk returns where it stopped as its last element
        rec = np.array(offs, dtype=np.int64)
    error: CaptureFileError | None = None
    if off < n:
        k = len(rec) + 1
        if off + 16 > n:
            what = f"truncated at packet {k} (byte {off}): record header needs 16 bytes, {n - off} left"
        else:
            incl = unpack(data, off)[2]
            if incl > MAX_RECORD_BYTES:
                what = (
                    f"corrupt record at packet {k} (byte {off}): captured length {incl} > {MAX_RECORD_BYTES}"
                )
            else:
                what = f"truncated at packet {k} (byte {off}): record needs {incl} bytes, {n - off - 16} left"
        error = CaptureFileError(
            what, p, f"the first {len(rec)} packets were used; re-capture or cut the file with editcap"
        )
    # headers of every record at once: (sec, frac, incl) gathered from the record offsets
    hdr = np.ascontiguousarray(buf[rec[:, None] + np.arange(12)]).view(endian + "u4").astype(np.int64)
    sec, frac, incl = hdr[:, 0], hdr[:, 1], hdr[:, 2]
    ts = sec * 1_000_000_000 + frac * ts_mult
    return Capture(
        p,
        data,
        ts.astype(np.int64),
        rec + 16,
        incl.astype(np.int64),
        np.full(len(rec), LINKTYPE_ETHERNET, dtype=np.int64),
        error,
        "pcap",
    )


def _walk_le(data: Buffer, n: int) -> list[int]:
    """Record offsets of a little-endian pcap, then the offset where the walk stopped.

    The one per-packet loop of the pcap path, kept to a memoryview index and two additions: the
    captured length is read through four uint32 views (one per byte alignment).
    """
    mv = memoryview(data)
    views = [mv[k : k + (n - k) // 4 * 4].cast("I") for k in range(4)]
    offs: list[int] = []
    add = offs.append
    off = 24
    limit = n - 16
    while off <= limit:
        p = off + 8
        incl = views[p & 3][p >> 2]
        if incl > MAX_RECORD_BYTES or p + 8 + incl > n:
            break
        add(off)
        off = p + 8 + incl
    add(off)
    return offs


def _walk_struct(data: Buffer, n: int, unpack: Any) -> list[int]:
    """The same walk for big-endian files, through struct."""
    offs: list[int] = []
    off = 24
    while off <= n - 16:
        incl = unpack(data, off)[2]
        if incl > MAX_RECORD_BYTES or off + 16 + incl > n:
            break
        offs.append(off)
        off += 16 + incl
    offs.append(off)
    return offs


def _tsresol_mult(options: bytes, endian: str) -> tuple[int, int]:
    """(multiplier, divisor) turning raw timestamp units into ns, from the if_tsresol option."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            units_per_s = 2 ** (v & 127) if v & 128 else 10 ** (v & 127)
            if units_per_s <= 1_000_000_000:
                return 1_000_000_000 // units_per_s, 1
            return 1, units_per_s // 1_000_000_000
        pos += 4 + ((length + 3) & ~3)
    return 1_000, 1  # default: microseconds


def _read_pcapng(p: str, data: Buffer) -> Capture:
    n = len(data)
    endian = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, mult, div)
    ts_list: list[int] = []
    off_list: list[int] = []
    cap_list: list[int] = []
    lt_list: list[int] = []
    error: CaptureFileError | None = None
    skipped = 0
    off = 0
    while off < n:
        where = f"packet {len(off_list) + 1} (byte {off})"
        if off + 12 > n:
            error = CaptureFileError(
                f"truncated at {where}: block header needs 12 bytes, {n - off} left",
                p,
                f"the first {len(off_list)} packets were used; re-capture the file",
            )
            break
        btype_raw = data[off : off + 4]
        if btype_raw == _PCAPNG_MAGIC:
            bom = data[off + 8 : off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                error = CaptureFileError(
                    f"corrupt section header at byte {off}", p, f"the first {len(off_list)} packets were used"
                )
                break
            interfaces = []
        btype, blen = struct.unpack_from(endian + "II", data, off)
        if blen < 12 or blen % 4 or off + blen > n:
            error = CaptureFileError(
                f"truncated or corrupt block at {where}: length {blen}, {n - off} bytes left",
                p,
                f"the first {len(off_list)} packets were used; re-capture the file",
            )
            break
        body = off + 8
        if btype == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", data, body)[0]
            mult, div = _tsresol_mult(data[body + 8 : off + blen - 4], endian)
            interfaces.append((linktype, mult, div))
        elif btype == 6:  # enhanced packet
            iface, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIIII", data, body)
            if iface >= len(interfaces) or caplen > blen - 32 or caplen > MAX_RECORD_BYTES:
                error = CaptureFileError(
                    f"corrupt packet block at {where}: interface {iface}, captured length {caplen}",
                    p,
                    f"the first {len(off_list)} packets were used; the file is damaged",
                )
                break
            linktype, mult, div = interfaces[iface]
            raw = (ts_hi << 32) | ts_lo
            ts_list.append(raw * mult // div)
            off_list.append(body + 20)
            cap_list.append(caplen)
            lt_list.append(linktype)
        elif btype == 3:  # simple packet: no timestamp, first interface
            if not interfaces:
                error = CaptureFileError(
                    f"packet block before any interface at {where}", p, "the file is damaged"
                )
                break
            orig = struct.unpack_from(endian + "I", data, body)[0]
            caplen = min(orig, blen - 16)
            ts_list.append(ts_list[-1] if ts_list else 0)
            off_list.append(body + 4)
            cap_list.append(caplen)
            lt_list.append(interfaces[0][0])
        else:
            skipped += 1
        off += blen
    return Capture(
        p,
        data,
        np.array(ts_list, dtype=np.int64),
        np.array(off_list, dtype=np.int64),
        np.array(cap_list, dtype=np.int64),
        np.array(lt_list, dtype=np.int64),
        error,
        "pcapng",
        {"skipped_blocks": skipped},
    )
