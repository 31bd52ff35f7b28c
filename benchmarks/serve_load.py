"""Load test of ``/v1/embeddings`` on a local Ray Serve, side by side with raw in-process ``model.encode``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --clients 64 --seconds 40

N concurrent clients (asyncio + httpx, 127.0.0.1 only) each send requests of 1-16 short
texts with a random dimension, until ``--requests`` requests or ``--seconds`` have passed.
Reports requests/s, texts/s, p50/p95/p99 latency and errors; then the ratio of served
texts/s to raw ``encode`` texts/s measured on the same model, texts and CPU in this run.
Raw encode runs at its best split of the cores (torch on all of them, or one encoder thread
per core, which a replica also does by default: ``--concurrent-batches``), chosen before Ray
starts. The two never compete, but they are interleaved: ``--rounds`` rounds of raw encode (the
app idle) then served load, so the ratio compares figures taken minutes, not tens of minutes,
apart. On a shared machine whose speed drifts, that matters more than the length of a window.
Clients ask for ``encoding_format: base64``, as the OpenAI Python client does by default. The
result also says how many cores the replica, Serve's proxy and controller, the load generator and
the rest of Ray used during the load: on a small machine they all share the cores raw encode had.

``--soak-seconds S`` runs the load for S seconds instead (no request bound) and reports the
replica's RSS at start and end and the p99 of each half (reliability work: a leak shows as steady
growth, a slowdown as a second-half p99 far above the first). ``tests/reliability/test_serve_faults.py``
runs the same soak (:func:`soak`) for ``MRLKIT_SOAK_SECONDS`` and imports :func:`run_load` for its fault test.

``--data DIR`` sends the seed dataset's texts instead of short synthetic ones: each a context (a passage to
index) with probability ``--passage-share``, else a question, so a batch mixes lengths as a search service that
also indexes sees. ``--padded`` runs the replica and raw encode computing on padding (``serve.unpad: false``).
Writes ``benchmarks/results/serve_load.json`` (or ``--name``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

WORDS = ("revenue income margin quarter fiscal growth segment cash flow debt equity share dividend customer "
         "product service market risk cost operating net total year increase decrease company report").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Short, varied sentences (6-24 words), like queries and short passages."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))) + f" {i}" for i in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def dataset_texts(data: Path, n: int, passage_share: float, seed: int = 0) -> list[str]:
    """``n`` of the seed dataset's texts: a context with probability ``passage_share``, else a question."""
    from encode_unpad import load_texts

    questions, contexts = load_texts(data)
    rng = random.Random(seed)
    return [rng.choice(contexts) if rng.random() < passage_share else rng.choice(questions) for _ in range(n)]


def raw_encode_throughput(model: str, texts: list[str], batch_size: int, seconds: float, threads: int,
                          encoders: int = 1, unpad: bool = True) -> dict[str, Any]:
    """Texts/s of ``Embedder.encode_full`` (one ``model.encode`` per batch) in this process: ``encoders`` Python
    threads each encoding back to back, torch on ``threads`` threads (the same split a replica can use)."""
    import threading

    import torch

    from mrlkit.serve.embedder import Embedder

    torch.set_num_threads(threads)
    emb = Embedder.load(model, allow_any_dimension=True, unpad=unpad)
    emb.encode_full(texts[:batch_size])  # warm-up
    done = [0] * encoders
    deadline = time.perf_counter() + seconds

    def encode_loop(worker: int) -> None:
        start = worker * len(texts) // encoders
        while time.perf_counter() < deadline:
            offset = (start + done[worker]) % len(texts)
            batch = (texts * 2)[offset:offset + batch_size]
            emb.encode_full(batch)
            done[worker] += len(batch)

    started = time.perf_counter()
    workers = [threading.Thread(target=encode_loop, args=(w,)) for w in range(encoders)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    total = sum(done)
    return {"texts": total, "seconds": round(elapsed, 2), "texts_per_s": round(total / elapsed, 1),
            "batch_size": batch_size, "torch_threads": torch.get_num_threads(), "encoders": encoders,
            "full_dim": emb.full_dim}


def replica_stats(handle: Any, replicas: int) -> dict[str, Any]:
    """Every replica's ``stats()`` summed (counts and totals; the first replica's settings). The handle picks a
    replica per call, so call until each has answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(50 * replicas):
        stats = handle.stats.remote().result()
        seen[stats["pid"]] = stats
        if len(seen) == replicas:
            break
    if len(seen) < replicas:
        raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered stats()")
    first, *rest = seen.values()
    total = {**first, "counts": dict(first["counts"])}
    for other in rest:
        for key in ("batches", "batched_texts", "forward_seconds", "request_seconds", "rss_bytes"):
            total[key] += other[key]
        total["max_batch_size_seen"] = max(total["max_batch_size_seen"], other["max_batch_size_seen"])
        total["counts"] = {key: total["counts"].get(key, 0) + other["counts"].get(key, 0)
                           for key in {*total["counts"], *other["counts"]}}
    total["pids"] = sorted(seen)
    total["mean_batch_size"] = round(total["batched_texts"] / total["batches"], 2) if total["batches"] else 0.0
    return total


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process on this machine, summed by what it is for the load."""
    import psutil

    me = os.getpid()
    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            times, cmdline = proc.info["cpu_times"], " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if times is None:
            continue
        if proc.info["pid"] == me:
            role = "load_generator"
        elif "ServeReplica" in cmdline:
            role = "replica"
        elif "ProxyActor" in cmdline:
            role = "serve_proxy"
        elif "ServeController" in cmdline:
            role = "serve_controller"
        elif "ray" in cmdline:
            role = "other_ray"
        else:
            role = "other_processes"
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def cpu_share_by_role(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores each role used on average over ``seconds`` (1.0 = one core busy the whole time)."""
    return {role: round((after[role] - before.get(role, 0.0)) / seconds, 3) for role in sorted(after)}


def answer_key(response: Any, n_inputs: int) -> str:
    """How one answer is counted: ``"200"``, ``"bad_response"`` (a 200 with the wrong number of vectors), the
    status for a well-formed OpenAI-style error body, or ``"<status>_not_openai_error"`` for any other body."""
    if response.status_code == 200:
        try:
            return "200" if len(response.json()["data"]) == n_inputs else "bad_response"
        except (ValueError, KeyError, TypeError):
            return "bad_response"
    try:
        error = response.json()["error"]
        well_formed = isinstance(error["message"], str) and bool(error["message"]) and isinstance(error["type"], str)
    except (ValueError, KeyError, TypeError):
        well_formed = False
    return str(response.status_code) if well_formed else f"{response.status_code}_not_openai_error"


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """``latency_ms`` (p50/p95/p99/max) and ``mean_latency_ms`` of latencies in seconds."""
    return {"latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                           "p99": percentile(latencies, 99), "max": percentile(latencies, 100)},
            "mean_latency_ms": round(1000 * sum(latencies) / len(latencies), 1) if latencies else None}


def p99_halves(timeline: list[tuple[float, float, str]], started: float, elapsed: float) -> dict[str, float | None]:
    """p99 latency (ms) of the requests sent in the first and in the second half of the run."""
    middle = started + elapsed / 2
    first = [latency for sent, latency, _ in timeline if sent < middle]
    second = [latency for sent, latency, _ in timeline if sent >= middle]
    return {"first": percentile(first, 99), "second": percentile(second, 99)}


async def run_load(url: str, texts: list[str], dims: list[int], *, clients: int, max_requests: int | None,
                   seconds: float, max_texts: int, seed: int, timeline: list[tuple[float, float, str]] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """``clients`` concurrent clients post 1-``max_texts`` texts with a random dimension each, until ``max_requests``
    requests, ``seconds`` or ``should_stop()``. Every answer is appended to ``timeline`` (when given) as
    ``(time.perf_counter() when sent, latency s, answer key)``, so callers can see what failed when."""
    import httpx

    rng = random.Random(seed)
    timeline = [] if timeline is None else timeline
    statuses: dict[str, int] = {}
    error_samples: dict[str, str] = {}  # the first answer body (or exception) of each failing kind, to show what broke
    sent_texts = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    def more() -> bool:
        return (time.perf_counter() < deadline and (max_requests is None or issued < max_requests)
                and not (should_stop is not None and should_stop()))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent_texts, issued
        while more():
            issued += 1
            n = rng.randint(1, max_texts)
            start = rng.randrange(len(texts))
            body = {"input": (texts * 2)[start:start + n], "dimensions": rng.choice(dims), "encoding_format": "base64"}
            t0 = time.perf_counter()
            try:
                response = await http.post(url, json=body)
                key, detail = answer_key(response, n), response.text
            except httpx.HTTPError as exc:  # a connection error or a timeout: counted by its kind
                key, detail = type(exc).__name__, str(exc)
            if key != "200":
                error_samples.setdefault(key, detail[:300])
            timeline.append((t0, time.perf_counter() - t0, key))
            statuses[key] = statuses.get(key, 0) + 1
            if key == "200":
                sent_texts += n

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    first_entry = len(timeline)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies = [latency for _, latency, _ in timeline[first_entry:]]
    ok = statuses.get("200", 0)
    return {"clients": clients, "requests": sum(statuses.values()), "ok": ok,
            "errors": sum(statuses.values()) - ok, "statuses": statuses, "error_samples": error_samples,
            "seconds": round(elapsed, 2),
            "requests_per_s": round(ok / elapsed, 1), "texts_per_s": round(sent_texts / elapsed, 1),
            **latency_summary(latencies),
            "p99_halves_ms": p99_halves(timeline[first_entry:], started, elapsed)}


def merge_rounds(loads: list[dict[str, Any]], timeline: list[tuple[float, float, str]], clients: int) -> dict[str, Any]:
    """One :func:`run_load` result for several rounds of load: totals summed, latency over every request."""
    statuses: dict[str, int] = {}
    for load in loads:
        for key, n in load["statuses"].items():
            statuses[key] = statuses.get(key, 0) + n
    seconds = sum(load["seconds"] for load in loads)
    ok = statuses.get("200", 0)
    texts = sum(load["texts_per_s"] * load["seconds"] for load in loads)
    latencies = [latency for _, latency, _ in timeline]
    return {"clients": clients, "requests": sum(statuses.values()), "ok": ok, "errors": sum(statuses.values()) - ok,
            "statuses": statuses, "error_samples": {k: v for load in loads for k, v in load["error_samples"].items()},
            "seconds": round(seconds, 2), "requests_per_s": round(ok / seconds, 1),
            "texts_per_s": round(texts / seconds, 1),
            **latency_summary(latencies),
            "p99_by_round_ms": [load["latency_ms"]["p99"] for load in loads]}


def soak(url: str, handle: Any, texts: list[str], dims: list[int], *, clients: int, seconds: float, max_texts: int,
         seed: int = 2) -> dict[str, Any]:
    """Warm up, then load ``url`` for ``seconds`` (no request bound); the replica's RSS before and after.

    ``handle`` is the deployment's handle; its ``stats()`` gives the replica's pid and RSS, so the app should
    run one replica (with more, start and end may come from different replicas).
    """
    asyncio.run(run_load(url, texts, dims, clients=4, max_requests=40, seconds=30, max_texts=max_texts, seed=1))
    start_stats = handle.stats.remote().result()
    load = asyncio.run(run_load(url, texts, dims, clients=clients, max_requests=None, seconds=seconds,
                                max_texts=max_texts, seed=seed))
    end_stats = handle.stats.remote().result()
    return {"seconds": seconds, "load": load, "start_stats": start_stats, "end_stats": end_stats,
            "replica_pid_start": start_stats["pid"], "replica_pid": end_stats["pid"],
            "rss_start_mib": _mib(start_stats["rss_bytes"]), "rss_end_mib": _mib(end_stats["rss_bytes"]),
            "p99_first_half_ms": load["p99_halves_ms"]["first"], "p99_second_half_ms": load["p99_halves_ms"]["second"],
            "p99_second_over_first": _ratio(load["p99_halves_ms"]["second"], load["p99_halves_ms"]["first"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--dims", default="384,256,128,64,32", help="dimensions the clients ask for")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="stop after this many requests")
    parser.add_argument("--seconds", type=float, default=45.0, help="stop after this long (all rounds)")
    parser.add_argument("--max-texts", type=int, default=16)
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="raw encode window (each split, each round)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw / served rounds; --seconds and --requests are split between them")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--concurrent-batches", type=int, default=1, help="replica's max_concurrent_batches")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="replica's torch threads per forward pass (default: its CPUs / concurrent batches)")
    parser.add_argument("--replicas", type=int, default=os.cpu_count() or 1,
                        help="replicas (default: one per CPU, as serve.num_cpus: 1 gives)")
    parser.add_argument("--replica-cpus", type=float, default=None, help="default: the machine's CPUs / replicas")
    parser.add_argument("--soak-seconds", type=float, default=None, help="time-bounded soak; reports replica RSS")
    parser.add_argument("--data", type=Path, default=None,
                        help="the seed dataset's folder: send its questions and contexts (default: synthetic texts)")
    from encode_unpad import share

    parser.add_argument("--passage-share", type=share, default=0.25, help="with --data: the contexts' share of texts")
    parser.add_argument("--padded", action="store_true", help="compute on padding (serve.unpad: false)")
    parser.add_argument("--name", default="serve_load")
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dims = [int(d) for d in ns.dims.split(",")]
    texts = make_texts(2000) if ns.data is None else dataset_texts(ns.data, 2000, ns.passage_share)
    unpad = not ns.padded

    load_before = os.getloadavg()
    # The baseline is raw encode at its best split of this machine's cores: torch on every core, or several
    # encoders of fewer threads each (on a shared machine one pass on every core can be far slower, as its
    # threads wait for each other). The replica runs the split the command line gives it.
    cpus = os.cpu_count() or 1
    splits = sorted({(1, 1), (cpus, 1), (1, cpus)})
    raw_by_split = {f"{t}x{e}": raw_encode_throughput(ns.model, texts, ns.max_batch_size, ns.raw_seconds, t, e,
                                                      unpad)
                    for t, e in splits}
    best = max(raw_by_split, key=lambda k: raw_by_split[k]["texts_per_s"])
    raw_before = raw_by_split[best]
    print(f"raw encode (before): {raw_before['texts_per_s']} texts/s with {best} (torch threads x encoders); "
          f"all: { {k: r['texts_per_s'] for k, r in raw_by_split.items()} }", flush=True)

    import ray
    from ray import serve

    from mrlkit.serve.app import AppArgs, EmbeddingsDeployment
    from mrlkit.testing.http import wait_for_status

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(model=ns.model, model_name="bench", allow_any_dimension=True, max_batch_size=ns.max_batch_size,
                   batch_wait_timeout_s=ns.batch_wait_s, max_inputs_per_request=max(ns.max_texts, 16),
                   max_concurrent_batches=ns.concurrent_batches, torch_threads=ns.torch_threads, unpad=unpad)
    max_ongoing = max(ns.clients, ns.max_batch_size * ns.concurrent_batches)
    replica_cpus = ns.replica_cpus or float(os.cpu_count() or 1) / ns.replicas
    app = EmbeddingsDeployment.options(max_ongoing_requests=max_ongoing, num_replicas=ns.replicas,
                                       ray_actor_options={"num_cpus": replica_cpus}).bind(args)
    serve.run(app, name="bench", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    wait_for_status(f"{base}/health", timeout_s=300, interval_s=1.0)  # never measure an app that is not up
    handle = serve.get_deployment_handle("Embeddings", app_name="bench")
    url = f"{base}/v1/embeddings"
    soaked = None
    if ns.soak_seconds is not None:
        cpu_before = cpu_seconds_by_role()
        soaked = soak(url, handle, texts, dims, clients=ns.clients, seconds=ns.soak_seconds, max_texts=ns.max_texts)
        load, start_stats, end_stats = soaked["load"], soaked["start_stats"], soaked["end_stats"]
        cpu_share = cpu_share_by_role(cpu_before, cpu_seconds_by_role(), load["seconds"])
    else:
        asyncio.run(run_load(url, texts, dims, clients=4, max_requests=40, seconds=30, max_texts=ns.max_texts,
                             seed=1))
        start_stats = replica_stats(handle, ns.replicas)
        threads, encoders = raw_before["torch_threads"], raw_before["encoders"]
        timeline: list[tuple[float, float, str]] = []
        rounds: list[dict[str, Any]] = []
        for r in range(ns.rounds):
            raw_round = raw_encode_throughput(ns.model, texts, ns.max_batch_size, ns.raw_seconds, threads, encoders,
                                              unpad)
            cpu_before = cpu_seconds_by_role()
            served = asyncio.run(run_load(url, texts, dims, clients=ns.clients, max_requests=ns.requests // ns.rounds,
                                          seconds=ns.seconds / ns.rounds, max_texts=ns.max_texts, seed=2 + r,
                                          timeline=timeline))
            share = cpu_share_by_role(cpu_before, cpu_seconds_by_role(), served["seconds"])
            rounds.append({"raw_texts_per_s": raw_round["texts_per_s"], "served": served, "cores": share})
            print(f"round {r + 1}/{ns.rounds}: raw {raw_round['texts_per_s']} texts/s, served "
                  f"{served['texts_per_s']} texts/s ({_ratio(served['texts_per_s'], raw_round['texts_per_s'])}x), "
                  f"errors {served['errors']}", flush=True)
        end_stats = replica_stats(handle, ns.replicas)
        load = merge_rounds([r["served"] for r in rounds], timeline, ns.clients)
        cpu_share = {role: round(sum(r["cores"].get(role, 0.0) * r["served"]["seconds"] for r in rounds)
                                 / load["seconds"], 3) for role in rounds[-1]["cores"]}
    serve.shutdown()
    ray.shutdown()
    if soaked is not None:
        # No rounds in a soak: raw once more after it, so a change in the machine's speed shows.
        raw_after = raw_encode_throughput(ns.model, texts, ns.max_batch_size, ns.raw_seconds,
                                          raw_before["torch_threads"], raw_before["encoders"], unpad)
        rounds = [{"raw_texts_per_s": raw_after["texts_per_s"], "served": load}]
    raw_rounds = [r["raw_texts_per_s"] for r in rounds]
    raw = {**raw_before, "texts_per_s": round(sum(raw_rounds) / len(raw_rounds), 1),
           "texts_per_s_by_round": raw_rounds, "texts_per_s_split_search": raw_before["texts_per_s"],
           "texts_per_s_by_split_before": {k: r["texts_per_s"] for k, r in raw_by_split.items()},
           "split": "torch threads x concurrent encoders"}
    round_ratios = [_ratio(r["served"]["texts_per_s"], r["raw_texts_per_s"]) for r in rounds]

    batches = end_stats["batches"] - start_stats["batches"]
    texts_batched = end_stats["batched_texts"] - start_stats["batched_texts"]
    forward_s = end_stats["forward_seconds"] - start_stats["forward_seconds"]
    answered = sum(end_stats["counts"].get(k, 0) - start_stats["counts"].get(k, 0) for k in end_stats["counts"]
                   if k.startswith("requests."))
    in_replica_s = end_stats["request_seconds"] - start_stats["request_seconds"]
    ratio = round(load["texts_per_s"] / raw["texts_per_s"], 3) if raw["texts_per_s"] else None
    figures: dict[str, Any] = {
        "model": ns.model, "dims_requested": dims, "texts_per_request": f"1-{ns.max_texts}",
        "texts": ("short synthetic sentences (6-24 words)" if ns.data is None else
                  f"the seed dataset's, a context with probability {ns.passage_share}, else a question"),
        "unpad": unpad,
        "encoding_format": "base64",
        "server": {"max_batch_size": ns.max_batch_size, "batch_wait_timeout_s": ns.batch_wait_s,
                   "max_ongoing_requests": max_ongoing, "replicas": ns.replicas, "replica_num_cpus": replica_cpus,
                   "max_concurrent_batches": end_stats["max_concurrent_batches"],
                   "replica_torch_threads": end_stats["torch_threads"],
                   "batches_during_load": batches,
                   "mean_batch_size_during_load": round(texts_batched / batches, 2) if batches else None,
                   "forward_seconds_during_load": round(forward_s, 2),
                   "forward_ms_per_text_during_load": round(1000 * forward_s / texts_batched, 2)
                   if texts_batched else None,
                   # Mean time a request spent inside a replica (handler start to answer), against the mean the
                   # client saw: the difference waited in the proxy or the router.
                   "mean_ms_in_replica_during_load": round(1000 * in_replica_s / answered, 1) if answered else None,
                   "mean_ms_at_client_during_load": load.get("mean_latency_ms")},
        "raw_encode": raw, "serve": load,
        # Where the machine's cores went during the load (raw encode had them all to itself).
        "cores_used_during_load": cpu_share,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2),
                            "note": "other work on this shared machine; high values depress every figure"},
        "served_over_raw_texts_per_s": ratio,
        "served_over_raw_by_round": round_ratios,
        "rounds": {"count": len(rounds), "raw_seconds_each": ns.raw_seconds,
                   "served_seconds_each": [r["served"]["seconds"] for r in rounds],
                   "served_texts_per_s_by_round": [r["served"]["texts_per_s"] for r in rounds],
                   "note": "each round: raw encode with the app idle, then the served load"},
        "targets": {"served_over_raw_texts_per_s": ">= 0.8", "errors_at_64_clients": 0},
        "infinity_emb": ("skipped: infinity-emb 0.0.78 exists on PyPI but pins numpy<2, sentence-transformers<4 "
                         "and transformers<=5.0, which conflict with this project's environment (numpy 2, "
                         "sentence-transformers 6.2, transformers 5); a separate environment would need a second "
                         "torch install on this shared 2-core machine"),
    }
    if soaked is not None:
        figures["soak"] = {k: v for k, v in soaked.items() if k not in ("load", "start_stats", "end_stats")}
    print(f"serve: {load['texts_per_s']} texts/s, {load['requests_per_s']} req/s, errors {load['errors']}, "
          f"p50/p95/p99 {load['latency_ms']['p50']}/{load['latency_ms']['p95']}/{load['latency_ms']['p99']} ms; "
          f"served/raw = {ratio}", flush=True)
    write_result(ns.name, figures)
    return 0 if load["errors"] == 0 else 1


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


if __name__ == "__main__":
    raise SystemExit(main())
