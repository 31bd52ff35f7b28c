"""``mrlkit serve`` (ServeStage): deploys from the pipeline config, serves, and fails clearly on a bad model."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from mrlkit.cli import main
from mrlkit.models import MrlMetadata, write_metadata
from mrlkit.testing.s3_server import free_port

DEMO = Path(__file__).resolve().parents[2] / "ray_jobs" / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> Path:
    """A storage root holding models/demo with its mrlkit.json, as the export stage leaves it."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(tiny_model, root / "models" / "demo")
    write_metadata(root / "models" / "demo", MrlMetadata(base_model="tiny", matryoshka_dims=[32, 8]))
    return root


def test_mrlkit_serve_serves_this_runs_model_until_its_duration(ray_local, exported, capsys):
    port = free_port()
    argv = ["serve", "--config", str(DEMO), f"storage.root={exported}", f"serve.port={port}", "serve.num_cpus=0.25",
            "serve.duration_s=8"]
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", main(argv)))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "hi", "dimensions": 8},
                              timeout=60)
        assert response.status_code == 200 and response.json()["model"] == "demo"
        assert len(response.json()["data"][0]["embedding"]) == 8
    finally:
        runner.join(timeout=120)
    assert result["code"] == 0
    assert '"dims": [\n    32,\n    8\n  ]' in capsys.readouterr().out
    with pytest.raises(httpx.HTTPError):  # cleanup shut Serve down
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_mrlkit_serve_with_a_missing_model_fails_with_the_reason(ray_local, tmp_path, capsys):
    argv = ["serve", "--config", str(DEMO), f"storage.root={tmp_path}", f"serve.port={free_port()}",
            "serve.num_cpus=0.25"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and str(tmp_path / "models" / "demo") in err
