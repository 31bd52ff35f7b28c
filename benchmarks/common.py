"""What every benchmark records next to its figures (the machine, the versions, the command), and how one runs a
measurement in a fresh child process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU count, platform, accelerator (if any) and the versions that change the figures."""
    info: dict[str, Any] = {
        "hostname_kind": "ci-or-dev-vm" if os.environ.get("CI") else "dev-vm",
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": {p: _version(p) for p in ("mrlkit", "torch", "ray", "sentence-transformers", "transformers")},
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        else:
            info["gpu"] = None
    except ImportError:
        info["gpu"] = None
    try:
        from mrlkit.train.worker import cpu_computes_bf16

        info["cpu_bf16"] = cpu_computes_bf16()  # precision auto trains a CPU worker in bf16 when true
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                                     None)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def write_result(name: str, figures: dict[str, Any], *, command: str | None = None, path: Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``path``) with the figures, the machine and the exact command."""
    out = path or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **figures,
    }
    out.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {out}")
    return out


def run_json_child(cmd: list[str], what: str) -> dict[str, Any]:
    """Run a measurement in a fresh process (its own Ray, offline, no progress bars) and return the JSON object
    it prints last; exit with its stderr's tail, naming ``what`` failed, if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
