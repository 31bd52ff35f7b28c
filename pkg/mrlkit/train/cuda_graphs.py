"""``train.cuda_graphs``: replay the encoder's forward and backward as CUDA graphs.

Why: at the seed's lengths (~36 real tokens a text, batch 32) a bge-base training step on an H100
launches ~3,300 kernels that together run ~25 ms, and the step takes ~150 ms: the GPU waits on
the host launching them one by one (``benchmarks/results/train_gpu_h100.json``). A CUDA graph
launches a captured forward or backward as one unit, so the host's cost per step no longer grows
with the number of kernels.

How: the Hugging Face model's ``forward`` is wrapped. A training forward on CUDA (training mode,
grad enabled) pads its batch to a bucketed shape (lengths to the next multiple of ``pad_multiple``
tokens, rows to the most rows seen, so an epoch's smaller last batch needs no shape of its own) and
runs the graph captured for that shape, capturing it with ``torch.cuda.make_graphed_callables`` the
first time the shape is seen. The hidden states come back cut to the batch's own rows and length,
so padding changes nothing downstream: padded positions are masked out of attention and pooling,
padded rows are dropped. Evaluation, ``no_grad`` and CPU forwards run the model as before.

Constraints, each held here rather than left to the user:

- A graph's activations and outputs live in memory that its next replay overwrites. The graphs of
  one encoder pass of a step (the anchors, say) share one memory pool, else each length would hold
  its own copy of the activations; the next pass (the candidates) gets a pool of its own, since both
  passes' activations must live until the step's backward. So at most ``passes_per_step`` graphed
  forwards may await their backward: a further pass in the same step runs eagerly. With
  ``train.merge_columns`` a step is one pass; without it, anchors and candidates are two.
- Each captured shape keeps its own copy of the parameter gradients (a graph's static output),
  so the shapes are bounded: lengths round up to ``pad_multiple`` (at most ``max_length /
  pad_multiple`` lengths per pass), and past ``max_graphs`` new shapes run eagerly.
- Inputs other than ``input_ids``, ``attention_mask`` and ``token_type_ids`` run eagerly.

Example::

    from mrlkit.train.cuda_graphs import graph_encoder_forward

    graph_encoder_forward(sentence_transformer)  # before training; captures happen on the first steps
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from typing import Any

from mrlkit.unpad import extra_arguments

log = logging.getLogger(__name__)

GRAPHED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def padded_length(length: int, pad_multiple: int, max_length: int | None) -> int:
    """``length`` rounded up to a multiple of ``pad_multiple``, capped at ``max_length`` (never below ``length``)."""
    rounded = math.ceil(length / pad_multiple) * pad_multiple
    return max(length, min(rounded, max_length)) if max_length else rounded


def _hidden_states_module(model: Any, forward: Callable[..., Any]) -> Any:
    """The encoder as a module of tensors only, what ``make_graphed_callables`` can capture."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered: its parameters are the graph's

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           return_dict=True).last_hidden_state

    return HiddenStates()


def capture_with_cuda_graphs(module: Any, sample_args: tuple[Any, ...], pool: Any) -> Callable[..., Any]:
    """The module's forward and backward captured as CUDA graphs (``torch.cuda.make_graphed_callables``).

    Autocast is kept as the caller has it (the trainer's bf16 autocast is captured into the graph),
    with its weight-cast cache off, which capture requires. Captures in the "thread_local" mode.
    """
    import torch

    autocast_on = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda")
    global_capture = torch.cuda.graph

    class ThreadLocalCapture(global_capture):
        # make_graphed_callables captures in "global" mode, where a CUDA call from any other thread invalidates
        # the capture; a DataLoader with loader processes pins each batch in a thread of this process, and that
        # broke a capture on an H100. "thread_local" forbids unsafe calls in the capturing thread only.
        def __init__(self, cuda_graph: Any, pool: Any = None, stream: Any = None, **_: Any) -> None:
            super().__init__(cuda_graph, pool=pool, stream=stream, capture_error_mode="thread_local")

    torch.cuda.graph = ThreadLocalCapture
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=autocast_on, cache_enabled=False):
            # allow_unused_input: BERT's pooler runs but sentence-transformers' pooling never reads it.
            # One warm-up pass, not the default three: it initializes the libraries' handles and workspaces
            # before capture, and every shape of a run pays for it (a recipe run captures ~20 shapes).
            return torch.cuda.make_graphed_callables(module, sample_args, num_warmup_iters=1,
                                                     allow_unused_input=True, pool=pool)
    finally:
        torch.cuda.graph = global_capture


class GraphedEncoder:
    """The wrapped ``forward`` of a Hugging Face encoder; see the module docstring.

    ``capture(module, sample_args, pool)`` returns the callable to run for one shape; tests pass one
    that returns the module itself, to check the padding, keys and guards on a CPU.
    """

    def __init__(self, model: Any, *, pad_multiple: int = 32, max_graphs: int = 32, passes_per_step: int = 2,
                 capture: Callable[..., Callable[..., Any]] = capture_with_cuda_graphs,
                 on_device: Callable[[Any], bool] | None = None) -> None:
        for name, value in (("pad_multiple", pad_multiple), ("max_graphs", max_graphs),
                            ("passes_per_step", passes_per_step)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.model = model
        self.eager_forward = model.forward
        self.pad_multiple = pad_multiple
        self.max_graphs = max_graphs
        self.passes_per_step = passes_per_step
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self.pad_token_id = getattr(model.config, "pad_token_id", None) or 0
        self.capture = capture
        self.on_device = on_device or (lambda t: t.is_cuda)
        self.graphs: dict[tuple[int, int, int], Callable[..., Any]] = {}  # (pass, rows, length) -> graph
        self.pools: dict[int, Any] = {}  # one memory pool per pass of a step
        # per pass of the step under way: the autograd node of its graphed forward, until its backward
        # starts (alive and not yet backwarded, its graph's activations must stay untouched)
        self.pending: dict[int, Callable[[], Any]] = {}
        self.rows = 0  # the most rows seen: a step's last, smaller batch pads up to it instead of a new graph
        self.replays = 0
        self.eager_passes = 0
        self._said: set[str] = set()

    def _once(self, reason: str, message: str, *args: Any) -> None:
        if reason not in self._said:
            self._said.add(reason)
            log.info(message, *args)

    def _graphable(self, kwargs: dict[str, Any]) -> bool:
        import torch

        ids = kwargs.get("input_ids")
        if ids is None or kwargs.get("attention_mask") is None:
            return False
        if not (self.model.training and torch.is_grad_enabled() and self.on_device(ids)):
            return False
        extra = extra_arguments(kwargs, GRAPHED_INPUTS)
        if extra:
            self._once("extra", "train.cuda_graphs: forwards with %s run eagerly", extra)
            return False
        return True

    def _free_pass(self) -> int | None:
        """The first pass slot with no forward awaiting its backward; None when all are taken."""
        for slot in range(self.passes_per_step):
            node = self.pending.get(slot)
            # a forward whose output was dropped without a backward (its node died) leaves nothing to protect
            if node is None or node() is None:
                self.pending.pop(slot, None)
                return slot
        return None

    def __call__(self, **kwargs: Any) -> Any:
        if not self._graphable(kwargs):
            return self.eager_forward(**kwargs)
        slot = self._free_pass()
        if slot is None:
            # more encoder passes before their backwards than there are pools: replaying (or capturing) in a
            # taken pool would overwrite activations a pending backward still needs
            self._once("passes", "train.cuda_graphs: a step runs more than %d encoder passes; the others run "
                                 "eagerly", self.passes_per_step)
            self.eager_passes += 1
            return self.eager_forward(**kwargs)
        return self._graphed(slot, kwargs)

    def _padded(self, kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
        """input_ids, attention_mask and token_type_ids padded to ``self.rows`` rows and a bucketed length.

        Padding rows attend to their first position only, a precaution: what a row with nothing to attend
        to computes is up to each attention kernel (finite on this CPU; NaN in some kernels), and a NaN times
        the zero gradient such a row receives is still NaN.
        """
        import torch

        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        types = kwargs.get("token_type_ids")
        if types is None:
            types = torch.zeros_like(ids)
        rows, length = ids.shape
        width = padded_length(length, self.pad_multiple, self.max_length)
        if (rows, width) == (self.rows, length):
            return ids, mask, types
        ids_out = ids.new_full((self.rows, width), self.pad_token_id)
        mask_out = mask.new_zeros((self.rows, width))
        types_out = types.new_zeros((self.rows, width))
        ids_out[:rows, :length] = ids
        mask_out[:rows, :length] = mask
        mask_out[rows:, 0] = 1
        types_out[:rows, :length] = types
        return ids_out, mask_out, types_out

    def _graphed(self, slot: int, kwargs: dict[str, Any]) -> Any:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        rows, length = kwargs["input_ids"].shape
        self.rows = max(self.rows, rows)
        ids, mask, types = self._padded(kwargs)
        key = (slot, *ids.shape)
        run = self.graphs.get(key)
        if run is None:
            if len(self.graphs) >= self.max_graphs:
                self._once("max", "train.cuda_graphs: %d shapes captured, the most kept; new shapes run eagerly",
                           self.max_graphs)
                self.eager_passes += 1
                return self.eager_forward(**kwargs)
            if slot not in self.pools and torch.cuda.is_available():
                self.pools[slot] = torch.cuda.graph_pool_handle()
            log.info("train: capturing CUDA graphs for pass %d of %d rows x %d tokens (%d captured)", slot,
                     ids.shape[0], ids.shape[1], len(self.graphs) + 1)
            run = self.capture(_hidden_states_module(self.model, self.eager_forward), (ids, mask, types),
                               self.pools.get(slot))
            self.graphs[key] = run
        hidden = run(ids, mask, types)
        self.replays += 1
        if hidden.grad_fn is not None:
            try:
                self.pending[slot] = weakref.ref(hidden.grad_fn)
            except TypeError:  # a C++ node (no graph around it): pending until its backward starts
                node = hidden.grad_fn
                self.pending[slot] = lambda: node
            hidden.register_hook(lambda grad: self._backward_reached(slot, grad))
        return BaseModelOutput(last_hidden_state=hidden[:rows, :length])

    def _backward_reached(self, slot: int, grad: Any) -> Any:
        self.pending.pop(slot, None)
        return grad


def graph_encoder_forward(sentence_model: Any, **settings: Any) -> GraphedEncoder:
    """Wrap the encoder of a ``SentenceTransformer`` (its first module's Hugging Face model); returns the wrapper.

    ``settings``: :class:`GraphedEncoder`'s keyword arguments. Raises ValueError, naming what it found, for a
    model whose first module has no Hugging Face encoder.
    """
    first = sentence_model[0]
    encoder = getattr(first, "auto_model", None)
    if encoder is None or not hasattr(encoder, "config"):
        raise ValueError(f"train.cuda_graphs: the model's first module ({type(first).__name__}) has no Hugging "
                         "Face encoder to capture; set train.cuda_graphs: false")
    wrapper = GraphedEncoder(encoder, **settings)
    encoder.forward = wrapper
    return wrapper
