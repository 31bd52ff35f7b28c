"""What fetching each batch costs the training process, with and without loader processes.

Issue 4's H100 steps are bound by their host (~150 ms a step for ~25 ms of GPU kernels), so every
millisecond the training process spends outside the model adds to every step. One such cost is the
batch itself: the no-duplicates sampler picks rows, the trainer's data loader reads them and the data
collator tokenizes them, all in the training process unless ``train.dataloader_workers`` moves the
reading and tokenizing into loader processes (the sampler stays in the training process), or
``train.pretokenize`` (on by default) tokenized every text before training, so the collator only pads.

This runs mrlkit's trainer data path (``training_arguments``, sentence-transformers' no-duplicates
sampler and collator, MiniLM's tokenizer) on pairs with the seed dataset's token lengths, and stands
a busy host in for the step: the training process spins for ``--step-ms`` between batches (holding the
GIL, as a host-bound step's Python does). Per ``train.dataloader_workers`` and ``train.pretokenize``
setting, interleaved over ``--rounds``, the median over the steps of:

- ``wait_ms``: the time the training process waits for the next batch;
- ``over_spin_ms``: what the batch added to the step's wall time.

No GPU and no model compute: on a GPU, loaders can save at most the ``wait_ms`` they remove.

Run::

    .venv/bin/python benchmarks/train_data_wait.py --loaders 0,1 --step-ms 150
    .venv/bin/python benchmarks/train_data_wait.py --loaders 0,1 --pretokenize off,on --lengths full --seq-len 256

Writes ``benchmarks/results/train_data_wait.json`` (or ``--out``) with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import train_throughput as tt  # the seed dataset's token-length distribution and the pairs layout
from common import write_result


def spin(ms: float) -> None:
    """Busy the training process for ``ms`` milliseconds, as a host-bound step's Python does."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def measure(cfg, out_dir: Path, steps: int, step_ms: float) -> dict[str, float]:
    """Iterate the trainer's own train data loader for ``steps`` batches, spinning ``step_ms`` after each."""
    trainer = tt.seed_trainer(cfg, out_dir, mrlkit_settings=True)  # mrlkit's training arguments, the loaders included
    loader = trainer.get_train_dataloader()
    batches = iter(loader)
    waits, walls, tokens = [], [], []
    for _ in range(steps):
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        spin(step_ms)
        waits.append(fetched - started)
        walls.append(time.perf_counter() - started)
        tokens.append(int(batch["anchor_attention_mask"].sum() + batch["positive_attention_mask"].sum()))
    del batches, loader  # stops the loader processes before the next setting starts its own
    kept = slice(5, None)  # the first batches include starting the loaders
    return {"wait_ms": round(1e3 * statistics.median(waits[kept]), 2),
            "step_ms": round(1e3 * statistics.median(walls[kept]), 2),
            "over_spin_ms": round(1e3 * statistics.median(walls[kept]) - step_ms, 2),
            "wait_ms_p90": round(1e3 * sorted(waits[kept])[int(0.9 * len(waits[kept]))], 2),
            "real_tokens_per_batch": round(statistics.mean(tokens), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loaders", default="0,1", help="comma-separated train.dataloader_workers settings")
    parser.add_argument("--pretokenize", default="on", help="comma-separated train.pretokenize settings: on, off")
    parser.add_argument("--step-ms", type=float, default=150.0,
                        help="host time a step spends besides its batch (150: the H100 profile of issue 4)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lengths", choices=["short", "financial", "full"], default="financial")
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_data_wait.json"))
    args = parser.parse_args()
    try:
        settings = [int(x) for x in args.loaders.split(",") if x.strip()]
    except ValueError:
        settings = []
    if not settings or min(settings) < 0:
        parser.error(f"--loaders takes comma-separated counts >= 0, e.g. 0,1; got {args.loaders!r}")
    tokenize = [x.strip() for x in args.pretokenize.split(",") if x.strip()]
    if not tokenize or set(tokenize) - {"on", "off"}:
        parser.error(f"--pretokenize takes on, off or both (on,off); got {args.pretokenize!r}")
    grid = [(loaders, pre) for loaders in settings for pre in tokenize]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from mrlkit.models import init_random_model

    work = Path(tempfile.mkdtemp(prefix="mrlkit-datawait-"))
    hidden, layers, heads = tt.SHAPES["tiny"]  # no model compute here: only its tokenizer matters
    model_dir = str(init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                      max_seq_length=args.seq_len, tokenizer_from=args.tokenizer))
    ns = argparse.Namespace(model_shape="tiny", batch_size=args.batch_size, epochs=1, seq_len=args.seq_len,
                            threads=1, use_gpu=False, precision="auto")
    pairs = args.batch_size * (args.steps + 2)  # a spare batch or two: a deferred duplicate must not end the epoch
    tt.make_pairs(work, pairs, args.lengths, args.seq_len)
    names = {(loaders, pre): f"loaders={loaders} pretokenize={pre}" for loaders, pre in grid}
    by_setting: dict[str, list[dict[str, float]]] = {name: [] for name in names.values()}
    for rnd in range(args.rounds):
        for loaders, pre in grid:
            # pipeline_config reserves a CPU per loader beside the training process (cpus_per_worker = 1 + loaders)
            cfg = tt.pipeline_config(ns, work, model_dir, run=f"loaders{loaders}-{pre}-{rnd}",
                                     extra=[f"train.dataloader_workers={loaders}",
                                            f"train.pretokenize={str(pre == 'on').lower()}"])
            runs = by_setting[names[loaders, pre]]
            runs.append(measure(cfg, work / f"out-{loaders}-{pre}-{rnd}", args.steps, args.step_ms))
            print(f"round {rnd} {names[loaders, pre]}: {runs[-1]}", flush=True)
    figures = {n: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for n, runs in by_setting.items()}
    for n, fig in figures.items():
        print(f"{n}: wait {fig['wait_ms']} ms, step {fig['step_ms']} ms ({fig['over_spin_ms']} ms over "
              f"the {args.step_ms:g} ms spin)")
    write_result("train_data_wait", {
        "setup": {"batch_size": args.batch_size, "seq_len": args.seq_len, "lengths": args.lengths,
                  "step_ms": args.step_ms, "steps": args.steps, "rounds": args.rounds, "pairs": pairs},
        "figures_median_of_rounds": figures,
        "rounds": by_setting,
        "loadavg_after": os.getloadavg()}, path=Path(args.out))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
