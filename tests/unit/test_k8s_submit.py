"""Following a RayJob to its end. No Kubernetes API server runs here, so the API is a recorded stand-in
that speaks the kubernetes client's types (V1PodList, ApiException); the kind test drives a real one."""

from __future__ import annotations

import io

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList
from kubernetes.client.exceptions import ApiException

from mrlkit.errors import MrlkitError
from mrlkit.k8s.submit import GROUP, PLURAL, VERSION, RayJobRunner

MANIFEST = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "fin-train-1", "namespace": "mrl"},
            "spec": {"entrypoint": "python -m mrlkit.k8s.entrypoint train"}}


class RecordedCustomObjects:
    """CustomObjectsApi stand-in: stores the created object, then plays back a list of statuses."""

    def __init__(self, statuses, create_error=None):
        self.statuses, self.create_error, self.created = list(statuses), create_error, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.create_error:
            raise self.create_error
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        self.created.append((namespace, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}


class RecordedCore:
    def __init__(self, logs):
        self.logs, self.selectors = logs, []

    def list_namespaced_pod(self, namespace, label_selector):
        self.selectors.append(label_selector)
        return V1PodList(items=[V1Pod(metadata=V1ObjectMeta(name=n)) for n in self.logs])

    def read_namespaced_pod_log(self, name, namespace):
        return self.logs[name]


def _runner(custom, core, **kw):
    out = io.StringIO()
    return RayJobRunner(custom, core, out=out, poll_s=1, sleep=lambda s: None, **kw), out


def test_follows_a_successful_job_and_prints_the_submitter_logs():
    custom = RecordedCustomObjects([{}, {"jobDeploymentStatus": "Initializing"},
                                    {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                                    {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                                    {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    core = RecordedCore({"fin-train-1-abcde": "train done: ndcg@10 0.71\n"})
    runner, out = _runner(custom, core)
    result = runner.run(MANIFEST)
    assert result.succeeded
    assert custom.created == [("mrl", MANIFEST)]
    assert core.selectors == ["job-name=fin-train-1"]
    text = out.getvalue()
    assert text.count("deployment=Running job=RUNNING") == 1  # each state change printed once
    assert "train done: ndcg@10 0.71" in text
    assert text.rstrip().endswith("RayJob fin-train-1 succeeded (deployment=Complete, job=SUCCEEDED)")


def test_a_failed_ray_job_is_reported_as_failed_with_its_message():
    custom = RecordedCustomObjects([{"jobDeploymentStatus": "Complete", "jobStatus": "FAILED",
                                     "message": "driver exited with code 2"}])
    runner, out = _runner(custom, RecordedCore({}))
    result = runner.run(MANIFEST)
    assert not result.succeeded
    assert "(no submitter pod found for RayJob fin-train-1)" in out.getvalue()
    assert "FAILED (deployment=Complete, job=FAILED): driver exited with code 2" in out.getvalue()


def test_an_existing_job_name_is_a_clear_error():
    custom = RecordedCustomObjects([{}], create_error=ApiException(status=409, reason="Conflict"))
    runner, _ = _runner(custom, RecordedCore({}))
    with pytest.raises(MrlkitError, match="RayJob fin-train-1 already exists in namespace mrl"):
        runner.run(MANIFEST)


def test_a_cluster_without_kuberay_is_a_clear_error():
    custom = RecordedCustomObjects([{}], create_error=ApiException(status=404, reason="Not Found"))
    runner, _ = _runner(custom, RecordedCore({}))
    with pytest.raises(MrlkitError, match="install the KubeRay operator"):
        runner.run(MANIFEST)


def test_following_gives_up_after_the_timeout_and_says_the_job_keeps_running():
    ticks = iter(range(0, 1000, 10))
    custom = RecordedCustomObjects([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}])
    runner, _ = _runner(custom, RecordedCore({}), timeout_s=30, clock=lambda: next(ticks))
    with pytest.raises(MrlkitError, match="did not finish within 30s"):
        runner.run(MANIFEST)
