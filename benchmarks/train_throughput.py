"""Training throughput: plain sentence-transformers (the seed's path) vs mrlkit through Ray Train.

Same synthetic pairs, batch size, sequence length and model in every mode, one process tree:

- ``plain``: a single-process ``SentenceTransformerTrainer`` with MatryoshkaLoss(MNRL) and
  the no-duplicates sampler, as the seed notebook trains (a local checkpoint every epoch, no evaluation).
  ``plain+nocudnn``: the same with PyTorch's cuDNN attention off, as mrlkit runs on a GPU
  (``mrlkit.models.avoid_cudnn_attention``), to tell that fix apart from the other levers.
- ``ray``: ``mrlkit``'s TrainStage trainer (Ray Train V2, 1 worker, a checkpoint uploaded to Ray
  storage every epoch, metrics reported every log step); pairs/s is measured inside the training loop, and the
  end-to-end wall time (worker start-up included) is reported next to it. The worker reserves ``--threads``
  CPUs; ``ray@N`` reserves N, ``ray@auto`` leaves ``train.cpus_per_worker`` unset (mrlkit's default).
- ``worker``: mrlkit's per-worker loop without Ray (what a single-GPU machine runs). Suffixes switch its
  speed levers on: ``worker+bucket`` (``train.length_bucketing``), ``worker+compile`` (``train.compile``),
  ``worker+merge`` (``train.merge_columns``), ``worker+loaders`` (``train.dataloader_workers=1``: batches
  tokenized in a loader process), ``worker+nodropout`` (``train.dropout=0``), ``worker+bf16``
  (``train.precision=bf16``, on a CPU too), or its fused loss off: ``worker+unfused``; combine them as
  ``worker+bucket+merge``. Levers that turn a default off: ``worker+tokenize`` (``train.pretokenize=false``)
  and ``worker+padded`` (``train.unpad=false``: the encoder computes on padding, as every run did before).

``--model-shape launch`` is bge-base's 12 layers at width 24: with short texts and small batches it
computes little, so on a CPU its step is mostly the host's work (dispatch, tokenization, the trainer), a
stand-in for a GPU step bound by its host. At the seed's lengths and batch 32 a step takes ~1.2 s on one
CPU thread: compute-bound, it stands in for nothing there.

Texts: ``--lengths short`` (~20-token questions, ~60-token contexts), ``financial`` (token lengths drawn
from the seed dataset's measured distribution, long tail included) or ``full`` (every text ``--seq-len``
tokens: the compute-bound case).

Run (CPU, bounded to a few minutes)::

    .venv/bin/python benchmarks/train_throughput.py --model-shape mini --pairs 512 --seq-len 64

On a GPU (no Ray needed for ``plain``/``worker``), with model-FLOPs utilisation against the bf16 peak::

    python benchmarks/train_throughput.py --model-shape bge-base --use-gpu --lengths financial --seq-len 512 \
        --pairs 6300 --modes plain,worker,worker+bucket,worker+compile,worker+bucket+compile --peak-tflops 989

Writes ``benchmarks/results/train_throughput.json`` (or ``--out``) with the machine, the command and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "launch": (24, 12, 2),  # bge-base's depth, a tiny width: a host-bound stand-in at short lengths
    "mini": (128, 2, 2),
    "minilm": (384, 6, 12),
    "bge-base": (768, 12, 12),
}
WORDS = ("revenue margin segment capital liquidity dividend goodwill lease pension hedge derivative inventory "
         "backlog guidance impairment acquisition restructuring litigation tax deferred equity debt covenant "
         "subsidiary operating income expense growth market customer supplier risk factor").split()


# Token-length percentiles (0, 5, 10, 25, 50, 75, 90, 95, 99, 100) of the seed dataset with the BERT uncased
# WordPiece vocabulary (MiniLM's and bge-base's), [CLS]/[SEP] included. Measured on
# ../shared/datasets/financial-qa-10k/finanical_rag_embedding_dataset.jsonl (7,000 rows) by tokenizing every
# question and context; random batches of 32 of these are 41% real tokens, 59% padding.
PERCENTILES = (0, 5, 10, 25, 50, 75, 90, 95, 99, 100)
FINANCIAL_TOKENS = {"anchor": (7, 13, 14, 17, 20, 24, 28, 31, 36, 51),
                    "positive": (4, 18, 21, 28, 38, 54, 77, 97, 158, 1010)}


def draw_length(rng: random.Random, column: str) -> int:
    """A token count from the seed dataset's distribution (inverse CDF, linear between percentiles)."""
    u = rng.random() * 100
    qs = FINANCIAL_TOKENS[column]
    for i in range(1, len(PERCENTILES)):
        if u <= PERCENTILES[i]:
            p0, p1, v0, v1 = PERCENTILES[i - 1], PERCENTILES[i], qs[i - 1], qs[i]
            return round(v0 + (v1 - v0) * (u - p0) / (p1 - p0))
    return qs[-1]


MULTI_TOKEN_WORDS = ("liquidity", "dividend", "impairment", "covenant", "backlog", "deferred")
ONE_TOKEN_WORDS = tuple(w for w in WORDS if w not in MULTI_TOKEN_WORDS)


def make_texts(n: int, lengths: str, seq_len: int, seed: int) -> tuple[list[str], list[str]]:
    """Question/context texts of drawn token counts: [CLS], an id (~3 tokens), one-token words, [SEP]."""
    rng = random.Random(seed)
    anchors, positives = [], []
    for i in range(n):
        topic = rng.sample(WORDS, 4)
        if lengths == "short":
            anchors.append(f"q{i}: what did the company report about {' '.join(topic)} in the fiscal year?")
            positives.append(" ".join([f"doc{i}", *topic, *rng.choices(WORDS, k=44)]) + ".")
            continue
        if lengths == "full":
            n_anchor = n_positive = seq_len
        else:
            n_anchor, n_positive = draw_length(rng, "anchor"), draw_length(rng, "positive")
        topic = rng.sample(ONE_TOKEN_WORDS, 4)
        anchors.append(" ".join([f"q{i}", *topic, *rng.choices(ONE_TOKEN_WORDS, k=max(n_anchor - 8, 0))]))
        positives.append(" ".join([f"doc{i}", *topic, *rng.choices(ONE_TOKEN_WORDS, k=max(n_positive - 8, 0))]))
    return anchors, positives


def make_pairs(root: Path, n: int, lengths: str = "short", seq_len: int = 512, seed: int = 0) -> str:
    """Publish ``n`` question/context pairs in the pairs layout (see ``make_texts`` for the lengths)."""
    from mrlkit import storage

    anchors, positives = make_texts(n, lengths, seq_len, seed)
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


def pipeline_config(args: argparse.Namespace, root: Path, model_dir: str, run: str,
                    extra: list[str] | None = None) -> Any:
    from mrlkit.config import load_config

    hidden = SHAPES[args.model_shape][0]
    bge_dims = (768, 512, 384, 256, 128, 64, 32)
    # a model narrower than 32 keeps bge-base's seven dims, scaled down (launch: 24, 16, 12, 8, 4, 2, 1)
    dims = [d for d in bge_dims if d <= hidden] or [max(hidden * d // 768, 1) for d in bge_dims]
    extra = list(extra or [])
    loaders = sum(int(o.split("=", 1)[1]) for o in extra if o.startswith("train.dataloader_workers="))
    overrides = [
        "name=bench", f"run={run}", f"storage.root={root}", f"train.base_model={model_dir}",
        f"train.matryoshka_dims={dims}", f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
        f"train.max_seq_length={args.seq_len}", "train.eval_strategy=no", "train.keep_checkpoints=1",
        f"train.cpus_per_worker={args.threads + loaders}", f"train.use_gpu={str(args.use_gpu).lower()}",
        f"train.precision={args.precision}", f"ray.num_cpus={os.cpu_count()}", *extra,
    ]
    return load_config(None, overrides)


def seed_loss_config(train: Any) -> Any:
    """``train`` with the library's own per-dim MatryoshkaLoss, as the seed trained (no fused loss, no merging)."""
    return dataclasses.replace(train, fused_loss=False, merge_columns=False)


def seed_trainer(cfg: Any, out_dir: Path, *, max_steps: int | None = None, callbacks: list[Any] | None = None,
                 mrlkit_settings: bool = False) -> Any:
    """The seed's trainer: sentence-transformers alone, one process, the library's per-dim MatryoshkaLoss and
    its default NaN filter. ``mrlkit_settings``: the same trainer with the model settings, loss and arguments
    mrlkit's worker uses (the fused loss by default, no NaN filter), without mrlkit's callbacks."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

    from mrlkit import layout
    from mrlkit.train.data import load_train_dataset
    from mrlkit.train.loss import build_loss
    from mrlkit.train.model_settings import prepare_model
    from mrlkit.train.pretokenize import pretokenize_collator
    from mrlkit.train.worker import training_arguments

    model = SentenceTransformer(cfg.train.base_model, device="cpu")
    model.max_seq_length = cfg.train.max_seq_length
    if mrlkit_settings:
        prepare_model(model, cfg.train)  # dropout, compile, CUDA graphs and unpadding as the config says
    dataset = load_train_dataset(layout.pairs_uri(cfg))
    args = training_arguments(cfg.train, str(out_dir), world_size=1)  # saves every epoch, as the seed did
    if not mrlkit_settings:
        args.logging_nan_inf_filter = True  # the library's default, as the seed ran (mrlkit turns it off)
    if max_steps is not None:
        args.max_steps = max_steps
    loss_cfg = cfg.train if mrlkit_settings else seed_loss_config(cfg.train)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks,
                                         loss=build_loss(model, loss_cfg, distributed=False))
    if mrlkit_settings and cfg.train.pretokenize:
        pretokenize_collator(trainer.data_collator, [dataset])
    return trainer


def run_plain(cfg: Any, out_dir: Path) -> dict[str, float]:
    """The seed's path: sentence-transformers alone, one process."""
    trainer = seed_trainer(cfg, out_dir)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    pairs = result.global_step * cfg.train.batch_size
    return {"pairs_per_s": pairs / seconds, "train_seconds": seconds, "steps": result.global_step}


LEVERS = {"bucket": "train.length_bucketing=true", "compile": "train.compile=true",
          "merge": "train.merge_columns=true", "unfused": "train.fused_loss=false",
          "loaders": "train.dataloader_workers=1", "loaders2": "train.dataloader_workers=2",
          "loaders4": "train.dataloader_workers=4",
          "nodropout": "train.dropout=0.0", "bf16": "train.precision=bf16", "graphs": "train.cuda_graphs=true",
          "tokenize": "train.pretokenize=false",  # tokenize: each batch as it comes, as before pretokenize
          "padded": "train.unpad=false"}  # padded: the encoder computes on padding too, as before unpad


def worker_overrides(mode: str) -> list[str]:
    """``worker+bucket+compile`` -> the config overrides that switch those levers on."""
    name, *levers = mode.split("+")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if name != "worker" or unknown:
        raise SystemExit(f"unknown mode {mode!r}: use plain, ray, worker or worker+LEVER[+LEVER], "
                         f"LEVER one of {sorted(LEVERS)}")
    return [LEVERS[lever] for lever in levers]


def ray_cpus_override(mode: str) -> list[str]:
    """``ray@4`` -> the override reserving 4 CPUs for the worker; ``ray@auto`` -> leave it to mrlkit; else none."""
    name, _, cpus = mode.partition("@")
    if name != "ray" or not (cpus == "auto" or cpus.isdigit()):
        return []
    return [f"train.cpus_per_worker={'null' if cpus == 'auto' else cpus}"]


def measured_bf16_tflops() -> float | None:
    """A large bf16 matrix product's rate on this GPU (random data, median of 20): the practical peak."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def run_worker(cfg: Any, out_dir: Path) -> dict[str, float]:
    """mrlkit's per-worker loop in this process, without Ray."""
    from mrlkit.config import config_to_dict
    from mrlkit.train.worker import train_loop

    summary = train_loop({"config": config_to_dict(cfg), "output_dir": str(out_dir)})
    # timed like plain: the wall time of trainer.train() (compilation, if any, included)
    seconds = summary["train_seconds"]
    return {"pairs_per_s": summary["step"] * cfg.train.batch_size / seconds, "train_seconds": seconds,
            "steps": summary["step"], "pairs_per_s_from_first_step": summary["pairs_per_s"]}


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
    """Training FLOPs per pair: 6 x non-embedding params per token, plus attention (12 x layers x hidden x len).

    Real tokens only (every text of the set, truncated at ``seq_len``): padding is work the GPU does but the
    model does not need, so MFU counts it as waste.
    """
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.data import load_train_dataset

    model = SentenceTransformer(model_dir, device="cpu")
    bert = model[0].auto_model
    params = sum(p.numel() for n, p in bert.named_parameters() if "embeddings" not in n)
    conf = bert.config
    ds = load_train_dataset(pairs_uri)
    tok = model.tokenizer
    lengths = [min(len(ids), seq_len) for col in ("anchor", "positive") for ids in tok(list(ds[col]))["input_ids"]]
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
    parser.add_argument("--modes", default="plain,ray",
                        help="comma list of plain, plain+nocudnn, ray, ray@N, ray@auto, worker, or "
                             "worker+LEVER[+LEVER] with "
                             f"LEVER one of {', '.join(LEVERS)}")
    parser.add_argument("--lengths", choices=["short", "financial", "full"], default="short",
                        help="text lengths: short, the seed dataset's token lengths, or every text --seq-len long")
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="tokenizer for the random model (a local folder where the hub is out of reach)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in every mode")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device bf16 datasheet peak, for MFU (H100 SXM: 989); a GPU's measured peak is added")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    import torch

    from mrlkit.models import init_random_model

    torch.set_num_threads(args.threads)
    measured_peak = measured_bf16_tflops() if args.use_gpu else None  # also warms up CUDA before any timed run
    cudnn_attention_default = torch.backends.cuda.cudnn_sdp_enabled()
    load_before = os.getloadavg()  # the machine may be shared: record how busy it was
    work = Path(tempfile.mkdtemp(prefix="mrlkit-bench-"))
    hidden, layers, heads = SHAPES[args.model_shape]
    for mode in modes:
        if mode.startswith("worker"):
            worker_overrides(mode)  # refuse an unknown mode before minutes of work
        elif mode not in ("plain", "plain+nocudnn", "ray") and not ray_cpus_override(mode):
            parser.error(f"unknown mode {mode!r}; use plain, plain+nocudnn, ray, ray@N, ray@auto, worker[+LEVER...]")
    model_dir = str(init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                      max_seq_length=args.seq_len, tokenizer_from=args.tokenizer))
    pairs_uri = make_pairs(work, args.pairs, args.lengths, args.seq_len)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for rnd in range(args.repeats):
        for mode in modes:
            extra = worker_overrides(mode) if mode.startswith("worker") else ray_cpus_override(mode)
            cfg = pipeline_config(args, work, model_dir, run=f"{mode.replace('+', '-').replace('@', '-')}-{rnd}",
                                  extra=extra)
            if args.use_gpu:  # each mode starts from PyTorch's default attention backends (mrlkit changes them)
                torch.backends.cuda.enable_cudnn_sdp(cudnn_attention_default)
            if mode == "plain+nocudnn":
                torch.backends.cuda.enable_cudnn_sdp(False)
                runs[mode].append(run_plain(cfg, work / f"plain-nocudnn-{rnd}"))
            elif mode == "plain":
                runs[mode].append(run_plain(cfg, work / f"plain-{rnd}"))
            elif mode.startswith("worker"):
                runs[mode].append(run_worker(cfg, work / f"{mode.replace('+', '-')}-{rnd}"))
            else:
                runs[mode].append(run_ray(cfg))
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
    figures["measured_bf16_tflops"] = measured_peak
    for m in modes:
        achieved = figures[m]["pairs_per_s_median"] * flops / 1e12
        figures[m]["model_tflops"] = round(achieved, 2)
        if args.peak_tflops:
            figures[m]["mfu"] = round(achieved / args.peak_tflops, 4)
        if measured_peak:
            figures[m]["mfu_of_measured_peak"] = round(achieved / measured_peak, 4)
    report = {"benchmark": "train_throughput",
              # machine_info reads package metadata only: this script also runs where Ray is not installed
              "machine": {**machine_info(), "loadavg_1m_before": load_before[0],
                          "loadavg_1m_after": os.getloadavg()[0]},
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "setup": {"model_shape": args.model_shape, "hidden": hidden, "layers": layers, "pairs": args.pairs,
                        "batch_size": args.batch_size, "seq_len": args.seq_len, "epochs": args.epochs,
                        "threads": args.threads, "repeats": args.repeats, "precision": args.precision,
                        "lengths": args.lengths},
              "figures": figures,
              "target": ("ray/plain >= 0.9 on CPU (Ray's overhead under 10%); on a GPU: MFU >= 0.35, "
                         ">= 1.5x plain (the seed configuration), 6.3k pairs x 4 epochs in < 60 s")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=2))
    for m in modes:
        mfu = f", MFU {figures[m]['mfu']:.1%}" if "mfu" in figures[m] else ""
        print(f"{m}: {figures[m]['pairs_per_s_median']:.1f} pairs/s, {figures[m]['model_tflops']} TFLOP/s{mfu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
