"""Where artifacts live and what they contain: pure functions shared by the writer and `verify`.

<root>/YYYY-MM-DD/event_<id>.pb     serialized ml_defender.v1.DetectionEvent
<root>/YYYY-MM-DD/event_<id>.json   libs.common.events.event_to_dict of the same event
<root>/YYYY-MM-DD/config_<id>.pb    serialized ml_defender.v1.ConfigChange (id = change_id)
<root>/YYYY-MM-DD/config_<id>.json  libs.common.events.config_change_to_dict of it
<root>/YYYY-MM-DD/events-YYYY-MM-DD.jsonl   one event JSON per line, appended after the commit
<root>/YYYY-MM-DD/.<name>.tmp       a file being written; never read, removed at start
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from libs.common.events import config_change_to_dict, event_to_dict
from ml_defender.v1 import config_pb2, detection_pb2

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,127}$")
KINDS = ("event", "config")
ARTIFACT_RE = re.compile(r"^(event|config)_([0-9A-Za-z][0-9A-Za-z_-]{0,127})\.(pb|json)$")
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


_DAY_NS = 86_400 * 1_000_000_000
_last_day: tuple[int, str] = (-1 << 80, "")  # (day number, its text): consecutive events share a day


def day_of(ns: int) -> str:
    """UTC day of a timestamp in ns since the epoch, as YYYY-MM-DD (Unix days are 86,400 s exactly)."""
    global _last_day
    number, text = _last_day
    if ns // _DAY_NS == number:
        return text
    text = time.strftime("%Y-%m-%d", time.gmtime(ns // 1_000_000_000))
    _last_day = (ns // _DAY_NS, text)
    return text


def jsonl_name(day: str) -> str:
    return f"events-{day}.jsonl"


def artifact_name(kind: str, rid: str, ext: str) -> str:
    return f"{kind}_{rid}.{ext}"


def tmp_name(name: str) -> str:
    return f"{TMP_PREFIX}{name}{TMP_SUFFIX}"


def is_tmp(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def check_id(rid: str, what: str) -> str | None:
    """Why `rid` cannot name a file (None when it can): ids become file names, so they are restricted."""
    if not rid:
        return f"{what} is empty"
    if not ID_RE.match(rid):
        return f"{what} {rid[:80]!r} is not 1-128 characters of [0-9A-Za-z_-]"
    return None


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (orjson: a quarter of json.dumps' CPU, which the hot path feels).

    Scores must be finite (checked before); any other NaN or infinity becomes null.
    """
    return orjson.dumps(doc)


def _finite(ev: detection_pb2.DetectionEvent) -> str | None:
    # fast path: a NaN or infinity anywhere makes the sum non-finite (an overflow only costs the slow path)
    ml = ev.ml_scores
    if math.isfinite(
        ev.fast_score + ev.ml_score + ev.final_score + ev.divergence + sum(map(ml.__getitem__, ml))
    ):
        return None
    scores = {"fast_score": ev.fast_score, "ml_score": ev.ml_score, "final_score": ev.final_score}
    scores["divergence"] = ev.divergence
    for name, value in list(scores.items()) + [(f"ml_scores[{k}]", v) for k, v in ev.ml_scores.items()]:
        if not math.isfinite(value):
            return f"{name} is {value}"
    return None


@dataclass(slots=True)
class Record:
    """One artifact pair ready to write: its bytes are fixed once, so a retry rewrites the same content."""

    kind: str
    rid: str
    day: str
    pb: bytes
    js: bytes
    accepted: float = 0.0  # time.monotonic() when accepted, for the latency histogram
    attempted: bool = False
    done: bool = False

    @property
    def size(self) -> int:
        return len(self.pb) + len(self.js)


def encode_event(ev: detection_pb2.DetectionEvent, now_ns: int, with_json: bool = True) -> Record:
    """Stamp `logged_ns`, then fix the pair's bytes; ValueError says why the event cannot be stored.

    The day is the UTC day of the event (flow.last_seen_ns, the `timestamp` of its JSON); an event
    without a time goes to the day it was logged. Without `with_json` the .json is left for the
    writer process to derive from the .pb (`complete_json`): that is most of the encoding's CPU.
    """
    why = check_id(ev.event_id, "event_id") or _finite(ev)
    if why:
        raise ValueError(why)
    ev.timestamps.logged_ns = now_ns
    day = day_of(ev.flow.last_seen_ns or now_ns)
    js = dumps(event_to_dict(ev)) if with_json else b""
    return Record("event", ev.event_id, day, ev.SerializeToString(), js)


def complete_json(rec: Record) -> bool:
    """Derive a Record's .json from its .pb when it was queued without one; True when it did.

    The same bytes as encode_event's (the .pb round-trips exactly), so a retry or a recovery agrees.
    """
    if rec.js:
        return False
    rec.js = dumps(expected_doc(rec.kind, rec.pb))
    return True


def encode_config(change: config_pb2.ConfigChange, now_ns: int) -> Record:
    """A ConfigChange as its own pair, in the day of its timestamp (or of now when it has none)."""
    why = check_id(change.change_id, "change_id")
    if why:
        raise ValueError(why)
    day = day_of(change.timestamp_ns or now_ns)
    return Record(
        "config", change.change_id, day, change.SerializeToString(), dumps(config_change_to_dict(change))
    )


def expected_doc(kind: str, pb: bytes) -> dict[str, Any]:
    """Decode a .pb and return the document its .json is written from."""
    if kind == "event":
        ev = detection_pb2.DetectionEvent()
        ev.ParseFromString(pb)
        return event_to_dict(ev)
    change = config_pb2.ConfigChange()
    change.ParseFromString(pb)
    return config_change_to_dict(change)


def expected_json(kind: str, pb: bytes) -> dict[str, Any]:
    """Decode a .pb and return the JSON document its .json must equal (after a JSON round trip)."""
    result: dict[str, Any] = orjson.loads(dumps(expected_doc(kind, pb)))
    return result


def record_id_of(kind: str, pb: bytes) -> str:
    """The id stored inside a .pb (event_id or change_id)."""
    if kind == "event":
        ev = detection_pb2.DetectionEvent()
        ev.ParseFromString(pb)
        return str(ev.event_id)
    change = config_pb2.ConfigChange()
    change.ParseFromString(pb)
    return str(change.change_id)


def day_of_pb(kind: str, pb: bytes) -> str | None:
    """The day directory a .pb belongs in, or None when it carries no time (then any day is right)."""
    if kind == "event":
        ev = detection_pb2.DetectionEvent()
        ev.ParseFromString(pb)
        ns = ev.flow.last_seen_ns or ev.timestamps.logged_ns
    else:
        change = config_pb2.ConfigChange()
        change.ParseFromString(pb)
        ns = change.timestamp_ns
    return day_of(ns) if ns else None
