"""`make demo` end to end (its module, at a reduced size): prepare -> train -> evaluate, then the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline_and_prints_the_report(tmp_path):
    root = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MRLKIT_S3"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(
        [sys.executable, "-m", "mrlkit.demo", "--config", "ray_jobs/configs/demo.yaml",
         f"storage.root={root}", f"corpus.input={tmp_path / 'raw'}", "corpus.max_documents=40",
         "train.max_train_pairs=96", "train.max_seq_length=64"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    for stage in ("[1/3] prepare", "[2/3] train", "[3/3] evaluate"):
        assert stage in out.stdout
    assert "| dim | baseline | fine-tuned | improvement | storage per vector |" in out.stdout
    assert "mrlkit serve --config ray_jobs/configs/demo.yaml" in out.stdout
    report = json.loads((root / "reports" / "demo" / "report.json").read_text())
    assert [m["label"] for m in report["models"]] == ["baseline", "fine-tuned"]
    assert sorted(int(d) for d in report["models"][1]["metrics"]) == [32, 64, 128, 256, 384]
    assert (root / "reports" / "demo" / "ndcg_by_dim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train_part = next((root / "pairs" / "stdlib-docs" / "train").glob("part-*.parquet"))
    assert pq.read_schema(train_part).names[:3] == ["anchor", "positive", "negative_1"], "the demo mines negatives"
    meta = json.loads((root / "models" / "demo" / "mrlkit.json").read_text())
    assert meta["matryoshka_dims"] == [384, 256, 128, 64, 32]


def test_demo_refuses_a_bad_override_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mrlkit.demo", f"storage.root={tmp_path}", "train.epochs=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "mrlkit demo: error: train.epochs: must be > 0" in out.stderr
    assert not any(tmp_path.iterdir()), "nothing is written when the config is wrong"
