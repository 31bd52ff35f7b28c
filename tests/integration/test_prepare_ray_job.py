"""``ray job submit ... -- python ray_jobs/prepare.py --config ...`` against a local ``ray start --head``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mrlkit import layout, storage
from mrlkit.config import load_config
from mrlkit.testing.ray_head import LocalRayHead

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def test_prepare_as_a_submitted_ray_job(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(6):
        (raw / f"doc{i}.md").write_text(f"# Topic {i}\n\n" + " ".join(
            f"Sentence {j} of document {i} is about subject {i * 7 + j} in some detail." for j in range(12)))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "name": "job", "storage": {"root": str(tmp_path / "out")},
        "corpus": {"input": str(raw), "format": "text", "chunk_tokens": 64, "chunk_overlap_tokens": 8},
        "pairs": {"source": "synthetic", "split": {"test_fraction": 0.34}}}))
    head = LocalRayHead(tmp_path / "head", num_cpus=2).start()
    try:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        runtime_env = json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        deadline = time.monotonic() + 240  # a loaded machine can take minutes
        while True:  # the head's job agent may come up a little after `ray start` returns
            out = subprocess.run(
                [RAY, "job", "submit", "--address", head.address, "--runtime-env-json", runtime_env, "--",
                 sys.executable, str(REPO / "ray_jobs" / "prepare.py"), "--config", str(config)],
                env={**clean, **head.client_env()}, capture_output=True, text=True, timeout=400, cwd=REPO)
            refused = out.returncode != 0 and "No available agent" in out.stdout + out.stderr
            if not refused or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        head.stop()
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "succeeded" in logs and "prepare done" in logs
    cfg = load_config(config)
    chunks = layout.read_table(layout.corpus_uri(cfg))
    assert chunks.num_rows >= 6 and storage.is_published(layout.pairs_uri(cfg))
    assert layout.read_table(layout.pairs_uri(cfg), "train").num_rows > 0
