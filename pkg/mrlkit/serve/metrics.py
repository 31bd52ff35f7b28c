"""Prometheus metrics of the embeddings endpoint (through Ray's metrics agent).

Exported names (Ray adds the ``ray_`` prefix and Serve's deployment/replica/application tags)::

    mrlkit_serve_requests_total{route, status}        every answered request, by HTTP status
    mrlkit_serve_errors_total{status, code}           refused or failed requests, by status and error code
    mrlkit_serve_inputs_total                         texts embedded
    mrlkit_serve_tokens_total                         tokens embedded (what ``usage`` reports)
    mrlkit_serve_dimension_requests_total{dimensions} requests by requested dimension ("full" when not given)
    mrlkit_serve_batch_size                           texts per model forward pass (histogram)
    mrlkit_serve_batch_seconds                        time of one model forward pass (histogram)
    mrlkit_serve_forward_passes_in_flight             forward passes running now (gauge)
    mrlkit_serve_request_latency_seconds{route}       time from request to response (histogram)

Each replica also keeps the same numbers in memory (:meth:`ServeMetrics.snapshot`),
which the deployment's ``stats`` method returns; tests and the benchmark read them
without a Prometheus server.
"""

from __future__ import annotations

from collections import Counter as _Tally
from typing import Any

LATENCY_BOUNDARIES_S = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ServeMetrics:
    """Counters and histograms of one replica; create inside the replica (Ray metrics need a running worker)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self._requests = Counter("mrlkit_serve_requests", "Requests answered, by route and HTTP status.",
                                 tag_keys=("route", "status"))
        self._errors = Counter("mrlkit_serve_errors", "Requests refused or failed, by HTTP status and error code.",
                               tag_keys=("status", "code"))
        self._inputs = Counter("mrlkit_serve_inputs", "Texts embedded.")
        self._tokens = Counter("mrlkit_serve_tokens", "Tokens embedded (as reported in usage).")
        self._dims = Counter("mrlkit_serve_dimension_requests", "Embedding requests by requested dimension.",
                             tag_keys=("dimensions",))
        self._batch = Histogram("mrlkit_serve_batch_size", "Texts per model forward pass.",
                                boundaries=BATCH_BOUNDARIES)
        self._batch_seconds = Histogram("mrlkit_serve_batch_seconds", "Seconds per model forward pass.",
                                        boundaries=LATENCY_BOUNDARIES_S)
        self._in_flight_gauge = Gauge("mrlkit_serve_forward_passes_in_flight", "Forward passes running now.")
        self._latency = Histogram("mrlkit_serve_request_latency_seconds", "Request latency in seconds.",
                                  boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route",))
        self._tally: _Tally[str] = _Tally()
        # Running totals, not lists: a replica lives for weeks.
        self._batches = self._batched_texts = self._largest_batch = 0
        self._forward_seconds = self._request_seconds = 0.0
        self._in_flight = self._most_in_flight = 0

    def request(self, route: str, status: int, seconds: float, *, code: str | None = None) -> None:
        self._requests.inc(tags={"route": route, "status": str(status)})
        self._latency.observe(seconds, tags={"route": route})
        self._tally[f"requests.{status}"] += 1
        self._request_seconds += seconds
        if status >= 400:
            self._errors.inc(tags={"status": str(status), "code": code or "unknown"})
            self._tally[f"errors.{status}.{code or 'unknown'}"] += 1

    def embedded(self, *, inputs: int, tokens: int, dimensions: int | None) -> None:
        self._inputs.inc(inputs)
        self._tokens.inc(tokens)
        dim = "full" if dimensions is None else str(dimensions)
        self._dims.inc(tags={"dimensions": dim})
        self._tally["inputs"] += inputs
        self._tally["tokens"] += tokens
        self._tally[f"dimensions.{dim}"] += 1

    def forward_started(self) -> None:
        self._in_flight += 1
        self._most_in_flight = max(self._most_in_flight, self._in_flight)
        self._in_flight_gauge.set(self._in_flight)

    def batch(self, size: int, seconds: float) -> None:
        """One forward pass of ``size`` texts that took ``seconds`` has ended (call after forward_started)."""
        self._in_flight -= 1
        self._in_flight_gauge.set(self._in_flight)
        self._batch.observe(size)
        self._batch_seconds.observe(seconds)
        self._batches += 1
        self._batched_texts += size
        self._largest_batch = max(self._largest_batch, size)
        self._forward_seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """Totals since the replica started; ``forward_seconds`` is wall time spent in the model."""
        return {
            "counts": dict(self._tally),
            "batches": self._batches,
            "batched_texts": self._batched_texts,
            "max_batch_size_seen": self._largest_batch,
            "mean_batch_size": round(self._batched_texts / self._batches, 2) if self._batches else 0.0,
            "forward_seconds": round(self._forward_seconds, 3),
            # Summed over requests, from the handler's start to its answer: a client waiting far longer than
            # this waited before the replica (in the proxy or the router), not in the batcher.
            "request_seconds": round(self._request_seconds, 3),
            "most_forward_passes_in_flight": self._most_in_flight,
        }
