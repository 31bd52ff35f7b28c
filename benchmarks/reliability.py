"""Reliability figures: run the reliability suite; per fault or check: what was done, how often, what was lost.

Runs ``pytest tests/reliability`` (slow tests included unless ``--fast``) with
``MRLKIT_RELIABILITY_OUT`` set, so each test appends its figure (check, what was
done, times, lost: the target is zero); adds every test's outcome, the known
bugs (strict xfails, with their reasons) and the issue's items this suite does
not cover yet, and writes benchmarks/results/reliability.json::

    .venv/bin/python benchmarks/reliability.py            # everything (several minutes on 2 cores)
    .venv/bin/python benchmarks/reliability.py --fast     # skip tests marked slow
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result

REPO = Path(__file__).resolve().parents[1]

# Items of the reliability issue that no test in tests/reliability exercises yet (kept honest in the figures).
NOT_COVERED: dict[str, str] = {}


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """Test id -> outcome (passed / failed / error / xfailed / skipped) and the reason where there is one."""
    result: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, reason = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, reason = ("xfailed" if xfail else "skipped"), child.get("message", "")
        result[name] = {"outcome": outcome, **({"reason": reason[:500]} if reason else {})}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="skip tests marked slow")
    parser.add_argument("--name", default="reliability", help="results file name (benchmarks/results/<name>.json)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mrlkit-reliability-") as tmp:
        figures_path, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *(["-m", "not slow"] if args.fast else [])]
        env = {**os.environ, "MRLKIT_RELIABILITY_OUT": str(figures_path), "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
        seconds = round(time.monotonic() - started, 1)
        entries = [json.loads(line) for line in figures_path.read_text().splitlines()] if figures_path.exists() else []
        tests = outcomes(junit) if junit.exists() else {}

    checks = {e["check"]: e for e in entries}
    known_bugs = {name: t["reason"] for name, t in tests.items() if t["outcome"] == "xfailed"}
    failed = sorted(name for name, t in tests.items() if t["outcome"] in ("failed", "error"))
    record = {
        "summary": {
            "checks_run": len(checks),
            "total_times": sum(e["times"] for e in checks.values()),
            "total_lost": sum(e["lost"] for e in checks.values()),
            "tests": {o: sum(t["outcome"] == o for t in tests.values())
                      for o in ("passed", "failed", "error", "xfailed", "skipped")},
            "failed_tests": failed,
            "pytest_exit_code": proc.returncode,
            "seconds": seconds,
            "slow_tests_included": not args.fast,
        },
        "checks": checks,
        "known_bugs_xfail": known_bugs,
        "not_covered_yet": NOT_COVERED,
        "tests": tests,
    }
    write_result(args.name, record, command=" ".join([".venv/bin/python", "benchmarks/reliability.py",
                                                       *(["--fast"] if args.fast else [])]))
    print(json.dumps(record["summary"], indent=2))
    return 0 if proc.returncode == 0 and record["summary"]["total_lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
