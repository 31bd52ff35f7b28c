"""Stage ``train`` end to end on a real local Ray (2 CPUs) and a real local S3 server (rclone).

Tiny random-init model (32 dims) and ~100 made-up pairs, so each run takes seconds of
compute; what is checked is the behaviour: convergence, checkpoints in S3, resume after
a worker dies, resume when a stopped run is submitted again, a loadable export.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrlkit import layout, storage
from mrlkit.config import load_config
from mrlkit.errors import ConfigError
from mrlkit.stage import run_stage
from mrlkit.train.launch import CRASH_ENV, TrainError, TrainStage

WORDS = ("river mountain copper violin harbor lantern orchard falcon glacier meadow canyon velvet ember quartz "
         "willow thunder saffron marble compass beacon prairie crimson tundra cobalt maple lagoon granite jasmine "
         "summit anchor breeze cedar delta fjord garnet hollow ivory juniper kelp lotus mango nectar onyx").split()


def write_pairs(pairs_uri: str, n_train: int = 128, n_test: int = 24, negatives: bool = False, seed: int = 0) -> None:
    """Publish a tiny pairs folder in the exact layout of the prepare stage (train/ test/ corpus/)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_test):
        a, b, c = rng.sample(WORDS, 3)
        rows.append((f"q{i}", f"which report covers {a} and {b}?", f"the {a} {b} report: {c} figures for {a} {b}."))
    train, test = rows[:n_train], rows[n_train:]
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("train", "test", "corpus"):
            Path(tmp, sub).mkdir()
        cols = {"anchor": [r[1] for r in train], "positive": [r[2] for r in train],
                "source": [f"row {i}" for i in range(n_train)]}  # metadata: must not reach the loss
        if negatives:
            cols["negative_1"] = [train[(i + 1) % n_train][2] for i in range(n_train)]
        pq.write_table(pa.table(cols), Path(tmp, "train", "part-00000.parquet"))
        pq.write_table(pa.table({"query_id": [r[0] for r in test], "anchor": [r[1] for r in test],
                                 "positive": [r[2] for r in test], "relevant_ids": [[f"c{r[0]}"] for r in test]}),
                       Path(tmp, "test", "part-00000.parquet"))
        pq.write_table(pa.table({"chunk_id": [f"c{r[0]}" for r in rows], "text": [r[2] for r in rows]}),
                       Path(tmp, "corpus", "part-00000.parquet"))
        Path(tmp, "split.json").write_text(json.dumps({"train": n_train, "test": n_test}))
        Path(tmp, "manifest.json").write_text(json.dumps({"rows": n_train + n_test}))
        storage.publish_dir(tmp, pairs_uri)


def tiny_config(root: str, model: str, run: str = "tiny", **train: object):
    values = {"matryoshka_dims": "[32,16,8]", "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.0,
              "eval_strategy": "steps", "eval_steps": 4, "max_steps": 12, "num_workers": 2, **train}
    overrides = ["name=tiny", f"run={run}", f"storage.root={root}", f"train.base_model={model}"]
    return load_config(None, overrides + [f"train.{k}={v}" for k, v in values.items()])


def checkpoint_dirs(run_uri: str) -> list[str]:
    files = storage.list_files(run_uri)
    return sorted({rel.split("/")[0] for rel in files if rel.startswith("checkpoint_") and "/" in rel})


def trainer_state(checkpoint_uri: str) -> dict:
    return storage.read_json(storage.join(checkpoint_uri, "checkpoint", "trainer_state.json"))


def base_ndcg(cfg, model_dir: str) -> float:
    from sentence_transformers import SentenceTransformer

    from mrlkit.evaluate.evaluator import MatryoshkaIREvaluator, load_ir_data

    queries, corpus, relevant = load_ir_data(layout.pairs_uri(cfg))
    evaluator = MatryoshkaIREvaluator(queries, corpus, relevant, dims=[32, 16, 8], name="base")
    return evaluator(SentenceTransformer(model_dir, device="cpu"))["base_dim32_ndcg@10"]


@pytest.mark.slow
def test_two_workers_converge_checkpoint_to_s3_export_and_rerun_is_noop(ray_local, s3_root, tiny_model):
    cfg = tiny_config(s3_root, tiny_model, max_steps=16, keep_checkpoints=2)
    write_pairs(layout.pairs_uri(cfg))

    summary = run_stage(TrainStage, cfg)

    assert summary["global_step"] == 16 and summary["resumed_from_step"] == 0
    assert summary["pairs_per_s"] > 0
    # Checkpoints went to S3 under runs/<run>/, keep-2 policy applied.
    kept = checkpoint_dirs(layout.run_uri(cfg))
    assert 1 <= len(kept) <= 2, kept
    newest = max(kept, key=lambda d: trainer_state(storage.join(layout.run_uri(cfg), d))["global_step"])
    state = trainer_state(storage.join(layout.run_uri(cfg), newest))
    assert state["global_step"] == 16
    # Converges: the training loss falls and held-out NDCG@10 rises above the untrained model's.
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] * 0.7, losses
    ndcgs = [e["eval_heldout_dim32_ndcg@10"] for e in state["log_history"] if "eval_heldout_dim32_ndcg@10" in e]
    assert len(ndcgs) == 4  # evaluated at steps 4, 8, 12, 16, every dim from one encoding
    last_eval = [e for e in state["log_history"] if "eval_heldout_dim32_ndcg@10" in e][-1]
    assert all(f"eval_heldout_dim{d}_ndcg@10" in last_eval for d in (32, 16, 8))
    before = base_ndcg(cfg, tiny_model)
    assert max(ndcgs) > before + 0.05, (before, ndcgs)

    # The export loads with plain sentence-transformers at a truncated dim; mrlkit.json lists the dims.
    from sentence_transformers import SentenceTransformer

    from mrlkit.models import read_metadata, resolve_model

    meta = read_metadata(layout.model_uri(cfg))
    assert meta.matryoshka_dims == [32, 16, 8]
    assert meta.training["run"] == "tiny" and meta.metrics["eval_heldout_dim32_ndcg@10"] == pytest.approx(max(ndcgs))
    local = resolve_model(layout.model_uri(cfg))
    assert not any(Path(local).glob("optimizer.pt"))
    emb = SentenceTransformer(local, truncate_dim=16, device="cpu").encode(["copper violin"], normalize_embeddings=True)
    assert emb.shape == (1, 16)

    # Submitting the finished run again does no training and reports the existing result.
    again = run_stage(TrainStage, cfg)
    assert again["already_finished"] is True and again["global_step"] == 16
    assert checkpoint_dirs(layout.run_uri(cfg)) == kept


@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_continues_from_last_checkpoint(
        ray_local, s3_root, tiny_model, tmp_path, monkeypatch):
    cfg = tiny_config(s3_root, tiny_model, run="crash", max_steps=8, max_failures=2)
    write_pairs(layout.pairs_uri(cfg))
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"6:1@{marker}")  # worker rank 1 exits at step 6, once

    summary = run_stage(TrainStage, cfg)

    assert marker.read_text().startswith("crashed at step 6")
    # The replacement group restored step 4's checkpoint: resumed, not restarted from 0.
    assert summary["resumed_from_step"] == 4
    assert summary["global_step"] == 8
    assert storage.is_published(layout.model_uri(cfg))


@pytest.mark.slow
def test_stopped_run_resumes_when_submitted_again(ray_local, tmp_path, tiny_model, monkeypatch):
    root = str(tmp_path / "root")
    cfg = tiny_config(root, tiny_model, run="stopped", num_workers=1, max_steps=8, max_failures=0)
    write_pairs(layout.pairs_uri(cfg))
    monkeypatch.setenv(CRASH_ENV, f"6@{tmp_path / 'crashed'}")

    with pytest.raises(TrainError, match="run the same command again"):
        run_stage(TrainStage, cfg)
    assert not storage.is_published(layout.model_uri(cfg))
    assert checkpoint_dirs(layout.run_uri(cfg))  # step 4's checkpoint survived the failure

    summary = run_stage(TrainStage, cfg)
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 8
    assert storage.is_published(layout.model_uri(cfg))


def test_worker_group_larger_than_the_local_ray_fails_before_workers_start(ray_local, tmp_path, tiny_model):
    cfg = tiny_config(str(tmp_path / "root"), tiny_model, run="toobig", num_workers=3)
    write_pairs(layout.pairs_uri(cfg), n_train=16, n_test=4)
    with pytest.raises(ConfigError, match=r"train.num_workers=3 .* needs 3 CPU \(the cluster has 2\)"):
        run_stage(TrainStage, cfg)
    assert not storage.list_files(layout.run_uri(cfg))  # no Ray Train run was started


def wait_until_cpus_free(ray, cpus: float, timeout: float = 60) -> None:
    """Ray frees a finished run's worker group asynchronously; the next run's CPU share is read from what is free."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < cpus:
        if time.monotonic() > deadline:
            pytest.fail(f"the local Ray still has only {ray.available_resources().get('CPU', 0.0)} of {cpus} CPUs "
                        f"free {timeout:.0f} s after the previous test")
        time.sleep(0.2)


def test_relative_storage_root_means_the_drivers_folder_not_the_workers(ray_local, tmp_path, tiny_model, monkeypatch):
    # Ray Train runs workers in a folder of their own; `./data` must still be the driver's ./data.
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("./data", tiny_model, run="relative", num_workers=1, max_steps=2, eval_steps=2)
    write_pairs(layout.pairs_uri(cfg), n_train=16, n_test=4)
    wait_until_cpus_free(ray_local, 2)  # CI once started this while the last run's group still held a CPU
    summary = run_stage(TrainStage, cfg)
    assert summary["global_step"] == 2
    assert summary["cpus_per_worker"] == 2  # unset: the one worker takes the local Ray's 2 free CPUs
    assert storage.is_published(str(tmp_path / "data" / "models" / "relative"))


def test_on_its_own_ray_training_starts_no_placement_group_cleaner(ray_local, tmp_path, tiny_model, monkeypatch):
    """Ray Train's cleaner asks a state API a Ray of our own does not have, every second, and once removed a
    live run's workers (mrlkit.train.local_ray): the stage drops it there and keeps it on a cluster."""
    import ray.train
    from ray._private import state
    from ray.train.torch import TorchTrainer

    from mrlkit.train.local_ray import LocalTorchTrainer

    def cleaners() -> int:
        return sum(a["ActorClassName"] == "PlacementGroupCleaner" for a in state.actors().values())

    def nothing(_config):
        pass

    for trainer_cls, started in ((LocalTorchTrainer, 0), (TorchTrainer, 1)):  # Ray's own trainer: the control
        before = cleaners()
        trainer_cls(nothing, scaling_config=ray.train.ScalingConfig(num_workers=1),
                    run_config=ray.train.RunConfig(name=trainer_cls.__name__, storage_path=str(tmp_path))).fit()
        assert cleaners() - before == started

    cfg = tiny_config(str(tmp_path / "root"), tiny_model, run="which", num_workers=1)
    assert type(TrainStage(cfg).trainer()) is LocalTorchTrainer
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # joining a cluster: there the cleaner has work to do
    assert type(TrainStage(cfg).trainer()) is TorchTrainer


@pytest.mark.slow
def test_two_workers_cached_loss_gathered_and_early_stopping_stop_together(ray_local, tmp_path, tiny_model):
    # A learning rate of ~0 keeps NDCG@10 flat, so patience 1 must stop both workers at the second
    # evaluation (step 8 of 40); a rank that stopped alone would hang the other in its next collective.
    cfg = tiny_config(str(tmp_path / "root"), tiny_model, run="early", loss="cached_mnrl", mini_batch_size=4,
                      gather_across_devices="true", learning_rate=1e-12, max_steps=40,
                      early_stopping_patience=1)
    write_pairs(layout.pairs_uri(cfg))
    summary = run_stage(TrainStage, cfg)
    assert summary["global_step"] == 8, summary
    assert storage.is_published(layout.model_uri(cfg))
