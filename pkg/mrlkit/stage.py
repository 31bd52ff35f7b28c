"""The shape every pipeline stage has, and the one function that runs one.

A stage is a small object in the style of torchtune's recipes::

    stage = PrepareStage(cfg)   # checks every option; no work, no I/O
    stage.setup()               # reaches storage, Ray, models; fails fast and clearly
    summary = stage.run()       # the work; returns a JSON-ready summary
    stage.cleanup()             # always called

``run_stage`` is what ``mrlkit <stage>`` and ``ray_jobs/<stage>.py`` call.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Protocol

from mrlkit.config import with_absolute_paths
from mrlkit.config_schema import PipelineConfig

log = logging.getLogger("mrlkit")


class Stage(Protocol):
    name: str

    def __init__(self, cfg: PipelineConfig) -> None: ...

    def setup(self) -> None: ...

    def run(self) -> dict[str, Any]: ...

    def cleanup(self) -> None: ...


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "httpx", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(stage_cls: type[Stage], cfg: PipelineConfig) -> dict[str, Any]:
    """Construct, set up, run and clean up a stage; log one summary line at the end."""
    started = time.monotonic()
    stage = stage_cls(with_absolute_paths(cfg))
    try:
        stage.setup()
        summary = stage.run()
    finally:
        stage.cleanup()
    summary = {"stage": stage.name, "seconds": round(time.monotonic() - started, 1), **summary}
    log.info("%s done: %s", stage.name, json.dumps(summary, sort_keys=True, default=str))
    return summary
