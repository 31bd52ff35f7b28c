"""Shared fixtures: real local S3 servers (rclone, moto), a local Ray, tiny models.

Session-wide S3: an rclone server starts once and its settings go into
``os.environ`` *before* Ray starts, so Ray workers inherit them exactly as pods
inherit them from a Secret. Each test gets its own bucket.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from mrlkit import s3
from mrlkit.testing.s3_server import LocalS3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MRLKIT_STORAGE_ATTEMPTS", "3")

SHARED = Path(os.environ.get("MRLKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FINANCIAL_DATA = Path(os.environ.get("MRLKIT_FINANCIAL_DATA", SHARED / "datasets" / "financial-qa-10k"))


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory):
    """The session's disk-backed S3 server; its settings are the process environment from here on."""
    server = LocalS3Server("rclone", tmp_path_factory.mktemp("rclone") / "data").start()
    os.environ.update(server.env())
    s3.forget_clients()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = LocalS3Server("moto", tmp_path_factory.mktemp("moto") / "data").start()
    yield server
    server.stop()


def _new_bucket(server: LocalS3Server) -> str:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    return bucket


@pytest.fixture
def s3_root(rclone_server) -> str:
    """A fresh ``s3://bucket/prefix`` on the session's rclone server."""
    return f"s3://{_new_bucket(rclone_server)}/mrl"


@pytest.fixture(params=["local", "rclone", "moto"])
def any_root(request, tmp_path, monkeypatch) -> str:
    """A storage root of each kind: a local folder, rclone S3, moto S3."""
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    server = request.getfixturevalue(f"{request.param}_server")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    s3.forget_clients()
    yield f"s3://{_new_bucket(server)}/mrl"
    s3.forget_clients()


class LocalRaySession:
    """The session's local Ray, watched: if its GCS or raylet dies, the death is kept for the summary and the
    driver shut down (Ray would otherwise end pytest a minute later with exit 1 and no output); the next test
    that needs Ray starts a new one."""

    def __init__(self) -> None:
        self.watches: list = []

    @property
    def deaths(self) -> list:
        return [death for watch in self.watches for death in watch.deaths]

    def ensure(self):
        import ray

        from mrlkit.config_schema import RayConfig
        from mrlkit.ray_runtime import init_ray
        from mrlkit.testing.ray_watch import RayNodeWatch

        if self.watches and not self.watches[-1].dead:
            return ray
        if self.watches:
            self.watches[-1].stop()  # joins the watch: its shutdown of the dead driver has finished
        init_ray(RayConfig(num_cpus=2))
        self.watches.append(RayNodeWatch(ray._private.worker._global_node, ray.shutdown).start())
        return ray

    def close(self) -> None:
        import ray

        if self.watches:
            self.watches[-1].stop()  # an intended shutdown is not a death
        ray.shutdown()


RAY_SESSION = LocalRaySession()


@pytest.fixture(scope="session")
def ray_local(rclone_server):
    """A real local Ray with 2 CPUs, shared by the session (S3 settings already in its environment)."""
    yield RAY_SESSION.ensure()
    RAY_SESSION.close()


@pytest.fixture(autouse=True)
def _ray_alive_for_tests_that_need_it(request):
    """After a death of the session's Ray, the next test that needs it gets a new one (the fixture above is cached)."""
    if "ray_local" in request.fixturenames:
        RAY_SESSION.ensure()


def pytest_terminal_summary(terminalreporter):
    if RAY_SESSION.deaths:
        terminalreporter.section("the session's local Ray died", sep="!", red=True, bold=True)
        for death in RAY_SESSION.deaths:
            terminalreporter.write_line(death.describe())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-init 32-dim, 2-layer BERT sentence-transformer with MiniLM's tokenizer (no download)."""
    from mrlkit.models import init_random_model

    return str(init_random_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2))


@pytest.fixture(scope="session")
def tiny_mrl_model(tiny_model, tmp_path_factory) -> str:
    """``tiny_model`` as a fine-tuned MRL model: its folder plus ``mrlkit.json`` with dims 32/16/8 (read-only)."""
    import shutil

    from mrlkit.models import MrlMetadata, write_metadata

    folder = tmp_path_factory.mktemp("mrl") / "tiny-mrl"
    shutil.copytree(tiny_model, folder)
    write_metadata(folder, MrlMetadata(base_model="tiny", matryoshka_dims=[32, 16, 8]))
    return str(folder)


@pytest.fixture(scope="session")
def financial_data() -> Path:
    """The seed recipe's dataset from ../shared (a setting: MRLKIT_FINANCIAL_DATA); skips loudly when absent."""
    if not (FINANCIAL_DATA / "Financial-QA-10k.csv").is_file():
        pytest.skip(f"financial dataset not found at {FINANCIAL_DATA}; set MRLKIT_FINANCIAL_DATA")
    return FINANCIAL_DATA
