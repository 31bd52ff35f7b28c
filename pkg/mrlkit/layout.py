"""The storage layout: the only coupling between stages (DESIGN.md, "Storage layout").

::

    <root>/corpora/<name>/   part-*.parquet (CHUNK_COLUMNS), manifest.json, rejects.jsonl
    <root>/pairs/<name>/     train/ test/ part-*.parquet, corpus/ (eval corpus), split.json, manifest.json
    <root>/runs/<run>/       Ray Train storage (checkpoints, results); re-running <run> resumes
    <root>/models/<run>/     sentence-transformers folder + mrlkit.json
    <root>/reports/<run>/    report.json, report.md, ndcg_by_dim.png

Every folder above is published atomically (``storage.publish_dir``); readers
call :func:`read_table`, which refuses an output without its publish marker.
"""

from __future__ import annotations

from typing import Any

from mrlkit import storage
from mrlkit.config_schema import PipelineConfig

# corpora/<name>/part-*.parquet: one row per chunk.
CHUNK_COLUMNS = ("chunk_id", "doc_id", "title", "text", "source")
# pairs/<name>/{train,test}/part-*.parquet: training text columns first, in the order losses read them;
# optional hard negatives follow as negative_1..negative_k. Test rows also carry query_id and relevant_ids.
PAIR_TEXT_COLUMNS = ("anchor", "positive")
TEST_EXTRA_COLUMNS = ("query_id", "relevant_ids")
# pairs/<name>/corpus/part-*.parquet: the evaluation corpus.
EVAL_CORPUS_COLUMNS = ("chunk_id", "text")


def corpus_uri(cfg: PipelineConfig) -> str:
    return storage.join(cfg.storage.root, "corpora", cfg.name)


def pairs_uri(cfg: PipelineConfig) -> str:
    return storage.join(cfg.storage.root, "pairs", cfg.name)


def run_uri(cfg: PipelineConfig) -> str:
    return storage.join(cfg.storage.root, "runs", cfg.run)


def model_uri(cfg: PipelineConfig) -> str:
    return storage.join(cfg.storage.root, "models", cfg.run)


def report_uri(cfg: PipelineConfig) -> str:
    return storage.join(cfg.storage.root, "reports", cfg.run)


def negative_columns(names: list[str]) -> list[str]:
    """The hard-negative columns of a pairs table, in order (negative_1, negative_2, ...)."""
    negs = [n for n in names if n.startswith("negative_") and n.removeprefix("negative_").isdigit()]
    return sorted(negs, key=lambda n: int(n.removeprefix("negative_")))


def read_table(uri: str, subdir: str = "", columns: list[str] | None = None) -> Any:
    """Read the ``part-*.parquet`` files of a published folder (or its ``subdir``) as one ``pyarrow.Table``.

    Refuses an output that has no publish marker, so a half-written stage output is never read.
    Example: ``read_table(pairs_uri(cfg), "test")``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = storage.read_marker(uri)
    prefix = f"{subdir.strip('/')}/" if subdir else ""
    parts = sorted(rel for rel in marker["files"]
                   if rel.startswith(prefix) and rel.endswith(".parquet") and "/" not in rel[len(prefix):])
    if not parts:
        raise storage.StorageNotFound(f"{storage.join(uri, subdir)}: published, but holds no parquet parts")
    fs, path = storage.pyarrow_filesystem(uri)
    return pa.concat_tables([pq.read_table(f"{path}/{rel}", filesystem=fs, columns=columns) for rel in parts])
