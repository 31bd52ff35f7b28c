"""The embeddings endpoint on a real local Ray Serve, with a tiny real model (dims 32/16/8)."""

from __future__ import annotations

import asyncio
import base64
import shutil

import httpx
import numpy as np
import pytest

from mrlkit.testing.http import wait_for_status
from mrlkit.testing.s3_server import free_port

TRAINED_DIMS = [32, 16, 8]
MAX_INPUTS = 8
MAX_BYTES = 20_000


@pytest.fixture(scope="module")
def mrl_model(tiny_mrl_model) -> str:
    return tiny_mrl_model  # trained dims: TRAINED_DIMS


@pytest.fixture(scope="module")
def server(ray_local, mrl_model):
    """Serve on a free port: ``tiny`` at / (batch 8, 50 ms wait, 2 concurrent batches), ``strict`` at /strict
    (rejects over-long input, any dimension, batches of 3 texts, 1 at a time), ``broken`` at /broken (its
    model folder does not exist yet)."""
    from ray import serve

    from mrlkit.serve.app import AppArgs, EmbeddingsDeployment

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(model=mrl_model, model_name="tiny", max_batch_size=8, batch_wait_timeout_s=0.05,
                   max_inputs_per_request=MAX_INPUTS, max_request_bytes=MAX_BYTES, truncate_long_inputs=True,
                   max_concurrent_batches=2)
    small = {"ray_actor_options": {"num_cpus": 0.25}}
    strict = args.model_copy(update={"truncate_long_inputs": False, "allow_any_dimension": True,
                                     "max_concurrent_batches": 1, "max_batch_size": 3})
    broken = AppArgs(model=mrl_model + "-missing", model_retry_interval_s=1)
    # Deployed together so the three replicas start in parallel.
    serve.run_many([
        serve.RunTarget(EmbeddingsDeployment.options(**small).bind(args), name="tiny", route_prefix="/"),
        serve.RunTarget(EmbeddingsDeployment.options(name="Strict", **small).bind(strict), name="strict",
                        route_prefix="/strict"),
        serve.RunTarget(EmbeddingsDeployment.options(name="Broken", health_check_period_s=1, **small).bind(broken),
                        name="broken", route_prefix="/broken"),
    ])
    base = f"http://127.0.0.1:{port}"
    wait_for_status(f"{base}/health")
    wait_for_status(f"{base}/strict/health")
    yield base
    serve.shutdown()


def post(base: str, body: object, path: str = "/v1/embeddings") -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=60)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_response_matches_openai_schema(server):
    from mrlkit.serve.schemas import EmbeddingResponse

    response = post(server, {"input": ["hello world", "a second text"], "model": "tiny"})
    assert response.status_code == 200
    body = response.json()
    EmbeddingResponse.model_validate(body)  # exact OpenAI shape
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 32 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    single = post(server, {"input": "just one"}).json()
    assert len(single["data"]) == 1


def test_the_openai_python_client_works_unchanged(server):
    """The official client as users call it: its default ``encoding_format`` is base64 (decoded by the client),
    ``dimensions`` is passed through, and a refused request raises its typed error with our message."""
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    texts = ["what was the revenue?", "operating margin grew"]
    full = client.embeddings.create(model="tiny", input=texts)
    assert [d.index for d in full.data] == [0, 1] and full.model == "tiny" and full.usage.total_tokens > 4
    assert len(full.data[0].embedding) == 32
    np.testing.assert_allclose(np.array(full.data[0].embedding), vectors(post(server, {"input": texts}))[0],
                               atol=1e-6)  # the base64 the client decoded is the float answer
    small = client.embeddings.create(model="tiny", input=texts, dimensions=8, encoding_format="float")
    assert [len(d.embedding) for d in small.data] == [8, 8]
    with pytest.raises(openai.BadRequestError, match="use one of 32, 16, 8"):
        client.embeddings.create(model="tiny", input="x", dimensions=12)
    assert [m.id for m in client.models.list().data] == ["tiny"]


@pytest.mark.parametrize("dim", TRAINED_DIMS)
def test_every_trained_dim_has_its_length_and_unit_norm(server, dim):
    got = vectors(post(server, {"input": ["alpha", "beta gamma"], "dimensions": dim}))
    assert got.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_truncated_vector_is_the_renormalised_prefix_of_the_full_one(server):
    text = "the same text at every dimension"
    full = vectors(post(server, {"input": text}))[0]
    for dim in (16, 8):
        small = vectors(post(server, {"input": text, "dimensions": dim}))[0]
        expected = full[:dim] / np.linalg.norm(full[:dim])
        np.testing.assert_allclose(small, expected, atol=1e-5)


def test_base64_decodes_to_the_float_values(server):
    body = {"input": ["decode me", "and me"], "dimensions": 16}
    floats = vectors(post(server, body))
    encoded = post(server, {**body, "encoding_format": "base64"}).json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded])
    np.testing.assert_allclose(decoded, floats, atol=1e-6)


def test_quantization_extension(server):
    body = {"input": ["quantise me"], "dimensions": 16}
    int8 = post(server, {**body, "quantization": "int8"}).json()["data"][0]["embedding"]
    assert len(int8) == 16 and all(isinstance(v, int) and -128 <= v <= 127 for v in int8)
    binary = post(server, {**body, "quantization": "ubinary", "encoding_format": "base64"}).json()
    assert len(base64.b64decode(binary["data"][0]["embedding"])) == 2  # 16 bits packed


def test_models_and_health_routes(server):
    models = httpx.get(server + "/v1/models").json()
    card = models["data"][0]
    assert models["object"] == "list" and card["id"] == "tiny"
    assert card["dimensions"] == TRAINED_DIMS and card["full_dimension"] == 32
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": "tiny"}


def test_a_model_that_cannot_load_reports_not_ready_with_the_reason(server, mrl_model):
    response = wait_for_status(server + "/broken/health", status=503)
    assert response.json()["status"] == "not_ready"
    assert "tiny-mrl-missing" in response.json()["reason"] and "does not exist" in response.json()["reason"]
    refused = post(server, {"input": "x"}, path="/broken/v1/embeddings")
    assert refused.status_code == 503 and "does not exist" in refused.json()["error"]["message"]
    # The replica stayed up (no restart loop) and picks the model up once it appears.
    shutil.copytree(mrl_model, mrl_model + "-missing")
    assert wait_for_status(server + "/broken/health", status=200, timeout_s=60).json()["status"] == "ok"
    assert vectors(post(server, {"input": "x", "dimensions": 8}, path="/broken/v1/embeddings")).shape == (1, 8)


BAD_REQUESTS = [
    ({"input": ""}, 400, "input", "empty string"),
    ({"input": []}, 400, "input", "empty list"),
    ({"input": ["ok", "  "]}, 400, "input", "input[1]"),
    ({"input": 42}, 400, "input", "must be"),
    ({"input": [1, 2, 3]}, 400, "input", "token-id arrays"),
    ({"input": "x", "dimensions": "16"}, 400, "dimensions", "integer"),
    ({"input": "x", "dimensions": 12}, 400, "dimensions", "one of 32, 16, 8"),
    ({"input": "x", "model": "gpt-4"}, 400, "model", "available: 'tiny'"),
    ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format", "'float', 'base64'"),
    ({"input": "x", "quantization": "int4"}, 400, "quantization", "int8"),
    ({"input": "x", "colour": "blue"}, 400, "colour", "unknown field"),
    ({"input": ["t"] * (MAX_INPUTS + 1)}, 413, "input", f"limit is {MAX_INPUTS}"),
    ({"input": "y" * (MAX_BYTES + 10)}, 413, None, f"limit is {MAX_BYTES} bytes"),
]


@pytest.mark.parametrize(("body", "status", "param", "fragment"), BAD_REQUESTS)
def test_each_bad_input_gets_its_status_and_message(server, body, status, param, fragment):
    response = post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]


def test_not_json_and_not_an_object_are_400(server):
    response = httpx.post(server + "/v1/embeddings", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert post(server, ["a list"]).status_code == 400
    assert httpx.get(server + "/v1/nothing").json()["error"]["code"] == "http_error"


def test_over_long_input_is_truncated_by_default_and_rejected_when_configured(server):
    long_text = "word " * 400  # far beyond the tiny model's 128 tokens
    ok = post(server, {"input": long_text})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 128
    refused = post(server, {"input": ["short", long_text]}, path="/strict/v1/embeddings")
    assert refused.status_code == 400
    assert "'input[1]'" in refused.json()["error"]["message"] and "128 tokens" in refused.json()["error"]["message"]
    any_dim = post(server, {"input": "x", "dimensions": 5}, path="/strict/v1/embeddings")
    assert vectors(any_dim).shape == (1, 5)
    too_big = post(server, {"input": "x", "dimensions": 33}, path="/strict/v1/embeddings")
    assert too_big.status_code == 400 and "from 1 to 32" in too_big.json()["error"]["message"]


def test_mixed_good_and_bad_burst_loses_no_good_request(server):
    """Good requests of every dim interleaved with bad ones; all land in shared batches (batch 8, 50 ms wait)."""
    good = [{"input": [f"text {i} {j}" for j in range(1 + i % 3)], "dimensions": TRAINED_DIMS[i % 3]}
            for i in range(24)]
    bad = [body for body, *_ in BAD_REQUESTS] * 2
    burst = [(b, True) for b in good] + [(b, False) for b in bad]
    burst = [burst[i] for i in np.random.default_rng(0).permutation(len(burst))]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b, _ in burst))

    responses = asyncio.run(fire())
    for (body, is_good), response in zip(burst, responses, strict=True):
        if is_good:
            got = vectors(response)
            assert got.shape == (len(body["input"]), body["dimensions"])
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        else:
            assert response.status_code in (400, 413)
    # The batched results are the same as for the request alone: batching changes nothing.
    alone = vectors(post(server, good[5]))
    together = vectors(next(r for (b, _), r in zip(burst, responses, strict=True) if b is good[5]))
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert httpx.get(server + "/health").status_code == 200  # the replica is still serving


def test_batches_are_shared_and_metrics_counted(server):
    from ray import serve

    handle = serve.get_deployment_handle("Embeddings", app_name="tiny")
    before = handle.stats.remote().result()

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            bodies = [{"input": f"shared {i}" + " and longer" * i, "dimensions": TRAINED_DIMS[i % 3]} for i in range(8)]
            return await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies))

    assert all(r.status_code == 200 for r in asyncio.run(fire()))
    after = handle.stats.remote().result()
    assert after["counts"]["requests.200"] - before["counts"].get("requests.200", 0) == 8
    assert after["max_batch_size_seen"] > 1  # requests for different dims shared a forward pass
    assert after["counts"]["dimensions.8"] >= 2 and after["counts"]["tokens"] > before["counts"].get("tokens", 0)
    assert any(key.startswith("errors.400.") for key in after["counts"])
    # serve.unpad (the default): the shared batches, of texts of different lengths, ran on their real tokens only
    assert after["unpadded"]["packed_passes"] > before["unpadded"]["packed_passes"]
    assert after["unpadded"]["real_token_fraction"] < 1


@pytest.mark.parametrize(("app", "prefix", "concurrency"), [("tiny", "", 2), ("strict", "/strict", 1)])
def test_forward_passes_run_concurrently_up_to_the_configured_number(server, app, prefix, concurrency):
    from ray import serve

    deployment = "Embeddings" if app == "tiny" else "Strict"
    handle = serve.get_deployment_handle(deployment, app_name=app)
    # Texts at the model's length limit make each forward pass last long enough for the next batch to form.
    max_tokens = httpx.get(f"{server}{prefix}/v1/models").json()["data"][0]["max_input_tokens"]
    text = " ".join(["token"] * (max_tokens - 2))

    async def burst():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*(client.post(prefix + "/v1/embeddings", json={"input": [text] * 4})
                                          for _ in range(24)))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    stats = handle.stats.remote().result()
    assert stats["max_concurrent_batches"] == concurrency
    assert stats["torch_threads"] == 1  # 0.25 CPUs: one thread per pass
    assert stats["most_forward_passes_in_flight"] == concurrency


def test_a_request_larger_than_a_batch_is_split_and_keeps_its_order(server):
    texts = [f"text number {i} about revenue" for i in range(MAX_INPUTS)]  # 8 texts, batches of 3 at /strict
    together = vectors(post(server, {"input": texts, "dimensions": 20}, path="/strict/v1/embeddings"))
    alone = np.concatenate([vectors(post(server, {"input": t, "dimensions": 20}, path="/strict/v1/embeddings"))
                            for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
