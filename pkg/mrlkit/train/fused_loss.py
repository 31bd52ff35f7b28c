"""MatryoshkaLoss over MultipleNegativesRankingLoss, every dimension in one batched pass.

``MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), dims)`` runs the inner loss once per
dimension: truncate, normalize, similarity matrix, log-sum-exp, each a handful of small kernels,
forward and backward. With 7 dims that is ~700 operators per step that launch a kernel (counted
on CPU with a ``TorchDispatchMode``, views left out), a third of a 12-layer encoder's step; on a
GPU whose steps are bound by launching kernels, not by running them (issue 4's H100 profile:
~150 ms per step for ~25 ms of kernels), every one of them costs host time.
:class:`FusedMatryoshkaLoss` computes the same loss for all dims at once: one masked batched
product gives every dim's dot products, prefix sums of squares give every dim's norms, one
log-sum-exp gives every dim's loss (~80 such operators, forward and backward;
``benchmarks/train_step_ops.py`` counts a whole step).

The loss is the same function (tests compare values and gradients with the sentence-transformers
pair, hard negatives, weights and two gloo workers included). It is computed in float32 with
autocast off: the similarity products are tiny next to the encoder, and bf16 logits at scale 20
lose the small score differences the loss is made of.

``merge_columns`` embeds the anchors and the candidates in one forward pass of the encoder
(sentence-transformers' ``embed_columns(..., separate_first=False)``): half the encoder's
operators, at the price of padding the short anchors to the candidates' width. That trade is worth
it only where steps are launch-bound, so it is off by default.

Example::

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from mrlkit.train.fused_loss import FusedMatryoshkaLoss

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    loss = FusedMatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [384, 256, 128, 64, 32])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

SUPPORTED_SIMILARITY = "cos_sim"


def _check_inner(inner: nn.Module) -> None:
    """Only the plain in-batch ranking loss has a fused form; say which settings are not supported."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    if type(inner) is not MultipleNegativesRankingLoss:
        raise ValueError(f"FusedMatryoshkaLoss fuses MultipleNegativesRankingLoss only, got {type(inner).__name__}; "
                         "wrap other losses in sentence-transformers' MatryoshkaLoss")
    config = inner.get_config_dict()
    unsupported = {
        "similarity_fct": (config.get("similarity_fct"), SUPPORTED_SIMILARITY),
        "directions": (tuple(config.get("directions", ("query_to_doc",))), ("query_to_doc",)),
        "hardness_mode": (config.get("hardness_mode"), None),
    }
    for name, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ValueError(f"FusedMatryoshkaLoss: MultipleNegativesRankingLoss({name}={value!r}) is not supported "
                             f"(only {wanted!r}); use sentence-transformers' MatryoshkaLoss for it")


def _prefix_norms(x: Tensor, dims: Tensor) -> Tensor:
    """``[rows, len(dims)]``: the L2 norm of each row's first ``d`` features, for every ``d`` in ``dims``."""
    return torch.cumsum(x * x, dim=-1).index_select(-1, dims - 1).sqrt()


class FusedMatryoshkaLoss(nn.Module):
    """``MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), dims, weights)``, all dims at once.

    Args:
        model: the ``SentenceTransformer`` being trained.
        loss: the ``MultipleNegativesRankingLoss`` to fuse; its ``scale`` and ``gather_across_devices``
            are used (cosine similarity, the ``query_to_doc`` direction, no hardness weighting).
        matryoshka_dims: the truncation dimensions, e.g. ``[384, 256, 128, 64, 32]``.
        matryoshka_weights: one weight per dimension (default: all 1).
        merge_columns: embed anchors and candidates in one forward pass (see the module docstring).

    Inputs are MNRL's: (anchor, positive) pairs or (anchor, positive, negative_1, ...) rows; every
    positive and negative in the batch (in all workers' batches with ``gather_across_devices``) is a
    candidate for every anchor.

    Example::

        loss = FusedMatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [384, 128, 32], [1, 1, 2])
        value = loss(features, labels=None)  # features: one tokenized dict per text column
    """

    def __init__(self, model: Any, loss: nn.Module, matryoshka_dims: Sequence[int],
                 matryoshka_weights: Sequence[float] | None = None, *, merge_columns: bool = False) -> None:
        super().__init__()
        _check_inner(loss)
        if not matryoshka_dims:
            raise ValueError("matryoshka_dims: needs at least one dimension, e.g. [384, 256, 128, 64, 32]")
        if any(int(d) <= 0 for d in matryoshka_dims):
            raise ValueError(f"matryoshka_dims: every dimension must be > 0, got {list(matryoshka_dims)}")
        weights = [1.0] * len(matryoshka_dims) if matryoshka_weights is None else list(matryoshka_weights)
        if len(weights) != len(matryoshka_dims):
            raise ValueError(f"matryoshka_weights: needs one weight per dimension ({len(matryoshka_dims)}), "
                             f"got {len(weights)}")
        embedding_dim = model.get_embedding_dimension()
        if embedding_dim is not None and max(matryoshka_dims) > embedding_dim:
            raise ValueError(f"matryoshka_dims: {max(matryoshka_dims)} is larger than the model's embedding "
                             f"dimension {embedding_dim}")
        # descending, as MatryoshkaLoss orders them (the largest dim bounds the features used)
        pairs = sorted(zip(matryoshka_dims, weights, strict=True), key=lambda p: p[0], reverse=True)
        self.model = model
        self.loss = loss
        self.matryoshka_dims = tuple(int(d) for d, _ in pairs)
        self.matryoshka_weights = tuple(float(w) for _, w in pairs)
        self.merge_columns = merge_columns
        self.register_buffer("_dims", torch.tensor(self.matryoshka_dims), persistent=False)
        self.register_buffer("_weights", torch.tensor(self.matryoshka_weights), persistent=False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        embeddings = embed_columns(self.model, list(sentence_features), separate_first=not self.merge_columns)
        return self.loss_from_embeddings(embeddings)

    def loss_from_embeddings(self, embeddings: list[Tensor]) -> Tensor:
        """The weighted sum over dims of MNRL's loss; ``embeddings``: anchors, positives, then negatives."""
        from sentence_transformers.util import all_gather_with_grad, get_rank

        if len(embeddings) < 2:
            raise ValueError(f"FusedMatryoshkaLoss needs anchor and positive columns, got {len(embeddings)} column(s)")
        queries, candidates = embeddings[0], embeddings[1:]
        batch = queries.size(0)
        offset = 0
        if self.loss.gather_across_devices:  # every worker's candidates; only this worker's anchors are scored
            candidates = [all_gather_with_grad(c) for c in candidates]
            offset = get_rank() * batch
        top = self.matryoshka_dims[0]
        dims = self._dims.to(queries.device)
        with torch.autocast(queries.device.type, enabled=False):
            q = queries[:, :top].float()
            docs = torch.cat(candidates, dim=0)[:, :top].float()
            # masks[k, j] = 1 for the first dims[k] features: one product gives every dim's dot products
            masks = (torch.arange(top, device=q.device) < dims[:, None]).to(q.dtype)
            dots = (q.unsqueeze(0) * masks.unsqueeze(1)) @ docs.T  # [dims, batch, candidates]
            eps = 1e-12  # F.normalize's floor, as the unfused loss normalizes
            q_norm = _prefix_norms(q, dims).clamp_min(eps).T  # [dims, batch]
            d_norm = _prefix_norms(docs, dims).clamp_min(eps).T  # [dims, candidates]
            scores = dots / (q_norm.unsqueeze(2) * d_norm.unsqueeze(1)) * self.loss.scale
            rows = torch.arange(batch, device=q.device)
            positive = scores[:, rows, rows + offset]  # [dims, batch]
            per_dim = (torch.logsumexp(scores, dim=2) - positive).mean(dim=1)
            return (per_dim * self._weights.to(per_dim.device)).sum()

    def get_config_dict(self) -> dict[str, Any]:
        """What the model card records, in MatryoshkaLoss's terms."""
        return {"loss": type(self.loss).__name__, "matryoshka_dims": self.matryoshka_dims,
                "matryoshka_weights": self.matryoshka_weights, "n_dims_per_step": -1, "fused": True,
                "merge_columns": self.merge_columns}

    @property
    def citation(self) -> str:
        from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

        return MatryoshkaLoss.citation.fget(self)  # the same method, the same paper
