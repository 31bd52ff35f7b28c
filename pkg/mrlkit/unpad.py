"""Unpadding: the encoder computes on a batch's real tokens only, never on its padding.

Used where mrlkit runs an encoder: training (``train.unpad``), serving (``serve.unpad``), evaluation
(``evaluate.unpad``) and hard-negative mining (``pairs.hard_negatives.unpad``); on by default in each.

Why: a batch pads every text to its longest, and an encoder's linear layers, layer norms and
activations, nearly all of its work at these lengths, cost the same for a padding token as for a
real one. In training, random batches of 32 pairs at the seed dataset's lengths are 41% real tokens
and 59% padding (``benchmarks/train_throughput.py``'s measured distribution). Length bucketing
(``train.length_bucketing``) also cuts the padding, but by changing which pairs share a batch,
and so the in-batch negatives the loss sees; unpadding keeps the seed's random batches. A served
batch is whatever requests arrived together: a 10-token query that shares a batch with a 250-token
passage would otherwise be computed as 250 tokens. Either way the same function is computed (the
same numbers up to the order of floating-point sums; dropout, when on, draws other masks).

How: the Hugging Face model's ``forward`` is wrapped. It packs the batch's real tokens into one
row (``[1, tokens]``) with each token's own position id and token type, so everything outside
attention is position-wise and sees only real tokens. Attention is the one place where tokens
meet: a registered attention function (``mrlkit.packed_attention``), the model's attention
setting for as long as it is wrapped, gets the packing and attends within each text (a forward
that is not packed reaches sdpa, the model's own attention, through it; the setting is not saved
with the model). On a GPU in half precision without attention dropout it runs PyTorch's
variable-length flash attention (``torch.nn.attention.varlen``), once checked there against the
path below. Otherwise the texts, sorted by length, are cut into a few groups
(``packed_attention.attention_groups``), and each group attends in one ``[texts, longest, ...]``
grid through ``scaled_dot_product_attention`` with a key mask: one grid for the whole batch would
make every short text pay for the longest's length. The hidden states come back scattered into
the padded ``[texts, length, hidden]`` shape, zeros at padding, so pooling and everything
downstream are unchanged.

Position ids are the columns the padded model gives the tokens (its default ``arange``), so the
packed forward equals the padded one for every model whose only cross-token operator is attention
and whose positions are absolute ids: BERT and its descendants (MiniLM, bge, e5). Before it is
used, :func:`unpad_encoder` checks that on a sample batch and refuses any model where it does not
hold (relative position biases, positions derived from the padding, as RoBERTa's are).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mrlkit import packed_attention
from mrlkit.packed_attention import ATTENTION_NAME, NotUnpaddable, Packing

log = logging.getLogger(__name__)

PACKED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CHECK_TEXTS = ("a", "unpadded attention attends within each text of the batch, never across texts",
               "three words here", "")
CHECK_TOLERANCE = 1e-4  # fp32, the same arithmetic in another order
VARLEN_TOLERANCE = 0.05  # relative, bf16 (8 bits of mantissa) through a whole encoder and its backward


# Hugging Face forward arguments that carry no data: harmless to drop when they keep their defaults
IGNORED_DEFAULTS = {"return_dict": True, "output_attentions": None, "output_hidden_states": None}


def extra_arguments(kwargs: dict[str, Any], inputs: tuple[str, ...]) -> list[str]:
    """The arguments of a forward call, besides ``inputs``, that carry something (``IGNORED_DEFAULTS`` do not).

    The wrappers of an encoder's forward (this module's, ``mrlkit.train.cuda_graphs``) handle calls with the
    token inputs only; any other argument that carries something sends the call to the model's own forward.
    """
    # identity, not ==: the defaults are singletons (True, None), and == on a tensor argument is elementwise
    return sorted(k for k, v in kwargs.items()
                  if k not in inputs and not (k in IGNORED_DEFAULTS and v is IGNORED_DEFAULTS[k]))


class UnpaddedEncoder:
    """The wrapped ``forward`` of a Hugging Face encoder; see the module docstring.

    Forwards it cannot pack run as before: inputs other than token ids, mask and token types, a batch
    without padding (nothing to save), a text with no token at all.
    """

    def __init__(self, model: Any, tokenizer: Any, *, varlen: bool = True,
                 on_device: Callable[[Any], bool] | None = None, setting: str = "unpad") -> None:
        packed_attention.register()
        self.model = model
        self.setting = setting  # the config setting that asked for it, named in log lines
        self.tokenizer = tokenizer
        self.eager_forward = model.forward
        # the flash kernel runs only once checked against the grid path on the GPU the model trains on: the
        # model is loaded on the CPU and moved by the trainer, so the check waits for the first batch there
        self.varlen = varlen
        self.varlen_checked = False
        self._check_lock = threading.Lock()
        self.on_device = on_device or (lambda t: t.is_cuda)  # where the flash kernel runs; tests pass a stand-in
        self.packed_passes = 0
        self.eager_passes = 0
        self.real_tokens = 0
        self.padded_tokens = 0
        self._said: set[str] = set()

    def unwrap(self) -> None:
        """Give the model back its own forward and attention setting."""
        self.model.forward = self.eager_forward
        self.model.config._attn_implementation = "sdpa"  # the only attention unpad_encoder wraps

    def summary(self) -> dict[str, Any]:
        """Passes run packed and as before, and the real tokens' share of the padded batches' (what padding skipped)."""
        return {"packed_passes": self.packed_passes, "eager_passes": self.eager_passes,
                "real_token_fraction": round(self.real_tokens / max(self.padded_tokens, 1), 3)}

    def _once(self, reason: str, message: str, *args: Any) -> None:
        if reason not in self._said:
            self._said.add(reason)
            log.info(message, *args)

    def _packable(self, kwargs: dict[str, Any]) -> bool:
        if kwargs.get("input_ids") is None or kwargs.get("attention_mask") is None:
            return False
        extra = extra_arguments(kwargs, PACKED_INPUTS)
        if extra:
            self._once("extra", "%s: forwards with %s compute on padding", self.setting, extra)
            return False
        return kwargs["attention_mask"].dim() == 2

    def __call__(self, **kwargs: Any) -> Any:
        if not self._packable(kwargs):
            self.eager_passes += 1
            return self.eager_forward(**kwargs)
        return self.packed_forward(kwargs["input_ids"], kwargs["attention_mask"], kwargs.get("token_type_ids"))

    def packed_forward(self, ids: Any, mask: Any, token_types: Any = None, *, varlen: bool | None = None) -> Any:
        """The forward on the real tokens of ``ids`` (``[texts, length]``), hidden states in the padded shape.

        ``varlen``: whether attention may run the flash kernel; None decides as the wrapper is set (the checks
        pass it, so they never change a setting another thread's forward reads).
        """
        from transformers.modeling_outputs import BaseModelOutput

        if varlen is None:
            varlen = self.varlen and self.on_device(ids)
            if varlen and not self.varlen_checked:
                with self._check_lock:  # forwards in other threads wait for the one check, not run unchecked
                    if not self.varlen_checked:
                        check_varlen(self)
                varlen = self.varlen
        texts, length = ids.shape
        real = mask.bool()
        lengths_host = real.sum(1).tolist()  # a host sync: the groups and the flash kernel need the sizes there
        tokens = sum(lengths_host)
        self.padded_tokens += texts * length
        self.real_tokens += tokens
        if tokens == texts * length or min(lengths_host, default=0) == 0:
            # no padding: the packed forward would compute the same at a cost; a text with no token: what
            # attention over no keys gives is up to each kernel, so it is left to the model's own
            self.eager_passes += 1
            return self.eager_forward(input_ids=ids, attention_mask=mask, token_type_ids=token_types,
                                      return_dict=True)
        flat_index = real.reshape(-1).nonzero().squeeze(1)  # row by row: the texts one after another
        columns = flat_index % length
        packing = Packing(lengths_host, ids.device, varlen)
        packed_types = None if token_types is None else token_types.reshape(-1).index_select(0, flat_index)[None]

        out = self.eager_forward(input_ids=ids.reshape(-1).index_select(0, flat_index)[None],
                                 token_type_ids=packed_types, position_ids=columns[None], attention_mask=None,
                                 return_dict=True, mrlkit_packing=packing)
        self.packed_passes += 1
        hidden = out.last_hidden_state[0]
        padded = hidden.new_zeros(texts * length, hidden.shape[-1]).index_copy(0, flat_index, hidden)
        return BaseModelOutput(last_hidden_state=padded.view(texts, length, -1))


def _sample_batch(wrapper: UnpaddedEncoder, device: Any) -> tuple[Any, Any, Any]:
    batch = wrapper.tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    types = batch.get("token_type_ids")
    return (batch["input_ids"].to(device), batch["attention_mask"].to(device),
            None if types is None else types.to(device))


def check_unpadded(wrapper: UnpaddedEncoder) -> float:
    """The largest difference between the packed and the padded forward over the real tokens of a sample batch
    (eval mode, no grad, fp32 arithmetic); raises NotUnpaddable past ``CHECK_TOLERANCE`` or on any error."""
    import torch

    model = wrapper.model
    device = next(model.parameters()).device
    ids, mask, types = _sample_batch(wrapper, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            padded = wrapper.eager_forward(input_ids=ids, attention_mask=mask, token_type_ids=types,
                                           return_dict=True).last_hidden_state
            # the grid path; the flash kernel is checked against it on its own GPU (check_varlen)
            packed = wrapper.packed_forward(ids, mask, types, varlen=False).last_hidden_state
    except NotUnpaddable:
        raise
    except Exception as err:  # any failure means the model cannot run packed
        raise NotUnpaddable(f"its packed forward fails: {type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)
    real = mask.bool()
    diff = (packed[real] - padded[real]).abs().max().item()
    scale = max(padded[real].abs().max().item(), 1.0)
    if not diff <= CHECK_TOLERANCE * scale:
        raise NotUnpaddable(f"its packed forward differs from the padded one by {diff:.3g} on a sample batch "
                            "(positions or attention that depend on the padding)")
    return diff


def check_varlen(wrapper: UnpaddedEncoder) -> float | None:
    """Compare the variable-length flash kernel with the grid path on a sample batch, forward and backward, in
    bf16 autocast on the model's GPU; turns it off (``wrapper.varlen = False``, with a warning) if it fails or
    differs by more than bf16's error. Returns the largest relative difference; None where it cannot run.
    ``wrapper.varlen_checked`` is set once ``wrapper.varlen`` holds the outcome."""
    try:
        return _compare_varlen(wrapper)
    finally:
        wrapper.varlen_checked = True


def _compare_varlen(wrapper: UnpaddedEncoder) -> float | None:
    import torch

    # a frozen model (an inference server may freeze its weights) is compared on its forward alone
    weights = [p for p in wrapper.model.parameters() if p.requires_grad]
    first = next(wrapper.model.parameters())
    device = first.device
    if not wrapper.varlen or not wrapper.on_device(first) or packed_attention.varlen_attn() is None:
        return None
    ids, mask, types = _sample_batch(wrapper, device)
    was_training = wrapper.model.training
    wrapper.model.eval()  # no dropout: both runs must compute the same function

    def run(varlen: bool) -> list[Any]:
        # enable_grad: the first batch on the GPU may be an evaluation's, under no_grad
        with torch.enable_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = wrapper.packed_forward(ids, mask, types, varlen=varlen).last_hidden_state.float()
        if not weights:
            return [hidden]
        # allow_unused: a pooler head that sentence-transformers never reads gets no gradient
        grads = torch.autograd.grad(hidden.square().mean(), weights, allow_unused=True)
        # the gradients compared as one vector: some are zero in exact arithmetic (a key projection's bias:
        # softmax ignores what it adds to every score), so their own relative error is bf16's noise
        return [hidden, torch.cat([g.reshape(-1) for g in grads if g is not None])]

    try:
        expected, got = run(False), run(True)
        worst = max(((g - e).norm() / e.norm().clamp_min(1e-6)).item() for g, e in zip(got, expected, strict=True))
    except Exception as err:  # a kernel this PyTorch or GPU lacks: the grid path still works
        wrapper.varlen = False
        log.warning("%s: the variable-length flash kernel fails here (%s: %s); attention runs in "
                    "groups of texts of similar length instead", wrapper.setting, type(err).__name__, err)
        return None
    finally:
        wrapper.model.train(was_training)
    wrapper.varlen = worst <= VARLEN_TOLERANCE
    if not wrapper.varlen:
        log.warning("%s: the variable-length flash kernel differs from padded attention by %.3g "
                    "(relative, bf16); attention runs in groups of texts of similar length instead", wrapper.setting,
                    worst)
    return worst


def unpad_encoder(sentence_model: Any, **settings: Any) -> UnpaddedEncoder:
    """Wrap the encoder of a ``SentenceTransformer`` (its first module's Hugging Face model) and check it.

    ``settings``: :class:`UnpaddedEncoder`'s keyword arguments. Raises NotUnpaddable, naming what it found, for
    a model whose packed forward does not match its padded one; the model is then left as it was.
    """
    first = sentence_model[0]
    encoder = getattr(first, "auto_model", None)
    tokenizer = getattr(first, "tokenizer", None)
    if encoder is None or not hasattr(encoder, "config") or tokenizer is None:
        raise NotUnpaddable(f"the model's first module ({type(first).__name__}) has no Hugging Face encoder "
                            "and tokenizer")
    if getattr(encoder.config, "is_decoder", False):
        raise NotUnpaddable(f"{type(encoder).__name__} is a decoder (causal attention)")
    if isinstance(encoder.forward, UnpaddedEncoder):  # wrapped already (the model is shared): one wrapper is enough
        return encoder.forward
    config = encoder.config
    own = config._attn_implementation
    if own != "sdpa":
        raise NotUnpaddable(f"its attention implementation is {own!r}; unpadding serves models with sdpa attention "
                            "(what sentence-transformers loads by default)")
    wrapper = UnpaddedEncoder(encoder, tokenizer, **settings)
    # For as long as the model is wrapped, not for each packed call: forwards may run at once in several threads
    # (a serve replica's concurrent batches), and a per-call switch of this shared config, restored by the call
    # that set it, would end under another call still running. Padded forwards reach sdpa through it; the
    # setting is not saved with the model's config.
    config._attn_implementation = ATTENTION_NAME
    try:
        check_unpadded(wrapper)
    except BaseException:
        config._attn_implementation = own
        raise
    wrapper.packed_passes = wrapper.eager_passes = wrapper.real_tokens = wrapper.padded_tokens = 0
    encoder.forward = wrapper
    return wrapper


def unpad_or_warn(sentence_model: Any, setting: str, model_ref: str, *, logger: logging.Logger | None = None,
                  context: str = "", **settings: Any) -> UnpaddedEncoder | None:
    """:func:`unpad_encoder` for the config ``setting`` that asks for it; for a model it cannot serve, None and a
    warning on ``logger`` (prefixed with ``context``) naming the model and why: that model computes on padding,
    as it would without the setting."""
    try:
        return unpad_encoder(sentence_model, setting=setting, **settings)
    except NotUnpaddable as err:
        (logger or log).warning("%s%s cannot serve %s, which computes on padding: %s", context, setting, model_ref,
                                err)
        return None
