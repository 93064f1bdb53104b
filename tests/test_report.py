"""report.html and the viewer's data, without a browser (tests/test_browser.py renders both in Chromium)."""

import json
import re
from collections import Counter
from html.parser import HTMLParser

import polars as pl
import pytest

from datagen.cli import main
from datagen.report import families_html, clip_section, read_rejects, rejects_html
from datagen.sinks.export import iter_samples
from datagen.sinks.manifest import summary, template_items_line
from datagen.synth.checker import Checker
from datagen.view import Catalog

pytestmark = pytest.mark.slow


class Page(HTMLParser):
    """Every tag with its attributes, and the text of each table (by id) as rows of cells."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.tables, self._table, self._row, self._cell = [], {}, None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def report(demo_run):
    out, _ = demo_run
    text = (out / "report.html").read_text()
    return out, json.loads((out / "manifest.json").read_text()), text, Page(text)


def test_the_run_writes_the_report_and_the_summary_names_it(demo_run):
    out, printed = demo_run
    assert f"report: {out / 'report.html'}" in printed
    assert (out / "report.html").stat().st_size > 10_000


def test_report_is_self_contained(report):
    _, _, text, page = report
    # Nothing is loaded from anywhere: every src is a data: URI, no link/script/iframe/object, no CSS url().
    assert not [t for t, _ in page.tags if t in ("link", "script", "iframe", "object", "embed", "base")]
    srcs = [a["src"] for _, a in page.tags if "src" in a]
    assert len(srcs) >= 6 and all(s.startswith("data:") for s in srcs)
    hrefs = [a["href"] for _, a in page.tags if "href" in a]
    assert all(h.startswith("#") for h in hrefs)
    assert not re.search(r"url\(|@import", text)
    # No http(s) URL anywhere outside the data: URIs (which are base64 and cannot hold one readably).
    assert not re.findall(r"https?://", re.sub(r'"data:[^"]*"', '""', text))


def test_step_funnel_is_the_manifest_steps(report):
    _, manifest, _, page = report
    rows = page.tables["funnel"][1:]
    assert [(r[0], int(r[2]), int(r[3]), int(r[4])) for r in rows] == \
        [(s["name"], s["in"], s["kept"], s["rejected"]) for s in manifest["steps"]]


def test_every_family_by_language_and_polarity_without_cut_off(report):
    out, manifest, _, page = report
    turns = Counter()
    for split in ("stage2", "stage2_text"):
        for s in iter_samples(out, split):
            for conv in s["json"]["conversations"]:
                for t in conv["turns"]:
                    if t["role"] == "assistant":
                        turns[(t["task"], conv["lang"], t["polarity"])] += 1
    table = page.tables["families"]
    head, rows = table[0], table[1:]
    assert [r[0] for r in rows] == sorted({t for t, _, _ in turns})
    for r in rows:
        for col, cell in zip(head[1:-3], r[1:-3]):
            lang, pol = col.split()
            assert int(cell) == turns[(r[0], lang, pol)], (r[0], col)
    # The yes share per family is the checker's, read from the answers' text.
    rows2 = [s["json"] for s in iter_samples(out, "stage2")]
    expected = Checker().yes_shares(rows2)["family"]
    shares = {r[0]: float(r[-1]) for r in rows if r[-1]}
    assert len(shares) >= 6 and shares == pytest.approx(expected, abs=0.005)


def test_polarity_in_the_report_agrees_with_the_summary(report):
    _, manifest, text, page = report
    line = template_items_line(manifest)
    assert line in summary(manifest) and line in text
    # The shards' template turns are exactly the summary's template items; text-only turns are their own row.
    synth = next(s["stats"] for s in manifest["steps"] if s["name"] == "synthesize")
    origins = {r[0]: r[1:] for r in page.tables["origins"][1:]}
    assert [int(x) for x in origins["template"][:3]] == [synth["polarity"].get(p, 0) for p in ("positive", "negative", "neutral")]
    assert int(origins["source"][2]) == manifest["counts"]["text_only"]["kept"]


def test_rejects_group_duplicates_per_source(tmp_path):
    keys = [f"laion_{i}" for i in range(50)]
    pl.DataFrame({"key": keys + ["cc_1", "coco_1"], "source": ["laion"] * 50 + ["cc", "coco"],
                  "step": ["dedup"] * 50 + ["fetch", "synthesize"],
                  "reason": [f"duplicate_of:{k}x" for k in keys] + ["http_404", "no_objects"],
                  "detail": [None] * 52, "url": [None] * 52}).write_parquet(tmp_path / "rejects.parquet")
    df = read_rejects(tmp_path)
    page = Page(rejects_html(df, "row"))
    rows = next(iter(page.tables.values()))
    assert rows[0] == ["reason", "cc", "laion", "total"]
    assert rows[1:] == [["duplicate_of:*", "0", "50", "50"], ["http_404", "1", "0", "1"]]
    items = next(iter(Page(rejects_html(df, "item")).tables.values()))
    assert items[1:] == [["no_objects", "1", "1"]]


def test_families_table_has_no_cut_off():
    turns = Counter({(f"family_{i:02d}", lang, "positive"): i + 1 for i in range(32) for lang in ("en", "zh")})
    rows = next(iter(Page(families_html(turns, Counter({"family_00": 3}), Counter({"family_00": 4}))).tables.values()))[1:]
    assert len(rows) == 32 and rows[31][0] == "family_31" and rows[31][-3] == str(2 * 32)
    assert rows[0][-2:] == ["4", "0.75"] and rows[1][-2:] == ["", ""]


def test_clip_banner_only_for_meaningless_scores_and_threshold_line(report):
    _, manifest, text, _ = report
    assert 'id="clip-warning"' in text and "UNTRAINED" in text  # the demo runs offline: untrained fallback
    trained = {"steps": [{"name": "clip", "stats": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                                                    "untrained_fallback": False, "scores_meaningful": True}},
                         {"name": "clip_threshold", "stats": {"cutoff": 0.28, "min_score": 0.28}}]}
    html = clip_section(trained, [0.3, 0.31, 0.35], [0.1, 0.2])
    assert "clip-warning" not in html and html.count("<img") == 1
    import base64

    svg = base64.b64decode(html.split("base64,")[1].split('"')[0]).decode()
    assert "threshold 0.280 (applied)" in svg and "rejected below the threshold (2)" in svg
    random = {"steps": [{"name": "clip", "stats": {"untrained_fallback": False, "scores_meaningful": False}}]}
    assert "random weights" in clip_section(random, [0.1], [])


def test_gallery_shows_both_languages_and_marks_negatives(report):
    _, _, text, page = report
    cards = re.findall(r'<div class="card[^"]*">.*?</div></div></div>', text)
    assert len(cards) >= 6
    assert any('data-lang="en"' in c and 'data-lang="zh"' in c for c in cards)
    assert "has-negative" in text and 'class="tag negative"' in text
    thumbs = [a["src"] for t, a in page.tags if t == "img" and a.get("class") == "thumb"]
    assert thumbs and all(s.startswith("data:image/jpeg;base64,") for s in thumbs)


def test_report_and_view_refuse_a_missing_or_unfinished_folder(tmp_path, capsys):
    assert main(["view", "/no/such/dir"]) == 2
    assert "/no/such/dir: no such folder" in capsys.readouterr().err
    (tmp_path / "_run").mkdir()
    for cmd in ("view", "report"):
        assert main([cmd, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "not a finished datagen run (no manifest.json)" in err and "still writing" in err


def test_viewer_catalog_filters_and_details(demo_run):
    out, _ = demo_run
    cat = Catalog(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert cat.meta()["splits"] == {"stage1": manifest["counts"]["stage1_samples"],
                                    "stage2": manifest["counts"]["stage2_samples"],
                                    "stage2_text": manifest["counts"]["stage2_text_samples"]}
    everything = cat.page("stage2", size=100)
    counting = cat.page("stage2", task="counting", size=100)
    assert 0 < counting["total"] < everything["total"]
    assert all(any(t["task"] == "counting" for t in c["turns"]) for i in counting["items"] for c in i["conversations"])
    zh = cat.page("stage2", lang="zh", polarity="negative", size=100)
    assert zh["items"] and all(c["lang"] == "zh" for i in zh["items"] for c in i["conversations"])
    assert cat.page("stage1", lang="zh", size=100)["total"] == manifest["counts"]["stage1_per_source"]["wukong"]
    # A kept sample's details list the duplicate that was dropped in its favour.
    dup = pl.read_parquet(out / "rejects.parquet").filter(pl.col("reason").str.starts_with("duplicate_of:")).row(0, named=True)
    kept_key = dup["reason"].split(":", 1)[1]
    sid = next(s.id for s in cat.samples if s.split == "stage1" and s.key == kept_key)
    detail = cat.detail(sid)
    assert dup["key"] in [r["key"] for r in detail["rejects"]] and "clip_score" in detail["stats"]
    data, ctype = cat.image(sid, "jpg")
    assert ctype == "image/jpeg" and data[:3] == b"\xff\xd8\xff"


def test_long_splits_are_cut_and_say_so(demo_run, tmp_path):
    out, _ = demo_run
    cat = Catalog(out, max_samples=5)
    meta = cat.meta()
    assert meta["splits"] == {"stage1": 5, "stage2": 5, "stage2_text": 5}
    assert sum("only the first 5 samples of" in w for w in meta["warnings"]) == 3
    from datagen.report import read_shards

    facts = read_shards(out, 5)
    assert facts.cut == {"stage1", "stage2", "stage2_text"} and len(facts.caption_chars) == 5


def test_datagen_view_prints_its_url_and_serves(demo_run):
    """The command as a user runs it: --port 0 picks a free port, the printed URL answers on 127.0.0.1."""
    import os
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    out, _ = demo_run
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "view", str(out), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy: 127.0.0.1 only
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url and int(url.group(1)) > 0, line
        with direct.open(url.group(0) + "api/meta", timeout=30) as r:
            assert json.loads(r.read())["name"] == "demo"
        with direct.open(url.group(0), timeout=30) as r:
            assert b'id="samples"' in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_view_on_a_busy_port_says_so(demo_run, capsys):
    import socket

    out, _ = demo_run
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["view", str(out), "--port", str(busy.getsockname()[1]), "--max-samples", "3"]) == 2
    assert "cannot serve on 127.0.0.1:" in capsys.readouterr().err


@pytest.mark.parametrize("n", [7, 3000, 50_000])
def test_plots_laid_out_with_fixed_margins_keep_every_label_inside_the_figure(n, monkeypatch):
    """The histograms are drawn once with margins of their own (not bbox_inches="tight", which draws twice):
    every tick label, axis label and legend entry must still lie inside the figure, from a handful of
    samples to the report's cap (50,000: five-digit counts on the y axis)."""
    import random

    import matplotlib.text
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from datagen import report

    figs = []
    real = report._svg

    def keep(fig, margins=None):
        figs.append((fig, margins))
        return real(fig, margins)

    monkeypatch.setattr(report, "_svg", keep)
    rng = random.Random(n)
    values = [rng.choice([10, 20, 30]) for _ in range(n)]  # a few full bins: the largest counts
    report.plot_hist({"width": values, "height": [v * 30 for v in values]}, "pixels")
    report.plot_hist({"caption": values}, "caption length (characters)")
    report.plot_clip([0.3] * n, [0.1] * n, 0.28, "threshold 0.28")
    assert len(figs) == 3 and all(m is not None for _, m in figs)
    for fig, _ in figs:
        canvas = FigureCanvasAgg(fig)  # pyplot took the closed figure's own canvas away
        canvas.draw()
        renderer = canvas.get_renderer()
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible()]
        assert {"pixels", "pairs", "caption length (characters)"} & set(texts)
        # what bbox_inches="tight" would have cropped to: everything drawn, in inches
        drawn, (w, h) = fig.get_tightbbox(renderer), fig.get_size_inches()
        assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= w and drawn.y1 <= h, (texts, drawn, (w, h))
