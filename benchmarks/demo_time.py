"""Wall time of the default demo (the README's `make demo`) on a fresh storage root, and its report.

Runs ``python -m mrlkit.demo storage.root=<fresh temporary folder>`` (the virtualenv must exist:
`make venv`), times it, and writes ``benchmarks/results/demo_time.json`` with the NDCG@10 table::

    .venv/bin/python benchmarks/demo_time.py

Target (the demo issue): under 15 minutes on 2 cores, with progress visible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 15 * 60


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mrlkit-demo-") as root:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mrlkit.demo", f"storage.root={root}"], cwd=REPO,
                              capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"benchmarks/demo_time.py: the demo failed (exit {done.returncode})", file=sys.stderr)
            return 1
        report = json.loads(Path(root, "reports", "demo", "report.json").read_text())
    ndcg = {m["label"]: {dim: round(v["ndcg@10"], 4) for dim, v in m["metrics"].items()} for m in report["models"]}
    write_result("demo_time", {"seconds": round(seconds, 1), "minutes": round(seconds / 60, 2),
                               "target_s": TARGET_S, "under_target": seconds < TARGET_S, "ndcg@10": ndcg,
                               "ndcg@10_improvement_pct": report["ndcg@10_improvement_pct"],
                               "timings_s": report["timings_s"]})
    print(f"demo: {seconds / 60:.1f} min (target < {TARGET_S / 60:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
