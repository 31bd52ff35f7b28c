"""Questions written by an LLM behind any OpenAI-compatible chat endpoint (vLLM, a hosted API).

At most ``llm.concurrency`` requests are in flight; 429, 5xx, timeouts and dropped
connections are retried ``llm.max_retries`` times with jittered exponential backoff.
A chunk that still fails is reported (never silently dropped); an answer that says
the request itself is wrong (400/401/403/404) stops the run with a clear error.
The API key comes from the environment variable named by ``llm.api_key_env``.

Example::

    gen = LlmQuestions(LlmPairsConfig(endpoint="http://127.0.0.1:8000/v1", model="qwen"))
    gen.generate(["Ray Data streams blocks between operators ..."])  # [["What does Ray Data stream?"]]
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from typing import Any

from mrlkit.config_schema import LlmPairsConfig
from mrlkit.errors import MrlkitError

log = logging.getLogger(__name__)

PROMPT = ("You write search queries for a retrieval benchmark. Given a passage, write {n} distinct, "
          "self-contained question(s) that the passage answers. One question per line, no numbering, "
          "no other text.")
_NUMBERING = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|Q\d*[:.)])\s*")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LlmError(MrlkitError):
    """The endpoint refused the request itself (bad URL, model or key); retrying cannot help."""


def chat_url(endpoint: str) -> str:
    """``.../v1`` or a full ``.../chat/completions`` URL -> the chat completions URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else f"{endpoint}/chat/completions"


def parse_questions(content: str, limit: int) -> list[str]:
    """Question lines of a completion, numbering and bullets removed, at most ``limit``."""
    out = []
    for line in content.splitlines():
        text = " ".join(_NUMBERING.sub("", line).split())
        if len(text.split()) >= 3 and text not in out:
            out.append(text)
    return out[:limit]


class LlmQuestions:
    """Generate questions for passages, concurrently and with retries (one event loop per call)."""

    def __init__(self, cfg: LlmPairsConfig):
        if not cfg.endpoint or not cfg.model:
            raise MrlkitError("pairs.llm needs endpoint and model for source 'llm'")
        self.cfg = cfg
        self.url = chat_url(cfg.endpoint)
        key = os.environ.get(cfg.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.requests = 0
        self.retries = 0

    def generate(self, passages: list[str]) -> list[list[str] | None]:
        """For each passage, its questions, or None when the endpoint kept failing for it."""
        return asyncio.run(self._all(passages))

    async def _all(self, passages: list[str]) -> list[list[str] | None]:
        import httpx

        gate = asyncio.Semaphore(self.cfg.concurrency)
        limits = httpx.Limits(max_connections=self.cfg.concurrency)
        async with httpx.AsyncClient(timeout=self.cfg.timeout_s, limits=limits, headers=self.headers) as client:
            return list(await asyncio.gather(*(self._one(client, gate, p) for p in passages)))

    async def _one(self, client: Any, gate: asyncio.Semaphore, passage: str) -> list[str] | None:
        import httpx

        body = {"model": self.cfg.model, "temperature": self.cfg.temperature, "messages": [
            {"role": "system", "content": PROMPT.format(n=self.cfg.questions_per_chunk)},
            {"role": "user", "content": passage}]}
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(min(8.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            async with gate:
                self.requests += 1
                try:
                    response = await client.post(self.url, json=body)
                except httpx.TransportError as exc:  # timeouts, refused and dropped connections
                    last = type(exc).__name__
                    continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise LlmError(f"LLM endpoint {self.url} answered HTTP {response.status_code}: "
                               f"{response.text[:200]!r}; check pairs.llm.endpoint, model and ${self.cfg.api_key_env}")
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a response that is not a chat completion"
                continue
            return parse_questions(content or "", self.cfg.questions_per_chunk)
        log.warning("llm: giving up on a passage after %d attempts (%s)", self.cfg.max_retries + 1, last)
        return None
