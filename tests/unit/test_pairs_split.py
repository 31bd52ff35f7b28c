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


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 40), min_size=2, max_size=60),
       st.floats(0.05, 0.95), st.integers(0, 99))
def test_group_split_keeps_both_sides_nonempty(sizes, fraction, seed):
    test = pick_test_groups(sizes, fraction, seed)
    assert 1 <= len(test) < len(sizes) and test <= sizes.keys()
    assert test == pick_test_groups(dict(sorted(sizes.items(), reverse=True)), fraction, seed)  # input order


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=20, max_size=200), st.floats(0.05, 0.5), st.integers(0, 99))
def test_group_split_holds_the_fraction_of_chunks(group_sizes, fraction, seed):
    sizes = {f"doc{i}": n for i, n in enumerate(group_sizes)}
    total = sum(group_sizes)
    held = sum(sizes[g] for g in pick_test_groups(sizes, fraction, seed))
    # whole groups of at most 5 chunks: the test side ends within one group of its share
    assert abs(held - fraction * total) <= max(group_sizes)


def test_group_split_counts_chunks_not_groups():
    # Merging duplicates can make one group a third of the corpus; a tenth of the groups must not mean a third
    # of the pairs.
    sizes = {"merged": 700, **{f"doc{i:03d}": 10 for i in range(140)}}
    for seed in range(20):
        test = pick_test_groups(sizes, 0.1, seed)
        assert "merged" not in test
        assert sum(sizes[g] for g in test) == 210  # 10% of 2,100 chunks: 21 documents


def test_group_split_of_groups_all_over_the_target_takes_the_smallest():
    assert pick_test_groups({"a": 50, "b": 30, "c": 40}, 0.05, 42) == {"b"}


def test_group_split_leaves_training_a_group():
    assert len(pick_test_groups({"a": 1, "b": 1}, 0.9, 42)) == 1


def test_group_split_needs_two_groups():
    with pytest.raises(MrlkitError, match="at least 2 groups"):
        pick_test_groups(["only"], 0.1, 42)


def test_union_find_names_sets_by_smallest_label():
    uf = UnionFind()
    uf.union("b", "c")
    uf.union("d", "c")
    uf.find("a")
    assert {uf.find(x) for x in "bcd"} == {"b"} and uf.find("a") == "a"
