"""Train/test splits without leakage.

``group``: every pair carries a group (the ``corpus.columns.group`` value, else its
document id); groups that share a chunk (a duplicate, or identical text) are merged
first, then whole groups are shuffled with ``random.Random(seed)`` and taken, in that
order, onto the test side until it holds ``test_fraction`` of the chunks, as nearly as
whole groups allow. No chunk and no group is on both sides. Counting chunks, not
groups, matters when merging makes one group large: a tenth of the groups could
otherwise be a third of the pairs.

``reference``: the financial benchmark split of DESIGN.md, exactly: rows with an
empty question are dropped, the rows are shuffled with ``random.Random(seed)``, the
first ``int(n * test_fraction)`` are test (6,998 rows -> 699 test, 6,299 train).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

from mrlkit.errors import MrlkitError

T = TypeVar("T")


class UnionFind:
    """Merge labels that must land on the same side; each set is named by its smallest label."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, label: str) -> str:
        parent = self.parent.setdefault(label, label)
        if parent != label:
            root = self.find(parent)
            self.parent[label] = root
            return root
        return label

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            low, high = sorted((ra, rb))
            self.parent[high] = low


def pick_test_groups(sizes: Mapping[str, int], test_fraction: float, seed: int) -> set[str]:
    """The groups on the test side, given each group's size in chunks.

    Groups are shuffled (seeded) from sorted order, then taken in turn while that brings the test side nearer
    ``test_fraction`` of all chunks; a group that would overshoot by more than the side still lacks is skipped.
    Each side gets at least one group.
    """
    ordered = sorted(sizes)
    if len(ordered) < 2:
        raise MrlkitError(f"a group split needs at least 2 groups (documents or corpus.columns.group values), "
                          f"found {len(ordered)}; add documents or use pairs.split.mode: reference")
    random.Random(seed).shuffle(ordered)
    target = test_fraction * sum(sizes.values())
    test: list[str] = []
    held = 0
    for group in ordered:
        if held + sizes[group] - target < target - held:
            test.append(group)
            held += sizes[group]
    if not test:  # every group alone overshoots by more than the target: the smallest one, first in the shuffle
        test.append(min(ordered, key=lambda group: sizes[group]))
    if len(test) == len(ordered):  # a test_fraction over a half can take every group: the last goes back to train
        test.pop()
    return set(test)


def reference_split(rows: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``random.Random(seed)``; the first ``int(len * test_fraction)`` rows are test."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_test = int(len(shuffled) * test_fraction)
    return shuffled[n_test:], shuffled[:n_test]
