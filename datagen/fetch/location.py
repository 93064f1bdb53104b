"""Where a row's image lives: an http(s) URL or a local file, and reading local files.

Sources resolve relative paths before fetch, so a ``url`` here is an http(s)
URL, a ``file://`` URL or an absolute path. Anything else is a reject with
``unsupported_scheme`` rather than a guess, so a typo in a recipe shows up in
the summary instead of as silently missing images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from datagen.fetch.errors import FetchError


def locate(url: Optional[str], resolve: Callable[[str], Path]) -> tuple[str, str | Path]:
    """Return ``("http", url)`` or ``("file", path)``; raise FetchError for empty or unsupported ones.

    ``resolve`` turns a bare path into an absolute one (``RunContext.resolve``)."""
    if url is None or not url.strip():
        raise FetchError("empty_url", "the row has no url")
    url = url.strip()
    if url.startswith("/") or url.startswith("~"):
        return "file", resolve(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise FetchError("invalid_url", f"{url!r} has no host")
        return "http", url
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError("unsupported_scheme", f"{url!r}: file URLs on another host ({parts.netloc}) are not readable")
        return "file", Path(url2pathname(unquote(parts.path)))
    if scheme == "" and not parts.netloc:
        return "file", resolve(url)  # a relative path the source did not resolve: resolve like the recipe does
    raise FetchError("unsupported_scheme", f"{url!r}: scheme {scheme!r} is not http, https or file")


def read_file(path: Path, max_bytes: int) -> bytes:
    """Read a local image, with the same byte cap as downloads."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FetchError("too_large", f"{path}: {size} bytes > max_bytes {max_bytes}")
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except FileNotFoundError:
        raise FetchError("file_not_found", f"{path} does not exist")
    except IsADirectoryError:
        raise FetchError("read_error", f"{path} is a directory")
    except PermissionError as e:
        raise FetchError("read_error", f"{path}: permission denied ({e.strerror})")
    except OSError as e:
        raise FetchError("read_error", f"{path}: {e!r}")
