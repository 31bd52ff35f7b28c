"""Stage ``train``: MRL fine-tuning on Ray Train, checkpoints in storage, resume, export.

Run it::

    mrlkit train --config ray_jobs/configs/demo.yaml train.num_workers=2
    ray job submit --working-dir . -- python ray_jobs/train.py --config ray_jobs/configs/demo.yaml

What happens:

- ``__init__`` checks the options (no I/O); ``setup`` fails fast, before any worker
  starts, on unreachable storage, missing pairs, a base model that cannot be
  loaded or MRL dims larger than its embedding.
- ``run`` builds a ``TorchTrainer`` (one :func:`mrlkit.train.worker.train_loop` per
  worker; gloo on CPU, nccl on GPU) whose Ray Train storage is ``<root>/runs/<run>``
  (local or ``s3://``), keeps ``keep_checkpoints`` checkpoints (the best by the
  watched metric, and always the newest), and restarts failed workers from the
  newest checkpoint up to ``max_failures`` times.
- Submitting the same ``run`` again continues from its newest checkpoint; a run
  already trained and exported with the same ``train`` config is not repeated, its
  result is reported again.
- The best checkpoint is exported to ``<root>/models/<run>`` with ``mrlkit.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mrlkit import layout, storage
from mrlkit.config import config_hash, config_to_dict
from mrlkit.config_schema import PipelineConfig
from mrlkit.errors import ConfigError, MrlkitError
from mrlkit.models import MrlMetadata, read_metadata
from mrlkit.train.loss import check_dims
from mrlkit.train.resources import cpus_per_worker
from mrlkit.train.worker import best_metric_key, greater_is_better

log = logging.getLogger("mrlkit.train")

# Test hook: "STEP[:RANK]@MARKER_FILE", or several comma-separated ("3@/tmp/m1,7@/tmp/m2"), each firing once.
CRASH_ENV = "MRLKIT_TRAIN_CRASH_AT_STEP"  # see callbacks.CrashAtStepCallback
CRASH_FORMAT = "STEP[:RANK]@MARKER_FILE, or several comma-separated (3@/tmp/m1,7@/tmp/m2)"


class TrainError(MrlkitError):
    """Training did not finish (the workers failed more often than max_failures allows)."""


def model_embedding_dim(model_dir: str) -> int | None:
    """The output width of a local sentence-transformers folder from its module configs (no weights loaded).

    None when the folder does not say (then the dims are checked once the model is loaded on a worker).
    """
    root = Path(model_dir)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    width = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        conf = root / module.get("path", "") / "config.json"
        if kind in ("Pooling", "Dense") and conf.is_file():
            data = json.loads(conf.read_text())
            if kind == "Dense":
                width = data.get("out_features", width)
            else:  # sentence-transformers 6 says embedding_dimension, earlier releases word_embedding_dimension
                width = data.get("embedding_dimension", data.get("word_embedding_dimension", width))
    return int(width) if width else None


def parse_crash_spec(spec: str) -> dict[str, Any]:
    """One ``STEP[:RANK]@MARKER_FILE`` as ``{"step", "rank", "marker"}``; ValueError when malformed."""
    where, marker = spec.split("@", 1)
    step, _, rank = where.partition(":")
    if not marker.strip() or int(step) < 1 or int(rank or 0) < 0:
        raise ValueError(spec)
    return {"step": int(step), "rank": int(rank or 0), "marker": marker.strip()}


def crash_hooks_from_env() -> list[dict[str, Any]]:
    """Every crash the test hook asks for (empty when unset); each needs its own marker file, or it could not fire."""
    raw = os.environ.get(CRASH_ENV, "")
    if not raw.strip():
        return []
    try:
        hooks = [parse_crash_spec(spec.strip()) for spec in raw.split(",")]
    except ValueError:
        raise ConfigError(f"{CRASH_ENV}={raw!r} must look like {CRASH_FORMAT}") from None
    markers = [hook["marker"] for hook in hooks]
    repeated = sorted({m for m in markers if markers.count(m) > 1})
    if repeated:  # a shared marker would silently swallow every crash after the first
        raise ConfigError(f"{CRASH_ENV}={raw!r} uses the marker file {repeated[0]} twice; each crash needs its own")
    return hooks


class TrainStage:
    """``mrlkit train``: fine-tune ``train.base_model`` with MatryoshkaLoss on Ray Train."""

    name = "train"

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.train = cfg.train
        if self.train.use_gpu and self.train.precision == "fp16" and self.train.loss == "cached_mnrl":
            log.warning("train: fp16 with cached_mnrl can overflow; prefer precision auto (bf16)")
        self.run_uri = layout.run_uri(cfg)
        self.model_uri = layout.model_uri(cfg)
        self.pairs_uri = layout.pairs_uri(cfg)
        self.metric = best_metric_key(self.train)
        self.faults = crash_hooks_from_env()
        self.existing: MrlMetadata | None = None
        self._worker_cpus: int | None = None

    # -- setup: every check that can fail before a worker starts --------------------------------

    def setup(self) -> None:
        from mrlkit.models import resolve_model
        from mrlkit.train.data import text_columns

        storage.check_reachable(self.cfg.storage.root)
        storage.read_marker(self.pairs_uri)
        train_table = layout.read_table(self.pairs_uri, "train")
        text_columns(train_table.column_names)
        if train_table.num_rows < self.train.batch_size * self.train.num_workers:
            log.warning("train: %d pairs is less than one global batch (%d x %d workers)", train_table.num_rows,
                        self.train.batch_size, self.train.num_workers)
        if self.train.eval_strategy != "no":
            layout.read_table(self.pairs_uri, "test")
            layout.read_table(self.pairs_uri, "corpus")
        resolved = resolve_model(self.train.base_model)
        width = model_embedding_dim(resolved) if Path(resolved).is_dir() else None
        if width is None:
            from mrlkit.models import load_sentence_transformer

            width = load_sentence_transformer(self.train.base_model, device="cpu").get_embedding_dimension()
        check_dims(self.train.matryoshka_dims, width, self.train.base_model)
        self.existing = self._finished_run()

    def _finished_run(self) -> MrlMetadata | None:
        """The export of this very run and train config, when one is already published."""
        if not storage.is_published(self.model_uri):
            return None
        meta = read_metadata(self.model_uri)
        if meta is None or meta.training.get("run") != self.cfg.run:
            return None
        if meta.training.get("train_config_hash") != config_hash(self.train):
            log.info("train: %s was exported with another train config; continuing the run", self.model_uri)
            return None
        return meta

    # -- run ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.existing is not None:
            log.info("train: run %r already finished and exported to %s; nothing to do", self.cfg.run,
                     self.model_uri)
            return {"run": self.cfg.run, "model": self.model_uri, "already_finished": True,
                    "global_step": self.existing.training.get("global_step"), "metrics": self.existing.metrics}
        result = self._fit()
        checkpoint, metrics = self._choose_checkpoint(result)
        meta = MrlMetadata(
            base_model=self.train.base_model,
            matryoshka_dims=list(self.train.matryoshka_dims),
            training={"run": self.cfg.run, "train_config_hash": config_hash(self.train),
                      "config": config_to_dict(self.train), "global_step": metrics.get("step"),
                      "num_workers": self.train.num_workers, "best_metric": self.metric},
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        )
        from mrlkit.train.export import checkpoint_uri, export_checkpoint

        source = checkpoint_uri(checkpoint, self.cfg.storage.root)
        export_checkpoint(source, self.model_uri, meta)
        final = {**metrics, **(result.metrics or {})}  # a no-op resume reports nothing new: fall back
        return {"run": self.cfg.run, "model": self.model_uri, "checkpoint": source, "already_finished": False,
                "global_step": final.get("step"), "resumed_from_step": final.get("resumed_from_step"),
                "pairs_per_s": final.get("pairs_per_s"), "cpus_per_worker": self.worker_cpus(),
                "best_metric": self.metric,
                "best_value": metrics.get(self.metric) if self.metric else None}

    def trainer(self) -> Any:
        """The ``TorchTrainer`` for this config (built, not started)."""
        import ray.train
        from ray.train.torch import TorchTrainer

        from mrlkit.train.local_ray import LocalTorchTrainer
        from mrlkit.train.run_storage import ray_storage
        from mrlkit.train.worker import train_loop

        fs, path = ray_storage(storage.join(self.cfg.storage.root, "runs"))
        checkpointing = ray.train.CheckpointConfig(
            num_to_keep=self.train.keep_checkpoints,
            checkpoint_score_attribute=self.metric,
            checkpoint_score_order="max" if greater_is_better(self.train) else "min",
        )
        cpus = self.worker_cpus()
        resources = {"CPU": cpus, **({"GPU": 1} if self.train.use_gpu else {})}
        trainer_cls = TorchTrainer if self.on_cluster() else LocalTorchTrainer
        return trainer_cls(
            train_loop,
            train_loop_config={"config": config_to_dict(self.cfg), "use_ray": True, "fault": self.faults,
                               "cpus_per_worker": cpus},
            scaling_config=ray.train.ScalingConfig(num_workers=self.train.num_workers, use_gpu=self.train.use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=self.cfg.run, storage_path=path, storage_filesystem=fs,
                failure_config=ray.train.FailureConfig(max_failures=self.train.max_failures),
                checkpoint_config=checkpointing,
            ),
        )

    def on_cluster(self) -> bool:
        """Whether this stage joins a Ray cluster (``ray.address`` or ``RAY_ADDRESS``) rather than its own Ray."""
        from mrlkit.ray_runtime import cluster_address

        return cluster_address(self.cfg.ray) is not None

    def worker_cpus(self) -> int:
        """The CPUs each worker reserves, resolved once on the initialised Ray (``mrlkit.train.resources``)."""
        if self._worker_cpus is None:
            import ray

            self._worker_cpus, why = cpus_per_worker(self.train, ray)
            log.info("train: each worker reserves %d CPU(s) (%s)", self._worker_cpus, why)
        return self._worker_cpus

    def _fit(self) -> Any:
        import ray.train

        from mrlkit.ray_runtime import init_ray

        ray = init_ray(self.cfg.ray)
        self._check_resources(ray)
        log.info("train: run %r on %d %s worker(s); Ray Train storage %s", self.cfg.run, self.train.num_workers,
                 "GPU" if self.train.use_gpu else "CPU", self.run_uri)
        try:
            return self.trainer().fit()
        except ray.train.TrainingFailedError as exc:
            raise TrainError(
                f"training of run {self.cfg.run!r} failed ({str(exc).splitlines()[0][:300]}); its checkpoints stay "
                f"in {self.run_uri}: run the same command again to continue from the newest one"
            ) from exc

    def _check_resources(self, ray: Any) -> None:
        """A local Ray never grows: refuse a worker group it cannot hold instead of waiting for it forever."""
        need = {"CPU": self.train.num_workers * self.worker_cpus()}
        if self.train.use_gpu:
            need["GPU"] = self.train.num_workers
        have = ray.cluster_resources()
        short = {k: (v, have.get(k, 0)) for k, v in need.items() if have.get(k, 0) < v}
        if not short:
            return
        what = ", ".join(f"{v} {k} (the cluster has {h:g})" for k, (v, h) in short.items())
        if self.on_cluster():
            log.warning("train: the worker group needs %s; waiting for the cluster to scale up", what)
            return
        raise ConfigError(f"train.num_workers={self.train.num_workers} x train.cpus_per_worker="
                          f"{self.worker_cpus()} needs {what} on this local Ray; lower them or raise "
                          f"ray.num_cpus")

    def _choose_checkpoint(self, result: Any) -> tuple[Any, dict[str, Any]]:
        """The best kept checkpoint by the watched metric, else the newest."""
        scored = [(c, m) for c, m in (result.best_checkpoints or []) if self.metric and self.metric in m]
        if scored:
            pick = max if greater_is_better(self.train) else min
            return pick(scored, key=lambda cm: cm[1][self.metric])
        if result.checkpoint is None:
            raise TrainError(f"run {self.cfg.run!r} finished without a checkpoint in {self.run_uri}")
        newest = [m for c, m in (result.best_checkpoints or []) if c.path == result.checkpoint.path]
        return result.checkpoint, (newest[0] if newest else dict(result.metrics or {}))

    def cleanup(self) -> None:
        """Nothing to release: Ray stays up for the next stage (the job's driver exits with it)."""
