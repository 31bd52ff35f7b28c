"""The training pairs and the held-out evaluation set, read from ``<root>/pairs/<name>/``.

Only the text columns a loss reads are kept, in the order it reads them:
``anchor, positive[, negative_1..negative_k]``; metadata columns the prepare stage
may add are left out here (never passed to the loss, where they would be read as
extra texts).
"""

from __future__ import annotations

import logging
from typing import Any

from mrlkit import layout, storage
from mrlkit.errors import MrlkitError

log = logging.getLogger(__name__)


class PairsError(MrlkitError):
    """The published pairs cannot be used for training (missing, empty, wrong columns)."""


def text_columns(names: list[str]) -> list[str]:
    """``anchor, positive`` then the hard-negative columns in order; refuse a table without the first two."""
    missing = [c for c in layout.PAIR_TEXT_COLUMNS if c not in names]
    if missing:
        raise PairsError(f"training pairs lack column(s) {missing}; the pairs layout needs "
                         f"{list(layout.PAIR_TEXT_COLUMNS)} [+ negative_1..k], found {names}")
    return [*layout.PAIR_TEXT_COLUMNS, *layout.negative_columns(names)]


def load_train_dataset(pairs_uri: str, max_pairs: int | None = None) -> Any:
    """The ``train`` split as a ``datasets.Dataset`` of text columns (the first ``max_pairs`` rows if set)."""

    try:
        table = layout.read_table(pairs_uri, "train")
    except storage.StorageNotFound as exc:
        raise PairsError(f"no training pairs: {exc}") from None
    table = table.select(text_columns(table.column_names))
    if max_pairs is not None and table.num_rows > max_pairs:
        log.info("train: the first %d of %d training pairs (train.max_train_pairs)", max_pairs, table.num_rows)
        table = table.slice(0, max_pairs)
    if table.num_rows == 0:
        raise PairsError(f"{storage.join(pairs_uri, 'train')}: no training pairs (0 rows)")
    for name in table.column_names:
        if table.column(name).null_count:
            raise PairsError(f"{storage.join(pairs_uri, 'train')}: column {name!r} has "
                             f"{table.column(name).null_count} empty (null) values")
    return _in_memory_dataset(table)


def load_eval_dataset(pairs_uri: str) -> Any:
    """The ``test`` split's (anchor, positive) pairs, for the evaluation loss."""

    table = layout.read_table(pairs_uri, "test", columns=list(layout.PAIR_TEXT_COLUMNS))
    return _in_memory_dataset(table)


def _in_memory_dataset(table: Any) -> Any:
    """A ``datasets.Dataset`` over ``table`` without hashing it for a fingerprint.

    Why: without a fingerprint, ``datasets`` pickles the whole table with dill to hash it, which
    costs time on large pair sets and, inside Ray workers, leaks dill's bytecode disassembly
    into the job log. An in-memory dataset writes no cache files, so a random fingerprint is safe.
    """
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    return Dataset(table.combine_chunks(), fingerprint=generate_random_fingerprint())


def has_hard_negatives(dataset: Any) -> bool:
    return bool(layout.negative_columns(list(dataset.column_names)))
