"""Hard-negative mining with the base model: (anchor, positive) -> (anchor, positive, negative_1..k).

Uses sentence-transformers' ``mine_hard_negatives`` over the *train* pairs only (the
corpus searched is the train positives, so no test text can leak in as a negative):
candidates ranked ``range_min``..``range_max`` by the base model, at least
``relative_margin`` less similar than the positive, the top ``num_negatives`` kept.
Rows for which too few negatives qualify are dropped and counted.
"""

from __future__ import annotations

import logging
from typing import Any

from mrlkit.config_schema import HardNegativesConfig

log = logging.getLogger(__name__)


def mine_negatives(train: list[dict[str, Any]], cfg: HardNegativesConfig, model_ref: str) -> tuple[
        list[dict[str, Any]], int]:
    """Train rows with ``negative_1..k`` added, in their original order, and how many rows were dropped."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from mrlkit.models import load_sentence_transformer

    if not train:
        return [], 0
    model = load_sentence_transformer(model_ref, device="cpu")
    dataset = Dataset.from_dict({"anchor": [r["anchor"] for r in train], "positive": [r["positive"] for r in train]})
    mined = mine_hard_negatives(
        dataset, model, range_min=cfg.range_min, range_max=cfg.range_max, max_score=cfg.max_score,
        relative_margin=cfg.relative_margin, num_negatives=cfg.num_negatives, sampling_strategy="top",
        output_format="n-tuple", batch_size=cfg.batch_size, verbose=False)
    negatives: dict[tuple[str, str], list[str]] = {}
    names = [f"negative_{k}" for k in range(1, cfg.num_negatives + 1)]
    for row in mined:
        negatives.setdefault((row["anchor"], row["positive"]), [row[n] for n in names])
    out = []
    for row in train:
        found = negatives.get((row["anchor"], row["positive"]))
        if found is None:
            continue
        out.append({"anchor": row["anchor"], "positive": row["positive"], **dict(zip(names, found, strict=True)),
                    **{k: v for k, v in row.items() if k not in ("anchor", "positive")}})
    dropped = len(train) - len(out)
    log.info("prepare: mined %d hard negatives per pair for %d/%d train pairs", cfg.num_negatives, len(out),
             len(train))
    return out, dropped
