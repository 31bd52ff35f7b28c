"""What an evaluation reports: the per-dimension table, the "serve at" dimension, report.json.

Pure functions over plain data (no model, no storage), so the numbers a user
reads in report.md are the ones in report.json and the tests can check both.

The table is the seed article's: one row per dimension with the baseline's and
the fine-tuned model's NDCG@10, the improvement in percent, and the storage one
float32 vector of that dimension takes. With more than two models every model
gets a column and the improvement compares the last model with the first.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BYTES_PER_FLOAT32 = 4
PRIMARY_METRIC = "ndcg@10"


@dataclass
class ModelResult:
    """One evaluated model: its label in the table, its reference, and metrics per dimension."""

    label: str
    ref: str
    metrics: dict[int, dict[str, float]]
    embedding_dim: int
    matryoshka_dims: list[int] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "ref": self.ref, "embedding_dim": self.embedding_dim,
            "matryoshka_dims": self.matryoshka_dims, "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "metrics": {str(d): dict(m) for d, m in sorted(self.metrics.items(), reverse=True)},
        }


def improvement_pct(base: float, new: float) -> float | None:
    """Relative change in percent; None when the baseline is zero (no meaningful ratio)."""
    return None if base == 0 else (new - base) / base * 100.0


def serve_at(result: ModelResult, fraction: float) -> dict[str, Any]:
    """The smallest dimension whose NDCG@10 keeps >= ``fraction`` of the model's full-dimension score.

    "Full dimension" is the largest evaluated dimension. The saving is in vector storage
    (and in the memory and bandwidth of a vector index), relative to that full dimension.
    """
    dims = sorted(result.metrics)
    full = dims[-1]
    best = result.metrics[full][PRIMARY_METRIC]
    chosen = next(d for d in dims if result.metrics[d][PRIMARY_METRIC] >= fraction * best)
    score = result.metrics[chosen][PRIMARY_METRIC]
    return {
        "model": result.label, "dim": chosen, "ndcg@10": score, "full_dim": full, "full_dim_ndcg@10": best,
        "required_fraction": fraction, "kept_fraction": (score / best) if best else 1.0,
        "bytes_per_vector": chosen * BYTES_PER_FLOAT32, "full_bytes_per_vector": full * BYTES_PER_FLOAT32,
        "storage_saving_pct": (1 - chosen / full) * 100.0,
    }


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def markdown_table(results: Sequence[ModelResult]) -> str:
    """The per-dimension NDCG@10 table (markdown), largest dimension first."""
    dims = sorted(results[0].metrics, reverse=True)
    header = ["dim", *[r.label for r in results]]
    if len(results) > 1:
        vs = "" if len(results) == 2 else f" ({results[-1].label} vs {results[0].label})"
        header.append(f"improvement{vs}")
    header.append("storage per vector")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for d in dims:
        row = [str(d), *[f"{r.metrics[d][PRIMARY_METRIC]:.4f}" for r in results]]
        if len(results) > 1:
            row.append(_fmt_pct(improvement_pct(results[0].metrics[d][PRIMARY_METRIC],
                                                results[-1].metrics[d][PRIMARY_METRIC])))
        row.append(f"{d * BYTES_PER_FLOAT32:,} B")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def metrics_table(result: ModelResult) -> str:
    """Every metric of one model per dimension (markdown)."""
    names = list(next(iter(result.metrics.values())))
    lines = ["| dim | " + " | ".join(names) + " |", "|" + "|".join("---:" for _ in range(len(names) + 1)) + "|"]
    for d in sorted(result.metrics, reverse=True):
        lines.append(f"| {d} | " + " | ".join(f"{result.metrics[d][n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], results: Sequence[ModelResult]) -> str:
    """report.md: the headline table, the serve-at recommendation, every metric, and where it came from."""
    rec = report["serve_at"]
    data = report["dataset"]
    lines = [
        f"# Evaluation report: {report['run']}",
        "",
        f"NDCG@10 per Matryoshka dimension on `{data['uri']}` ({report['num_queries']} queries, "
        f"{report['corpus_size']} documents). Storage per vector is float32.",
        "",
        markdown_table(results),
        "",
        f"**Serve at {rec['dim']} dimensions**: the smallest dimension of `{rec['model']}` that keeps "
        f">= {rec['required_fraction']:.0%} of its {rec['full_dim']}-dim NDCG@10 "
        f"({rec['ndcg@10']:.4f} vs {rec['full_dim_ndcg@10']:.4f}, {rec['kept_fraction']:.1%}); "
        f"{rec['bytes_per_vector']:,} B instead of {rec['full_bytes_per_vector']:,} B per vector, "
        f"{rec['storage_saving_pct']:.1f}% less vector storage.",
        "",
        "![NDCG@10 by dimension](ndcg_by_dim.png)",
        "",
    ]
    for r in results:
        lines += [f"## {r.label}: `{r.ref}`", "", metrics_table(r), ""]
    lines += [f"Dataset sha256: `{data['sha256']}`. Hardware: {report['hardware']['summary']}. "
              f"Total time {report['timings_s']['total']:.1f} s.", ""]
    return "\n".join(lines)


def hardware_info() -> dict[str, Any]:
    """The machine and library versions the numbers came from."""
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    for lib in ("sentence_transformers", "ray", "transformers"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:  # ray is optional on a single machine
            info[lib] = None
    gpus = ", ".join(info["cuda_gpus"]) or "no GPU"
    info["summary"] = f"{info['cpu_count']} CPUs, {gpus}, {info['platform']}"
    return info
