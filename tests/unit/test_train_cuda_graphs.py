"""train.cuda_graphs' wrapper: padding, shape keys, pass slots and fallbacks, checked on a CPU.

The capture itself needs CUDA (``benchmarks/cuda_graphs_check.py`` compares graphed and eager
training steps on a GPU). Here the capture is a stand-in that runs the module eagerly behind a
custom autograd function, as ``make_graphed_callables``' output is, so everything around it is real:
the padding must not change an embedding or a gradient, and a pass whose backward is pending must
never share its pool with the next one.
"""

from __future__ import annotations

import gc

import pytest
import torch

from mrlkit.train.cuda_graphs import GraphedEncoder, graph_encoder_forward, padded_length

TEXTS = ["a short question", "a much longer context about revenue, margins and the liquidity of the company"]


class _Replay(torch.autograd.Function):
    """Identity with a Python autograd node, like a graphed callable's output."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Capture:
    """Records each capture's shapes and pool; runs the module eagerly."""

    def __init__(self):
        self.shapes, self.pools = [], []

    def __call__(self, module, sample_args, pool):
        self.shapes.append(tuple(tuple(a.shape) for a in sample_args))
        self.pools.append(pool)
        return lambda *args: _Replay.apply(module(*args))


@pytest.fixture()
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.dropout import set_dropout

    torch.manual_seed(0)
    m = SentenceTransformer(tiny_model, device="cpu")
    m.train()
    set_dropout(m, 0.0)  # the same function on every pass, so eager and padded passes compare
    return m


def _graphed(model, **kwargs):
    capture = _Capture()
    wrapper = graph_encoder_forward(model, capture=capture, on_device=lambda t: True, **kwargs)
    return wrapper, capture


def _embed(model, texts):
    return model(dict(model.tokenize(texts)))["sentence_embedding"]


@pytest.mark.parametrize(("length", "multiple", "cap", "want"),
                         [(1, 32, 512, 32), (32, 32, 512, 32), (33, 32, 512, 64), (500, 32, 512, 512),
                          (512, 32, 512, 512), (600, 32, 512, 600), (33, 32, None, 64)])
def test_padded_length_rounds_up_and_caps_at_the_models_positions(length, multiple, cap, want):
    assert padded_length(length, multiple, cap) == want


def test_padding_changes_no_embedding_and_no_gradient(model):
    eager = _embed(model, TEXTS)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)

    wrapper, capture = _graphed(model, pad_multiple=32)
    graphed = _embed(model, TEXTS)
    graphed.sum().backward()
    graphed_grads = [p.grad for p in model.parameters() if p.grad is not None]

    assert capture.shapes[0][0][1] == 32  # the batch's own width (<32 tokens) rounded up
    assert wrapper.replays == 1 and wrapper.eager_passes == 0
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-6)
    assert len(graphed_grads) == len(eager_grads)
    for got, want in zip(graphed_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_smaller_last_batch_pads_its_rows_and_reuses_the_shape(model):
    _, capture = _graphed(model)
    full = [f"text {i} " + "word " * i for i in range(4)]
    _embed(model, full).sum().backward()
    short_eager = _embed(model.eval(), full[:3]).detach()  # eval mode: the wrapper steps aside
    model.train()
    short = _embed(model, full[:3])
    short.sum().backward()
    assert len(capture.shapes) == 1, capture.shapes  # 3 rows ran in the 4-row graph
    assert short.shape[0] == 3
    assert torch.isfinite(short).all()
    torch.testing.assert_close(short, short_eager, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_new_lengths_capture_once_each_and_replay_after(model):
    wrapper, capture = _graphed(model, pad_multiple=8)
    for texts in (["a b"], ["a b c d e f g h i j k"], ["b a"], ["k j i h g f e d c b a"]):
        _embed(model, texts).sum().backward()
    assert [shape[0] for shape in capture.shapes] == [(1, 8), (1, 16)]
    assert wrapper.replays == 4 and len(wrapper.graphs) == 2


def test_two_passes_before_backward_take_two_slots_and_a_third_runs_eagerly(model):
    wrapper, capture = _graphed(model, passes_per_step=2)
    first, second, third = (_embed(model, TEXTS) for _ in range(3))
    assert wrapper.replays == 2 and wrapper.eager_passes == 1
    # the same shape captured once per pass slot (on CUDA each slot has its own memory pool)
    assert [key[0] for key in wrapper.graphs] == [0, 1] and len(capture.shapes) == 2
    (first.sum() + second.sum() + third.sum()).backward()
    _embed(model, TEXTS).sum().backward()  # after the backward, the first slot is free again
    assert wrapper.replays == 3 and len(wrapper.graphs) == 2


def test_a_pass_dropped_without_backward_frees_its_slot(model):
    wrapper, _ = _graphed(model, passes_per_step=1)
    dropped = _embed(model, TEXTS)
    del dropped
    gc.collect()
    _embed(model, TEXTS).sum().backward()
    assert wrapper.replays == 2 and wrapper.eager_passes == 0


def test_past_max_graphs_new_shapes_run_eagerly(model):
    wrapper, capture = _graphed(model, pad_multiple=8, max_graphs=1)
    _embed(model, ["a b"]).sum().backward()
    _embed(model, ["a b c d e f g h i j k"]).sum().backward()
    assert len(capture.shapes) == 1 and wrapper.eager_passes == 1


def test_eval_no_grad_and_off_device_forwards_run_eagerly(model, tiny_model):
    wrapper, capture = _graphed(model)
    with torch.no_grad():
        _embed(model, TEXTS)
    model.eval()
    _embed(model, TEXTS)
    model.train()
    assert not capture.shapes and wrapper.replays == 0

    from sentence_transformers import SentenceTransformer

    cpu_model = SentenceTransformer(tiny_model, device="cpu")
    cpu_model.train()
    cpu_wrapper = graph_encoder_forward(cpu_model, capture=_Capture())  # default: CUDA tensors only
    _embed(cpu_model, TEXTS).sum().backward()
    assert cpu_wrapper.replays == 0


def test_forwards_with_other_inputs_run_eagerly(model):
    wrapper, capture = _graphed(model)
    features = model.tokenize(TEXTS)
    ids, mask = features["input_ids"], features["attention_mask"]
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    encoder = model[0].auto_model
    eager = encoder.forward(input_ids=ids, attention_mask=mask, position_ids=positions, return_dict=True)
    assert not capture.shapes and wrapper.replays == 0
    assert eager.last_hidden_state.shape[:2] == ids.shape
    encoder.forward(input_ids=ids, attention_mask=mask, return_dict=True, output_hidden_states=None)
    assert len(capture.shapes) == 1  # arguments left at their defaults carry no data: still graphed


def test_bad_settings_and_models_are_refused(model):
    with pytest.raises(ValueError, match="pad_multiple must be > 0, got 0"):
        GraphedEncoder(model[0].auto_model, pad_multiple=0)
    with pytest.raises(ValueError, match="has no Hugging Face encoder"):
        graph_encoder_forward([torch.nn.Identity()])


def test_the_worker_wraps_the_encoder_when_the_config_says_so(model):
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.model_settings import prepare_model

    assert prepare_model(model, TrainConfig(unpad=False)) is None
    wrapper = prepare_model(model, TrainConfig(cuda_graphs=True, use_gpu=True))
    assert isinstance(wrapper, GraphedEncoder) and model[0].auto_model.forward is wrapper
    _embed(model, TEXTS).sum().backward()  # CPU tensors: the wrapper runs the encoder eagerly
    assert wrapper.replays == 0
