"""End to end on a kind cluster: image, KubeRay operator, the chart, prepare -> train -> evaluate, serve.

Run with ``make kind-test`` (pytest -m kind tests/e2e_kind). Needs a working Docker daemon, ``kind``,
``kubectl``, ``helm`` (MRLKIT_HELM) and network access for the base images and the KubeRay helm repo.
About 25-40 minutes the first time (most of it building the image and pulling rayproject/ray), 10-15
when the image is cached. Skips, saying what is missing, anywhere else.

Settings: MRLKIT_KIND_CLUSTER (default mrlkit-e2e; an existing cluster of that name is reused and kept),
MRLKIT_KEEP_KIND=1 keeps a cluster this test created, MRLKIT_KIND_IMAGE (default mrlkit:cpu; set it to
skip the build and load an image you built).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.kind, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("MRLKIT_KIND_CLUSTER", "mrlkit-e2e")
IMAGE = os.environ.get("MRLKIT_KIND_IMAGE", "mrlkit:cpu")
KUBERAY_VERSION = "1.7.0"
NAMESPACE, RELEASE = "mrl", "e2e"
FULL = f"{RELEASE}-mrlkit"
CONTEXT = f"kind-{CLUSTER}"


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("docker", "kind", "kubectl") if shutil.which(tool) is None]
    if "docker" not in missing:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
        if info.returncode != 0:
            missing.append(f"a running Docker daemon (`docker info` failed: {info.stderr.strip()[:200]})")
    if _helm() is None:
        missing.append("helm (set MRLKIT_HELM or run `make kind-test`)")
    return missing


def _helm() -> str | None:
    candidate = os.environ.get("MRLKIT_HELM") or shutil.which("helm")
    return candidate if candidate and Path(candidate).is_file() else None


def sh(*cmd: str, timeout: float = 900, check: bool = True, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def kubectl(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh("kubectl", "--context", CONTEXT, "-n", NAMESPACE, *args, **kw)


@contextmanager
def port_forward(target: str, port: int):
    """``kubectl port-forward`` to a free local port; yields the local port."""
    proc = subprocess.Popen(["kubectl", "--context", CONTEXT, "-n", NAMESPACE, "port-forward", target, f":{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if match:
                yield int(match.group(1))
                return
            if proc.poll() is not None:
                break
        raise AssertionError(f"port-forward to {target} did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tiny_pipeline() -> dict:
    """A pipeline small enough for a kind node: a generated corpus, a few training steps, two eval dims."""
    return {
        "name": "kind-tiny",
        "corpus": {"input": "s3://mrlkit/raw/kind-tiny", "format": "jsonl",
                   "columns": {"text": "text", "id": "id", "title": "title"}, "chunk_tokens": 64,
                   "chunk_overlap_tokens": 8, "dedupe": "exact"},
        "pairs": {"source": "synthetic", "split": {"mode": "group", "test_fraction": 0.2}},
        "train": {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "matryoshka_dims": [384, 128, 64],
                  "epochs": 1, "max_steps": 3, "batch_size": 8, "max_seq_length": 64, "eval_strategy": "no",
                  "num_workers": 1},
        "evaluate": {"dims": [384, 64], "batch_size": 32},
    }


def tiny_corpus(n: int = 60) -> bytes:
    rng = random.Random(7)
    words = ("ledger revenue margin turbine harbor lantern quartz meadow orbit cipher velvet glacier falcon "
             "canyon ember tundra saffron pylon marble willow copper beacon delta prism").split()
    lines = []
    for i in range(n):
        sentences = [" ".join(rng.choice(words) for _ in range(10)).capitalize() + "." for _ in range(6)]
        lines.append(json.dumps({"id": f"doc-{i}", "title": f"Topic {i} {rng.choice(words)}",
                                 "text": " ".join(sentences)}))
    return ("\n".join(lines) + "\n").encode()


def chart_values() -> dict:
    small = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    return {
        "image": {"repository": IMAGE.split(":")[0], "tag": IMAGE.split(":")[1], "pullPolicy": "Never"},
        "pipeline": tiny_pipeline(),
        "devStore": {"enabled": True, "persistence": {"size": "2Gi"}},
        "autoscaling": {"enabled": False},
        "head": {"resources": small, "rayStartParams": {"num-cpus": "0"}},
        "workers": {"cpu": {"replicas": 1, "minReplicas": 1, "maxReplicas": 1, "resources": {
            "requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}}},
        "networkPolicy": {"operatorNamespace": "kuberay"},
        "serve": {"autoscaling": {"enabled": False}, "numReplicas": 1, "numCpus": 0.5},
    }


@pytest.fixture(scope="module")
def kind_cluster():
    missing = _missing_tools()
    if missing:
        pytest.skip("kind end-to-end test needs " + "; ".join(missing))
    existing = sh("kind", "get", "clusters").stdout.split()
    created = CLUSTER not in existing
    if created:
        sh("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s", timeout=600)
    try:
        yield CLUSTER
    finally:
        if created and os.environ.get("MRLKIT_KEEP_KIND") != "1":
            sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)


@pytest.fixture(scope="module")
def installed(kind_cluster, tmp_path_factory):
    helm = _helm()
    if "MRLKIT_KIND_IMAGE" not in os.environ:
        sh("docker", "build", "-f", "Dockerfile", "--build-arg", "VARIANT=cpu", "-t", IMAGE, ".", cwd=REPO,
           timeout=2400)
    sh("kind", "load", "docker-image", IMAGE, "--name", kind_cluster, timeout=900)
    sh(helm, "repo", "add", "kuberay", "https://ray-project.github.io/kuberay-helm/", "--force-update")
    sh(helm, "upgrade", "--install", "kuberay-operator", "kuberay/kuberay-operator", "--version", KUBERAY_VERSION,
       "--kube-context", CONTEXT, "--namespace", "kuberay", "--create-namespace", "--wait", "--timeout", "10m")
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values()))
    sh(helm, "upgrade", "--install", RELEASE, str(REPO / "charts/mrlkit"), "--kube-context", CONTEXT,
       "--namespace", NAMESPACE, "--create-namespace", "-f", str(values), "--wait", "--timeout", "15m",
       timeout=1000)
    kubectl("wait", "--for=jsonpath={.status.state}=ready", f"raycluster/{FULL}", "--timeout=900s", timeout=960)
    return helm, values


def upload_corpus() -> None:
    import boto3

    secret = json.loads(kubectl("get", "secret", f"{FULL}-s3", "-o", "json").stdout)["data"]
    creds = {k: base64.b64decode(v).decode() for k, v in secret.items()}
    with port_forward(f"svc/{FULL}-s3", 9000) as port:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        s3.put_object(Bucket="mrlkit", Key="raw/kind-tiny/corpus.jsonl", Body=tiny_corpus())


def wait_rayjob(name: str, timeout_s: int = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads(kubectl("get", "rayjob", name, "-o", "json").stdout).get("status", {})
        if status.get("jobDeploymentStatus") in ("Complete", "Failed"):
            logs = kubectl("logs", f"job/{name}", "--tail=50", check=False).stdout
            assert status.get("jobStatus") == "SUCCEEDED", f"RayJob {name}: {status}\n{logs}"
            return
        time.sleep(10)
    raise AssertionError(f"RayJob {name} did not finish in {timeout_s}s")


def test_pipeline_runs_as_rayjobs_and_serves_embeddings(installed, tmp_path):
    helm, values = installed
    upload_corpus()

    # prepare: the chart's own RayJob template, on the chart's RayCluster
    sh(helm, "upgrade", RELEASE, str(REPO / "charts/mrlkit"), "--kube-context", CONTEXT, "--namespace", NAMESPACE,
       "-f", str(values), "--set", "jobs.prepare.enabled=true")
    wait_rayjob(f"{FULL}-prepare")

    # train and evaluate: `mrlkit k8s submit` with the same pipeline config, followed to the end
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline() | {"storage": {"root": "s3://mrlkit/mrl"}}))
    for stage in ("train", "evaluate"):
        proc = sh(sys.executable, "-m", "mrlkit.cli", "k8s", "submit", stage, "--config", str(config),
                  "--namespace", NAMESPACE, "--cluster-selector", FULL, "--image", IMAGE, "--timeout", "2400",
                  "--poll", "10", timeout=2500, check=False,
                  env={**os.environ, "KUBECONFIG": os.environ.get("KUBECONFIG", str(Path.home() / ".kube/config"))})
        assert proc.returncode == 0, f"{stage}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        assert "succeeded (deployment=Complete, job=SUCCEEDED)" in proc.stdout

    # serve: the RayService, then /v1/embeddings at two dimensions through a port-forward
    sh(helm, "upgrade", RELEASE, str(REPO / "charts/mrlkit"), "--kube-context", CONTEXT, "--namespace", NAMESPACE,
       "-f", str(values), "--set", "serve.enabled=true")
    kubectl("wait", "--for=condition=Ready", f"rayservice/{FULL}", "--timeout=1200s", timeout=1260)
    import httpx

    with port_forward(f"svc/{FULL}-serve-svc", 8000) as port:
        for dims in (384, 64):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", timeout=120,
                                  json={"input": ["quarterly revenue grew", "a falcon over the canyon"],
                                        "dimensions": dims})
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            assert [len(d["embedding"]) for d in data] == [dims, dims]
            norm = sum(x * x for x in data[0]["embedding"]) ** 0.5
            assert abs(norm - 1.0) < 1e-3  # truncated embeddings are re-normalised
