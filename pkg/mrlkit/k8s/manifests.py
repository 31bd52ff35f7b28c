"""Build a KubeRay ``RayJob`` for one pipeline stage from a :class:`PipelineConfig`.

The resolved config (overrides applied) travels inside the RayJob, in the job's
runtime environment (``MRLKIT_PIPELINE_YAML``), so the driver on the Ray head
runs the stage on exactly the config that was checked on the submitting
machine, whether the job brings its own cluster or selects an existing one
(such as the Helm chart's). The config holds no credentials: S3 credentials
reach pods only as Secret references, Ray's auth token likewise.

Example::

    from mrlkit.config import load_config
    from mrlkit.k8s.manifests import JobOptions, build_rayjob
    cfg = load_config("ray_jobs/configs/demo.yaml", ["storage.root=s3://mrlkit/mrl"])
    manifest = build_rayjob(cfg, "train", JobOptions(cluster_selector="mrlkit"))
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import yaml

from mrlkit.config import config_to_dict
from mrlkit.config_schema import PipelineConfig
from mrlkit.errors import ConfigError
from mrlkit.storage import is_s3_uri
from mrlkit.train.resources import least_cpus

STAGES = ("prepare", "train", "evaluate")
RAY_VERSION = "2.60.0"  # the image's Ray; pyproject pins the same
DEFAULT_IMAGE = "mrlkit:cpu"
CONFIG_ENV = "MRLKIT_PIPELINE_YAML"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# RayJob names feed the names of its Kubernetes Job and (own) RayCluster, which add suffixes of their own.
MAX_NAME = 40


@dataclass(frozen=True)
class JobOptions:
    """How a stage runs on Kubernetes (everything that is not the pipeline config).

    Args:
        namespace: namespace of the RayJob.
        image: image with mrlkit installed (``make image``); its Ray must be ``RAY_VERSION``.
        cluster_selector: name of an existing RayCluster to run on (e.g. the chart's); None brings a
            cluster of the job's own, deleted when the job ends.
        name: RayJob name; None means ``<run>-<stage>-<random>``.
        auth: use Ray token authentication.
        auth_secret: Secret holding the token under ``auth_token``. With a cluster selector it defaults
            to the chart's ``<cluster>-ray-auth``; for an own cluster None lets KubeRay generate one.
        storage_secret: Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` for an own cluster.
        s3_endpoint: ``MRLKIT_S3_ENDPOINT`` for an own cluster (empty means AWS).
        region: ``AWS_REGION`` for an own cluster.
        ttl_seconds: how long a finished RayJob with its own cluster is kept.
        labels: extra labels on the RayJob.
    """

    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    cluster_selector: str | None = None
    name: str | None = None
    auth: bool = True
    auth_secret: str | None = None
    storage_secret: str | None = None
    s3_endpoint: str | None = None
    region: str = "us-east-1"
    ttl_seconds: int = 3600
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("namespace", "cluster_selector", "name", "auth_secret", "storage_secret"):
            value = getattr(self, key)
            if value is not None and not _DNS_LABEL.match(value):
                raise ConfigError(f"--{key.replace('_', '-')}: {value!r} is not a Kubernetes name "
                                  "(lowercase letters, digits and '-', starting and ending alphanumeric)")
        if self.name is not None and len(self.name) > MAX_NAME:
            raise ConfigError(f"--name: {self.name!r} is longer than {MAX_NAME} characters")
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"--image: {self.image!r} is not an image reference")
        if self.s3_endpoint and not re.match(r"^https?://", self.s3_endpoint):
            raise ConfigError(f"--s3-endpoint: must be an http(s):// URL, got {self.s3_endpoint!r}")
        if self.ttl_seconds < 0:
            raise ConfigError(f"--ttl-seconds: must be >= 0, got {self.ttl_seconds}")

    @property
    def token_secret(self) -> str | None:
        """The Secret the submitter reads the token from, or None (KubeRay generates it / no auth)."""
        if not self.auth:
            return None
        if self.auth_secret:
            return self.auth_secret
        return f"{self.cluster_selector}-ray-auth" if self.cluster_selector else None


def job_name(cfg: PipelineConfig, stage: str, options: JobOptions) -> str:
    if options.name:
        return options.name
    suffix = f"-{stage}-{secrets.token_hex(3)}"
    base = re.sub(r"[^a-z0-9-]", "-", str(cfg.run)).strip("-")[: MAX_NAME - len(suffix)].strip("-") or "mrlkit"
    return base + suffix


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")


def build_rayjob(cfg: PipelineConfig, stage: str, options: JobOptions | None = None) -> dict[str, Any]:
    """The RayJob manifest (a plain dict) running ``stage`` of ``cfg``.

    Raises:
        ConfigError: unknown stage, a local ``storage.root`` (pods share no folder), or bad options.
    """
    options = options or JobOptions()
    check_stage(stage)
    if not cfg.uses_s3:
        raise ConfigError(f"storage.root: {cfg.storage.root!r} is a local folder, which pods on Kubernetes do not "
                          "share; use s3://bucket/prefix (e.g. override storage.root=s3://mrlkit/mrl)")
    name = job_name(cfg, stage, options)
    labels = {"app.kubernetes.io/name": "mrlkit", "app.kubernetes.io/managed-by": "mrlkit-k8s",
              "mrlkit.io/stage": stage, "mrlkit.io/run": str(cfg.run), **options.labels}
    if stage == "prepare" and cfg.corpus.input and not is_s3_uri(cfg.corpus.input) \
            and not os.path.isabs(cfg.corpus.input):
        raise ConfigError(f"corpus.input: {cfg.corpus.input!r} is a relative local path, which means nothing on "
                          "the cluster; use s3://bucket/prefix (or an absolute path inside the image)")
    # JSON is YAML: one line in the job's runtime env, read back by the stage's own loader.
    config_text = json.dumps(config_to_dict(cfg), separators=(",", ":"))
    runtime_env = {"env_vars": {CONFIG_ENV: config_text}}
    spec: dict[str, Any] = {
        "entrypoint": f"python -m mrlkit.k8s.entrypoint {stage}",
        "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False, width=1 << 20),
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "submitterPodTemplate": _submitter_template(options),
    }
    if options.cluster_selector:
        spec["clusterSelector"] = {"ray.io/cluster": options.cluster_selector}
    else:
        spec["shutdownAfterJobFinishes"] = True
        spec["ttlSecondsAfterFinished"] = options.ttl_seconds
        spec["rayClusterSpec"] = _cluster_spec(cfg, stage, options)
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": name, "namespace": options.namespace, "labels": labels}, "spec": spec}


_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
                 "seccompProfile": {"type": "RuntimeDefault"}}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}}


def _submitter_template(options: JobOptions) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "ray-job-submitter", "image": options.image,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": _CONTAINER_SECURITY,
    }
    secret = options.token_secret
    if secret:
        container["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"},
                            {"name": "RAY_AUTH_TOKEN",
                             "valueFrom": {"secretKeyRef": {"name": secret, "key": "auth_token"}}}]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "mrlkit", "app.kubernetes.io/component": "submitter"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": _POD_SECURITY, "containers": [container]}}


def _storage_env(options: JobOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "AWS_REGION", "value": options.region}]
    if options.s3_endpoint:
        env.append({"name": "MRLKIT_S3_ENDPOINT", "value": options.s3_endpoint})
    if options.storage_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": options.storage_secret, "key": key}}})
    env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return env


def _pod(container_name: str, options: JobOptions, resources: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": {"app.kubernetes.io/name": "mrlkit", "app.kubernetes.io/component": "ray"}},
            "spec": {"automountServiceAccountToken": False, "securityContext": _POD_SECURITY,
                     "containers": [{"name": container_name, "image": options.image, "env": _storage_env(options),
                                     "resources": resources, "securityContext": _CONTAINER_SECURITY,
                                     "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
                     "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}}


def _cluster_spec(cfg: PipelineConfig, stage: str, options: JobOptions) -> dict[str, Any]:
    """A cluster sized for the stage: a head without work, and workers for the stage's Ray workers."""
    workers, cpus, gpus = 1, max(1, cfg.ray.num_cpus or 2), 0
    if stage == "train":
        # unset cpus_per_worker on a cluster: the least a worker needs (mrlkit.train.resources)
        per_worker = cfg.train.cpus_per_worker or least_cpus(cfg.train)
        workers, cpus, gpus = cfg.train.num_workers, per_worker + 1, int(cfg.train.use_gpu)
    elif stage == "evaluate":
        workers, gpus = cfg.evaluate.num_workers, int(cfg.evaluate.use_gpu)
    worker_resources: dict[str, Any] = {"requests": {"cpu": str(cpus), "memory": "8Gi"},
                                        "limits": {"cpu": str(cpus), "memory": "8Gi"}}
    if gpus:
        worker_resources["limits"]["nvidia.com/gpu"] = gpus
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                          "template": _pod("ray-head", options, {"requests": {"cpu": "1", "memory": "4Gi"},
                                                                  "limits": {"cpu": "2", "memory": "4Gi"}})},
        "workerGroupSpecs": [{"groupName": "gpu-workers" if gpus else "cpu-workers", "replicas": workers,
                              "minReplicas": workers, "maxReplicas": workers, "rayStartParams": {},
                              "template": _pod("ray-worker", options, worker_resources)}],
    }
    if options.auth:
        spec["authOptions"] = {"mode": "token", **({"secretName": options.auth_secret} if options.auth_secret else {})}
    return spec


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the runtime env) as readable ``|`` blocks, and no &anchors/*aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared securityContext dict is written out in full at each place, as people expect


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def dump_yaml(manifest: dict[str, Any]) -> str:
    """A manifest as YAML for people (``kubectl apply -f -`` reads it too)."""
    return yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=1 << 20)
