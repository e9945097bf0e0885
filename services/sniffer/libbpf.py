"""A thin ctypes layer over Debian's libbpf.so.1: load the XDP object, attach it, read its maps.

Why ctypes and not a binding package: libbpf.so.1 is already on the host (libbpf-dev), and the few
calls the sniffer needs (open/load, XDP attach/detach/query, map batch lookup/delete, ring buffer
poll) fit in one module. The ctypes structures mirror services/sniffer/bpf/xdp_flow.h; the unit
test tests/unit/test_xdp_layout.py checks them against the compiled object's BTF.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from services.sniffer.errors import SourceError

LIBBPF_NAMES = ("libbpf.so.1", "/usr/lib/x86_64-linux-gnu/libbpf.so.1")

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
# linux/bpf.h
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_OBJ_NAME_LEN = 16

# xdp_flow.h
DIR_SRC2DST = 0
DIR_DST2SRC = 1
EVENT_START = 1
EVENT_END = 2
EVENT_TERM = 3
END_NONE, END_IDLE, END_ACTIVE, END_FIN, END_RST = 0, 1, 2, 3, 4
STAT_NAMES: tuple[str, ...] = (
    "packets",
    "flow_packets",
    "flow_bytes",
    "flows_created",
    "flows_ended",
    "ringbuf_full",
    "map_full",
    "notice_lost",
    # 8..18: services/sniffer/decode.py MALFORMED_REASONS, in the kernel's index order
    "truncated_frame",
    "non_ip",
    "vlan_too_deep",
    "truncated_ip",
    "bad_ip_version",
    "bad_ip_header_length",
    "bad_ip_total_length",
    "ip_fragment",
    "ipv6_ext_headers",
    "truncated_l4",
    "bad_tcp_header_length",
    "lost_packets",
    "bytes",
)
"""Names of the kernel's per-CPU counters (MLD_STAT_* in xdp_flow.h), by index."""
MALFORMED = STAT_NAMES[8:19]
STAT_MAX = 24


class FlowKey(ctypes.Structure):
    """struct mld_flow_key."""

    _fields_ = [
        ("src_addr", ctypes.c_uint8 * 16),
        ("dst_addr", ctypes.c_uint8 * 16),
        ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
        ("vlan_id", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("ip_version", ctypes.c_uint8),
    ]


class Piat(ctypes.Structure):
    """struct mld_piat (sum of squares as 128 bits: lo + hi << 64)."""

    _fields_ = [
        ("min_ns", ctypes.c_uint64),
        ("max_ns", ctypes.c_uint64),
        ("sum_ns", ctypes.c_uint64),
        ("sumsq_lo", ctypes.c_uint64),
        ("sumsq_hi", ctypes.c_uint64),
    ]


class Dir(ctypes.Structure):
    """struct mld_dir."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("ps_sumsq", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("ps_min", ctypes.c_uint32),
        ("ps_max", ctypes.c_uint32),
        ("piat", Piat),
        ("syn", ctypes.c_uint32),
        ("ack", ctypes.c_uint32),
        ("psh", ctypes.c_uint32),
        ("rst", ctypes.c_uint32),
        ("fin", ctypes.c_uint32),
        ("urg", ctypes.c_uint32),
    ]


class FlowValue(ctypes.Structure):
    """struct mld_flow_value."""

    _fields_ = [
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("term_ns", ctypes.c_uint64),
        ("term_reason", ctypes.c_uint32),
        ("fin_dirs", ctypes.c_uint32),
        ("icmp", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("piat", Piat),
        ("dir", Dir * 2),
    ]


class FlowEvent(ctypes.Structure):
    """struct mld_flow_event (ring-buffer notice)."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("key", FlowKey),
        ("c", FlowValue),
    ]


class Config(ctypes.Structure):
    """struct mld_config."""

    _fields_ = [
        ("idle_timeout_ns", ctypes.c_uint64),
        ("active_timeout_ns", ctypes.c_uint64),
        ("linger_ns", ctypes.c_uint64),
        ("start_notices", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("half_open_ns", ctypes.c_uint64),
    ]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "mld_flow_key": FlowKey,
    "mld_piat": Piat,
    "mld_dir": Dir,
    "mld_flow_value": FlowValue,
    "mld_flow_event": FlowEvent,
    "mld_config": Config,
}
"""C struct name -> ctypes mirror, for the layout test."""


class BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


RingBufferSampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes we use; loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    last: OSError | None = None
    for name in LIBBPF_NAMES:
        try:
            handle = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            last = exc
    else:
        raise SourceError(
            f"libbpf.so.1 cannot be loaded: {last}", "services/sniffer/libbpf.py", "apt-get install libbpf1"
        )
    vp, i, u32, u64, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_char_p
    protos: dict[str, tuple[Any, list[Any]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__set_max_entries": (i, [vp, u32]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query_id": (i, [i, i, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, u64]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_lookup_and_delete_elem": (i, [i, vp, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
        "ring_buffer__new": (vp, [i, RingBufferSampleFn, vp, vp]),
        "ring_buffer__poll": (i, [vp, i]),
        "ring_buffer__consume": (i, [vp]),
        "ring_buffer__free": (None, [vp]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for fname, (restype, argtypes) in protos.items():
        fn = getattr(handle, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = handle
    return handle


def _err(rc: int) -> int:
    """libbpf returns -errno; older paths set errno and return -1."""
    if rc == -1:
        return ctypes.get_errno() or errno.EPERM
    return -rc


def _fail(what: str, rc: int, where: str, fix: str) -> SourceError:
    code = _err(rc)
    return SourceError(f"{what}: {os.strerror(code)} (errno {code})", where, fix)


def num_possible_cpus() -> int:
    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise _fail("cannot count possible CPUs", n, "libbpf", "check /sys/devices/system/cpu/possible")
    return n


def xdp_mode_flags(mode: str) -> int:
    """'generic' -> SKB mode, 'native' -> driver mode."""
    return XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE


def xdp_attached(ifindex: int, mode: str) -> tuple[int, str]:
    """(program id, program name) attached to the interface in `mode`; (0, '') when none."""
    prog_id = ctypes.c_uint32(0)
    rc = lib().bpf_xdp_query_id(ifindex, xdp_mode_flags(mode), ctypes.byref(prog_id))
    if rc != 0:
        raise _fail("XDP query failed", rc, f"ifindex {ifindex}", "check the interface exists")
    if prog_id.value == 0:
        return 0, ""
    fd = lib().bpf_prog_get_fd_by_id(prog_id.value)
    if fd < 0:
        return prog_id.value, ""
    try:
        # struct bpf_prog_info: `name` is at offset 64 (after type..map_ids); the rest stays zero.
        buf = (ctypes.c_uint8 * 256)()
        size = ctypes.c_uint32(ctypes.sizeof(buf))
        if lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)) != 0:
            return prog_id.value, ""
        name = bytes(buf[64 : 64 + BPF_OBJ_NAME_LEN]).split(b"\0", 1)[0].decode(errors="replace")
        return prog_id.value, name
    finally:
        os.close(fd)


def xdp_detach(ifindex: int, mode: str) -> None:
    rc = lib().bpf_xdp_detach(ifindex, xdp_mode_flags(mode), None)
    if rc != 0:
        raise _fail(
            "XDP detach failed", rc, f"ifindex {ifindex}", "detach by hand: ip link set dev IF xdp off"
        )


class BpfMap:
    """A map of a loaded object, by fd; key/value types are ctypes classes."""

    def __init__(self, name: str, fd: int, key_type: type[Any], value_type: type[Any]) -> None:
        self.name = name
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type

    def lookup(self, key: Any) -> Any | None:
        value = self.value_type()
        rc = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if rc != 0:
            if _err(rc) == errno.ENOENT:
                return None
            raise _fail(f"lookup in map {self.name} failed", rc, self.name, "check the program is loaded")
        return value

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        rc = lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags)
        if rc != 0:
            raise _fail(f"update of map {self.name} failed", rc, self.name, "check the map's size")

    def delete(self, key: Any) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if rc != 0 and _err(rc) != errno.ENOENT:
            raise _fail(f"delete in map {self.name} failed", rc, self.name, "check the program is loaded")
        return bool(rc == 0)

    def lookup_and_delete(self, key: Any) -> Any | None:
        """Atomic take: the entry's last value, and no packet lost between read and delete."""
        value = self.value_type()
        rc = lib().bpf_map_lookup_and_delete_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if rc != 0:
            if _err(rc) == errno.ENOENT:
                return None
            raise _fail(f"lookup-and-delete in map {self.name} failed", rc, self.name, "needs Linux >= 5.14")
        return value

    def iter_batches(self, chunk: int = 16384) -> Iterator[tuple[memoryview, memoryview, int]]:
        """Every (key, value) in few syscalls: yields (keys, values, n) raw views of `n` entries.

        The two buffers are reused between chunks: consume a chunk before asking for the next."""
        keys = (self.key_type * chunk)()
        vals = (self.value_type * chunk)()
        kview = memoryview(keys).cast("B")
        vview = memoryview(vals).cast("B")
        ks, vs = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        in_batch = ctypes.c_uint64(0)
        out_batch = ctypes.c_uint64(0)
        opts = BatchOpts(ctypes.sizeof(BatchOpts), 0, 0)
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lib().bpf_map_lookup_batch(
                self.fd,
                None if first else ctypes.byref(in_batch),
                ctypes.byref(out_batch),
                keys,
                vals,
                ctypes.byref(count),
                ctypes.byref(opts),
            )
            first = False
            err = _err(rc) if rc != 0 else 0
            if err not in (0, errno.ENOENT):
                raise _fail(f"batch lookup in map {self.name} failed", rc, self.name, "needs Linux >= 5.6")
            n = count.value
            if n:
                yield kview[: n * ks], vview[: n * vs], n
            if err == errno.ENOENT:
                return
            in_batch.value = out_batch.value

    def percpu_u64(self, index: int, ncpus: int) -> int:
        """Sum over CPUs of one u64 slot of a per-CPU array."""
        key = ctypes.c_uint32(index)
        vals = (ctypes.c_uint64 * ncpus)()
        rc = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), vals)
        if rc != 0:
            raise _fail(f"lookup in map {self.name} failed", rc, self.name, "check the program is loaded")
        return int(sum(vals))


class RingBuffer:
    """libbpf ring_buffer over one BPF_MAP_TYPE_RINGBUF; `callback(bytes)` per record."""

    def __init__(self, map_fd: int, callback: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            callback(ctypes.string_at(data or 0, size))
            return 0

        self._sample = RingBufferSampleFn(sample)  # kept alive as long as the ring buffer
        self._rb = lib().ring_buffer__new(map_fd, self._sample, None, None)
        if not self._rb:
            code = ctypes.get_errno()
            raise SourceError(
                f"ring buffer cannot be opened: {os.strerror(code)}",
                "mld_events",
                "check the program is loaded",
            )

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms and consume what is ready; returns the number of records."""
        n = int(lib().ring_buffer__poll(self._rb, timeout_ms))
        if n < 0 and -n != errno.EINTR:
            raise SourceError(
                f"ring buffer poll failed: {os.strerror(-n)}", "mld_events", "restart the sniffer"
            )
        return max(n, 0)

    def consume(self) -> int:
        return max(int(lib().ring_buffer__consume(self._rb)), 0)

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None


class BpfObject:
    """An opened and loaded BPF object file; close() frees maps and programs not pinned or attached."""

    def __init__(self, path: Path, max_entries: dict[str, int] | None = None) -> None:
        self.path = path
        self._obj = lib().bpf_object__open_file(str(path).encode(), None)
        if not self._obj:
            code = ctypes.get_errno()
            raise SourceError(
                f"BPF object cannot be opened: {os.strerror(code)}", str(path), "rebuild it with 'make bpf'"
            )
        try:
            for name, n in (max_entries or {}).items():
                rc = lib().bpf_map__set_max_entries(self._map_ptr(name), n)
                if rc != 0:
                    raise _fail(f"cannot size map {name} to {n}", rc, str(path), "use a smaller map size")
            rc = lib().bpf_object__load(self._obj)
            if rc != 0:
                raise _fail(
                    "BPF object rejected by the kernel (verifier log above)",
                    rc,
                    str(path),
                    "run as root on a kernel with BTF (>= 5.15); rebuild with 'make bpf'",
                )
        except BaseException:
            self.close()
            raise

    def _map_ptr(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise SourceError(f"map {name!r} not in the object", str(self.path), "rebuild it with 'make bpf'")
        return int(ptr)

    def map(self, name: str, key_type: type[Any], value_type: type[Any]) -> BpfMap:
        fd = int(lib().bpf_map__fd(self._map_ptr(name)))
        if fd < 0:
            raise _fail(f"map {name} has no fd", fd, str(self.path), "load the object first")
        return BpfMap(name, fd, key_type, value_type)

    def map_fd(self, name: str) -> int:
        return int(lib().bpf_map__fd(self._map_ptr(name)))

    def prog_fd(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not ptr:
            raise SourceError(
                f"program {name!r} not in the object", str(self.path), "rebuild it with 'make bpf'"
            )
        fd = int(lib().bpf_program__fd(ptr))
        if fd < 0:
            raise _fail(f"program {name} has no fd", fd, str(self.path), "load the object first")
        return fd

    def attach_xdp(self, prog: str, ifindex: int, mode: str) -> None:
        """Attach only if no program is there (the caller detaches a stale one of ours first)."""
        flags = xdp_mode_flags(mode) | XDP_FLAGS_UPDATE_IF_NOEXIST
        rc = lib().bpf_xdp_attach(ifindex, self.prog_fd(prog), flags, None)
        if rc != 0:
            fix = (
                "use xdp.mode=generic (the driver has no native XDP, or the MTU is too large for it)"
                if mode == "native"
                else "detach the other XDP program or pick another interface"
            )
            raise _fail(f"XDP attach ({mode}) failed", rc, f"ifindex {ifindex}", fix)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None
