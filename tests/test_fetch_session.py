"""The fetch step keeps one event loop, its HTTP clients and its decode pool for the life of the step
(issue 10): kept-alive connections carry over from batch to batch and shard to shard, everything is
closed with the step, and what belongs to one shard (host backoff, deadline) or one batch (straggler
cutoff) stays scoped as before."""

from __future__ import annotations

import threading

from datagen.core.executor import StepFactory, _Worker
from datagen.core.records import pairs_table
from datagen.fetch import FetchStep
from servers import LocalServer, Reply
from test_fetch import cfg, ctx_for, jpeg, reasons, row


def count_connections(srv: LocalServer) -> list:
    """Every TCP connection the server accepts is appended to the returned list."""
    accepted: list = []
    get_request = srv.httpd.get_request

    def counting():
        conn = get_request()
        accepted.append(conn[1])
        return conn

    srv.httpd.get_request = counting
    return accepted


def fetch_loops() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fetch-loop"]


def test_connections_are_reused_across_batches_and_shards(tmp_path):
    with LocalServer() as srv:
        body = jpeg()
        srv.route("/", lambda req: Reply(200, body=body, headers={"Content-Type": "image/jpeg"}))
        accepted = count_connections(srv)
        step = FetchStep(cfg(concurrency=2, per_host_concurrency=2), ctx_for(tmp_path))
        try:
            for shard in range(2):
                step.begin_task()
                for batch in range(3):
                    keys = [f"s{shard}b{batch}r{i}" for i in range(6)]
                    out = step.process(pairs_table([row(k, srv.url(f"/{k}.jpg")) for k in keys]))
                    assert out.kept.column("key").to_pylist() == keys
        finally:
            step.close()
        assert srv.count() == 36
        # two connection slots, kept alive over 6 batches; a loop and clients per batch opened 2 each time
        assert 1 <= len(accepted) <= 2, accepted


def test_closing_the_worker_closes_the_clients_and_stops_the_loop(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg(), headers={"Content-Type": "image/jpeg"}))
        before = len(fetch_loops())
        worker = _Worker(ctx_for(tmp_path))
        step = worker.step(StepFactory(FetchStep, cfg()))
        step.begin_task()
        assert step.process(pairs_table([row("a", srv.url("/a.jpg"))])).kept.num_rows == 1
        assert len(fetch_loops()) == before + 1
        session = step._downloader.session
        loop = step._loop.loop
        worker.close()
        assert session.closed
        assert loop.is_closed() and len(fetch_loops()) == before
        # a step used again after close starts afresh
        again = FetchStep(cfg(), ctx_for(tmp_path))
        try:
            assert again.process(pairs_table([row("b", srv.url("/b.jpg"))])).kept.num_rows == 1
        finally:
            again.close()
        assert len(fetch_loops()) == before


def test_host_backoff_holds_across_the_batches_of_a_shard_and_resets_for_the_next_shard(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(403))
        step = FetchStep(cfg(host_backoff_after=2, concurrency=1, per_host_concurrency=1), ctx_for(tmp_path))
        try:
            step.begin_task()
            first = step.process(pairs_table([row(f"a{i}", srv.url(f"/a{i}.jpg")) for i in range(2)]))
            assert set(reasons(first).values()) == {"http_403"} and srv.count() == 2
            second = step.process(pairs_table([row(f"b{i}", srv.url(f"/b{i}.jpg")) for i in range(2)]))
            assert set(reasons(second).values()) == {"host_backoff"} and srv.count() == 2  # same shard: not asked
            step.begin_task()
            third = step.process(pairs_table([row(f"c{i}", srv.url(f"/c{i}.jpg")) for i in range(3)]))
            assert sorted(reasons(third).values()) == ["host_backoff", "http_403", "http_403"]
            assert srv.count() == 4  # a new shard gives the host a new chance
        finally:
            step.close()


def test_a_batch_after_a_straggler_cutoff_still_fetches_on_the_same_clients(tmp_path):
    release = threading.Event()
    with LocalServer() as srv:
        body = jpeg()
        srv.route("/ok/", lambda req: Reply(200, body=body, headers={"Content-Type": "image/jpeg"}))
        srv.route("/hang/", lambda req: (release.wait(30), Reply(200, body=body))[1])
        config = cfg(timeout_s=30, total_timeout_s=60, concurrency=4, per_host_concurrency=4,
                     straggler_cutoff={"done_fraction": 0.5, "wait_s": 0.2})
        step = FetchStep(config, ctx_for(tmp_path))
        try:
            step.begin_task()
            rows = [row(f"k{i}", srv.url(f"/ok/{i}.jpg")) for i in range(3)] + [row("slow", srv.url("/hang/x.jpg"))]
            first = step.process(pairs_table(rows))
            assert reasons(first) == {"slow": "straggler_timeout"}
            # the cancelled request gave its slot back: all four slots serve the next batch
            second = step.process(pairs_table([row(f"n{i}", srv.url(f"/ok/n{i}.jpg")) for i in range(8)]))
            assert second.kept.num_rows == 8 and reasons(second) == {}
        finally:
            release.set()
            step.close()


def test_decode_threads_follow_the_cores_the_process_has_to_itself(tmp_path):
    """``fetch.workers`` unset: no decode thread in a process with one core to itself (a pool of one
    process a core), one a core otherwise; a number in the recipe is taken as it is."""
    import dataclasses

    ctx = ctx_for(tmp_path)
    for cores, workers, want in ((1, None, 0), (4, None, 4), (1, 3, 3), (8, 0, 0)):
        step = FetchStep(cfg(workers=workers), dataclasses.replace(ctx, cores=cores))
        assert step.decode_threads() == want, (cores, workers)
    assert FetchStep(cfg(), ctx).decode_threads() == ctx.cpu_cores()  # no pool: the machine's cores


def test_the_loop_thread_decodes_as_the_decode_threads_did(tmp_path):
    """With no decode thread every row is decoded in the event loop's thread, and the batch comes out as
    with threads: the same kept rows and bytes, the same rejects, for downloads, local files, rows that
    arrive with bytes, missing pages and bodies that are no image."""
    import dataclasses

    from datagen.fetch import step as step_mod

    (tmp_path / "local.jpg").write_bytes(jpeg(90, 60, (200, 30, 30)))
    with LocalServer() as srv:
        srv.route("/img", lambda req: Reply(200, body=jpeg(400, 300), headers={"Content-Type": "image/jpeg"}))
        srv.route("/page", lambda req: Reply(200, body=b"<html>no image</html>", headers={"Content-Type": "image/jpeg"}))
        rows = ([row(f"d{i}", srv.url(f"/img/{i}.jpg")) for i in range(6)]
                + [row("local", str(tmp_path / "local.jpg")), row("bytes", image=jpeg(300, 200)),
                   row("missing", srv.url("/nothing")), row("page", srv.url("/page"))])
        outs, threads_seen = {}, {}
        decode = step_mod.process_image
        for workers in (0, 2):
            seen: set[str] = set()

            def recording(*a, seen=seen, **k):
                seen.add(threading.current_thread().name)
                return decode(*a, **k)

            step_mod.process_image = recording
            try:
                step = FetchStep(cfg(workers=workers, max_side=128), dataclasses.replace(ctx_for(tmp_path), cores=1))
                try:
                    outs[workers] = step.process(pairs_table(rows))
                finally:
                    step.close()
            finally:
                step_mod.process_image = decode
            threads_seen[workers] = seen
    assert threads_seen[0] == {"fetch-loop"}
    assert threads_seen[2] and all(n.startswith("fetch-decode") for n in threads_seen[2])
    inline, threaded = outs[0], outs[2]
    assert inline.kept.to_pylist() == threaded.kept.to_pylist()
    assert inline.kept.column("key").to_pylist() == [f"d{i}" for i in range(6)] + ["local", "bytes"]
    assert reasons(inline) == reasons(threaded) == {"missing": "http_404", "page": "not_an_image"}


def test_decode_threads_do_not_change_the_steps_fingerprint(tmp_path):
    """How many threads decode never changes a fetched row: finished parts are reused when it changes."""
    ctx = ctx_for(tmp_path)
    prints = {FetchStep(cfg(workers=w), ctx).fingerprint() for w in (None, 0, 1, 4)}
    assert len(prints) == 1
    assert FetchStep(cfg(max_side=64), ctx).fingerprint() not in prints
