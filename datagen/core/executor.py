"""Shard tasks and the local executor.

A :class:`ShardTask` names one input (a source shard, or a finished part of
an earlier pass), the rows to leave out (barrier decisions for that shard) and
the chain of steps to run; it writes exactly one part (``datagen.core.parts``).
Consecutive per-row steps are fused: each batch goes through the whole chain
in memory and nothing is written between steps. A task touches nothing but its
input, its part and the request caches, so any process (or Ray worker) can run
it; the local executor runs tasks here (``workers: 1``) or in a process pool.

Steps are built once per process from picklable :class:`StepFactory` objects
and get ``setup()`` called once; each task gets a fresh statistics scope, and
what the steps recorded comes back with the task's output (``stats.json``),
never through shared state. The driver merges the per-part statistics and lets
each step recompute derived values (ratios) from the summed counts.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from datagen.core.cache import task_scope
from datagen.core.parts import PartWriter, iter_batches
from datagen.core.poolserver import prestart
from datagen.core.steps import RunContext, Step, available_cores, watch_pass_cores
from datagen.progress import configure_logging, datagen_level, progress

log = logging.getLogger("datagen.executor")


class StepFactory:
    """Picklable recipe for building a step in any process."""

    def __init__(self, cls: type[Step], config: Any):
        self.cls, self.config = cls, config

    def __call__(self, ctx: RunContext) -> Step:
        return self.cls(self.config, ctx)

    @property
    def ident(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}:{self.config.model_dump_json() if self.config else ''}"


def merge_stats(dst: dict, src: dict) -> dict:
    """Add numbers, recurse into dicts, concatenate lists, keep the latest of anything else."""
    for k, v in src.items():
        if isinstance(v, dict):
            merge_stats(dst.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(dst.get(k), (int, float)) \
                and not isinstance(dst.get(k), bool):
            dst[k] += v
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k] = dst[k] + v
        else:
            dst[k] = v
    return dst


@dataclass
class ShardTask:
    shard: str  # e.g. "laion-000003"
    source: str
    input: Path  # parquet: a source shard or an earlier pass's kept rows
    out: Path  # the part folder this task writes
    steps: list[StepFactory]
    empty_schema: pa.Schema  # schema of kept.parquet when every row is rejected
    rows: int = 0  # input rows, for progress
    drop: list[str] = field(default_factory=list)  # keys decided away by barriers
    columns: list[str] | None = None  # input columns to read (None: all)
    batch_size: int = 256


# ----------------------------------------------------------------------------- one task

class _Worker:
    """Steps of this process, built once each and set up once."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.steps: dict[str, Step] = {}

    def step(self, factory: StepFactory) -> Step:
        s = self.steps.get(factory.ident)
        if s is None:
            s = self.steps[factory.ident] = factory(self.ctx)
            s.setup()
        return s

    def close(self) -> None:
        for s in self.steps.values():
            s.close()
        self.steps.clear()


def _counts(info: dict, name: str, n_in: int, n_kept: int, n_rej: int, seconds: float) -> None:
    c = info["steps"].setdefault(name, {"in": 0, "kept": 0, "rejected": 0, "seconds": 0.0})
    c["in"] += n_in
    c["kept"] += n_kept
    c["rejected"] += n_rej
    c["seconds"] += seconds


def run_chain(steps: list[Step], table: pa.Table, info: dict) -> tuple[pa.Table | None, list[pa.Table]]:
    """One batch through the fused chain. Per-row steps (map/filter) pass their kept rows on;
    expand steps all read the pair rows and their conversation rows are concatenated, then
    flow into the per-row steps after them. Returns (kept, rejects)."""
    rows, convs = table, None
    rejects: list[pa.Table] = []
    for s in steps:
        inp = rows if (s.kind == "expand" or convs is None) else convs
        if inp.num_rows == 0 and s.kind != "expand":
            _counts(info, s.name, 0, 0, 0, 0.0)
            continue
        t0 = time.perf_counter()
        out = s.process(inp) if inp.num_rows else None
        if out is None:  # an expand step over no rows
            _counts(info, s.name, 0, 0, 0, 0.0)
            continue
        if s.kind == "expand" and hasattr(s, "check_output"):
            s.check_output(inp, out.kept)
        _counts(info, s.name, inp.num_rows, out.kept.num_rows, out.rejects.num_rows, time.perf_counter() - t0)
        if out.rejects.num_rows:
            rejects.append(out.rejects)
        if s.kind == "expand":
            convs = out.kept if convs is None else pa.concat_tables([convs, out.kept], promote_options="permissive")
        elif convs is not None:
            convs = out.kept
        else:
            rows = out.kept
    return (convs if convs is not None else rows), rejects


def run_task(task: ShardTask, worker: _Worker) -> dict:
    """Run one shard task to a finished part; returns the part's info (counts, stats, warnings)."""
    ctx = worker.ctx
    ctx.stats, ctx.warnings = {}, []
    steps = [worker.step(f) for f in task.steps]
    for s in steps:
        s.begin_task()
    info: dict[str, Any] = {"shard": task.shard, "source": task.source, "rows_in": 0, "steps": {}}
    for s in steps:
        info["steps"][s.name] = {"in": 0, "kept": 0, "rejected": 0, "seconds": 0.0}
    drop = pa.array(task.drop, type=pa.string()) if task.drop else None
    writer = PartWriter(task.out, task.empty_schema)
    t0 = time.perf_counter()
    try:
        with task_scope():  # the answers this task paid for are durable (cache parts) before its part
            for batch in iter_batches(task.input, task.batch_size, task.columns):
                if drop is not None:
                    batch = batch.filter(pc.invert(pc.is_in(batch.column("key"), value_set=drop)))
                info["rows_in"] += batch.num_rows
                kept, rejects = run_chain(steps, batch, info)
                writer.write(kept, pa.concat_tables(rejects) if rejects else None)
    except BaseException:
        writer.abort()
        raise
    for s in steps:
        info["steps"][s.name]["stats"] = ctx.stats.get(s.name, {})
    info["warnings"] = list(ctx.warnings)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return writer.commit(info).info


# ----------------------------------------------------------------------------- the pool

_PROCESS: dict[str, _Worker] = {}

class _PoolProcess(mp.context.ForkServerProcess):
    """A pool process that runs its exit handlers when its work ends, and ends when the driver dies.

    A process forked from the fork server ends in ``os._exit``, where a spawned one ended like any
    interpreter: without ``atexit._run_exitfuncs`` here, what ``atexit`` holds in a worker (the request
    caches' flush, the CLIP step's temporary config folder) would be skipped."""

    def run(self) -> None:
        threading.Thread(target=_end_with_the_driver, name="driver-watch", daemon=True).start()
        try:
            super().run()
        finally:
            atexit._run_exitfuncs()


def _end_with_the_driver() -> None:
    """A pool process's watch on its driver. When the driver dies (``kill -9``, the OOM killer), a pool
    process waited for its next task forever, holding its memory (and the fork server alive with it): it
    ends now, after its exit handlers, so the answers it paid for still reach the request cache. The
    sentinel is a pipe whose other end only the driver holds: it reads as closed when the driver is gone."""
    parent = mp.parent_process()
    if parent is None:
        return
    parent.join()
    try:
        log.warning("the driver (pid %s) is gone: this pool process ends", parent.pid)
        atexit._run_exitfuncs()
    finally:
        os._exit(1)


class _PoolContext(mp.context.ForkServerContext):
    Process = _PoolProcess


def pool_context() -> mp.context.BaseContext:
    return _PoolContext()


def open_pool(workers: int, ctx: RunContext, counts: Any = None) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` processes forked from the fork server, each set up by ``_init`` with the
    driver's log level and its environment as they are now, and its share of the machine's cores
    (``RunContext.cores``); ``counts`` (``pass_counts``): the pass's idle and busy processes, as the
    driver updates them."""
    prestart()
    share = max(1, available_cores() // workers)
    return cf.ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=_init,
                                  initargs=(task_context(ctx, share), datagen_level(), dict(os.environ), counts))


def pass_counts() -> Any:
    """Shared memory for a pass's [processes with no task left, busy processes] (``steps.borrowed_cores``)."""
    return pool_context().RawArray("i", 2)


def _init(ctx: RunContext, log_level: int, environ: dict[str, str], counts: Any = None) -> None:
    """A pool process: the driver's environment as it is now (the fork server kept the one it started
    with), the driver's log level, one worker, the pass's shared counts of idle and busy processes."""
    os.environ.clear()
    os.environ.update(environ)
    configure_logging(log_level)
    if counts is not None:
        watch_pass_cores(counts, ctx.cpu_cores())
    _PROCESS["worker"] = _Worker(ctx)


def _run_in_pool(task: ShardTask) -> dict:
    return run_task(task, _PROCESS["worker"])


def task_context(ctx: RunContext, cores: int | None = None) -> RunContext:
    """The context steps are built with: the run's settings, its own stats and warnings, and the cores
    each of the executor's processes may use (None: the machine's, for tasks run in this process)."""
    return RunContext(ctx.run_dir, ctx.recipe_dir, ctx.seed, ctx.dry_run, cores)


# Work the driver can do ahead while a pool pass keeps it waiting (e.g. the imports of the report that
# ends the run: ``datagen.report.warm_up``). Each runs once, in a daemon thread, in the first pool pass,
# as soon as one of its processes has no task left: on that core, which would idle until the pass ends,
# rather than on the cores the workers keep busy (started with the pass, the 0.5 s of imports took as
# much from the workers as they later saved) or in the run's serial tail.
_IDLE_WORK: list[Callable[[], None]] = []


def while_waiting(fn: Callable[[], None]) -> None:
    """Run ``fn`` once in the background while the next pool pass runs (never on the critical path)."""
    if fn not in _IDLE_WORK:  # a process running several runs (tests) registers it each time
        _IDLE_WORK.append(fn)


def _start_idle_work() -> None:
    work, _IDLE_WORK[:] = list(_IDLE_WORK), []

    def run_all() -> None:
        for fn in work:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - ahead-of-time work; the real call will say what is wrong
                log.debug("background warm-up %s failed: %s", getattr(fn, "__qualname__", fn), e)

    if work:
        threading.Thread(target=run_all, name="driver-warm-up", daemon=True).start()


def execute(tasks: list[ShardTask], ctx: RunContext, workers: int, desc: str) -> list[dict]:
    """Run ``tasks`` (here or in ``workers`` processes); returns their infos in task order."""
    if not tasks:
        return []
    results: dict[int, dict] = {}
    bar = progress(sum(t.rows for t in tasks), desc, "row")

    def done(i: int, info: dict) -> None:
        results[i] = info
        bar.update(tasks[i].rows)
        log.debug("%s: shard %s done (%d rows in)", desc, tasks[i].shard, tasks[i].rows)

    try:
        if workers <= 1 or len(tasks) == 1:
            worker = _Worker(task_context(ctx))
            try:
                for i, t in enumerate(tasks):
                    done(i, run_task(t, worker))
            finally:
                worker.close()
        else:
            processes = min(workers, len(tasks))
            counts = pass_counts()
            with open_pool(processes, ctx, counts) as pool:
                futures = {pool.submit(_run_in_pool, t): i for i, t in enumerate(tasks)}
                left = len(futures)
                try:
                    for fut in cf.as_completed(futures):
                        done(futures[fut], fut.result())
                        left -= 1
                        if left < processes:  # a pool process has nothing more to do: its core is free
                            counts[1], counts[0] = left, processes - left  # busy first: never idle > 0 with a stale busy
                            _start_idle_work()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return [results[i] for i in range(len(tasks))]


def pool_map(fn: Callable[..., Any], calls: list[tuple], ctx: RunContext | None, workers: int,
             on_done: Callable[[int, Any], None] | None = None) -> list:
    """``fn(*args)`` for each ``args`` in ``calls``, in up to ``workers`` processes of a pool like a pass's
    (forked from the fork server, so they start with its imports; ``fn`` must be a module's function),
    or here when ``workers`` is 0, there is no call or no ``ctx``. Results in call order; ``on_done(i,
    result)`` as each call finishes. The stage-1 sink writes its buckets with it."""
    results: list = [None] * len(calls)
    processes = min(workers, len(calls))
    if processes < 1 or ctx is None:
        for i, args in enumerate(calls):
            results[i] = fn(*args)
            if on_done is not None:
                on_done(i, results[i])
        return results
    with open_pool(processes, ctx) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_done is not None:
                    on_done(i, results[i])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def merge_parts(infos: Iterable[dict], factories: list[StepFactory], ctx: RunContext) -> dict[str, dict]:
    """Per-step totals over parts: counts added, stats merged, derived stats recomputed."""
    merged: dict[str, dict] = {}
    for info in infos:
        for name, c in info.get("steps", {}).items():
            m = merged.setdefault(name, {"in": 0, "kept": 0, "rejected": 0, "seconds": 0.0, "stats": {}})
            for k in ("in", "kept", "rejected", "seconds"):
                m[k] += c.get(k, 0)
            merge_stats(m["stats"], c.get("stats", {}))
        for w in info.get("warnings", []):
            ctx.warn(w)
    for f in factories:
        if f.cls.name in merged:
            probe = f(ctx)
            probe.derive_stats(merged[f.cls.name]["stats"])
    return merged

