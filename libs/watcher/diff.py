"""Pure functions on settings documents: flatten, diff, hot/restart split, merge, apply.

A path is the dotted name of a leaf (`thresholds.drop`); lists are leaves (a changed allow-list is
one change). `MISSING` stands for a field absent on one side.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Change:
    """One changed leaf; `hot` says whether it can be applied to a running service."""

    path: str
    old: Any
    new: Any
    hot: bool = False


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; an empty dict stays a leaf so it is not lost."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def is_hot(path: str, hot_fields: Iterable[str]) -> bool:
    """A path is hot when it is, or lies under, one of the hot field patterns.

    Patterns are dotted paths (`allow`, `thresholds`), `prefix.*` for everything under a prefix,
    or shell-style globs (`models.*.enabled`).
    """
    for pattern in hot_fields:
        base = pattern[:-2] if pattern.endswith(".*") else pattern
        if path == base or path.startswith(base + "."):
            return True
        if "*" in base and (fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern + ".*")):
            return True
    return False


def diff(old: Mapping[str, Any], new: Mapping[str, Any], hot_fields: Iterable[str] = ()) -> list[Change]:
    """Every leaf that differs between two documents, sorted by path, marked hot or not."""
    hot = tuple(hot_fields)
    a, b = flatten(old), flatten(new)
    changes = []
    for path in sorted(a.keys() | b.keys()):
        va, vb = a.get(path, MISSING), b.get(path, MISSING)
        if va is MISSING or vb is MISSING or va != vb or type(va) is not type(vb):
            changes.append(Change(path, va, vb, is_hot(path, hot)))
    return changes


def split(changes: Iterable[Change]) -> tuple[list[Change], list[Change]]:
    """(hot changes, restart-required changes)."""
    hot: list[Change] = []
    restart: list[Change] = []
    for c in changes:
        (hot if c.hot else restart).append(c)
    return hot, restart


def deep_merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers override earlier ones key by key; nested objects merge, other values replace."""
    out: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def apply_changes(doc: Mapping[str, Any], changes: Iterable[Change]) -> dict[str, Any]:
    """A copy of `doc` with each change's new value set at its path (MISSING removes the field)."""
    out = copy.deepcopy(dict(doc))
    ordered = list(changes)
    # removals first, so that a leaf replaced by an object (or the reverse) ends up right
    for c in sorted(ordered, key=lambda c: c.new is not MISSING):
        parts = c.path.split(".")
        node: Any = out
        chain = [out]
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                if c.new is MISSING:
                    break
                nxt = {}
                node[part] = nxt
            node = nxt
            chain.append(node)
        else:
            if c.new is not MISSING:
                node[parts[-1]] = copy.deepcopy(c.new)
                continue
            node.pop(parts[-1], None)
            for depth in range(len(parts) - 1, 0, -1):  # drop objects the removal emptied
                if chain[depth]:
                    break
                chain[depth - 1].pop(parts[depth - 1], None)
    return out
