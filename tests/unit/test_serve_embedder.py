"""Encoding, Matryoshka truncation + re-normalisation, token counts and quantisation (no Ray)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mrlkit.errors import ModelError
from mrlkit.serve.embedder import Embedder, default_model_name, encode_vector


@pytest.fixture(scope="module")
def mrl_folder(tiny_mrl_model) -> str:
    return tiny_mrl_model


@pytest.fixture(scope="module")
def embedder(mrl_folder) -> Embedder:
    return Embedder.load(mrl_folder)


def test_load_reads_dims_name_and_normalisation(embedder):
    assert embedder.name == "tiny-mrl" and embedder.full_dim == 32
    assert embedder.allowed_dims == (32, 16, 8) and embedder.normalizes
    assert embedder.dimension_allowed(16) and not embedder.dimension_allowed(12)
    assert embedder.describe_allowed_dims() == "one of 32, 16, 8"
    assert embedder.accepts_model(None) and embedder.accepts_model("tiny-mrl") and not embedder.accepts_model("x")


def test_a_model_without_metadata_serves_its_full_dim_or_any_when_allowed(tiny_model):
    plain = Embedder.load(tiny_model)
    assert plain.allowed_dims == (32,) and not plain.dimension_allowed(16)
    loose = Embedder(plain.model, name="x", allow_any_dimension=True)
    assert loose.dimension_allowed(1) and loose.dimension_allowed(32) and not loose.dimension_allowed(33)
    assert "from 1 to 32" in loose.describe_allowed_dims()
    with pytest.raises(ModelError, match="exceed its embedding size 32"):
        Embedder(plain.model, name="x", trained_dims=(64, 32))


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Embedder.load(str(tmp_path / "nothing"))


def test_truncation_is_the_renormalised_prefix_and_batching_changes_nothing(embedder):
    texts = ["first text", "a somewhat longer second text about revenue", "third"]
    full = embedder.encode_full(texts)
    assert full.shape == (3, 32) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    for dim in (16, 8):
        small = embedder.truncate(full, dim)
        np.testing.assert_allclose(small, full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True),
                                   atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    alone = embedder.encode_full([texts[1]])
    np.testing.assert_allclose(alone[0], full[1], atol=1e-5)
    assert embedder.truncate(full, None) is full


def test_zero_prefix_stays_finite(embedder):
    vectors = np.zeros((1, 32), dtype=np.float32)
    vectors[0, 20] = 1.0
    assert np.all(np.isfinite(embedder.truncate(vectors, 8)))


def test_token_counts_and_over_long_inputs(embedder):
    check = embedder.check_texts(["hello world", "word " * 300])
    assert check.token_counts[0] == 4  # [CLS] hello world [SEP]
    assert check.token_counts[1] == embedder.max_seq_length and check.too_long == [1]


def test_quantisation_is_independent_of_the_batch(embedder):
    full = embedder.truncate(embedder.encode_full(["one", "two", "three"]), 16)
    int8 = embedder.quantize(full, "int8")
    assert int8.dtype == np.int8 and int8.shape == (3, 16)
    np.testing.assert_array_equal(embedder.quantize(full[:1], "int8")[0], int8[0])
    assert embedder.quantize(full, "ubinary").shape == (3, 2)


def test_wire_encoding():
    vector = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    assert encode_vector(vector, "float") == [0.5, -0.25, 1.0]
    decoded = np.frombuffer(base64.b64decode(encode_vector(vector, "base64")), dtype="<f4")
    np.testing.assert_array_equal(decoded, vector)
    assert base64.b64decode(encode_vector(np.array([1, -2], dtype=np.int8), "base64")) == b"\x01\xfe"


def test_default_model_name():
    assert default_model_name("s3://bucket/mrl/models/demo/") == "demo"
    assert default_model_name("./mrlkit-data/models/run1") == "run1"
    assert default_model_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_failing_text_fails_alone_in_a_shared_batch(embedder, monkeypatch):
    """No real text makes the model fail, so the failure is injected: the batch retries text by text."""
    real = embedder.encode_full

    def encode_full(texts):
        if any("POISON" in t for t in texts):
            raise RuntimeError("poisoned")
        return real(texts)

    monkeypatch.setattr(embedder, "encode_full", encode_full)
    results = embedder.encode_isolated(["good one", "POISON", "good two"])
    assert isinstance(results[1], RuntimeError)
    np.testing.assert_allclose(results[0], real(["good one"])[0], atol=1e-5)
    np.testing.assert_allclose(results[2], real(["good two"])[0], atol=1e-5)
    assert all(isinstance(r, np.ndarray) for r in embedder.encode_isolated(["a", "b"]))


def test_load_from_a_published_s3_model(embedder, mrl_folder, s3_root, tmp_path, monkeypatch):
    """The model a run exported to S3 (real local S3 server): downloaded, verified, named after its folder."""
    from mrlkit import storage
    from mrlkit.errors import MrlkitError

    monkeypatch.setenv("MRLKIT_CACHE", str(tmp_path / "cache"))
    uri = f"{s3_root}/models/run-7"
    storage.publish_dir(mrl_folder, uri)
    remote = Embedder.load(uri)
    assert remote.name == "run-7" and remote.allowed_dims == (32, 16, 8) and remote.accepts_model(uri)
    np.testing.assert_allclose(remote.encode_full(["same"]), embedder.encode_full(["same"]), atol=1e-6)
    with pytest.raises(MrlkitError, match="no complete output"):
        Embedder.load(f"{s3_root}/models/never-exported")


# a served batch is whatever arrived together: queries and passages of very different lengths, one text empty
MIXED_LENGTHS = ["a short query", "", "a passage about revenue, margins and cash flow in the fiscal year " * 4,
                 "what was the dividend?"]


def test_unpadded_serving_encodes_each_text_as_padded_serving_does(mrl_folder):
    from mrlkit.unpad import UnpaddedEncoder

    unpadded, padded = Embedder.load(mrl_folder), Embedder.load(mrl_folder, unpad=False)
    assert isinstance(unpadded.model[0].auto_model.forward, UnpaddedEncoder) and unpadded.unpadded is not None
    assert padded.unpadded is None and not isinstance(padded.model[0].auto_model.forward, UnpaddedEncoder)
    np.testing.assert_allclose(unpadded.encode_full(MIXED_LENGTHS), padded.encode_full(MIXED_LENGTHS), atol=1e-5)
    summary = unpadded.unpadded.summary()
    assert summary["packed_passes"] == 1 and summary["real_token_fraction"] < 0.5  # the passage's length, skipped
    # a request encoded alone has no padding: it runs the model's own forward
    np.testing.assert_allclose(unpadded.encode_full(MIXED_LENGTHS[2:3])[0], padded.encode_full(MIXED_LENGTHS)[2],
                               atol=1e-5)
    assert unpadded.unpadded.summary()["eager_passes"] == 1


def test_a_model_that_cannot_run_unpadded_is_served_padded_with_a_warning(tiny_model, tmp_path, caplog):
    import logging

    from test_unpad import _roberta_sentence_model

    model = _roberta_sentence_model(tiny_model, tmp_path / "roberta")
    with caplog.at_level(logging.WARNING, logger="mrlkit.serve"):
        embedder = Embedder(model, name="tiny-roberta")
    assert embedder.unpadded is None
    assert "serve.unpad cannot serve tiny-roberta, which computes on padding: its packed forward differs" in caplog.text
    full = embedder.encode_full(MIXED_LENGTHS)
    assert full.shape == (4, 32) and np.isfinite(full).all()
