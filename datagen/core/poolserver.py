"""The fork server a run's pool processes come from: started, preloaded, stopped.

Standard library only, so that ``datagen run`` can start the server before it imports anything
else (``datagen.cli``), and the server's imports run on another core while the driver reads its
recipe and its source. Pools themselves: ``datagen.core.executor``.
"""

from __future__ import annotations

import os
import signal

# The pool's processes are forked from multiprocessing's fork server, not spawned: the server imports
# these once (about 0.5 s of CPU), and each process forked from it starts with them, where a spawned one
# imported them again. ``datagen.core.nopandas`` comes first: pyarrow's first list -> array would
# otherwise import pandas (0.2 s and 40 MB) only to find that it was not handed a pandas object.
# ``datagen run`` calls ``prestart`` as soon as the recipe file says the run wants a pool, before
# validating it, so those imports run on another core while the driver validates the recipe and reads
# its source. The server does none of the run's work and opens none of its files, so forking from it is
# safe (forking the driver is not: its Arrow and Polars thread pools would be copied mid-flight). Steps
# not listed are imported by the worker when it unpickles its first task, as before.
WORKER_MODULES = (
    "datagen.core.nopandas", "datagen.core.executor", "datagen.fetch.step", "datagen.fetch.http",
    "datagen.filters.quality", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "pyarrow.parquet", "cv2",
)


def prestart() -> None:
    """Start the fork server the pool's processes will come from (a no-op when it runs)."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(list(WORKER_MODULES))  # no effect once the server runs (tests: many runs)
    forkserver.ensure_running()


def stop_pool_server() -> None:
    """Stop the fork server (if this process started one) and reap it, so that its CPU time and its
    children's count as this process's children's (what ``time`` and the benchmarks read) and no process
    outlives the run; without it the server exits by itself when this process does, unreaped. SIGTERM
    first: the server holds nothing to save, and the teardown of its interpreter cost 0.15 s."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    server._stop()  # closes its pipe, waits for it, removes its socket
