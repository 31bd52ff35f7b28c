"""Correctness of ``train.cuda_graphs`` on a GPU: graphed training steps against eager ones.

Two copies of one random BERT (``--model-shape``, dropout 0 so both compute the same function) train
side by side under bf16 autocast on batches of several lengths, each length seen more than once
(captures and replays both checked), one of them smaller than the rest (padded rows):
MatryoshkaLoss(MNRL) fused, AdamW; once with one merged encoder pass a step, once with anchors and
candidates in two passes. After every step the losses, the gradients and the updated weights are compared by relative
error ||graphed - eager|| / ||eager||; bf16 operands land between 1e-3 and 1e-2, so the check fails
above ``--tolerance`` (or on any NaN).

Run on a GPU machine (no Ray needed)::

    python benchmarks/cuda_graphs_check.py --tokenizer .devbench/tok --out $OUT/cuda_graphs_check.json
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import train_throughput as tt
from common import write_result


def rel(a, b) -> float:
    import torch

    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=sorted(tt.SHAPES), default="minilm")
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tolerance", type=float, default=2e-2)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the same steps on a CPU with no capture (the graphed copy runs eagerly): "
                             "checks the script, not the graphs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cuda_graphs_check.json"))
    args = parser.parse_args()

    import torch

    from mrlkit.models import avoid_cudnn_attention, init_random_model

    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_graphs_check: needs a CUDA GPU (or --cpu-dry-run)")
    avoid_cudnn_attention()
    work = Path(tempfile.mkdtemp(prefix="mrlkit-graphs-"))
    hidden, layers, heads = tt.SHAPES[args.model_shape]
    model_dir = str(init_random_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                                      max_seq_length=512, tokenizer_from=args.tokenizer))
    anchors, positives = tt.make_texts(args.batch_size * 3, "financial", 512, seed=1)
    rng = random.Random(0)
    # three batches, each seen repeatedly; the third is 4 rows short, as an epoch's last batch can be
    batches = [(lo, lo + args.batch_size - (4 if lo == 2 * args.batch_size else 0))
               for lo in (rng.randrange(3) * args.batch_size for _ in range(args.steps))]
    variants = {name: check_variant(model_dir, device, hidden, merge, batches, anchors, positives, args.cpu_dry_run)
                for name, merge in (("merged_one_pass", True), ("separate_two_passes", False))}
    for variant in variants.values():
        variant["ok"] = (variant["worst_rel"] <= args.tolerance and variant["eager_passes"] == 0
                         and variant["replays"] == args.steps * variant["passes_per_step"])
    ok = all(v["ok"] for v in variants.values())
    print({name: {k: v for k, v in variant.items() if k != "rows"} for name, variant in variants.items()}, flush=True)
    write_result("cuda_graphs_check", {"model_shape": args.model_shape, "steps": args.steps,
                                       "tolerance": args.tolerance, "ok": ok, **variants}, path=Path(args.out))
    return 0 if ok else 1


def check_variant(model_dir: str, device: str, hidden: int, merge: bool, batches: list[tuple[int, int]],
                  anchors: list[str], positives: list[str], dry_run: bool) -> dict:
    """Eager and graphed copies of one model trained side by side; the relative errors of each step."""
    import torch
    from sentence_transformers import SentenceTransformer

    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.cuda_graphs import graph_encoder_forward
    from mrlkit.train.dropout import set_dropout
    from mrlkit.train.loss import build_loss

    train_cfg = TrainConfig(matryoshka_dims=tuple(d for d in (768, 512, 384, 256, 128, 64, 32) if d <= hidden),
                            merge_columns=merge, use_gpu=True)
    models, losses, optimizers = [], [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = SentenceTransformer(model_dir, device=device)
        model.max_seq_length = 512
        model.train()
        set_dropout(model, 0.0)
        models.append(model)
    models[1].load_state_dict(copy.deepcopy(models[0].state_dict()))
    graphs = (graph_encoder_forward(models[1], capture=lambda module, sample, pool: module, on_device=lambda t: True)
              if dry_run else graph_encoder_forward(models[1]))
    for model in models:
        losses.append(build_loss(model, train_cfg, distributed=False))
        optimizers.append(torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda"))
    rows, worst = [], 0.0
    for step, (lo, hi) in enumerate(batches):
        values = []
        for model, loss_fn in zip(models, losses, strict=True):
            feats = [model.tokenize(t) for t in (anchors[lo:hi], positives[lo:hi])]
            feats = [{k: v.to(device) if hasattr(v, "to") else v for k, v in f.items()} for f in feats]
            with torch.autocast(device, dtype=torch.bfloat16):
                value = loss_fn(feats, None)
            value.backward()
            values.append(value)
        grads = [torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]) for m in models]
        row = {"step": step, "rows": hi - lo, "width": max(int(f["input_ids"].shape[1]) for f in feats),
               "loss_rel": rel(values[1], values[0]), "grad_rel": rel(grads[1], grads[0])}
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        weights = [torch.cat([p.flatten() for p in m.parameters()]) for m in models]
        row["weight_rel"] = rel(weights[1], weights[0])
        rows.append(row)
        worst = max(worst, *(row[k] if row[k] == row[k] else float("inf") for k in ("loss_rel", "grad_rel")))
        print("merged" if merge else "separate", row, flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"passes_per_step": 1 if merge else 2, "captured": len(graphs.graphs), "replays": graphs.replays,
            "eager_passes": graphs.eager_passes, "worst_rel": worst, "rows": rows}


if __name__ == "__main__":
    raise SystemExit(main())
