"""Length-bucketed, no-duplicates batches: less padding per step, the same pairs every epoch.

Each text column is a separate forward pass padded to its longest text, so a batch that
mixes a 20-token context with a 500-token one spends most of its compute on padding. On the
seed dataset random batches of 32 are ~41% real tokens. Grouping pairs of similar length
into one batch removes most of that waste; the pairs seen per epoch do not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sentence_transformers.base.sampler import BatchSamplers, DefaultBatchSampler

log = logging.getLogger(__name__)


class LengthBucketedBatchSampler(DefaultBatchSampler):
    """No-duplicates batches of pairs with similar text length.

    Per epoch (seeded by ``seed + epoch``, so a resumed run replays the same order): shuffle
    all rows, cut the order into windows of ``WINDOW_BATCHES`` batches, sort each window by
    total text length and fill batches in that order. A row whose text already appears in
    the batch being filled (an in-batch negative equal to a positive would be a false
    negative) moves on to the next batch. Rows left over at the end are batched the same way.
    With ``drop_last``, batches that such rows leave short are made up from further passes, so
    an epoch has ``len(self)`` batches as the trainer expects. The batch order is shuffled
    last, so the length of a batch does not follow a trend through the epoch.

    Args:
        dataset: a ``datasets.Dataset`` of text columns (label columns are ignored).
        batch_size: rows per batch.
        drop_last: keep only full batches.
        valid_label_columns: columns that hold labels, not texts.
        generator: the random generator the trainer seeds.
        seed: base seed; the epoch is added to it.

    Example::

        args = SentenceTransformerTrainingArguments(output_dir="out", batch_sampler=LengthBucketedBatchSampler)
    """

    WINDOW_BATCHES = 16  # 16 x 32 pairs: enough to find similar lengths, still a random mix of topics
    MAX_RESAMPLE_PASSES = 4  # bounds the work when texts repeat so much that full batches are rare

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: list[str] | None = None,
                 generator: Any = None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                         generator=generator, seed=seed)
        columns = [c for c in dataset.column_names if c not in set(valid_label_columns or [])]
        self._warned = False
        # Per row, the hashes of its texts (equal texts, equal hashes; within one process, which is all a
        # sampler needs) and its total length: a few ints per row instead of a second copy of every text.
        self._hashes: list[list[int]] = []
        self._lengths = [0] * len(dataset)
        for name in columns:
            texts = list(map(str, dataset[name]))
            self._hashes.append([hash(t) for t in texts])
            for i, text in enumerate(texts):
                self._lengths[i] += len(text)

    def _row_texts(self, index: int) -> set[int]:
        return {col[index] for col in self._hashes}

    def _fill(self, order: list[int]) -> tuple[list[list[int]], list[int]]:
        """Full batches from ``order`` (in order, skipping rows that repeat a text) and the rows left over."""
        batches: list[list[int]] = []
        pending = list(order)
        while len(pending) >= self.batch_size:
            batch: list[int] = []
            seen: set[int] = set()
            deferred: list[int] = []
            for pos, index in enumerate(pending):
                texts = self._row_texts(index)
                if texts & seen:
                    deferred.append(index)
                    continue
                batch.append(index)
                seen |= texts
                if len(batch) == self.batch_size:
                    pending = deferred + pending[pos + 1:]
                    break
            else:  # no full batch possible from what is left: the rest is the leftover
                return batches, pending
            batches.append(batch)
        return batches, pending

    def _leftover_batches(self, rows: list[int]) -> list[list[int]]:
        """Partial batches from the leftover rows: each row lands in the first batch without its texts."""
        batches: list[tuple[list[int], set[int]]] = []
        for index in rows:
            texts = self._row_texts(index)
            for batch, seen in batches:
                if len(batch) < self.batch_size and not texts & seen:
                    batch.append(index)
                    seen |= texts
                    break
            else:
                batches.append(([index], set(texts)))
        return [b for b, _ in batches]

    def _one_pass(self, generator: Any) -> list[list[int]]:
        """Batches of one shuffled pass over every row (only full ones with ``drop_last``), in length order."""
        import torch

        order = torch.randperm(len(self._lengths), generator=generator).tolist()
        window = self.batch_size * self.WINDOW_BATCHES
        batches: list[list[int]] = []
        carried: list[int] = []
        for start in range(0, len(order), window):
            rows = sorted(carried + order[start:start + window], key=self._lengths.__getitem__)
            full, carried = self._fill(rows)
            batches += full
        batches += self._leftover_batches(carried)
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        generator = torch.Generator()
        generator.manual_seed(int(self.seed) + int(self.epoch))
        batches = self._one_pass(generator)
        expected = len(self)
        if self.drop_last and len(batches) < expected:
            # Rows that share a text cannot all go into full batches, and drop_last drops the partial ones. The
            # trainer sized its schedule and progress by len(self), so the missing batches are drawn from further
            # passes (as sentence-transformers' NoDuplicatesBatchSampler does): a few rows are seen twice.
            first_pass = len(batches)
            for _ in range(self.MAX_RESAMPLE_PASSES):
                extra = self._one_pass(generator)  # in length order within each window, so drawn at random
                picks = torch.randperm(len(extra), generator=generator)[:expected - len(batches)].tolist()
                batches += [extra[i] for i in picks]
                if len(batches) == expected:
                    break
            if not self._warned:  # once: every epoch of the same data falls short alike
                self._warned = True
                log.warning("length bucketing: one pass over the pairs made %d of %d full batches (some pairs share "
                            "a text); %d more drawn from further passes, so up to %.1f%% of an epoch's pairs are "
                            "repeats%s", first_pass, expected, len(batches) - first_pass,
                            100 * (len(batches) - first_pass) / expected,
                            "" if len(batches) == expected else
                            f"; still {expected - len(batches)} short: too few distinct texts for this batch size")
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def __len__(self) -> int:
        rows = len(self._lengths)
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)


def batch_sampler(length_bucketing: bool) -> Any:
    """The ``batch_sampler`` training argument: length-bucketed, or sentence-transformers' no-duplicates."""
    return LengthBucketedBatchSampler if length_bucketing else BatchSamplers.NO_DUPLICATES
