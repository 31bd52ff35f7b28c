"""Create a RayJob, follow its status to the end, print its submitter's logs.

Uses the official ``kubernetes`` client with the caller's kubeconfig (or the
in-cluster service account). KubeRay reports progress in the RayJob's status:
``jobDeploymentStatus`` (Initializing, Running, Complete, Failed, ...) and
``jobStatus`` (Ray's PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED). The
submitter is a Kubernetes Job of the same name whose log is the driver's
output (``ray job submit`` streams it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from mrlkit.errors import MrlkitError

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
# KubeRay's terminal deployment states; Complete covers both a succeeded and a failed Ray job.
TERMINAL = ("Complete", "Failed")


@dataclass
class JobResult:
    name: str
    namespace: str
    deployment_status: str
    job_status: str
    message: str

    @property
    def succeeded(self) -> bool:
        return self.deployment_status == "Complete" and self.job_status == "SUCCEEDED"


def kube_apis() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) for the current kubeconfig context, or the in-cluster account."""
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:
        try:
            config.load_incluster_config()
        except Exception as exc:
            raise MrlkitError(f"no Kubernetes access: no usable kubeconfig (KUBECONFIG or ~/.kube/config) and not "
                              f"running in a pod ({exc})") from None
    return client.CustomObjectsApi(), client.CoreV1Api()


class RayJobRunner:
    """Submits one RayJob manifest and follows it.

    Args:
        custom: a ``kubernetes.client.CustomObjectsApi``.
        core: a ``kubernetes.client.CoreV1Api`` (for the submitter's logs).
        out: where progress and logs go.
        poll_s: seconds between status reads.
        timeout_s: give up following after this long (the RayJob keeps running).
    """

    def __init__(self, custom: Any, core: Any, out: TextIO = sys.stdout, poll_s: float = 5.0,
                 timeout_s: float = 6 * 3600, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.custom, self.core, self.out = custom, core, out
        self.poll_s, self.timeout_s, self.sleep, self.clock = poll_s, timeout_s, sleep, clock

    def create(self, manifest: dict[str, Any]) -> None:
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 409:
                raise MrlkitError(f"RayJob {name} already exists in namespace {namespace}; delete it "
                                  f"(kubectl -n {namespace} delete rayjob {name}) or choose another --name") from None
            if status == 404:
                raise MrlkitError("the cluster has no RayJob resource (ray.io/v1); install the KubeRay operator "
                                  "first: helm install kuberay-operator kuberay/kuberay-operator") from None
            if status is not None:
                raise MrlkitError(f"creating RayJob {name} in {namespace} failed ({status}): "
                                  f"{getattr(exc, 'reason', exc)}") from None
            raise
        print(f"created RayJob {namespace}/{name}", file=self.out, flush=True)

    def follow(self, name: str, namespace: str) -> JobResult:
        """Poll the RayJob's status until KubeRay marks it Complete or Failed (or ``timeout_s`` passes)."""
        deadline = self.clock() + self.timeout_s
        seen: tuple[str, str] | None = None
        while True:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            status = obj.get("status") or {}
            now = (status.get("jobDeploymentStatus", ""), status.get("jobStatus", ""))
            if now != seen:
                print(f"RayJob {name}: deployment={now[0] or '-'} job={now[1] or '-'}", file=self.out, flush=True)
                seen = now
            if now[0] in TERMINAL:
                return JobResult(name, namespace, now[0], now[1], status.get("message", ""))
            if self.clock() >= deadline:
                raise MrlkitError(f"RayJob {name} did not finish within {self.timeout_s:.0f}s (it keeps running; "
                                  f"follow it with kubectl -n {namespace} get rayjob {name} -w)")
            self.sleep(self.poll_s)

    def print_logs(self, name: str, namespace: str) -> None:
        """Print the submitter pods' logs (the Job KubeRay creates has the RayJob's name)."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        if not pods:
            print(f"(no submitter pod found for RayJob {name})", file=self.out, flush=True)
        for pod in pods:
            pod_name = pod.metadata.name
            try:
                text = self.core.read_namespaced_pod_log(pod_name, namespace)
            except Exception as exc:  # a pod already gone: say so, the status above still stands
                text = f"(logs unavailable: {getattr(exc, 'reason', exc)})\n"
            print(f"----- logs of {pod_name} -----", file=self.out)
            print(text.rstrip("\n"), file=self.out, flush=True)

    def run(self, manifest: dict[str, Any]) -> JobResult:
        self.create(manifest)
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        result = self.follow(name, namespace)
        self.print_logs(name, namespace)
        verdict = "succeeded" if result.succeeded else "FAILED"
        extra = f": {result.message}" if result.message and not result.succeeded else ""
        print(f"RayJob {name} {verdict} (deployment={result.deployment_status}, job={result.job_status or '-'})"
              f"{extra}", file=self.out, flush=True)
        return result
