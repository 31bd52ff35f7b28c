"""The config loader: every pipeline file loads, and each failure class names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrlkit.config import (
    apply_override,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    with_absolute_paths,
)
from mrlkit.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "ray_jobs" / "configs").glob("*.yaml"))


def test_there_are_pipeline_configs():
    assert CONFIGS, "ray_jobs/configs/ holds no pipeline files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_pipeline_file_loads(path):
    cfg = load_config(path)
    assert cfg.name and cfg.run
    assert cfg.eval_dims, "every pipeline evaluates at least one dimension"


def test_defaults_are_the_seed_recipe():
    cfg = config_from_dict({"name": "x"})
    t = cfg.train
    assert (t.epochs, t.batch_size, t.learning_rate, t.scheduler, t.warmup_ratio) == (4.0, 32, 2e-5, "cosine", 0.1)
    assert t.matryoshka_dims == (384, 256, 128, 64, 32)
    assert t.loss == "mnrl"
    assert cfg.run == "x", "run defaults to the pipeline name"


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(None, ["name=demo", "train.matryoshka_dims=[256, 64]", "train.use_gpu=true",
                             "train.precision=bf16", "corpus.columns.question=q", "train.learning_rate=1e-4"])
    assert cfg.train.matryoshka_dims == (256, 64)
    assert cfg.train.use_gpu is True and cfg.train.learning_rate == 1e-4
    assert cfg.corpus.columns.question == "q"


def test_config_is_frozen_and_hash_is_stable():
    a = config_from_dict({"name": "x", "train": {"epochs": 1}})
    b = config_from_dict({"name": "x", "train": {"epochs": 1.0}})
    with pytest.raises(AttributeError):
        a.train.epochs = 2  # type: ignore[misc]
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(config_from_dict({"name": "x"}))
    assert config_to_dict(a)["train"]["matryoshka_dims"] == [384, 256, 128, 64, 32]


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({"name": "x", "trian": {}}, "trian", "Did you mean 'train'"),
        ({"name": "x", "train": {"batchsize": 8}}, "train.batchsize", "Did you mean 'batch_size'"),
        ({"name": "x", "corpus": {"columns": {"txt": "a"}}}, "corpus.columns.txt", "Allowed keys"),
    ],
)
def test_unknown_key_names_the_key_and_what_is_allowed(data, key, says):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value).startswith(f"{key}: unknown key")
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({"name": "x", "train": {"batch_size": "32"}}, "train.batch_size", "expected an integer"),
        ({"name": "x", "train": {"batch_size": 3.5}}, "train.batch_size", "expected an integer"),
        ({"name": "x", "train": {"use_gpu": "yes"}}, "train.use_gpu", "expected true or false"),
        ({"name": "x", "train": {"epochs": True}}, "train.epochs", "expected a number"),
        ({"name": "x", "train": {"matryoshka_dims": 64}}, "train.matryoshka_dims", "expected a list"),
        ({"name": "x", "train": {"matryoshka_dims": [64, "a"]}}, "train.matryoshka_dims[1]", "expected an integer"),
        ({"name": "x", "train": {"loss": "triplet"}}, "train.loss", "choose one of 'mnrl', 'cached_mnrl'"),
        ({"name": "x", "storage": "s3://b/p"}, "storage", "expected a mapping"),
        ({"name": 5}, "name", "expected a string"),
    ],
)
def test_wrong_type_names_the_key(data, key, says):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value).startswith(f"{key}: ")
    assert says in str(err.value)


def test_missing_required_names_the_key():
    with pytest.raises(ConfigError, match=r"^name: required, but missing"):
        config_from_dict({"train": {}})


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://", "no valid bucket"),
        ("s3://Bad_Bucket/x", "no valid bucket"),
        ("http://host/x", "unsupported scheme 'http'"),
        ("", "got an empty value"),
    ],
)
def test_bad_uri_names_the_key(root, says):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"name": "x", "storage": {"root": root}})
    assert str(err.value).startswith("storage.root: ")
    assert says in str(err.value)


def test_bad_input_uri_names_the_key():
    with pytest.raises(ConfigError, match=r"^corpus.input: .*unsupported scheme"):
        config_from_dict({"name": "x", "corpus": {"input": "ftp://h/x"}})


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({"train": {"batch_size": 0}}, "train.batch_size", "must be >= 1"),
        ({"train": {"matryoshka_dims": [64, 128]}}, "train.matryoshka_dims", "descending"),
        ({"train": {"matryoshka_weights": [1, 1]}}, "train.matryoshka_weights", "one weight per dimension"),
        ({"train": {"loss": "cached_mnrl", "batch_size": 8, "mini_batch_size": 16}}, "train.mini_batch_size", ""),
        ({"train": {"precision": "fp16"}}, "train.precision", "'fp16' needs use_gpu: true; on CPU use"),
        ({"train": {"eval_strategy": "steps"}}, "train.eval_steps", "required when"),
        ({"train": {"cuda_graphs": True}}, "train.cuda_graphs", "needs use_gpu: true"),
        ({"train": {"cuda_graphs": True, "use_gpu": True, "compile": True}}, "train.cuda_graphs", "exclusive"),
        ({"train": {"cuda_graphs": True, "use_gpu": True, "num_workers": 2}}, "train.cuda_graphs",
         "one worker for now, got num_workers 2"),
        ({"train": {"dataloader_workers": -1}}, "train.dataloader_workers", "must be >= 0"),
        ({"train": {"dataloader_workers": 2, "cpus_per_worker": 2}}, "train.dataloader_workers",
         "need cpus_per_worker >= 3"),
        ({"corpus": {"chunk_tokens": 64, "chunk_overlap_tokens": 64}}, "corpus.chunk_overlap_tokens", "smaller"),
        ({"pairs": {"source": "columns"}}, "pairs.source", "corpus.columns.question"),
        ({"pairs": {"source": "llm"}}, "pairs.llm", "llm.endpoint and llm.model"),
        ({"serve": {"max_batch_size": 64, "max_ongoing_requests": 8}}, "serve.max_ongoing_requests", "batch"),
        ({"evaluate": {"dims": [512]}}, "evaluate.dims", "larger than the largest trained"),
        ({"name": "Bad Name"}, "name", "not a valid name"),
    ],
)
def test_impossible_combinations_name_the_key(data, key, says):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"name": "x", **data})
    assert str(err.value).startswith(f"{key}: "), str(err.value)
    assert says in str(err.value)


def test_yaml_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("item", ["train.epochs", "=3", "train..epochs=1", ""])
def test_malformed_override_is_refused(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, item)


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="is not a section"):
        apply_override({"name": "x"}, "name.sub=1")


def test_scientific_notation_from_yaml_is_a_number(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\ntrain:\n  learning_rate: 2e-5\n")  # YAML 1.1 would read this as a string
    assert load_config(path).train.learning_rate == pytest.approx(2e-5)
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(path, ["train.learning_rate=fast"])


def test_yaml_no_is_the_word_when_it_is_a_choice(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\ntrain:\n  eval_strategy: no\n")  # YAML 1.1 reads `no` as false
    assert load_config(path).train.eval_strategy == "no"
    with pytest.raises(ConfigError, match="choose one of"):
        load_config(path, ["train.loss=no"])


def test_with_absolute_paths_anchors_local_paths_at_this_folder_and_leaves_uris_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    cfg = load_config(None, ["name=x", "storage.root=./data", "corpus.input=raw/docs", "train.base_model=my-model",
                             "evaluate.models=[org/hub-model, ./other]", "serve.model=s3://bucket/models/x"])
    absolute = with_absolute_paths(cfg)
    assert absolute.storage.root == str(tmp_path / "data")
    assert absolute.corpus.input == str(tmp_path / "raw" / "docs")
    assert absolute.train.base_model == str(tmp_path / "my-model")
    assert absolute.evaluate.models == ("org/hub-model", str(tmp_path / "other"))
    assert absolute.serve.model == "s3://bucket/models/x"
    assert with_absolute_paths(load_config(None, ["name=x", "storage.root=s3://bkt/p"])).storage.root == "s3://bkt/p"
