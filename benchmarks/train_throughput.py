"""Training throughput: plain sentence-transformers (the seed's path) vs mrlkit through Ray Train.

Same synthetic pairs, batch size, sequence length and model in every mode, one process tree:

- ``plain``: a single-process ``SentenceTransformerTrainer`` with MatryoshkaLoss(MNRL) and
  the no-duplicates sampler, as the seed notebook trains (a local checkpoint every epoch, no evaluation).
- ``ray``: ``mrlkit``'s TrainStage trainer (Ray Train V2, 1 worker, a checkpoint uploaded to Ray
  storage every epoch, metrics reported every log step); pairs/s is measured inside the training loop, and the
  end-to-end wall time (worker start-up included) is reported next to it.
- ``worker``: mrlkit's per-worker loop without Ray (what a single-GPU machine runs).

Run (CPU, bounded to a few minutes)::

    .venv/bin/python benchmarks/train_throughput.py --model-shape mini --pairs 512 --seq-len 64

On a GPU (no Ray needed for ``plain``/``worker``), with model-FLOPs utilisation against the bf16 peak::

    python benchmarks/train_throughput.py --model-shape bge-base --modes plain,worker --use-gpu \
        --pairs 6300 --batch-size 32 --seq-len 256 --peak-tflops 989

Writes ``benchmarks/results/train_throughput.json`` (or ``--out``) with the machine, the command and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common import machine_info

SHAPES = {  # hidden, layers, heads
    "tiny": (32, 2, 2),
    "mini": (128, 2, 2),
    "minilm": (384, 6, 12),
    "bge-base": (768, 12, 12),
}
WORDS = ("revenue margin segment capital liquidity dividend goodwill lease pension hedge derivative inventory "
         "backlog guidance impairment acquisition restructuring litigation tax deferred equity debt covenant "
         "subsidiary operating income expense growth market customer supplier risk factor").split()


def make_pairs(root: Path, n: int, seed: int = 0) -> str:
    """Publish ``n`` question/context pairs (question ~12 words, context ~48) in the pairs layout."""
    from mrlkit import storage

    rng = random.Random(seed)
    anchors, positives = [], []
    for i in range(n):
        topic = rng.sample(WORDS, 4)
        anchors.append(f"q{i}: what did the company report about {' '.join(topic)} in the fiscal year?")
        positives.append(" ".join([f"doc{i}", *topic, *rng.choices(WORDS, k=44)]) + ".")
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("train", "test", "corpus"):
            Path(tmp, sub).mkdir()
        pq.write_table(pa.table({"anchor": anchors, "positive": positives}), Path(tmp, "train", "part-0.parquet"))
        pq.write_table(pa.table({"query_id": ["q0"], "anchor": anchors[:1], "positive": positives[:1],
                                 "relevant_ids": [["c0"]]}), Path(tmp, "test", "part-0.parquet"))
        pq.write_table(pa.table({"chunk_id": ["c0"], "text": positives[:1]}), Path(tmp, "corpus", "part-0.parquet"))
        uri = str(root / "pairs" / "bench")
        storage.publish_dir(tmp, uri)
    return uri


def pipeline_config(args: argparse.Namespace, root: Path, model_dir: str, run: str) -> Any:
    from mrlkit.config import load_config

    dims = [d for d in (768, 512, 384, 256, 128, 64, 32) if d <= SHAPES[args.model_shape][0]] or [32]
    overrides = [
        "name=bench", f"run={run}", f"storage.root={root}", f"train.base_model={model_dir}",
        f"train.matryoshka_dims={dims}", f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
        f"train.max_seq_length={args.seq_len}", "train.eval_strategy=no", "train.keep_checkpoints=1",
        f"train.cpus_per_worker={args.threads}", f"train.use_gpu={str(args.use_gpu).lower()}",
        f"train.precision={args.precision}", f"ray.num_cpus={os.cpu_count()}",
    ]
    return load_config(None, overrides)


def run_plain(cfg: Any, out_dir: Path) -> dict[str, float]:
    """The seed's path: sentence-transformers alone, one process."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

    from mrlkit import layout
    from mrlkit.train.data import load_train_dataset
    from mrlkit.train.loss import build_loss
    from mrlkit.train.worker import training_arguments

    model = SentenceTransformer(cfg.train.base_model, device="cpu")
    model.max_seq_length = cfg.train.max_seq_length
    dataset = load_train_dataset(layout.pairs_uri(cfg))
    args = training_arguments(cfg.train, str(out_dir), world_size=1)  # saves every epoch, as the seed did
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=build_loss(model, cfg.train, distributed=False))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    pairs = result.global_step * cfg.train.batch_size
    return {"pairs_per_s": pairs / seconds, "train_seconds": seconds, "steps": result.global_step}


def run_worker(cfg: Any, out_dir: Path) -> dict[str, float]:
    """mrlkit's per-worker loop in this process, without Ray."""
    from mrlkit.config import config_to_dict
    from mrlkit.train.worker import train_loop

    summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(out_dir)})
    return {"pairs_per_s": summary["pairs_per_s"], "train_seconds": summary["train_seconds"],
            "steps": summary["step"]}


def run_ray(cfg: Any) -> dict[str, float]:
    """mrlkit through Ray Train, 1 worker; in-loop pairs/s plus end-to-end wall time."""
    from mrlkit.ray_runtime import init_ray
    from mrlkit.train.launch import TrainStage

    init_ray(cfg.ray)
    stage = TrainStage(cfg)
    started = time.perf_counter()
    result = stage.trainer().fit()
    wall = time.perf_counter() - started
    metrics = result.metrics or {}
    pairs = metrics["step"] * cfg.train.batch_size
    return {"pairs_per_s": metrics["pairs_per_s"], "steps": metrics["step"], "fit_wall_seconds": wall,
            "pairs_per_s_end_to_end": pairs / wall}


def flops_per_pair(model_dir: str, seq_len: int, pairs_uri: str) -> tuple[float, float]:
    """Training FLOPs per pair: 6 x non-embedding params per token, plus attention (12 x layers x hidden x len)."""
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.data import load_train_dataset

    model = SentenceTransformer(model_dir, device="cpu")
    bert = model[0].auto_model
    params = sum(p.numel() for n, p in bert.named_parameters() if "embeddings" not in n)
    conf = bert.config
    ds = load_train_dataset(pairs_uri)
    tok = model.tokenizer
    lengths = [min(len(tok(t)["input_ids"]), seq_len) for col in ("anchor", "positive") for t in ds[col][:256]]
    tokens_per_text = statistics.mean(lengths)
    per_token = 6 * params + 12 * conf.num_hidden_layers * conf.hidden_size * tokens_per_text
    return 2 * tokens_per_text * per_token, 2 * tokens_per_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default="mini")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the median is reported")
    parser.add_argument("--modes", default="plain,ray", help="comma list of plain, ray, worker")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in every mode")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak, for MFU (H100 SXM: 989)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    import torch

    from mrlkit.models import init_random_model

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # the machine may be shared: record how busy it was
    work = Path(tempfile.mkdtemp(prefix="mrlkit-bench-"))
    hidden, layers, heads = SHAPES[args.model_shape]
    model_dir = str(init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                      max_seq_length=args.seq_len))
    pairs_uri = make_pairs(work, args.pairs)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for rnd in range(args.repeats):
        for mode in modes:
            cfg = pipeline_config(args, work, model_dir, run=f"{mode}-{rnd}")
            if mode == "plain":
                runs[mode].append(run_plain(cfg, work / f"plain-{rnd}"))
            elif mode == "worker":
                runs[mode].append(run_worker(cfg, work / f"worker-{rnd}"))
            elif mode == "ray":
                runs[mode].append(run_ray(cfg))
            else:
                parser.error(f"unknown mode {mode!r}; use plain, ray, worker")
            print(f"round {rnd} {mode}: {runs[mode][-1]}", flush=True)
    figures: dict[str, Any] = {m: {"pairs_per_s_median": statistics.median(r["pairs_per_s"] for r in rs), "runs": rs}
                               for m, rs in runs.items()}
    if "plain" in figures:
        base = figures["plain"]["pairs_per_s_median"]
        for m in modes:
            if m != "plain":
                figures[f"ratio_{m}_over_plain"] = round(figures[m]["pairs_per_s_median"] / base, 3)
    flops, tokens = flops_per_pair(model_dir, args.seq_len, pairs_uri)
    figures["flops_per_pair"] = flops
    figures["tokens_per_pair"] = tokens
    if args.peak_tflops:
        for m in modes:
            figures[m]["mfu"] = round(figures[m]["pairs_per_s_median"] * flops / (args.peak_tflops * 1e12), 4)
    report = {"benchmark": "train_throughput",
              # machine_info reads package metadata only: this script also runs where Ray is not installed
              "machine": {**machine_info(), "loadavg_1m_before": load_before[0],
                          "loadavg_1m_after": os.getloadavg()[0]},
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "setup": {"model_shape": args.model_shape, "hidden": hidden, "layers": layers, "pairs": args.pairs,
                        "batch_size": args.batch_size, "seq_len": args.seq_len, "epochs": args.epochs,
                        "threads": args.threads, "repeats": args.repeats, "precision": args.precision},
              "figures": figures,
              "target": "ray/plain >= 0.9 on CPU (Ray's overhead under 10%)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=2))
    for m in modes:
        print(f"{m}: {figures[m]['pairs_per_s_median']:.1f} pairs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
