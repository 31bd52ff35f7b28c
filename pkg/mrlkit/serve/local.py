"""Stage ``serve``: run the embeddings endpoint on a local (or given) Ray until interrupted.

Command::

    mrlkit serve --config ray_jobs/configs/demo.yaml [serve.port=8001] [serve.model=s3://bucket/mrl/models/demo]

It deploys the same app as ``serve run ray_jobs/serve.yaml`` (built from the same
config by :func:`mrlkit.serve.app.serve_config`), waits until ``/health`` answers,
logs the URL, and serves until Ctrl-C (or for ``serve.duration_s`` seconds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mrlkit import storage
from mrlkit.config_schema import PipelineConfig
from mrlkit.errors import MrlkitError

log = logging.getLogger("mrlkit.serve")

READY_TIMEOUT_S = 300.0


class ServeStage:
    """Deploy ``mrlkit.serve.app:build_app`` with this config's args and deployment options."""

    name = "serve"

    def __init__(self, cfg: PipelineConfig):
        from mrlkit.serve.app import app_args_from_config, deployment_options

        self.cfg = cfg
        args = app_args_from_config(cfg)
        # A relative local folder would be resolved against the replica's working directory, not ours.
        if not storage.is_s3_uri(args.model) and (args.model.startswith((".", "~")) or Path(args.model).exists()):
            args = args.model_copy(update={"model": str(Path(args.model).expanduser().resolve())})
        self.args = args
        self.options = {k: v for k, v in deployment_options(cfg).items() if k != "name"}
        self.url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
        self._started_serve = False

    def setup(self) -> None:
        from ray import serve

        from mrlkit.ray_runtime import init_ray

        init_ray(self.cfg.ray)
        serve.start(http_options={"host": self.cfg.serve.host, "port": self.cfg.serve.port})
        self._started_serve = True

    def deploy(self) -> dict[str, Any]:
        """Deploy the app and wait until it is ready; returns what it serves."""
        import httpx
        from ray import serve

        from mrlkit.serve.app import APP_NAME, EmbeddingsDeployment

        app = EmbeddingsDeployment.options(**self.options).bind(self.args)
        serve.run(app, name=APP_NAME, route_prefix=self.cfg.serve.route_prefix, blocking=False)
        deadline = time.monotonic() + READY_TIMEOUT_S
        reason = "no answer yet"
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.url}/health", timeout=10)
                if response.status_code == 200:
                    models = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]
                    log.info("serving %s at %s/v1/embeddings (dims %s)", models["id"], self.url, models["dimensions"])
                    return {"url": f"{self.url}/v1/embeddings", "model": models["id"], "dims": models["dimensions"]}
                reason = response.json().get("reason", response.text)
                if response.status_code == 503 and "cannot load model" in reason:
                    raise MrlkitError(f"serve: {reason}")
            except httpx.HTTPError as exc:
                reason = str(exc)
            time.sleep(1.0)
        raise MrlkitError(f"serve: {self.url}/health not ready after {READY_TIMEOUT_S:.0f}s: {reason}")

    def run(self) -> dict[str, Any]:
        summary = self.deploy()
        duration = self.cfg.serve.duration_s
        started = time.monotonic()
        try:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(min(1.0, duration or 1.0))
        except KeyboardInterrupt:
            log.info("serve: interrupted, shutting down")
        return {**summary, "served_s": round(time.monotonic() - started, 1)}

    def cleanup(self) -> None:
        if self._started_serve:
            from ray import serve

            serve.shutdown()
