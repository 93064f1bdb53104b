"""Is the model hub reachable, and is a file already cached? Answered fast, once.

Offline, open_clip and huggingface_hub retry a missing download for about 30
seconds and then fail with a message that does not say what to do. Loaders
(the CLIP filter, the trainer) ask these questions first and fail, or fall
back, within a couple of seconds, naming what they checked.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

REACH_TIMEOUT_S = 2.0
_REACHED: dict[tuple[str, int], tuple[float, bool]] = {}  # (host, port) -> (monotonic time, answer)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set to a true value."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hf_hub_cache(cache_dir: str | None = None) -> str:
    """The hub cache as huggingface_hub would compute it NOW (its constants are frozen at import
    time, so a later change of HF_HOME would otherwise be missed)."""
    if cache_dir:
        return os.path.expanduser(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def host_reachable(host: str, port: int, timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """A TCP connect with a hard deadline. The connect runs in a daemon thread because name
    resolution (getaddrinfo) ignores socket timeouts and can hang much longer than the connect.
    The answer is remembered for a minute so several steps of one run pay the wait once."""
    seen = _REACHED.get((host, port))
    if seen is not None and time.monotonic() - seen[0] < 60:
        return seen[1]
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    ok = bool(result and result[0])
    _REACHED[(host, port)] = (time.monotonic(), ok)
    return ok


def url_host_port(url: str) -> tuple[str, int] | None:
    u = urlparse(url)
    if not u.hostname:
        return None
    return u.hostname, u.port or (80 if u.scheme == "http" else 443)


def url_reachable(url: str, timeout_s: float = REACH_TIMEOUT_S) -> bool:
    hp = url_host_port(url)
    return hp is not None and host_reachable(*hp, timeout_s=timeout_s)
