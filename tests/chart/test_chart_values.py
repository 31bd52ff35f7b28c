"""values.yaml: every value documented (`# --`) and typed; bad values fail with messages that name them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from chart_helpers import CHART

KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):")


def _schema():
    return json.loads((CHART / "values.schema.json").read_text())


def _schema_node(schema, path):
    """The schema node for a key path, or None when the path lies inside a free-form value."""
    node = schema
    for key in path:
        if node.get("additionalProperties") is not False:
            return None
        node = node["properties"][key]
    return node


def documented_keys():
    """(path, has_doc_comment) for every key in values.yaml, in file order."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    found = []
    for i, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [match.group(2)]
        stack.append((indent, match.group(2)))
        comment = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        found.append((tuple(path), any(c.startswith("# -- ") for c in comment)))
    return found


def test_every_value_has_a_doc_comment_and_a_type():
    schema = _schema()
    undocumented, untyped, checked = [], [], 0
    for path, has_doc in documented_keys():
        parent = _schema_node(schema, path[:-1])
        if parent is None or parent.get("additionalProperties") is not False:
            continue  # inside a free-form value (pipeline config, resources, ...), documented as a whole
        checked += 1
        if not has_doc:
            undocumented.append(".".join(path))
        node = parent["properties"].get(path[-1])
        if node is None or "type" not in node:
            untyped.append(".".join(path))
    assert checked > 80
    assert not undocumented, f"values without a `# -- ` comment: {undocumented}"
    assert not untyped, f"values without a type in values.schema.json: {untyped}"


def test_the_schema_lists_exactly_the_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        if node.get("additionalProperties") is False:
            assert set(value) == set(node["properties"]), f"{path or 'values'}: values and schema differ"
        for key, sub in node.get("properties", {}).items():
            if isinstance(value, dict) and isinstance(value.get(key), dict):
                walk(value[key], sub, f"{path}.{key}".strip("."))

    walk(values, _schema(), "")


def test_helm_lint_strict_passes(helm):
    proc = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"storage": {"bucket": None}}, "bucket is required"),
    ({"pipeline": {"name": None}}, "pipeline: name is required"),
    ({"storage": {"bucket": "Not_A_Bucket"}}, "storage.bucket"),
    ({"storage": {"secretAccessKey": "x"}}, "Additional property secretAccessKey is not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"rayVersion": "2.40.0"}, "rayVersion"),
    ({"serve": {"maxBatchSize": 0}}, "serve.maxBatchSize"),
    ({"autoscaling": {"upscalingMode": "Fast"}}, "autoscaling.upscalingMode"),
    ({"workers": {"gpu": {"gpusPerWorker": "one"}}}, "workers.gpu.gpusPerWorker"),
    ({"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "extraEnv"),
    ({"pipelineYaml": "- 1\n- 2\n"}, "pipelineYaml is not a YAML mapping of config sections"),
    ({"pipelineYaml": "train:\n  epochs: 1\n"}, "pipeline.name is required"),
    ({"serve": {"enabled": True, "maxOngoingRequests": 8, "maxBatchSize": 32}},
     "serve.maxOngoingRequests (8) must be at least serve.maxBatchSize x serve.maxConcurrentBatches (32 x 1)"),
    ({"serve": {"enabled": True, "numGpus": 1}}, "serve.numGpus > 0 needs workers.gpu.enabled"),
])
def test_bad_values_fail_with_a_message_naming_the_value(render_error, values, message):
    assert message in render_error(values)


def test_the_required_bucket_is_named_by_the_template_too(helm, tmp_path):
    # values.schema.json can be bypassed (--skip-schema-validation in newer helm); the template still requires it
    schema_less = tmp_path / "chart"
    subprocess.run(["cp", "-r", str(CHART), str(schema_less)], check=True)
    (schema_less / "values.schema.json").unlink()
    proc = subprocess.run([helm, "template", "x", str(schema_less), "--set", "storage.bucket="],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "storage.bucket is required" in proc.stderr


def test_ray_version_is_the_same_in_chart_image_package_and_manifest_builder():
    from chart_helpers import REPO

    from mrlkit.k8s.manifests import RAY_VERSION

    chart = yaml.safe_load((CHART / "values.yaml").read_text())["rayVersion"]
    dockerfile = (REPO / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    package = re.search(r'"ray\[[a-z,]+\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert chart == image == package == RAY_VERSION
    # CPU and GPU variants from Ray's own images for the pinned Python
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG} AS base-cpu" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS base-gpu" in dockerfile


def test_the_chart_readme_lists_every_documented_value():
    readme = (CHART / "README.md").read_text()
    schema = _schema()
    missing = []
    for path, _ in documented_keys():
        parent = _schema_node(schema, path[:-1])
        if parent is None or parent.get("additionalProperties") is not False:
            continue
        node = parent["properties"][path[-1]]
        if node.get("additionalProperties") is False:
            continue  # a section: its keys are listed
        if f"| `{'.'.join(path)}` |" not in readme:
            missing.append(".".join(path))
    assert not missing, f"charts/mrlkit/README.md does not list: {missing}"
