"""Per-template behaviour: "should set X when y is set"."""

from __future__ import annotations

import pytest
from chart_helpers import NAMESPACE, RELEASE, containers, env_of, pod_specs

FULL = f"{RELEASE}-mrlkit"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")
ALL_ON = {"devStore": {"enabled": True}, "serve": {"enabled": True}, "workers": {"gpu": {"enabled": True}},
          "jobs": {"prepare": {"enabled": True}, "train": {"enabled": True}}}


# -- RayCluster -------------------------------------------------------------------------------------------


def test_should_enable_ray_token_auth_with_a_generated_secret_by_default(render):
    docs = render()
    cluster = docs.one("RayCluster", FULL)
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": f"{FULL}-ray-auth"}
    secret = docs.one("Secret", f"{FULL}-ray-auth")
    assert len(secret["data"]["auth_token"]) > 40
    assert cluster["spec"]["rayVersion"] == "2.60.0"


def test_should_use_the_existing_token_secret_when_auth_existing_secret_is_set(render):
    docs = render({"auth": {"existingSecret": "team-ray-token"}})
    assert docs.one("RayCluster")["spec"]["authOptions"]["secretName"] == "team-ray-token"
    assert not docs.of_kind("Secret")


def test_should_drop_auth_options_when_auth_is_disabled(render):
    docs = render({"auth": {"enabled": False}, "jobs": {"train": {"enabled": True}}})
    assert "authOptions" not in docs.one("RayCluster")["spec"]
    assert not docs.of_kind("Secret")
    submitter = docs.one("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert "RAY_AUTH_TOKEN" not in env_of(submitter)


def test_should_add_a_gpu_worker_group_when_workers_gpu_enabled_is_set(render):
    assert [g["groupName"] for g in render().one("RayCluster")["spec"]["workerGroupSpecs"]] == ["cpu-workers"]
    groups = render({"workers": {"gpu": {"enabled": True, "gpusPerWorker": 2, "maxReplicas": 3}},
                     "image": {"gpuTag": "gpu-cu121"}}).one("RayCluster")["spec"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu-workers")
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["image"] == "mrlkit:gpu-cu121"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 3)


def test_should_drop_the_cpu_group_when_workers_cpu_enabled_is_false(render):
    assert "workerGroupSpecs" not in render({"workers": {"cpu": {"enabled": False}}}).one("RayCluster")["spec"]


def test_should_turn_on_the_autoscaler_with_bounds_when_autoscaling_enabled_is_set(render):
    spec = render({"autoscaling": {"idleTimeoutSeconds": 120, "upscalingMode": "Conservative"},
                   "workers": {"cpu": {"minReplicas": 1, "maxReplicas": 6}}}).one("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    assert spec["autoscalerOptions"]["upscalingMode"] == "Conservative"
    assert (spec["workerGroupSpecs"][0]["minReplicas"], spec["workerGroupSpecs"][0]["maxReplicas"]) == (1, 6)
    # the autoscaler sidecar needs the API token; nothing else mounts it
    assert spec["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    off = render({"autoscaling": {"enabled": False}}).one("RayCluster")["spec"]
    assert off["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in off
    assert off["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_should_fail_when_worker_bounds_are_inverted(render_error):
    err = render_error({"workers": {"cpu": {"minReplicas": 5, "maxReplicas": 2, "replicas": 2}}})
    assert "workers.cpu.minReplicas (5) must not exceed workers.cpu.maxReplicas (2)" in err


def test_should_pass_head_ray_start_params_as_strings(render):
    params = render({"head": {"rayStartParams": {"num-cpus": 1, "object-store-memory": 100000000}}}).one(
        "RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]
    assert params == {"dashboard-host": "0.0.0.0", "num-cpus": "1", "object-store-memory": "100000000"}


def test_should_not_create_the_cluster_when_cluster_enabled_is_false(render):
    assert not render({"cluster": {"enabled": False}}).of_kind("RayCluster")


# -- pods: config, storage, security ----------------------------------------------------------------------


def test_should_mount_the_pipeline_config_in_every_ray_pod(render):
    docs = render(ALL_ON)
    for doc in (d for d in docs if d["kind"] in RAY_KINDS):
        for pod in pod_specs(doc):
            if pod["containers"][0]["name"] == "ray-job-submitter":
                continue
            volume = next(v for v in pod["volumes"] if v["name"] == "pipeline-config")
            assert volume["configMap"]["name"] == f"{FULL}-pipeline"
            mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert mounts["pipeline-config"]["mountPath"] == "/etc/mrlkit"


def test_should_set_storage_env_and_reference_credentials_when_storage_existing_secret_is_set(render):
    docs = render({"storage": {"existingSecret": "s3-creds", "endpoint": "https://minio.example:9000",
                               "region": "eu-west-1", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}})
    head = docs.one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = env_of(head)
    assert env["MRLKIT_S3_ENDPOINT"]["value"] == "https://minio.example:9000"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID",
                                        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "key"}


def test_should_use_no_static_credentials_when_no_secret_is_given(render):
    head = render().one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "AWS_ACCESS_KEY_ID" not in env_of(head) and "MRLKIT_S3_ENDPOINT" not in env_of(head)


def test_should_run_every_pod_as_non_root_with_dropped_capabilities(render):
    docs = render(ALL_ON)
    checked = 0
    for doc in docs:
        for pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(doc):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
            checked += 1
    assert checked >= 8


def test_should_run_pods_under_the_release_service_account_without_api_tokens(render):
    docs = render({"jobs": {"train": {"enabled": True}}, "autoscaling": {"enabled": False}})
    account = docs.one("ServiceAccount", FULL)
    assert account["automountServiceAccountToken"] is False
    assert not docs.of_kind("Role") and not docs.of_kind("RoleBinding")
    for doc in docs.of_kind("RayCluster") + docs.of_kind("RayJob"):
        for pod in pod_specs(doc):
            assert pod["serviceAccountName"] == FULL
            assert pod["automountServiceAccountToken"] is False


def test_should_use_the_named_account_when_service_account_create_is_false(render):
    docs = render({"serviceAccount": {"create": False, "name": "existing-sa"}})
    assert not docs.of_kind("ServiceAccount")
    assert pod_specs(docs.one("RayCluster"))[0]["serviceAccountName"] == "existing-sa"


# -- NetworkPolicy ------------------------------------------------------------------------------------


def test_should_limit_ray_ports_to_the_release_pods_and_the_operator(render):
    policy = render().one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    own, operator = policy["spec"]["ingress"]
    assert own["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mrlkit",
                                                            "app.kubernetes.io/instance": RELEASE}}}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert {p["port"] for p in operator["ports"]} == {8265, 52365, 8000}
    # Ray pods carry the labels the policy selects
    head = render().one("RayCluster")["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= head.items()


def test_should_open_the_serve_port_when_serve_is_enabled(render):
    ingress = render({"serve": {"enabled": True}}).one("NetworkPolicy")["spec"]["ingress"]
    assert ingress[-1] == {"ports": [{"port": 8000, "protocol": "TCP"}]}
    peers = [{"namespaceSelector": {"matchLabels": {"team": "rag"}}}]
    ingress = render({"serve": {"enabled": True}, "networkPolicy": {"serveFrom": peers}}).one(
        "NetworkPolicy")["spec"]["ingress"]
    assert ingress[-1]["from"] == peers


def test_should_pin_the_operator_namespace_when_network_policy_operator_namespace_is_set(render):
    rule = render({"networkPolicy": {"operatorNamespace": "kuberay"}}).one("NetworkPolicy")["spec"]["ingress"][1]
    assert rule["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay"}}


def test_should_render_no_network_policy_when_network_policy_enabled_is_false(render):
    assert not render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy")


# -- RayJobs -----------------------------------------------------------------------------------------------


def test_should_select_the_chart_cluster_when_jobs_use_chart_cluster_is_set(render):
    docs = render({"jobs": {"prepare": {"enabled": True}, "train": {"enabled": True, "overrides": ["train.epochs=1"]}}})
    jobs = {d["metadata"]["labels"]["mrlkit.io/stage"]: d for d in docs.of_kind("RayJob")}
    assert sorted(jobs) == ["prepare", "train"]
    train = jobs["train"]["spec"]
    assert train["clusterSelector"] == {"ray.io/cluster": FULL}
    assert "rayClusterSpec" not in train
    assert train["entrypoint"] == "mrlkit train --config /etc/mrlkit/pipeline.yaml 'train.epochs=1'"
    submitter = train["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    token = env_of(submitter["containers"][0])["RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-ray-auth", "key": "auth_token"}


def test_should_give_each_job_its_own_cluster_when_jobs_use_chart_cluster_is_false(render):
    job = render({"jobs": {"useChartCluster": False, "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 900,
                           "evaluate": {"enabled": True}}}).one("RayJob")["spec"]
    assert "clusterSelector" not in job
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] == 60
    assert job["activeDeadlineSeconds"] == 900
    assert job["rayClusterSpec"]["authOptions"]["mode"] == "token"
    assert job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "mrlkit:cpu"


def test_should_fail_when_jobs_select_a_cluster_that_is_not_created(render_error):
    err = render_error({"cluster": {"enabled": False}, "jobs": {"train": {"enabled": True}}})
    assert "jobs.useChartCluster needs cluster.enabled" in err


@pytest.mark.parametrize("override", ["epochs", "train.epochs=1'; rm -rf /; echo '"])
def test_should_reject_a_job_override_that_is_not_key_value(render_error, override):
    err = render_error({"jobs": {"train": {"enabled": True, "overrides": [override]}}})
    assert "overrides" in err


# -- dev store -----------------------------------------------------------------------------------------


def test_should_deploy_the_dev_store_and_point_storage_at_it_when_dev_store_enabled_is_set(render):
    docs = render({"devStore": {"enabled": True, "persistence": {"size": "1Gi", "storageClass": "standard"}}})
    name = f"{FULL}-s3"
    deployment = docs.one("Deployment", name)
    service = docs.one("Service", name)
    assert docs.one("PersistentVolumeClaim", name)["spec"]["storageClassName"] == "standard"
    assert service["spec"]["ports"][0]["port"] == 9000
    s3 = deployment["spec"]["template"]["spec"]["containers"][0]
    assert s3["args"][:3] == ["serve", "s3", "/data"]
    assert env_of(s3)["RCLONE_AUTH_KEY"]["value"] == "$(AWS_ACCESS_KEY_ID),$(AWS_SECRET_ACCESS_KEY)"
    assert env_of(s3)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == name
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["mkdir", "-p", "/data/mrlkit"]
    head = docs.one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert env_of(head)["MRLKIT_S3_ENDPOINT"]["value"] == f"http://{name}.{NAMESPACE}.svc:9000"
    assert env_of(head)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": name,
                                                                              "key": "AWS_ACCESS_KEY_ID"}
    assert set(docs.one("Secret", name)["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_should_fail_when_the_dev_store_and_an_endpoint_are_both_set(render_error):
    err = render_error({"devStore": {"enabled": True}, "storage": {"endpoint": "https://s3.example.com"}})
    assert "storage.endpoint must be empty when devStore.enabled" in err
