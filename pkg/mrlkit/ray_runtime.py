"""Join or start Ray for a stage, and carry the storage settings to its workers.

A local Ray started here inherits the driver's whole environment, credentials
included. Joining an existing cluster, workers run in the cluster's
environment, so the non-secret S3 settings (endpoint, region, retry and
checksum options) travel in the job's ``runtime_env``. Credentials never do:
Ray writes runtime envs to its logs in plain text. On a cluster they must be in
every node's environment (on Kubernetes: the same Secret on every pod; for
``make ray-start``: exported before the head starts).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mrlkit.config_schema import RayConfig

log = logging.getLogger(__name__)

# Settings only: no credential may ever be listed here (runtime envs are logged by Ray).
STORAGE_ENV_VARS = (
    "MRLKIT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "MRLKIT_STORAGE_ATTEMPTS",
    "MRLKIT_CACHE", "HF_HUB_OFFLINE",
)


def worker_env() -> dict[str, str]:
    """The non-secret environment a worker needs to reach storage the way the driver does."""
    return {k: os.environ[k] for k in STORAGE_ENV_VARS if os.environ.get(k)}


def cluster_address(cfg: RayConfig) -> str | None:
    """The Ray cluster a stage joins (``ray.address``, else ``RAY_ADDRESS``); None: it starts a Ray of its own."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig) -> Any:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS``, or start a local Ray; a no-op if already connected.

    Only a driver joining a cluster from outside passes a runtime env: a local Ray inherits this
    process's environment, and a ``ray job submit`` driver already runs in the cluster's environment
    with the job's own runtime env, which a second one would conflict with.
    """
    import ray

    if ray.is_initialized():
        return ray
    address = cluster_address(cfg)
    inside_submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by Ray's job manager
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if address and not inside_submitted_job:
        kwargs["runtime_env"] = {"env_vars": worker_env()}
    if address:
        log.info("ray: connecting to %s", address)
        ray.init(address=address, **kwargs)
    else:
        log.info("ray: starting a local Ray (num_cpus=%s)", cfg.num_cpus or "all")
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, **kwargs)
    return ray
