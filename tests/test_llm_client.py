"""ChatClient against a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from datagen.core.cache import RequestCache, merge
from datagen.llm.client import ChatClient, ChatResult, LLMRequestError, retry_after_seconds
from servers import LocalServer, Reply

SECRET = "sk-test-SECRET-do-not-leak-123456"


def chat_server() -> LocalServer:
    return LocalServer()


def chat_completion(text: str, prompt_tokens: int = 11, completion_tokens: int = 7, model: str = "m") -> dict:
    """A proper chat.completion body, as OpenAI and vLLM send it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def last_user(req) -> str:
    return req.json()["messages"][-1]["content"]


def echo_handler(delay_s: float = 0.0):
    """Answers every request with 'echo: <last user message>'."""
    return lambda req: Reply(200, chat_completion("echo: " + last_user(req)), delay_s=delay_s)


def make_client(srv: LocalServer, **kw) -> ChatClient:
    kw.setdefault("backoff_base_s", 0.01)
    return ChatClient(srv.url("/v1"), "m", **kw)


def msgs(i) -> list[dict]:
    return [{"role": "user", "content": f"q{i}"}]


def test_results_in_order_and_tokens_counted():
    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler())
        client = make_client(srv, price_per_1k_input=1.0, price_per_1k_output=2.0)
        out = client.complete_many([msgs(i) for i in range(5)])
    assert [r.text for r in out] == [f"echo: q{i}" for i in range(5)]
    assert all(isinstance(r, ChatResult) and not r.cached for r in out)
    s = client.stats
    assert s["requests"] == 5 and s["prompt_tokens"] == 55 and s["completion_tokens"] == 35
    assert s["estimated_cost"] == pytest.approx(55 / 1000 * 1.0 + 35 / 1000 * 2.0)
    body = srv.requests[0].json()
    assert body["model"] == "m" and body["temperature"] == 0.2 and body["max_tokens"] == 1024


def test_concurrency_limit_holds():
    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler(delay_s=0.05))
        client = make_client(srv, concurrency=3)
        out = client.complete_many([msgs(i) for i in range(12)])
    assert all(isinstance(r, ChatResult) for r in out)
    assert srv.max_in_flight <= 3
    assert srv.max_in_flight >= 2  # it did run concurrently


def test_429_with_retry_after_and_500_are_retried():
    calls = itertools.count()
    seen_at: list[float] = []

    def flaky(req):
        n = next(calls)
        seen_at.append(time.monotonic())
        if n == 0:
            return Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"})
        if n == 1:
            return Reply(500, {"error": {"message": "boom"}})
        return Reply(200, chat_completion("fine"))

    with chat_server() as srv:
        srv.route("/v1/chat/completions", flaky)
        client = make_client(srv, max_retries=4)
        out = client.complete_many([msgs(0)])
    assert out[0].text == "fine"
    assert srv.count("/v1/chat/completions") == 3
    assert seen_at[1] - seen_at[0] >= 0.29  # Retry-After honoured
    s = client.stats
    assert (s["retries"], s["http_429"], s["http_5xx"], s["requests"]) == (2, 1, 1, 3)


def test_retry_after_ms_header_preferred():
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None


def test_gives_up_after_max_retries_and_returns_exception():
    with chat_server() as srv:
        srv.route("/v1/chat/completions", lambda req: Reply(503, {"error": {"message": "down"}}))
        client = make_client(srv, max_retries=2)
        out = client.complete_many([msgs(0)])
    assert isinstance(out[0], LLMRequestError)
    assert out[0].reason == "llm_http_503" and out[0].attempts == 3
    assert srv.count() == 3
    assert client.stats["failures"] == 1


def test_client_error_is_not_retried():
    with chat_server() as srv:
        srv.route("/v1/chat/completions", lambda req: Reply(400, {"error": {"message": "bad model"}}))
        client = make_client(srv, max_retries=3)
        out = client.complete_many([msgs(0), msgs(1)])
    assert all(isinstance(r, LLMRequestError) and r.reason == "llm_http_400" for r in out)
    assert srv.count() == 2


def test_timeout_is_retried():
    calls = itertools.count()

    def slow_first(req):
        return Reply(200, chat_completion("late"), delay_s=1.0 if next(calls) == 0 else 0)

    with chat_server() as srv:
        srv.route("/v1/chat/completions", slow_first)
        client = make_client(srv, timeout_s=0.3, max_retries=2)
        out = client.complete_many([msgs(0)])
    assert out[0].text == "late"
    assert client.stats["timeouts"] == 1 and client.stats["retries"] == 1


def test_cache_second_run_sends_nothing_and_key_is_kept_out(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "llm.sqlite"
    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler())
        first = make_client(srv, api_key_env="MY_LLM_KEY", cache=RequestCache(path))
        out1 = first.complete_many([msgs(i) for i in range(4)])
        assert srv.count() == 4
        assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # the key did reach the server
        second = make_client(srv, api_key_env="MY_LLM_KEY", cache=RequestCache(path))
        out2 = second.complete_many([msgs(i) for i in range(4)])
        assert srv.count() == 4  # zero new requests
        # another temperature is another request
        second.complete_many([msgs(0)], temperature=0.9)
        assert srv.count() == 5
    assert [r.text for r in out2] == [r.text for r in out1] and all(r.cached for r in out2)
    assert second.stats["cache_hits"] == 4 and second.stats["prompt_tokens"] == 11
    second.cache.close()  # written to a part file, then merged into the snapshot: neither holds the key
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    merge(path)
    raw += b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in raw
    assert SECRET not in caplog.text and SECRET not in repr(first)


def test_complete_usable_from_callers_loop():
    async def main(client):
        r = await client.complete(msgs("a"))
        await client.aclose()
        return r

    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler())
        client = make_client(srv)
        assert asyncio.run(main(client)).text == "echo: qa"
        # complete_many again on a fresh loop after the first one closed
        assert client.complete_many([msgs("b")])[0].text == "echo: qb"


def test_complete_many_inside_running_loop():
    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler())
        client = make_client(srv)

        async def main():
            return client.complete_many([msgs(1)])

        assert asyncio.run(main())[0].text == "echo: q1"


def test_key_echoed_by_server_is_redacted_from_errors(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    with chat_server() as srv:
        srv.route("/v1/chat/completions",
                  lambda req: Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
        out = make_client(srv, api_key_env="MY_LLM_KEY").complete_many([msgs(0)])
    err = out[0]
    assert isinstance(err, LLMRequestError) and err.reason == "llm_http_401"
    assert "Incorrect API key" in err.detail and SECRET not in err.detail and SECRET not in str(err)


def test_complete_many_from_several_threads():
    """Executors may call one client from worker threads: each gets its own loop and HTTP client."""
    from concurrent.futures import ThreadPoolExecutor

    with chat_server() as srv:
        srv.route("/v1/chat/completions", echo_handler(delay_s=0.02))
        client = make_client(srv, concurrency=2)
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda k: client.complete_many([msgs(f"{k}-{i}") for i in range(4)]), range(3)))
    assert [[r.text for r in out] for out in outs] == [[f"echo: q{k}-{i}" for i in range(4)] for k in range(3)]
    assert srv.max_in_flight <= 6 and client.stats["requests"] == 12


@pytest.mark.parametrize("bad", [
    Reply(200, b"{not json", headers={"Content-Type": "application/json"}),
    Reply(200, chat_completion("x"), truncate_to=20),  # connection drops mid-body
    Reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}),
], ids=["broken-json", "truncated", "no-choices"])
def test_broken_200_replies_are_retried(bad):
    calls = itertools.count()
    with chat_server() as srv:
        srv.route("/v1/chat/completions", lambda req: bad if next(calls) == 0 else Reply(200, chat_completion("ok")))
        client = make_client(srv, max_retries=2)
        out = client.complete_many([msgs(0)])
        assert srv.count() == 2
    assert out[0].text == "ok" and client.stats["retries"] == 1
