"""Ray Train's S3 filesystem keeps mrlkit's retries after Ray pickles it to the controller and workers.

pyarrow drops ``retry_strategy`` when an ``S3FileSystem`` is pickled; without the handler's fix the
copies Ray uses would give up after ~3 quick attempts. Checked by behaviour: a write to an endpoint
where nothing listens takes the configured retries' backoff before it fails.
"""

from __future__ import annotations

import pickle
import time

import pytest

from mrlkit.testing.s3_server import free_port
from mrlkit.train.run_storage import ray_storage


def seconds_until_write_fails(monkeypatch, attempts: int) -> float:
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", str(attempts))
    monkeypatch.setenv("MRLKIT_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    fs, path = ray_storage("s3://bucket/runs")
    copy = pickle.loads(pickle.dumps(fs))  # what Ray's controller and workers get
    started = time.monotonic()
    with pytest.raises(OSError):
        with copy.open_output_stream(f"{path}/probe.txt") as out:
            out.write(b"x")
    return time.monotonic() - started


def test_pickled_ray_storage_keeps_the_configured_retries(monkeypatch):
    once = seconds_until_write_fails(monkeypatch, attempts=1)
    several = seconds_until_write_fails(monkeypatch, attempts=5)
    assert several > once + 1.0, (once, several)  # backoff between 5 attempts; none with 1
