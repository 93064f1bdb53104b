"""filters.caption: junk alt-text patterns and language ID, before any download (COYO and LAION layouts)."""

import pyarrow.parquet as pq
import pytest

from test_filters_meta import _run, coyo_table, fetched, laion_table, recipe, server  # noqa: F401 - fixture


def test_junk_captions_and_languages_are_dropped_before_fetching(tmp_path, server):  # noqa: F811
    t = coyo_table(server)
    captions = t.column("text").to_pylist()
    captions[1] = "IMG_0231.jpg"
    captions[2] = "Young woman smiling in a park - stock photo"
    captions[3] = "Click to enlarge"
    captions[4] = "一只黑色的猫坐在窗台上晒太阳"
    captions[6] = "Une voiture rouge garée devant une vieille maison en pierre"
    t = t.set_column(t.column_names.index("text"), "text", [captions])
    pq.write_table(t, tmp_path / "t.parquet")
    path = recipe(tmp_path, "coyo", [{"column": "nsfw_score_opennsfw2", "op": "<", "value": 0.5}],
                  caption={"languages": ["en", "zh"]})
    state, manifest, rejects = _run(tmp_path, path)
    assert [s.name for s in state.steps][:4] == ["source-coyo", "meta_filter", "caption_rules", "fetch"]
    assert fetched(server) == {0, 4, 5, 7}
    assert {r["key"]: r["reason"] for r in rejects} == {
        "coyo_4001": "caption_junk_file_name",
        "coyo_4002": "caption_junk_stock_photo",
        "coyo_4003": "meta_nsfw_score_opennsfw2",  # its caption is junk too: meta_filter runs first
        "coyo_4006": "caption_lang",
    }
    assert manifest["counts"]["pairs"] == {"in": 8, "kept": 4, "rejected": 4, "reconciled": True}
    kept = pq.read_table(state.pair_parts[1][1].kept, columns=["key", "caption_lang"]).to_pylist()
    assert {"key": "coyo_4004", "caption_lang": "zh"} in kept
    langs = manifest["steps"][2]["stats"]["languages"]
    assert langs["fr"] == 1 and langs["zh"] == 1 and langs["en"] == 3


def test_no_language_list_keeps_every_language_and_records_it(ctx):
    from datagen.filters.caption import CaptionRulesConfig, CaptionRulesStep
    from datagen.core.records import pairs_table

    step = CaptionRulesStep(CaptionRulesConfig(junk_patterns={"shouting": r"^[A-Z ]+$"}), ctx)
    out = step.process(pairs_table([{"key": "a", "caption": "Une voiture rouge garée devant la maison"},
                                    {"key": "b", "caption": "BUY NOW"}, {"key": "c", "caption": "1234"},
                                    {"key": "d", "caption": "IMG_0231.jpg"}]))
    assert out.kept.column("key").to_pylist() == ["a", "c", "d"], "defaults are replaced, not extended"
    assert out.kept.column("caption_lang").to_pylist()[:2] == ["fr", None], "no letters: no language"
    assert out.rejects.column("reason").to_pylist() == ["caption_junk_shouting"]


def test_a_bad_pattern_is_a_config_error():
    from pydantic import ValidationError

    from datagen.filters.caption import CaptionRulesConfig

    with pytest.raises(ValidationError, match="'x' is not a valid regular expression"):
        CaptionRulesConfig(junk_patterns={"x": "(unclosed"})
    with pytest.raises(ValidationError, match="becomes a reason code"):
        CaptionRulesConfig(junk_patterns={"bad name": "a"})
