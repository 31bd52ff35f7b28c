"""Attention within each text of a packed row: the one place where the texts of an unpadded batch meet.

``mrlkit.unpad`` runs an encoder on a batch's real tokens only, the texts one after another in one row
(``[1, tokens]``). Everything outside attention is position-wise; attention must not let a text see the
others. :class:`Packing` says where each text sits, and the registered attention function
(:func:`unpadded_attention`, the wrapped model's attention setting) attends within each text: by
PyTorch's variable-length flash attention where it may run (a GPU, half precision, no attention dropout,
once checked), else in a few groups of texts of similar length (:func:`attention_groups`), each in one
padded grid through ``scaled_dot_product_attention``. A forward that is not packed reaches sdpa, the
model's own attention, through the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

ATTENTION_NAME = "mrlkit_unpadded"
# What attending in one more grid costs, in units of one query-key pair of attention (its forward and backward):
# a grid is ~12 operators a layer, ~0.2 ms on a CPU, about the attention of a 32-token text (~1,000 pairs)
GROUP_COST_PAIRS = 1024


class NotUnpaddable(Exception):
    """The model's packed forward does not reproduce its padded one; it keeps computing on padding."""


def attention_groups(lengths: list[int], group_cost: int = GROUP_COST_PAIRS) -> list[list[int]]:
    """Texts (indices into ``lengths``) in groups that each attend in one ``[texts, longest]`` grid.

    One grid for a whole batch costs ``texts x longest^2`` pairs, so a single long text makes every short
    one pay for its length (random batches at the seed's lengths: a 200-token context beside 40-token
    ones). Texts sorted by length are cut into contiguous groups minimizing the pairs attended plus
    ``group_cost`` a group (dynamic programming, O(texts^2) on the host). Longest group first.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0] + [None] * n  # best[i]: the cheapest cover of the i longest texts
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i):  # the last group is texts j..i-1, padded to the longest of them, sorted_lengths[j]
            cost = best[j] + (i - j) * sorted_lengths[j] ** 2 + group_cost
            if best[i] is None or cost < best[i]:
                best[i], cut[i] = cost, j
    groups = []
    i = n
    while i > 0:
        groups.append(order[cut[i]:i])
        i = cut[i]
    return groups[::-1]


@dataclass(frozen=True)
class AttentionGroup:
    """Texts of similar length that attend in one padded grid of ``[texts, longest]``."""

    texts: int
    longest: int
    tokens: Any  # [group tokens]: their places in the packed row, text by text
    cells: Any  # [group tokens]: their cells in the flattened grid; None when every text is ``longest`` long
    key_mask: Any  # [texts, longest] bool, the grid's real cells; None likewise (no mask: the fused kernel)


class Packing:
    """Where a batch's real tokens sit: texts of ``lengths`` tokens one after another in one row.

    What each attention path needs is built on its first use and kept for the pass's other layers, so a
    pass builds only its own path's index tensors (host arithmetic, then copies to ``device``): ``grids``
    for the grouped path, ``cu_seqlens`` for the flash kernel.
    """

    def __init__(self, lengths: list[int], device: Any, varlen: bool) -> None:
        self.lengths = lengths
        self.device = device
        self.longest = max(lengths)
        # whether the variable-length flash kernel may run (on the GPU, once checked; when the layer's precision
        # and dropout allow it)
        self.varlen = varlen

    @cached_property
    def starts(self) -> Any:
        import numpy as np

        return np.concatenate([[0], np.cumsum(self.lengths)])  # where each text starts in the row, and the end

    @cached_property
    def cu_seqlens(self) -> Any:
        """[texts + 1] int32: ``starts`` on the device, as the flash kernel takes them."""
        import numpy as np
        import torch

        return torch.from_numpy(self.starts.astype(np.int32)).to(self.device)

    @cached_property
    def grids(self) -> tuple[tuple[AttentionGroup, ...], Any]:
        """The groups the texts attend in (:func:`attention_groups`), and ``restore``: the ``[tokens]`` order
        that puts the groups' outputs, concatenated, back into the row's."""
        import numpy as np
        import torch

        lengths, starts, device = self.lengths, self.starts, self.device
        groups, order = [], []
        for members in attention_groups(lengths):
            group_lengths = [lengths[i] for i in members]
            longest = max(group_lengths)
            tokens = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in members])
            order.append(tokens)
            cells = key_mask = None
            if min(group_lengths) < longest:
                cells = torch.from_numpy(np.concatenate([row * longest + np.arange(n)
                                                         for row, n in enumerate(group_lengths)])).to(device)
                key_mask = torch.from_numpy(np.arange(longest)[None, :]
                                            < np.array(group_lengths)[:, None]).to(device)
            groups.append(AttentionGroup(len(members), longest, torch.from_numpy(tokens).to(device), cells,
                                         key_mask))
        restore = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable")).to(device)
        return tuple(groups), restore


def varlen_attn() -> Any:
    """PyTorch's variable-length flash attention, or None where this PyTorch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn as kernel
    except ImportError:  # PyTorch before 2.10
        return None
    return kernel


def unpadded_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                       dropout: float = 0.0, scaling: float | None = None, mrlkit_packing: Packing | None = None,
                       **kwargs: Any) -> tuple[Any, None]:
    """A wrapped model's attention: within each text of a packed batch (``query``/``key``/``value`` are
    ``[1, heads, tokens, dim]``; returns ``([1, tokens, heads, dim], None)``, what Hugging Face's attention
    functions return); the model's own sdpa attention for a forward that is not packed.
    """
    import torch

    packing = mrlkit_packing
    if packing is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    if query.shape[0] != 1 or key.shape[1] != query.shape[1]:
        raise NotUnpaddable(f"{ATTENTION_NAME} attention needs a packed batch with as many key as query heads "
                            f"(got query {tuple(query.shape)}, key {tuple(key.shape)})")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, dim]
    kernel = varlen_attn() if packing.varlen and dropout == 0.0 else None
    if kernel is not None and q.dtype in (torch.float16, torch.bfloat16):
        out = kernel(q.contiguous(), k.contiguous(), v.contiguous(), packing.cu_seqlens, packing.cu_seqlens,
                          packing.longest, packing.longest, scale=scaling)
        return out[None], None
    heads, dim = q.shape[1], q.shape[2]
    groups, restore = packing.grids
    outputs = []
    for group in groups:
        cells = group.texts * group.longest

        def to_grid(t: Any, group: AttentionGroup = group, cells: int = cells) -> Any:
            rows = t.index_select(0, group.tokens)
            if group.cells is not None:
                rows = rows.new_zeros(cells, heads, dim).index_copy(0, group.cells, rows)
            return rows.view(group.texts, group.longest, heads, dim).transpose(1, 2)

        mask = None if group.key_mask is None else group.key_mask[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(to_grid(q), to_grid(k), to_grid(v), attn_mask=mask,
                                                               dropout_p=dropout, scale=scaling)
        out = out.transpose(1, 2).reshape(cells, heads, dim)
        outputs.append(out if group.cells is None else out.index_select(0, group.cells))
    return torch.cat(outputs).index_select(0, restore)[None], None


def register() -> None:
    """Register the attention function and its mask builder with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, unpadded_attention)
    # the packed batch has no padding, so the model's mask builder returns no mask, as it does for sdpa
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
