"""`mld-rag-logger verify`: check every artifact pair under a root (or one day directory).

A pair is right when both files exist, the .pb parses, its id matches the file name, it sits in
its day's directory, and the .json equals the JSON form of the .pb. Temp files are reported as
notes (a running writer has them; a start removes leftovers), everything else as problems.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.rag_logger import layout
from services.rag_logger.errors import ArtifactError
from services.rag_logger.store import Recovery, recover


@dataclass(frozen=True)
class Problem:
    path: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.path}: {self.what} — fix: {self.fix}"


@dataclass
class Report:
    pairs_ok: int = 0
    events: int = 0
    configs: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # event ids of the good pairs


def _day_dirs(target: Path) -> list[Path]:
    if not target.exists():
        raise ArtifactError(
            "directory not found", str(target), "pass the artifacts root or one of its day directories"
        )
    if not target.is_dir():
        raise ArtifactError(
            "not a directory", str(target), "pass the artifacts root or one of its day directories"
        )
    if layout.DAY_RE.match(target.name):
        return [target]
    return sorted(p for p in target.iterdir() if p.is_dir() and layout.DAY_RE.match(p.name))


def verify(target: Path) -> Report:
    """Check every pair under `target` (an artifacts root or one day directory)."""
    rep = Report()
    for ddir in _day_dirs(target):
        names = sorted(os.listdir(ddir))
        present = set(names)
        for name in names:
            path = ddir / name
            if layout.is_tmp(name):
                rep.notes.append(
                    f"{path}: temp file (a write in progress, or left by a crash; removed at start)"
                )
                continue
            if name.startswith("events-") and name.endswith(".jsonl"):
                continue
            match = layout.ARTIFACT_RE.match(name)
            if not match:
                rep.notes.append(f"{path}: not an artifact, ignored")
                continue
            kind, rid, ext = match.groups()
            other = layout.artifact_name(kind, rid, "json" if ext == "pb" else "pb")
            if other not in present:
                if ext == "pb":
                    rep.problems.append(
                        Problem(
                            str(path),
                            "half pair: the .json is missing",
                            "run `mld-rag-logger verify --repair` (or start the service) to rebuild it from the .pb",
                        )
                    )
                else:
                    rep.problems.append(
                        Problem(
                            str(path),
                            "half pair: the .pb is missing",
                            "restore the .pb from a backup or remove the .json",
                        )
                    )
                continue
            if ext == "pb":
                problem = _check_pair(ddir, kind, rid)
                if problem:
                    rep.problems.append(problem)
                else:
                    rep.pairs_ok += 1
                    if kind == "event":
                        rep.events += 1
                        rep.ids.add(rid)
                    else:
                        rep.configs += 1
    return rep


def _check_pair(ddir: Path, kind: str, rid: str) -> Problem | None:
    pb_path = ddir / layout.artifact_name(kind, rid, "pb")
    js_path = ddir / layout.artifact_name(kind, rid, "json")
    pb = pb_path.read_bytes()
    try:
        inner = layout.record_id_of(kind, pb)
        expected = layout.expected_json(kind, pb)
        day = layout.day_of_pb(kind, pb)
    except Exception as exc:  # protobuf raises DecodeError, or ValueError on NaN in the JSON form
        return Problem(
            str(pb_path), f"the .pb does not parse: {exc}", "restore it from a backup; the pair is unusable"
        )
    if inner != rid:
        return Problem(
            str(pb_path), f"the .pb holds id {inner!r}, not the one in its name", "rename or remove the pair"
        )
    if day is not None and day != ddir.name:
        return Problem(
            str(pb_path), f"the event's day is {day}, but it is in {ddir.name}/", f"move the pair to {day}/"
        )
    try:
        actual = json.loads(js_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        return Problem(
            str(js_path),
            f"the .json does not parse: {exc}",
            "run `mld-rag-logger verify --repair` after removing it",
        )
    if actual != expected:
        fields = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        return Problem(
            str(js_path),
            f"the .json disagrees with the .pb in: {', '.join(fields[:8])}",
            "the .pb is the source of truth: remove the .json and run `mld-rag-logger verify --repair`",
        )
    return None


def repair(target: Path) -> Recovery:
    """What a start does: remove temp files and rebuild missing .json files from their .pb."""
    _day_dirs(target)
    root = target.parent if layout.DAY_RE.match(target.name) else target
    return recover(str(root))
