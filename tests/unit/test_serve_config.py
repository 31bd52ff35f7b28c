"""AppArgs, the Serve config rendered from a pipeline config, and ray_jobs/serve.yaml kept in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydantic
import pytest
import yaml

from mrlkit.config import load_config
from mrlkit.config_schema import ServeConfig
from mrlkit.errors import ConfigError
from mrlkit.serve.app import AppArgs, app_args_from_config, main, render_serve_yaml, serve_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "ray_jobs" / "configs" / "demo.yaml"


def test_app_args_mirror_serve_config_names_and_defaults():
    serve_defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    for name, field in AppArgs.model_fields.items():
        assert name in serve_defaults, f"AppArgs.{name} has no ServeConfig field"
        if name != "model":
            assert field.default == serve_defaults[name], name
    assert AppArgs.model_fields["model"].is_required()


def test_app_args_refuse_unknown_and_bad_values():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        AppArgs(model="m", num_replicas=2)
    with pytest.raises(pydantic.ValidationError):
        AppArgs(model="m", max_batch_size=0)
    with pytest.raises(pydantic.ValidationError):
        AppArgs()


def test_args_default_to_this_runs_model(tmp_path):
    cfg = load_config(DEMO, [f"storage.root={tmp_path}", "serve.max_batch_size=8", "serve.unpad=false"])
    args = app_args_from_config(cfg)
    assert args.model == f"{tmp_path}/models/demo" and args.model_name == "demo" and args.max_batch_size == 8
    assert args.unpad is False and app_args_from_config(load_config(DEMO, [])).unpad is True
    other = app_args_from_config(load_config(DEMO, ["serve.model=s3://b/mrl/models/x"]))
    assert other.model == "s3://b/mrl/models/x" and other.model_name is None


def test_serve_config_has_deployment_options_and_autoscaling():
    fixed = serve_config(load_config(DEMO, ["serve.num_replicas=2", "serve.num_cpus=2"]))
    (app,) = fixed["applications"]
    assert app["import_path"] == "mrlkit.serve.app:build_app"
    (deployment,) = app["deployments"]
    assert deployment["num_replicas"] == 2 and deployment["ray_actor_options"]["num_cpus"] == 2
    assert deployment["max_ongoing_requests"] >= app["args"]["max_batch_size"]
    auto = serve_config(load_config(DEMO, ["serve.autoscaling=true", "serve.max_replicas=3"]), http_options=False)
    (deployment,) = auto["applications"][0]["deployments"]
    assert "num_replicas" not in deployment and "http_options" not in auto
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16.0}


def test_max_ongoing_requests_below_batch_size_is_refused():
    with pytest.raises(ConfigError, match="serve.max_ongoing_requests: must be at least max_batch_size"):
        load_config(DEMO, ["serve.max_batch_size=64", "serve.max_ongoing_requests=8"])


def test_serve_yaml_is_the_rendered_demo_config():
    """ray_jobs/serve.yaml must be regenerated when the demo config or the app args change."""
    committed = (REPO / "ray_jobs" / "serve.yaml").read_text()
    assert committed == render_serve_yaml(load_config(DEMO))
    parsed = yaml.safe_load(committed)
    AppArgs.model_validate(parsed["applications"][0]["args"])


def test_render_command(capsys):
    assert main(["--config", str(DEMO), "--no-http-options", "serve.port=9000"]) == 0
    assert "http_options" not in yaml.safe_load(capsys.readouterr().out)
    assert main(["--config", str(DEMO), "serve.port=0"]) == 2
    assert "serve.port" in capsys.readouterr().err
