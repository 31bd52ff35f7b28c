"""``ray_jobs/serve.yaml`` starts the app with ``serve deploy`` and ``serve run`` on a real Ray head.

The yaml's model and port are overridden in a temp copy (the tiny model, a free port);
everything else is the committed file. The head is private to this module (own temp dir,
ports and token) and is stopped by its process group, never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from mrlkit.testing.http import wait_for_status
from mrlkit.testing.ray_head import LocalRayHead
from mrlkit.testing.s3_server import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).with_name("serve"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    head = LocalRayHead(tmp_path_factory.mktemp("serve-head"), num_cpus=1).start()
    yield head
    head.stop()


@pytest.fixture(scope="module")
def serve_yaml(tiny_mrl_model, tmp_path_factory) -> tuple[Path, int]:
    """The committed serve.yaml with only the model, the port and the CPU request changed."""
    config = yaml.safe_load((REPO / "ray_jobs" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"]["model"] = tiny_mrl_model
    app["deployments"][0]["ray_actor_options"]["num_cpus"] = 0.5
    path = tmp_path_factory.mktemp("yaml") / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def client_env(head: LocalRayHead) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**clean, **head.client_env(), "HF_HUB_OFFLINE": "1"}


def wait_healthy(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 240) -> None:
    wait_for_status(f"http://127.0.0.1:{port}/health", timeout_s=timeout_s, proc=proc, interval_s=1.0)


def check_embeddings(port: int) -> None:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": ["a", "b"], "dimensions": 16},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert [len(d["embedding"]) for d in response.json()["data"]] == [16, 16]
    assert response.json()["model"] == "demo"  # model_name from the committed yaml


def scrape_until(head: LocalRayHead, names: list[str], timeout_s: float = 90) -> str:
    """Prometheus text from the head's metrics exporters, once every name in ``names`` shows up."""
    discovery = Path("/tmp") / f"mrlkit-ray-{head.port}" / "session_latest" / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        targets = [t for group in json.loads(discovery.read_text()) for t in group["targets"]]
        text = ""
        for target in targets:
            try:
                text += httpx.get(f"http://{target}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
        if all(name in text for name in names):
            return text
        time.sleep(3)
    missing = [n for n in names if n not in text]
    raise AssertionError(f"metrics {missing} not exported within {timeout_s}s")


def test_serve_deploy_starts_the_app(head, serve_yaml):
    path, port = serve_yaml
    env = client_env(head)
    out = subprocess.run([SERVE, "deploy", str(path), "-a", head.address], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    try:
        wait_healthy(port)
        check_embeddings(port)
        status = subprocess.run([SERVE, "status", "-a", head.address], env=env, capture_output=True, text=True,
                                timeout=120)
        assert "Embeddings" in status.stdout and "RUNNING" in status.stdout, status.stdout
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "x", "dimensions": 3}, timeout=60)
        assert bad.status_code == 400
        text = scrape_until(head, ["ray_mrlkit_serve_requests_total", "ray_mrlkit_serve_errors_total",
                                   "ray_mrlkit_serve_batch_size_bucket", "ray_mrlkit_serve_tokens_total",
                                   "ray_mrlkit_serve_dimension_requests_total",
                                   "ray_mrlkit_serve_request_latency_seconds_bucket"])
        assert 'code="invalid_dimensions"' in text and 'dimensions="16"' in text
    finally:
        subprocess.run([SERVE, "shutdown", "-y", "-a", head.address], env=env, capture_output=True, timeout=180)


def test_serve_run_starts_the_app(head, serve_yaml, tmp_path):
    path, port = serve_yaml
    env = client_env(head)
    env.pop("RAY_ADDRESS")  # serve run takes the GCS address, serve deploy the dashboard's
    log = (tmp_path / "serve-run.log").open("wb")
    proc = subprocess.Popen([SERVE, "run", "--address", f"127.0.0.1:{head.port}", str(path)], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, proc)
        check_embeddings(port)
    finally:
        proc.send_signal(signal.SIGINT)  # serve run deletes its app on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
