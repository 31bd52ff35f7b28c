"""The per-worker loop runs without Ray (a single-GPU benchmark machine has none)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
from test_train_setup import publish_pairs

from mrlkit import layout
from mrlkit.config import config_to_dict, load_config
from mrlkit.train.worker import train_loop


def tiny_worker_config(tmp_path, tiny_model, *overrides: str):
    """Run ``w`` on the tiny model under ``tmp_path/root``, 32/8-dim MRL, no evaluation, plus ``overrides``."""
    return load_config(None, [
        "name=w", f"storage.root={tmp_path / 'root'}", f"train.base_model={tiny_model}",
        "train.matryoshka_dims=[32,8]", "train.eval_strategy=no", *overrides,
    ])


def test_worker_loop_trains_triplets_with_cached_loss_without_ray(tmp_path, tiny_model, monkeypatch):
    # As on a GPU box without Ray: an `import ray` / `import ray.train` inside the loop fails (None in
    # sys.modules blocks it). Other ray.* modules stay cached: a Ray session started by earlier tests keeps a
    # log thread that imports ray.autoscaler.v2.utils lazily, so that one is loaded before the block.
    if importlib.util.find_spec("ray") is not None:
        importlib.import_module("ray.autoscaler.v2.utils")
    for name in [m for m in sys.modules if m == "ray.train" or m.startswith(("ray.train.", "ray.air"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)

    cfg = tiny_worker_config(tmp_path, tiny_model, "train.loss=cached_mnrl", "train.batch_size=4",
                             "train.mini_batch_size=2", "train.max_steps=2", "train.learning_rate=1e-3")
    n = 8
    publish_pairs(layout.pairs_uri(cfg), {
        "anchor": [f"question {i}" for i in range(n)], "positive": [f"answer {i}" for i in range(n)],
        "negative_1": [f"other answer {i + 1}" for i in range(n)],  # hard negatives make rows triplets
        "source": [f"row {i}" for i in range(n)],  # metadata the loss must never see
    })

    summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / "out")})

    assert summary["step"] == 2 and summary["world_size"] == 1 and summary["resumed_from_step"] == 0
    assert summary["pairs_per_s"] > 0 and summary["train_loss"] > 0
    saved = Path(summary["output_dir"], "checkpoint-2")
    assert (saved / "modules.json").is_file() and (saved / "optimizer.pt").is_file()

    # Resuming from the local checkpoint with a longer horizon continues at step 2.
    longer = tiny_worker_config(tmp_path, tiny_model, "train.loss=cached_mnrl", "train.batch_size=4",
                                "train.mini_batch_size=2", "train.max_steps=3")
    resumed = train_loop({"config": config_to_dict(longer), "output_dir": str(tmp_path / "out"),
                          "resume_from": str(saved)})
    assert resumed["resumed_from_step"] == 2 and resumed["step"] == 3

    # A finished run resumed again trains nothing (the trainer alone would run one extra step).
    # 8 pairs / batch 4 = 2 steps: the first run's checkpoint-2 is already the end
    one_epoch = tiny_worker_config(tmp_path, tiny_model, "train.batch_size=4", "train.epochs=1")
    again = train_loop({"config": config_to_dict(one_epoch), "output_dir": str(tmp_path / "again"),
                        "resume_from": str(saved)})
    assert again["step"] == 2 and again["resumed_from_step"] == 2 and again["train_seconds"] == 0.0
    assert not Path(again["output_dir"], "checkpoint-3").exists()


def test_worker_loop_with_length_bucketing_compiled_blocks_and_no_dropout(tmp_path, tiny_model, caplog):
    """The speed levers together: bucketed batches, each encoder block through torch.compile, dropout 0.
    The checkpoint's config keeps the base model's dropout (only the training modules change)."""
    import json
    import logging

    cfg = tiny_worker_config(tmp_path, tiny_model, "train.batch_size=4", "train.max_steps=3",
                             "train.learning_rate=1e-3", "train.length_bucketing=true", "train.compile=true",
                             "train.dropout=0.0")
    n = 16
    publish_pairs(layout.pairs_uri(cfg), {
        "anchor": [f"question {i}" for i in range(n)],
        "positive": [f"answer {i} " + "words " * (i * 7 % 40) for i in range(n)],
    })
    with caplog.at_level(logging.INFO, logger="mrlkit"):
        summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / "out")})
    assert summary["step"] == 3 and summary["train_loss"] > 0
    assert "compiles 2 transformer blocks" in caplog.text
    assert "sets 7 dropout layers to p=0.0" in caplog.text
    saved = json.loads(Path(summary["output_dir"], "checkpoint-3", "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.1 and saved["attention_probs_dropout_prob"] == 0.1


def test_worker_loop_trains_in_bf16_on_a_cpu(tmp_path, tiny_model, caplog):
    """precision bf16 on a CPU is autocast, as on a GPU: the losses move by bf16's rounding, the
    checkpoint's weights stay fp32."""
    import logging
    import math

    from safetensors import safe_open

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_worker_config(tmp_path / precision, tiny_model, "train.batch_size=4", "train.max_steps=3",
                                 "train.learning_rate=1e-3", f"train.precision={precision}")
        publish_pairs(layout.pairs_uri(cfg), {"anchor": [f"question {i}" for i in range(12)],
                                              "positive": [f"answer {i} " + "words " * i for i in range(12)]})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mrlkit"):
            summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / precision / "out")})
        assert summary["step"] == 3 and math.isfinite(summary["train_loss"]) and summary["train_loss"] > 0
        said = "bf16 autocast (precision bf16)" if precision == "bf16" else "fp32 (precision fp32)"
        assert f"worker 0 computes in {said}" in caplog.text
        losses[precision] = summary["train_loss"]
        with safe_open(str(Path(summary["output_dir"], "checkpoint-3", "model.safetensors")), "pt") as weights:
            assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}
    assert losses["bf16"] != losses["fp32"] and abs(losses["bf16"] / losses["fp32"] - 1) < 0.05


def test_a_nan_loss_reaches_the_log(tmp_path):
    """The trainer's NaN filter would log the running average in place of a NaN loss (and sync on
    the GPU every step to check for one); mrlkit turns it off so a diverging run shows it."""
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.worker import training_arguments

    assert training_arguments(TrainConfig(), str(tmp_path), world_size=1).logging_nan_inf_filter is False


def test_loader_processes_train_the_same_batches(tmp_path, tiny_model, monkeypatch):
    """train.dataloader_workers moves tokenization into loader processes; what is trained must not change.
    The training process computes on the worker's CPUs less one per loader."""
    import torch

    from mrlkit.train.worker import training_arguments

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # undone after the test; the loop only sets a default
    n = 24
    losses = {}
    threads_before = torch.get_num_threads()
    try:
        for loaders in (0, 1):
            cfg = tiny_worker_config(tmp_path, tiny_model, "train.batch_size=4", "train.max_steps=4",
                                     f"train.dataloader_workers={loaders}", "train.cpus_per_worker=2")
            if loaders == 0:
                publish_pairs(layout.pairs_uri(cfg), {
                    "anchor": [f"question {i}" for i in range(n)],
                    "positive": [f"answer {i} " + "words " * (i % 9) for i in range(n)]})
            args = training_arguments(cfg.train, str(tmp_path / "args"), world_size=1)
            assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (loaders, loaders > 0)
            summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / f"loaders{loaders}"),
                                  "cpus_per_worker": 2})
            assert summary["step"] == 4 and summary["torch_threads"] == 2 - loaders
            losses[loaders] = summary["train_loss"]
    finally:
        torch.set_num_threads(threads_before)  # the loop sets this process's threads, as a worker's own
    # the same batches; the training process's thread count (2, then 1) may split a matrix product's sums
    # differently, so the last bits may differ
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[0] > 0


def test_each_worker_resumes_from_its_own_copy_of_the_checkpoint(tmp_path):
    """A second worker's download must not rewrite the files the first is reading (Ray's shared
    ``as_directory`` folder does, when the second takes the lock after the first finished)."""
    import pytest
    from ray.train import Checkpoint

    from mrlkit.train.callbacks import HF_CHECKPOINT_DIR
    from mrlkit.train.worker import download_checkpoint

    source = tmp_path / "stored"
    (source / HF_CHECKPOINT_DIR).mkdir(parents=True)
    (source / HF_CHECKPOINT_DIR / "model.safetensors").write_bytes(b"w" * 4096)
    checkpoint = Checkpoint.from_directory(str(source))

    first = download_checkpoint(checkpoint, tmp_path / "rank0" / "resume-from")
    weights = first / "model.safetensors"
    before = weights.stat()
    second = download_checkpoint(checkpoint, tmp_path / "rank1" / "resume-from")

    assert second != first and (second / "model.safetensors").read_bytes() == b"w" * 4096
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, 4096)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="has no checkpoint/ folder"):
        download_checkpoint(Checkpoint.from_directory(str(empty)), tmp_path / "rank2" / "resume-from")
