"""Stage ``train``: every class of bad input fails in ``__init__``/``setup``, before any worker starts.

No Ray here: ``setup`` must not need it, and ``run`` (which starts Ray) is never reached.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrlkit import layout, s3, storage
from mrlkit.config import load_config
from mrlkit.errors import ConfigError, MrlkitError, StorageError
from mrlkit.testing.s3_server import free_port
from mrlkit.train.launch import TrainStage, crash_hooks_from_env, model_embedding_dim


def publish_pairs(pairs_uri: str, train_columns: dict | None = None) -> None:
    """A minimal pairs folder in the prepare stage's layout."""
    train = train_columns or {"anchor": ["a1", "a2"], "positive": ["p1", "p2"]}
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("train", "test", "corpus"):
            Path(tmp, sub).mkdir()
        pq.write_table(pa.table(train), Path(tmp, "train", "part-00000.parquet"))
        pq.write_table(pa.table({"query_id": ["q1"], "anchor": ["a1"], "positive": ["p1"], "relevant_ids": [["c1"]]}),
                       Path(tmp, "test", "part-00000.parquet"))
        pq.write_table(pa.table({"chunk_id": ["c1"], "text": ["p1"]}), Path(tmp, "corpus", "part-00000.parquet"))
        Path(tmp, "split.json").write_text(json.dumps({"train": 2, "test": 1}))
        storage.publish_dir(tmp, pairs_uri)


def config(root: str, model: str, *overrides: str):
    return load_config(None, ["name=bad", f"storage.root={root}", f"train.base_model={model}",
                              "train.matryoshka_dims=[32,16]", *overrides])


def test_dim_larger_than_the_model_fails_in_setup_naming_both(tmp_path, tiny_model):
    cfg = config(str(tmp_path), tiny_model, "train.matryoshka_dims=[64,32,16]")
    publish_pairs(layout.pairs_uri(cfg))
    stage = TrainStage(cfg)
    with pytest.raises(ConfigError, match=r"train.matryoshka_dims: \[64\] larger than the embedding dimension 32"):
        stage.setup()


@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=0", r"train.batch_size: must be >= 1, got 0"),
    ("train.loss=triplet_magic", r"train.loss: 'triplet_magic' .* choose one of 'mnrl', 'cached_mnrl'"),
    ("train.matryoshka_dims=[16,32]", r"train.matryoshka_dims: must be distinct and in descending order"),
    ("train.metric_for_best_model=accuracy", r"train.metric_for_best_model: 'accuracy' is not a metric"),
    ("train.best_model_dim=8", r"train.best_model_dim: must be one of matryoshka_dims"),
])
def test_impossible_values_are_refused_by_the_config(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config(str(tmp_path), "unused", override)


def test_save_steps_must_fall_on_evaluations(tmp_path):
    with pytest.raises(ConfigError, match="train.save_steps: must be a multiple of eval_steps"):
        config(str(tmp_path), "unused", "train.eval_strategy=steps", "train.eval_steps=4", "train.save_steps=6")


def test_unreachable_storage_fails_in_setup(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MRLKIT_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "1")
    s3.forget_clients()
    stage = TrainStage(config("s3://nowhere-bucket/mrl", tiny_model))
    with pytest.raises(StorageError, match="cannot reach S3 endpoint http://127.0.0.1"):
        stage.setup()
    s3.forget_clients()


def test_missing_pairs_fail_in_setup_saying_what_to_run(tmp_path, tiny_model):
    stage = TrainStage(config(str(tmp_path), tiny_model))
    with pytest.raises(storage.StorageNotFound, match="run the stage that writes it"):
        stage.setup()


def test_pairs_without_a_positive_column_fail_in_setup(tmp_path, tiny_model):
    cfg = config(str(tmp_path), tiny_model)
    publish_pairs(layout.pairs_uri(cfg), {"anchor": ["a"], "text": ["t"]})
    with pytest.raises(MrlkitError, match=r"lack column\(s\) \['positive'\]"):
        TrainStage(cfg).setup()


def test_missing_base_model_fails_in_setup(tmp_path):
    cfg = config(str(tmp_path), str(tmp_path / "no-such-model"))
    publish_pairs(layout.pairs_uri(cfg))
    with pytest.raises(MrlkitError, match="does not exist"):
        TrainStage(cfg).setup()


def test_good_config_passes_setup_without_ray(tmp_path, tiny_model, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("setup() must not start or join Ray: it runs before any worker")

    monkeypatch.setattr(ray, "init", no_ray)  # whether another test left Ray running does not matter
    cfg = config(str(tmp_path), tiny_model)
    publish_pairs(layout.pairs_uri(cfg))
    stage = TrainStage(cfg)
    stage.setup()
    assert stage.existing is None
    assert stage.metric == "eval_heldout_dim32_ndcg@10"


def test_model_width_is_read_from_module_configs(tiny_model, tmp_path):
    assert model_embedding_dim(tiny_model) == 32
    assert model_embedding_dim(str(tmp_path)) is None  # no modules.json: unknown, checked on load


def test_crash_hooks_are_parsed_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("MRLKIT_TRAIN_CRASH_AT_STEP", "6:1@/tmp/marker")
    assert crash_hooks_from_env() == [{"step": 6, "rank": 1, "marker": "/tmp/marker"}]
    monkeypatch.setenv("MRLKIT_TRAIN_CRASH_AT_STEP", "3@/tmp/m1, 7:1@/tmp/m2")
    assert crash_hooks_from_env() == [{"step": 3, "rank": 0, "marker": "/tmp/m1"},
                                      {"step": 7, "rank": 1, "marker": "/tmp/m2"}]
    monkeypatch.setenv("MRLKIT_TRAIN_CRASH_AT_STEP", "six")
    with pytest.raises(ConfigError, match="STEP\\[:RANK\\]@MARKER_FILE"):
        crash_hooks_from_env()
    monkeypatch.setenv("MRLKIT_TRAIN_CRASH_AT_STEP", "3@/tmp/m,5@/tmp/m")
    with pytest.raises(ConfigError, match="marker file /tmp/m twice"):
        crash_hooks_from_env()
