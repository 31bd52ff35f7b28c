"""Stage ``prepare``: raw corpus -> chunks (``corpora/<name>``) -> training pairs (``pairs/<name>``).

Run it::

    mrlkit prepare --config ray_jobs/configs/demo.yaml
    mrlkit prepare --config ray_jobs/configs/financial.yaml corpus.input=s3://bucket/raw/financial.csv
    ray job submit --working-dir . -- python ray_jobs/prepare.py --config ray_jobs/configs/demo.yaml

Options are checked in ``__init__``; ``setup`` fails fast on a missing input, an
unreachable bucket or a tokenizer that cannot be loaded, before any Ray work;
``run`` reads and chunks on Ray Data, deduplicates globally, builds pairs and the
split, and publishes both folders atomically (a crash publishes nothing).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mrlkit import __version__, layout, storage
from mrlkit.config import config_hash
from mrlkit.config_schema import PipelineConfig
from mrlkit.corpus.pipeline import (
    build_chunks,
    check_reject_fraction,
    reject_counts,
    release_arrow_memory,
    write_corpus_parts,
)
from mrlkit.corpus.shard import ShardOptions
from mrlkit.corpus.sources import Inputs, find_inputs
from mrlkit.errors import ConfigError
from mrlkit.pairs.build import build_pairs, train_schema
from mrlkit.pairs.qrels import Qrels, read_beir_qrels
from mrlkit.pairs.spool import RowSpool
from mrlkit.pairs.writer import content_hash, file_hashes, write_json, write_pairs_dir, write_rejects

log = logging.getLogger(__name__)


def shard_options(cfg: PipelineConfig) -> ShardOptions:
    """What each shard worker needs; loads the tokenizer (to learn its limits) when chunking is on."""
    max_tokens = overlap = 0
    tokenizer = None
    if cfg.corpus.chunking:
        from mrlkit.corpus.chunking import effective_limits

        tokenizer = cfg.corpus.tokenizer or cfg.train.base_model
        max_tokens, overlap = effective_limits(tokenizer, cfg.corpus.chunk_tokens, cfg.corpus.chunk_overlap_tokens,
                                               cfg.train.max_seq_length)
    wants_cloze = cfg.pairs.source == "synthetic" and "inverse_cloze" in cfg.pairs.synthetic.methods
    return ShardOptions(cfg.corpus, tokenizer, max_tokens, overlap, cfg.corpus.dedupe == "near",
                        cfg.pairs.synthetic if wants_cloze else None, cfg.pairs.split.seed)


class PrepareStage:
    """Corpus processing as a sharded Ray job, then pairs and a leakage-free split."""

    name = "prepare"

    def __init__(self, cfg: PipelineConfig):
        corpus, pairs = cfg.corpus, cfg.pairs
        if corpus.input is None:
            raise ConfigError("corpus.input: required for prepare (a local path or s3://bucket/prefix)")
        if pairs.source in ("columns", "qrels") and corpus.chunking:
            raise ConfigError(f"corpus.chunking: must be false for pairs.source {pairs.source!r} "
                              "(the whole context is the positive); set corpus.chunking=false")
        if pairs.source == "qrels" and corpus.format not in ("beir", "auto"):
            raise ConfigError(f"pairs.source 'qrels' reads a BEIR folder; corpus.format is {corpus.format!r}")
        if pairs.split.mode == "reference" and corpus.dedupe != "none":
            raise ConfigError("corpus.dedupe: the reference split keeps every row; set corpus.dedupe=none")
        if pairs.hard_negatives.enabled and pairs.split.mode == "reference":
            log.info("prepare: hard negatives keep the reference split's test set; its train set gains negative "
                     "columns and loses the rows for which too few negatives qualify")
        self.cfg = cfg
        self.inputs: Inputs | None = None
        self.options: ShardOptions | None = None
        self.qrels: Qrels | None = None
        self.llm: Any = None
        self.work: Path | None = None

    def setup(self) -> None:
        cfg = self.cfg
        storage.check_reachable(cfg.storage.root)
        self.inputs = find_inputs(cfg.corpus)
        log.info("prepare: %d input files, %.1f MB under %s", len(self.inputs.files), self.inputs.total_bytes / 1e6,
                 cfg.corpus.input)
        self.options = shard_options(cfg)
        if cfg.pairs.source == "qrels":
            if not self.inputs.is_beir:
                raise ConfigError("pairs.source 'qrels' needs a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
            self.qrels = read_beir_qrels(self.inputs.root)
        if cfg.pairs.source == "llm":
            from mrlkit.pairs.llm import LlmQuestions

            self.llm = LlmQuestions(cfg.pairs.llm)
        from mrlkit.ray_runtime import init_ray

        init_ray(cfg.ray)
        self.work = Path(tempfile.mkdtemp(prefix="mrlkit-prepare-"))

    def run(self) -> dict[str, Any]:
        assert self.inputs is not None and self.options is not None and self.work is not None, "call setup() first"
        cfg = self.cfg
        started = time.monotonic()
        chunks, rejects = build_chunks(self.inputs, self.options, self.work, cfg.ray.num_cpus)
        seconds_chunks = time.monotonic() - started
        check_reject_fraction(cfg.corpus, rejects, chunks.counts.get("documents", 0))  # before any pairs work
        pairs = build_pairs(cfg, chunks, self.qrels, self.llm, spool_folder=self.work / "spool")
        corpus_dir, pairs_dir = self.work / "corpus", self.work / "pairs"
        write_corpus_parts(chunks, corpus_dir)
        # The chunk table is done with: its per-chunk arrays (ids, keys, dup_of: ~60 bytes a chunk, 120 MB at
        # 2M chunks) would otherwise stay through mining and writing the pairs.
        chunk_counts = chunks.counts
        chunks.staging.unlink(missing_ok=True)  # its page cache too: as large as the corpus
        del chunks
        release_arrow_memory()
        if self.qrels is not None:
            rejects += [r.to_json() for r in self.qrels.rejects]
        rejects += pairs.rejects
        documents = chunk_counts.get("documents", 0) + (self.qrels.lines if self.qrels else 0)
        fraction = check_reject_fraction(cfg.corpus, rejects, documents)
        negatives_dropped = 0
        if cfg.pairs.hard_negatives.enabled:
            from mrlkit.pairs.negatives import mine_negatives

            # Mining encodes and searches every train pair at once: they are in memory for this step.
            mined, negatives_dropped = mine_negatives(list(pairs.train), cfg.pairs.hard_negatives,
                                                      cfg.train.base_model)
            pairs.train = RowSpool.of(mined, train_schema(cfg.pairs.hard_negatives.num_negatives),
                                      self.work / "spool")
        sampled_out = self._cap_pairs(pairs)
        if not pairs.train:
            log.warning("prepare: no training pairs were produced; check pairs.source and the input columns")
        by_reason = reject_counts(rejects)
        counts = {
            "read": documents + sum(by_reason.values()) - by_reason.get("empty_question", 0),
            "documents": chunk_counts.get("documents", 0), "rejected": sum(by_reason.values()),
            "rejected_by_reason": by_reason, "empty": by_reason.get("empty", 0),
            "duplicate_exact": chunk_counts["duplicate_exact"], "duplicate_near": chunk_counts["duplicate_near"],
            "chunks": chunk_counts["chunks"], "chunks_before_dedupe": chunk_counts["chunks_before_dedupe"],
            "over_max_documents": chunk_counts.get("over_max_documents", 0),
            "skipped_hidden_files": chunk_counts["skipped_hidden_files"],
            "files": chunk_counts["files"], "bytes_read": chunk_counts["bytes_read"],
            "pairs": {"train": len(pairs.train), "test": len(pairs.test),
                      "by_method": dict(sorted(pairs.counts.items())),
                      "hard_negatives_dropped": negatives_dropped, "over_max_pairs": sampled_out},
            "eval_corpus": len(pairs.corpus),
        }
        hashes = {"corpus_config": config_hash(cfg.corpus), "pairs_config": config_hash(cfg.pairs),
                  "inputs": content_hash({f.rel: str(f.size) for f in self.inputs.files})}
        write_rejects(corpus_dir / "rejects.jsonl", rejects)
        corpus_files = file_hashes(corpus_dir)
        manifest = {"stage": "prepare", "name": cfg.name, "input": cfg.corpus.input, "mrlkit_version": __version__,
                    "tokenizer": self.options.tokenizer, "chunk_tokens": self.options.max_tokens,
                    "chunk_overlap_tokens": self.options.overlap_tokens, "counts": counts,
                    "reject_fraction": round(fraction, 6), "hashes": {**hashes, "content": content_hash(corpus_files)},
                    "files": corpus_files}
        write_json(corpus_dir / "manifest.json", manifest)
        write_pairs_dir(pairs_dir, pairs)
        pairs_files = file_hashes(pairs_dir)
        write_json(pairs_dir / "manifest.json", {
            **{k: manifest[k] for k in ("stage", "name", "input", "mrlkit_version", "counts")},
            "source": cfg.pairs.source, "split": pairs.split,
            "hashes": {**hashes, "corpus_content": manifest["hashes"]["content"], "content": content_hash(pairs_files)},
            "files": pairs_files})
        # write_pairs_dir drained the spools; spools that sampling or mining replaced still have files here.
        # With that and publishing by rename, nothing the stage writes is on disk twice.
        shutil.rmtree(self.work / "spool", ignore_errors=True)
        storage.publish_dir(corpus_dir, layout.corpus_uri(cfg), consume=True)
        storage.publish_dir(pairs_dir, layout.pairs_uri(cfg), consume=True)
        seconds = time.monotonic() - started
        mb = chunk_counts["bytes_read"] / 1e6
        log.info("prepare: read %d, rejected %d (%s), empty %d, duplicate %d exact + %d near, %d chunks, "
                 "pairs %d train / %d test, eval corpus %d, %.1f MB in %.1fs", counts["read"], counts["rejected"],
                 ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none", counts["empty"],
                 counts["duplicate_exact"], counts["duplicate_near"], counts["chunks"], len(pairs.train),
                 len(pairs.test), len(pairs.corpus), mb, seconds)
        return {"corpus": layout.corpus_uri(cfg), "pairs": layout.pairs_uri(cfg), "read": counts["read"],
                "rejected": counts["rejected"], "rejected_by_reason": by_reason, "empty": counts["empty"],
                "duplicate_exact": counts["duplicate_exact"], "duplicate_near": counts["duplicate_near"],
                "chunks": counts["chunks"], "train_pairs": len(pairs.train), "test_pairs": len(pairs.test),
                "eval_corpus": len(pairs.corpus), "mb": round(mb, 3),
                "mb_per_s_chunking": round(mb / max(seconds_chunks, 1e-9), 3)}

    def _cap_pairs(self, pairs: Any) -> int:
        """Keep a seeded sample of ``pairs.max_pairs`` train pairs (in their original order)."""
        limit = self.cfg.pairs.max_pairs
        if limit is None or len(pairs.train) <= limit:
            return 0
        keep = set(random.Random(self.cfg.pairs.split.seed).sample(range(len(pairs.train)), limit))
        dropped = len(pairs.train) - limit
        pairs.train = RowSpool.of((row for i, row in enumerate(pairs.train) if i in keep), pairs.train.schema,
                                  self.work / "spool" if self.work is not None else None)
        return dropped

    def cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


__all__ = ["PrepareStage", "shard_options"]
