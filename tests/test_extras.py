"""Optional extras: one map from recipe features to extras, checked before any work, and a core that
imports none of the optional packages."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from datagen import extras
from datagen.cli import main
from datagen.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datagen" / "assets" / "demo"
# What the core must never import: the packages of the extras (and what they pull in).
OPTIONAL = ["torch", "torchvision", "open_clip", "timm", "transformers", "peft", "safetensors", "tensorboard",
            "rapidocr_onnxruntime", "onnxruntime", "openai", "deepl", "ray", "nudenet"]


def _recipe(tmp_path, extra_yaml: str = ""):
    path = tmp_path / "r.yaml"
    path.write_text(f"""
name: x
sources:
  - {{name: coco, kind: coco, captions: {DEMO}/annotations/captions_demo2017.json,
      instances: {DEMO}/annotations/instances_demo2017.json, images: {DEMO}/images}}
fetch: {{allow_local_files: true, max_side: 128}}
filters: {{quality: {{min_side: 64}}}}
synthesize: {{sources: [coco]}}
{extra_yaml}
""")
    return path


def test_pyproject_declares_every_extra_and_the_core_has_none_of_their_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    opt = project["optional-dependencies"]
    assert set(extras.EXTRA_MODULES) <= set(opt)
    core = " ".join(project["dependencies"]).lower()
    for pkg in ("torch", "open_clip", "transformers", "peft", "rapidocr", "openai", "deepl", "ray", "nudenet"):
        assert pkg not in core, pkg
    assert opt["all"] == ["datagen[clip,train,ocr,llm,ray]"]  # nsfw apart: see pyproject.toml


def test_every_module_the_map_names_is_installed_in_the_full_environment():
    """`make` installs [all] and NudeNet: a misspelt module name in the map would show here."""
    for extra, modules in extras.EXTRA_MODULES.items():
        for m in modules:
            assert importlib.util.find_spec(m) is not None, f"{extra}: {m}"


def test_recipe_features_map_to_extras(tmp_path):
    recipe, _ = load_recipe(_recipe(tmp_path, """
ocr: {}
translate: {backend: deepl, by_generator: {template: native}}
executor: {kind: ray}
"""), ["filters.clip={model: ViT-B-32, pretrained: laion2b_s34b_b79k}"])
    got = {(n.feature, n.extra, n.modules) for n in extras.recipe_needs(recipe)}
    assert got == {("filters.clip", "clip", ("torch", "open_clip")),
                   ("ocr", "ocr", ("rapidocr_onnxruntime",)),
                   ("translate (backend deepl)", "llm", ("deepl",)),
                   ("executor.kind: ray", "ray", ("ray",))}
    core, _ = load_recipe(_recipe(tmp_path))
    assert extras.recipe_needs(core) == []


def test_a_recipe_whose_extra_is_missing_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(extras, "_installed", lambda m: m not in ("torch", "rapidocr_onnxruntime"))
    recipe = _recipe(tmp_path, "ocr: {}")
    out = tmp_path / "out"
    rc = main(["run", str(recipe), "--out", str(out), "--set",
               "filters.clip={model: ViT-B-32, pretrained: laion2b_s34b_b79k, allow_untrained_fallback: true}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "filters.clip needs the 'clip' extra (missing: torch): pip install 'datagen[clip]'" in err
    assert "ocr needs the 'ocr' extra (missing: rapidocr_onnxruntime): pip install 'datagen[ocr]'" in err
    assert "pip install 'datagen[clip,ocr]'" in err
    assert not out.exists()  # nothing was started


def test_train_commands_name_the_train_extra(monkeypatch, capsys):
    monkeypatch.setattr(extras, "_installed", lambda m: m != "peft")
    assert main(["train", "recipes/train/stage1_tiny.yaml"]) == 2
    assert "datagen train needs the 'train' extra (missing: peft): pip install 'datagen[train]'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --help works without the extra
        main(["train", "--help"])
    assert e.value.code == 0


BLOCKER = """
import sys, importlib.abc
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] in BLOCKED else _find_spec(n, *a)
from datagen.cli import main
rc = main(sys.argv[2:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(rc)
"""


def test_the_core_runs_a_recipe_with_every_optional_package_blocked(tmp_path):
    """Fast stand-in for tests/test_core_install.py: the optional packages cannot be imported, and a
    recipe with fetch, quality, dedup, synthesis, exports and shards still runs."""
    recipe = _recipe(tmp_path, "output: {exports: [llava, mplug_owl]}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(OPTIONAL), "run", str(recipe), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((tmp_path / "o" / "stage1").glob("*.tar")) and list((tmp_path / "o" / "stage2").glob("*.tar"))
    assert (tmp_path / "o" / "report.html").stat().st_size > 10_000 and "report: " in r.stdout  # report in the core
    # and a recipe that needs one of them stops with the extra named
    r = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(OPTIONAL), "run", str(recipe), "--out",
                        str(tmp_path / "o2"), "--set", "ocr={}"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "pip install 'datagen[ocr]'" in r.stderr, r.stderr


def test_a_run_without_model_steps_never_imports_torch_even_when_installed(tmp_path):
    """torch is installed here, and a recipe with no CLIP, OCR or trainer step must still not import it
    in the driver: `import webdataset` pulls torch in when it is installed (webdataset.pytorch), which made
    every run's report step cost 1.3 s and ~600 MB more."""
    assert importlib.util.find_spec("torch") is not None
    recipe = _recipe(tmp_path, "output: {exports: [llava, mplug_owl]}")
    script = ("import sys\nfrom datagen.cli import main\nrc = main(sys.argv[1:])\n"
              "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'transformers', "
              "'peft'}))\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", script, "run", str(recipe), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "o" / "report.html").exists()
    assert "HEAVY []" in r.stdout, r.stdout[-500:]
