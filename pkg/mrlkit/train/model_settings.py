"""The config's model-side settings, applied to a loaded ``SentenceTransformer`` before it trains.

Sequence length, dropout, ``torch.compile`` of the blocks, and at most one wrapper of the encoder's
forward: CUDA graphs (``mrlkit.train.cuda_graphs``) or unpadding (``mrlkit.unpad``), which
exclude each other since a graph replays fixed shapes. The per-worker loop calls :func:`prepare_model`;
so do benchmarks that train the seed's way with mrlkit's settings.
"""

from __future__ import annotations

import logging
from typing import Any

from mrlkit.config_schema import TrainConfig

log = logging.getLogger("mrlkit.train")  # the worker's logger: these lines belong to its log


def prepare_model(model: Any, train: TrainConfig, rank: int = 0) -> Any:
    """Apply the config's model-side settings (sequence length, dropout, compile, CUDA graphs, unpadding) to a
    loaded ``SentenceTransformer``; returns the wrapper of the encoder's forward (``GraphedEncoder`` with
    ``train.cuda_graphs``, ``UnpaddedEncoder`` with ``train.unpad``), or None when neither wraps it."""
    if train.max_seq_length:
        model.max_seq_length = train.max_seq_length
    if train.dropout is not None:
        from mrlkit.train.dropout import set_dropout

        changed = set_dropout(model, train.dropout)
        if changed:
            log.info("train: worker %d sets %d dropout layers to p=%s", rank, changed, train.dropout)
        else:
            log.warning("train: worker %d: train.dropout=%s changes nothing: %s has no dropout layer or "
                        "attention_dropout to set", rank, train.dropout, train.base_model)
    if train.compile:
        from mrlkit.train.regional_compile import compile_blocks

        log.info("train: worker %d compiles %d transformer blocks (torch.compile, dynamic shapes)", rank,
                 compile_blocks(model))
    if train.cuda_graphs:
        from mrlkit.train.cuda_graphs import graph_encoder_forward

        graphs = graph_encoder_forward(model)
        log.info("train: worker %d replays the encoder's training passes as CUDA graphs (one per batch shape, "
                 "lengths padded to a multiple of %d)%s", rank, graphs.pad_multiple,
                 "; train.unpad is off with them (a graph replays fixed shapes)" if train.unpad else "")
        return graphs
    if train.unpad:
        return _unpad(model, train, rank)
    return None


def _unpad(model: Any, train: TrainConfig, rank: int) -> Any:
    """``train.unpad``: the unpadding wrapper, or None (with a warning naming why) for a model it cannot serve."""
    from mrlkit.unpad import unpad_or_warn

    if train.compile:
        # compiled blocks see new token counts every batch; the two are not yet measured together
        log.info("train: worker %d computes on padding: train.unpad is off with train.compile", rank)
        return None
    wrapper = unpad_or_warn(model, "train.unpad", train.base_model, logger=log, context=f"train: worker {rank}: ",
                            varlen=train.use_gpu)
    if wrapper is not None:
        log.info("train: worker %d computes on real tokens only (train.unpad; attention %s)", rank,
                 "by variable-length flash kernels on the GPU, once checked there" if wrapper.varlen
                 else "in groups of texts of similar length, each padded to its longest")
    return wrapper
