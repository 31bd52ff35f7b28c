"""ndcg_by_dim.png: NDCG@10 against dimension, one line per model, log-2 x axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mrlkit.evaluate.report import PRIMARY_METRIC, ModelResult


def plot_ndcg_by_dim(results: Sequence[ModelResult], path: str | Path, title: str = "") -> Path:
    """Write the plot to ``path`` (PNG) with the non-interactive Agg backend; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    dims = sorted(results[0].metrics)
    for r in results:
        ax.plot(dims, [r.metrics[d][PRIMARY_METRIC] for d in dims], marker="o", label=r.label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(dims))
    ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("embedding dimension (log2)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title or "NDCG@10 by Matryoshka dimension")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
