"""Corpus processing throughput: read -> chunk -> dedupe -> write, with 1 and 2 Ray CPUs, and peak memory.

Generates a large Markdown corpus (default 200 MB, many files of ~100 kB with
headings, paragraphs and ~2% duplicated files), then runs the corpus half of stage
``prepare`` (Ray Data read + normalise + token-aware chunking with all-MiniLM-L6-v2's
tokenizer + exact/near dedupe + parquet write + atomic publish) in a fresh process
per setting, so each gets its own Ray with ``num_cpus`` 1 or 2 (its workers also find each chunk's
inverse-cloze sentences, as the stage's do); then, timed apart, the rest of the stage (synthetic pairs
and the split, one pass in the driver: ``*_whole_stage``). Peak memory is sampled over the driver
and every Ray process it started; the half-size run shows whether memory grows with corpus size
(it must not: the stage streams). Ray's start and a tiny warm-up dataset (worker processes, tokenizer
load) are timed separately (``warm_up_s``).

    .venv/bin/python benchmarks/corpus_throughput.py                 # 200 MB, 3 pairs (~7 minutes on 2 cores)
    .venv/bin/python benchmarks/corpus_throughput.py --mb 40         # a quicker check
    .venv/bin/python benchmarks/corpus_throughput.py --no-op-reservation --name corpus_throughput_no_reservation

``--no-op-reservation`` is an experiment, not a setting of the stage: it turns off Ray Data's per-operator
resource reservation for pass 1. That removes Ray Data's start-up and per-task scheduling lag, but also its
bound on the object store, which the stage needs under a memory cap (README, the prepare throughput row).

The 1- and 2-CPU runs alternate ``--repeats`` times (default 3) and the speedup is the median of the
pairs' ratios: this machine is shared, and single pairs have ranged 1.50-1.83 with no change in between.

Writes benchmarks/results/corpus_throughput.json (``--name`` to choose another name).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_json_child

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FILE_BYTES = 100_000


def generate(out: Path, total_mb: float, seed: int = 0) -> int:
    """Markdown files under out/a and out/b (half each); returns the bytes written."""
    rng = random.Random(seed)
    vocab = _vocabulary()
    written = 0
    n_files = max(2, int(total_mb * 1e6 / FILE_BYTES))
    previous = ""
    for i in range(n_files):
        folder = out / ("a" if i < n_files // 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        if previous and rng.random() < 0.02:
            text = previous  # an exact duplicate file, found by the global dedupe pass
        else:
            parts = [f"# Document {i}: {' '.join(rng.choices(vocab, k=4))}\n"]
            size = len(parts[0])
            while size < FILE_BYTES:
                if rng.random() < 0.1:
                    block = f"## {' '.join(rng.choices(vocab, k=3)).title()}\n"
                else:
                    sentences = [" ".join(rng.choices(vocab, k=rng.randint(6, 25))).capitalize() + "."
                                 for _ in range(rng.randint(2, 7))]
                    block = " ".join(sentences) + "\n"
                parts.append(block)
                size += len(block) + 1
            text = "\n".join(parts)
        (folder / f"doc-{i:06d}.md").write_text(text)
        written += len(text.encode())
        previous = text
    return written


def _vocabulary() -> list[str]:
    """Whole English words from the model's own WordPiece vocabulary (realistic tokens per byte, offline)."""
    from mrlkit.models import resolve_model

    words = (Path(resolve_model(MODEL)) / "vocab.txt").read_text().split()
    return sorted({w for w in words if w.isalpha() and w.isascii() and len(w) >= 2})


def _cpu_seconds() -> dict[int, float]:
    """user+system CPU seconds of this process and every process it started (Ray's included), by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
    return out


def _sample_memory(stop: threading.Event, peaks: dict[str, float]) -> None:
    """Peak RSS, and peak USS (driver) / PSS (all): RSS also counts the shared object-store pages a process
    has touched, which say nothing about what it holds; USS/PSS do not."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        rss = pss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += info.pss
            if proc.pid == me.pid:
                peaks["driver_mb"] = max(peaks.get("driver_mb", 0), info.rss / 1e6)
                peaks["driver_uss_mb"] = max(peaks.get("driver_uss_mb", 0), info.uss / 1e6)
        peaks["total_mb"] = max(peaks.get("total_mb", 0), rss / 1e6)
        peaks["total_pss_mb"] = max(peaks.get("total_pss_mb", 0), pss / 1e6)
        stop.wait(1.0)


def run_once(input_dir: str, glob: str, num_cpus: int, root: str, op_reservation: bool = True) -> dict:
    """One measured run in this process (a fresh Ray with ``num_cpus``)."""
    import ray

    from mrlkit import storage
    from mrlkit.config import config_from_dict
    from mrlkit.config_schema import RayConfig
    from mrlkit.corpus.pipeline import build_chunks, write_corpus_parts
    from mrlkit.corpus.sources import find_inputs
    from mrlkit.pairs.build import build_pairs
    from mrlkit.pairs.stage import shard_options
    from mrlkit.pairs.writer import write_pairs_dir
    from mrlkit.ray_runtime import init_ray

    pipeline = config_from_dict({
        "name": "bench", "train": {"base_model": MODEL}, "pairs": {"source": "synthetic"},
        "corpus": {"input": input_dir, "format": "text", "glob": glob, "chunk_tokens": 256,
                   "chunk_overlap_tokens": 32, "dedupe": "near"}})
    cfg = pipeline.corpus
    options = shard_options(pipeline)  # as the stage builds them: workers also find the inverse-cloze sentences
    init_ray(RayConfig(num_cpus=num_cpus))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().op_resource_reservation_enabled = op_reservation
    warm = time.monotonic()
    _warm_up(ray, num_cpus)  # start Ray Data and its workers outside the timed part (reported separately)
    warm_up_s = time.monotonic() - warm
    peaks: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(stop, peaks), daemon=True)
    sampler.start()
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory() as work:
        started = time.monotonic()
        inputs = find_inputs(cfg)
        chunks, rejects = build_chunks(inputs, options, Path(work), num_cpus)
        t_chunks = time.monotonic() - started
        write_corpus_parts(chunks, Path(work) / "out")
        storage.publish_dir(Path(work) / "out", storage.join(root, f"cpus-{num_cpus}"))
        seconds = time.monotonic() - started
        # The rest of stage prepare, timed apart: synthetic pairs and the split, one pass in the driver.
        pairs_started = time.monotonic()
        pairs = build_pairs(pipeline, chunks, spool_folder=Path(work) / "spool")
        write_pairs_dir(Path(work) / "pairs", pairs)
        pairs_seconds = time.monotonic() - pairs_started
    cpu_used = sum(v - cpu_before.get(pid, 0.0) for pid, v in _cpu_seconds().items())
    load_after = os.getloadavg()[0]
    stop.set()
    sampler.join()
    mb = inputs.total_bytes / 1e6
    ray.shutdown()
    return {"num_cpus": num_cpus, "warm_up_s": round(warm_up_s, 2), "mb": round(mb, 1), "files": len(inputs.files),
            "seconds": round(seconds, 2),
            "mb_per_s": round(mb / seconds, 3), "mb_per_s_per_cpu": round(mb / seconds / num_cpus, 3),
            "seconds_read_chunk_dedupe": round(t_chunks, 2), "chunks": chunks.counts["chunks"],
            "seconds_pairs_pass": round(pairs_seconds, 2), "train_pairs": len(pairs.train),
            "mb_per_s_whole_stage": round(mb / (seconds + pairs_seconds), 3),
            "duplicate_exact": chunks.counts["duplicate_exact"], "duplicate_near": chunks.counts["duplicate_near"],
            "rejects": len(rejects), "peak_rss_driver_mb": round(peaks.get("driver_mb", 0), 1),
            "peak_rss_all_ray_processes_mb": round(peaks.get("total_mb", 0), 1),
            "peak_uss_driver_mb": round(peaks.get("driver_uss_mb", 0), 1),
            "peak_pss_all_ray_processes_mb": round(peaks.get("total_pss_mb", 0), 1),
            # CPU time of the driver and every Ray process: MB per CPU-second is the per-core throughput
            # even when other work shares the machine (wall-clock MB/s is not, then).
            "cpu_seconds": round(cpu_used, 1), "mb_per_cpu_second": round(mb / max(cpu_used, 1e-9), 3),
            "load_average_1min_before_after": [round(load_before, 1), round(load_after, 1)]}


def _load_chunker(batch: dict) -> dict:
    from mrlkit.corpus.chunking import load_backend

    load_backend(MODEL)
    return batch


def _warm_up(ray, num_cpus: int) -> None:
    """One tiny dataset run: Ray Data's executor and one worker per CPU, each with the tokenizer loaded."""
    ds = ray.data.from_items([{"x": i} for i in range(2 * num_cpus)], override_num_blocks=2 * num_cpus)
    for _ in ds.map_batches(_load_chunker, batch_size=None, num_cpus=1).iter_batches(batch_size=None):
        pass


def _child(input_dir: str, glob: str, num_cpus: int, root: str, op_reservation: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", input_dir, "--glob", glob, "--num-cpus", str(num_cpus),
           "--root", root, *([] if op_reservation else ["--no-op-reservation"])]
    result = run_json_child(cmd, f"run with {num_cpus} CPUs")
    print(f"  {num_cpus} CPU(s), {glob}: {result['mb']} MB in {result['seconds']}s = {result['mb_per_s']} MB/s, "
          f"peak RSS {result['peak_rss_all_ray_processes_mb']} MB", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size to generate (MB)")
    parser.add_argument("--input", help="use this folder of Markdown files (with a/ and b/ halves) instead")
    parser.add_argument("--name", default="corpus_throughput", help="results file: benchmarks/results/NAME.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--glob", default="**/*.md", help=argparse.SUPPRESS)
    parser.add_argument("--num-cpus", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="alternating pairs of 1- and 2-CPU runs")
    parser.add_argument("--no-op-reservation", action="store_true",
                        help="experiment: Ray Data's per-operator resource reservation off for pass 1")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.child:
        print(json.dumps(run_once(args.child, args.glob, args.num_cpus, args.root, not args.no_op_reservation)))
        return 0
    from common import write_result

    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        data = Path(args.input) if args.input else Path(tmp) / "raw"
        if not args.input:
            started = time.monotonic()
            size = generate(data, args.mb)
            print(f"generated {size / 1e6:.1f} MB in {time.monotonic() - started:.0f}s under {data}", flush=True)
        root = str(Path(tmp) / "out")
        reserve = not args.no_op_reservation
        pairs = []
        for _ in range(args.repeats):
            pairs.append(tuple(_child(str(data), "**/*.md", cpus, root, reserve) for cpus in (1, 2)))
        half = _child(str(data), "a/*.md", 2, root, reserve)
    one, two = pairs[0]
    speedups = [b["mb_per_s"] / a["mb_per_s"] for a, b in pairs]
    figures = {
        "corpus_mb": one["mb"], "generated": not args.input, "ray_data_op_reservation": not args.no_op_reservation,
        "runs": {"cpus_1": one, "cpus_2": two, "cpus_2_half_corpus": half},
        "repeats": [{"seconds_cpus_1": a["seconds"], "seconds_cpus_2": b["seconds"], "speedup": round(r, 3),
                     "mb_per_s_per_core_2cpus": b["mb_per_s_per_cpu"],
                     "load_average_1min_before": [a["load_average_1min_before_after"][0],
                                                  b["load_average_1min_before_after"][0]]}
                    for (a, b), r in zip(pairs, speedups, strict=True)],
        "speedup_2_vs_1_cpu": round(statistics.median(speedups), 3),
        "mb_per_s_per_core_2cpus": round(statistics.median(b["mb_per_s_per_cpu"] for _, b in pairs), 3),
        "mb_per_cpu_second": {"cpus_1": one["mb_per_cpu_second"], "cpus_2": two["mb_per_cpu_second"]},
        "load_average_during_runs": {k: r["load_average_1min_before_after"]
                                     for k, r in (("cpus_1", one), ("cpus_2", two), ("cpus_2_half", half))},
        "peak_memory_full_vs_half_corpus": round(
            two["peak_rss_all_ray_processes_mb"] / max(half["peak_rss_all_ray_processes_mb"], 1), 3),
        "peak_pss_full_vs_half_corpus": round(
            two.get("peak_pss_all_ray_processes_mb", 0) / max(half.get("peak_pss_all_ray_processes_mb", 0), 1), 3),
        "peak_driver_uss_full_vs_half_corpus": round(
            two.get("peak_uss_driver_mb", 0) / max(half.get("peak_uss_driver_mb", 0), 1), 3),
        "targets": {"mb_per_s_per_core": 2.0, "speedup_2_vs_1": 1.6},
        "speedup_2_vs_1_cpu_whole_stage": round(statistics.median(
            b["mb_per_s_whole_stage"] / a["mb_per_s_whole_stage"] for a, b in pairs), 3),
        "note": "speedup_2_vs_1_cpu and mb_per_s_per_core_2cpus: medians over the alternating pairs (repeats); runs: "
                "the first pair in full, and a 2-CPU run on half the corpus (memory must not grow with it). "
                "mb_per_s and the speedup: read, normalise, chunk, exact+near dedupe, parquet, publish (the corpus "
                "half of stage prepare, which Ray shards; its workers also find each chunk's inverse-cloze sentences); "
                "*_whole_stage adds the synthetic pairs pass, which runs in the driver",
    }
    print(json.dumps(figures, indent=2))
    write_result(args.name, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
