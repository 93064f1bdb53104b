"""Progress of long work: a tqdm bar on a terminal, plain log lines everywhere else.

A bar redraws itself with ``\\r``, which fills a captured log (CI, ``nohup``, a cluster job) with
frames. So a bar is drawn only when stderr is a terminal and info lines are wanted (not ``-q``);
otherwise the ``datagen.progress`` logger writes a line every 10% of the total or every
``DATAGEN_PROGRESS_SECONDS`` seconds (default 30), whichever comes first, and one at the end::

    INFO pairs: 1200/3000 rows (40%), 85 rows/s

Every progress display in the package goes through :func:`progress`; :func:`bars` says whether
other libraries may draw theirs.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("datagen.progress")

STEP_FRACTION = 0.1  # a line at every 10% of the total
LOG_FORMAT = "%(levelname)s %(message)s"


def configure_logging(level: int | str) -> None:
    """Log lines to stderr, ``level`` for the ``datagen`` loggers, warnings only for other libraries.
    The CLI calls it once; worker processes call it with the driver's level, so their progress and
    warnings read the same as the driver's."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("datagen").setLevel(level.upper() if isinstance(level, str) else level)


def datagen_level() -> int:
    """The effective level of the ``datagen`` loggers here, to hand to worker processes."""
    return logging.getLogger("datagen").getEffectiveLevel()


def _interval() -> float:
    try:
        return float(os.environ.get("DATAGEN_PROGRESS_SECONDS", "30"))
    except ValueError:
        return 30.0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class LogProgress:
    """The tqdm subset we use (``update``, ``close``, a context manager), written as log lines."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total or None, desc, unit
        self.n = 0
        self.start = self._last = time.monotonic()
        self._next_n = self._step() if self.total else None
        self.interval = _interval()
        self._closed = False

    def _step(self) -> int:
        return max(1, int(self.total * STEP_FRACTION))

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n // self.total}%)" if self.total else ""
        return f"{self.desc}: {done} {self.unit}s{pct}, {rate:.0f} {self.unit}s/s"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due = now - self._last >= self.interval
        if self._next_n is not None and self.n >= self._next_n:
            due = True
            step = self._step()
            self._next_n = (self.n // step + 1) * step
        if due and self.n < (self.total or float("inf")):
            self._last = now
            log.info(self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n:
            log.info(self.line() + f", {time.monotonic() - self.start:.1f}s")

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bars() -> bool:
    """Whether progress bars may be drawn: stderr is a terminal and info lines are wanted. Libraries
    with bars of their own (``datasets``) are switched off with it."""
    return log.isEnabledFor(logging.INFO) and _is_terminal(sys.stderr)


def progress(total: int | None, desc: str, unit: str = "row"):
    """A progress display over ``total`` units (None: unknown); use as a context manager or call
    ``close()``."""
    if bars():
        from tqdm import tqdm

        return tqdm(total=total or None, desc=desc, unit=unit, leave=False, file=sys.stderr)
    return LogProgress(total, desc, unit)
