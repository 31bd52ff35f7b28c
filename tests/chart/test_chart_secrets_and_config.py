"""Credentials reach pods only by reference; the rendered pipeline and Serve configs pass the app's own checks."""

from __future__ import annotations

import base64

import pytest
import yaml
from chart_helpers import REPO, containers, env_of

from mrlkit.config import config_from_dict, load_config

FULL = "demo-mrlkit"


def _secret_values(docs):
    """Every value held in a rendered Secret, decoded."""
    values = []
    for secret in docs.of_kind("Secret"):
        values += [base64.b64decode(v).decode() for v in secret.get("data", {}).values()]
        values += list(secret.get("stringData", {}).values())
    return values


@pytest.mark.parametrize("values", [
    {"devStore": {"enabled": True}, "serve": {"enabled": True}, "jobs": {"train": {"enabled": True}}},
    {"devStore": {"enabled": True}, "jobs": {"useChartCluster": False, "prepare": {"enabled": True}}},
])
def test_no_generated_secret_value_appears_outside_its_secret(render, values):
    docs = render(values)
    planted = _secret_values(docs)
    assert len(planted) == 3, "expected the Ray token and the dev store's two credentials"
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for value in planted:
            assert value not in text, f"a secret value leaked into {doc['kind']} {doc['metadata']['name']}"
            assert base64.b64encode(value.encode()).decode() not in text


def test_credentials_reach_containers_only_as_secret_references(render):
    docs = render({"storage": {"existingSecret": "s3-creds"}, "serve": {"enabled": True},
                   "jobs": {"train": {"enabled": True}}, "devStore": {"enabled": True}})
    sensitive = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"}
    seen = set()
    for doc in docs:
        for container in containers(doc):
            for name, entry in env_of(container).items():
                if name in sensitive:
                    seen.add(name)
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (doc["kind"], name)
            command_line = " ".join(container.get("command", []) + container.get("args", []))
            assert "AWS_" not in command_line and "auth_token" not in command_line
    assert seen == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"}
    # with an existing storage Secret the chart renders none of its own for storage
    assert [s["metadata"]["name"] for s in docs.of_kind("Secret")] == [f"{FULL}-ray-auth"]


@pytest.mark.parametrize("key", ["accessKeyId", "secretAccessKey", "password", "token"])
def test_no_value_accepts_a_credential(render_error, key):
    for section in ("storage", "auth", "devStore"):
        assert f"Additional property {key} is not allowed" in render_error({section: {key: "AKIAPLANTED"}})


def test_rendered_pipeline_config_is_valid_for_the_stages(render):
    docs = render({"storage": {"bucket": "team-bucket", "prefix": "/exp/mrl/"},
                   "pipeline": {"name": "fin", "run": "fin-r1", "train": {"matryoshka_dims": [384, 64], "epochs": 1},
                                "pairs": {"source": "synthetic"}}})
    text = docs.one("ConfigMap", f"{FULL}-pipeline")["data"]["pipeline.yaml"]
    cfg = config_from_dict(yaml.safe_load(text))
    assert cfg.storage.root == "s3://team-bucket/exp/mrl"
    assert (cfg.name, cfg.run, cfg.train.matryoshka_dims, cfg.train.epochs) == ("fin", "fin-r1", (384, 64), 1.0)


def test_should_mount_a_whole_pipeline_file_when_pipeline_yaml_is_set(render):
    # the same file the stages read locally; its local root is replaced, and the ConfigMap says so
    text = (REPO / "ray_jobs/configs/demo.yaml").read_text()
    docs = render({"pipelineYaml": text, "serve": {"enabled": True}})
    mounted = docs.one("ConfigMap", f"{FULL}-pipeline")["data"]["pipeline.yaml"]
    assert mounted.startswith('# storage.root "./mrlkit-data" replaced by the chart')
    cfg = config_from_dict(yaml.safe_load(mounted))
    local = load_config(REPO / "ray_jobs/configs/demo.yaml", ["storage.root=s3://mrlkit/mrl"])
    assert cfg == local
    # the served model follows the file's run, not the chart's default pipeline
    args = yaml.safe_load(docs.one("RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["model"] == f"s3://mrlkit/mrl/models/{local.run}" and args["model_name"] == local.run


def test_default_pipeline_config_is_valid_for_the_stages(render):
    text = render().one("ConfigMap")["data"]["pipeline.yaml"]
    assert config_from_dict(yaml.safe_load(text)).storage.root == "s3://mrlkit/mrl"


def _serve_config(docs):
    return yaml.safe_load(docs.one("RayService")["spec"]["serveConfigV2"])


def test_serve_config_is_accepted_by_the_serve_apps_own_schema(render):
    from mrlkit.serve.app import APP_NAME, DEPLOYMENT_NAME, IMPORT_PATH, AppArgs

    config = _serve_config(render({"serve": {"enabled": True, "allowAnyDimension": True, "maxBatchSize": 16,
                                             "batchWaitTimeoutS": 0.01, "maxRequestBytes": 100000,
                                             "unpad": False}}))
    (app,) = config["applications"]
    assert (app["name"], app["import_path"], app["route_prefix"]) == (APP_NAME, IMPORT_PATH, "/")
    args = AppArgs.model_validate(app["args"])
    assert args.model == "s3://mrlkit/mrl/models/mrlkit" and args.model_name == "mrlkit"
    assert args.allow_any_dimension is True and args.max_batch_size == 16
    assert args.batch_wait_timeout_s == 0.01 and args.max_request_bytes == 100000 and args.unpad is False
    (deployment,) = app["deployments"]
    assert deployment["name"] == DEPLOYMENT_NAME
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}
    assert deployment["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    assert "num_replicas" not in deployment


def test_serve_config_matches_what_the_app_derives_from_the_same_pipeline(render):
    # The chart and mrlkit.serve.app.serve_config must agree for one pipeline config.
    from mrlkit.serve.app import serve_config

    docs = render({"serve": {"enabled": True, "autoscaling": {"enabled": False}, "numReplicas": 2}})
    cfg = config_from_dict(yaml.safe_load(docs.one("ConfigMap")["data"]["pipeline.yaml"]) |
                           {"serve": {"num_replicas": 2}})
    expected = serve_config(cfg, http_options=False)["applications"][0]
    (app,) = _serve_config(docs)["applications"]
    assert app["args"] == {k: v for k, v in expected["args"].items() if v is not None}
    assert app["deployments"] == expected["deployments"]


def test_should_set_an_explicit_model_and_fixed_replicas_when_given(render):
    config = _serve_config(render({"serve": {"enabled": True, "model": "s3://models/base", "modelName": "fin",
                                             "autoscaling": {"enabled": False}, "numReplicas": 3,
                                             "routePrefix": "/embed"}}))
    (app,) = config["applications"]
    assert app["args"]["model"] == "s3://models/base" and app["args"]["model_name"] == "fin"
    assert app["route_prefix"] == "/embed"
    assert app["deployments"][0]["num_replicas"] == 3 and "autoscaling_config" not in app["deployments"][0]


def test_serve_model_name_is_left_to_the_app_for_an_explicit_model(render):
    (app,) = _serve_config(render({"serve": {"enabled": True, "model": "s3://models/base"}}))["applications"]
    assert "model_name" not in app["args"]


def test_should_not_render_a_ray_service_when_serve_is_disabled(render):
    assert not render({"serve": {"enabled": False}}).of_kind("RayService")


@pytest.mark.parametrize("source", ["pipeline", "pipelineYaml"])
def test_numbers_in_the_pipeline_survive_helm(render, source):
    # helm holds numbers as float64; large integers and small floats must still read back as the same values
    pipeline = {"name": "fin", "corpus": {"max_document_chars": 5000000},
                "train": {"learning_rate": 2.0e-05, "max_steps": 123456789, "warmup_ratio": 0.05}}
    values = {"pipeline": pipeline} if source == "pipeline" else {"pipelineYaml": yaml.safe_dump(pipeline)}
    cfg = config_from_dict(yaml.safe_load(render(values).one("ConfigMap")["data"]["pipeline.yaml"]))
    assert cfg.corpus.max_document_chars == 5000000 and cfg.train.max_steps == 123456789
    assert cfg.train.learning_rate == 2.0e-05 and cfg.train.warmup_ratio == 0.05
