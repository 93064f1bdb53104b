"""Downloads users can trust (issue 18), against loopback servers that misbehave on purpose:
batches that always end, a DNS cache, refusing hosts left alone, failure-rate warnings, the error
breakdown, opt-outs read before the body."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

from datagen.fetch import FetchStep
from datagen.fetch.errors import reason_matches
from datagen.fetch.guard import DnsCache
from datagen.fetch.health import FailureMonitor, breakdown, summary_lines
from datagen.core.records import pairs_table
from servers import LocalServer, Reply
from test_fetch import cfg, ctx_for, jpeg, reasons, row, run_step


@pytest.fixture
def hanging_server():
    """/ok/ answers at once; /hang/ never answers until the test ends."""
    release = threading.Event()
    with LocalServer() as srv:
        body = jpeg()
        srv.route("/ok/", lambda req: Reply(200, body=body, headers={"Content-Type": "image/jpeg"}))
        srv.route("/hang/", lambda req: (release.wait(30), Reply(200, body=body))[1])
        yield srv
        release.set()


# ----------------------------------------------------------------------------- nothing hangs

def test_straggler_cutoff_rejects_the_rows_that_never_answer_and_the_batch_ends(tmp_path, hanging_server):
    srv = hanging_server
    rows = [row(f"k{i}", srv.url(f"/ok/{i}.jpg")) for i in range(18)]
    rows += [row("slow1", srv.url("/hang/1.jpg")), row("slow2", srv.url("/hang/2.jpg"))]
    config = cfg(timeout_s=30, total_timeout_s=60, concurrency=20, per_host_concurrency=20,
                 straggler_cutoff={"done_fraction": 0.9, "wait_s": 0.3})
    out, ctx = run_step(tmp_path, rows, config)
    assert reasons(out) == {"slow1": "straggler_timeout", "slow2": "straggler_timeout"}
    assert out.kept.num_rows == 18
    detail = out.rejects.column("detail")[0].as_py()
    assert "18 of 20 rows" in detail and "straggler_cutoff" in detail
    assert ctx.stats["fetch"]["rejects"] == {"straggler_timeout": 2}


def test_shard_deadline_ends_a_batch_and_rejects_later_batches_without_a_request(tmp_path, hanging_server):
    srv = hanging_server
    step = FetchStep(cfg(timeout_s=30, total_timeout_s=60, shard_timeout_s=0.5), ctx_for(tmp_path))
    step.begin_task()
    first = step.process(pairs_table([row("a", srv.url("/ok/a.jpg")), row("b", srv.url("/hang/b.jpg"))]))
    assert reasons(first) == {"b": "straggler_timeout"}
    assert "shard_timeout_s" in first.rejects.column("detail")[0].as_py()
    before = srv.count()
    second = step.process(pairs_table([row("c", srv.url("/ok/c.jpg"))]))
    assert reasons(second) == {"c": "straggler_timeout"} and srv.count() == before
    step.begin_task()  # the next shard has its own deadline
    third = step.process(pairs_table([row("d", srv.url("/ok/d.jpg"))]))
    assert third.kept.column("key").to_pylist() == ["d"]


def test_progress_names_the_hosts_with_requests_in_flight_when_a_batch_stalls(tmp_path, hanging_server, caplog):
    srv = hanging_server
    config = cfg(timeout_s=30, total_timeout_s=60, progress_interval_s=0.1,
                 straggler_cutoff={"done_fraction": 0.5, "wait_s": 0.5})
    with caplog.at_level(logging.INFO, logger="datagen"):
        out, _ = run_step(tmp_path, [row("a", srv.url("/ok/a.jpg")), row("b", srv.url("/hang/b.jpg"))], config)
    assert reasons(out) == {"b": "straggler_timeout"}
    stalls = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "in flight" in r.getMessage()]
    assert stalls, caplog.text
    assert "1/2 rows" in stalls[-1] and "1 in flight: 127.0.0.1 1 (oldest" in stalls[-1]


# ----------------------------------------------------------------------------- DNS

def test_a_name_that_does_not_resolve_is_looked_up_once_and_rows_are_dns_error(tmp_path, fake_dns):
    step = FetchStep(cfg(retries=2), ctx_for(tmp_path))
    bad = [row(f"k{i}", f"http://nonexistent.invalid/{i}.jpg") for i in range(4)]
    first = step.process(pairs_table(bad[:2]))
    second = step.process(pairs_table(bad[2:]))  # another batch, its own event loop and clients
    assert reasons(first) == {"k0": "dns_error", "k1": "dns_error"}
    assert reasons(second) == {"k2": "dns_error", "k3": "dns_error"}
    assert fake_dns.calls == ["nonexistent.invalid"]  # one lookup: the negative answer is cached
    st = step.ctx.stats["fetch"]
    assert st["dns_lookups"] == 1 and st["dns_cache_hits"] == 3
    assert st["errors_by_host"] == {"nonexistent.invalid": {"dns_error": 4}}


def test_resolved_names_are_cached_across_batches_and_pre_resolved(tmp_path, fake_dns):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        fake_dns["a.test"] = ["127.0.0.1"]
        fake_dns["b.test"] = ["127.0.0.1"]
        step = FetchStep(cfg(pre_resolve=True), ctx_for(tmp_path))
        rows = [row(f"k{i}", f"http://{'ab'[i % 2]}.test:{srv.port}/{i}.jpg") for i in range(6)]
        rows.append(row("gone", f"http://gone.test:{srv.port}/x.jpg"))
        out = step.process(pairs_table(rows))
        again = step.process(pairs_table([row("k9", f"http://a.test:{srv.port}/9.jpg")]))
    assert out.kept.num_rows == 6 and reasons(out) == {"gone": "dns_error"}
    assert again.kept.num_rows == 1
    assert fake_dns.calls == ["a.test", "b.test", "gone.test"]  # pre-resolved in order, once each


def test_dns_cache_ttls_shared_lookups_and_temporary_failures():
    calls = []

    async def resolver(host, port):
        calls.append(host)
        await asyncio.sleep(0.01)
        if host == "flaky.test":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "nonexistent.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["127.0.0.1"]

    cache = DnsCache(ttl_s=0.2, negative_ttl_s=0.2, resolver=resolver)

    async def main():
        answers = await asyncio.gather(*(cache.resolve("a.test", 80) for _ in range(5)))
        assert answers == [["127.0.0.1"]] * 5 and calls == ["a.test"]  # five callers, one query
        for _ in range(2):
            with pytest.raises(socket.gaierror) as e:
                await cache.resolve("nonexistent.invalid", 80)
            assert e.value.errno == socket.EAI_NONAME
            with pytest.raises(socket.gaierror):
                await cache.resolve("flaky.test", 80)
        assert calls.count("nonexistent.invalid") == 1  # negative answer kept
        assert calls.count("flaky.test") == 2  # "try again" is not an answer: never kept
        await asyncio.sleep(0.25)
        await cache.resolve("a.test", 80)
        assert calls.count("a.test") == 2  # expired

    asyncio.run(main())
    assert cache.counters() == (5, 5, 3)  # (lookups, hits, failed lookups)


# ----------------------------------------------------------------------------- refusing hosts, opt-outs

def test_a_host_that_refuses_k_times_in_a_row_is_left_alone_for_the_rest_of_the_shard(tmp_path):
    with LocalServer() as srv, LocalServer("127.0.0.2") as fine:
        srv.route("/", lambda req: Reply(403))
        fine.route("/", lambda req: Reply(200, body=jpeg()))
        rows = [row(f"k{i}", srv.url(f"/{i}.jpg")) for i in range(8)] + [row("ok", fine.url("/x.jpg"))]
        out, ctx = run_step(tmp_path, rows, cfg(host_backoff_after=3, concurrency=1, per_host_concurrency=1))
        assert srv.count() == 3
    got = reasons(out)
    assert sorted(got.values()) == ["host_backoff"] * 5 + ["http_403"] * 3
    assert out.kept.column("key").to_pylist() == ["ok"]
    assert "refused 3 requests in a row" in out.rejects.column("detail")[-1].as_py()
    assert ctx.stats["fetch"]["rejects"] == {"http_403": 3, "host_backoff": 5}


def test_x_robots_tag_noai_stops_before_the_body_is_read(tmp_path):
    big = b"\xff\xd8" + bytes(64 << 20)  # far more than the socket buffers hold
    with LocalServer() as srv:
        srv.route("/ai/", lambda req: Reply(200, body=big, headers={"X-Robots-Tag": "noai"}))
        out, _ = run_step(tmp_path, [row("a", srv.url("/ai/a.jpg"))], cfg(max_bytes=100 << 20, timeout_s=5))
        t0 = time.time()
        while "/ai/a.jpg" not in srv.sent and time.time() - t0 < 10:
            time.sleep(0.02)
    assert reasons(out) == {"a": "opted_out"}
    written, total = srv.sent["/ai/a.jpg"]
    assert total == len(big) and written < total // 4, f"the server sent {written} of {total} bytes"


# ----------------------------------------------------------------------------- failure rate, breakdown

def test_failure_spike_warns_naming_the_dominant_reason(tmp_path, caplog):
    with LocalServer() as srv:
        srv.route("/bad/", lambda req: Reply(503))
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        rows = [row(f"g{i}", srv.url(f"/{i}.jpg")) for i in range(4)]
        rows += [row(f"b{i}", srv.url(f"/bad/{i}.jpg")) for i in range(8)]
        config = cfg(retries=0, concurrency=1, failure_window=10, warn_failure_rate=0.5)
        with caplog.at_level(logging.WARNING, logger="datagen"):
            out, ctx = run_step(tmp_path, rows, config)
    assert len(reasons(out)) == 8
    warned = [w for w in ctx.warnings if "in the last 10 downloads" in w]
    assert warned and warned[0].startswith("60% http_503 in the last 10 downloads")  # the first full window: 4 ok, 6 bad, ctx.warnings
    assert "outage" in warned[0]  # what to check, for the dominant reason
    assert any("http_503 in the last 10" in r.getMessage() for r in caplog.records)


def test_failure_monitor_stops_only_on_a_full_window():
    m = FailureMonitor(window=4, warn_rate=None, max_rate=0.5)
    assert [m.record("dns_error") for _ in range(3)] == [None] * 3  # three failures are not yet a window
    stop = m.record(None)
    assert stop is not None and "75% dns_error in the last 4 downloads" in stop and "check the resolver" in stop
    m2 = FailureMonitor(window=4, warn_rate=None, max_rate=0.5)
    assert [m2.record(r) for r in ("timeout", None, "timeout", None, None)] == [None] * 5  # 50% is not over


def test_breakdown_by_reason_and_host_and_the_summary_lines():
    stats = {"rows_in": 100, "passthrough": 0,
             "rejects": {"dns_error": 30, "http_404": 5, "http_503": 10},
             "errors_by_host": {"dead.example": {"dns_error": 30}, "cdn.example": {"http_503": 10, "http_404": 2},
                                "b.example": {"http_404": 3}}}
    b = breakdown(stats)
    assert b["failed"] == 45 and b["rate"] == 0.45 and b["retryable"] == 40
    assert [h["host"] for h in b["top_hosts"]] == ["dead.example", "cdn.example", "b.example"]
    assert b["top_hosts"][1]["reasons"] == {"http_503": 10, "http_404": 2}
    text = "\n".join(summary_lines({**stats, "failures": b}))
    assert "45 rows (45.0% of rows fetched)" in text and "dead.example" in text and "retry-failed" in text
    assert summary_lines({"rows_in": 3, "rejects": {}}) == []


def test_reason_patterns():
    assert reason_matches("http_503", ["http_5xx"]) and not reason_matches("http_404", ["http_5xx"])
    assert reason_matches("http_404", ["http_4xx"]) and reason_matches("timeout", ["timeout", "http_5xx"])
    assert not reason_matches("http_5000", ["http_5xx"]) and not reason_matches("opted_out", ["timeout"])


def test_a_retry_asks_again_what_the_download_cache_remembers_as_failed(tmp_path, fake_dns):
    from datagen.fetch import guard
    from datagen.fetch.retry import RetryFetchStep

    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        url = f"http://late.test:{srv.port}/a.jpg"
        config = cfg(cache_downloads=True, retries=0)
        first = FetchStep(config, ctx_for(tmp_path)).process(pairs_table([row("a", url)]))
        assert reasons(first) == {"a": "dns_error"}  # an unknown host is cached as a permanent failure
        fake_dns["late.test"] = ["127.0.0.1"]  # the domain comes back
        guard.DNS.clear()
        again = FetchStep(config, ctx_for(tmp_path)).process(pairs_table([row("a", url)]))
        assert reasons(again) == {"a": "dns_error"} and srv.count() == 0  # served from the cache
        retried = RetryFetchStep(config, ctx_for(tmp_path)).process(pairs_table([row("a", url)]))
        assert retried.kept.column("key").to_pylist() == ["a"] and srv.count() == 1
