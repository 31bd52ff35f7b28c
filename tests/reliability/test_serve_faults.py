"""Serve under faults and over time, on a real local Ray Serve with a tiny real model (dims 32/16/8).

* ``fault.serve_replica_killed_under_load``: two replicas under steady load, one replica's process killed
  (SIGKILL) mid-load. The endpoint keeps answering, Serve replaces the replica, the only failures are the
  requests that were on the killed replica (at most its ``max_ongoing_requests``), each failure is an
  OpenAI-style error body, a connection error or Ray's proxy's plain 500 (see ``RAY_PROXY_500``), and every
  request after recovery succeeds.
* ``load.serve_soak``: the load generator of ``benchmarks/serve_load.py`` for ``MRLKIT_SOAK_SECONDS``
  (30 here; the benchmark runs 600 with ``--soak-seconds 600``): no errors, a stable p99 and bounded RSS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from benchmark_modules import load_benchmark

from mrlkit.testing.http import wait_for_status
from mrlkit.testing.s3_server import free_port

DIMS = [32, 16, 8]

# The fault: 8 clients over 2 replicas of 4 concurrent requests each, so every slot is busy at the kill.
CLIENTS = 8
MAX_ONGOING = 4
KILL_AFTER_S = 5.0
LOAD_AFTER_RECOVERY_S = 5.0
RECOVERY_TIMEOUT_S = 60.0
LOAD_CAP_S = KILL_AFTER_S + RECOVERY_TIMEOUT_S + LOAD_AFTER_RECOVERY_S
# Connection-level failures (the proxy dropping a request) count like error bodies: the client sees the fault.
CONNECTION_ERRORS = {"ConnectError", "ReadError", "RemoteProtocolError", "WriteError", "ReadTimeout",
                     "ConnectTimeout", "PoolTimeout", "WriteTimeout"}
# Ray Serve's proxy answers a request whose replica died under it with uvicorn's plain-text 500 ("Internal Server
# Error"): the replica, where the OpenAI error bodies are made, is gone, and the proxy has no hook for the body.
# Counted (and bounded) as a fault error of its own kind; any other body that is not OpenAI-style is lost.
RAY_PROXY_500 = "500_not_openai_error"
RAY_PROXY_500_BODY = "Internal Server Error"

SOAK_SECONDS = float(os.environ.get("MRLKIT_SOAK_SECONDS", "30"))
SOAK_CLIENTS = 8
RSS_GROWTH_FACTOR, RSS_GROWTH_SLACK_MIB = 1.2, 50.0
# The second half's p99 may be at most twice the first's, plus a slack for other work on a shared machine: a
# 30 s run is short enough for one busy spell of a neighbour (load averages of 40 on 2 cores were seen while
# writing this test) to double a ~150 ms p99 on its own. The 600 s benchmark reports the plain ratio.
P99_GROWTH_FACTOR = 2.0
P99_SLACK_MS = float(os.environ.get("MRLKIT_SOAK_P99_SLACK_MS", "250"))


serve_load = load_benchmark("serve_load")


@pytest.fixture(scope="module")
def serve_base(ray_local, tiny_mrl_model):
    """Serve on a free 127.0.0.1 port; yields (base URL, model folder with DIMS). Apps are deployed by each test."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}", tiny_mrl_model
    serve.shutdown()


def deploy(name: str, model: str, base: str, **options: Any) -> str:
    """Deploy the embeddings app as ``name`` at ``/<name>``; wait until it answers; return its URL prefix."""
    from ray import serve

    from mrlkit.serve.app import AppArgs, EmbeddingsDeployment

    args = AppArgs(model=model, model_name="tiny", max_batch_size=8, batch_wait_timeout_s=0.01,
                   max_inputs_per_request=8)
    app = EmbeddingsDeployment.options(ray_actor_options={"num_cpus": 0.25}, **options).bind(args)
    serve.run(app, name=name, route_prefix=f"/{name}")
    url = f"{base}/{name}"
    wait_for_status(f"{url}/health", timeout_s=120.0)
    return url


# -- fault.serve_replica_killed_under_load ------------------------------------------------------------------------


def replica_names(app: str) -> set[str]:
    """The named actors of ``app``'s replicas (a replaced replica gets a new name)."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#")}


def replica_pids(handle: Any, want: int, timeout_s: float = 30.0) -> set[int]:
    """The pids of ``want`` replicas, from the replicas' own ``stats()`` replies (the router spreads the calls)."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < want and time.monotonic() < deadline:
        pids.add(handle.stats.remote().result(timeout_s=10)["pid"])
    assert len(pids) == want, f"saw replica pids {pids} in {timeout_s:.0f}s, wanted {want}"
    return pids


def healthy_with(app: str, deployment: str, replicas: int) -> bool:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == replicas


def wait_for_replacement(app: str, deployment: str, before: set[str], timeout_s: float) -> float:
    """Block until the deployment is HEALTHY with its replica count again and a new replica replaced a killed
    one; return when (``time.perf_counter()``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = replica_names(app)
        if len(names) == len(before) and names != before and healthy_with(app, deployment, len(before)):
            return time.perf_counter()
        time.sleep(0.25)
    from ray import serve

    raise AssertionError(f"{app}: killed replica not replaced in {timeout_s:.0f}s: replicas {replica_names(app)} "
                         f"(before {before}), status {serve.status().applications[app].deployments[deployment]}")


@pytest.mark.slow
def test_replica_killed_under_load_is_replaced_and_only_its_requests_fail(serve_base, figures):
    from ray import serve

    base, model = serve_base
    url = deploy("faults", model, base, num_replicas=2, max_ongoing_requests=MAX_ONGOING,
                 health_check_period_s=1)  # production uses 10 s; 1 s keeps the test's recovery bound short
    handle = serve.get_deployment_handle("Embeddings", app_name="faults")
    pids_before = replica_pids(handle, want=2)
    names_before = replica_names("faults")
    assert len(names_before) == 2, names_before

    timeline: list[tuple[float, float, str]] = []
    marks: dict[str, float] = {}
    fault_failures: list[BaseException] = []
    stop = threading.Event()

    def fault() -> None:
        """Kill one replica mid-load, wait for its replacement, keep the load going a while, then stop it."""
        try:
            time.sleep(KILL_AFTER_S)
            marks["victim"] = min(pids_before)
            marks["kill"] = time.perf_counter()
            os.kill(int(marks["victim"]), signal.SIGKILL)
            marks["recovered"] = wait_for_replacement("faults", "Embeddings", names_before, RECOVERY_TIMEOUT_S)
            time.sleep(LOAD_AFTER_RECOVERY_S)
        except BaseException as exc:  # re-raised in the test's thread below
            fault_failures.append(exc)
        finally:
            stop.set()

    killer = threading.Thread(target=fault, daemon=True)
    killer.start()
    load = asyncio.run(serve_load.run_load(f"{url}/v1/embeddings", serve_load.make_texts(500), DIMS, clients=CLIENTS,
                                           max_requests=None, seconds=LOAD_CAP_S, max_texts=4, seed=3,
                                           timeline=timeline, should_stop=stop.is_set))
    killer.join(timeout=RECOVERY_TIMEOUT_S + 30)
    if fault_failures:
        raise fault_failures[0]
    assert "recovered" in marks, f"the fault thread did not finish: {marks}"
    victim, kill, recovered = int(marks["victim"]), marks["kill"], marks["recovered"]
    phases = split_by_fault(timeline, kill, recovered)
    fault_errors = phases["fault_errors"]
    proxy_500 = [key for key in fault_errors if key == RAY_PROXY_500]
    assert not proxy_500 or load["error_samples"][RAY_PROXY_500] == RAY_PROXY_500_BODY, load["error_samples"]
    malformed = [key for key in fault_errors
                 if not key.isdigit() and key not in CONNECTION_ERRORS and key != RAY_PROXY_500]

    # The service is whole again: the victim is gone, two live replicas answer, good requests succeed.
    assert not process_alive(victim), "the killed replica's process is still alive"
    assert victim not in replica_pids(handle, want=2)
    good_after = [(dim, httpx.post(f"{url}/v1/embeddings", json={"input": [f"after {i}"], "dimensions": dim},
                                   timeout=60)) for i, dim in enumerate(DIMS * 2)]
    good_after_failed = [r.text[:200] for dim, r in good_after
                         if r.status_code != 200 or len(r.json()["data"][0]["embedding"]) != dim]
    lost = (max(0, len(fault_errors) - MAX_ONGOING) + len(phases["failed_before_kill"])
            + len(phases["failed_after_recovery"]) + len(malformed) + len(good_after_failed))
    figures("fault.serve_replica_killed_under_load",
            f"one of 2 replicas (max_ongoing_requests {MAX_ONGOING}) SIGKILLed {KILL_AFTER_S:.0f}s into "
            f"{CLIENTS}-client load on /v1/embeddings (mixed dimensions); replaced by Serve; load kept "
            f"{LOAD_AFTER_RECOVERY_S:.0f}s after recovery, then {len(good_after)} sequential good requests",
            1, lost, errors_seen=len(fault_errors), allowed_errors=MAX_ONGOING,
            openai_error_bodies=sum(1 for key in fault_errors if key.isdigit()),
            connection_errors=sum(1 for key in fault_errors if key in CONNECTION_ERRORS),
            ray_proxy_plain_500=len(proxy_500), malformed_errors=malformed,
            failed_before_kill=len(phases["failed_before_kill"]),
            failed_after_recovery=len(phases["failed_after_recovery"]),
            in_flight_at_kill_all_replicas=phases["in_flight_at_kill"], recovery_s=round(recovered - kill, 2),
            requests=len(timeline),
            requests_during_fault=phases["sent_during_fault"], requests_after_recovery=phases["sent_after_recovery"],
            good_after_failed=len(good_after_failed), statuses=load["statuses"], error_samples=load["error_samples"])
    serve.delete("faults")

    assert not malformed, f"failures without an OpenAI error body, a connection error or the proxy's 500: {malformed}"
    assert not phases["failed_before_kill"] and not phases["failed_after_recovery"], phases
    assert len(fault_errors) <= MAX_ONGOING, (f"{len(fault_errors)} requests failed; at most {MAX_ONGOING} were on "
                                              f"the killed replica: {fault_errors}")
    assert phases["ok_during_fault"] > 0, "the endpoint stopped answering while the replica was down"
    assert phases["sent_after_recovery"] > 0, "no load after recovery"
    assert not good_after_failed, good_after_failed
    assert lost == 0


def split_by_fault(timeline: list[tuple[float, float, str]], kill: float, recovered: float) -> dict[str, Any]:
    """Sort the load's answers by the fault: failures answered before the kill, failures of requests sent after
    recovery, and the rest (the fault's own errors, by answer key); plus how many requests were in flight at the
    kill and how many were sent and answered well in each phase."""
    failed = [(sent, sent + latency, key) for sent, latency, key in timeline if key != "200"]
    return {
        "failed_before_kill": [key for _, answered, key in failed if answered < kill],
        "failed_after_recovery": [key for sent, _, key in failed if sent >= recovered],
        "fault_errors": [key for sent, answered, key in failed if answered >= kill and sent < recovered],
        "in_flight_at_kill": sum(1 for sent, latency, _ in timeline if sent < kill <= sent + latency),
        "sent_during_fault": sum(1 for sent, _, _ in timeline if kill <= sent < recovered),
        "ok_during_fault": sum(1 for sent, latency, key in timeline
                               if key == "200" and kill <= sent + latency < recovered),
        "sent_after_recovery": sum(1 for sent, _, _ in timeline if sent >= recovered),
    }


def process_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the tokenizer race the fault test showed -------------------------------------------------------------------


def test_counting_tokens_while_a_batch_encodes_does_not_fail_the_batch(tiny_model):
    """A replica checks each new request's texts (token counts) on its event loop while a batch encodes in a worker
    thread. Both once used the same fast tokenizer, whose padding setting is shared state: the check switched
    padding off mid-batch, so about half the batches failed and fell back to encoding text by text."""
    from mrlkit.serve.embedder import Embedder

    emb = Embedder.load(tiny_model, allow_any_dimension=True)
    texts = serve_load.make_texts(64)  # 7 to 25 words each: a batch of them needs padding
    stop = time.monotonic() + 3.0
    checks = 0

    def count_tokens() -> None:
        nonlocal checks
        while time.monotonic() < stop:
            assert emb.check_texts(texts[checks % 60:checks % 60 + 3]).too_long == []
            checks += 1

    counter = threading.Thread(target=count_tokens)
    counter.start()
    batches, failed = 0, []
    while time.monotonic() < stop:
        try:
            assert emb.encode_full(texts[batches % 56:batches % 56 + 8]).shape == (8, emb.full_dim)
        except ValueError as exc:
            failed.append(str(exc)[:120])
        batches += 1
    counter.join()
    assert batches > 5 and checks > 5, (batches, checks)
    assert not failed, f"{len(failed)} of {batches} batches failed while tokens were counted: {failed[:3]}"


# -- load.serve_soak ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_has_no_errors_a_stable_p99_and_bounded_rss(serve_base, figures):
    from ray import serve

    base, model = serve_base
    url = deploy("soak", model, base, num_replicas=1)
    handle = serve.get_deployment_handle("Embeddings", app_name="soak")
    result = serve_load.soak(f"{url}/v1/embeddings", handle, serve_load.make_texts(500), DIMS,
                             clients=SOAK_CLIENTS, seconds=SOAK_SECONDS, max_texts=8)
    serve.delete("soak")
    load = result["load"]
    rss_start, rss_end = result["rss_start_mib"], result["rss_end_mib"]
    p99_first, p99_second = result["p99_first_half_ms"], result["p99_second_half_ms"]
    rss_bound = rss_start * RSS_GROWTH_FACTOR + RSS_GROWTH_SLACK_MIB
    p99_bound = P99_GROWTH_FACTOR * p99_first + P99_SLACK_MS
    figures("load.serve_soak", f"{SOAK_CLIENTS}-client load on one replica for {SOAK_SECONDS:.0f}s "
            "(MRLKIT_SOAK_SECONDS; benchmarks/serve_load.py --soak-seconds 600 runs 10 minutes)",
            load["requests"], load["errors"], seconds=SOAK_SECONDS, statuses=load["statuses"],
            rss_start_mb=rss_start, rss_end_mb=rss_end, rss_bound_mb=round(rss_bound, 1),
            p99_first_half_ms=p99_first, p99_second_half_ms=p99_second, p99_bound_ms=round(p99_bound, 1),
            requests_per_s=load["requests_per_s"], load_average_1m=round(os.getloadavg()[0], 2))

    assert load["requests"] > 0 and load["errors"] == 0, load["statuses"]
    assert result["replica_pid_start"] == result["replica_pid"], "the replica restarted during the soak"
    assert rss_start is not None and rss_end is not None, "the replica did not report its RSS (psutil missing?)"
    assert rss_end <= rss_bound, f"replica RSS grew from {rss_start} to {rss_end} MiB (bound {rss_bound:.0f})"
    assert p99_second <= p99_bound, f"p99 rose from {p99_first} to {p99_second} ms (bound {p99_bound:.0f})"
