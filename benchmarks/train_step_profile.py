"""Where a training step's time goes: a bare PyTorch step against sentence-transformers' trainer.

Same model (random init, ``--model-shape``), same pairs and batch as ``train_throughput.py``:

1. ``bare``: tokenize, forward anchors and positives (bf16 autocast on a GPU), the loss, backward, AdamW
   (fused on a GPU), the model in training mode as the trainer runs it: with the floor loss (one
   in-batch-negatives cross-entropy), the seed's per-dim MatryoshkaLoss, mrlkit's fused one, and mrlkit's
   with ``train.dropout=0``. The trainer's own cost per step is its step less the bare step with its loss.
2. ``trainer``: the seed configuration through ``SentenceTransformerTrainer``, with ``torch.profiler``
   over steps 10-29: the top operators by CPU and by GPU time, and the GPU-busy share of the wall time.
3. ``phases``: the same trainer unprofiled, the GPU synchronized at each step hook: ms per phase
   (forward+loss+backward+clip, optimizer, scheduler+zero_grad, log/save+next batch), with the seed's
   loss and NaN filter and with mrlkit's (the fused loss, no NaN filter's per-step sync).

Both run with PyTorch's cuDNN attention off, as mrlkit trains (``--cudnn-attention`` keeps PyTorch's
default): with it on, its per-shape graph building hides everything else (``train_gpu_h100.json``).

Run on a GPU machine::

    python benchmarks/train_step_profile.py --model-shape bge-base --lengths financial --tokenizer .devbench/tok

or on a CPU, with a model that computes little, so that a step is mostly the host's work (a stand-in for a
GPU step bound by its host)::

    python benchmarks/train_step_profile.py --device cpu --model-shape launch --lengths short --seq-len 128 \
        --pairs 1024 --threads 1 --out benchmarks/results/train_step_profile_cpu.json

Prints the profiler's operator tables and writes the step figures, the machine and the command to
``benchmarks/results/train_step_profile.json`` (or ``--out``: on the device machine, a path under ``$OUT``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import train_throughput as tt  # the shared model shapes and pair generator
from common import write_result


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bare_steps(model_dir: str, anchors: list[str], positives: list[str], batch: int, steps: int,
               device: str, loss_cfg: Any = None, dropout: float | None = None) -> dict:
    """A training step with no trainer around it, the model in training mode as the trainer puts it.
    ``loss_cfg``: the train config whose loss to use (a MatryoshkaLoss); None: one in-batch-negatives
    cross-entropy at full dimension, the floor. ``dropout``: as ``train.dropout`` (None: the model's own).

    (Loaded, the transformer is in eval mode, dropout off; the trainer turns training mode on. The bare
    step of session 5's H100 run skipped that, so part of the gap it found was dropout's.)
    """
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.dropout import set_dropout
    from mrlkit.train.loss import build_loss

    model = SentenceTransformer(model_dir, device=device)
    model.max_seq_length = 512
    model.train()
    if dropout is not None:
        set_dropout(model, dropout)
    loss_fn = build_loss(model, loss_cfg, distributed=False) if loss_cfg is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else contextlib.nullcontext
    times, tokens = [], []
    for step in range(steps):
        lo = (step * batch) % (len(anchors) - batch)
        sync(device)
        started = time.perf_counter()
        feats = [model.tokenize(texts) for texts in (anchors[lo:lo + batch], positives[lo:lo + batch])]
        feats = [{k: v.to(device) if hasattr(v, "to") else v for k, v in f.items()} for f in feats]
        with autocast():
            if loss_fn is not None:
                loss = loss_fn(feats, None)
            else:
                q, d = (model(f)["sentence_embedding"] for f in feats)
                loss = torch.nn.functional.cross_entropy((q @ d.T * 20).float(), torch.arange(batch, device=device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - started)
        tokens.append(sum(int(f["attention_mask"].sum()) for f in feats))
    kept = times[5:]
    return {"ms_per_step_median": round(1e3 * statistics.median(kept), 2),
            "pairs_per_s": round(batch / statistics.median(kept), 1),
            "real_tokens_per_step": statistics.mean(tokens)}


# the trainer profile skips --profile-wait steps (PROFILE_WAIT by default), warms up on PROFILE_WARMUP and records
# PROFILE_ACTIVE
PROFILE_WAIT, PROFILE_WARMUP, PROFILE_ACTIVE = 5, 5, 20


def profiled_trainer(cfg, out_dir: Path, steps: int, device: str, mrlkit_settings: bool = False,
                     wait: int = PROFILE_WAIT) -> dict:
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    steps_schedule = schedule(wait=wait, warmup=PROFILE_WARMUP, active=PROFILE_ACTIVE, repeat=1)
    prof = profile(activities=activities, schedule=steps_schedule)
    step_ends: list[float] = []

    class Step(TrainerCallback):
        def on_step_end(self, *a, **k):
            sync(device)
            step_ends.append(time.perf_counter())
            prof.step()

    trainer = tt.seed_trainer(cfg, out_dir, max_steps=steps, callbacks=[Step()], mrlkit_settings=mrlkit_settings)
    with prof:
        trainer.train()
    gaps = [b - a for a, b in itertools.pairwise(step_ends)][wait:]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    if device == "cuda":
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15), flush=True)
    events = prof.key_averages()
    ops = [e for e in events if not e.key.startswith("ProfilerStep")]  # the step marker spans the whole step
    gpu_us = sum(e.self_device_time_total for e in ops)
    cpu_us = sum(e.self_cpu_time_total for e in ops)
    return {"ms_per_step_median": round(1e3 * statistics.median(gaps), 2),
            "profiled_gpu_ms_per_step": round(gpu_us / 1e3 / PROFILE_ACTIVE, 2),
            "profiled_cpu_ms_per_step": round(cpu_us / 1e3 / PROFILE_ACTIVE, 2)}


PHASES = (("begin", "pre_optimizer", "forward_loss_backward_clip"), ("pre_optimizer", "optimizer", "optimizer"),
          ("optimizer", "end", "scheduler_zero_grad"), ("end", "begin", "log_save_next_batch"))


def phase_times(cfg, out_dir: Path, steps: int, mrlkit_settings: bool) -> dict:
    """Median ms per phase of a step, the device synchronized at each of the trainer's step hooks.

    Each phase then costs the longer of its host work and its kernels, so a phase far longer than
    its share of the ~25 ms of kernels is where the host time goes. The synchronizations cost a
    little overlap, so the phases add up to a bit more than an unsynchronized step.
    """
    import torch
    from transformers import TrainerCallback

    marks: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append((name, time.perf_counter()))

    class Phases(TrainerCallback):
        def on_step_begin(self, *a, **k):
            mark("begin")

        def on_pre_optimizer_step(self, *a, **k):
            mark("pre_optimizer")

        def on_optimizer_step(self, *a, **k):
            mark("optimizer")

        def on_step_end(self, *a, **k):
            mark("end")

    tt.seed_trainer(cfg, out_dir, max_steps=steps, callbacks=[Phases()], mrlkit_settings=mrlkit_settings).train()
    spans: dict[str, list[float]] = {name: [] for _, _, name in PHASES}
    for (a, t0), (b, t1) in itertools.pairwise(marks):
        for start, end, name in PHASES:
            if (a, b) == (start, end):
                spans[name].append(t1 - t0)
    medians = {name: round(1e3 * statistics.median(v[5:] or v), 2) for name, v in spans.items() if v}
    return {**medians, "sum_ms": round(sum(medians.values()), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=sorted(tt.SHAPES), default="bge-base")
    parser.add_argument("--lengths", choices=["short", "financial", "full"], default="financial")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="keep PyTorch's cuDNN attention on (its default on Hopper; mrlkit turns it off)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda where there is one. On a CPU, pick a model that computes little "
                             "(--model-shape launch, short texts): its steps are then mostly the host's work")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the runs with mrlkit's settings, e.g. train.cuda_graphs=true "
                             "(repeatable)")
    parser.add_argument("--profile-mrlkit", action="store_true",
                        help="profile the trainer with mrlkit's settings (and --set), not the seed's")
    parser.add_argument("--profile-wait", type=int, default=PROFILE_WAIT,
                        help="steps before the profiler starts: with train.cuda_graphs, past the captures")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step_profile.json"))
    args = parser.parse_args()
    profiled_steps = args.profile_wait + PROFILE_WARMUP + PROFILE_ACTIVE
    if args.steps < profiled_steps:
        parser.error(f"--steps {args.steps}: at least {profiled_steps}, the profiler skips {args.profile_wait} "
                     f"steps, warms up on {PROFILE_WARMUP} and records {PROFILE_ACTIVE}")
    if args.pairs <= args.batch_size:
        parser.error(f"--pairs {args.pairs}: more than --batch-size ({args.batch_size}), the bare steps slide "
                     "a batch along the pairs")
    import torch

    from mrlkit.models import avoid_cudnn_attention, init_random_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    if not args.cudnn_attention:
        avoid_cudnn_attention()
    print(f"device {device} cpus {os.cpu_count()} affinity {len(os.sched_getaffinity(0))} "
          f"threads {torch.get_num_threads()} loadavg {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mrlkit-prof-"))
    hidden, layers, heads = tt.SHAPES[args.model_shape]
    model_dir = str(init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                      max_seq_length=args.seq_len, tokenizer_from=args.tokenizer))
    anchors, positives = tt.make_texts(args.pairs, args.lengths, args.seq_len, seed=0)
    # the bare step autocasts to bf16 on a GPU only; on a CPU the trainer runs fp32 too (precision auto would pick
    # bf16 on a CPU with it), so the trainer's own cost compares like with like
    ns = argparse.Namespace(model_shape=args.model_shape, batch_size=args.batch_size, epochs=1, seq_len=args.seq_len,
                            threads=args.threads, use_gpu=device == "cuda",
                            precision="auto" if device == "cuda" else "fp32")
    tt.make_pairs(work, args.pairs, args.lengths, args.seq_len)
    cfg = tt.pipeline_config(ns, work, model_dir, run="profile", extra=args.set)
    # the same step with no trainer around it: the floor loss, the seed's per-dim MatryoshkaLoss, mrlkit's fused
    # one; the trainer's own cost is its step less the bare step with the same loss
    seed_loss = tt.seed_loss_config(cfg.train)
    variants = (("mnrl_full_dim", None, None), ("seed_loss", seed_loss, None), ("mrlkit_loss", cfg.train, None),
                ("mrlkit_loss_no_dropout", cfg.train, 0.0))
    bare = {name: bare_steps(model_dir, anchors, positives, args.batch_size, 30, device, loss_cfg, dropout)
            for name, loss_cfg, dropout in variants}
    print("bare:", bare, flush=True)
    trainer = profiled_trainer(cfg, work / "trainer", args.steps, device, mrlkit_settings=args.profile_mrlkit,
                               wait=args.profile_wait)
    print("trainer:", trainer, flush=True)
    phases = {"seed": phase_times(cfg, work / "phases-seed", args.steps, mrlkit_settings=False),
              "mrlkit": phase_times(cfg, work / "phases-mrlkit", args.steps, mrlkit_settings=True)}
    print("phases (ms per step, synchronized):", phases, flush=True)
    trainer_own_ms = {"seed": round(phases["seed"]["sum_ms"] - bare["seed_loss"]["ms_per_step_median"], 2),
                      "mrlkit": round(phases["mrlkit"]["sum_ms"] - bare["mrlkit_loss"]["ms_per_step_median"], 2)}
    print("the trainer's own ms per step (phases less the bare step with the same loss):", trainer_own_ms, flush=True)
    write_result("train_step_profile", {
        "device_used": device, "model_shape": args.model_shape, "lengths": args.lengths,
        "cudnn_attention": args.cudnn_attention, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "threads": args.threads, "overrides": args.set, "profiled": "mrlkit" if args.profile_mrlkit else "seed",
        "bare": bare, "trainer": trainer, "phases_ms": phases,
        "trainer_own_ms_per_step": trainer_own_ms,
        "trainer_vs_bare_pairs_per_s": round(args.batch_size * 1e3 / trainer["ms_per_step_median"]
                                             / bare["seed_loss"]["pairs_per_s"], 3)}, path=Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
