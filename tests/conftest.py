import os
import sys
from pathlib import Path

import pytest

# Offline machine: never let open_clip / huggingface_hub wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def ctx(tmp_path):
    from datagen.core.steps import RunContext

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return RunContext(run_dir=run_dir, recipe_dir=tmp_path, seed=0)


class DnsTable(dict):
    """name -> addresses, plus ``calls``: every name the fake resolver was asked, in order."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[str] = []


@pytest.fixture
def fake_dns(monkeypatch):
    """Name resolution from a table instead of the system resolver, so no DNS query leaves the machine.

    Returns the table (name -> addresses); names not in it fail like an unknown host (the same
    socket.gaierror getaddrinfo raises). The worker's DNS cache starts and ends empty."""
    import socket

    from datagen.fetch import guard

    table = DnsTable({"localhost": ["127.0.0.1"]})

    async def resolve(host: str, port: int) -> list[str]:
        table.calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    monkeypatch.setattr(guard, "resolve", resolve)
    guard.DNS.clear()
    yield table
    guard.DNS.clear()


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """No network for the model hubs and an empty Hugging Face cache (CLIP weight resolution tests)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return tmp_path / "hf"
