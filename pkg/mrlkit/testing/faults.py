"""Fault injectors and completeness checks for the reliability suite (tests/reliability, benchmarks/reliability.py).

Example, stop the local S3 server for 4 seconds as soon as the first object of
an output lands on its disk, while a stage runs::

    server = LocalS3Server("rclone", data).start()
    with S3Outage(server, seconds=4, trigger=files_appear(data / "bucket" / "mrl" / "corpora")) as outage:
        run_stage(PrepareStage, cfg)
    assert outage.fired and not verify_published(layout.corpus_uri(cfg))
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrlkit import storage
from mrlkit.testing.s3_server import LocalS3Server


def files_appear(folder: str | Path) -> Callable[[], bool]:
    """A trigger: true once any file exists under ``folder`` (e.g. the first uploaded object of an output)."""
    base = Path(folder)
    return lambda: base.is_dir() and any(p.is_file() for p in base.rglob("*"))


class S3Outage:
    """Stop ``server`` for ``seconds`` once ``trigger()`` is true (polled in a thread), then start it again.

    The server keeps its port and (rclone) data, exactly like an S3 endpoint that goes
    away and comes back. ``fired`` says whether the outage happened; ``stopped_at`` and
    ``restarted_at`` are ``time.monotonic()`` values for checking it fell inside the work.
    """

    def __init__(self, server: LocalS3Server, seconds: float, trigger: Callable[[], bool] = lambda: True,
                 poll_s: float = 0.01, give_up_s: float = 600.0):
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.server, self.seconds, self.trigger = server, seconds, trigger
        self.poll_s, self.give_up_s = poll_s, give_up_s
        self.fired = False
        self.stopped_at: float | None = None
        self.restarted_at: float | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-outage", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.give_up_s
        try:
            while not self._cancel.is_set() and time.monotonic() < deadline:
                if self.trigger():
                    self.server.stop()
                    self.stopped_at, self.fired = time.monotonic(), True
                    time.sleep(self.seconds)  # not cancellable: the outage always lasts its full length
                    self.server.start()
                    self.restarted_at = time.monotonic()
                    return
                time.sleep(self.poll_s)
        except BaseException as exc:  # surfaced by __exit__; a dead injector must not pass silently
            self.error = exc

    def __enter__(self) -> S3Outage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()
        self._thread.join()
        if self.server.proc is None:  # never leave the endpoint down for whoever runs next
            self.server.start()
        if self.error is not None:
            raise RuntimeError(f"the S3 outage injector failed: {self.error!r}") from self.error


def verify_published(uri: str) -> list[str]:
    """Problems with a published output: missing marker, files missing, unreadable or not matching their sha256.

    An empty list means the output is complete: every file its ``_PUBLISHED.json`` lists reads back intact.
    """
    try:
        marker: dict[str, Any] = storage.read_marker(uri)
    except storage.StorageError as exc:
        return [f"{uri}: no publish marker ({exc})"]
    problems = []
    for rel, meta in sorted(marker["files"].items()):
        try:
            data = storage.read_bytes(storage.join(uri, rel))
        except storage.StorageError as exc:
            problems.append(f"{rel}: unreadable ({exc})")
            continue
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            problems.append(f"{rel}: content does not match the marker")
    return problems


def output_bytes(uri: str) -> dict[str, bytes]:
    """Every file of an output except its publish marker (which differs only by time), for run-vs-run equality."""
    return {rel: storage.read_bytes(storage.join(uri, rel)) for rel in storage.list_files(uri) if rel != storage.MARKER}
