"""Every documented combination of values renders, and every resource is valid offline.

Core resources: kubernetes-validate --strict for the pinned Kubernetes version. RayCluster, RayJob and
RayService: the KubeRay v1.7.0 CRD schemas (defaults applied, unknown fields rejected).
"""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, KUBE_VERSION

# The documented combinations (README "Run on Kubernetes"); each also turns the jobs on or off.
COMBINATIONS = {
    "defaults": {},
    "gpu-workers": {"workers": {"gpu": {"enabled": True, "replicas": 1}}},
    "dev-store": {"devStore": {"enabled": True}},
    "external-secret": {"storage": {"existingSecret": "my-s3", "endpoint": "https://s3.example.com"},
                        "auth": {"existingSecret": "my-ray-token"}},
    "serve-on": {"serve": {"enabled": True}},
    "serve-on-gpu": {"serve": {"enabled": True, "numGpus": 1, "autoscaling": {"enabled": False}},
                     "workers": {"gpu": {"enabled": True}}},
    "jobs-on-chart-cluster": {"jobs": {"prepare": {"enabled": True}, "train": {"enabled": True},
                                       "evaluate": {"enabled": True, "overrides": ["evaluate.batch_size=16"]}}},
    "jobs-own-clusters": {"cluster": {"enabled": False},
                          "jobs": {"useChartCluster": False, "train": {"enabled": True}}},
    "kind-dev": {"devStore": {"enabled": True}, "serve": {"enabled": True},
                 "jobs": {"prepare": {"enabled": True}}, "autoscaling": {"enabled": False},
                 "networkPolicy": {"enabled": True, "serveFrom": [{"podSelector": {}}]}},
    "security-switched-off": {"auth": {"enabled": False}, "networkPolicy": {"enabled": False},
                              "serviceAccount": {"create": False}},
}

RAY_KINDS = {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_combination_renders_valid_resources(combination, render, crds):
    docs = render(COMBINATIONS[combination])
    assert docs, "nothing rendered"
    problems = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"]["name"], where
        if doc["kind"] in RAY_KINDS:
            problems += [f"{where}: {p}" for p in crds.problems(doc)]
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: {exc.message} at {list(exc.path)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_combination_passes_helm_lint_strict(combination, helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(COMBINATIONS[combination]))
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(values)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_defaults_render_the_cluster_and_its_security_but_no_jobs_or_service(render):
    kinds = sorted(d["kind"] for d in render())
    assert kinds == ["ConfigMap", "NetworkPolicy", "RayCluster", "Secret", "ServiceAccount"]


def test_crd_validation_catches_an_unknown_field_and_a_wrong_type(render, crds):
    # The validator must be able to fail, or the combination test above proves nothing.
    cluster = render().one("RayCluster")
    cluster["spec"]["headGroupSpec"]["replicaz"] = 1
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    problems = "\n".join(crds.problems(cluster))
    assert "replicaz" in problems
    assert "maxReplicas" in problems


def test_kubernetes_validate_catches_an_unknown_field(render):
    policy = render().one("NetworkPolicy")
    policy["spec"]["podSelektor"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)


def test_every_combination_gives_valid_yaml_for_kubectl(render):
    docs = render(COMBINATIONS["kind-dev"])
    text = yaml.safe_dump_all(list(docs))
    assert len(list(yaml.safe_load_all(text))) == len(docs)
