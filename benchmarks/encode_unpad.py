"""What unpadding saves where mrlkit encodes without training: a served batch, and an evaluation's corpus.

Two copies of one model (all-MiniLM-L6-v2, offline) encode the same texts side by side, in interleaved
rounds: one computing on padding (``unpad=False``), one on real tokens only (``mrlkit.unpad``, the default
of ``serve.unpad``, ``evaluate.unpad`` and ``pairs.hard_negatives.unpad``). Texts are the seed dataset's
questions and contexts.

Workloads:

- ``serve/<mix>``: ``Embedder.encode_full`` on batches of ``--serve-batch`` texts in arrival order, as a
  replica's dynamic batcher hands them over (one padded batch per forward pass). Mixes: ``queries`` (every
  text a question), ``mixed`` (each text a context with probability ``--passage-share``, else a question:
  a search service that also indexes), ``passages`` (every text a context).
- ``evaluate``: ``encode_in_process`` (``model.encode_document``, which sorts texts by length before
  batching, so its batches hold less padding) on ``--corpus`` contexts, batches of ``--eval-batch``.

Reports, per workload, the median seconds of each copy, the ratio padded/unpadded (medians of the rounds)
and the largest difference between the two copies' vectors.

Run::

    .venv/bin/python benchmarks/encode_unpad.py --data ../shared/datasets/financial-qa-10k

Writes benchmarks/results/encode_unpad.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DATA_FILE = "finanical_rag_embedding_dataset.jsonl"  # the dataset's own spelling


def load_texts(data: Path) -> tuple[list[str], list[str]]:
    """The seed dataset's questions and contexts, the empty ones left out (the endpoint refuses an empty input)."""
    path = data / DATA_FILE
    if not path.is_file():
        raise SystemExit(f"--data {data}: no {DATA_FILE} there; pass the financial-qa-10k folder")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ([r["question"] for r in rows if r["question"].strip()],
            [r["context"] for r in rows if r["context"].strip()])


def share(value: str) -> float:
    """An argparse type: a fraction in [0, 1]."""
    fraction = float(value)
    if not 0.0 <= fraction <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {value}")
    return fraction


def serve_batches(questions: list[str], contexts: list[str], mix: str, *, batches: int, size: int,
                  passage_share: float, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    share = {"queries": 0.0, "mixed": passage_share, "passages": 1.0}[mix]
    return [[rng.choice(contexts) if rng.random() < share else rng.choice(questions) for _ in range(size)]
            for _ in range(batches)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/financial-qa-10k"))
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a replica on 2 CPUs)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts")
    parser.add_argument("--serve-batch", type=int, default=32, help="texts a forward pass (serve.max_batch_size)")
    parser.add_argument("--serve-batches", type=int, default=8, help="batches per serve workload and round")
    parser.add_argument("--passage-share", type=share, default=0.25, help="contexts' share of the mixed workload")
    parser.add_argument("--corpus", type=int, default=1024, help="contexts the evaluate workload encodes")
    parser.add_argument("--eval-batch", type=int, default=64, help="evaluate.batch_size")
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()

    import numpy as np
    import torch

    from mrlkit.evaluate.encode import encode_in_process
    from mrlkit.serve.embedder import Embedder

    torch.set_num_threads(ns.threads)
    questions, contexts = load_texts(ns.data)
    copies = {"padded": Embedder.load(ns.model, unpad=False), "unpadded": Embedder.load(ns.model)}
    if copies["unpadded"].unpadded is None:
        raise SystemExit(f"{ns.model} cannot run unpadded here: nothing to compare")
    corpus = random.Random(1).sample(contexts, min(ns.corpus, len(contexts)))
    workloads: dict[str, Any] = {
        f"serve/{mix}": serve_batches(questions, contexts, mix, batches=ns.serve_batches, size=ns.serve_batch,
                                      passage_share=ns.passage_share, seed=2)
        for mix in ("queries", "mixed", "passages")}
    workloads["evaluate"] = corpus

    def run(name: str, copy: Embedder) -> np.ndarray:
        if name == "evaluate":
            return encode_in_process(copy.model, workloads[name], "document", ns.eval_batch).numpy()
        return np.concatenate([copy.encode_full(batch) for batch in workloads[name]])

    for copy in copies.values():  # warm-up: first-call allocations and kernels
        copy.encode_full(questions[:ns.serve_batch])
    seconds: dict[str, dict[str, list[float]]] = {w: {c: [] for c in copies} for w in workloads}
    differences: dict[str, float] = {}
    wrapper = copies["unpadded"].unpadded
    tokens: dict[str, list[int]] = {w: [0, 0] for w in workloads}  # real, padded: each workload's padding
    for round_ in range(ns.rounds):
        for name in workloads:
            # alternate which copy goes first, so a drift in the machine's load does not favour one
            order = list(copies) if round_ % 2 == 0 else list(reversed(copies))
            vectors = {}
            for label in order:
                real, padded = wrapper.real_tokens, wrapper.padded_tokens
                started = time.perf_counter()
                vectors[label] = run(name, copies[label])
                seconds[name][label].append(time.perf_counter() - started)
                if label == "unpadded":
                    tokens[name][0] += wrapper.real_tokens - real
                    tokens[name][1] += wrapper.padded_tokens - padded
            differences[name] = max(differences.get(name, 0.0),
                                    float(np.abs(vectors["unpadded"] - vectors["padded"]).max()))
            print(f"round {round_} {name}: " + ", ".join(f"{label} {seconds[name][label][-1]:.2f} s"
                                                         for label in copies), flush=True)

    figures: dict[str, Any] = {}
    for name, texts in workloads.items():
        padded, unpadded = (statistics.median(seconds[name][c]) for c in ("padded", "unpadded"))
        n_texts = len(texts) if name == "evaluate" else sum(len(b) for b in texts)
        figures[name] = {"texts": n_texts, "seconds_median": {"padded": round(padded, 3),
                                                              "unpadded": round(unpadded, 3)},
                         "texts_per_s": {"padded": round(n_texts / padded, 1),
                                         "unpadded": round(n_texts / unpadded, 1)},
                         "padded_over_unpadded": round(padded / unpadded, 2),
                         # the real tokens' share of the padded batches' (batches without padding not counted)
                         "real_token_fraction": round(tokens[name][0] / max(tokens[name][1], 1), 3),
                         "seconds_all": seconds[name], "max_abs_vector_difference": differences[name]}
        print(f"{name}: padded {padded:.2f} s, unpadded {unpadded:.2f} s: {padded / unpadded:.2f}x "
              f"(vectors within {differences[name]:.1e}; real tokens {figures[name]['real_token_fraction']:.0%} "
              "of the padded batches)", flush=True)
    summary = wrapper.summary()
    write_result("encode_unpad", {
        "model": ns.model, "torch_threads": torch.get_num_threads(), "rounds": ns.rounds,
        "settings": {"serve_batch": ns.serve_batch, "serve_batches": ns.serve_batches,
                     "passage_share": ns.passage_share, "corpus": len(corpus), "eval_batch": ns.eval_batch},
        "workloads": figures,
        "unpadded_passes": summary,
        "note": "ratios are medians of interleaved rounds on one machine, both copies in one process",
    }, path=ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
