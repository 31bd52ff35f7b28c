"""The per-worker training loop: sentence-transformers' trainer, the MRL loss, MRL evaluation.

Under Ray Train every worker runs :func:`train_loop` (TorchTrainer has already set
up the process group: gloo on CPU, nccl on GPU, and RANK/LOCAL_RANK/WORLD_SIZE,
which the Hugging Face trainer reads to wrap the model in DDP). Without Ray (a
single-GPU benchmark machine, a debugger) the same function runs in-process::

    from mrlkit.config import config_to_dict, load_config
    from mrlkit.train.worker import train_loop
    cfg = load_config("ray_jobs/configs/demo.yaml", ["train.max_steps=20"])
    summary = train_loop({"config": config_to_dict(cfg), "output_dir": "/tmp/mrl-train"})

Resume: under Ray, ``ray.train.get_checkpoint()`` holds the newest reported
checkpoint (after a worker failure, or when a run of the same name is submitted
again); it is downloaded and handed to ``trainer.train(resume_from_checkpoint=...)``,
which restores weights, optimizer, scheduler, step counter and data order.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mrlkit import layout
from mrlkit.config import config_from_dict
from mrlkit.config_schema import PipelineConfig, TrainConfig
from mrlkit.train import callbacks as cb
from mrlkit.train.data import load_eval_dataset, load_train_dataset
from mrlkit.train.loss import build_loss
from mrlkit.train.model_settings import prepare_model
from mrlkit.train.pretokenize import pretokenize_collator

log = logging.getLogger("mrlkit.train")

EVALUATOR_NAME = "heldout"
GREATER_IS_BETTER_EXCEPT = ("loss",)


def primary_dim(train: TrainConfig) -> int:
    """The dimension best-model selection and early stopping watch (default: the largest)."""
    return train.best_model_dim or train.matryoshka_dims[0]


def best_metric_key(train: TrainConfig) -> str | None:
    """The full metric name in the trainer's logs, e.g. ``eval_heldout_dim128_ndcg@10``; None without evaluation."""
    if train.eval_strategy == "no":
        return None
    if train.metric_for_best_model == "loss":
        return "eval_loss"
    return f"eval_{EVALUATOR_NAME}_dim{primary_dim(train)}_{train.metric_for_best_model}"


def greater_is_better(train: TrainConfig) -> bool:
    return train.metric_for_best_model not in GREATER_IS_BETTER_EXCEPT


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX).

    Why it matters: there PyTorch's bf16 kernels trained MiniLM 1.3x faster than fp32; a CPU without
    them converts bf16 in software, usually slower than fp32. The probes are private to ``torch.cpu``
    (its compiler uses them); a torch without them counts as no bf16.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def hardware_features(use_gpu: bool) -> dict[str, bool]:
    """What the worker's device supports: bf16 (Ampere+ GPUs, CPUs with AVX512-BF16 or AMX), tf32 and
    fused AdamW (GPUs). ``cuda`` is False for a GPU worker that sees no CUDA device."""
    import torch

    if use_gpu and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability()
        return {"cuda": True, "bf16": torch.cuda.is_bf16_supported(), "tf32": major >= 8, "fused_adamw": True}
    return {"cuda": False, "bf16": not use_gpu and cpu_computes_bf16(), "tf32": False, "fused_adamw": False}


def precision_args(train: TrainConfig) -> dict[str, Any]:
    """bf16/tf32 and the fused optimizer only where the hardware has them (``precision: auto``).

    On a CPU, ``bf16`` is autocast as on a GPU (weights and optimizer state stay fp32).
    """
    feats = hardware_features(train.use_gpu)
    if train.use_gpu and not feats["cuda"]:
        raise RuntimeError("train.use_gpu is true but this worker sees no CUDA device")
    bf16 = train.precision == "bf16" or (train.precision == "auto" and feats["bf16"])
    if bf16 and not train.use_gpu and not feats["bf16"]:
        log.warning("train: precision bf16 on a CPU without bf16 arithmetic (AVX512-BF16 or AMX): it is emulated, "
                    "likely slower than fp32; precision auto picks what the hardware has")
    return {
        "bf16": bf16,
        "fp16": train.precision == "fp16",
        "tf32": True if feats["tf32"] and train.precision in ("auto", "bf16") else None,
        "optim": "adamw_torch_fused" if feats["fused_adamw"] else "adamw_torch",
        "use_cpu": not train.use_gpu,
    }


def schedule_args(train: TrainConfig) -> dict[str, Any]:
    """Evaluation and checkpoint cadence; checkpoints fall on evaluation steps so each carries a fresh score."""
    if train.eval_strategy == "steps":
        save = {"save_strategy": "steps", "save_steps": train.save_steps or train.eval_steps}
        evaluation = {"eval_strategy": "steps", "eval_steps": train.eval_steps}
    else:
        save = ({"save_strategy": "steps", "save_steps": train.save_steps} if train.save_steps
                else {"save_strategy": "epoch"})
        evaluation = {"eval_strategy": train.eval_strategy}
    return {**evaluation, **save}


def loader_args(train: TrainConfig) -> dict[str, Any]:
    """Batches tokenized in ``train.dataloader_workers`` loader processes, ahead of the step that needs them.

    Why: the data collator tokenizes each batch, and in the training process that time adds to every
    step of a GPU step bound by its host. Loaders stay alive across epochs (persistent), so each epoch
    does not fork them again; each keeps PyTorch's default two batches ready.
    """
    return {"dataloader_num_workers": train.dataloader_workers,
            "dataloader_persistent_workers": train.dataloader_workers > 0}


def training_arguments(train: TrainConfig, output_dir: str, world_size: int) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments

    from mrlkit.train.sampler import batch_sampler

    metric = best_metric_key(train)
    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=train.weight_decay,
        batch_sampler=batch_sampler(train.length_bucketing),
        metric_for_best_model=metric,
        greater_is_better=greater_is_better(train) if metric else None,
        load_best_model_at_end=False,  # the launcher exports the best Ray checkpoint; robust across restarts
        save_total_limit=train.keep_checkpoints,
        logging_steps=max(1, min(10, (train.eval_steps or 10))),
        logging_first_step=True,
        # The trainer's default hides a NaN or infinite loss from the logs (it logs the running average
        # instead), and checking for one reads the loss back from the GPU, a sync, every step: show it.
        logging_nan_inf_filter=False,
        seed=train.seed,
        data_seed=train.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=world_size > 1,  # equal batch counts on every worker keep DDP in step
        **loader_args(train),
        **schedule_args(train),
        **precision_args(train),
    )


def _ray_context() -> tuple[int, int, Any]:
    """(rank, world size, checkpoint to resume from) inside Ray Train."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.get_checkpoint()


def _fault_callbacks(faults: list[dict[str, Any]] | dict[str, Any] | None, rank: int) -> list[Any]:
    """One crash hook per spec (a single dict, the older form, is one spec)."""
    specs = [faults] if isinstance(faults, dict) else list(faults or [])
    return [cb.CrashAtStepCallback(int(f["step"]), int(f.get("rank", 0)), str(f["marker"]), rank) for f in specs]


def build_evaluator(cfg: PipelineConfig) -> Any:
    """The MRL evaluator over the held-out queries and evaluation corpus: NDCG@10 etc. at every dim, one encoding."""
    from mrlkit.evaluate.evaluator import MatryoshkaIREvaluator, load_ir_data

    queries, corpus, relevant = load_ir_data(layout.pairs_uri(cfg))
    return MatryoshkaIREvaluator(queries, corpus, relevant, dims=list(cfg.train.matryoshka_dims),
                                 name=EVALUATOR_NAME, batch_size=max(cfg.train.batch_size, 32),
                                 primary_dim=primary_dim(cfg.train))


def _finished_step(trainer: Any, checkpoint_dir: str) -> int | None:
    """The checkpoint's step when it already reached this config's last step, else None.

    The Hugging Face trainer, resumed at its final step, would still run one more step before
    noticing; a re-submitted finished run must not train (or report) anything.
    """
    import json
    import math

    state_file = Path(checkpoint_dir) / "trainer_state.json"
    if not state_file.is_file():
        return None
    step = int(json.loads(state_file.read_text()).get("global_step", 0))
    args = trainer.args
    if args.max_steps > 0:
        last = args.max_steps
    else:
        per_epoch = max(len(trainer.get_train_dataloader()) // args.gradient_accumulation_steps, 1)
        last = math.ceil(args.num_train_epochs * per_epoch)
    return step if step >= last else None


RESUME_DIR = "resume-from"  # in the worker's own output folder: its private copy of the checkpoint


def download_checkpoint(checkpoint: Any, into: Path) -> Path:
    """This worker's own copy of a Ray checkpoint; returns its Hugging Face checkpoint folder.

    Why not ``checkpoint.as_directory()``: it shares one download folder among the workers of a
    node, and a worker that takes the download lock after another worker's download finished
    downloads again into that folder while the other is reading it (ray-project/ray#48726, open).
    CI saw exactly that once: a replacement worker failed with safetensors' "header too small" on
    a half-rewritten ``model.safetensors``. A private folder per worker costs one download per worker.
    """
    local = Path(checkpoint.to_directory(str(into)))
    hf_checkpoint = local / cb.HF_CHECKPOINT_DIR
    if not hf_checkpoint.is_dir():
        raise RuntimeError(f"Ray checkpoint {checkpoint.path} has no {cb.HF_CHECKPOINT_DIR}/ folder")
    return hf_checkpoint


def _worker_logging() -> None:
    """Ray worker processes start with no handler for ``mrlkit`` loggers; progress lines must still show,
    and they replace Ray Train's own line per report."""
    logger = logging.getLogger("mrlkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:  # Ray Train logs each report's metrics as one long line (its logger is named by its file's path);
        # the progress line says the same readably, so the driver's log keeps one line per log step
        from ray.train.v2._internal.execution import context as ray_train_context

        logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass


def train_loop(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Train on this worker. ``loop_config``: ``config`` (the pipeline config as plain data), optional
    ``use_ray`` (report to Ray Train, resume from its checkpoint), ``output_dir`` (local scratch),
    ``resume_from`` (a local Hugging Face checkpoint folder, without Ray), ``cpus_per_worker`` (the CPUs
    reserved for this worker: a CPU worker computes on them), ``fault`` (test hook: a list of crash specs,
    or one).

    Returns the final metrics (every rank; only rank 0's reach the Ray checkpoint).
    """
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    from mrlkit.models import avoid_cudnn_attention, resolve_model

    cfg = config_from_dict(loop_config["config"])
    train = cfg.train
    if train.use_gpu:
        avoid_cudnn_attention()
    use_ray = bool(loop_config.get("use_ray"))
    if use_ray:
        _worker_logging()
    if train.dataloader_workers:
        # the loaders are forked from this process; a Rust tokenizer that already ran threads here would
        # deadlock in them (Hugging Face tokenizers warns and turns its threads off): keep them off
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank, world_size, ray_checkpoint = _ray_context() if use_ray else (0, 1, None)
    cpus = loop_config.get("cpus_per_worker")
    if cpus and not train.use_gpu:
        # the CPUs Ray reserved for this worker, less one per loader process: said here, not left to
        # whatever OMP_NUM_THREADS the launcher happened to set
        torch.set_num_threads(max(1, cpus - train.dataloader_workers))
    torch.manual_seed(train.seed)
    own_scratch = not loop_config.get("output_dir")
    scratch = Path(loop_config.get("output_dir") or tempfile.mkdtemp(prefix="mrlkit-train-"))
    output_dir = scratch / f"rank{rank}"
    output_dir.mkdir(parents=True, exist_ok=True)

    model = SentenceTransformer(resolve_model(train.base_model), device="cpu")
    encoder_wrapper = prepare_model(model, train, rank)
    train_ds = load_train_dataset(layout.pairs_uri(cfg), train.max_train_pairs)
    evaluating = train.eval_strategy != "no"
    eval_ds = load_eval_dataset(layout.pairs_uri(cfg)) if evaluating else None
    evaluator = build_evaluator(cfg) if evaluating else None
    args = training_arguments(train, str(output_dir), world_size)
    log.info("train: worker %d computes in %s (precision %s)", rank,
             "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32", train.precision)
    loss = build_loss(model, train, distributed=world_size > 1)

    progress = cb.ProgressCallback(pairs_per_step=train.batch_size * world_size, is_main=rank == 0)
    # No extra "save at the end" hook needed: the trainer saves (and, with steps, evaluates) at the last step
    # for a steps strategy and at the closing epoch end for an epoch strategy, so every run ends on a checkpoint.
    callbacks: list[Any] = [progress]
    if train.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    if use_ray:
        callbacks.append(cb.RayReportCallback(rank, progress))
    callbacks += _fault_callbacks(loop_config.get("fault"), rank)

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                         loss=loss, evaluator=evaluator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # ProgressCallback logs one readable line instead of raw dicts
    if use_ray:
        from ray.train.huggingface.transformers import prepare_trainer

        trainer = prepare_trainer(trainer)

    resume = loop_config.get("resume_from")
    started = time.perf_counter()
    downloaded = output_dir / RESUME_DIR
    try:
        if ray_checkpoint is not None:
            resume = str(download_checkpoint(ray_checkpoint, downloaded))
            log.info("train: worker %d resumes from %s", rank, ray_checkpoint.path)
        done = _finished_step(trainer, resume) if resume else None
        # Only a run that trains tokenizes, and inside train_seconds as per-batch tokenizing was before.
        pretokenized = (pretokenize_collator(trainer.data_collator, [train_ds, eval_ds])
                        if train.pretokenize and done is None else None)
        result = None if done is not None else trainer.train(resume_from_checkpoint=resume)
    finally:
        shutil.rmtree(downloaded, ignore_errors=True)
    seconds = time.perf_counter() - started
    if result is None:  # the checkpoint already holds the whole run: nothing to train, nothing new to report
        log.info("train: worker %d: the checkpoint is at the last step (%d); nothing left to train", rank, done)
        summary = {"step": done, "resumed_from_step": done, "pairs_per_s": 0.0, "train_loss": None,
                   "train_seconds": 0.0, "world_size": world_size, "best_metric": None, "output_dir": str(output_dir)}
        return summary
    summary = {**progress.progress(trainer.state), "train_loss": result.training_loss,
               "train_seconds": round(seconds, 2), "world_size": world_size, "torch_threads": torch.get_num_threads(),
               "best_metric": trainer.state.best_metric, "output_dir": str(output_dir)}
    if pretokenized is not None:
        summary["pretokenized"] = {"texts": pretokenized.texts, "tokens": pretokenized.tokens,
                                   "seconds": round(pretokenized.seconds, 2),
                                   "fallback_batches": pretokenized.fallback_batches}  # this process's only
    if train.cuda_graphs and encoder_wrapper is not None:
        summary["cuda_graphs"] = {"captured": len(encoder_wrapper.graphs), "replays": encoder_wrapper.replays,
                                  "eager_passes": encoder_wrapper.eager_passes}
    elif encoder_wrapper is not None:
        summary["unpadded"] = encoder_wrapper.summary()
    if rank == 0:
        log.info("train: worker done: %s", summary)
    if use_ray and own_scratch:  # under Ray the checkpoints live in Ray storage; local copies are scratch
        shutil.rmtree(scratch, ignore_errors=True)
    return summary
