"""The MRL loss, the pieces of the worker loop, and the worker loop itself without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrlkit.config_schema import TrainConfig
from mrlkit.errors import ConfigError
from mrlkit.train import worker
from mrlkit.train.callbacks import with_backoff
from mrlkit.train.data import PairsError, text_columns
from mrlkit.train.export import is_model_file
from mrlkit.train.loss import build_loss, check_dims
from mrlkit.train.worker import best_metric_key, precision_args, schedule_args


@pytest.fixture(scope="module")
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


def test_default_loss_is_matryoshka_over_mnrl_with_configured_dims_and_weights(model):
    loss = build_loss(model, TrainConfig(matryoshka_dims=(32, 16, 8), matryoshka_weights=(1.0, 0.5, 0.25)),
                      distributed=False)
    assert type(loss).__name__ == "FusedMatryoshkaLoss"  # MatryoshkaLoss's function, all dims in one pass
    assert list(loss.matryoshka_dims) == [32, 16, 8] and list(loss.matryoshka_weights) == [1.0, 0.5, 0.25]
    assert type(loss.loss).__name__ == "MultipleNegativesRankingLoss"
    assert loss.loss.gather_across_devices is False  # one process: nothing to gather


def test_cached_loss_and_gathering_across_workers(model):
    loss = build_loss(model, TrainConfig(matryoshka_dims=(32, 8), loss="cached_mnrl", batch_size=64,
                                         mini_batch_size=8), distributed=True)
    assert type(loss.loss).__name__ == "CachedMultipleNegativesRankingLoss"
    assert loss.loss.mini_batch_size == 8
    assert loss.loss.gather_across_devices is True  # N workers see N x batch in-batch negatives


def test_dims_beyond_the_embedding_are_refused(model):
    with pytest.raises(ConfigError, match=r"\[64\] larger than the embedding dimension 32"):
        build_loss(model, TrainConfig(matryoshka_dims=(64, 32)), distributed=False)
    check_dims((32, 16), 32, "m")  # equal to the width is fine


def test_loss_falls_on_a_batch_of_pairs(model):
    """One optimiser step on a fixed batch lowers the MRL loss: the loss is wired to the model's weights."""
    import copy

    import torch

    m = copy.deepcopy(model)
    loss = build_loss(m, TrainConfig(matryoshka_dims=(32, 16)), distributed=False)
    anchors = [f"question about topic {i}" for i in range(8)]
    positives = [f"topic {i} answer text" for i in range(8)]
    features = [m.tokenize(anchors), m.tokenize(positives)]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    values = []
    for _ in range(5):
        opt.zero_grad()
        value = loss(features, torch.zeros(8))
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < values[0]


def test_text_columns_keep_loss_order_and_drop_metadata():
    names = ["source", "negative_2", "positive", "anchor", "negative_1", "doc_id"]
    assert text_columns(names) == ["anchor", "positive", "negative_1", "negative_2"]
    with pytest.raises(PairsError, match=r"lack column\(s\) \['anchor'\]"):
        text_columns(["query", "positive"])


def test_transient_errors_are_retried_then_succeed():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation")
        return "uploaded"

    assert with_backoff(flaky, "checkpoint upload", attempts=5, sleep=sleeps.append) == "uploaded"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9


def test_persistent_errors_surface_after_the_last_attempt():
    def broken():
        raise OSError("AWS Error ACCESS_DENIED")

    with pytest.raises(OSError, match="ACCESS_DENIED"):
        with_backoff(broken, "checkpoint upload", attempts=3, sleep=lambda s: None)


def test_cpu_training_without_bf16_hardware_uses_fp32_and_plain_adamw(monkeypatch):
    monkeypatch.setattr(worker, "cpu_computes_bf16", lambda: False)
    args = precision_args(TrainConfig())
    assert args == {"bf16": False, "fp16": False, "tf32": None, "optim": "adamw_torch", "use_cpu": True}


def test_cpu_with_bf16_hardware_trains_in_bf16_by_default_and_fp32_when_asked(monkeypatch):
    monkeypatch.setattr(worker, "cpu_computes_bf16", lambda: True)
    assert precision_args(TrainConfig()) == {"bf16": True, "fp16": False, "tf32": None, "optim": "adamw_torch",
                                             "use_cpu": True}
    assert precision_args(TrainConfig(precision="fp32"))["bf16"] is False


def test_bf16_asked_of_a_cpu_without_it_is_honoured_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(worker, "cpu_computes_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="mrlkit.train"):
        assert precision_args(TrainConfig(precision="bf16"))["bf16"] is True
    assert "emulated, likely slower than fp32" in caplog.text


def test_bf16_probe_agrees_with_the_cpus_flags():
    answer = worker.cpu_computes_bf16()
    assert isinstance(answer, bool)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the kernel's own list of what the CPU has
        assert answer == bool(set(cpuinfo.read_text().split()) & {"avx512_bf16", "amx_tile"})


def test_checkpoints_fall_on_evaluations():
    assert schedule_args(TrainConfig(eval_strategy="steps", eval_steps=5)) == {
        "eval_strategy": "steps", "eval_steps": 5, "save_strategy": "steps", "save_steps": 5}
    assert schedule_args(TrainConfig())["save_strategy"] == "epoch"
    assert best_metric_key(TrainConfig(matryoshka_dims=(64, 32), best_model_dim=32)) == "eval_heldout_dim32_ndcg@10"
    assert best_metric_key(TrainConfig(metric_for_best_model="loss")) == "eval_loss"
    assert best_metric_key(TrainConfig(eval_strategy="no")) is None


def test_export_keeps_model_files_only():
    assert is_model_file("model.safetensors") and is_model_file("1_Pooling/config.json")
    assert not any(is_model_file(f) for f in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth",
                                              "trainer_state.json", "training_args.bin", "eval/results.csv"))
