"""RayJob manifests built from a pipeline config, checked against KubeRay's v1.7.0 RayJob CRD schema."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from mrlkit.cli import main as cli_main
from mrlkit.config import config_from_dict, load_config
from mrlkit.errors import ConfigError
from mrlkit.k8s import entrypoint
from mrlkit.k8s.crd_schema import CRDS_ENV, CrdSchemas, crds_dir
from mrlkit.k8s.manifests import CONFIG_ENV, JobOptions, build_rayjob

CONFIG = {"name": "fin", "run": "fin-r1", "storage": {"root": "s3://mrlkit/mrl"},
          "corpus": {"input": "s3://mrlkit/raw/fin", "format": "jsonl"},
          "train": {"matryoshka_dims": [64, 32], "epochs": 1, "num_workers": 2, "cpus_per_worker": 2}}


@pytest.fixture(scope="module")
def crds():
    folder = crds_dir()
    if not folder.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {folder}; set {CRDS_ENV} to a folder with the v1.7.0 CRD YAMLs")
    return CrdSchemas.load(folder)


@pytest.fixture
def cfg():
    return config_from_dict(json.loads(json.dumps(CONFIG)))


def _carried_config(manifest):
    env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"]
    return yaml.safe_load(env[CONFIG_ENV])


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate"])
@pytest.mark.parametrize("selector", [None, "mrlkit"])
def test_manifest_is_a_valid_rayjob(crds, cfg, stage, selector):
    manifest = build_rayjob(cfg, stage, JobOptions(namespace="mrl", cluster_selector=selector))
    assert crds.problems(manifest) == []
    assert manifest["metadata"]["namespace"] == "mrl"
    assert manifest["metadata"]["name"].startswith(f"fin-r1-{stage}-")
    assert manifest["spec"]["entrypoint"] == f"python -m mrlkit.k8s.entrypoint {stage}"


def test_the_job_carries_exactly_the_resolved_config(cfg):
    manifest = build_rayjob(cfg, "train", JobOptions(cluster_selector="mrlkit"))
    assert config_from_dict(_carried_config(manifest)) == cfg


def test_selecting_a_cluster_uses_the_charts_token_secret(cfg):
    spec = build_rayjob(cfg, "train", JobOptions(cluster_selector="mrlkit"))["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "mrlkit"}
    assert "rayClusterSpec" not in spec
    env = {e["name"]: e for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mrlkit-ray-auth", "key": "auth_token"}


def test_own_cluster_is_sized_from_the_train_section_and_takes_storage_by_reference(cfg):
    options = JobOptions(storage_secret="s3-creds", s3_endpoint="http://s3.mrl.svc:9000", image="reg/mrlkit:1")
    spec = build_rayjob(cfg, "train", options)["spec"]
    cluster = spec["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay generates the token
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == "reg/mrlkit:1"
    assert worker["resources"]["requests"]["cpu"] == "3"  # cpus_per_worker + 1 for the data loader
    unset = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cpus_per_worker=None))
    (group,) = build_rayjob(unset, "train", options)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"  # the least, + 1
    env = {e["name"]: e for e in worker["env"]}
    assert env["MRLKIT_S3_ENDPOINT"]["value"] == "http://s3.mrl.svc:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}}


def test_gpu_training_asks_for_gpus(cfg):
    gpu_cfg = config_from_dict(json.loads(json.dumps(CONFIG)) | {"train": {"use_gpu": True, "num_workers": 1}})
    (group,) = build_rayjob(gpu_cfg, "train")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_no_auth_leaves_token_out(cfg):
    spec = build_rayjob(cfg, "evaluate", JobOptions(auth=False))["spec"]
    assert "authOptions" not in spec["rayClusterSpec"]
    assert "env" not in spec["submitterPodTemplate"]["spec"]["containers"][0]


@pytest.mark.parametrize(("change", "message"), [
    ({"storage": {"root": "./mrlkit-data"}}, "storage.root: './mrlkit-data' is a local folder"),
    ({"corpus": {"input": "data/raw"}}, "corpus.input: 'data/raw' is a relative local path"),
])
def test_configs_that_cannot_work_on_a_cluster_are_refused(change, message):
    cfg = config_from_dict(json.loads(json.dumps(CONFIG)) | change)
    with pytest.raises(ConfigError, match=message):
        build_rayjob(cfg, "prepare")


@pytest.mark.parametrize(("options", "message"), [
    ({"namespace": "Bad_NS"}, "--namespace: 'Bad_NS' is not a Kubernetes name"),
    ({"name": "x" * 41}, "longer than 40"),
    ({"image": "has space"}, "--image"),
    ({"s3_endpoint": "s3.example.com"}, "--s3-endpoint: must be an http"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        JobOptions(**options)


def test_unknown_stage_is_refused(cfg):
    with pytest.raises(ConfigError, match="unknown stage 'serve'; choose one of prepare, train, evaluate"):
        build_rayjob(cfg, "serve")


def test_dry_run_prints_a_valid_rayjob(crds, tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code = cli_main(["k8s", "submit", "train", "--config", str(path), "train.epochs=2", "--namespace", "mrl",
                     "--cluster-selector", "mrlkit", "--name", "fin-train", "--dry-run"])
    assert code == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert crds.problems(manifest) == []
    assert manifest["metadata"]["name"] == "fin-train"
    assert config_from_dict(_carried_config(manifest)) == load_config(path, ["train.epochs=2"])


def test_submit_reports_a_bad_config_before_touching_the_cluster(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert cli_main(["k8s", "submit", "train", "--config", str(path), "train.epoks=2", "--dry-run"]) == 2
    assert "train.epoks: unknown key" in capsys.readouterr().err


def test_submit_refuses_own_cluster_options_with_a_selector(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code = cli_main(["k8s", "submit", "train", "--config", str(path), "--cluster-selector", "mrlkit",
                     "--storage-secret", "s3", "--dry-run"])
    assert code == 2
    assert "--storage-secret apply to a job's own cluster" in capsys.readouterr().err


def test_entrypoint_runs_the_stage_cli_on_the_carried_config(monkeypatch, cfg, capsys):
    # The driver side: the carried config reaches the stage loader intact (an unknown key proves it was read).
    manifest = build_rayjob(cfg, "train")
    carried = _carried_config(manifest) | {"bogus": 1}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(carried))
    assert entrypoint.main(["train"]) == 2
    assert "bogus: unknown key" in capsys.readouterr().err


def test_entrypoint_without_the_config_says_where_it_belongs(monkeypatch, capsys):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert entrypoint.main(["train"]) == 2
    assert "runs inside a RayJob built by `mrlkit k8s submit`" in capsys.readouterr().err
    assert entrypoint.main(["serve"]) == 2


def test_a_missing_crd_folder_is_a_clear_error(tmp_path):
    from mrlkit.errors import MrlkitError

    with pytest.raises(MrlkitError, match=f"no CRD YAML files in {tmp_path}; set {CRDS_ENV}"):
        CrdSchemas.load(tmp_path)


def test_crd_defaults_are_applied_before_validation(crds, cfg):
    # submissionMode has a CRD default; a manifest without it is still valid, and a bad one is not
    manifest = build_rayjob(cfg, "train", JobOptions(cluster_selector="mrlkit"))
    del manifest["spec"]["submissionMode"]
    assert crds.problems(manifest) == []
    manifest["spec"]["backoffLimit"] = "zero"
    assert any(p.startswith("spec.backoffLimit:") for p in crds.problems(manifest))
