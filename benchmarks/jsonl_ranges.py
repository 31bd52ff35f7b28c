"""One large JSONL file through pass 1 of stage ``prepare`` on 2 Ray CPUs: cut into ranges of lines, or whole.

A JSONL file over 16 MB (a BEIR ``corpus.jsonl``) is cut into ranges of lines (``mrlkit.corpus.line_ranges``)
so one file shards over every worker. This measures what that buys: the same file (the throughput
benchmark's Markdown documents as records, with a few malformed lines) is read with ranges and whole, in
alternating fresh processes, and the chunk table and the rejects must come out equal.

    .venv/bin/python benchmarks/jsonl_ranges.py                 # 60 MB, 2 alternating pairs (~3 minutes)

Writes benchmarks/results/jsonl_ranges.json (``--name`` to choose another name).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_json_child

BAD_LINE_EVERY = 97


def make_jsonl(path: Path, total_mb: float) -> int:
    """One JSONL file of the throughput benchmark's documents, a malformed line every ``BAD_LINE_EVERY``."""
    import corpus_throughput

    with tempfile.TemporaryDirectory() as folder:
        corpus_throughput.generate(Path(folder), total_mb)
        with path.open("w", encoding="utf-8") as out:
            for i, md in enumerate(sorted(Path(folder).rglob("*.md"))):
                out.write(json.dumps({"id": f"doc-{i}", "text": md.read_text(encoding="utf-8")}) + "\n")
                if i % BAD_LINE_EVERY == 5:
                    out.write('{"text": "unterminated\n')
    return path.stat().st_size


def run_once(path: str, num_cpus: int, ranges: bool) -> dict:
    """Pass 1 and the global dedupe pass in this process (a fresh Ray), with or without line ranges."""
    import ray

    import corpus_throughput
    from mrlkit.config import config_from_dict
    from mrlkit.config_schema import RayConfig
    from mrlkit.corpus import blocks, pipeline
    from mrlkit.corpus.sources import find_inputs
    from mrlkit.pairs.stage import shard_options
    from mrlkit.ray_runtime import init_ray

    if not ranges:
        blocks.SPLITTABLE_FORMATS = ()  # what the stage did before: the file is one task
    cfg = config_from_dict({
        "name": "bench", "train": {"base_model": corpus_throughput.MODEL}, "pairs": {"source": "synthetic"},
        "corpus": {"input": path, "format": "jsonl", "columns": {"id": "id", "text": "text"},
                   "chunk_tokens": 256, "chunk_overlap_tokens": 32, "dedupe": "near", "max_reject_fraction": 0.5}})
    init_ray(RayConfig(num_cpus=num_cpus))
    ray.data.DataContext.get_current().enable_progress_bars = False
    corpus_throughput._warm_up(ray, num_cpus)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=corpus_throughput._sample_memory, args=(stop, peaks), daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as work:
        started = time.monotonic()
        inputs = find_inputs(cfg.corpus)
        chunks, rejects = pipeline.build_chunks(inputs, shard_options(cfg), Path(work), num_cpus)
        seconds = time.monotonic() - started
        digest = hashlib.sha256()  # row by row: the staging file's batches follow pass 1's tables
        for _, row in chunks.iter_rows(("chunk_id", "text")):
            digest.update(json.dumps(row).encode() + b"\n")
        digest.update(chunks.keep.tobytes())
    stop.set()
    sampler.join()
    ray.shutdown()
    mb = inputs.total_bytes / 1e6
    return {"ranges": ranges, "num_cpus": num_cpus, "mb": round(mb, 1), "seconds_read_chunk_dedupe": round(seconds, 2),
            "mb_per_s": round(mb / seconds, 3), "chunks": chunks.counts["chunks"], "rejects": len(rejects),
            "reject_lines": [r.get("line") for r in rejects][:5], "chunks_sha256": digest.hexdigest(),
            "peak_pss_all_ray_processes_mb": round(peaks.get("total_pss_mb", 0), 1)}


def _child(path: str, num_cpus: int, ranges: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--num-cpus", str(num_cpus), *([] if ranges else ["--whole"])]
    result = run_json_child(cmd, f"run ({'ranges' if ranges else 'whole'})")
    print(f"  {'ranges' if ranges else 'whole '}: {result['mb']} MB in {result['seconds_read_chunk_dedupe']}s = "
          f"{result['mb_per_s']} MB/s, peak PSS {result['peak_pss_all_ray_processes_mb']} MB", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=60.0, help="size of the JSONL file to generate (MB)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating pairs of whole and ranges runs")
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs")
    parser.add_argument("--name", default="jsonl_ranges", help="results file: benchmarks/results/NAME.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(args.child, args.num_cpus, not args.whole)))
        return 0
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    from common import write_result

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.jsonl"
        size = make_jsonl(path, args.mb)
        print(f"generated one JSONL file of {size / 1e6:.1f} MB", flush=True)
        pairs = [(_child(str(path), args.num_cpus, False), _child(str(path), args.num_cpus, True))
                 for _ in range(args.repeats)]
    same = all(w["chunks_sha256"] == r["chunks_sha256"] and w["rejects"] == r["rejects"] for w, r in pairs)
    if not same:
        raise SystemExit("ranges and whole-file reads gave different chunks or rejects: " + json.dumps(pairs))
    speedups = [w["seconds_read_chunk_dedupe"] / r["seconds_read_chunk_dedupe"] for w, r in pairs]
    write_result(args.name, {
        "mb": pairs[0][0]["mb"], "num_cpus": args.num_cpus, "runs": [run for pair in pairs for run in pair],
        "speedup_ranges_vs_whole": round(statistics.median(speedups), 3),
        "speedups": [round(s, 3) for s in speedups], "same_chunks_and_rejects": same,
        "note": "pass 1 + global dedupe (read, normalise, chunk, hash) of one JSONL file; whole = one task, as "
                "before line ranges; speedup_ranges_vs_whole is the median of the alternating pairs' ratios"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
