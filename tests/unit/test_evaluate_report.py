"""The report's table, serve-at recommendation and plot, from plain numbers."""

from __future__ import annotations

import pytest
from PIL import Image

from mrlkit.evaluate.plot import plot_ndcg_by_dim
from mrlkit.evaluate.report import ModelResult, improvement_pct, markdown_table, serve_at

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(label: str, ndcg: dict[int, float]) -> ModelResult:
    return ModelResult(label=label, ref=f"models/{label}", embedding_dim=max(ndcg),
                       metrics={d: {"ndcg@10": v, "mrr@10": v / 2} for d, v in ndcg.items()})


BASE = result("baseline", {384: 0.7662, 256: 0.7536, 128: 0.7391, 64: 0.7082, 32: 0.6200})
TUNED = result("fine-tuned", {384: 0.8300, 256: 0.8290, 128: 0.8230, 64: 0.8100, 32: 0.7600})


def test_table_has_the_seed_articles_columns_and_rows():
    table = markdown_table([BASE, TUNED]).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == [
        "dim", "baseline", "fine-tuned", "improvement", "storage per vector"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["384", "256", "128", "64", "32"]
    assert rows[0] == ["384", "0.7662", "0.8300", "+8.33%", "1,536 B"]
    assert rows[-1][-1] == "128 B"


def test_table_with_one_or_three_models():
    one = markdown_table([TUNED]).splitlines()[0]
    assert "improvement" not in one and "fine-tuned" in one
    three = markdown_table([BASE, result("mid", {d: 0.7 for d in BASE.metrics}), TUNED]).splitlines()[0]
    assert "improvement (fine-tuned vs baseline)" in three and "| mid |" in three


def test_improvement_pct():
    assert improvement_pct(0.5, 0.55) == pytest.approx(10.0)
    assert improvement_pct(0.0, 0.3) is None


def test_serve_at_picks_smallest_dim_keeping_the_fraction():
    rec = serve_at(TUNED, 0.99)
    # 0.99 * 0.83 = 0.8217: 128 (0.8230) keeps it, 64 (0.8100) does not.
    assert rec["dim"] == 128 and rec["full_dim"] == 384
    assert rec["bytes_per_vector"] == 512 and rec["full_bytes_per_vector"] == 1536
    assert rec["storage_saving_pct"] == pytest.approx(100 * (1 - 128 / 384))
    assert rec["kept_fraction"] >= 0.99
    assert serve_at(TUNED, 0.9)["dim"] == 32
    assert serve_at(TUNED, 1.0)["dim"] == 384


def test_plot_is_a_real_png(tmp_path):
    path = plot_ndcg_by_dim([BASE, TUNED], tmp_path / "ndcg_by_dim.png", title="t")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        assert img.format == "PNG"
        assert 400 <= width <= 2000 and 300 <= height <= 1500
        # Not a blank canvas: a plot has many colours (lines, text, grid).
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10
