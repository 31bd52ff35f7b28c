"""Hard-negative mining with a (tiny, random-init) sentence-transformer: negative_1..k columns, metadata kept."""

from __future__ import annotations

from mrlkit.config_schema import HardNegativesConfig
from mrlkit.pairs.negatives import mine_negatives


def test_mines_negatives_from_other_positives(tiny_model):
    topics = ["ray", "tokens", "storage", "shards", "matryoshka", "parquet", "serve", "helm", "kube", "loss"]
    train = [{"anchor": f"what about {t}?", "positive": f"{t} is described here in detail, number {i}.",
              "chunk_id": f"c{i}", "method": "question"} for i, t in enumerate(topics)]
    cfg = HardNegativesConfig(enabled=True, num_negatives=2, range_min=0, range_max=5, relative_margin=None,
                              batch_size=8)
    rows, dropped = mine_negatives(train, cfg, tiny_model)
    assert len(rows) + dropped == len(train) and rows
    positives = {r["positive"] for r in train}
    for row in rows:
        assert list(row)[:4] == ["anchor", "positive", "negative_1", "negative_2"]
        assert row["negative_1"] in positives and row["negative_1"] != row["positive"]
        assert row["negative_2"] != row["positive"]
        assert row["chunk_id"].startswith("c") and row["method"] == "question"
    again, _ = mine_negatives(train, cfg, tiny_model)
    assert again == rows  # deterministic
