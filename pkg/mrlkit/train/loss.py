"""The training loss: MatryoshkaLoss wrapped around an in-batch-negatives ranking loss.

Wrap, don't subclass (DESIGN.md): sentence-transformers' ``MatryoshkaLoss`` applies
the inner loss at every truncated dimension, so the inner loss decides how
negatives are used:

- ``mnrl``: ``MultipleNegativesRankingLoss``; every other positive in the batch
  (and the hard negatives, when the pairs carry ``negative_1..k`` columns, which
  makes the rows triplets) is a negative.
- ``cached_mnrl``: ``CachedMultipleNegativesRankingLoss`` (GradCache), for batches
  larger than fit in memory at once; ``mini_batch_size`` bounds the memory.

With ``mnrl`` and ``fused_loss`` (the default), :class:`~mrlkit.train.fused_loss.FusedMatryoshkaLoss`
computes the same loss for every dim in one batched pass instead of one inner-loss call per dim
(fewer kernel launches; ``merge_columns`` also embeds all columns in one encoder pass).

With ``gather_across_devices`` the embeddings of all workers are gathered before
the similarity matrix is built, so N workers see N x batch in-batch negatives.

Example::

    from sentence_transformers import SentenceTransformer
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.loss import build_loss

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    loss = build_loss(model, TrainConfig(matryoshka_dims=(384, 128, 64)))
"""

from __future__ import annotations

from typing import Any

from mrlkit.config_schema import TrainConfig
from mrlkit.errors import ConfigError


def check_dims(dims: tuple[int, ...] | list[int], embedding_dim: int | None, model_ref: str) -> None:
    """Refuse MRL dims the model cannot produce (a truncation larger than the embedding is meaningless)."""
    if embedding_dim is None:
        return
    too_big = [d for d in dims if d > embedding_dim]
    if too_big:
        raise ConfigError(
            f"train.matryoshka_dims: {too_big} larger than the embedding dimension {embedding_dim} of "
            f"train.base_model {model_ref!r}; use dims <= {embedding_dim}, e.g. "
            f"{[d for d in dims if d <= embedding_dim] or [embedding_dim]}"
        )


def build_loss(model: Any, train: TrainConfig, *, distributed: bool | None = None) -> Any:
    """``MatryoshkaLoss(model, inner, dims, weights)`` for the configured inner loss.

    Args:
        model: the ``SentenceTransformer`` being trained.
        train: the ``train`` config section (``loss``, ``matryoshka_dims``, ``matryoshka_weights``,
            ``mini_batch_size``, ``gather_across_devices``, ``fused_loss``, ``merge_columns``).
        distributed: whether several processes train together; gathering across devices is
            only switched on then (None: ask ``torch.distributed``).
    """
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    check_dims(train.matryoshka_dims, model.get_embedding_dimension(), train.base_model)
    if distributed is None:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    gather = bool(train.gather_across_devices and distributed)
    if train.loss == "mnrl":
        inner = MultipleNegativesRankingLoss(model, gather_across_devices=gather)
    elif train.loss == "cached_mnrl":
        inner = CachedMultipleNegativesRankingLoss(model, mini_batch_size=train.mini_batch_size,
                                                   gather_across_devices=gather)
    else:  # the config schema already refuses other values; this guards direct callers
        raise ConfigError(f"train.loss: {train.loss!r} is not a loss; choose one of 'mnrl', 'cached_mnrl'")
    weights = list(train.matryoshka_weights) if train.matryoshka_weights is not None else None
    if train.loss == "mnrl" and train.fused_loss:
        from mrlkit.train.fused_loss import FusedMatryoshkaLoss

        return FusedMatryoshkaLoss(model, inner, list(train.matryoshka_dims), weights,
                                   merge_columns=train.merge_columns)
    return MatryoshkaLoss(model, inner, matryoshka_dims=list(train.matryoshka_dims), matryoshka_weights=weights)
