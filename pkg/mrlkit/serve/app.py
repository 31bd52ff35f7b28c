"""Ray Serve app: OpenAI-compatible ``/v1/embeddings`` with per-request Matryoshka dimensions.

Run it from a Serve config (``ray_jobs/serve.yaml``, also a RayService ``serveConfigV2``)::

    serve run ray_jobs/serve.yaml                       # local Ray
    serve deploy ray_jobs/serve.yaml -a http://HEAD:8265   # a running cluster

or ``mrlkit serve --config ray_jobs/configs/demo.yaml``. Then::

    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"input": ["what was revenue?"], "dimensions": 64}'

Routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health`` (503 with the reason
while the model is not loaded). Requests are checked completely before they join a
batch, so a bad request is answered on its own and never fails a batch it would have
shared. Every text of every request in a batch is encoded once at full dimension;
each request then truncates (and re-normalises) to its own dimension.

Note: no ``from __future__ import annotations`` here; Ray Serve reads ``build_app``'s
annotation at run time to validate the args against :class:`AppArgs`.
"""

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrlkit import layout
from mrlkit.config_schema import PipelineConfig
from mrlkit.serve.embedder import Embedder, encode_vector
from mrlkit.serve.metrics import ServeMetrics
from mrlkit.serve.schemas import ApiError, EmbeddingRequest, ModelCard, ModelList, parse_request

log = logging.getLogger("mrlkit.serve")

IMPORT_PATH = "mrlkit.serve.app:build_app"
APP_NAME = "mrlkit"
DEPLOYMENT_NAME = "Embeddings"


class AppArgs(BaseModel):
    """The app's arguments: ``args:`` of a Serve config application (same names/defaults as ``ServeConfig``).

    Deployment-level options (replicas, autoscaling, ``max_ongoing_requests``, CPUs/GPUs) belong in the
    Serve config's ``deployments:`` section, not here.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, description="storage URI (<root>/models/<run>, local or s3://) or hub id")
    model_name: str | None = Field(default=None, description="name in requests/responses; default: folder name")
    allow_any_dimension: bool = Field(default=False, description="accept any 1..full, not only the trained dims")
    truncate_long_inputs: bool = Field(default=True, description="truncate over-long text; false: reject (400)")
    max_batch_size: int = Field(default=32, ge=1, description="texts per forward pass (@serve.batch)")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, description="longest wait for a batch to fill")
    max_concurrent_batches: int = Field(default=1, ge=1, description="forward passes a replica runs at once")
    torch_threads: int | None = Field(default=None, ge=1,
                                      description="CPU threads per forward pass; default: replica CPUs / "
                                                  "max_concurrent_batches (at least 1)")
    max_inputs_per_request: int = Field(default=256, ge=1, description="more inputs get 413")
    max_request_bytes: int = Field(default=2_000_000, ge=64, description="a larger body gets 413")
    # Added beyond the chart's list: a replica whose model failed to load retries this often (from Serve's
    # health check), so a model that appears later (export finishing, storage back) is picked up.
    model_retry_interval_s: float = Field(default=30.0, ge=0.1, description="retry a failed model load this often")
    unpad: bool = Field(default=True, description="encode each batch's real tokens only, never its padding")


api = FastAPI(title="mrlkit embeddings", description="OpenAI-compatible embeddings with Matryoshka dimensions.")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI would answer 422 with its own shape; clients of the OpenAI API expect 400 and an error body.
    first = (exc.errors() or [{}])[0]
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return _error_response(ApiError(400, f"invalid request: {first.get('msg', 'validation failed')}", param=param,
                                    code="invalid_request"))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error_response(ApiError(exc.status_code, str(exc.detail), code="http_error"))


def _count_texts(pieces: list[list[str]]) -> int:
    """A batch's size for ``@serve.batch``: the texts in its pieces (a request joins as one piece or a few)."""
    return sum(len(piece) for piece in pieces)


def _replica_cpus() -> float:
    """CPUs Ray assigned to this replica (``ray_actor_options.num_cpus``); 1 outside Ray."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:  # not in a Ray worker (a unit test constructing the class directly)
        return 1.0


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or not permitted: the figure is optional
        return None


# Globals the deployment class uses must be defined above it: Serve pickles the ingress class by value.
@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class EmbeddingsDeployment:
    """One replica: the model, a dynamic batcher and the HTTP routes."""

    def __init__(self, args: AppArgs | dict[str, Any]):
        self.args = AppArgs.model_validate(args) if isinstance(args, dict) else args
        self.metrics = ServeMetrics()
        self.embedder: Embedder | None = None
        self.not_ready_reason: str | None = "model is loading"
        self._last_attempt = 0.0
        self._loading = threading.Lock()
        self.torch_threads = self._configure_batching()
        self._load_model()

    def _configure_batching(self) -> int:
        """Batch size, wait and concurrency from the args; the torch threads each forward pass gets.

        On CPU, torch on several threads loses much of its speed once anything else (Serve's proxy, the
        request handling on this replica's event loop) shares the cores: the threads of one pass wait for
        each other at every operator, and a preempted thread stalls them all. Passes on one thread each do
        not wait for each other, so the replica's CPUs are split between its ``max_concurrent_batches``
        passes. One replica per CPU (``num_cpus: 1``, the default) measured best on a 2-core machine
        (benchmarks/results/serve_load*.json): concurrent passes in one process also share its GIL.
        """
        import torch

        self.embed_batch.set_max_batch_size(self.args.max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # Ray Serve has no setter for max_concurrent_batches, but its batch queue is created lazily from this
        # attribute on the first request; set it before any request. test_serve_app checks that it takes effect.
        lazy_queue = self.embed_batch.set_max_batch_size.__self__
        lazy_queue.max_concurrent_batches = self.args.max_concurrent_batches
        threads = self.args.torch_threads or max(1, int(_replica_cpus()) // self.args.max_concurrent_batches)
        torch.set_num_threads(threads)
        return threads

    # -- model loading: never raises, so a bad model is reported instead of crash-looping ----------

    def _load_model(self) -> None:
        if not self._loading.acquire(blocking=False):
            return
        self._last_attempt = time.monotonic()
        try:
            self.embedder = Embedder.load(self.args.model, name=self.args.model_name,
                                          allow_any_dimension=self.args.allow_any_dimension, unpad=self.args.unpad)
            self.not_ready_reason = None
            log.info("serving %s as %r: dims %s (full %d), %s", self.args.model, self.embedder.name,
                     list(self.embedder.allowed_dims), self.embedder.full_dim,
                     "on real tokens only (serve.unpad)" if self.embedder.unpadded else "computing on padding")
        except Exception as exc:  # any failure must leave a replica that explains itself
            self.not_ready_reason = f"cannot load model {self.args.model!r}: {type(exc).__name__}: {exc}"
            log.error("%s (retrying every %g s)", self.not_ready_reason, self.args.model_retry_interval_s)
        finally:
            self._loading.release()

    def check_health(self) -> None:
        # Called by Serve periodically. Raising would restart the replica in a loop for a model that
        # cannot load; instead stay up, answer 503 with the reason, and retry the load in the background.
        if self.embedder is None and time.monotonic() - self._last_attempt > self.args.model_retry_interval_s:
            threading.Thread(target=self._load_model, daemon=True).start()

    def _ready(self) -> Embedder:
        if self.embedder is None:
            raise ApiError(503, f"model not ready: {self.not_ready_reason}", code="model_not_ready")
        return self.embedder

    # -- routes -------------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> JSONResponse:
        if self.embedder is None:
            return JSONResponse({"status": "not_ready", "reason": self.not_ready_reason}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.embedder.name})

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        try:
            emb = self._ready()
        except ApiError as error:
            return _error_response(error)
        card = ModelCard(id=emb.name, created=int(time.time()), dimensions=list(emb.allowed_dims),
                         full_dimension=emb.full_dim, allow_any_dimension=emb.allow_any_dimension,
                         max_input_tokens=emb.max_seq_length, normalized=emb.normalizes)
        return JSONResponse(ModelList(data=[card]).model_dump())

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            payload = await self._embed(request)
        except ApiError as error:
            self.metrics.request("embeddings", error.status, time.perf_counter() - started, code=error.code)
            return _error_response(error)
        except Exception as exc:  # a bug or a model failure: answer this request, keep serving the rest
            log.exception("embedding request failed")
            error = ApiError(500, f"internal error while embedding: {type(exc).__name__}: {exc}",
                             code="internal_error")
            self.metrics.request("embeddings", 500, time.perf_counter() - started, code=error.code)
            return _error_response(error)
        self.metrics.request("embeddings", 200, time.perf_counter() - started)
        return Response(content=payload, media_type="application/json")

    def stats(self) -> dict[str, Any]:
        """This replica's metric counts (for tests and benchmarks; Prometheus has the same numbers)."""
        return {"ready": self.embedder is not None, "reason": self.not_ready_reason, "pid": os.getpid(),
                "rss_bytes": _rss_bytes(), "torch_threads": self.torch_threads,
                "max_concurrent_batches": self.args.max_concurrent_batches, **self.metrics.snapshot(),
                # packed and eager passes, and the real tokens' share of the padded batches (what unpadding skipped)
                "unpadded": self.embedder.unpadded.summary() if self.embedder and self.embedder.unpadded else None}

    # -- the work -----------------------------------------------------------------------------------

    async def _embed(self, request: Request) -> bytes:
        emb = self._ready()
        body = await self._read_body(request, self.args.max_request_bytes)
        req = parse_request(body, max_bytes=self.args.max_request_bytes, max_inputs=self.args.max_inputs_per_request)
        self._check_against_model(emb, req)
        texts = req.texts
        # Tokenising a large body takes long enough to stall every other request on this event loop.
        check = await asyncio.to_thread(emb.check_texts, texts) if len(body) > 65536 else emb.check_texts(texts)
        if check.too_long and not self.args.truncate_long_inputs:
            i = check.too_long[0]
            raise ApiError(400, f"'input[{i}]' is longer than the model's maximum of {emb.max_seq_length} tokens "
                           f"({len(check.too_long)} input(s) too long); shorten it, or run the server with "
                           "truncate_long_inputs: true", param="input", code="input_too_long")
        # The request joins the shared batch as pieces of at most max_batch_size texts (the batcher counts texts,
        # not pieces); every text of the batch is encoded at full dimension.
        size = self.args.max_batch_size
        pieces = await asyncio.gather(*(self.embed_batch(texts[i:i + size]) for i in range(0, len(texts), size)))
        results = [result for piece in pieces for result in piece]
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        vectors = emb.truncate(np.stack(results), req.dimensions)
        if req.quantization is not None:
            vectors = emb.quantize(vectors, req.quantization)
        tokens = sum(check.token_counts)
        self.metrics.embedded(inputs=len(texts), tokens=tokens, dimensions=req.dimensions)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        response = {"object": "list", "data": data, "model": emb.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return json.dumps(response, separators=(",", ":")).encode()

    def _check_against_model(self, emb: Embedder, req: EmbeddingRequest) -> None:
        if not emb.accepts_model(req.model):
            raise ApiError(400, f"model {req.model!r} is not served here; available: {emb.name!r}", param="model",
                           code="model_not_found")
        if req.dimensions is not None and not emb.dimension_allowed(req.dimensions):
            raise ApiError(400, f"'dimensions' {req.dimensions} is not allowed for model {emb.name!r}; use "
                           f"{emb.describe_allowed_dims()}", param="dimensions", code="invalid_dimensions")

    @staticmethod
    async def _read_body(request: Request, limit: int) -> bytes:
        """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is {declared} bytes; the limit is {limit} bytes",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the limit: the limit is {limit} bytes",
                               code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_count_texts)
    async def embed_batch(self, pieces: list[list[str]]) -> list[list[Any]]:
        """One forward pass over the texts of pieces from any number of requests; per-text errors stay per-text.

        Returns, per piece, one full-dimension vector or exception per text.
        """
        texts = [text for piece in pieces for text in piece]
        started = time.perf_counter()
        self.metrics.forward_started()
        try:
            encode = self._ready().encode_isolated
            if self.args.max_concurrent_batches == 1:
                # One pass at a time: run it on the event loop. In a thread it fights the loop for the GIL (a small
                # model's forward is mostly Python dispatch), and the starved loop lets too few requests reach the
                # batcher: batches stayed at ~12 of 32 texts under load. Blocked here, the loop takes in every
                # waiting request between passes instead.
                results = encode(texts)
            else:
                results = await asyncio.to_thread(encode, texts)
        finally:
            self.metrics.batch(len(texts), time.perf_counter() - started)
        bounds = itertools.accumulate((len(piece) for piece in pieces), initial=0)
        return [results[lo:hi] for lo, hi in itertools.pairwise(bounds)]


# -- building the app -----------------------------------------------------------------------------


def build_app(args: AppArgs) -> Application:
    """Typed application builder (import path ``mrlkit.serve.app:build_app``); Serve validates ``args``."""
    if isinstance(args, dict):  # called directly with plain data rather than through Serve
        args = AppArgs.model_validate(args)
    return EmbeddingsDeployment.bind(args)


def app_args_from_config(cfg: PipelineConfig) -> AppArgs:
    """The app args for a pipeline config: ``serve.model``, or this run's exported model."""
    s = cfg.serve
    return AppArgs(model=s.model or layout.model_uri(cfg), model_name=s.model_name or (None if s.model else cfg.run),
                   allow_any_dimension=s.allow_any_dimension, truncate_long_inputs=s.truncate_long_inputs,
                   max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
                   max_concurrent_batches=s.max_concurrent_batches, torch_threads=s.torch_threads,
                   max_inputs_per_request=s.max_inputs_per_request, max_request_bytes=s.max_request_bytes,
                   model_retry_interval_s=s.model_retry_interval_s, unpad=s.unpad)


def deployment_options(cfg: PipelineConfig) -> dict[str, Any]:
    """The ``deployments:`` entry for the embeddings deployment (replicas or autoscaling, concurrency, resources)."""
    s = cfg.serve
    options: dict[str, Any] = {"name": DEPLOYMENT_NAME, "max_ongoing_requests": s.max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}}
    if s.autoscaling:
        options["autoscaling_config"] = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                         "target_ongoing_requests": s.target_ongoing_requests}
    else:
        options["num_replicas"] = s.num_replicas
    return options


def serve_config(cfg: PipelineConfig, *, http_options: bool = True) -> dict[str, Any]:
    """The Serve config (``serve run``/``serve deploy`` file; ``http_options=False`` for a RayService serveConfigV2)."""
    app = {"name": APP_NAME, "route_prefix": cfg.serve.route_prefix, "import_path": IMPORT_PATH,
           "args": app_args_from_config(cfg).model_dump(), "deployments": [deployment_options(cfg)]}
    config: dict[str, Any] = {"applications": [app]}
    if http_options:
        config = {"http_options": {"host": cfg.serve.host, "port": cfg.serve.port}, **config}
    return config


def render_serve_yaml(cfg: PipelineConfig, *, http_options: bool = True) -> str:
    """The Serve config as YAML with a header saying how it was made and how to use it."""
    import yaml

    header = (
        "# Ray Serve config for mrlkit's /v1/embeddings (generated; do not edit by hand). Regenerate with:\n"
        "#   python -m mrlkit.serve.app --config ray_jobs/configs/demo.yaml > ray_jobs/serve.yaml\n"
        "# (add serve.model=s3://bucket/mrl/models/<run> or any serve.* override). Run it with\n"
        "#   serve run ray_jobs/serve.yaml                      # local Ray, from the repository root\n"
        "#   serve deploy ray_jobs/serve.yaml -a http://HEAD:8265\n"
        "# The applications: list is also a RayService's serveConfigV2 (drop http_options there).\n"
        "# args: are mrlkit.serve.app.AppArgs; deployments: are Ray Serve deployment options.\n"
    )
    return header + yaml.safe_dump(serve_config(cfg, http_options=http_options), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m mrlkit.serve.app --config FILE [key=value ...]``: print the Serve config YAML."""
    import argparse
    import sys

    from mrlkit.config import load_config
    from mrlkit.errors import MrlkitError

    parser = argparse.ArgumentParser(prog="python -m mrlkit.serve.app", description=main.__doc__)
    parser.add_argument("--config", "-c", required=True)
    parser.add_argument("--no-http-options", action="store_true", help="for a RayService serveConfigV2")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    ns = parser.parse_args(argv)
    try:
        cfg = load_config(ns.config, ns.overrides)
    except MrlkitError as exc:
        print(f"mrlkit: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_serve_yaml(cfg, http_options=not ns.no_http_options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
