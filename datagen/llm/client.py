"""The one way this project talks to an OpenAI-compatible chat server.

OpenAI, vLLM, SGLang, llama.cpp and friends all speak ``POST /v1/chat/completions``;
the official ``openai`` package talks to any of them through ``base_url``. This
module adds what a data pipeline needs on top of it and nothing else:

- a concurrency limit (an ``asyncio.Semaphore``), because a self-hosted server
  falls over, and a hosted one rate-limits, long before Python runs out of tasks;
- our own retry loop (the openai client runs with ``max_retries=0``) so every
  retry, 429 and 5xx is counted in :attr:`ChatClient.stats` and lands in the
  manifest: exponential backoff with jitter, honouring ``Retry-After`` and
  ``retry-after-ms``;
- the persistent request cache (:class:`datagen.core.cache.RequestCache`) keyed by
  namespace + model + messages + sampling options, so a rerun of a recipe sends
  zero requests and pays nothing twice;
- token and cost accounting.

The API key is read from an environment variable and handed to the openai
client only: it is never part of a cache key or value, a log line, a repr or
an exception message produced here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import random
import threading
from dataclasses import dataclass
from typing import Any

from datagen.core.cache import RequestCache

log = logging.getLogger("datagen.llm")

# Local servers (vLLM, llama.cpp) ignore the key, but the openai client insists on one.
PLACEHOLDER_KEY = "sk-no-key-needed"
# Sampling options that change the answer and so belong in the cache key.
_ANSWER_OPTIONS = ("temperature", "max_tokens", "top_p", "seed", "stop", "response_format", "frequency_penalty",
                   "presence_penalty", "n")
MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    finish_reason: str | None = None


class LLMRequestError(RuntimeError):
    """A request that failed for good (after retries, or on a non-retryable status).

    ``reason`` is a short stable code for reject tables: ``llm_http_<status>``,
    ``llm_timeout``, ``llm_connection_error`` or ``llm_bad_response``."""

    def __init__(self, reason: str, detail: str, status: int | None = None, attempts: int = 1):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.attempts = attempts


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms`` first, then ``Retry-After``.

    HTTP-date values of Retry-After are rare on LLM servers; they fall back to our
    own backoff (None)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(delay) and delay >= 0:
            return delay
    return None


class ChatClient:
    """Concurrent, cached, retrying chat completions against one model on one server."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 60,
        cache: RequestCache | None = None,
        temperature: float = 0.2,
        max_tokens: int = 1024,
        price_per_1k_input: float = 0.0,
        price_per_1k_output: float = 0.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.cache = cache
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.price_per_1k_input = price_per_1k_input
        self.price_per_1k_output = price_per_1k_output
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._counts = {
            "requests": 0,  # HTTP attempts actually sent, retries included
            "cache_hits": 0,
            "retries": 0,
            "http_429": 0,
            "http_5xx": 0,
            "timeouts": 0,
            "connection_errors": 0,
            "failures": 0,  # calls that gave up
            "prompt_tokens": 0,  # paid tokens (cache hits excluded)
            "completion_tokens": 0,
            "cached_prompt_tokens": 0,  # tokens a cache hit saved
            "cached_completion_tokens": 0,
        }
        # The openai AsyncClient and the semaphore belong to one event loop; complete_many
        # runs a fresh loop per call (and maybe per thread), so both are built per loop and
        # kept per thread. The concurrency limit therefore holds per running loop.
        self._per_thread = threading.local()

    def __repr__(self) -> str:  # no key in here, ever
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ accounting

    @property
    def stats(self) -> dict:
        with self._lock:
            s = dict(self._counts)
        s["estimated_cost"] = round(
            s["prompt_tokens"] / 1000 * self.price_per_1k_input
            + s["completion_tokens"] / 1000 * self.price_per_1k_output,
            6,
        )
        return s

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._counts[k] += v

    # ------------------------------------------------------------------ plumbing

    def _bind_loop(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        import openai  # lazy: the [llm] extra

        loop = asyncio.get_running_loop()
        t = self._per_thread
        if getattr(t, "loop", None) is not loop:
            key = os.environ.get(self.api_key_env) or PLACEHOLDER_KEY
            t.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout_s)
            t.sem = asyncio.Semaphore(self.concurrency)
            t.loop = loop
        return t.client, t.sem

    async def aclose(self) -> None:
        """Close the HTTP client of the current loop (complete_many does this for you)."""
        t = self._per_thread
        if getattr(t, "loop", None) is asyncio.get_running_loop():
            await t.client.close()
        t.client = t.sem = t.loop = None

    def request_options(self, messages: list[dict], overrides: dict) -> dict:
        """Everything sent besides the key: also exactly what the cache is keyed by."""
        opts = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        opts.update(overrides)
        return opts

    def _redact(self, text: str) -> str:
        """Servers may echo the key back in an error body ("Incorrect API key: sk-..."): cut it out."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _backoff(self, attempt: int, headers: Any) -> float:
        server = retry_after_seconds(headers)
        if server is not None:
            return min(server, MAX_RETRY_AFTER_S)
        # "Full jitter" between half and all of the exponential step: spreads a burst of
        # clients that all got a 429 at the same moment.
        step = min(self.backoff_base_s * 2**attempt, self.backoff_max_s)
        return step * random.uniform(0.5, 1.0)

    # ------------------------------------------------------------------ API

    async def complete(self, messages: list[dict], *, namespace: str = "chat", use_cache: bool = True,
                       **overrides: Any) -> ChatResult:
        """One chat completion; raises :class:`LLMRequestError` when it fails for good.

        ``overrides`` (temperature, max_tokens, response_format, seed ...) go to the
        server and into the cache key. ``use_cache=False`` skips the lookup (the answer
        is still stored)."""
        import openai  # lazy: the [llm] extra

        opts = self.request_options(messages, overrides)
        if self.cache is not None and use_cache:
            hit = self.cache.get(namespace, opts)
            if hit is not None:
                self._count(cache_hits=1, cached_prompt_tokens=hit["prompt_tokens"],
                            cached_completion_tokens=hit["completion_tokens"])
                return ChatResult(hit["text"], hit["prompt_tokens"], hit["completion_tokens"], True,
                                  hit.get("finish_reason"))
        client, sem = self._bind_loop()
        attempt = 0
        while True:
            headers = None
            async with sem:
                self._count(requests=1)
                try:
                    resp = await client.chat.completions.create(**opts)
                    error = None
                except openai.APIStatusError as e:
                    error, headers = e, e.response.headers
                    status = e.status_code
                    if status == 429:
                        self._count(http_429=1)
                        reason = "llm_http_429"
                    elif status >= 500:
                        self._count(http_5xx=1)
                        reason = f"llm_http_{status}"
                    elif status in (408, 409):
                        reason = f"llm_http_{status}"
                    else:  # 400, 401, 404 ...: retrying will not help
                        self._count(failures=1)
                        raise LLMRequestError(f"llm_http_{status}", self._redact(_short(e)), status,
                                              attempt + 1) from None
                except openai.APITimeoutError as e:
                    error, reason, status = e, "llm_timeout", None
                    self._count(timeouts=1)
                except openai.APIConnectionError as e:
                    error, reason, status = e, "llm_connection_error", None
                    self._count(connection_errors=1)
                # ValueError: a 200 whose JSON body is broken
                except (openai.APIResponseValidationError, ValueError) as e:
                    error, reason, status = e, "llm_bad_response", None
            if error is None:
                result = _to_result(resp)
                if result is not None:
                    break
                error, reason, status = None, "llm_bad_response", None
            if attempt >= self.max_retries:
                self._count(failures=1)
                detail = self._redact(_short(error)) if error else "no choices in response"
                raise LLMRequestError(reason, detail, status, attempt + 1) from None
            delay = self._backoff(attempt, headers)
            log.debug("llm %s: %s, retry %d/%d in %.2fs", namespace, reason, attempt + 1, self.max_retries, delay)
            self._count(retries=1)
            attempt += 1
            await asyncio.sleep(delay)
        self._count(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        if self.cache is not None:
            self.cache.put(namespace, opts, {"text": result.text, "prompt_tokens": result.prompt_tokens,
                                             "completion_tokens": result.completion_tokens,
                                             "finish_reason": result.finish_reason})
        return result

    async def complete_all(self, requests: list[list[dict]], **kw: Any) -> list[ChatResult | BaseException]:
        """All requests concurrently (bounded by ``concurrency``), in order, errors as values."""
        return await asyncio.gather(*(self.complete(m, **kw) for m in requests), return_exceptions=True)

    def complete_many(self, requests: list[list[dict]], **kw: Any) -> list[ChatResult | Exception]:
        """Synchronous wrapper for pipeline steps: order preserved, failures returned, not raised."""

        async def run() -> list:
            try:
                return await self.complete_all(requests, **kw)
            finally:
                await self.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        # Called from inside a running loop (a notebook): run ours on a private thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()


def _to_result(resp: Any) -> ChatResult | None:
    choices = getattr(resp, "choices", None)
    if not choices:
        return None
    choice = choices[0]
    text = getattr(choice.message, "content", None) or ""
    usage = getattr(resp, "usage", None)
    return ChatResult(
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached=False,
        finish_reason=getattr(choice, "finish_reason", None),
    )


def _short(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
