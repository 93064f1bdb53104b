"""Fetch step: images from local paths, file:// and http(s):// URLs, checked, upright, RGB, encoded."""
from datagen.fetch.config import FetchConfig
from datagen.fetch.errors import FetchError
from datagen.fetch.step import FetchStep

__all__ = ["FetchConfig", "FetchError", "FetchStep"]
