"""The one config loader: a YAML file plus ``key=value`` overrides -> frozen dataclasses.

One file drives every stage of a pipeline (sections ``storage``, ``ray``,
``corpus``, ``pairs``, ``train``, ``evaluate``, ``serve``). Unknown keys, wrong
types, missing required values and impossible combinations raise
:class:`~mrlkit.errors.ConfigError` naming the key and what is allowed, before
any stage starts work.

Example::

    from mrlkit.config import load_config
    cfg = load_config("ray_jobs/configs/demo.yaml", ["train.epochs=1"])
    cfg.train.batch_size  # 32

The section schemas live in :mod:`mrlkit.config_schema`; this module only
knows how to turn plain data into them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mrlkit.config_schema import PipelineConfig, Problem
from mrlkit.errors import ConfigError
from mrlkit.models import is_local_path
from mrlkit.storage import is_s3_uri

__all__ = ["PipelineConfig", "config_from_dict", "config_hash", "config_to_dict", "load_config"]

_MISSING = dataclasses.MISSING
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Load ``path`` (YAML), apply ``key=value`` overrides, validate, return a frozen config.

    Args:
        path: a YAML file, or None to start from defaults (then ``name=...`` must be overridden).
        overrides: dotted ``section.key=value`` strings; values are parsed as YAML
            (``train.matryoshka_dims=[256,64]``, ``train.use_gpu=true``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"config file {str(p)!r} is nested too deeply to be a pipeline config") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        apply_override(data, item)
    return config_from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping ``data`` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=1)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw  # an unparseable value is taken as the literal string; type checks still apply
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from plain nested data."""
    cfg = _build(PipelineConfig, data, "")
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-ready data for a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with its relative local paths made absolute against this process's folder.

    Why: Ray Train runs each worker in a folder of its own (the run's artifacts folder),
    so ``./mrlkit-data`` in a worker is not the driver's ``./mrlkit-data``. Stages call
    this in the driver, before any config travels to a worker. ``s3://`` URIs and hub
    ids are left alone; which model references are paths is :func:`mrlkit.models.is_local_path`'s rule.
    """

    def local(uri: str | None) -> str | None:
        if uri is None or is_s3_uri(uri):
            return uri
        return os.path.abspath(os.path.expanduser(uri))

    def model(ref: str | None) -> str | None:
        if ref is None or is_s3_uri(ref) or not is_local_path(ref):
            return ref
        return os.path.abspath(os.path.expanduser(ref))

    return dataclasses.replace(
        cfg,
        storage=dataclasses.replace(cfg.storage, root=local(cfg.storage.root)),
        corpus=dataclasses.replace(cfg.corpus, input=local(cfg.corpus.input)),
        train=dataclasses.replace(cfg.train, base_model=model(cfg.train.base_model)),
        evaluate=dataclasses.replace(cfg.evaluate, models=tuple(model(m) for m in cfg.evaluate.models)),
        serve=dataclasses.replace(cfg.serve, model=model(cfg.serve.model)),
    )


def config_hash(cfg: Any) -> str:
    """A stable sha256 of a config (or a section of one), for manifests and caching."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# -- building dataclasses from plain data ------------------------------------------------


def _build(cls: type, data: Any, path: str) -> Any:
    where = path or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(path, str(key), sorted(fields)))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            raise ConfigError(f"{key}: required, but missing ({_allowed(hints[name])})")
    try:
        obj = cls(**kwargs)
    except Problem as problem:
        raise ConfigError(_qualify(path, problem)) from None
    return obj


def _qualify(path: str, problem: Problem) -> str:
    key = problem.key
    full = f"{path}.{key}" if path and key else (key or path or "config")
    return f"{full}: {problem.message}"


def _unknown_key(path: str, key: str, allowed: list[str]) -> str:
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{full}: unknown key.{hint} Allowed keys{' in ' + path if path else ''}: {', '.join(allowed)}"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for option in non_none:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(non_none) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: expected {_allowed(hint)}, got {_describe(value)}")
    if origin is Literal:
        if isinstance(value, bool):
            # YAML 1.1 reads no/off/yes/on as booleans; give back the word when it is one of the choices.
            words = ("no", "off", "false") if value is False else ("yes", "on", "true")
            value = next((w for w in words if w in args), value)
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key}: {_describe(value)} is not allowed; choose one of {choices}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_allowed(hint)}), got {_describe(value)}")
        item_hint = args[0]
        return tuple(_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 2e-5 (no dot) as a string; it is plainly meant as a number
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {_describe(value)}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    raise TypeError(f"config schema uses an unsupported type {hint!r} at {key}")  # a bug in the schema


def _allowed(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_allowed(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_allowed(args[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a section"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        hint, str(hint)
    )


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
