"""Whole recipes through the CLI with the external services as real HTTP servers on 127.0.0.1:
LLM generation (OpenAI-compatible) and DeepL translation, including a quota stop and resume."""

import io
import json
import tarfile

import pytest
import yaml
from PIL import Image

from datagen.cli import main
from servers import LocalServer
from test_llm import ScriptedLLM
from test_llm_client import SECRET
from test_translate_support import GOOD, FakeDeepL

pytestmark = pytest.mark.slow


def stage2_rows(out, split):
    rows = []
    for tar in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar) as tf:
            rows += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    return rows


@pytest.fixture
def coco_dir(tmp_path):
    (tmp_path / "images").mkdir()
    images, caps, anns = [], [], []
    for i, tag in enumerate(["a", "b", "c"], start=1):
        buf = io.BytesIO()
        Image.new("RGB", (640, 480), (40 * i, 120, 200)).save(buf, "JPEG")
        (tmp_path / "images" / f"{i:012d}.jpg").write_bytes(buf.getvalue())
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480})
        caps += [{"id": 10 * i, "image_id": i, "caption": f"ROW-{tag} A man flies a red kite on the beach."},
                 {"id": 10 * i + 1, "image_id": i, "caption": "Someone with a kite by the sea."}]
        anns += [{"id": 10 * i, "image_id": i, "category_id": 1, "bbox": [64, 96, 256, 288], "iscrowd": 0},
                 {"id": 10 * i + 1, "image_id": i, "category_id": 38, "bbox": [320, 24, 64, 48], "iscrowd": 0,
                  "attributes": ["red"]}]
    cats = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 38, "name": "kite", "supercategory": "sports"}]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path


def test_llm_generation_through_the_pipeline_and_cached_rerun(coco_dir, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with LocalServer() as srv:
        llm = ScriptedLLM()
        srv.route("/v1/chat/completions", llm)
        recipe = {
            "name": "llm",
            "sources": [{"name": "coco", "kind": "coco", "captions": "captions.json", "instances": "instances.json",
                         "images": "images"}],
            "fetch": {"allow_local_files": True},
            "filters": {"quality": {"min_side": 10}},
            "llm_generate": {"base_url": srv.url("/v1"), "model": "m", "concurrency": 4,
                             "tasks": ["conversation", "negative"]},
        }
        path = coco_dir / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = coco_dir / "out"
        assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
        assert srv.count("/v1") == 0 and "ROW-a" in capsys.readouterr().out, "dry run prints prompts, sends nothing"
        assert main(["run", str(path), "--out", str(out)]) == 0
        sent = srv.count("/v1")
        assert sent == 6, "3 images x 2 tasks, and the dry run left no checkpoint to reuse"
        assert main(["run", str(path), "--out", str(out), "--fresh"]) == 0
        assert srv.count("/v1") == sent, "recomputed steps take answers from the request cache"
    rows = stage2_rows(out, "stage2")
    assert len(rows) == 3
    gens = {t["generator"] for r in rows for c in r["conversations"] for t in c["turns"]}
    assert gens == {"llm:m"}
    negatives = [t for r in rows for c in r["conversations"] for t in c["turns"] if t["polarity"] == "negative"]
    assert negatives and all(r["conversations"][0]["turns"][0]["content"].startswith("<image>\n") for r in rows)
    manifest = (out / "manifest.json").read_text()
    assert SECRET not in manifest and all(SECRET not in p.read_bytes().decode("latin-1")
                                          for p in out.rglob("*") if p.is_file())


def test_deepl_translation_quota_stop_then_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPL_AUTH_KEY", "fake-key:fx")
    pairs = [(q, a) for q, a in [("Is there a dog in the image?", "No, there is no dog in the image."),
                                 ("Where is the remote control?", "It is next to the bed."),
                                 ("Is there an orange on the table?", "Yes, there is an orange on the table.")]]
    assert all(q in GOOD and a in GOOD for q, a in pairs)
    (tmp_path / "text.jsonl").write_text("\n".join(json.dumps({"instruction": q, "output": a}) for q, a in pairs))
    with LocalServer() as srv:
        fake = FakeDeepL(srv, "fake-key:fx", quota_chars=80)
        recipe = {
            "name": "mt",
            "sources": [{"name": "text", "kind": "instructions", "path": "text.jsonl", "lang": "en"}],
            "translate": {"backend": "deepl", "share": 1.0, "by_generator": {},
                          "deepl": {"server_url": srv.url(), "batch_size": 2, "glossary": False}},
        }
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = tmp_path / "out"
        assert main(["run", str(path), "--out", str(out)]) == 4
        err = capsys.readouterr().err
        assert "quota" in err.lower() and "fake-key" not in err
        assert not (out / "manifest.json").exists() and not list(out.rglob("*.partial"))
        paid = list(fake.texts)
        assert 0 < len(paid) < 6
        fake.quota_chars = None
        assert main(["run", str(path), "--out", str(out)]) == 0
        assert not set(paid) & set(fake.texts[len(paid):]), "the rerun pays only for what was missing"
    rows = stage2_rows(out, "stage2_text")
    assert len(rows) == 3
    for r in rows:
        by_lang = {c["lang"]: c for c in r["conversations"]}
        assert set(by_lang) == {"en", "zh"}
        assert by_lang["zh"]["parent_id"] == by_lang["en"]["id"]
    zh = {c["turns"][0]["content"] for r in rows for c in r["conversations"] if c["lang"] == "zh"}
    assert {GOOD[q] for q, _ in pairs} == zh
    manifest = json.loads((out / "manifest.json").read_text())
    stats = next(s for s in manifest["steps"] if s["name"] == "translate")["stats"]
    assert stats["deepl_billed_characters"] > 0
