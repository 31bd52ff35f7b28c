"""``train.dropout``: one dropout probability for every dropout layer of the model being trained.

Why: dropout is the one part of a training forward pass that inference skips, and it costs
more than its share. Each dropout layer adds an operator forward and one backward, and a
non-zero attention dropout keeps PyTorch's scaled-dot-product attention off its fused CPU
kernel. MiniLM at the seed's lengths, in batches of similar length, trained 1.25x faster on a
CPU with dropout 0 (``benchmarks/results/train_throughput_cpu_dropout.json``). Unset, the model keeps its own
probabilities (0.1 for BERT-style models), as the seed recipe trained.

Only the live modules change, not the model's config: the exported model's ``config.json``
still carries the base model's values, so the export is the base architecture with new weights.
"""

from __future__ import annotations

from typing import Any

# Attention modules of some architectures (Llama-style, ModernBERT) keep their attention dropout as a float
# they pass to the attention kernel, not as an nn.Dropout layer.
FLOAT_DROPOUT_ATTRIBUTES = ("attention_dropout",)


def set_dropout(model: Any, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p``; returns how many it set (0: the model has none
    that this can reach, which the caller says in its log rather than failing a worker over)."""
    import torch

    changed = 0
    for module in model.modules():
        # _DropoutNd: the base of Dropout, Dropout1d/2d/3d and the alpha dropouts, each with its probability in .p
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = p
            changed += 1
        for name in FLOAT_DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
                changed += 1
    return changed
