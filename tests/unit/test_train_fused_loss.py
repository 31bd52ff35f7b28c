"""FusedMatryoshkaLoss computes sentence-transformers' MatryoshkaLoss(MNRL): same values, same gradients."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch

from mrlkit.config import load_config
from mrlkit.errors import ConfigError
from mrlkit.train.fused_loss import FusedMatryoshkaLoss

ANCHORS = [f"question {i} about revenue" + " and margin" * i for i in range(8)]
POSITIVES = [f"context {i} on growth" + " with liquidity" * (3 * i) for i in range(8)]
NEGATIVES = [f"unrelated {i} text on leases" for i in range(8)]


@pytest.fixture(scope="module")
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(tiny_model, device="cpu")
    m.eval()  # no dropout: two forward passes of one batch give one embedding
    return m


def _mnrl(model, **kwargs):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, **kwargs)


def _value_and_grads(model, loss, columns):
    """The loss on freshly tokenized columns (the model writes its outputs into them) and every gradient."""
    model.zero_grad(set_to_none=True)
    value = loss([model.tokenize(c) for c in columns], None)
    value.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return value.detach(), grads


def _assert_same(reference, fused):
    (ref_value, ref_grads), (value, grads) = reference, fused
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in ref_grads)
    assert scale > 0  # the comparison below must compare something
    for ref, got in zip(ref_grads, grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("merge", [False, True], ids=["separate-forwards", "merged-forward"])
@pytest.mark.parametrize("columns,weights", [
    ((ANCHORS, POSITIVES), None),
    ((ANCHORS, POSITIVES, NEGATIVES), (1.0, 2.0, 0.5, 1.0)),  # triplets: negatives are candidates too
], ids=["pairs", "triplets-weighted"])
def test_same_loss_and_gradients_as_sentence_transformers(model, columns, weights, merge):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    dims = [32, 24, 16, 8]
    reference = _value_and_grads(model, MatryoshkaLoss(model, _mnrl(model), dims, weights), columns)
    fused = _value_and_grads(model, FusedMatryoshkaLoss(model, _mnrl(model), dims, weights, merge_columns=merge),
                             columns)
    _assert_same(reference, fused)


def test_dims_in_any_order_pair_with_their_weights(model):
    ordered = FusedMatryoshkaLoss(model, _mnrl(model), [32, 16, 8], [1.0, 2.0, 3.0])
    shuffled = FusedMatryoshkaLoss(model, _mnrl(model), [8, 32, 16], [3.0, 1.0, 2.0])
    assert shuffled.matryoshka_dims == (32, 16, 8) and shuffled.matryoshka_weights == (1.0, 2.0, 3.0)
    _assert_same(_value_and_grads(model, ordered, (ANCHORS, POSITIVES)),
                 _value_and_grads(model, shuffled, (ANCHORS, POSITIVES)))


def test_loss_is_computed_in_float32_under_bf16_autocast(model):
    """bf16 logits at scale 20 would blur the score differences the loss is made of."""
    from sentence_transformers.sentence_transformer.losses.matryoshka import shrink

    inner = _mnrl(model)
    loss = FusedMatryoshkaLoss(model, inner, [32, 8])
    with torch.no_grad():
        embeddings = [model(model.tokenize(c))["sentence_embedding"].bfloat16() for c in (ANCHORS, POSITIVES)]
        # the library's per-dim maths in float32 on the same bf16-rounded embeddings, no autocast
        exact = sum(inner.compute_loss_from_embeddings([shrink(e.float(), d) for e in embeddings], None)
                    for d in (32, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as training on a GPU runs the loss
            mixed = loss.loss_from_embeddings(embeddings)
    assert mixed.dtype == torch.float32
    # a bf16 similarity product would be ~1e-2 off
    torch.testing.assert_close(mixed, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inner,expected", [
    ("cached", r"fuses MultipleNegativesRankingLoss only, got CachedMultipleNegativesRankingLoss"),
    ("directions", r"directions=\('query_to_doc', 'doc_to_query'\)\) is not supported"),
    ("dot", r"similarity_fct='dot_score'\) is not supported"),
])
def test_inner_losses_without_a_fused_form_are_refused(model, inner, expected):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from sentence_transformers.util import dot_score

    inner_loss = {"cached": lambda: CachedMultipleNegativesRankingLoss(model),
                  "directions": lambda: _mnrl(model, directions=("query_to_doc", "doc_to_query")),
                  "dot": lambda: _mnrl(model, similarity_fct=dot_score)}[inner]()
    with pytest.raises(ValueError, match=expected):
        FusedMatryoshkaLoss(model, inner_loss, [32, 16])


def test_bad_dims_and_weights_are_refused(model):
    with pytest.raises(ValueError, match="larger than the model's embedding dimension 32"):
        FusedMatryoshkaLoss(model, _mnrl(model), [64, 32])
    with pytest.raises(ValueError, match=r"needs one weight per dimension \(2\), got 1"):
        FusedMatryoshkaLoss(model, _mnrl(model), [32, 16], [1.0])
    with pytest.raises(ValueError, match="needs anchor and positive columns, got 1"):
        FusedMatryoshkaLoss(model, _mnrl(model), [32]).loss_from_embeddings([torch.ones(2, 32)])


def test_merge_columns_needs_the_fused_mnrl_loss():
    with pytest.raises(ConfigError, match="train.merge_columns: needs loss 'mnrl' with fused_loss true.*got loss "
                                          "'cached_mnrl'"):
        load_config(None, ["name=x", "train.merge_columns=true", "train.loss=cached_mnrl"])
    with pytest.raises(ConfigError, match="fused_loss false"):
        load_config(None, ["name=x", "train.merge_columns=true", "train.fused_loss=false"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, model_dir: str, results: str) -> None:
    """One gloo worker: each rank scores its own half of the batch against both halves' candidates."""
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = SentenceTransformer(model_dir, device="cpu")
        model.eval()
        half = slice(rank * 4, rank * 4 + 4)
        columns = (ANCHORS[half], POSITIVES[half])
        dims = [32, 16, 8]
        reference = _value_and_grads(model, MatryoshkaLoss(model, _mnrl(model, gather_across_devices=True), dims),
                                     columns)
        fused = _value_and_grads(model, FusedMatryoshkaLoss(model, _mnrl(model, gather_across_devices=True), dims),
                                 columns)
        _assert_same(reference, fused)
        Path(results, f"rank{rank}").write_text(repr(float(fused[0])))
    finally:
        dist.destroy_process_group()


def test_same_loss_across_two_gloo_workers_gathering_candidates(tiny_model, model, tmp_path):
    import torch.multiprocessing as mp

    # Results come back in files, not through a multiprocessing.Manager: a Manager is forked from this process,
    # which may hold the test session's Ray driver (its threads and sockets); spawned workers start clean.
    mp.spawn(_gather_worker, args=(2, _free_port(), tiny_model, str(tmp_path)), nprocs=2, join=True)
    values = {rank: float(Path(tmp_path, f"rank{rank}").read_text()) for rank in (0, 1)}
    # each worker scored its 4 anchors against all 8 candidates: together, the one-process loss on 8 pairs
    with torch.no_grad():
        whole = FusedMatryoshkaLoss(model, _mnrl(model), [32, 16, 8])([model.tokenize(c) for c in (ANCHORS, POSITIVES)])
    assert (values[0] + values[1]) / 2 == pytest.approx(float(whole), rel=1e-5)


def test_build_loss_picks_the_fused_loss_by_default(model):
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.loss import build_loss

    fused = build_loss(copy.deepcopy(model), TrainConfig(matryoshka_dims=(32, 16), merge_columns=True),
                       distributed=False)
    assert isinstance(fused, FusedMatryoshkaLoss) and fused.merge_columns
    plain = build_loss(model, TrainConfig(matryoshka_dims=(32, 16), fused_loss=False), distributed=False)
    assert type(plain).__name__ == "MatryoshkaLoss"


def test_the_worker_loop_trains_the_same_with_the_fused_and_the_library_loss(tmp_path, tiny_model):
    """Through the real trainer (dropout on, same seed): the same per-step losses, so the same model."""
    from test_train_setup import publish_pairs
    from test_train_worker import tiny_worker_config

    from mrlkit import layout
    from mrlkit.config import config_to_dict
    from mrlkit.train.worker import train_loop

    losses = {}
    for fused in ("true", "false"):
        cfg = tiny_worker_config(tmp_path / fused, tiny_model, f"train.fused_loss={fused}", "train.batch_size=4",
                                 "train.max_steps=3", "train.learning_rate=1e-3")
        publish_pairs(layout.pairs_uri(cfg), {"anchor": ANCHORS, "positive": POSITIVES})
        summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / fused / "out")})
        assert summary["step"] == 3
        losses[fused] = summary["train_loss"]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
