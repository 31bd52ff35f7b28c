"""Stage ``evaluate``: every model, every Matryoshka dimension, one report.

Run it with::

    mrlkit evaluate --config ray_jobs/configs/demo.yaml
    mrlkit evaluate --config ray_jobs/configs/demo.yaml evaluate.num_workers=4 evaluate.use_gpu=true
    ray job submit --working-dir . -- python ray_jobs/evaluate.py --config ray_jobs/configs/demo.yaml

Reads the test split and evaluation corpus of ``<root>/pairs/<name>`` and, by
default, compares ``train.base_model`` (the baseline) with this run's exported
model ``<root>/models/<run>`` (fine-tuned); ``evaluate.models`` names any other
list. Each model encodes the corpus and the queries once at full dimension
(sharded over ``evaluate.num_workers`` Ray actors when > 1) and is scored at
every dimension of ``evaluate.dims`` (default ``train.matryoshka_dims``).
Publishes ``<root>/reports/<run>/``: report.json, report.md, ndcg_by_dim.png.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mrlkit import layout, storage
from mrlkit.config import config_to_dict
from mrlkit.config_schema import PipelineConfig
from mrlkit.errors import ConfigError, ModelError
from mrlkit.evaluate.encode import RayShardedEncoder, encode_in_process, load_encoder, pick_device
from mrlkit.evaluate.evaluator import EvaluationError, MatryoshkaIREvaluator, load_ir_data
from mrlkit.evaluate.plot import plot_ndcg_by_dim
from mrlkit.evaluate.report import ModelResult, hardware_info, markdown_table, render_markdown, serve_at

log = logging.getLogger(__name__)


class EvaluateStage:
    """Base vs fine-tuned (or any list of models) at every dimension on the same split."""

    name = "evaluate"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        ev = cfg.evaluate
        self.dims = sorted(set(cfg.eval_dims), reverse=True)
        if ev.models:
            self.models = list(ev.models)
            self.labels = _labels(self.models)
        else:
            self.models = [cfg.train.base_model, layout.model_uri(cfg)]
            self.labels = ["baseline", "fine-tuned"]
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"evaluate.models: lists a model twice ({self.models}); name each model once")
        self.pairs_uri = layout.pairs_uri(cfg)
        self.report_uri = layout.report_uri(cfg)
        self.device = "cpu"
        self.widths: dict[str, int] = {}
        self.trained_dims: dict[str, list[int] | None] = {}
        self.evaluator: MatryoshkaIREvaluator | None = None
        self.sampled_out = 0
        self._workdir: Path | None = None

    # -- setup: everything that can fail, before any encoding ---------------------------------------

    def setup(self) -> None:
        ev = self.cfg.evaluate
        self.device = pick_device(ev.use_gpu)
        storage.check_reachable(self.cfg.storage.root)
        queries, corpus, relevant = load_ir_data(self.pairs_uri)
        corpus = self._limit_corpus(corpus, relevant)
        self.evaluator = MatryoshkaIREvaluator(queries, corpus, relevant, self.dims, name="",
                                               batch_size=ev.batch_size)
        for ref in self.models:
            self._check_model(ref)
        if ev.num_workers > 1:
            from mrlkit.ray_runtime import init_ray

            init_ray(self.cfg.ray)
        self._workdir = Path(tempfile.mkdtemp(prefix="mrlkit-evaluate-"))

    def _limit_corpus(self, corpus: dict[str, str], relevant: dict[str, set[str]]) -> dict[str, str]:
        """``evaluate.max_corpus_size``: keep every relevant document, fill up with a seeded sample of the rest."""
        limit = self.cfg.evaluate.max_corpus_size
        if limit is None or len(corpus) <= limit:
            return corpus
        needed = {cid for ids in relevant.values() for cid in ids}
        others = sorted(set(corpus) - needed)
        keep = needed | set(random.Random(0).sample(others, max(0, limit - len(needed))))
        self.sampled_out = len(corpus) - len(keep)
        log.warning("evaluate: max_corpus_size=%d keeps %d of %d documents (every relevant one)",
                    limit, len(keep), len(corpus))
        return {cid: text for cid, text in corpus.items() if cid in keep}

    def _check_model(self, ref: str) -> None:
        from mrlkit.models import load_sentence_transformer, read_metadata

        hint = ""
        if not self.cfg.evaluate.models and ref == layout.model_uri(self.cfg):
            hint = " This run's fine-tuned model is missing: run `mrlkit train` first, or set evaluate.models."
        try:
            model = load_sentence_transformer(ref, device="cpu")
        except storage.StorageNotFound as exc:
            raise ModelError(f"model {ref!r} is not published ({exc}).{hint}") from None
        except ModelError as exc:
            raise ModelError(f"cannot evaluate model {ref!r}: {exc}{hint}") from None
        width = int(encode_in_process(model, ["width probe"], "document", 1).shape[1])
        too_big = [d for d in self.dims if d > width]
        if too_big:
            raise ConfigError(f"evaluate.dims: {too_big} larger than model {ref!r}'s embedding dimension ({width}); "
                              f"use dims <= {width}")
        meta = read_metadata(ref) if (storage.is_s3_uri(ref) or Path(ref).is_dir()) else None
        self.widths[ref] = width
        self.trained_dims[ref] = meta.matryoshka_dims if meta else None
        if meta and hint and meta.base_model != self.cfg.train.base_model:
            log.warning("evaluate: %s was fine-tuned from %s, but the baseline is train.base_model=%s",
                        ref, meta.base_model, self.cfg.train.base_model)

    # -- run -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        assert self.evaluator is not None and self._workdir is not None, "call setup() first"
        started = time.perf_counter()
        results = [self._evaluate_model(ref, label) for ref, label in zip(self.models, self.labels, strict=True)]
        report = self._report(results, time.perf_counter() - started)
        out = self._workdir / "report"
        out.mkdir()
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        plot_ndcg_by_dim(results, out / "ndcg_by_dim.png", title=f"NDCG@10 by dimension: {self.cfg.run}")
        (out / "report.md").write_text(render_markdown(report, results), encoding="utf-8")
        storage.publish_dir(out, self.report_uri, extra={"stage": self.name, "run": self.cfg.run})
        table = markdown_table(results)
        rec = report["serve_at"]
        log.info("evaluate: NDCG@10 by dimension\n%s\nserve at %d dims (%.1f%% less vector storage); report in %s",
                 table, rec["dim"], rec["storage_saving_pct"], self.report_uri)
        return {
            "report": self.report_uri,
            "plot": storage.join(self.report_uri, "ndcg_by_dim.png"),
            "table": table,
            "serve_at": report["serve_at"],
            "models": {r.label: r.ref for r in results},
            "ndcg@10": {r.label: {str(d): m["ndcg@10"] for d, m in r.metrics.items()} for r in results},
        }

    def _evaluate_model(self, ref: str, label: str) -> ModelResult:
        ev, evaluator = self.cfg.evaluate, self.evaluator
        assert evaluator is not None
        t0 = time.perf_counter()
        log.info("evaluate: %s (%s): %d queries, %d documents, dims %s", label, ref, len(evaluator.queries),
                 len(evaluator.corpus), self.dims)
        if ev.num_workers > 1:
            with RayShardedEncoder(ref, ev.num_workers, ev.batch_size, ev.use_gpu, ev.unpad) as encoder:
                evaluator.encoder = encoder
                t1 = time.perf_counter()
                query_emb, corpus_emb = evaluator.embed(None)
            evaluator.encoder = None
        else:
            model, unpadded = load_encoder(ref, self.device, ev.unpad)
            t1 = time.perf_counter()
            query_emb, corpus_emb = evaluator.embed(model)
            if unpadded is not None:
                log.info("evaluate: %s encoded real tokens only (evaluate.unpad): %s", label, unpadded.summary())
            del model
        t2 = time.perf_counter()
        metrics = evaluator.score(query_emb, corpus_emb)
        t3 = time.perf_counter()
        log.info("evaluate: %s ndcg@10 %s", label, ", ".join(f"{d}: {metrics[d]['ndcg@10']:.4f}" for d in self.dims))
        return ModelResult(label=label, ref=ref, metrics=metrics, embedding_dim=self.widths[ref],
                           matryoshka_dims=self.trained_dims[ref],
                           timings={"load_s": t1 - t0, "encode_s": t2 - t1, "score_s": t3 - t2})

    def _report(self, results: list[ModelResult], total_s: float) -> dict[str, Any]:
        evaluator = self.evaluator
        assert evaluator is not None
        marker = storage.read_marker(self.pairs_uri)
        files = {rel: meta["sha256"] for rel, meta in sorted(marker["files"].items())}
        split_uri = storage.join(self.pairs_uri, "split.json")
        split = storage.read_json(split_uri) if storage.exists(split_uri) else None
        improvement = None
        if len(results) > 1:
            first, last = results[0].metrics, results[-1].metrics
            improvement = {str(d): ((last[d]["ndcg@10"] - first[d]["ndcg@10"]) / first[d]["ndcg@10"] * 100
                                    if first[d]["ndcg@10"] else None) for d in self.dims}
        return {
            "run": self.cfg.run, "name": self.cfg.name, "report_uri": self.report_uri,
            "dims": self.dims, "num_queries": len(evaluator.queries), "corpus_size": len(evaluator.corpus),
            "corpus_sampled_out": self.sampled_out,
            "dataset": {"uri": self.pairs_uri, "published_at": marker.get("published_at"), "files_sha256": files,
                        "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()},
            "split": split,
            "models": [r.to_json() for r in results],
            "ndcg@10_improvement_pct": improvement,
            "serve_at": serve_at(results[-1], self.cfg.evaluate.serve_at_fraction),
            "hardware": hardware_info(),
            "timings_s": {"total": round(total_s, 3), **{r.label: round(sum(r.timings.values()), 3) for r in results}},
            "config": {"evaluate": config_to_dict(self.cfg.evaluate), "device": self.device},
        }

    def cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _labels(refs: list[str]) -> list[str]:
    """Short, unique table labels from model references (the last path part)."""
    labels: list[str] = []
    for ref in refs:
        base = ref.rstrip("/").rsplit("/", 1)[-1] or ref
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return labels


__all__ = ["EvaluateStage", "EvaluationError"]
