"""filters.meta: thresholds over the source's own columns, applied before any download.

The tables use the real LAION-2B-en and COYO-700M column layouts; the images are
served by a loopback server, so the test counts which rows were requested."""

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.core.pipeline import run
from datagen.recipe import load_recipe
from datagen.sinks.manifest import finish
from servers import LocalServer, Reply

COLORS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange"]


def _jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (240, 220), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def server():
    with LocalServer() as srv:
        srv.route("/img/", lambda req: Reply(200, _jpeg(COLORS[int(req.path.split("/")[-1].split(".")[0])]),
                                             {"Content-Type": "image/jpeg"}))
        yield srv


def laion_table(srv) -> pa.Table:
    """LAION-2B-en columns: URL TEXT WIDTH HEIGHT similarity NSFW LICENSE punsafe pwatermark hash."""
    n = len(COLORS)
    return pa.table({
        "URL": [srv.url(f"/img/{i}.jpg") for i in range(n)],
        "TEXT": [f"a {c} square on a plain background" for c in COLORS],
        "WIDTH": pa.array([240] * n, pa.int64()), "HEIGHT": pa.array([220] * n, pa.int64()),
        "similarity": [0.31, 0.33, 0.29, 0.35, 0.30, 0.32, 0.34, 0.30],
        "NSFW": ["UNLIKELY", "UNLIKELY", "NSFW", "UNLIKELY", "UNSURE", "UNLIKELY", "UNLIKELY", "UNLIKELY"],
        "LICENSE": ["?"] * n,
        # row 1 unsafe, row 6 has no score (NaN, as in the release), row 3 watermarked
        "punsafe": [0.01, 0.62, 0.05, 0.02, 0.08, 0.03, math.nan, 0.04],
        "pwatermark": [0.10, 0.05, 0.20, 0.91, 0.30, 0.12, 0.1, 0.2],
        "hash": pa.array(list(range(1000, 1000 + n)), pa.int64()),
    })


def coyo_table(srv) -> pa.Table:
    """COYO-700M's columns, as released."""
    n = len(COLORS)
    f = lambda vals: pa.array(vals, pa.float64())  # noqa: E731
    return pa.table({
        "id": pa.array(list(range(4000, 4000 + n)), pa.int64()),
        "url": [srv.url(f"/img/{i}.jpg") for i in range(n)],
        "text": [f"a {c} square on a plain background" for c in COLORS],
        "width": pa.array([240] * n, pa.int64()), "height": pa.array([220] * n, pa.int64()),
        "image_phash": [f"{i:016x}" for i in range(n)],
        "text_length": pa.array([30] * n, pa.int64()), "word_count": pa.array([6] * n, pa.int64()),
        "num_tokens_bert": pa.array([8] * n, pa.int64()), "num_tokens_gpt": pa.array([8] * n, pa.int64()),
        "num_faces": pa.array([0] * n, pa.int64()),
        "clip_similarity_vitb32": f([0.31, 0.30, 0.22, 0.33, 0.29, 0.31, 0.30, 0.32]),
        "clip_similarity_vitl14": f([0.28, 0.27, 0.20, 0.30, 0.26, 0.28, 0.27, 0.29]),
        "nsfw_score_opennsfw2": f([0.01, 0.02, 0.03, 0.70, 0.02, 0.01, 0.02, 0.01]),
        "nsfw_score_gantman": f([0.01] * n),
        "watermark_score": f([0.1, 0.2, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1]),
        "aesthetic_score_laion_v2": f([5.2, 4.1, 5.5, 5.0, 5.9, 6.1, 4.9, 5.3]),
    })


def recipe(tmp_path, kind, rules, **extra):
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "m", "sources": [{"name": kind, "kind": kind, "path": "t.parquet"}],
        "fetch": {"allow_loopback": True, "retries": 0, "timeout_s": 5},
        "filters": {"meta": rules, "quality": {"min_side": 10}, **extra}, "stage2": {"sources": []},
        "executor": {"shard_rows": 3}}))
    return tmp_path / "r.yaml"


def _run(tmp_path, path):
    r, raw = load_recipe(path)
    state = run(r, path.parent, tmp_path / "out")
    manifest = finish(state, raw, path)
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    return state, manifest, rejects


def fetched(srv) -> set[int]:
    return {int(r.path.split("/")[-1].split(".")[0]) for r in srv.requests if r.path.startswith("/img/")}


def test_laion_rules_drop_rows_before_they_are_fetched(tmp_path, server):
    pq.write_table(laion_table(server), tmp_path / "t.parquet")
    path = recipe(tmp_path, "laion", [
        {"column": "punsafe", "op": "<", "value": 0.1},
        {"column": "pwatermark", "op": "<", "value": 0.8},
        {"column": "NSFW", "op": "!=", "value": "NSFW"},
        {"column": "similarity", "op": ">=", "value": 0.30},
    ])
    state, manifest, rejects = _run(tmp_path, path)
    assert fetched(server) == {0, 4, 5, 7}, "rejected rows are never requested"
    assert server.count("/img/") == 4
    by_key = {r["key"]: (r["step"], r["reason"]) for r in rejects}
    assert by_key == {
        "laion_000000001": ("meta_filter", "meta_punsafe"),
        "laion_000000002": ("meta_filter", "meta_NSFW"),  # punsafe 0.05 passes; the NSFW tag does not
        "laion_000000003": ("meta_filter", "meta_pwatermark"),
        "laion_000000006": ("meta_filter", "meta_punsafe_missing"),
    }
    detail = next(r["detail"] for r in rejects if r["reason"] == "meta_punsafe")
    assert "punsafe = 0.62 fails punsafe < 0.1" in detail
    names = [s.name for s in state.steps]
    assert names[:3] == ["source-laion", "meta_filter", "fetch"]
    meta_step = state.steps[1]
    assert (meta_step.rows_in, meta_step.kept, meta_step.rejected) == (8, 4, 4)
    assert state.steps[2].rows_in == 4
    assert manifest["counts"]["pairs"] == {"in": 8, "kept": 4, "rejected": 4, "reconciled": True}
    assert manifest["counts"]["stage1_samples"] == 4


def test_coyo_rules_and_the_missing_policy(tmp_path, server):
    pq.write_table(coyo_table(server), tmp_path / "t.parquet")
    path = recipe(tmp_path, "coyo", [
        {"column": "nsfw_score_opennsfw2", "op": "<", "value": 0.5},
        {"column": "watermark_score", "op": "<", "value": 0.5},
        {"column": "aesthetic_score_laion_v2", "op": ">=", "value": 5.0},
        {"column": "clip_similarity_vitb32", "op": ">=", "value": 0.28},
    ])
    state, manifest, rejects = _run(tmp_path, path)
    assert fetched(server) == {0, 5, 7}
    assert {r["key"]: r["reason"] for r in rejects} == {
        "coyo_4001": "meta_aesthetic_score_laion_v2",
        "coyo_4002": "meta_clip_similarity_vitb32",
        "coyo_4003": "meta_nsfw_score_opennsfw2",
        "coyo_4004": "meta_watermark_score",
        "coyo_4006": "meta_aesthetic_score_laion_v2",
    }
    assert manifest["counts"]["pairs"] == {"in": 8, "kept": 3, "rejected": 5, "reconciled": True}
    assert manifest["steps"][1]["stats"]["rejected"]["meta_aesthetic_score_laion_v2"] == 2


def test_missing_keep_and_width_from_the_mapped_columns(ctx):
    from datagen.filters.meta import MetaFilterConfig, MetaFilterStep, MetaRule
    from datagen.core.records import pairs_table

    t = pairs_table([
        {"key": "a", "source": "s", "width": 100, "height": 300, "meta": json.dumps({"punsafe": None})},
        {"key": "b", "source": "s", "width": 400, "height": 300, "meta": json.dumps({"punsafe": 0.5})},
        {"key": "c", "source": "s", "width": 400, "height": 300, "meta": json.dumps({"punsafe": None})},
    ])
    step = MetaFilterStep(MetaFilterConfig(rules=[
        MetaRule(column="punsafe", op="<", value=0.1, missing="keep"),
        MetaRule(column="width", op=">=", value=200)]), ctx)
    out = step.process(t)
    assert out.kept.column("key").to_pylist() == ["c"]
    assert dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("reason").to_pylist())) == {
        "a": "meta_width", "b": "meta_punsafe"}


def test_an_unknown_column_is_a_clear_error_unless_the_rule_names_its_sources(ctx):
    from datagen.filters.meta import MetaFilterConfig, MetaFilterStep, MetaRule
    from datagen.core.records import pairs_table

    t = pairs_table([{"key": "cc_1", "source": "cc", "meta": json.dumps({"file": "a.tsv", "line": 1})}])
    step = MetaFilterStep(MetaFilterConfig(rules=[MetaRule(column="pUnsafe", op="<", value=0.1)]), ctx)
    with pytest.raises(ValueError, match=r"pUnsafe.*'cc_1'.*\['file', 'line'\]"):
        step.process(t)
    scoped = MetaFilterStep(MetaFilterConfig(rules=[MetaRule(column="punsafe", op="<", value=0.1,
                                                             sources=["laion"])]), ctx)
    assert scoped.process(t).kept.num_rows == 1


def test_rule_values_are_checked_against_the_op():
    from pydantic import ValidationError

    from datagen.filters.meta import MetaRule

    with pytest.raises(ValidationError, match="needs a list"):
        MetaRule(column="NSFW", op="in", value="NSFW")
    assert MetaRule(column="NSFW", op="not_in", value=["NSFW", "UNSURE"])
