"""Splits without leakage: whole groups per side; the reference split is DESIGN.md's, exactly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrlkit.errors import MrlkitError
from mrlkit.pairs.split import UnionFind, pick_test_groups, reference_split


def test_reference_split_matches_the_recipe():
    rows = list(range(6998))
    train, test = reference_split(rows, 0.1, 42)
    expected = list(rows)
    random.Random(42).shuffle(expected)
    assert (len(train), len(test)) == (6299, 699)
    assert test == expected[:699] and train == expected[699:]


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=5), min_size=2, max_size=60), st.floats(0.05, 0.5), st.integers(0, 99))
def test_group_split_keeps_both_sides_nonempty(groups, fraction, seed):
    test = pick_test_groups(groups, fraction, seed)
    assert 1 <= len(test) < len(groups)
    assert test == pick_test_groups(sorted(groups, reverse=True), fraction, seed)  # order of input is irrelevant


def test_group_split_needs_two_groups():
    with pytest.raises(MrlkitError, match="at least 2 groups"):
        pick_test_groups(["only"], 0.1, 42)


def test_union_find_names_sets_by_smallest_label():
    uf = UnionFind()
    uf.union("b", "c")
    uf.union("d", "c")
    uf.find("a")
    assert {uf.find(x) for x in "bcd"} == {"b"} and uf.find("a") == "a"
