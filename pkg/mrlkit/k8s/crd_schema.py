"""Validate KubeRay custom resources offline against the operator's CRD schemas.

Kubernetes checks a custom resource against its CRD's ``openAPIV3Schema``
after defaulting it, and prunes (or, with ``kubectl --validate=strict``,
rejects) fields the schema does not list. This module does the same with
jsonschema, so a manifest that would be refused by a real API server fails
in a test instead: defaults first, then unknown fields rejected wherever the
schema lists ``properties`` and does not keep unknown fields.

What it cannot check: CEL rules (``x-kubernetes-validations``) and the
operator's own webhooks.

Example::

    from mrlkit.k8s.crd_schema import CrdSchemas
    problems = CrdSchemas.load("../shared/kuberay-crds/v1.7.0").problems(rayjob_dict)
    assert not problems, problems
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mrlkit.errors import MrlkitError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KUBERAY_VERSION = "v1.7.0"
# The path is a setting; the default is the shared copy next to the repository.
CRDS_ENV = "MRLKIT_KUBERAY_CRDS"
DEFAULT_CRDS = Path(__file__).resolve().parents[3].parent / "shared" / "kuberay-crds" / KUBERAY_VERSION


def crds_dir() -> Path:
    """Where the KubeRay CRDs are: ``$MRLKIT_KUBERAY_CRDS`` or ``../shared/kuberay-crds/v1.7.0``."""
    return Path(os.environ.get(CRDS_ENV) or DEFAULT_CRDS)


@dataclass(frozen=True)
class CrdSchemas:
    """The openAPIV3Schema of each (group/version, kind) found in a folder of CRD YAML files."""

    schemas: dict[tuple[str, str], dict[str, Any]]

    @classmethod
    def load(cls, folder: str | Path | None = None) -> CrdSchemas:
        folder = Path(folder) if folder is not None else crds_dir()
        files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if not files:
            raise MrlkitError(f"no CRD YAML files in {folder}; set {CRDS_ENV} to a folder of KubeRay CRDs")
        schemas: dict[tuple[str, str], dict[str, Any]] = {}
        for path in files:
            # The CRDs are megabytes of YAML: the C loader reads them ~10x faster than the pure-Python one.
            for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_LOADER):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    api_version = f"{spec['group']}/{version['name']}"
                    schemas[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
        return cls(schemas)

    def kinds(self) -> list[tuple[str, str]]:
        return sorted(self.schemas)

    def problems(self, obj: dict[str, Any]) -> list[str]:
        """Every way ``obj`` breaks its CRD's schema, as ``path: message`` lines (empty when valid)."""
        import jsonschema

        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key not in self.schemas:
            known = ", ".join(f"{k} {a}" for a, k in self.kinds())
            return [f"no CRD schema for {key[1]} {key[0]}; known: {known}"]
        schema = self.schemas[key]
        defaulted = apply_defaults(copy.deepcopy(obj), schema)
        validator = jsonschema.Draft7Validator(strict_schema(schema))
        found = []
        for error in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "(root)"
            found.append(f"{where}: {error.message}")
        return found


def strict_schema(schema: Any) -> Any:
    """A copy of an openAPIV3Schema that rejects fields it does not list (as a strict API server does)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        out.pop("type", None)
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource"):
        out.pop("additionalProperties", None)
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    if schema.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
    return out


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill in ``default:`` values the way the API server does before it validates."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in obj:
                if name not in props:
                    obj[name] = apply_defaults(obj[name], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in obj]
    return obj
