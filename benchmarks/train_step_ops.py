"""Operators per training step, by phase, for each loss variant: what a launch-bound GPU pays for.

Issue 4's H100 profile found steps host-bound (~150 ms a step for ~25 ms of kernels, ~3,300
launches), so the work per step that scales with the host is the number of operators PyTorch
dispatches, each one a kernel launch on a GPU. That count does not depend on the device, so this
runs on a CPU. Variants, same model, same batches:

- ``seed``: sentence-transformers' ``MatryoshkaLoss(MultipleNegativesRankingLoss)``, one inner-loss
  call per dim, anchors and positives in separate encoder passes (the seed recipe; ``train.fused_loss: false``);
- ``fused``: mrlkit's ``FusedMatryoshkaLoss``, every dim in one batched pass (the default);
- ``fused+merge``: the same with ``train.merge_columns: true``, all columns in one encoder pass.

For each: operators per step by phase (forward+loss, backward, clip+optimizer with fused AdamW), the
share of them that are not views (views launch nothing), and the CPU time per step, interleaved over
``--rounds``, for two model shapes:

- ``--shape launch`` (default: bge-base's 12 layers at width 24, 2 heads, short texts, batch 4): the
  compute is tiny, so the time is mostly dispatch, a CPU stand-in for a launch-bound GPU step (the
  operator counts do not depend on the batch or the width);
- ``--shape minilm`` (MiniLM's width and depth, the seed dataset's lengths): a compute-bound CPU step,
  where ``merge_columns`` pays for padding the short anchors.

Run::

    .venv/bin/python benchmarks/train_step_ops.py                      # launch-bound stand-in
    .venv/bin/python benchmarks/train_step_ops.py --shape minilm --out benchmarks/results/train_step_ops_minilm.json

Writes ``benchmarks/results/train_step_ops.json`` (or ``--out``) with the machine and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import train_throughput as tt  # the shared pair generator and token-length distribution
from common import write_result

VARIANTS = ("seed", "fused", "fused+merge")
SHAPES = {  # hidden, layers, heads, lengths, dims, batch size
    "launch": (24, 12, 2, "short", (24, 16, 12, 8, 6, 4, 2), 4),
    "minilm": (384, 6, 12, "financial", (384, 256, 128, 64, 32), 32),
}


def count_mode():
    """A dispatch mode that counts every ATen operator call (below autograd: backward ops count too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.operators = 0
            self.views = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.operators += 1
            self.views += bool(func.is_view)
            return func(*args, **(kwargs or {}))

    return Count()


@contextlib.contextmanager
def counted(name: str, into: dict[str, Any]):
    """Count the operators of one phase into ``into[name]``."""
    mode = count_mode()
    with mode:
        yield
    into[name] = mode


def build(variant: str, model: Any, dims: tuple[int, ...]) -> Any:
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.loss import build_loss

    train = TrainConfig(matryoshka_dims=dims, fused_loss=variant != "seed", merge_columns=variant == "fused+merge")
    return build_loss(model, train, distributed=False)


def run_step(model: Any, loss: Any, optimizer: Any, columns: list[list[str]], phase) -> None:
    import torch

    features = [model.tokenize(texts) for texts in columns]  # tokenizing is outside the phases: equal for all
    with phase("forward+loss"):
        value = loss(features, None)
    with phase("backward"):
        value.backward()
    with phase("clip+optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="launch")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 for launch, 32 for minilm")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step_ops.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from mrlkit.models import init_random_model

    torch.set_num_threads(args.threads)
    hidden, layers, heads, lengths, dims, batch_size = SHAPES[args.shape]
    args.batch_size = args.batch_size or batch_size
    work = Path(tempfile.mkdtemp(prefix="mrlkit-ops-"))
    model_dir = init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                  max_seq_length=512, tokenizer_from=args.tokenizer)
    pairs = args.batch_size * (args.steps + 1)
    anchors, positives = tt.make_texts(pairs, lengths, 512, seed=0)
    batches = [[anchors[i:i + args.batch_size], positives[i:i + args.batch_size]]
               for i in range(0, pairs, args.batch_size)]
    setups = {}
    for variant in VARIANTS:
        model = SentenceTransformer(str(model_dir), device="cpu")
        model.max_seq_length = 512
        setups[variant] = (model, build(variant, model, dims), torch.optim.AdamW(model.parameters(), lr=2e-5,
                                                                                 fused=True))

    counts: dict[str, dict[str, Any]] = {}
    for variant, (model, loss, optimizer) in setups.items():
        run_step(model, loss, optimizer, batches[0], lambda name: contextlib.nullcontext())  # warm-up
        phases: dict[str, Any] = {}
        run_step(model, loss, optimizer, batches[1], lambda name, into=phases: counted(name, into))
        counts[variant] = {name: {"operators": m.operators, "non_view": m.operators - m.views}
                           for name, m in phases.items()}
        counts[variant]["step"] = {key: sum(p[key] for p in counts[variant].values()) for key in ("operators",
                                                                                                    "non_view")}
        print(variant, counts[variant]["step"], flush=True)

    ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        for variant, (model, loss, optimizer) in setups.items():
            times = []
            for batch in batches[1:]:
                started = time.perf_counter()
                run_step(model, loss, optimizer, batch, lambda name: contextlib.nullcontext())
                times.append(time.perf_counter() - started)
            ms[variant].append(1e3 * statistics.median(times))
            print(f"round {rnd} {variant}: {ms[variant][-1]:.1f} ms/step", flush=True)

    seed_ops = counts["seed"]["step"]["non_view"]
    figures = {
        "shape": {"name": args.shape, "hidden": hidden, "layers": layers, "heads": heads, "lengths": lengths,
                  "dims": list(dims), "batch_size": args.batch_size, "threads": args.threads},
        "operators_per_step": counts,
        "non_view_operators_vs_seed": {v: round(counts[v]["step"]["non_view"] / seed_ops, 3) for v in VARIANTS},
        "ms_per_step_by_round": ms,
        "ms_per_step_median": {v: round(statistics.median(t), 1) for v, t in ms.items()},
        "ms_per_step_vs_seed_by_round": {v: [round(a / b, 3) for a, b in zip(ms[v], ms["seed"], strict=True)]
                                         for v in VARIANTS},
        "loadavg": os.getloadavg(),
    }
    print(figures["non_view_operators_vs_seed"], figures["ms_per_step_median"], flush=True)
    write_result("train_step_ops", figures, path=Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
