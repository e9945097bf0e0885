"""ArtifactStore commits, start-up recovery, the daily .jsonl and `verify` (on a temp directory)."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.rag_logger import fsio, layout
from services.rag_logger.cli import main
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record
from services.rag_logger.store import TAIL_EVENTS, ArtifactStore, _group_bounds, recover
from services.rag_logger.synth import make_config_change, make_event
from services.rag_logger.verify import repair, verify

T0 = int(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp() * 1e9)
DAY = "2026-03-01"


def records(n: int, seed: int = 1, ts: int = T0) -> list[Record]:
    rng = random.Random(seed)
    return [layout.encode_event(make_event(ts + i * 1000, rng), ts + i * 1000) for i in range(n)]


def new_store(root: Path, **kw: object) -> ArtifactStore:
    st = ArtifactStore(str(root), lambda: T0, **kw)  # type: ignore[arg-type]
    st.prepare()
    return st


@pytest.mark.unit
def test_commit_writes_whole_pairs_and_jsonl_in_the_event_day(tmp_path: Path) -> None:
    st = new_store(tmp_path, io_threads=4)
    recs = records(40)
    result = st.commit(recs)
    st.append_jsonl(result.written)
    st.close()
    assert len(result.written) == 40 and result.nbytes == sum(r.size for r in recs)
    names = sorted(os.listdir(tmp_path / DAY))
    assert len(names) == 81 and f"events-{DAY}.jsonl" in names
    assert not [n for n in names if layout.is_tmp(n)]
    for r in recs:
        assert (tmp_path / DAY / f"event_{r.rid}.pb").read_bytes() == r.pb
        assert (tmp_path / DAY / f"event_{r.rid}.json").read_bytes() == r.js
    lines = (tmp_path / DAY / f"events-{DAY}.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [r.rid for r in recs]
    rep = verify(tmp_path)
    assert (rep.pairs_ok, rep.problems) == (40, [])


@pytest.mark.unit
@pytest.mark.parametrize("anon", [True, False], ids=["checked-when-linked", "checked-before"])
def test_an_event_already_on_disk_is_not_rewritten(tmp_path: Path, anon: bool) -> None:
    st = new_store(tmp_path, sync_group_events=2)  # several groups: duplicates in the middle ones
    st.anon = anon
    recs = records(3)
    st.commit(recs)
    before = {p.name: p.read_bytes() for p in (tmp_path / DAY).iterdir()}
    again = records(3, seed=5)  # other events (other bytes) under the same ids: a redelivery
    for a, r in zip(again, recs, strict=True):
        a.rid = r.rid
    new = records(4, seed=9)
    batch = [new[0], again[0], new[1], again[1], new[2], again[2], new[3]]
    result = st.commit(batch)
    assert {r.rid for r in result.duplicates} == {r.rid for r in recs}
    assert [r.rid for r in result.written] == [r.rid for r in new]
    assert all(r.done for r in batch)
    after = {p.name: p.read_bytes() for p in (tmp_path / DAY).iterdir()}
    assert {k: after[k] for k in before} == before  # the first copies untouched
    rep = verify(tmp_path)
    assert (rep.pairs_ok, rep.problems) == (7, [])
    assert not [n for n in os.listdir(tmp_path / DAY) if layout.is_tmp(n)]


@pytest.mark.unit
def test_group_bounds_cover_the_batch_with_a_small_last_group() -> None:
    for n in (1, 7, 512, 513, 600, 1100, 4096, 4100):
        bounds = _group_bounds(n, 512)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert all(0 < hi - lo <= 512 for lo, hi in bounds)
        if n > 512:
            assert bounds[-1][1] - bounds[-1][0] == TAIL_EVENTS


@pytest.mark.unit
@pytest.mark.parametrize("nth", [1, 3, 8])
def test_a_syncfs_failing_in_the_pipeline_names_only_whole_pairs_and_the_retry_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    st = new_store(tmp_path, sync_group_events=8)  # 64 events: 8 groups of 8 (the last is the tail)
    recs = records(64)
    calls = _fail_nth(monkeypatch, fsio, "syncfs", nth, errno.EIO)
    with pytest.raises(StorageError) as info:
        st.commit(recs)
    assert info.value.reason == "io_error"
    rep = verify(tmp_path)
    # the groups whose syncfs returned are named (whole pairs); the failed one and later ones are not
    assert rep.problems == [] and rep.pairs_ok == 8 * (nth - 1)
    assert not [n for n in os.listdir(tmp_path / DAY) if layout.is_tmp(n)]
    monkeypatch.undo()
    assert calls["n"] >= nth
    result = st.commit(recs)
    assert len(result.written) == 64 and not result.duplicates
    assert verify(tmp_path).pairs_ok == 64


def _fail_nth(monkeypatch: pytest.MonkeyPatch, obj: object, name: str, nth: int, err: int) -> dict[str, int]:
    """Make the nth call of obj.name raise OSError(err); the others pass through."""
    real = getattr(obj, name)
    calls = {"n": 0}

    def failing(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(err, os.strerror(err))
        return real(*args)

    monkeypatch.setattr(obj, name, failing)
    return calls


@pytest.mark.unit
@pytest.mark.parametrize("anon", [True, False], ids=["unnamed", "named-temp"])
@pytest.mark.parametrize(
    ("sync_method", "where"),
    [("syncfs", "write"), ("syncfs", "syncfs"), ("fdatasync", "write"), ("fdatasync", "fdatasync")],
)
def test_failed_commit_leaves_no_temp_file_and_a_retry_writes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anon: bool, sync_method: str, where: str
) -> None:
    st = new_store(tmp_path, io_threads=4, sync_method=sync_method)
    assert st.anon  # O_TMPFILE works on the test's filesystem
    st.anon = anon
    recs = records(64)
    target, nth = {"write": (os, 50), "fdatasync": (os, 50), "syncfs": (fsio, 1)}[where]
    _fail_nth(monkeypatch, target, where, nth, errno.ENOSPC)
    with pytest.raises(StorageError) as info:
        st.commit(recs)
    assert info.value.reason == "disk_full" and "free space" in info.value.message
    assert os.listdir(tmp_path / DAY) == []  # nothing partial, nothing named before its data is durable
    monkeypatch.undo()
    result = st.commit(recs)  # the same records, as the writer retries them
    assert len(result.written) == 64 and not result.duplicates
    assert verify(tmp_path).pairs_ok == 64
    assert not [n for n in os.listdir(tmp_path / DAY) if layout.is_tmp(n)]


@pytest.mark.unit
@pytest.mark.parametrize("anon", [True, False], ids=["unnamed", "named-temp"])
def test_a_commit_failing_while_naming_is_completed_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anon: bool
) -> None:
    """Names given before the failure stay (whole files, at most one half pair); the retry replaces them."""
    st = new_store(tmp_path)
    st.anon = anon
    recs = records(20)
    if anon:
        _fail_nth(monkeypatch, fsio, "link_fd", 16, errno.ENOSPC)
    else:
        _fail_nth(monkeypatch, os, "rename", 16, errno.ENOSPC)
    with pytest.raises(StorageError):
        st.commit(recs)
    rep = verify(tmp_path)
    assert rep.pairs_ok == 7 and [p.what for p in rep.problems] == ["half pair: the .json is missing"]
    monkeypatch.undo()
    result = st.commit(recs)
    assert len(result.written) == 20 and not result.duplicates
    rep = verify(tmp_path)
    assert (rep.pairs_ok, rep.problems) == (20, [])
    assert not [n for n in os.listdir(tmp_path / DAY) if layout.is_tmp(n)]


@pytest.mark.unit
def test_recovery_removes_temp_files_and_completes_half_pairs(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    recs = records(3)
    st.commit(recs)
    ddir = tmp_path / DAY
    (ddir / layout.tmp_name(f"event_{recs[0].rid}.pb")).write_bytes(b"partial")
    (ddir / f"event_{recs[1].rid}.json").unlink()  # crash between the .pb and .json renames
    rep = verify(tmp_path)
    assert [p.what for p in rep.problems] == ["half pair: the .json is missing"]
    assert rep.notes and "temp file" in rep.notes[0]
    rec = recover(str(tmp_path))
    assert (rec.temp_files_removed, rec.pairs_repaired) == (1, 1)
    assert (ddir / f"event_{recs[1].rid}.json").read_bytes() == recs[1].js
    rep = verify(tmp_path)
    assert (rep.pairs_ok, rep.problems, rep.notes) == (3, [], [])


def _damage(root: Path) -> dict[str, Path]:
    st = new_store(root)
    recs = records(6)
    st.commit([*recs, layout.encode_config(make_config_change(T0, "cfg1"), T0)])
    d = root / DAY
    paths = {
        "corrupt_pb": d / f"event_{recs[0].rid}.pb",
        "mismatch": d / f"event_{recs[1].rid}.json",
        "bad_json": d / f"event_{recs[2].rid}.json",
        "no_pb": d / f"event_{recs[3].rid}.pb",
        "wrong_day": root / "2026-03-02",
    }
    paths["corrupt_pb"].write_bytes(b"\xff\xff\xff garbage")
    doc = json.loads(paths["mismatch"].read_bytes())
    doc["final_score"] = 0.01
    paths["mismatch"].write_text(json.dumps(doc))
    paths["bad_json"].write_text("{not json")
    paths["no_pb"].unlink()
    paths["wrong_day"].mkdir()
    for ext in ("pb", "json"):
        os.rename(d / f"event_{recs[4].rid}.{ext}", paths["wrong_day"] / f"event_{recs[4].rid}.{ext}")
    return paths


@pytest.mark.unit
def test_verify_lists_every_kind_of_damage(tmp_path: Path) -> None:
    _damage(tmp_path)
    rep = verify(tmp_path)
    whats = sorted(p.what.split(":")[0] for p in rep.problems)
    assert whats == [
        "half pair",
        "the .json disagrees with the .pb in",
        "the .json does not parse",
        "the .pb does not parse",
        "the event's day is 2026-03-01, but it is in 2026-03-02/",
    ]
    assert rep.pairs_ok == 2 and rep.configs == 1  # one good event, one config change
    assert all(p.fix for p in rep.problems)


@pytest.mark.unit
def test_verify_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good"
    new_store(good).commit(records(5))
    res = runner.invoke(main, ["verify", str(good)])
    assert res.exit_code == 0 and "5 pairs ok (5 events, 0 config changes), 0 problems" in res.output
    res = runner.invoke(main, ["verify", str(good / DAY), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["pairs_ok"] == 5
    bad = tmp_path / "bad"
    _damage(bad)
    res = runner.invoke(main, ["verify", str(bad)])
    assert res.exit_code == 1 and res.output.count("problem: ") == 5 and "fix:" in res.output
    res = runner.invoke(main, ["verify", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "directory not found" in res.output


@pytest.mark.unit
def test_verify_repair_completes_a_half_pair(tmp_path: Path) -> None:
    recs = records(2)
    new_store(tmp_path).commit(recs)
    (tmp_path / DAY / f"event_{recs[0].rid}.json").unlink()
    res = CliRunner().invoke(main, ["verify", "--repair", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 pairs completed" in res.output and "2 pairs ok" in res.output
    assert repair(tmp_path).pairs_repaired == 0


@pytest.mark.unit
def test_jsonl_failure_is_counted_and_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = new_store(tmp_path)
    first = st.commit(records(2, seed=1)).written
    assert st.append_jsonl(first) == 0
    real_write = os.write

    def short_then_fail(fd: int, data: memoryview | bytes) -> int:
        if len(data) > 100 and fd in st._jsonl.values():
            real_write(fd, bytes(data[:50]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_then_fail)
    second = st.commit(records(2, seed=2)).written  # artifact fds are not .jsonl fds: written in full
    assert st.append_jsonl(second) == 1
    monkeypatch.undo()
    third = st.commit(records(2, seed=3)).written
    assert st.append_jsonl(third) == 0
    st.close()
    lines = (tmp_path / DAY / f"events-{DAY}.jsonl").read_bytes().splitlines()
    ids = [json.loads(line)["event_id"] for line in lines]
    assert ids == [r.rid for r in first + third]


@pytest.mark.unit
def test_without_o_tmpfile_named_temp_files_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(directory: str, data: bytes) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), directory)

    monkeypatch.setattr(fsio, "write_anon", unsupported)
    st = new_store(tmp_path)
    assert not st.anon
    recs = records(5)
    assert len(st.commit(recs).written) == 5
    rep = verify(tmp_path)
    assert (rep.pairs_ok, rep.problems) == (5, [])
    assert not [n for n in os.listdir(tmp_path / DAY) if layout.is_tmp(n)]


@pytest.mark.unit
def test_without_the_privilege_to_link_a_descriptor_the_proc_path_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH (the kernel answers ENOENT without it)."""
    real = fsio.link_fd
    used: list[bool] = []

    def link_fd(fd: int, path: str, empty_path: bool = False) -> None:
        if empty_path:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        used.append(empty_path)
        real(fd, path, empty_path)

    monkeypatch.setattr(fsio, "link_fd", link_fd)
    st = new_store(tmp_path)
    assert st.anon and not st.link_empty
    assert len(st.commit(records(6)).written) == 6
    assert used and not any(used)
    assert verify(tmp_path).pairs_ok == 6
