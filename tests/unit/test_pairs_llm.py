"""LLM questions against a real local OpenAI-compatible HTTP server (stdlib http.server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mrlkit.config_schema import LlmPairsConfig
from mrlkit.pairs.llm import LlmError, LlmQuestions, chat_url, parse_questions


class ChatServer:
    """Answers /v1/chat/completions; ``plan`` lists status codes to return first (then 200s)."""

    def __init__(self, plan: list[int] | None = None, delay: float = 0.0):
        self.plan = list(plan or [])
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    status = server.plan.pop(0) if server.plan else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                passage = body["messages"][-1]["content"]
                payload = {"error": "boom"} if status != 200 else {"choices": [{"message": {
                    "role": "assistant", "content": f"1. What is said about {passage}?\n2. Why {passage}?"}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _cfg(endpoint: str, **kw) -> LlmPairsConfig:
    return LlmPairsConfig(endpoint=endpoint, model="tiny-llm", **kw)


def test_questions_for_each_passage_with_key_from_env(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sekret")
    with ChatServer() as server:
        gen = LlmQuestions(_cfg(server.endpoint, questions_per_chunk=2, api_key_env="MY_LLM_KEY"))
        out = gen.generate(["ray data", "mrl dims"])
    assert out == [["What is said about ray data?", "Why ray data?"], ["What is said about mrl dims?", "Why mrl dims?"]]
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["model"] for r in server.requests} == {"tiny-llm"}
    assert {r["auth"] for r in server.requests} == {"Bearer sekret"}


def test_500_then_success_is_retried():
    with ChatServer(plan=[500, 503]) as server:
        gen = LlmQuestions(_cfg(server.endpoint, max_retries=3))
        out = gen.generate(["passage one"])
    assert out == [["What is said about passage one?"]]
    assert len(server.requests) == 3 and gen.retries == 2


def test_gives_up_after_max_retries_and_reports_none():
    with ChatServer(plan=[500] * 10) as server:
        out = LlmQuestions(_cfg(server.endpoint, max_retries=1)).generate(["p"])
    assert out == [None] and len(server.requests) == 2


def test_concurrency_limit_is_respected():
    with ChatServer(delay=0.1) as server:
        LlmQuestions(_cfg(server.endpoint, concurrency=2)).generate([f"p{i}" for i in range(8)])
    assert server.max_in_flight == 2 and len(server.requests) == 8


def test_request_errors_stop_with_a_clear_message():
    with ChatServer(plan=[401]) as server, pytest.raises(LlmError, match="HTTP 401"):
        LlmQuestions(_cfg(server.endpoint)).generate(["p"])


def test_unreachable_endpoint_is_retried_then_none():
    out = LlmQuestions(_cfg("http://127.0.0.1:9/v1", max_retries=1, timeout_s=1.0)).generate(["p"])
    assert out == [None]


def test_helpers():
    assert chat_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert parse_questions("1) What is X?\n- What is Y here?\n\nok\nWhat is X?", 5) == ["What is X?", "What is Y here?"]
