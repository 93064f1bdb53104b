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
    from datagen.steps import RunContext

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return RunContext(run_dir=run_dir, recipe_dir=tmp_path, seed=0)
