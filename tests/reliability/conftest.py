"""Fixtures for the reliability suite: a figures recorder for ``benchmarks/reliability.py``.

Each reliability test states what it did, how many times, and what was lost
(the target is zero) through the ``figures`` fixture. When the environment sets
``MRLKIT_RELIABILITY_OUT`` (the benchmark does), every figure is appended to
that file as one JSON line; otherwise figures are only checked by the test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

OUT_ENV = "MRLKIT_RELIABILITY_OUT"


def write_figure(check: str, done: str, times: int, lost: int, **extra: Any) -> dict[str, Any]:
    """Append one figure (JSON line) to ``$MRLKIT_RELIABILITY_OUT`` when set; return it."""
    entry = {"check": check, "done": done, "times": int(times), "lost": int(lost), **extra}
    path = os.environ.get(OUT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:  # one short line per append: safe across xdist workers
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    return entry


@pytest.fixture(scope="session")
def figures() -> Callable[..., dict[str, Any]]:
    """``figures(check, done, times, lost, **extra)`` records one reliability figure."""
    return write_figure
