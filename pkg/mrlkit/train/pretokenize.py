"""Texts tokenized once before training, so that a batch is only padded (``train.pretokenize``).

Why: sentence-transformers' data collator tokenizes every batch as it comes, every epoch, in
the training process. That costs ~13 ms a batch of 32 pairs at the seed dataset's lengths and
~35 ms with 256-token texts on one CPU thread, which a GPU step bound by its host waits for
(an H100 step with CUDA graphs is ~32 ms in all). Here every distinct text of the training
and evaluation sets is tokenized once, by the model's own ``preprocess`` in large chunks, and
kept unpadded in one flat array per tokenizer output; a batch is then gathered and padded
with numpy in well under a millisecond.

The batches are the same tensors, bit for bit: padding values and side are read off the
model's own output, and before it is used the cache is checked against ``preprocess`` on a
sample of texts. Anything it cannot serve exactly (a prompt, a router task, a text it has
not seen, a tokenizer that pads on the left) goes to ``preprocess`` as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK_TEXTS = 1024  # texts per preprocess call while building: large enough to amortize its overhead
CHECK_TEXTS = 64  # texts compared with the model's own preprocess before the cache is used
PROGRESS_EVERY_S = 10.0
MASK = "attention_mask"


class NotPretokenizable(Exception):
    """The model's tokenizer output cannot be cached and re-padded exactly; batches are tokenized as they come."""


def _smallest_int_dtype(low: int, high: int) -> np.dtype:
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise NotPretokenizable(f"token values {low}..{high} do not fit 64-bit integers")


class PretokenizedPreprocess:
    """A drop-in ``preprocess_fn`` for the data collator that pads cached tokens instead of tokenizing.

    Args:
        preprocess: the model's ``preprocess`` (what the collator called before).
        texts: every text the batches will hold (repeats are tokenized once).
        chunk_texts: texts per ``preprocess`` call while building the cache.

    Raises:
        NotPretokenizable: the output is not right-padded token rows with an attention mask, or the
            cache does not reproduce ``preprocess`` exactly on a sample.
    """

    def __init__(self, preprocess: Callable[..., dict[str, Any]], texts: Iterable[str],
                 chunk_texts: int = CHUNK_TEXTS):
        started = time.perf_counter()
        self._preprocess = preprocess
        self.fallback_batches = 0
        unique = list(dict.fromkeys(t for t in texts if isinstance(t, str)))
        if not unique:
            raise NotPretokenizable("no texts to tokenize")
        self._index = {text: i for i, text in enumerate(unique)}
        self._order, self._pad, self._torch_dtypes, self._extras = self._probe()
        self._keys = list(self._pad)  # the token-row outputs: those with a padding value
        flats: dict[str, list[np.ndarray]] = {key: [] for key in self._keys}
        lengths: list[np.ndarray] = []
        said = time.perf_counter()
        for start in range(0, len(unique), chunk_texts):
            if time.perf_counter() - said > PROGRESS_EVERY_S:
                said = time.perf_counter()
                log.info("train: tokenizing the texts once: %d of %d", start, len(unique))
            out = preprocess(unique[start:start + chunk_texts], prompt=None, task=None)
            rows = self._unpadded_rows(out)
            lengths.append(rows[MASK].sum(axis=1))
            keep = rows[MASK].astype(bool)
            for key in self._keys:
                flats[key].append(rows[key][keep])  # row-major: each row's tokens, one row after another
        self._lengths = np.concatenate(lengths).astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._lengths)[:-1]]).astype(np.int64)
        self._flat = {}
        for key, parts in flats.items():
            flat = np.concatenate(parts)
            self._flat[key] = flat.astype(_smallest_int_dtype(int(flat.min()), int(flat.max())))
        self.texts = len(unique)
        self.tokens = int(self._lengths.sum())
        self.seconds = time.perf_counter() - started
        by_length = np.argsort(self._lengths, kind="stable")
        for sample in (range(min(CHECK_TEXTS, len(unique))), by_length[:CHECK_TEXTS], by_length[-CHECK_TEXTS:]):
            self._check([unique[i] for i in sample])  # as they come, the shortest, the longest (truncated ones)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._flat.values()) + self._lengths.nbytes + self._offsets.nbytes

    def _probe(self) -> tuple[list[str], dict[str, int], dict[str, Any], dict[str, Any]]:
        """The outputs in order; the token rows' padding values and dtypes; the constant extras."""
        import torch

        out = self._preprocess(["a", "a b c d e f g h"], prompt=None, task=None)
        if MASK not in out:
            raise NotPretokenizable(f"the tokenizer's output has no {MASK!r} (keys {sorted(out)})")
        mask = out[MASK]
        width = mask.shape[1]
        short = int(mask[0].sum())
        if not (short < width and bool(mask[0, :short].all()) and not bool(mask[0, short:].any())):
            raise NotPretokenizable("the tokenizer does not pad on the right")
        if not bool(mask[1].all()):
            raise NotPretokenizable("the tokenizer pads beyond the longest text (to a multiple or a fixed length)")
        pad, dtypes, extras = {}, {}, {}
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2 and tuple(value.shape) == tuple(mask.shape) \
                    and not value.is_floating_point():
                pad[key] = int(value[0, -1])
                dtypes[key] = value.dtype
            elif isinstance(value, (str, int, float, bool)) or value is None:
                extras[key] = value
            else:
                raise NotPretokenizable(f"output {key!r} is neither token rows nor a constant ({type(value).__name__})")
        return list(out), pad, dtypes, extras

    def _unpadded_rows(self, out: dict[str, Any]) -> dict[str, np.ndarray]:
        """A chunk's token rows as numpy, after checking it has the probe's layout."""
        if set(out) != set(self._keys) | set(self._extras) or any(
                type(out[k]) is not type(v) or out[k] != v for k, v in self._extras.items()):
            raise NotPretokenizable(f"the tokenizer's outputs changed between calls ({sorted(out)})")
        mask = out[MASK].numpy()
        lengths = mask.sum(axis=1)
        if not np.array_equal(mask, (np.arange(mask.shape[1]) < lengths[:, None]).astype(mask.dtype)):
            raise NotPretokenizable("a row's attention mask is not ones then zeros")
        return {key: out[key].numpy() for key in self._keys}

    def _padded(self, rows: list[int]) -> dict[str, Any]:
        import torch

        lengths = self._lengths[rows]
        width = int(lengths.max())
        columns = np.arange(width)
        real = columns < lengths[:, None]
        source = (self._offsets[rows][:, None] + columns)[real]
        batch: dict[str, Any] = {}
        for key in self._order:  # the tokenizer's own order: the collator names the features in it
            if key in self._extras:
                batch[key] = self._extras[key]
                continue
            padded = np.full((len(rows), width), self._pad[key], dtype=np.int64)
            padded[real] = self._flat[key][source]
            batch[key] = torch.from_numpy(padded).to(self._torch_dtypes[key])
        return batch

    def _check(self, sample: list[str]) -> None:
        """Refuse the cache unless it gives what ``preprocess`` gives, tensor for tensor."""
        import torch

        expected = self._preprocess(sample, prompt=None, task=None)
        got = self._padded([self._index[t] for t in sample])
        if list(expected) != list(got):
            raise NotPretokenizable(f"outputs {list(got)} differ from the tokenizer's {list(expected)}")
        for key, value in expected.items():
            same = (torch.equal(value, got[key]) and value.dtype == got[key].dtype
                    if isinstance(value, torch.Tensor) else value == got[key])
            if not same:
                raise NotPretokenizable(f"padded {key!r} differs from the tokenizer's own")

    def __call__(self, inputs: list[Any], prompt: str | None = None, task: str | None = None,
                 **kwargs: Any) -> dict[str, Any]:
        rows = [self._index.get(t) if isinstance(t, str) else None for t in inputs]
        if prompt is None and task is None and not kwargs and rows and None not in rows:
            return self._padded(rows)
        if not self.fallback_batches:
            log.info("train: a batch with a prompt, a task or texts not seen before training is tokenized as it "
                     "comes (the other batches are only padded)")
        self.fallback_batches += 1
        return self._preprocess(inputs, prompt=prompt, task=task, **kwargs)


def pretokenize_collator(collator: Any, datasets: Iterable[Any]) -> PretokenizedPreprocess | None:
    """Give ``collator`` (the trainer's) a ``preprocess_fn`` that pads the datasets' texts tokenized once.

    Returns the cache, or None when the tokenizer's output cannot be cached exactly (said in the log;
    batches are then tokenized as they come, as without ``train.pretokenize``).
    """
    texts = (text for ds in datasets if ds is not None for name in ds.column_names for text in ds[name])
    preprocess = getattr(collator, "preprocess_fn", None)
    if preprocess is None:
        log.warning("train: train.pretokenize is on, but the data collator (%s) has no preprocess_fn to replace: "
                    "batches are tokenized as they come", type(collator).__name__)
        return None
    try:
        cache = PretokenizedPreprocess(preprocess, texts)
    except NotPretokenizable as exc:
        log.warning("train: train.pretokenize is on, but %s: batches are tokenized as they come", exc)
        return None
    collator.preprocess_fn = cache
    log.info("train: tokenized %d distinct texts once (%d tokens, %.1f MB) in %.1f s; batches are only padded",
             cache.texts, cache.tokens, cache.nbytes / 1e6, cache.seconds)
    return cache
