"""What a pipeline step is.

A step is a small class built from a pydantic config and a :class:`RunContext`,
with one method over an Arrow batch. The executor (``datagen.core.pipeline``) owns
everything else: batching, checkpoints, counting, progress. Nothing in a step
may assume it runs in one process: a step keeps no state between batches that
the result depends on (caches of models and clients are fine).

Kinds:
- ``map``/``filter``: ``process(table) -> StepOutput(kept, rejects)``; a filter
  first computes its stat column so thresholds can change without recomputing.
  Consecutive per-row steps are fused into one shard task (``datagen.core``).
- ``expand``: the same method, but ``kept`` has a different schema (pair rows in,
  conversation rows out).
- ``barrier``: needs the whole dataset; ``decide(frame)`` gets a polars lazy
  frame of the metadata columns of every finished part (never image bytes) and
  returns the rows to drop as rejects (key decisions). Later passes and the
  sinks apply the decisions by key.

Models and clients load in ``setup()``, called once per process before the
first batch. Statistics a step records with ``ctx.stat(name)`` are scoped to
one shard task by the executor and come back with the task's output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from datagen.core.records import REJECT_SCHEMA

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("datagen")


@dataclass
class StepOutput:
    kept: pa.Table
    rejects: pa.Table = field(default_factory=lambda: REJECT_SCHEMA.empty_table())


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# A pool pass's processes that have no task left leave their cores idle until the pass ends (with 2
# processes on 2 cores, the last task ran on one core: 3 s of bench_download's 20,000 images). The
# executor counts them in memory its processes share (``datagen.core.executor``): [processes with no
# task left, processes still busy]; a busy process may borrow its share of the idle ones' cores.
_PASS_CORES: dict[str, Any] = {"counts": None, "share": 1}


def watch_pass_cores(counts: Any, share: int) -> None:
    """In a pool process: the pass's shared counts (``counts[0]`` idle, ``counts[1]`` busy processes) and
    this process's own share of the cores."""
    _PASS_CORES.update(counts=counts, share=share)


def borrowed_cores() -> int:
    """The cores this process may use now besides its own share: the shares of the pass's processes that
    have no task left, split among the busy ones. 0 outside a pool, and while every process is busy."""
    counts = _PASS_CORES["counts"]
    if counts is None:
        return 0
    idle, busy = counts[0], counts[1]
    return idle * _PASS_CORES["share"] // busy if idle and busy else 0


@dataclass
class RunContext:
    """What a step may know about the run it is part of."""

    run_dir: Path  # checkpoints, caches and logs of this run
    recipe_dir: Path  # relative paths in the recipe resolve against this
    seed: int = 0
    dry_run: bool = False
    # The CPU cores this process's steps may keep busy: the executor's share per process (a pool of 2 on 2
    # cores: 1 each); None: the whole machine (``available_cores``), as in a run without a pool.
    cores: int | None = None
    # Free-form per-step statistics that end up in manifest.json under "steps.<name>.stats".
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Human-readable warnings that the summary and manifest must show (e.g. untrained CLIP).
    warnings: list[str] = field(default_factory=list)

    @property
    def cache_dir(self) -> Path:
        d = self.run_dir / "cache"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def resolve(self, path: str | Path) -> Path:
        from datagen.core.storage import realpath

        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(realpath(self.recipe_dir / p))

    def rng(self, *salt: Any) -> random.Random:
        """A deterministic RNG for (run seed, salt): same seed, same output, in any process."""
        h = hashlib.sha256(json.dumps([self.seed, *map(str, salt)]).encode()).digest()
        return random.Random(int.from_bytes(h[:8], "big"))

    def cpu_cores(self) -> int:
        """``cores``, or the machine's when unset."""
        return self.cores if self.cores is not None else available_cores()

    def stat(self, step: str) -> dict[str, Any]:
        return self.stats.setdefault(step, {})

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            if message not in _LOGGED:  # shard tasks and passes get fresh contexts: say each thing once per process
                _LOGGED.add(message)
                log.warning(message)


_LOGGED: set[str] = set()  # warnings already logged by this process (the summary repeats them at the end)


class Step:
    """Base class. Subclasses set ``name``, ``kind`` and implement ``process``."""

    name: ClassVar[str] = "step"
    kind: ClassVar[str] = "map"  # map | filter | expand | barrier
    # Bump when a code change alters the output for the same config, so checkpoints are redone.
    version: ClassVar[int] = 1

    def __init__(self, config: BaseModel | None, ctx: RunContext):
        self.config = config
        self.ctx = ctx

    def fingerprint(self) -> str:
        """Hash of what determines this step's output given its input."""
        cfg = self.config.model_dump(mode="json") if self.config is not None else None
        blob = json.dumps({"name": self.name, "version": self.version, "config": cfg}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def process(self, table: pa.Table) -> StepOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or clients once per process, before the first batch."""

    def begin_task(self) -> None:
        """A new shard task starts (its batches follow): reset state scoped to one shard, e.g. a deadline."""

    # Barriers: the metadata columns they read, and the decision over all of them.
    columns: ClassVar[tuple[str, ...]] = ()

    def decide(self, frame: "pl.LazyFrame") -> pa.Table:  # pragma: no cover - interface
        """Barriers: rows (``key``, ``source``, ``url`` and ``columns``) of every part, in input order;
        returns the rows to drop as a rejects table."""
        raise NotImplementedError

    def derive_stats(self, stats: dict[str, Any]) -> None:
        """Recompute derived values (shares, rates, means) from the summed counts in ``stats``.

        Stats from several worker processes merge by adding numbers, which is right for
        counts and wrong for ratios; the executor calls this after merging."""

    def close(self) -> None:
        """Release models, clients, pools. Called once after the last batch."""
