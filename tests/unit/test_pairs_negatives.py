"""Hard-negative mining, sharded on a real local Ray, with a tiny random-init sentence-transformer.

The selection must equal sentence-transformers' ``mine_hard_negatives`` (the rule it re-implements
so that encoding and search run as Ray work), rows keep their metadata and order, and anchors with
several positives never get one of their own positives as a negative.
"""

from __future__ import annotations

import random

import pytest

from mrlkit.config_schema import HardNegativesConfig
from mrlkit.errors import ConfigError
from mrlkit.pairs import negatives
from mrlkit.pairs.negatives import mine_negatives

TOPICS = ["ray", "tokens", "storage", "shards", "matryoshka", "parquet", "serve", "helm", "kube", "loss", "adam",
          "cosine", "warmup", "bucket", "replica", "dataset", "chunk", "manifest", "split", "report"]


def make_train(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.sample(TOPICS, 2)
        rows.append({"anchor": f"what about {a} and {b}, case {i}?", "positive": f"{a} with {b} is covered here, {i}.",
                     "chunk_id": f"c{i}", "method": "question"})
    return rows


def test_mines_negatives_from_other_positives_and_keeps_metadata(ray_local, tiny_model):
    train = make_train(12)
    cfg = HardNegativesConfig(enabled=True, num_negatives=2, range_min=0, range_max=5, relative_margin=None,
                              batch_size=8)
    rows, dropped = mine_negatives(train, cfg, tiny_model)
    assert len(rows) + dropped == len(train) and rows
    positives = {r["positive"] for r in train}
    for row in rows:
        assert list(row)[:4] == ["anchor", "positive", "negative_1", "negative_2"]
        assert row["negative_1"] in positives and row["negative_1"] != row["positive"]
        assert row["negative_2"] not in (row["positive"], row["negative_1"])
        assert row["chunk_id"].startswith("c") and row["method"] == "question"
    kept = [r["chunk_id"] for r in rows]
    assert kept == sorted(kept, key=lambda c: int(c[1:]))  # original order
    again, _ = mine_negatives(train, cfg, tiny_model, num_encoders=1)
    assert again == rows  # deterministic, whatever the number of encoder actors


@pytest.mark.parametrize("range_min,relative_margin,max_score", [(0, None, None), (2, 0.05, None), (1, None, 0.9)])
def test_selection_equals_sentence_transformers_mine_hard_negatives(ray_local, tiny_model, monkeypatch,
                                                                    range_min, relative_margin, max_score):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from mrlkit.models import load_sentence_transformer

    monkeypatch.setattr(negatives, "TEXTS_PER_ENCODE_TASK", 7)  # several encode blocks, uneven last one
    monkeypatch.setattr(negatives, "MAX_SIMILARITY_BLOCK_BYTES", 4 * 40 * 5)  # anchor blocks of 5: many tasks
    train = make_train(40, seed=1)
    cfg = HardNegativesConfig(enabled=True, num_negatives=3, range_min=range_min, range_max=12,
                              relative_margin=relative_margin, max_score=max_score, batch_size=16)
    ours, dropped = mine_negatives(train, cfg, tiny_model)

    dataset = Dataset.from_dict({"anchor": [r["anchor"] for r in train], "positive": [r["positive"] for r in train]})
    theirs = mine_hard_negatives(dataset, load_sentence_transformer(tiny_model, device="cpu"), range_min=range_min,
                                 range_max=12, relative_margin=relative_margin, max_score=max_score,
                                 num_negatives=3, sampling_strategy="top", output_format="n-tuple", batch_size=16,
                                 verbose=False)
    expected = [[row[f"negative_{k}"] for k in (1, 2, 3)] for row in theirs]
    assert [[row[f"negative_{k}"] for k in (1, 2, 3)] for row in ours] == expected
    assert dropped == len(train) - len(theirs)


@pytest.mark.parametrize("unpad", [True, False])
def test_mining_encodes_real_tokens_only_unless_told_otherwise(ray_local, tiny_model, unpad):
    """pairs.hard_negatives.unpad: the encoder actors skip padding (the selection test above shows the same
    negatives come out: the plain model there is padded)."""
    import ray

    encoder = negatives._Encoder.remote(tiny_model, 8, unpad)
    try:
        ray.get(encoder.encode.remote(["short", "a much longer text about matryoshka losses and ray", "mid text"]))
        summary = ray.get(encoder.unpadded_summary.remote())
    finally:
        ray.kill(encoder)
    if unpad:
        assert summary["packed_passes"] == 1 and summary["real_token_fraction"] < 1
    else:
        assert summary is None


def test_anchor_with_several_positives_never_gets_its_own_positive(ray_local, tiny_model):
    train = make_train(10, seed=2)
    shared = train[0]["anchor"]
    for row in train[1:4]:
        row["anchor"] = shared  # one question, four positives
    cfg = HardNegativesConfig(enabled=True, num_negatives=2, range_min=0, range_max=6, relative_margin=None,
                              batch_size=8)
    rows, _ = mine_negatives(train, cfg, tiny_model)
    own = {r["positive"] for r in train if r["anchor"] == shared}
    shared_rows = [r for r in rows if r["anchor"] == shared]
    assert len(shared_rows) == 4
    for row in shared_rows:
        assert not own & {row["negative_1"], row["negative_2"]}
        assert (row["negative_1"], row["negative_2"]) == (shared_rows[0]["negative_1"], shared_rows[0]["negative_2"])


def test_too_few_candidates_drops_rows_counts_them_and_warns_naming_the_settings(ray_local, tiny_model, caplog):
    train = make_train(4, seed=3)
    cfg = HardNegativesConfig(enabled=True, num_negatives=3, range_min=2, range_max=6, relative_margin=None,
                              batch_size=8)
    with caplog.at_level("WARNING", logger="mrlkit.pairs.negatives"):
        rows, dropped = mine_negatives(train, cfg, tiny_model)  # 3 other positives, 2 skipped: 1 left, 3 wanted
    assert rows == [] and dropped == 4
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "dropped 4 of 4 train pairs (100%)" in warning
    assert "range_min + num_negatives (5) of the top range_max (6)" in warning


def test_a_small_share_dropped_is_not_a_warning(ray_local, tiny_model, caplog):
    with caplog.at_level("INFO", logger="mrlkit.pairs.negatives"):
        rows, dropped = mine_negatives(make_train(24), HardNegativesConfig(enabled=True, range_min=0, range_max=5,
                                                                           relative_margin=None, batch_size=8),
                                       tiny_model)
    assert (len(rows), dropped) == (24, 0)
    assert [r.levelname for r in caplog.records if "dropped" in r.getMessage()] == ["INFO"]


def test_more_negatives_than_the_rank_window_holds_is_a_config_error():
    with pytest.raises(ConfigError, match=r"num_negatives.*range_max - range_min"):
        from mrlkit.config import load_config

        load_config(None, ["name=x", "pairs.hard_negatives.num_negatives=5", "pairs.hard_negatives.range_min=10",
                           "pairs.hard_negatives.range_max=12"])
