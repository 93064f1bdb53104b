"""pyarrow without pandas in ``datagen run``'s processes: importing this module applies ``skip_pandas``.

The first time pyarrow turns Python objects into an array (``pa.array``, ``Table.from_pylist``), it looks
for pandas, to tell whether it was handed a pandas object, and imports it when it is installed (``datasets``
requires it): 0.19 s and about 40 MB of RSS in every process that does, and for the driver, in its path to
the pass's first task (the source's first batch). datagen hands pyarrow no pandas objects.

``skip_pandas`` makes that first look find no pandas: it turns one list into an array while pandas cannot
be imported. pyarrow then takes Python objects as plain sequences, and still imports pandas, and works with
it, the first time it is asked for a pandas conversion (``to_pandas``, ``from_pandas``). ``datagen run``
calls it before it reads its source; the pool's fork server preloads this module
(``poolserver.WORKER_MODULES``), so its processes start without pandas too.
"""

from __future__ import annotations

import sys

import pyarrow as pa


class _NoPandas:
    """A finder that refuses pandas (``sys.meta_path``), for the length of one conversion."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is not needed here (datagen.core.nopandas)", name=name)
        return None


def skip_pandas() -> None:
    """Let pyarrow conclude that pandas is missing, without importing it; a no-op where pandas is imported
    already (pyarrow then uses that copy, at no cost)."""
    if "pandas" in sys.modules:
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


skip_pandas()
