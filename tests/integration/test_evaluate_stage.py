"""Stage ``evaluate`` end to end: a published pairs folder, real models, local and S3 storage, Ray sharding."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mrlkit import layout, storage
from mrlkit.cli import main
from mrlkit.config import config_from_dict
from mrlkit.errors import ConfigError, ModelError, MrlkitError
from mrlkit.evaluate.evaluator import EvaluationError, MatryoshkaIREvaluator, load_ir_data
from mrlkit.evaluate.stage import EvaluateStage
from mrlkit.models import MrlMetadata, init_random_model, load_sentence_transformer, write_metadata
from mrlkit.stage import run_stage

TOPICS = ("revenue grew in the cloud segment", "the company repurchased shares", "goodwill impairment was recorded",
          "lease liabilities increased", "inventory write-downs hit margins", "the dividend was raised",
          "tax expense fell on credits", "customer concentration is a risk", "debt was refinanced at lower rates",
          "capital expenditures funded new plants")
DIMS = [32, 16, 8]


def write_pairs(root: str, name: str, tmp_path: Path, n_docs: int = 40, n_queries: int = 12) -> str:
    """Publish a tiny pairs folder in the layout contract: train/, test/, corpus/, split.json, manifest.json."""
    rng = random.Random(7)
    docs = [(f"c{i:03d}", f"{TOPICS[i % len(TOPICS)]} in fiscal {2000 + i}; note {rng.randint(1, 99)}.")
            for i in range(n_docs)]
    test = [{"query_id": f"q{i}", "anchor": f"what happened: {TOPICS[i % len(TOPICS)]}?",
             "positive": docs[i][1], "relevant_ids": [docs[i][0]] + ([docs[i + 10][0]] if i % 3 == 0 else [])}
            for i in range(n_queries)]
    train = [{"anchor": f"question about {t}", "positive": t} for t in TOPICS]
    out = tmp_path / f"pairs-{name}"
    for sub, rows in (("train", train), ("test", test),
                      ("corpus", [{"chunk_id": c, "text": t} for c, t in docs])):
        (out / sub).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), out / sub / "part-00000.parquet")
    (out / "split.json").write_text(json.dumps({"mode": "group", "seed": 42, "test": n_queries}))
    (out / "manifest.json").write_text(json.dumps({"rows": {"train": len(train), "test": n_queries}}))
    uri = storage.join(root, "pairs", name)
    storage.publish_dir(out, uri)
    return uri


def make_cfg(root: str, tiny_model: str, **evaluate):
    return config_from_dict({
        "name": "evaltest", "run": "r1", "storage": {"root": root},
        "train": {"base_model": tiny_model, "matryoshka_dims": [32, 16, 8]},
        "evaluate": {"batch_size": 16, **evaluate},
    })


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> str:
    """Another tiny model (different random weights) standing in for a fine-tuned one, with mrlkit.json."""
    path = init_random_model(tmp_path_factory.mktemp("tiny2") / "model", hidden_size=32, num_layers=2, seed=1)
    write_metadata(path, MrlMetadata(base_model="tiny", matryoshka_dims=[32, 16, 8]))
    return str(path)


def direct_metrics(pairs_uri: str, ref: str) -> dict[str, float]:
    queries, corpus, relevant = load_ir_data(pairs_uri)
    return MatryoshkaIREvaluator(queries, corpus, relevant, DIMS, batch_size=16)(
        load_sentence_transformer(ref, device="cpu"))


def check_report(report_uri: str, labels: list[str]) -> dict:
    marker = storage.read_marker(report_uri)
    assert set(marker["files"]) == {"report.json", "report.md", "ndcg_by_dim.png"}
    report = storage.read_json(storage.join(report_uri, "report.json"))
    assert [m["label"] for m in report["models"]] == labels
    for m in report["models"]:
        assert sorted(m["metrics"], key=int, reverse=True) == ["32", "16", "8"]
        for per_dim in m["metrics"].values():
            assert set(per_dim) == {"ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "recall@100",
                                    "map@100"}
            assert all(0.0 <= v <= 1.0 for v in per_dim.values())
        assert m["timings_s"]["encode_s"] > 0
    assert len(report["dataset"]["sha256"]) == 64 and "test/part-00000.parquet" in report["dataset"]["files_sha256"]
    assert report["split"] == {"mode": "group", "seed": 42, "test": 12}
    assert report["hardware"]["cpu_count"] >= 1 and report["hardware"]["torch"]
    assert report["num_queries"] == 12 and report["corpus_size"] == 40
    assert report["serve_at"]["dim"] in DIMS and report["serve_at"]["model"] == labels[-1]
    md = storage.read_text(storage.join(report_uri, "report.md"))
    header = next(line for line in md.splitlines() if line.startswith("| dim |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["dim", *labels, "improvement", "storage per vector"]
    assert "| 32 |" in md and "128 B |" in md and f"Serve at {report['serve_at']['dim']} dimensions" in md
    png = storage.read_bytes(storage.join(report_uri, "ndcg_by_dim.png"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return report


def test_two_models_on_local_storage(tmp_path, tiny_model, second_model, caplog):
    root = str(tmp_path / "root")
    pairs_uri = write_pairs(root, "evaltest", tmp_path)
    cfg = make_cfg(root, tiny_model, models=[tiny_model, second_model])
    with caplog.at_level(logging.INFO, logger="mrlkit.evaluate"):
        summary = run_stage(EvaluateStage, cfg)
    # evaluate.unpad (the default): each model encoded real tokens only, and scores as padded encoding does (below)
    unpadded = [r.getMessage() for r in caplog.records if "encoded real tokens only (evaluate.unpad)" in r.getMessage()]
    assert len(unpadded) == 2 and all("'packed_passes': 0," not in m for m in unpadded)
    assert summary["report"] == layout.report_uri(cfg)
    labels = ["model", "model-2"]  # both folders are called "model": labels stay unique
    report = check_report(summary["report"], labels)
    assert summary["table"].splitlines()[0].startswith("| dim | model | model-2 |")
    # The stage's numbers are the evaluator's numbers for each model.
    for ref, entry in zip([tiny_model, second_model], report["models"], strict=True):
        expected = direct_metrics(pairs_uri, ref)
        for d in DIMS:
            assert entry["metrics"][str(d)]["ndcg@10"] == pytest.approx(expected[f"dim{d}_ndcg@10"], abs=1e-6)
    assert report["models"][1]["matryoshka_dims"] == [32, 16, 8]
    with Image.open(Path(summary["report"]) / "ndcg_by_dim.png") as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_evaluation_without_unpadding_scores_the_same(tmp_path, tiny_model, caplog):
    scores = {}
    for unpad in (True, False):
        root = str(tmp_path / f"root-{unpad}")  # a root each: a finished stage is not run again
        write_pairs(root, "evaltest", tmp_path / str(unpad))
        cfg = make_cfg(root, tiny_model, models=[tiny_model], unpad=unpad)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mrlkit.evaluate"):
            scores[unpad] = run_stage(EvaluateStage, cfg)["ndcg@10"]["model"]
        assert ("encoded real tokens only" in caplog.text) == unpad
    assert scores[True] == pytest.approx(scores[False], abs=1e-6)


@pytest.mark.slow
def test_default_models_on_s3_sharded_over_ray(s3_root, ray_local, tmp_path, tiny_model, second_model):
    """Baseline = train.base_model, fine-tuned = the run's published model on S3; encoding on 2 Ray actors."""
    pairs_uri = write_pairs(s3_root, "evaltest", tmp_path)
    cfg = make_cfg(s3_root, tiny_model, num_workers=2)
    storage.publish_dir(second_model, layout.model_uri(cfg))
    summary = run_stage(EvaluateStage, cfg)
    report = check_report(summary["report"], ["baseline", "fine-tuned"])
    assert report["models"][1]["ref"] == layout.model_uri(cfg)
    assert summary["report"].startswith("s3://")
    # Sharded encoding gives the in-process numbers (batches differ, so allow float noise).
    for ref, entry in zip([tiny_model, second_model], report["models"], strict=True):
        expected = direct_metrics(pairs_uri, ref)
        for d in DIMS:
            assert entry["metrics"][str(d)]["map@100"] == pytest.approx(expected[f"dim{d}_map@100"], abs=1e-4)
    improvement = report["ndcg@10_improvement_pct"]
    base, tuned = report["models"][0]["metrics"]["32"]["ndcg@10"], report["models"][1]["metrics"]["32"]["ndcg@10"]
    assert improvement["32"] == pytest.approx((tuned - base) / base * 100)


def test_missing_pairs_output_fails_clearly(tmp_path, tiny_model):
    stage = EvaluateStage(make_cfg(str(tmp_path / "root"), tiny_model, models=[tiny_model]))
    with pytest.raises(EvaluationError, match=r"no evaluation split at .*pairs/evaltest.*mrlkit prepare"):
        stage.setup()
    stage.cleanup()


def test_unknown_or_unpublished_model_fails_clearly(tmp_path, tiny_model):
    root = str(tmp_path / "root")
    write_pairs(root, "evaltest", tmp_path)
    stage = EvaluateStage(make_cfg(root, tiny_model, models=[tiny_model, "no-such-org/no-such-model"]))
    with pytest.raises(ModelError, match="cannot evaluate model 'no-such-org/no-such-model'"):
        stage.setup()
    default = EvaluateStage(make_cfg(root, tiny_model))  # the run's fine-tuned model was never trained
    with pytest.raises(ModelError, match=r"models/r1.*run `mrlkit train` first, or set evaluate.models"):
        default.setup()


def test_dim_larger_than_model_fails_before_encoding(tmp_path, tiny_model):
    root = str(tmp_path / "root")
    write_pairs(root, "evaltest", tmp_path)
    cfg = config_from_dict({"name": "evaltest", "storage": {"root": root},
                            "train": {"base_model": tiny_model, "matryoshka_dims": [64, 32]},
                            "evaluate": {"models": [tiny_model]}})
    stage = EvaluateStage(cfg)
    with pytest.raises(ConfigError, match=r"evaluate.dims: \[64\] larger than model .* embedding dimension \(32\)"):
        stage.setup()
    with pytest.raises(ConfigError, match="lists a model twice"):
        EvaluateStage(make_cfg(root, tiny_model, models=[tiny_model, tiny_model]))


def test_relevant_ids_must_be_in_the_corpus(tmp_path):
    root = str(tmp_path / "root")
    uri = write_pairs(root, "evaltest", tmp_path)
    local = tmp_path / "broken"
    storage.download_published(uri, local)
    (local / storage.MARKER).unlink()
    table = pq.read_table(local / "corpus" / "part-00000.parquet")
    pq.write_table(table.slice(1), local / "corpus" / "part-00000.parquet")  # drop c000, relevant to q0
    storage.publish_dir(local, uri)
    with pytest.raises(EvaluationError, match=r"1 relevant ids are not in corpus/ \(e.g. \['c000'\]\)"):
        load_ir_data(uri)


def test_cli_reports_one_line_error(tmp_path, tiny_model, capsys):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(f"name: evaltest\nstorage:\n  root: {tmp_path / 'root'}\n")
    code = main(["evaluate", "--config", str(cfg_file), f"train.base_model={tiny_model}",
                 f"evaluate.models=[{tiny_model}]", "train.matryoshka_dims=[32,16]"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("mrlkit: error: no evaluation split at") and "mrlkit prepare" in err
    shutil.rmtree(tmp_path / "root", ignore_errors=True)
    assert isinstance(EvaluationError("x"), MrlkitError)


def test_ray_job_script_runs_the_stage(tmp_path, tiny_model):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(f"name: evaltest\nstorage:\n  root: {tmp_path / 'root'}\n")
    script = Path(__file__).resolve().parents[2] / "ray_jobs" / "evaluate.py"
    proc = subprocess.run([sys.executable, str(script), "--config", str(cfg_file), "train.matryoshka_dims=[32]",
                           f"evaluate.models=[{tiny_model}]"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "mrlkit: error: no evaluation split at" in proc.stderr
