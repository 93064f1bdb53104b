import socket
import time

from datagen.offline import hf_hub_cache, host_reachable, hub_offline, url_reachable
from servers import LocalServer


def test_reachability_of_a_live_and_a_closed_port():
    with LocalServer() as srv:
        assert url_reachable(srv.url("/"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    t0 = time.monotonic()
    assert not host_reachable("127.0.0.1", port, timeout_s=1.0)
    assert time.monotonic() - t0 < 5, "a refused connect answers at once, never after the hub's 30 s retries"
    assert not url_reachable("not a url")


def test_offline_flags_and_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub_offline()
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hf_hub_cache() == str(tmp_path / "hub")
    assert hf_hub_cache("~/x").endswith("/x")
