"""The OpenAI wire format: parsing, and the error for every bad request class (no model, no Ray)."""

from __future__ import annotations

import json

import pytest

from mrlkit.serve.schemas import ApiError, EmbeddingRequest, parse_request


def parse(obj: object, *, max_bytes: int = 10_000, max_inputs: int = 4) -> EmbeddingRequest:
    return parse_request(json.dumps(obj).encode(), max_bytes=max_bytes, max_inputs=max_inputs)


def refused(obj: object, **limits: int) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(obj, **limits)
    return info.value


def test_a_good_request_parses_with_openai_defaults():
    req = parse({"input": "hi", "model": "m", "dimensions": 8, "user": "u"})
    assert req.texts == ["hi"] and req.dimensions == 8 and req.encoding_format == "float"
    assert parse({"input": ["a", "b"], "encoding_format": "base64", "quantization": "int8"}).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("obj", "status", "param", "code", "fragment"),
    [
        ({"input": ""}, 400, "input", "empty_input", "'input' is an empty string"),
        ({"input": []}, 400, "input", "empty_input", "empty list"),
        ({"input": ["a", ""]}, 400, "input", "empty_input", "'input[1]'"),
        ({}, 400, "input", "missing_input", "required"),
        ({"input": None}, 400, "input", "invalid_type", "got null"),
        ({"input": {"text": "a"}}, 400, "input", "invalid_type", "(dict)"),
        ({"input": [[1, 2]]}, 400, "input", "invalid_type", "token-id arrays"),
        ({"input": "a", "dimensions": True}, 400, "dimensions", "invalid_type", "an integer"),
        ({"input": "a", "dimensions": 8.0}, 400, "dimensions", "invalid_type", "an integer"),
        ({"input": "a", "model": 3}, 400, "model", "invalid_type", "a string"),
        ({"input": "a", "encoding_format": "hex"}, 400, "encoding_format", "invalid_encoding_format", "'base64'"),
        ({"input": "a", "quantization": "int4"}, 400, "quantization", "invalid_quantization", "'ubinary'"),
        ({"input": "a", "extra": 1}, 400, "extra", "unknown_field", "allowed fields: input, model"),
        ({"input": ["a"] * 5}, 413, "input", "too_many_inputs", "limit is 4"),
        (["a"], 400, None, "invalid_type", "JSON object"),
    ],
)
def test_each_bad_request_names_the_problem(obj, status, param, code, fragment):
    error = refused(obj)
    assert (error.status, error.param, error.code) == (status, param, code)
    assert fragment in error.message
    body = error.body()["error"]
    assert body == {"message": error.message, "type": "invalid_request_error", "param": param, "code": code}


def test_size_and_json_errors():
    big = parse_request
    with pytest.raises(ApiError) as info:
        big(b'{"input": "' + b"x" * 200 + b'"}', max_bytes=100, max_inputs=4)
    assert info.value.status == 413 and "limit is 100 bytes" in info.value.message
    with pytest.raises(ApiError) as info:
        big(b"{nope", max_bytes=100, max_inputs=4)
    assert info.value.status == 400 and info.value.code == "invalid_json"
    with pytest.raises(ApiError) as info:
        big(b"\xff\xfe", max_bytes=100, max_inputs=4)
    assert info.value.status == 400


def test_server_errors_have_server_error_type():
    assert ApiError(503, "not ready").body()["error"]["type"] == "server_error"


def test_fastapi_validation_errors_become_openai_400s():
    import asyncio

    from fastapi.exceptions import RequestValidationError

    from mrlkit.serve.app import _validation_error

    exc = RequestValidationError([{"loc": ("body", "input"), "msg": "Field required", "type": "missing"}])
    response = asyncio.run(_validation_error(None, exc))
    assert response.status_code == 400
    assert json.loads(response.body) == {"error": {"message": "invalid request: Field required",
                                                   "type": "invalid_request_error", "param": "input",
                                                   "code": "invalid_request"}}
