"""The pure half of live reload: diff, hot/restart split, merge and apply."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.watcher.diff import MISSING, Change, apply_changes, deep_merge, diff, flatten, split

pytestmark = pytest.mark.unit


def test_diff_marks_hot_paths_and_lists_are_leaves() -> None:
    old = {
        "thresholds": {"drop": 0.7, "alert": 0.5},
        "input": {"endpoint": "tcp://a"},
        "allow": ["10.0.0.0/8"],
    }
    new = {
        "thresholds": {"drop": 0.6, "alert": 0.5},
        "input": {"endpoint": "tcp://b"},
        "allow": ["10.0.0.0/8", "::1"],
    }
    changes = diff(old, new, hot_fields=("thresholds", "allow"))
    assert changes == [
        Change("allow", ["10.0.0.0/8"], ["10.0.0.0/8", "::1"], True),
        Change("input.endpoint", "tcp://a", "tcp://b", False),
        Change("thresholds.drop", 0.7, 0.6, True),
    ]
    hot, restart = split(changes)
    assert [c.path for c in hot] == ["allow", "thresholds.drop"]
    assert [c.path for c in restart] == ["input.endpoint"]


def test_added_removed_and_type_changes() -> None:
    changes = diff({"a": 1, "b": 1}, {"a": 1.5, "c": {}})
    assert changes == [Change("a", 1, 1.5), Change("b", 1, MISSING), Change("c", MISSING, {})]
    assert diff({"a": 1}, {"a": 1.0}) == [Change("a", 1, 1.0)]  # int -> float is a change


def test_deep_merge_layers() -> None:
    base = {"t": {"drop": 0.7, "alert": 0.5}, "x": [1]}
    assert deep_merge(base, {"t": {"drop": 0.9}}, None, {"x": [2]}) == {
        "t": {"drop": 0.9, "alert": 0.5},
        "x": [2],
    }
    assert base == {"t": {"drop": 0.7, "alert": 0.5}, "x": [1]}  # inputs untouched


json_leaf = st.one_of(st.integers(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=3))
json_doc = st.recursive(
    st.dictionaries(st.text("abc", min_size=1, max_size=2), json_leaf, max_size=4),
    lambda children: st.dictionaries(
        st.text("abc", min_size=1, max_size=2), children, min_size=1, max_size=3
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_doc, json_doc)
def test_applying_the_diff_reproduces_the_new_document(old: dict, new: dict) -> None:
    """diff then apply is the identity on the flattened form: nothing lost, nothing invented."""
    assert flatten(apply_changes(old, diff(old, new))) == flatten(new)


@pytest.mark.parametrize(
    ("path", "hot"),
    [
        ("thresholds.drop", True),
        ("thresholds", True),
        ("thresholdsx", False),
        ("models.ddos.enabled", True),
        ("models.ddos.path", False),
        ("batch.max_flows", True),
        ("batch.other", False),
        ("allow", True),
        ("allow.cidrs", True),
    ],
)
def test_hot_field_patterns(path: str, hot: bool) -> None:
    from libs.watcher.diff import is_hot

    assert is_hot(path, ("thresholds.*", "models.*.enabled", "batch.max_flows", "allow")) is hot
