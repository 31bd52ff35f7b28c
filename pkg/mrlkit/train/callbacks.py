"""Trainer callbacks: progress (loss, pairs/s, ETA), Ray reporting with retried uploads, a crash hook for tests.

They are plain ``transformers.TrainerCallback`` objects so the same worker loop
runs without Ray (a single-GPU benchmark machine): only :class:`RayReportCallback`
touches Ray, and the loop adds it only under Ray Train.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback

from mrlkit import s3

log = logging.getLogger("mrlkit.train")
T = TypeVar("T")

# Inside a Ray checkpoint: the Hugging Face checkpoint folder (model + optimizer + scheduler + trainer state).
HF_CHECKPOINT_DIR = "checkpoint"
COMMIT_TIMEOUT_S = 120.0


class ProgressCallback(TrainerCallback):
    """Adds ``pairs_per_s``, ``eta_s`` and ``resumed_from_step`` to every log and writes one line per log.

    ``pairs_per_step`` is the global batch (per-device batch x workers); throughput is
    measured from the first step this process ran, so a resumed run is not credited
    with the steps it skipped.
    """

    def __init__(self, pairs_per_step: int, is_main: bool = True):
        self.pairs_per_step = pairs_per_step
        self.is_main = is_main
        self.start_step = 0
        self.start_time = 0.0
        self.resumed_from_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        self.resumed_from_step = state.global_step
        self.start_time = time.perf_counter()
        if self.is_main:
            if self.start_step:
                log.info("train: resuming at step %d of %d", state.global_step, state.max_steps)
            else:
                log.info("train: starting, %d steps of %d pairs", state.max_steps, self.pairs_per_step)

    def progress(self, state) -> dict[str, float]:
        done = state.global_step - self.start_step
        elapsed = max(time.perf_counter() - self.start_time, 1e-9)
        step_s = elapsed / done if done else 0.0
        return {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "pairs_per_s": round(done * self.pairs_per_step / elapsed, 2),
            "eta_s": round(step_s * max(state.max_steps - state.global_step, 0), 1),
            "resumed_from_step": self.resumed_from_step,
        }

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs.update(self.progress(state))
        if self.is_main and "loss" in logs:
            log.info("train: step %d/%d loss %.4f lr %.2e %.1f pairs/s eta %.0fs", state.global_step,
                     state.max_steps, logs["loss"], logs.get("learning_rate", 0.0), logs["pairs_per_s"],
                     logs["eta_s"])
        elif self.is_main and any(k.startswith("eval_") for k in logs):
            shown = {k: round(v, 4) for k, v in logs.items() if k.startswith("eval_") and "ndcg@10" in k}
            log.info("train: step %d eval %s", state.global_step, shown)


class CrashAtStepCallback(TrainerCallback):
    """Test hook: the worker of ``rank`` exits abruptly at ``step``, once (a marker file remembers it).

    Exercised by the failure tests; set through ``MRLKIT_TRAIN_CRASH_AT_STEP`` on the driver (several
    comma-separated specs give one callback each). The marker says ``crashed at step N``, and the next
    start of that worker adds ``resumed at step M``, so a test can tell how many steps each crash cost.
    """

    def __init__(self, step: int, rank: int, marker: str, my_rank: int):
        self.step, self.rank, self.marker, self.my_rank = step, rank, marker, my_rank

    def on_train_begin(self, args, state, control, **kwargs):
        marker = Path(self.marker)
        if self.my_rank == self.rank and marker.is_file() and "resumed" not in marker.read_text():
            with marker.open("a") as fh:
                fh.write(f"resumed at step {state.global_step}\n")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.my_rank == self.rank and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"crashed at step {state.global_step}\n")
            log.warning("train: test hook: worker %d exits at step %d", self.my_rank, state.global_step)
            os._exit(17)


def with_backoff(action: Callable[[], T], what: str, attempts: int = 5, first_delay: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``action``, retrying any ``OSError`` (pyarrow's S3 errors are OSErrors) with :func:`mrlkit.s3.retry`."""
    return s3.retry(action, what, lambda exc: isinstance(exc, OSError), attempts, first_delay=first_delay,
                    max_delay=8.0, sleep=sleep)


def retrying_upload(checkpoint: Any, checkpoint_dir_name: str) -> Any:
    """``checkpoint_upload_fn`` for ``ray.train.report``: Ray's own copy, retried on transient storage errors.

    A failed attempt may leave part of the folder behind; the next attempt rewrites every file,
    and Ray only records the checkpoint once this returns, so a reader never sees it half-written.
    """
    import ray.train

    run_context_storage = ray.train.get_context().get_storage()
    return with_backoff(lambda: run_context_storage.persist_current_checkpoint(checkpoint, checkpoint_dir_name),
                        f"checkpoint upload {checkpoint_dir_name}", attempts=s3.attempts())


class RayReportCallback(TrainerCallback):
    """Report metrics to Ray Train at every log, and the newest checkpoint at every save.

    Like Ray's ``RayTrainReportCallback``, but only rank 0 uploads (every rank calls
    ``ray.train.report`` the same number of times, as Ray requires), each worker uses its
    own ``output_dir``, and uploads go through :func:`retrying_upload`.
    """

    def __init__(self, rank: int, progress: ProgressCallback):
        self.rank = rank
        self.progress = progress
        self.latest: dict[str, Any] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        import ray.train

        metrics = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        self.latest.update(metrics)
        ray.train.report(metrics=metrics)

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        metrics = {**self.latest, **self.progress.progress(state), "epoch": state.epoch}
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.rank != 0 or not source.is_dir():
            ray.train.report(metrics=metrics)
            return
        with tempfile.TemporaryDirectory(prefix="mrlkit-ckpt-") as tmp:
            shutil.copytree(source, Path(tmp, HF_CHECKPOINT_DIR))
            ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_upload_fn=retrying_upload)
        # Wait until the controller has recorded it: a worker that dies right after uploading must not take
        # the only record of its newest checkpoint with it (the controller polls workers every few seconds).
        from ray.train import CheckpointConsistencyMode

        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED,
                                               timeout_s=COMMIT_TIMEOUT_S)
