"""Lookups over rendered manifests, shared by the chart tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mrlkit"
KUBE_VERSION = "1.31.0"  # the Kubernetes version manifests are rendered for and validated against
RELEASE, NAMESPACE = "demo", "mrl"


class Rendered(list):
    """The documents of one `helm template`, with lookups by kind and name."""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        return found[0]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a Deployment, RayCluster, RayJob or RayService."""
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayService": spec.get("rayClusterConfig")}.get(doc["kind"])
    found = []
    if cluster:
        found.append(cluster["headGroupSpec"]["template"]["spec"])
        found += [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and spec.get("submitterPodTemplate"):
        found.append(spec["submitterPodTemplate"]["spec"])
    return found


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in pod_specs(doc) for c in pod.get("initContainers", []) + pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
