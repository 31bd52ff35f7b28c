"""Wait for a local HTTP endpoint (a Serve app starting up) to answer the expected status."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_for_status(url: str, status: int = 200, timeout_s: float = 90.0, *,
                    proc: subprocess.Popen | None = None, interval_s: float = 0.5) -> httpx.Response:
    """Poll ``GET url`` until it answers ``status``; return that response.

    Raises TimeoutError naming the last answer (a status or a connection error) when ``timeout_s`` runs
    out, or RuntimeError at once when ``proc`` (the server's process, if given) exits first.
    """
    deadline = time.monotonic() + timeout_s
    last: object = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited with {proc.returncode} before {url} answered {status}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return response
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{url} did not answer {status} in {timeout_s:.0f}s (last: {last})")
