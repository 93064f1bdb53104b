"""The Ray executor: the same shard tasks as the local pool, run by a pool of Ray actors.

Each actor is a long-lived worker process that builds the steps once (``setup()``
loads the models) and runs one shard task at a time, so GPU steps get
``executor.gpus_per_worker`` through Ray's scheduler. A task writes its part
atomically under a name unique to its process, so when Ray restarts an actor
whose process died (``max_restarts``) and retries its task
(``max_task_retries``), the rerun simply writes the part again: the output is
the same. Barriers and sinks run on the driver over the part files, which
every node must see (a shared filesystem; see the README).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datagen.core.executor import ShardTask, _Worker, run_task, task_context
from datagen.core.steps import RunContext
from datagen.progress import progress


class RayUnavailable(RuntimeError):
    """``executor.kind: ray`` without the ray package."""


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"executor.kind: ray needs the ray package ({e}); install it with "
                             "pip install 'datagen[ray]', or set executor.kind: local") from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto``, ``ray://host:port``, ``host:port``), or start a local
    Ray instance when it is None. A process that already called ``ray.init`` keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    ray.init(log_to_driver=False, **kwargs)


class _RayWorker:
    """One actor: a process's steps, built and set up once, running shard tasks one at a time."""

    def __init__(self, ctx: RunContext):
        self.worker = _Worker(ctx)

    def run(self, index: int, task: ShardTask) -> tuple[int, dict]:
        return index, run_task(task, self.worker)

    def pid(self) -> int:
        import os

        return os.getpid()


def _absolute(task: ShardTask) -> ShardTask:
    return dataclasses.replace(task, input=Path(task.input).resolve(), out=Path(task.out).resolve())


def execute_ray(tasks: list[ShardTask], ctx: RunContext, workers: int, desc: str, address: str | None,
                cpus: float = 1, gpus: float = 0) -> list[dict]:
    """Run ``tasks`` on ``workers`` Ray actors (``cpus``/``gpus`` each); returns infos in task order."""
    if not tasks:
        return []
    ray = _ray()
    from ray.util import ActorPool

    connect(address)
    wctx = task_context(ctx, max(1, int(cpus)))  # an actor's CPUs are its cores
    wctx = dataclasses.replace(wctx, run_dir=Path(wctx.run_dir).resolve(), recipe_dir=Path(wctx.recipe_dir).resolve())
    actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)(_RayWorker)
    pool = ActorPool([actor.remote(wctx) for _ in range(min(workers, len(tasks)))])
    results: dict[int, dict] = {}
    with progress(sum(t.rows for t in tasks), desc, "row") as bar:
        for i, info in pool.map_unordered(lambda a, it: a.run.remote(*it),
                                          [(i, _absolute(t)) for i, t in enumerate(tasks)]):
            results[i] = info
            bar.update(tasks[i].rows)
    return [results[i] for i in range(len(tasks))]
