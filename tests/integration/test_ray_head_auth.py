"""`make ray-start` starts Ray with token authentication: a job submitted without the token is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrlkit.testing.ray_head import LocalRayHead

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    head = LocalRayHead(tmp_path_factory.mktemp("head"), num_cpus=1).start()
    yield head
    head.stop()


def _submit(env: dict[str, str], address: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run([RAY, "job", "submit", "--address", address, "--", "echo", "hello-from-job"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_token_file_is_private(head):
    assert head.token_path.stat().st_mode & 0o077 == 0
    assert len(head.token_path.read_text()) == 64


def test_submit_without_token_is_refused(head):
    out = _submit({"HOME": str(head.state_dir)}, head.address)  # no ~/.ray/auth_token to fall back on
    assert "hello-from-job" not in out.stdout
    assert "Authentication required" in out.stdout + out.stderr or "Unauthorized" in out.stdout + out.stderr


def test_submit_with_a_wrong_token_is_refused(head, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("0" * 64)
    out = _submit({"HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}, head.address)
    assert "hello-from-job" not in out.stdout


def test_submit_with_the_token_runs(head):
    out = _submit({"HOME": str(head.state_dir), **head.client_env()}, head.address)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hello-from-job" in out.stdout


def test_stop_ends_only_this_head(tmp_path):
    other = LocalRayHead(tmp_path / "other", num_cpus=1).start()
    pgid = other.pgid
    other.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
