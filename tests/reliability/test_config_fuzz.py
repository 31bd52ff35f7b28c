"""Bad input at scale for the one config loader (``mrlkit.config``).

Whatever a user writes (YAML text, raw bytes, nested junk, ``key=value``
overrides), the loader returns a valid :class:`PipelineConfig` or raises
:class:`ConfigError` whose message names a key; never another exception type.
Edge cases found by these properties (non-UTF-8 files, deep nesting, NaN/inf)
also have their own named tests below.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrlkit.config import apply_override, config_from_dict, config_to_dict, load_config
from mrlkit.config_schema import PipelineConfig
from mrlkit.errors import ConfigError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
YAML_SETTINGS = settings(SETTINGS, max_examples=100)  # the pure-Python YAML parser is the slow part
TALLY: dict[str, dict[str, int]] = {}


def _schema_names(cls: type, prefix: str = "") -> dict[str, list[str]]:
    """Section path -> its field names, for every (nested) dataclass of the schema."""
    hints = typing.get_type_hints(cls)
    out = {prefix: [f.name for f in dataclasses.fields(cls)]}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_schema_names(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name))
    return out


SECTIONS = _schema_names(PipelineConfig)
ALL_NAMES = sorted({n for names in SECTIONS.values() for n in names} | {"config"})

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats() | st.text(max_size=30)
           | st.sampled_from(["", "0", "1e-5", "2e-5", "yes", "no", "on", "null", "~", "s3://", "s3://b/x",
                              "s3://bucket/mrl", "./x", "http://h:1", "mnrl", "cosine", "group", "auto", "-1"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4), max_leaves=12)


@st.composite
def schema_shaped(draw: st.DrawFn) -> dict:
    """Mostly-real section and field names with junk (or plausible) values: reaches the deep checks."""
    data: dict = {}
    if draw(st.booleans()):
        data["name"] = draw(st.sampled_from(["demo", "x", "a-b.c_d", "Bad Name", ""]) | st.text(max_size=8))
    for path in draw(st.lists(st.sampled_from(sorted(p for p in SECTIONS if p)), max_size=4)):
        node = data
        for part in path.split("."):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            for name in draw(st.lists(st.sampled_from(SECTIONS[path]) | st.text(max_size=6), max_size=4)):
                node[name] = draw(junk | st.lists(st.integers(-5, 600), max_size=6))
    return data


def _tally(test: str, outcome: str) -> None:
    counts = TALLY.setdefault(test, {"examples": 0, "valid": 0, "config_error": 0})
    counts["examples"] += 1
    counts[outcome] += 1


def _check_outcome(test: str, build: typing.Callable[[], PipelineConfig], data_keys: set[str]) -> None:
    """Run ``build``: a PipelineConfig (which round-trips) or a ConfigError naming a key; anything else fails."""
    try:
        cfg = build()
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "a ConfigError with an empty message"
        named = [n for n in (*ALL_NAMES, *data_keys) if n and n in message]
        assert named, f"ConfigError names no key: {message!r}"
        _tally(test, "config_error")
        return
    assert isinstance(cfg, PipelineConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg  # a valid config survives its own serialisation
    _tally(test, "valid")


def _keys(data: typing.Any) -> set[str]:
    if isinstance(data, dict):
        return {str(k) for k in data} | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


def _write(payload: bytes) -> Path:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as fh:
        fh.write(payload)
    return Path(fh.name)


def _load_bytes(payload: bytes) -> PipelineConfig:
    path = _write(payload)
    try:
        return load_config(path)
    finally:
        path.unlink()


@SETTINGS
@given(junk)
def test_config_from_dict_any_junk(data):
    _check_outcome("config_from_dict_junk", lambda: config_from_dict(data), _keys(data))


@SETTINGS
@given(schema_shaped())
def test_config_from_dict_schema_shaped(data):
    _check_outcome("config_from_dict_schema_shaped", lambda: config_from_dict(data), _keys(data))


@YAML_SETTINGS
@given(schema_shaped() | junk)
def test_load_config_yaml_documents(data):
    payload = yaml.safe_dump(data, allow_unicode=True).encode("utf-8")
    _check_outcome("load_config_yaml", lambda: _load_bytes(payload), _keys(data))


@YAML_SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8")))
def test_load_config_arbitrary_utf8_bytes(payload):
    _check_outcome("load_config_bytes", lambda: _load_bytes(payload), set())


@YAML_SETTINGS
@given(schema_shaped(), st.lists(
    st.builds(lambda k, v: f"{k}={v}",
              st.sampled_from([f"{p}.{n}" if p else n for p, names in SECTIONS.items() for n in names])
              | st.text(max_size=12),
              st.text(max_size=20).filter(lambda v: v.count("[") < 50 and v.count("{") < 50)),
    max_size=4))
def test_overrides_on_any_base(data, overrides):
    def build() -> PipelineConfig:
        base = {"name": "demo", **data}
        for item in overrides:
            apply_override(base, item)
        return config_from_dict(base)

    _check_outcome("overrides", build, _keys(data) | {o.partition("=")[0] for o in overrides}
                   | {p for o in overrides for p in o.partition("=")[0].split(".")})


def test_truncated_config_files(tmp_path):
    """Every prefix of a real config file loads or fails with a ConfigError."""
    text = Path(__file__).resolve().parents[2].joinpath("ray_jobs", "configs", "demo.yaml").read_bytes()
    for cut in [*range(0, len(text), 5), len(text)]:
        path = tmp_path / "cut.yaml"
        path.write_bytes(text[:cut])
        _check_outcome("truncated_files", lambda p=path: load_config(p), set())


def test_huge_values_and_lines(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: " + "a" * 200_000 + "\n")
    with pytest.raises(ConfigError, match="name: .*not a valid name"):
        load_config(path)
    path.write_text("name: demo\ntrain:\n  matryoshka_dims: [" + ", ".join(["8"] * 10_000) + "]\n")
    with pytest.raises(ConfigError, match="train.matryoshka_dims: must be distinct"):
        load_config(path)


@pytest.fixture(scope="module", autouse=True)
def _record_figures(figures):
    """After the module: one reliability figure for all its examples (lost = crashes other than ConfigError)."""
    yield
    if TALLY:
        figures("bad_input.config_loader", "hypothesis: junk dicts, schema-shaped data, YAML documents, bytes, "
                "overrides, truncations of demo.yaml; each must give a valid config or a ConfigError naming a key",
                sum(c["examples"] for c in TALLY.values()), 0, by_test=TALLY)


# -- known loader bugs: each asserts the correct behaviour -------------------------------------------


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml"):
        load_config(path)


@pytest.mark.parametrize("where", ["file", "override"])
def test_deeply_nested_yaml_is_a_config_error(tmp_path, where):
    deep = "[" * 2000 + "]" * 2000
    try:
        with pytest.raises(ConfigError):
            if where == "file":
                path = tmp_path / "deep.yaml"
                path.write_text(f"name: demo\ntrain:\n  matryoshka_dims: {deep}\n")
                load_config(path)
            else:
                load_config(None, ["name=demo", f"train.matryoshka_dims={deep}"])
    except RecursionError:
        pytest.fail("RecursionError escaped the loader")  # short report instead of a 2000-frame traceback


@pytest.mark.parametrize("override", ["train.epochs=.nan", "train.epochs=.inf", "evaluate.serve_at_fraction=.nan",
                                      "pairs.hard_negatives.max_score=.nan"])
def test_non_finite_numbers_rejected(override):
    data = {"name": "demo"}
    apply_override(data, override)
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        config_from_dict(data)
