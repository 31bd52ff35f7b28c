"""The train stage's datasets: text columns only, caps, clear errors, and no hashing of the pair table."""

from __future__ import annotations

import logging

import pytest
from tests.unit.test_train_setup import publish_pairs

from mrlkit.train.data import PairsError, load_eval_dataset, load_train_dataset


def test_train_dataset_keeps_text_columns_and_caps_rows(tmp_path, caplog):
    uri = str(tmp_path / "pairs")
    publish_pairs(uri, {"anchor": ["a1", "a2", "a3"], "positive": ["p1", "p2", "p3"], "negative_1": ["n1", "n2", "n3"],
                        "chunk_id": ["c1", "c2", "c3"]})
    with caplog.at_level(logging.INFO, logger="mrlkit.train.data"):
        dataset = load_train_dataset(uri, max_pairs=2)
    assert "the first 2 of 3 training pairs (train.max_train_pairs)" in caplog.text  # the cap is never silent
    assert dataset.column_names == ["anchor", "positive", "negative_1"]  # metadata never reaches the loss
    assert dataset["anchor"] == ["a1", "a2"]
    assert load_eval_dataset(uri)["positive"] == ["p1"]


def test_datasets_are_built_without_hashing_the_table(tmp_path, monkeypatch):
    # datasets hashes a table it gets without a fingerprint by pickling all of it with dill: slow on large
    # pair sets, and inside Ray workers dill's bytecode disassembly leaks into the job log.
    from datasets.fingerprint import Hasher

    def refuse(*args, **kwargs):
        raise AssertionError("the pair table was hashed")

    monkeypatch.setattr(Hasher, "hash", refuse)
    uri = str(tmp_path / "pairs")
    publish_pairs(uri)
    assert len(load_train_dataset(uri)) == 2 and len(load_eval_dataset(uri)) == 1


def test_null_text_is_named(tmp_path):
    uri = str(tmp_path / "pairs")
    publish_pairs(uri, {"anchor": ["a1", None], "positive": ["p1", "p2"]})
    with pytest.raises(PairsError, match=r"column 'anchor' has 1 empty \(null\) values"):
        load_train_dataset(uri)
