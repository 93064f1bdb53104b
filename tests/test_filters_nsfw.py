"""filters.nsfw: NudeNet on the fetched pictures (LAION layout, loopback server)."""

import hashlib
import importlib.metadata
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datagen.filters.nsfw import NsfwStep  # noqa: E402
from test_filters_meta import COLORS, _run, fetched, laion_table, recipe, server  # noqa: E402,F401 - fixture


def test_the_shipped_model_scores_plain_pictures_as_safe_and_is_recorded(tmp_path, server):  # noqa: F811
    nudenet = pytest.importorskip("nudenet", reason="needs the nsfw extra: pip install 'datagen[nsfw]'")
    pq.write_table(laion_table(server), tmp_path / "t.parquet")
    state, manifest, rejects = _run(tmp_path, recipe(tmp_path, "laion", [], nsfw={"threshold": 0.5}))
    assert [s.name for s in state.steps][:4] == ["source-laion", "fetch", "quality", "nsfw"]
    assert fetched(server) == set(range(len(COLORS)))
    scores = [s for _, p in state.pair_parts for s in pq.read_table(p.kept, columns=["nsfw_score"])[0].to_pylist()]
    assert len(scores) == 8 and all(s == 0.0 for s in scores)
    st = next(s for s in manifest["steps"] if s["name"] == "nsfw")["stats"]
    shipped = hashlib.sha256((Path(nudenet.__file__).parent / "320n.onnx").read_bytes())
    assert st["model"] == "nudenet" and st["file"] == "320n.onnx" and st["sha256"] == shipped.hexdigest()
    assert st["version"] == importlib.metadata.version("nudenet")
    assert st["scored"] == 8 and st["threshold"] == 0.5
    assert manifest["counts"]["pairs"]["reconciled"] and not rejects


def test_detections_over_the_threshold_reject_with_their_class(tmp_path, server, monkeypatch):  # noqa: F811
    """The detector's answers are stubbed (no test pictures of nudity): the step's arithmetic and plumbing."""
    flagged = {"red": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.81, "box": [0, 0, 5, 5]}],
               "blue": [{"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 5, 5]},  # not an unsafe class
                        {"class": "BUTTOCKS_EXPOSED", "score": 0.31, "box": [0, 0, 5, 5]}],  # under the threshold
               "black": [{"class": "MALE_GENITALIA_EXPOSED", "score": 0.5, "box": [0, 0, 5, 5]}]}
    rgb = {"red": (254, 0, 0), "blue": (0, 0, 254), "black": (0, 0, 0)}

    def fake(self, arrays):
        out = []
        for a in arrays:
            px = tuple(int(v) for v in a[5, 5, :3])
            name = next((n for n, c in rgb.items() if all(abs(x - y) <= 3 for x, y in zip(px, c))), None)
            out.append(flagged.get(name, []))
        return out

    monkeypatch.setattr(NsfwStep, "detect", fake)
    pq.write_table(laion_table(server), tmp_path / "t.parquet")
    state, manifest, rejects = _run(tmp_path, recipe(tmp_path, "laion", [], nsfw={"threshold": 0.5}))
    assert server.count("/img/") == 8, "the pictures are judged after fetching"
    by_key = {r["key"]: (r["reason"], r["detail"]) for r in rejects}
    assert by_key == {"laion_000000000": ("nsfw_detected", "FEMALE_BREAST_EXPOSED 0.810 >= 0.5"),
                      "laion_000000004": ("nsfw_detected", "MALE_GENITALIA_EXPOSED 0.500 >= 0.5")}
    kept = {k: s for _, p in state.pair_parts
            for k, s in zip(*pq.read_table(p.kept, columns=["key", "nsfw_score"]).to_pydict().values())}
    assert kept["laion_000000002"] == pytest.approx(0.31) and kept["laion_000000001"] == 0.0
    assert manifest["counts"]["pairs"] == {"in": 8, "kept": 6, "rejected": 2, "reconciled": True}


def test_a_missing_package_fails_before_any_work(tmp_path, monkeypatch):
    import builtins

    from datagen.filters.nsfw import NsfwUnavailable
    from datagen.core.pipeline import preflight
    from datagen.recipe import load_recipe

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError("gone"))
                        if name == "nudenet" else real_import(name, *a, **k))
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "n", "sources": [{"name": "t", "kind": "laion",
                                                                          "path": "t.parquet"}],
                                                "filters": {"nsfw": {}}}))
    r, _ = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(NsfwUnavailable, match=r"pip install 'datagen\[nsfw\]'"):
        preflight(r, None)
