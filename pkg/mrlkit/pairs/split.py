"""Train/test splits without leakage.

``group``: every pair carries a group (the ``corpus.columns.group`` value, else its
document id); groups that share a chunk (a duplicate, or identical text) are merged
first, then whole groups are shuffled with ``random.Random(seed)`` and the first
``test_fraction`` of them are test. No chunk and no group is on both sides.

``reference``: the financial benchmark split of DESIGN.md, exactly: rows with an
empty question are dropped, the rows are shuffled with ``random.Random(seed)``, the
first ``int(n * test_fraction)`` are test (6,998 rows -> 699 test, 6,299 train).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
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


def pick_test_groups(groups: Iterable[str], test_fraction: float, seed: int) -> set[str]:
    """The groups on the test side: shuffled (seeded) from sorted order, at least one on each side."""
    ordered = sorted(set(groups))
    if len(ordered) < 2:
        raise MrlkitError(f"a group split needs at least 2 groups (documents or corpus.columns.group values), "
                          f"found {len(ordered)}; add documents or use pairs.split.mode: reference")
    random.Random(seed).shuffle(ordered)
    n_test = min(len(ordered) - 1, max(1, round(len(ordered) * test_fraction)))
    return set(ordered[:n_test])


def reference_split(rows: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``random.Random(seed)``; the first ``int(len * test_fraction)`` rows are test."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_test = int(len(shuffled) * test_fraction)
    return shuffled[n_test:], shuffled[:n_test]
