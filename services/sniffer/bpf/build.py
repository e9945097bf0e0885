"""Compile the CO-RE XDP object: vmlinux.h from the running kernel's BTF, then clang -target bpf.

Run by `make bpf` (and `make setup`); `ensure_object()` also builds lazily on first use, so the
sniffer works on a fresh machine. The object and vmlinux.h go to build/bpf/ (not committed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from services.sniffer.errors import SourceError

SRC_DIR = Path(__file__).resolve().parent
SOURCES = (SRC_DIR / "xdp_flow.c", SRC_DIR / "xdp_flow.h")
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
CLANG_FLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86", "-Wall")


def build_dir() -> Path:
    """build/bpf under the repository, or $MLD_BPF_DIR."""
    env = os.environ.get("MLD_BPF_DIR")
    return Path(env) if env else SRC_DIR.parents[2] / "build" / "bpf"


def object_path() -> Path:
    return build_dir() / "xdp_flow.o"


def _run(cmd: list[str], what: str, out: Path | None = None) -> None:
    try:
        if out is None:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        else:
            with out.open("w") as fh:
                proc = subprocess.run(
                    cmd, stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120, check=False
                )
    except FileNotFoundError:
        raise SourceError(
            f"{cmd[0]} not found while {what}",
            "services/sniffer/bpf",
            "run 'make setup' (installs clang, bpftool)",
        ) from None
    if proc.returncode != 0:
        raise SourceError(
            f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}",
            " ".join(cmd[:3]),
            "check that clang, bpftool and libbpf-dev are installed and the kernel has BTF",
        )


def build(force: bool = False) -> Path:
    """Compile xdp_flow.o when missing or older than its sources; returns its path."""
    obj = object_path()
    if not force and obj.exists() and all(obj.stat().st_mtime >= s.stat().st_mtime for s in SOURCES):
        return obj
    if not VMLINUX_BTF.exists():
        raise SourceError(
            "the kernel exposes no BTF", str(VMLINUX_BTF), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    vmlinux = out / "vmlinux.h"
    if force or not vmlinux.exists():
        tmp = out / f"vmlinux.h.{os.getpid()}"
        _run(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"], "dumping vmlinux BTF", tmp)
        tmp.replace(vmlinux)
    tmp_obj = out / f"xdp_flow.o.{os.getpid()}"
    clang = shutil.which("clang") or "clang"
    cmd = [clang, *CLANG_FLAGS, f"-I{out}", f"-I{SRC_DIR}", "-c", str(SOURCES[0]), "-o", str(tmp_obj)]
    _run(cmd, "compiling xdp_flow.c")
    tmp_obj.replace(obj)  # atomic: a concurrent loader never sees half an object
    return obj


def ensure_object() -> Path:
    """The compiled object, built now if needed."""
    return build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force)
    except SourceError as exc:
        print(f"bpf: error: {exc.message}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
