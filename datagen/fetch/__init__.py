"""Fetch step: images from local paths, file:// and http(s):// URLs, checked, upright, RGB, encoded.

``FetchStep`` (and with it the image stack) is imported on first use: reading a recipe needs only
``FetchConfig``. The step's module in turn imports the network stack (aiohttp, the downloader) only
where it downloads: a run's driver, which hands the fetching to its pool, never needs it."""
from datagen.fetch.config import FetchConfig
from datagen.fetch.errors import FetchError

__all__ = ["FetchConfig", "FetchError", "FetchStep"]


def __getattr__(name: str):
    if name == "FetchStep":
        from datagen.fetch.step import FetchStep

        return FetchStep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
