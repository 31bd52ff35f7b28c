"""``torch.compile`` of the model's repeated transformer blocks (regional compilation).

Why blocks and not the whole model: the blocks of an encoder share one code path, so one
compiled graph serves all of them and compiling takes seconds instead of minutes; and at
the seed recipe's batch of 32 short texts a step is bound by per-kernel launch overhead on a
GPU, which fused block kernels cut. Shapes are marked dynamic: every batch pads to its own
length, and recompiling per length would cost more than it saves.
"""

from __future__ import annotations

from typing import Any


def repeated_blocks(model: Any) -> list[Any]:
    """The largest ``nn.ModuleList`` whose children are all one class (BERT: ``encoder.layer``); [] if none."""
    import torch

    best: list[Any] = []
    best_params = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        params = sum(p.numel() for p in module.parameters())
        if params > best_params:
            best, best_params = list(module), params
    return best


def compile_blocks(model: Any) -> int:
    """Compile each repeated block in place; returns how many. Raises if the model has none to compile."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"train.compile: {type(model).__name__} has no repeated transformer blocks to compile; "
                         "set train.compile: false")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
