"""Hard-negative mining with the base model, sharded on Ray: (anchor, positive) -> (anchor, positive, negative_1..k).

The selection rule is sentence-transformers' ``mine_hard_negatives`` with ``sampling_strategy="top"``
and ``output_format="n-tuple"``, over the *train* pairs only (the corpus searched is the train
positives, so no test text can leak in as a negative): per unique anchor, the candidates ranked
``range_min``..``range_max`` by the base model, after removing the anchor's own positives and any
candidate within ``relative_margin`` of its (hardest) positive or above ``max_score``; the top
``num_negatives`` of those are kept. Rows for which too few negatives qualify are dropped and counted.

It is re-done here rather than called because both costly parts must run as Ray work, not in the
driver: encoding (blocks of texts over a pool of encoder actors, one model load per actor) and the
search (blocks of anchors as Ray tasks against the corpus embeddings, shared once through the
object store, each block's similarity matrix bounded in size). tests/unit/test_pairs_negatives.py
checks that the result equals ``mine_hard_negatives``'s on the same data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from mrlkit.config_schema import HardNegativesConfig

log = logging.getLogger(__name__)

TEXTS_PER_ENCODE_TASK = 1024
MAX_SIMILARITY_BLOCK_BYTES = 256 << 20  # one anchor block's float32 similarity matrix against the corpus
WARN_DROPPED_FRACTION = 0.5  # dropping more than half the train pairs is a warning (the demo drops 35%)


class NegativesError(ValueError):
    """Hard negatives cannot be mined with this model or these settings."""


@dataclass(frozen=True)
class _Selection:
    """The parts of :class:`HardNegativesConfig` a search task needs, plus the candidate depth."""

    range_min: int
    range_max: int
    num_negatives: int
    relative_margin: float | None
    max_score: float | None
    depth: int  # range_max + the most positives any anchor has, as mine_hard_negatives searches


@ray.remote(num_cpus=1)
class _Encoder:
    """One model load; encodes blocks of texts into float32 rows (unit length for cosine models)."""

    def __init__(self, model_ref: str, batch_size: int, unpad: bool):
        from mrlkit.models import load_sentence_transformer

        self.model = load_sentence_transformer(model_ref, device="cpu")
        self.batch_size = batch_size
        self.unpadded = None
        if unpad:
            from mrlkit.unpad import unpad_or_warn

            self.unpadded = unpad_or_warn(self.model, "pairs.hard_negatives.unpad", model_ref, logger=log)

    def unpadded_summary(self) -> dict[str, Any] | None:
        """What unpadding did in this actor's passes (``UnpaddedEncoder.summary``); None when it is off."""
        return None if self.unpadded is None else self.unpadded.summary()

    def similarity(self) -> str:
        return str(self.model.similarity_fn_name or "cosine")

    def encode(self, texts: list[str]) -> np.ndarray:
        normalize = self.similarity() == "cosine"
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=normalize, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


@ray.remote(num_cpus=1)
def _select_block(anchors: np.ndarray, corpus: np.ndarray, positives: list[list[int]],
                  select: _Selection) -> list[list[int] | None]:
    """Per anchor of one block: the chosen negatives' corpus indices, or None when too few qualify."""
    sims = anchors @ corpus.T
    k = min(select.depth, corpus.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < corpus.shape[0] else np.tile(
        np.arange(corpus.shape[0]), (len(anchors), 1))
    top_scores = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    candidates, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
    chosen: list[list[int] | None] = []
    for row, own in enumerate(positives):
        row_scores = scores[row].copy()
        row_scores[np.isin(candidates[row], own)] = -np.inf
        if select.relative_margin is not None:
            hardest = float(sims[row, own].min())  # the least similar positive sets the bar
            row_scores[row_scores > hardest - abs(hardest) * select.relative_margin] = -np.inf
        if select.max_score is not None:
            row_scores[row_scores > select.max_score] = -np.inf
        ranked = np.argsort(-row_scores, kind="stable")[:select.range_max]
        picked = ranked[select.range_min:select.range_min + select.num_negatives]
        ok = len(picked) == select.num_negatives and np.isfinite(row_scores[picked]).all()
        chosen.append([int(candidates[row, i]) for i in picked] if ok else None)
    return chosen


def mine_negatives(train: list[dict[str, Any]], cfg: HardNegativesConfig, model_ref: str,
                   num_encoders: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Train rows with ``negative_1..k`` added, in their original order, and how many rows were dropped.

    Runs on the Ray the caller initialised (a local one is started if none is). ``num_encoders``
    defaults to the cluster's free CPUs.
    """
    if not train:
        return [], 0
    started = time.monotonic()
    corpus = list(dict.fromkeys(r["positive"] for r in train))
    anchors = list(dict.fromkeys(r["anchor"] for r in train))
    corpus_index = {text: i for i, text in enumerate(corpus)}
    anchor_index = {text: i for i, text in enumerate(anchors)}
    positives: list[list[int]] = [[] for _ in anchors]
    for r in train:
        own = positives[anchor_index[r["anchor"]]]
        if corpus_index[r["positive"]] not in own:
            own.append(corpus_index[r["positive"]])

    corpus_vectors, anchor_vectors = _encode_sharded([corpus, anchors], model_ref, cfg.batch_size, num_encoders,
                                                     unpad=cfg.unpad)
    log.info("prepare: hard negatives: encoded %d positives and %d anchors in %.1fs", len(corpus), len(anchors),
             time.monotonic() - started)

    select = _Selection(cfg.range_min, cfg.range_max, cfg.num_negatives, cfg.relative_margin, cfg.max_score,
                        depth=cfg.range_max + max(len(p) for p in positives))
    corpus_ref = ray.put(corpus_vectors)
    block = max(1, min(1024, MAX_SIMILARITY_BLOCK_BYTES // (4 * len(corpus))))
    tasks = [_select_block.remote(anchor_vectors[i:i + block], corpus_ref, positives[i:i + block], select)
             for i in range(0, len(anchors), block)]
    chosen = [picked for result in ray.get(tasks) for picked in result]

    names = [f"negative_{k}" for k in range(1, cfg.num_negatives + 1)]
    out = []
    for row in train:
        picked = chosen[anchor_index[row["anchor"]]]
        if picked is None:
            continue
        out.append({"anchor": row["anchor"], "positive": row["positive"],
                    **{name: corpus[i] for name, i in zip(names, picked, strict=True)},
                    **{k: v for k, v in row.items() if k not in ("anchor", "positive")}})
    dropped = len(train) - len(out)
    log.info("prepare: hard negatives: %d per pair for %d/%d train pairs (%d dropped: too few candidates "
             "qualified) in %.1fs, %d search tasks", cfg.num_negatives, len(out), len(train), dropped,
             time.monotonic() - started, len(tasks))
    if dropped > len(train) * WARN_DROPPED_FRACTION:
        # A row is dropped when its positive scores low against its neighbours, so that the margin rules out
        # most of the top range_max: on a corpus where the base model is weak that can be most of the pairs.
        log.warning("prepare: hard negatives dropped %d of %d train pairs (%.0f%%): for them fewer than "
                    "range_min + num_negatives (%d) of the top range_max (%d) candidates scored below the "
                    "positive less relative_margin (%s) or max_score (%s); a lower range_min or "
                    "relative_margin, or a higher range_max, keeps more", dropped, len(train),
                    100 * dropped / len(train), cfg.range_min + cfg.num_negatives, cfg.range_max,
                    cfg.relative_margin, cfg.max_score)
    return out, dropped


def _encode_sharded(text_lists: list[list[str]], model_ref: str, batch_size: int,
                    num_encoders: int | None, *, unpad: bool) -> list[np.ndarray]:
    """Each list of texts encoded in blocks over a pool of encoder actors; rows in input order."""
    from ray.util import ActorPool

    blocks = [(n, texts[i:i + TEXTS_PER_ENCODE_TASK]) for n, texts in enumerate(text_lists)
              for i in range(0, len(texts), TEXTS_PER_ENCODE_TASK)]
    wanted = num_encoders or max(1, int(ray.available_resources().get("CPU", 1)))
    encoders = [_Encoder.remote(model_ref, batch_size, unpad) for _ in range(max(1, min(wanted, len(blocks))))]
    try:
        similarity = ray.get(encoders[0].similarity.remote())
        if similarity not in ("cosine", "dot"):
            raise NegativesError(f"hard-negative mining needs a model scored by cosine or dot similarity; "
                                 f"{model_ref!r} uses {similarity!r}")
        pool = ActorPool(encoders)
        encoded = list(pool.map(lambda actor, item: actor.encode.remote(item[1]), blocks))
    finally:
        for actor in encoders:
            ray.kill(actor)
    out = []
    for n in range(len(text_lists)):
        parts = [vectors for (owner, _), vectors in zip(blocks, encoded, strict=True) if owner == n]
        out.append(np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32))
    return out
