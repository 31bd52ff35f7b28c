"""The OpenAI embeddings wire format (requests, responses, errors) as pydantic models.

Follows https://platform.openai.com/docs/api-reference/embeddings so existing
clients work unchanged. One extension, documented as such: ``quantization``
(``int8`` | ``uint8`` | ``binary`` | ``ubinary``) returns sentence-transformers'
quantised vectors (integers, or bytes under ``encoding_format: base64``).

Every problem a client can fix becomes an :class:`ApiError`, rendered as
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrlkit.serve.embedder import QUANTIZATIONS

ENCODING_FORMATS = ("float", "base64")


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                               code=self.code)).model_dump()


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``. Strict types: ``"8"`` is not a dimension and ``true`` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: str | list[str]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: str = "float"  # checked by parse_request, so the message can list the allowed values
    user: str | None = None  # accepted for OpenAI compatibility; not used
    quantization: str | None = Field(default=None, description="mrlkit extension: int8, uint8, binary or ubinary")

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``; ``dimensions`` and the rest are mrlkit extensions."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mrlkit"
    dimensions: list[int]
    full_dimension: int
    allow_any_dimension: bool
    max_input_tokens: int
    normalized: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- parsing a request body ------------------------------------------------------------------

_EXPECTED = {
    "input": "a non-empty string or a list of non-empty strings",
    "model": "a string",
    "dimensions": "an integer",
    "encoding_format": "one of " + ", ".join(repr(f) for f in ENCODING_FORMATS),
    "user": "a string",
    "quantization": "null or one of " + ", ".join(repr(q) for q in QUANTIZATIONS),
}


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def parse_request(body: bytes, *, max_bytes: int, max_inputs: int) -> EmbeddingRequest:
    """Bytes of a ``POST /v1/embeddings`` body -> a checked request, or an :class:`ApiError` saying what is wrong.

    Checks what needs no model: size (413), JSON, field types, empty input, input count
    (413), encoding format and quantization names. Model-dependent checks (model name,
    dimensions, input length) are the app's.
    """
    if len(body) > max_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {max_bytes} bytes",
                       code="request_too_large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be an embeddings request",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_type")
    if "input" not in data:
        raise ApiError(400, "'input' is required: " + _EXPECTED["input"], param="input", code="missing_input")
    try:
        request = EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, data) from None
    texts = request.texts
    if not texts:
        raise ApiError(400, "'input' is an empty list; send at least one non-empty string", param="input",
                       code="empty_input")
    unencodable = [i for i, t in enumerate(texts) if _has_lone_surrogate(t)]
    if unencodable:  # a JSON \ud800 escape: not text any tokenizer can take
        where = "'input'" if isinstance(request.input, str) else f"'input[{unencodable[0]}]'"
        raise ApiError(400, f"{where} holds a lone UTF-16 surrogate escape; send valid Unicode text",
                       param="input", code="invalid_text")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        where = "'input'" if isinstance(request.input, str) else f"'input[{empty[0]}]'"
        raise ApiError(400, f"{where} is an empty string; every input must contain text", param="input",
                       code="empty_input")
    if len(texts) > max_inputs:
        raise ApiError(413, f"'input' has {len(texts)} items; the limit is {max_inputs} per request",
                       param="input", code="too_many_inputs")
    if request.encoding_format not in ENCODING_FORMATS:
        raise ApiError(400, f"'encoding_format' {request.encoding_format!r} is not supported; use "
                       + _EXPECTED["encoding_format"], param="encoding_format", code="invalid_encoding_format")
    if request.quantization is not None and request.quantization not in QUANTIZATIONS:
        raise ApiError(400, f"'quantization' {request.quantization!r} is not supported; use "
                       + _EXPECTED["quantization"], param="quantization", code="invalid_quantization")
    return request


def _explain(exc: ValidationError, data: dict[str, Any]) -> ApiError:
    error = exc.errors()[0]
    loc = error.get("loc") or ()
    field = str(loc[0]) if loc else None
    if error.get("type") == "extra_forbidden":
        allowed = ", ".join(EmbeddingRequest.model_fields)
        return ApiError(400, f"unknown field {field!r}; allowed fields: {allowed}", param=field, code="unknown_field")
    if field == "input" and isinstance(data.get("input"), list) and data["input"] and not isinstance(
            data["input"][0], str):
        # OpenAI's token ids are its own tokenizer's, meaningless to this model's. LangChain's OpenAIEmbeddings
        # sends them unless told not to, so the message says how.
        return ApiError(400, "'input' must be text: token-id arrays are not supported, send strings (LangChain's "
                        "OpenAIEmbeddings: set check_embedding_ctx_length=False)", param="input", code="invalid_type")
    value = data.get(field) if field else None
    shown = json.dumps(value)[:60] if field else ""
    expected = _EXPECTED.get(field or "", "a valid value")
    return ApiError(400, f"'{field}' must be {expected}, got {shown} ({type(value).__name__})", param=field,
                    code="invalid_type")
