"""Model references (local folder, offline hub id with sha256 check, published s3:// URI) and mrlkit.json."""

from __future__ import annotations

import shutil

import pytest

from mrlkit import models, storage
from mrlkit.errors import ModelError


def test_offline_minilm_resolves_and_is_verified():
    path = models.resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path.endswith("model") and (models.Path(path) / "model.safetensors").is_file()
    assert models.resolve_model("all-MiniLM-L6-v2") == path


def test_tampered_offline_weights_are_refused(monkeypatch, tmp_path):
    fake_pkg = tmp_path / "fake_pkg"
    (fake_pkg / "model").mkdir(parents=True)
    (fake_pkg / "__init__.py").write_text("")
    (fake_pkg / "model" / "model.safetensors").write_bytes(b"not the real weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(models.OFFLINE_MODELS, "org/fake", ("fake_pkg", "model", "0" * 64))
    with pytest.raises(ModelError, match="does not match the published"):
        models.resolve_model("org/fake")


def test_local_folder(tiny_model, tmp_path):
    assert models.resolve_model(tiny_model) == str(models.Path(tiny_model).resolve())
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a sentence-transformers model folder"):
        models.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="empty"):
        models.resolve_model("")


def test_hub_id_offline_fails_clearly():
    with pytest.raises(ModelError, match="cannot load model 'no-such-org/no-such-model'"):
        models.load_sentence_transformer("no-such-org/no-such-model")


def test_s3_model_is_downloaded_once_and_verified(tiny_model, s3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MRLKIT_CACHE", str(tmp_path / "cache"))
    uri = storage.join(s3_root, "models", "run1")
    model_dir = shutil.copytree(tiny_model, tmp_path / "model")  # the session's tiny_model stays untouched
    models.write_metadata(model_dir, models.MrlMetadata(base_model="tiny", matryoshka_dims=[32, 16, 8]))
    storage.publish_dir(model_dir, uri)
    first = models.resolve_model(uri)
    marker_mtime = (models.Path(first) / storage.MARKER).stat().st_mtime
    assert models.resolve_model(uri) == first, "second resolve uses the cache"
    assert (models.Path(first) / storage.MARKER).stat().st_mtime == marker_mtime
    model = models.load_sentence_transformer(uri, truncate_dim=16)
    assert model.encode(["hello"]).shape == (1, 16)
    meta = models.read_metadata(uri)
    assert meta is not None and meta.matryoshka_dims == [32, 16, 8] and meta.base_model == "tiny"


def test_unpublished_s3_model_is_refused(s3_root):
    with pytest.raises(storage.StorageNotFound, match="no complete output"):
        models.resolve_model(storage.join(s3_root, "models", "missing"))


def test_metadata_round_trip_and_validation(tmp_path):
    assert models.read_metadata(tmp_path) is None
    models.write_metadata(tmp_path, models.MrlMetadata("base", [64, 384, 128], training={"epochs": 1},
                                                       metrics={"dim64_ndcg@10": 0.5}))
    meta = models.read_metadata(tmp_path)
    assert meta.matryoshka_dims == [384, 128, 64], "stored largest first"
    assert meta.mrlkit_version and meta.created_at and meta.training == {"epochs": 1}
    (tmp_path / models.METADATA_FILE).write_text('{"base_model": "b", "matryoshka_dims": [8], "extra": 1}')
    with pytest.raises(ModelError, match="unknown keys"):
        models.read_metadata(tmp_path)
    (tmp_path / models.METADATA_FILE).write_text('{"base_model": "b", "matryoshka_dims": [0]}')
    with pytest.raises(ModelError, match="positive integers"):
        models.read_metadata(tmp_path)
    (tmp_path / models.METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        models.read_metadata(tmp_path)


def test_random_model_has_the_requested_shape(tmp_path):
    path = models.init_random_model(tmp_path / "m", hidden_size=48, num_layers=1, num_heads=2)
    model = models.load_sentence_transformer(str(path))
    emb = model.encode(["a", "b"], normalize_embeddings=False)
    assert emb.shape == (2, 48)
    shutil.rmtree(path)
