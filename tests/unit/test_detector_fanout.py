"""DROP fan-out: every node with policy all, the origin only with policy origin, never lost."""

from __future__ import annotations

import pytest

from services.ml_detector.fanout import targets

pytestmark = pytest.mark.unit
NODES = ("a", "b", "c")


def test_drop_goes_everywhere_with_all_and_to_the_origin_with_origin() -> None:
    assert targets("a", True, NODES, "all") == (["a", "b", "c"], False)
    assert targets("b", True, NODES, "origin") == (["b"], False)


def test_non_drop_goes_to_the_origin_only() -> None:
    assert targets("c", False, NODES, "all") == (["c"], False)
    assert targets("c", False, NODES, "origin") == (["c"], False)


def test_unknown_origin_goes_everywhere_and_is_flagged() -> None:
    assert targets("z", True, NODES, "origin") == (["a", "b", "c"], True)
    assert targets("z", False, NODES, "all") == (["a", "b", "c"], True)
    assert targets("z", True, NODES, "all") == (["a", "b", "c"], True)
