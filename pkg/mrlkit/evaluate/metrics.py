"""Retrieval metrics from embeddings, computed the way sentence-transformers computes them.

Two pure functions, no model and no I/O:

- :func:`rank_top_k` finds each query's best ``k`` corpus entries by cosine score,
  in chunks of queries so a large corpus never needs a full ``queries x corpus``
  score matrix at once, with ties broken by ascending corpus id (the library's order).
- :func:`ir_metrics` turns those rankings into NDCG@k, MRR@k, Recall@k and MAP@k.

The definitions follow ``InformationRetrievalEvaluator.compute_metrics`` of
sentence-transformers exactly, because the point of :mod:`mrlkit.evaluate` is to
give the same numbers at a fraction of the cost: binary relevance; the ideal DCG
assumes every relevant id (even one missing from the corpus) could rank first;
Recall@k divides by the number of relevant ids; MAP@k divides by
``min(k, number of relevant ids)``; MRR@k is the reciprocal rank of the first hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The metric names every dimension reports, in report order.
METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "recall@100", "map@100")
RANK_DEPTH = 100  # the deepest cutoff above (recall@100, map@100)


@dataclass(frozen=True)
class Rankings:
    """Each query's top corpus positions (into the id-sorted corpus) and their scores, best first."""

    indices: torch.Tensor  # [num_queries, k] long
    scores: torch.Tensor  # [num_queries, k] float


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (a zero row stays zero), as ``sentence_transformers.util.cos_sim`` does."""
    return torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` components of each row, re-normalised to unit length.

    A truncated Matryoshka vector is not unit length any more; scoring it by dot
    product without re-normalising would rank by vector norm as well as direction.
    """
    if dim < 1 or dim > embeddings.shape[1]:
        raise ValueError(f"cannot truncate {embeddings.shape[1]}-dim embeddings to {dim}")
    return normalize(embeddings[:, :dim])


SCORE_BLOCK_ELEMENTS = 1 << 25  # at most 32M scores (128 MiB float32) in memory at once


def rank_top_k(queries: torch.Tensor, corpus: torch.Tensor, k: int, query_chunk_size: int | None = None) -> Rankings:
    """Top-``k`` corpus rows per query by dot product of (already normalised) rows.

    Queries are scored ``query_chunk_size`` at a time (default: as many as keep one block of
    scores under :data:`SCORE_BLOCK_ELEMENTS`), so memory stays bounded for any corpus size.

    ``corpus`` must be ordered by ascending corpus id: among equal scores the lower
    row wins, which is the library's ``(-score, corpus_id)`` order. ``torch.topk``
    breaks ties arbitrarily, so a row with ties at its k-th score is re-ranked by a
    stable sort.
    """
    k = min(k, corpus.shape[0])
    if query_chunk_size is None:
        query_chunk_size = max(1, min(1024, SCORE_BLOCK_ELEMENTS // max(1, corpus.shape[0])))
    all_idx, all_scores = [], []
    for start in range(0, queries.shape[0], query_chunk_size):
        scores = queries[start:start + query_chunk_size] @ corpus.T
        values, idx = torch.topk(scores, k, dim=1, largest=True, sorted=False)
        threshold = values.min(dim=1, keepdim=True).values
        boundary_ties = (scores >= threshold).sum(dim=1) > k
        for row in torch.nonzero(boundary_ties).flatten().tolist():
            order = torch.sort(scores[row], descending=True, stable=True).indices[:k]
            idx[row], values[row] = order, scores[row, order]
        # Order the k candidates by (-score, position): positions ascending first, then a stable score sort.
        idx, perm = torch.sort(idx, dim=1)
        values = values.gather(1, perm)
        values, perm = torch.sort(values, dim=1, descending=True, stable=True)
        all_idx.append(idx.gather(1, perm))
        all_scores.append(values)
    if not all_idx:
        return Rankings(torch.empty(0, k, dtype=torch.long), torch.empty(0, k))
    return Rankings(torch.cat(all_idx), torch.cat(all_scores))


def _dcg(relevances: Sequence[int], k: int) -> float:
    return sum(rel / math.log2(i + 2) for i, rel in enumerate(relevances[:k]))


def ir_metrics(ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    """NDCG@10, MRR@10, Recall@1/5/10/100 and MAP@100, averaged over queries.

    Args:
        ranked_ids: per query, corpus ids best first (at least 100 deep, or the whole corpus).
        relevant: per query, its non-empty set of relevant corpus ids.
    """
    if len(ranked_ids) != len(relevant):
        raise ValueError(f"{len(ranked_ids)} rankings for {len(relevant)} queries")
    if not ranked_ids:
        raise ValueError("no queries to score")
    sums = dict.fromkeys(METRIC_NAMES, 0.0)
    for ids, rel in zip(ranked_ids, relevant, strict=True):
        hits = [1 if cid in rel else 0 for cid in ids[:RANK_DEPTH]]
        sums["ndcg@10"] += _dcg(hits, 10) / _dcg([1] * len(rel), 10)
        first = next((i for i, h in enumerate(hits[:10]) if h), None)
        sums["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        for k in (1, 5, 10, 100):
            sums[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        correct, precision_sum = 0, 0.0
        for i, h in enumerate(hits[:100]):
            if h:
                correct += 1
                precision_sum += correct / (i + 1)
        sums["map@100"] += precision_sum / min(100, len(rel))
    return {name: value / len(ranked_ids) for name, value in sums.items()}
