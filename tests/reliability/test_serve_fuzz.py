"""Schema-driven fuzzing of ``POST /v1/embeddings`` on a real local Ray Serve app (tiny real model, dims 32/16/8).

Hypothesis builds request bodies around the OpenAI request schema (right and
wrong types for every field, unknown fields, token arrays, huge and empty
inputs, raw bytes, deep JSON): no answer is a 5xx, every 4xx carries an
OpenAI-style ``{"error": {"message", "type", ...}}`` body, and a good request
still gets its embedding after every bad one.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrlkit.testing.http import wait_for_status
from mrlkit.testing.s3_server import free_port

DIMS = [32, 16, 8]
GOOD = {"input": ["a good request"], "dimensions": 16}
TALLY = {"requests": 0, "status_5xx": 0, "bad_error_body": 0, "good_failed": 0, "by_status": {}}
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def endpoint(ray_local, tiny_mrl_model):
    from ray import serve

    from mrlkit.serve.app import AppArgs, EmbeddingsDeployment

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(model=tiny_mrl_model, model_name="tiny", max_batch_size=8, batch_wait_timeout_s=0.01,
                   max_inputs_per_request=8, max_request_bytes=20_000)  # the model's trained dims are DIMS
    serve.run(EmbeddingsDeployment.options(name="Fuzz", ray_actor_options={"num_cpus": 0.25}).bind(args),
              name="fuzz", route_prefix="/fuzz")
    base = f"http://127.0.0.1:{port}/fuzz"
    wait_for_status(f"{base}/health", timeout_s=120.0)
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client
    serve.delete("fuzz")
    serve.shutdown()


scalar = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
          | st.text(max_size=40))
junk = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=10)
field_values = {
    "input": (st.text(max_size=300) | st.lists(st.text(max_size=80), max_size=10)
              | st.lists(st.integers(0, 30000), max_size=5) | st.lists(st.lists(st.integers(0, 100), max_size=3),
                                                                       max_size=3)
              | st.just("word " * 3000) | junk),
    "model": st.sampled_from(["tiny", "other", ""]) | junk,
    "dimensions": st.sampled_from([32, 16, 8, 0, -1, 7, 33, 2**40]) | junk,
    "encoding_format": st.sampled_from(["float", "base64", "FLOAT", ""]) | junk,
    "user": st.text(max_size=10) | junk,
    "quantization": st.sampled_from(["int8", "uint8", "binary", "ubinary", "int4"]) | junk,
}


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["schema"] * 6 + ["junk_json", "raw_bytes", "deep_json"]))
    if kind == "raw_bytes":
        return draw(st.binary(max_size=200))
    if kind == "junk_json":
        return json.dumps(draw(junk)).encode()
    if kind == "deep_json":
        depth = draw(st.integers(10, 5000))  # past the JSON parser's recursion limit too: must be a 400
        return b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    body = {name: draw(values) for name, values in field_values.items() if draw(st.booleans())}
    if draw(st.booleans()):
        body["input"] = draw(field_values["input"])
    body.update(draw(st.dictionaries(st.text(max_size=8), junk, max_size=2)))
    return json.dumps(body).encode()


def check_answer(response: httpx.Response, tally: dict = TALLY) -> None:
    """Assert the API contract for one answer; count it in ``tally`` (the known-bug tests use their own)."""
    status = response.status_code
    tally["requests"] += 1
    tally["by_status"][str(status)] = tally["by_status"].get(str(status), 0) + 1
    if status >= 500:
        tally["status_5xx"] += 1
    assert status < 500, f"{status}: {response.text[:500]}"
    if status >= 400:
        try:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            tally["bad_error_body"] += 1
            raise AssertionError(f"{status} without an OpenAI-style error body: {response.text[:300]}") from None
    else:
        data = response.json()["data"]
        assert data and all(isinstance(d["embedding"], (list, str)) for d in data)


def check_good(client: httpx.Client, tally: dict = TALLY) -> None:
    response = client.post("/v1/embeddings", json=GOOD)
    if response.status_code != 200 or len(response.json()["data"][0]["embedding"]) != 16:
        tally["good_failed"] += 1
        raise AssertionError(f"a good request failed after a bad one: {response.status_code} {response.text[:300]}")


@pytest.mark.slow
@SETTINGS
@given(body=request_bodies(), content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_no_5xx_openai_errors_and_good_requests_keep_working(endpoint, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    check_answer(endpoint.post("/v1/embeddings", content=body, headers=headers))
    check_good(endpoint)


@pytest.mark.slow
def test_oversized_and_wrong_method_requests(endpoint):
    check_answer(endpoint.post("/v1/embeddings", content=b'{"input": "' + b"x" * 50_000 + b'"}'))
    assert TALLY["by_status"].get("413"), "an over-limit body was not refused with 413"
    for method, path in (("GET", "/v1/embeddings"), ("POST", "/v1/nothing-here"), ("DELETE", "/v1/models")):
        check_answer(endpoint.request(method, path))
    check_good(endpoint)


@pytest.fixture(scope="module", autouse=True)
def _record_figures(figures):
    """After the module: one reliability figure (lost = 5xx answers, 4xx without an error body, failed good ones)."""
    yield
    if TALLY["requests"]:
        figures("bad_input.serve_api_fuzzing", "hypothesis over the /v1/embeddings request schema (wrong types, "
                "unknown fields, token arrays, huge/empty/deep/raw bodies) against a real Ray Serve app, a good "
                "request after each",
                TALLY["requests"],
                TALLY["status_5xx"] + TALLY["bad_error_body"] + TALLY["good_failed"], by_status=TALLY["by_status"],
                status_5xx=TALLY["status_5xx"], bad_error_body=TALLY["bad_error_body"],
                good_failed=TALLY["good_failed"])


# -- known server bugs: each asserts the correct behaviour ------------------------------------------------------


@pytest.mark.slow
def test_deeply_nested_json_is_a_400(endpoint):
    known = {"requests": 0, "status_5xx": 0, "bad_error_body": 0, "good_failed": 0, "by_status": {}}
    check_answer(endpoint.post("/v1/embeddings", content=b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"), known)
    check_good(endpoint, known)


@pytest.mark.slow
def test_lone_surrogate_input_is_a_400(endpoint):
    known = {"requests": 0, "status_5xx": 0, "bad_error_body": 0, "good_failed": 0, "by_status": {}}
    check_answer(endpoint.post("/v1/embeddings", content=b'{"input": ["half a pair \\ud800 here"]}'), known)
    check_good(endpoint, known)
