"""``mrlkit prepare`` streams: a corpus larger than a hard memory cap goes through the real CLI.

Generates a Markdown corpus of ``--mb`` MB (``corpus_throughput.generate``), writes a prepare config like
ray_jobs/configs/demo.yaml's corpus and pairs sections (192-token chunks, as the demo had when the first
results were measured, so they stay comparable; no hard negatives: mining holds every train pair in memory),
and runs the real CLI (``python -m mrlkit.cli prepare --config FILE``) as a subprocess inside a memory
cgroup capped at ``--cap-mb`` (benchmarks/memory_cap.py), so the CLI, its local Ray and every worker share
the cap.
A baseline run of the same CLI on a tiny corpus in the same cap says what Ray and the stage cost
with ~no data. While each runs, the PSS of its process tree, the cgroup's charge and the disk it has
written (``peak_disk_mb``: the corpus plus the stage's work folder and outputs) are sampled every
second. Afterwards the published corpus and pairs are checked: every input file, document, chunk and
row accounted for (``lost`` must be 0), every manifest file present with its sha256 and readable.
``streams``: completed and the corpus is larger than the whole cap.

    .venv/bin/python benchmarks/prepare_streaming.py                        # 2 GB under 1800 MB (~9 minutes)
    .venv/bin/python benchmarks/prepare_streaming.py --mb 60 --cap-mb 1700 --name prepare_streaming_small

Writes benchmarks/results/NAME.json. Exits non-zero when the run fails, lost > 0 or the kernel
OOM-killed anything in the group. Without a writable memory cgroup the runs are measured but not
capped, and the output says so loudly.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_throughput import generate
from memory_cap import MemoryCap

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
NAME = "streaming"  # the pipeline name: corpora/streaming, pairs/streaming
BASELINE_MB = 2.0
SAMPLE_S = 1.0
MAX_TIMELINE = 200  # samples kept in the result (evenly thinned): memory over time shows flat vs growing
MB = 1e6
# Peak disk of the run per MB of corpus, the corpus itself included: 4,959 MB, 5.5x, on 903 MB (session 10,
# prepare_streaming_900mb_s10.json), while the corpus parts are written beside the input, the chunk staging file
# (1,153 MB) and the spooled pairs (2,228 MB). Before prepare drained its spools into the pairs parts and published by
# rename instead of copying, 6,493 MB (7.2x). The margin covers Ray's spilled objects.
DISK_PER_CORPUS_MB = 6.0
# Ray sizes its object store at 30% of the memory limit it reads from /sys/fs/cgroup/memory/memory.limit_in_bytes
# (or memory.max): the *root* group's file, not the child group we create, so inside our cap it would size for
# the whole machine. Capping it at 30% of our cap gives the object store Ray would choose in a container that size.
OBJECT_STORE_FRACTION = 0.3


def say(message: str) -> None:
    print(f"[prepare_streaming] {message}", flush=True)


def write_config(path: Path, corpus_dir: Path, root: Path) -> None:
    """A prepare config like ray_jobs/configs/demo.yaml's (see the module docstring), over ``corpus_dir``."""
    config = {
        "name": NAME,
        "storage": {"root": str(root)},
        "ray": {"num_cpus": 2},
        "corpus": {"input": str(corpus_dir), "format": "text", "glob": "**/*.md", "chunk_tokens": 192,
                   "chunk_overlap_tokens": 24, "dedupe": "near"},  # near is CorpusConfig's default; stated here
        "pairs": {"source": "synthetic", "split": {"mode": "group", "test_fraction": 0.1}},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML: the CLI's loader reads it as is


def cli_env(cap_mb: float | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray inside the cap, never a cluster outside it
    if cap_mb is not None:
        env["RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES"] = str(
            max(80 * MB, int(cap_mb * MB * OBJECT_STORE_FRACTION)))  # Ray's minimum is 75 MiB
    return env


def stage_work_dirs(since: float) -> list[Path]:
    """prepare's work folders (``mrlkit-prepare-*`` in the system temp folder) made at or after ``since``."""
    found = []
    for path in Path(tempfile.gettempdir()).glob("mrlkit-prepare-*"):
        with contextlib.suppress(OSError):  # one that ended between listing and reading
            if path.stat().st_mtime >= since - 1:
                found.append(path)
    return found


def disk_used(paths: list[Path]) -> int:
    """Bytes in files under ``paths``; files that vanish while walking are skipped."""
    total = 0
    for root in paths:
        for folder, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_size
    return total


class Sampler(threading.Thread):
    """Every ``SAMPLE_S``: the PSS sum of the CLI's process tree (and the group's members), the group's charge,
    and the disk the run has written so far (its output root and the stage's work folder)."""

    def __init__(self, pid: int, cap: MemoryCap | None, output_root: Path):
        super().__init__(daemon=True)
        self.pid, self.cap, self.output_root = pid, cap, output_root
        self.since = time.time()
        self.stop = threading.Event()
        self.peaks = {"pss_mb": 0.0, "cgroup_resident_mb": 0.0, "driver_uss_mb": 0.0, "disk_written_mb": 0.0}
        self.timeline: list[list[float]] = []  # [seconds, pss MB, cgroup resident MB]
        self.at_peak: dict[str, float] = {}  # PSS MB by process name when the PSS sum peaked: what grew
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_S)

    def sample(self) -> None:
        import psutil

        procs: dict[int, Any] = {}
        try:
            root = psutil.Process(self.pid)
            procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.Error:
            pass
        for pid in self.cap.pids() if self.cap else []:  # anything that left the tree but not the group
            if pid not in procs:
                try:
                    procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass
        pss = 0
        by_name: dict[str, float] = {}
        count: dict[str, int] = {}
        for proc in procs.values():
            try:
                info = proc.memory_full_info()
                name = proc.name()
            except psutil.Error:
                continue  # a process that ended between listing and reading
            one = info.pss
            pss += one
            if proc.pid == self.pid:  # the CLI's driver: USS leaves out object-store pages it shares with Ray
                self.peaks["driver_uss_mb"] = max(self.peaks["driver_uss_mb"], info.uss / MB)
            by_name[name] = by_name.get(name, 0.0) + one / MB
            count[name] = count.get(name, 0) + 1
        resident = 0.0
        if self.cap:
            try:
                usage = self.cap.usage()
            except OSError:
                usage = None
            if usage:
                resident = usage["resident_bytes"] / MB
                self.peaks["cgroup_resident_mb"] = max(self.peaks["cgroup_resident_mb"], resident)
        written = disk_used([self.output_root, *stage_work_dirs(self.since)]) / MB
        self.peaks["disk_written_mb"] = max(self.peaks["disk_written_mb"], written)
        if pss / MB > self.peaks["pss_mb"]:
            self.peaks["pss_mb"] = pss / MB
            self.at_peak = {f"{k} x{count[k]}": round(v, 1) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])}
        self.timeline.append([round(time.monotonic() - self.started, 1), round(pss / MB, 1), round(resident, 1)])

    def thinned_timeline(self) -> list[list[float]]:
        step = max(1, math.ceil(len(self.timeline) / MAX_TIMELINE))
        return self.timeline[::step]


def parse_summary(stdout: str) -> dict[str, Any] | None:
    """The CLI prints its summary as an indented JSON object (lines ``{`` .. ``}``) after its logs."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line == "{"]
    if not starts:
        return None
    start = starts[-1]
    end = next((i for i in range(start, len(lines)) if lines[i] == "}"), None)
    if end is None:
        return None
    try:
        return json.loads("\n".join(lines[start:end + 1]))
    except json.JSONDecodeError:
        return None


def run_cli(config: Path, cap_mb: float | None, use_cgroup: bool, log_dir: Path, output_root: Path) -> dict[str, Any]:
    """``mrlkit prepare --config FILE`` in a subprocess, inside a fresh memory group when ``use_cgroup``."""
    cmd = [str(PYTHON), "-m", "mrlkit.cli", "prepare", "--config", str(config)]
    out_file = log_dir / "cli-stdout.txt"
    cap = MemoryCap(int(cap_mb * MB) if cap_mb is not None else None) if use_cgroup else None
    usage: dict[str, Any] = {}
    with open(out_file, "w") as out, cap or contextlib.nullcontext():
        started = time.monotonic()
        # stdout (the summary) goes to a file; stderr (the CLI's and Ray's logs) passes through
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(cap_mb), stdout=out,
                                preexec_fn=cap.preexec if cap else None)
        sampler = Sampler(proc.pid, cap, output_root)
        sampler.start()
        rc = proc.wait()
        seconds = time.monotonic() - started
        if cap:
            cap.wait_empty(grace_s=60.0)  # Ray's processes end just after the CLI: the kernel's peak includes them
            usage = cap.usage()
        sampler.stop.set()
        sampler.join()
    stdout = out_file.read_text()
    sys.stdout.write(stdout)
    return {"returncode": rc, "seconds": round(seconds, 1), "summary": parse_summary(stdout), "usage": usage,
            "peaks": sampler.peaks, "at_peak": sampler.at_peak, "timeline": sampler.thinned_timeline()}


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def parquet_rows(path: Path) -> int:
    """Rows of one parquet file, read batch by batch (proves it is readable without holding it)."""
    import pyarrow.parquet as pq

    return sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536))


def check_published(folder: Path) -> tuple[dict[str, Any], int, dict[str, int]]:
    """(manifest, files missing or changed, parquet rows per top folder: "" for the corpus, "train", ...)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    bad = 0
    rows: dict[str, int] = {}
    for rel, digest in manifest["files"].items():
        path = folder / rel
        if not path.is_file() or sha256(path) != digest:
            say(f"LOST: {path} is missing or its sha256 differs from the manifest")
            bad += 1
            continue
        if rel.endswith(".parquet"):
            top = rel.split("/")[0] if "/" in rel else ""
            rows[top] = rows.get(top, 0) + parquet_rows(path)
    return manifest, bad, rows


def account(corpus_dir: Path, root: Path) -> dict[str, Any]:
    """Every input file, document, chunk, published file and row accounted for; ``lost`` sums what is not."""
    inputs = sorted(corpus_dir.rglob("*.md"))
    input_bytes = sum(p.stat().st_size for p in inputs)
    corpus, corpus_bad, corpus_rows = check_published(root / "corpora" / NAME)
    pairs, pairs_bad, pairs_rows = check_published(root / "pairs" / NAME)
    c = corpus["counts"]
    # One figure per way to lose something; each is 0 when nothing was lost.
    gaps = {
        "files_not_counted": abs(len(inputs) - c["files"]),
        "bytes_not_read": abs(input_bytes - c["bytes_read"]),
        "documents_not_read": abs(len(inputs) - c["read"]),  # format text: one document per file
        "read_not_documents_or_rejected": abs(c["read"] - c["documents"] - c["rejected"]),
        "chunks_not_kept_or_duplicate": abs(c["chunks"] + c["duplicate_exact"] + c["duplicate_near"]
                                            - c["chunks_before_dedupe"]),
        "published_files_missing_or_changed": corpus_bad + pairs_bad,
        "corpus_rows_not_published": abs(corpus_rows.get("", 0) - c["chunks"]),
        "train_rows_not_published": abs(pairs_rows.get("train", 0) - c["pairs"]["train"]),
        "test_rows_not_published": abs(pairs_rows.get("test", 0) - c["pairs"]["test"]),
        "eval_corpus_rows_not_published": abs(pairs_rows.get("corpus", 0) - c["eval_corpus"]),
    }
    return {"input_files": len(inputs), "input_mb": round(input_bytes / MB, 1), "counts": c,
            "pairs_manifest_counts_equal": pairs["counts"] == c, "gaps": gaps,
            "lost": sum(gaps.values()) + (pairs["counts"] != c)}


def measure_prepare(mb: float, cap_mb: float | None, work_dir: Path, label: str) -> dict[str, Any]:
    """Generate ``mb`` MB, run the CLI once (capped at ``cap_mb`` where cgroups allow), check what it published."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # generate() reads the tokenizer vocabulary from the cache
    use_cgroup, reason = MemoryCap.available()
    if not use_cgroup:
        say(f"!!! NO MEMORY CAP: {reason}. The {label} run is measured (PSS) but NOT capped. !!!")
    work = work_dir / label
    corpus_dir, root = work / "corpus", work / "root"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    size = generate(corpus_dir, mb)
    say(f"{label}: generated {size / MB:.1f} MB in {time.monotonic() - started:.0f}s under {corpus_dir}")
    config = work / "prepare.yaml"
    write_config(config, corpus_dir, root)
    cap_text = f"a {cap_mb:.0f} MB cap" if cap_mb is not None and use_cgroup else "no cap (measured only)"
    say(f"{label}: running mrlkit prepare in {cap_text} ({reason})")
    run = run_cli(config, cap_mb, use_cgroup, work, root)
    usage = run["usage"]
    figures: dict[str, Any] = {
        "corpus_mb": round(size / MB, 1), "cap_mb": cap_mb, "cgroup_used": use_cgroup, "cgroup_reason": reason,
        "completed": run["returncode"] == 0, "returncode": run["returncode"], "seconds": run["seconds"],
        "mb_per_s": round(size / MB / run["seconds"], 3),
        "mb_per_s_chunking_by_cli": (run["summary"] or {}).get("mb_per_s_chunking"),
        "peak_pss_mb": round(run["peaks"]["pss_mb"], 1), "peak_pss_by_process_mb": run["at_peak"],
        "peak_driver_uss_mb": round(run["peaks"]["driver_uss_mb"], 1),
        # the corpus plus the most the run had written at once (work folder and outputs), sampled each second
        "peak_disk_mb": round(size / MB + run["peaks"]["disk_written_mb"], 1),
        "peak_cgroup_resident_mb": round(run["peaks"]["cgroup_resident_mb"], 1) if use_cgroup else None,
        "peak_cgroup_usage_mb": round(usage["peak_bytes"] / MB, 1) if usage.get("peak_bytes") else None,
        "failcnt": usage.get("failcnt"), "oom_kills": usage.get("oom_kills"),
        "memory_timeline_s_pss_resident_mb": run["timeline"],
    }
    if figures["completed"]:
        figures.update(account(corpus_dir, root))
    else:
        say(f"{label}: mrlkit prepare FAILED with exit status {run['returncode']}")
        figures["lost"] = None
    say(f"{label}: {'completed' if figures['completed'] else 'FAILED'} in {run['seconds']}s, peak PSS "
        f"{figures['peak_pss_mb']} MB, peak cgroup resident {figures['peak_cgroup_resident_mb']} MB, "
        f"peak cgroup usage (page cache included) {figures['peak_cgroup_usage_mb']} MB, "
        f"OOM kills {figures['oom_kills']}, lost {figures['lost']}")
    return figures


def disk_need_mb(corpus_mb: float) -> float:
    """Free disk a run on ``corpus_mb`` MB needs, where the corpus and prepare's work folder are written."""
    return DISK_PER_CORPUS_MB * corpus_mb


def free_disk_mb(*folders: Path) -> float:
    """The least free space among the filesystems of ``folders`` (the test's folder, the system temp folder)."""
    return min(shutil.disk_usage(folder).free for folder in folders) / MB


def baseline_need_mb(baseline: dict[str, Any]) -> float:
    """What the stage holds with ~no data: the larger of its PSS and its cgroup resident (anon + shmem) peak."""
    return max(baseline["peak_pss_mb"], baseline["peak_cgroup_resident_mb"] or 0.0)


def run_capped_prepare(mb: float, cap_mb: float, work_dir: Path, baseline: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The baseline (``BASELINE_MB``, same cap, unless given) and the ``mb`` run; figures for both and verdicts."""
    if baseline is None:
        baseline = measure_prepare(BASELINE_MB, cap_mb, Path(work_dir), "baseline")
    main = measure_prepare(mb, cap_mb, Path(work_dir), f"corpus-{mb:g}mb")
    need = baseline_need_mb(baseline)
    above_pss = main["peak_pss_mb"] - baseline["peak_pss_mb"]
    above_resident = ((main["peak_cgroup_resident_mb"] or 0.0) - (baseline["peak_cgroup_resident_mb"] or 0.0)
                      if main["cgroup_used"] else None)
    ok = main["completed"] and main["lost"] == 0 and not main["oom_kills"]
    result = {
        **{k: v for k, v in main.items() if k != "counts"}, "manifest_counts": main.get("counts"),
        "baseline": {k: baseline[k] for k in ("corpus_mb", "cap_mb", "completed", "seconds", "peak_pss_mb",
                                              "peak_cgroup_resident_mb", "peak_cgroup_usage_mb", "peak_driver_uss_mb",
                                              "oom_kills", "lost", "peak_pss_by_process_mb")},
        "baseline_need_mb": round(need, 1),
        "peak_pss_above_baseline_mb": round(above_pss, 1),
        "peak_resident_above_baseline_mb": round(above_resident, 1) if above_resident is not None else None,
        "headroom_mb": round(cap_mb - need, 1),  # what the cap leaves for data once Ray and the stage are up
        "object_store_cap_mb": round(int(cli_env(cap_mb)["RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES"]) / MB, 1),
        # The verdicts: the whole corpus is larger than the cap, or larger than what the cap leaves for data.
        "streams": bool(ok and main["cgroup_used"] and main["corpus_mb"] > cap_mb),
        "streams_beyond_headroom": bool(ok and main["cgroup_used"] and main["corpus_mb"] > cap_mb - need),
    }
    if not main["cgroup_used"]:
        result["warning"] = "NO MEMORY CAP WAS ENFORCED (no writable memory cgroup): only PSS figures are meaningful"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=2000.0, help="corpus size to generate (MB)")
    parser.add_argument("--cap-mb", type=float, default=1800.0, help="memory cap for the CLI and its Ray (MB)")
    parser.add_argument("--name", default="prepare_streaming", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args()
    from common import write_result

    with tempfile.TemporaryDirectory(prefix="prepare-streaming-") as tmp:
        result = run_capped_prepare(args.mb, args.cap_mb, Path(tmp))
    print(json.dumps({k: v for k, v in result.items() if k != "memory_timeline_s_pss_resident_mb"}, indent=2))
    write_result(args.name, result)
    if not result["cgroup_used"]:
        say(f"!!! {result['warning']} !!!")
    failed = [why for why, bad in (("the run failed", not result["completed"]), ("lost > 0", result["lost"] != 0),
                                   ("the kernel OOM-killed a process", bool(result["oom_kills"]))) if bad]
    if failed:
        say("FAILED: " + ", ".join(failed))
        return 1
    say(f"streams: {result['streams']} (corpus {result['corpus_mb']} MB vs cap {args.cap_mb:g} MB), "
        f"streams beyond headroom: {result['streams_beyond_headroom']} (headroom {result['headroom_mb']} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
