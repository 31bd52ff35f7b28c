"""Watch the test session's local Ray and say why it died, instead of letting it end the session silently.

A Ray driver whose GCS is gone for 60 seconds ends its own process with ``_Exit(1)``
(Ray's "Failed to connect to GCS within 60 seconds ... The program will terminate").
A test session holds one driver for all its tests, and pytest captures the driver's
stderr while a test runs, so a GCS killed from outside (an OOM killer, a full disk)
ended CI with exit 1, no summary and no reason, during a test that did not use Ray.

``RayNodeWatch`` polls the Ray processes this driver started. When one exits, it
records which, how (the exit code or signal), during which test, the machine's
free memory and disk, and the last lines of its log; then it shuts the driver down,
which stops Ray's 60-second countdown. The session goes on and reports the death
in its summary; the next test that needs Ray starts a fresh one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WATCHED = ("gcs_server", "raylet")  # the processes without which the driver exits or stops working
LOG_LINES = 15


@dataclass(frozen=True)
class RayProcessDeath:
    """One watched Ray process that exited while the session still needed it."""

    process: str
    pid: int
    returncode: int
    test: str
    at: str
    memory: str
    disk: str
    log_tail: str

    def describe(self) -> str:
        how = (f"killed by {signal.Signals(-self.returncode).name}" if self.returncode < 0
               else f"exited with code {self.returncode}")
        return (f"Ray's {self.process} (pid {self.pid}) {how} at {self.at}, during {self.test or 'no test'}; "
                f"the driver was shut down so that Ray could not end the session, and the next test that needs Ray "
                f"starts a new one.\n  memory: {self.memory}\n  disk: {self.disk}\n"
                f"  last lines of its log:\n{self.log_tail}")


def _memory() -> str:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return f"MemAvailable {fields['MemAvailable'].strip()} of MemTotal {fields['MemTotal'].strip()}"
    except (OSError, KeyError, ValueError):
        return "unknown (no /proc/meminfo)"


def _disk(folder: str) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return f"unknown ({folder} unreadable)"
    return f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {folder}"


def _log_tail(logs_dir: str, process: str) -> str:
    lines: list[str] = []
    for suffix in (".err", ".out"):
        path = Path(logs_dir) / f"{process}{suffix}"
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        lines += [f"    {path.name}: {line}" for line in text[-LOG_LINES:]]
    return "\n".join(lines) or f"    (no {process}.err/.out under {logs_dir})"


class RayNodeWatch:
    """Polls the local Ray node's core processes every ``interval_s``; on a death, records it and disarms the driver."""

    def __init__(self, node: Any, shutdown: Any, interval_s: float = 1.0):
        # node: ray's _global_node (its all_processes hold the Popen objects of the processes it started)
        self._processes: list[tuple[str, subprocess.Popen]] = [
            (name, info.process) for name in WATCHED for info in node.all_processes.get(name, [])]
        self._logs_dir = node.get_logs_dir_path()
        self._temp_dir = str(Path(self._logs_dir).parents[1])
        self._shutdown = shutdown
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.deaths: list[RayProcessDeath] = []
        self._thread = threading.Thread(target=self._run, name="ray-node-watch", daemon=True)

    def start(self) -> RayNodeWatch:
        if not self._processes:
            raise RuntimeError(f"no {'/'.join(WATCHED)} process to watch: this driver did not start its Ray")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before an intended shutdown, which is not a death)."""
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def dead(self) -> bool:
        return bool(self.deaths)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            gone = [(name, proc) for name, proc in self._processes if proc.poll() is not None]
            if not gone:
                continue
            for name, proc in gone:
                self.deaths.append(RayProcessDeath(
                    process=name, pid=proc.pid, returncode=proc.returncode,
                    test=os.environ.get("PYTEST_CURRENT_TEST", ""), at=time.strftime("%H:%M:%S"),
                    memory=_memory(), disk=_disk(self._temp_dir), log_tail=_log_tail(self._logs_dir, name)))
            self._shutdown()
            return
