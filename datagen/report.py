"""``datagen report OUT``: one self-contained ``OUT/report.html`` about a finished run.

Reads only the run's outputs (manifest, rejects.parquet, shards), so it works on any finished
run, also one copied from a cluster. Everything is inline: plots are SVG and thumbnails JPEG,
both as ``data:`` URIs, the style sheet is in the page, and there is no script, so the file
opens anywhere without a network and never loads anything.

Counts that the summary also prints come from the manifest through the same functions
(``datagen.sinks.manifest``), so the two never disagree. Per-sample figures (families,
histograms, gallery) come from the shards: at most ``max_samples`` samples per split are read,
and the page says when the limit cut a split short. At the end of ``datagen run`` the stage-1 figures
come from the sink instead, which gathered them from the same samples as it wrote them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from datagen.sinks.bucket_work import FACT_FIELDS
from datagen.sinks.export import index_samples
from datagen.sinks.manifest import (ITEM_LEVEL_STEPS, REPORT_MAX_SAMPLES, reason_group_expr, summary,
                                    template_items_line)

POLARITIES = ("positive", "negative", "neutral")
COLOURS = {"positive": "#2e7d32", "negative": "#c62828", "neutral": "#757575", "kept": "#1565c0",
           "rejected": "#ef6c00"}
GALLERY_SIZE = 12
THUMB_PX = 240
_SCORE_IN_DETAIL = re.compile(r"clip_score (-?[0-9.]+) <")  # the clip steps' reject detail (filters/clip*.py)


def require_finished(out: Path) -> dict:
    """The run's manifest; a clear error when ``out`` is missing or holds no finished run."""
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such folder (expected a datagen run's output folder)")
    path = out / "manifest.json"
    if not path.exists():
        hint = " (a run is still writing here or was stopped: rerun it to finish)" if (out / "_run").is_dir() else ""
        raise FileNotFoundError(f"{out}: not a finished datagen run (no manifest.json){hint}")
    return json.loads(path.read_text())


@dataclass
class ShardFacts:
    """What the report reads from the shards."""

    read: Counter = field(default_factory=Counter)  # split -> samples read
    cut: set = field(default_factory=set)  # splits cut short by max_samples
    turns: Counter = field(default_factory=Counter)  # (task, lang, polarity) -> assistant turns
    origins: Counter = field(default_factory=Counter)  # (generator kind, polarity) -> assistant turns
    yes: Counter = field(default_factory=Counter)  # family -> "yes" answers among its yes/no answers
    yes_no: Counter = field(default_factory=Counter)  # family -> yes/no answers
    clip_kept: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    heights: list = field(default_factory=list)
    caption_chars: list = field(default_factory=list)
    gallery: list = field(default_factory=list)


def _assistant_turns(sample_json: dict):
    for conv in sample_json.get("conversations", []):
        for t in conv["turns"]:
            if t["role"] == "assistant":
                yield conv["lang"], t


def _stage1_sample(f: ShardFacts, width, height, caption_chars: int, clip_score) -> None:
    f.read["stage1"] += 1
    if clip_score is not None:
        f.clip_kept.append(float(clip_score))
    if width and height:
        f.widths.append(width)
        f.heights.append(height)
    f.caption_chars.append(caption_chars)


def read_shards(out: Path, max_samples: int, gallery_size: int = GALLERY_SIZE,
                stage1: dict | None = None) -> ShardFacts:
    """``stage1``: what the stage-1 sink gathered of its first ``max_samples`` samples as it wrote them
    (``RunState.stage1_facts``, ``datagen.sinks.bucket_work.FACT_FIELDS``): the same values, without
    reading the stage-1 shards again (3,000 samples: 0.07 s; 50,000: about 1 s)."""
    yes_no_counts = None  # the yes share read from the answers' text, as the checker reads it (imported when needed)
    f = ShardFacts()
    if stage1 is not None and stage1["limit"] == max_samples:
        for sample in zip(*(stage1[name] for name in FACT_FIELDS)):
            _stage1_sample(f, *sample)
        if stage1["cut"]:
            f.cut.add("stage1")
    else:
        for s in index_samples(out, "stage1"):
            if f.read["stage1"] >= max_samples:
                f.cut.add("stage1")
                break
            j = s.json
            _stage1_sample(f, j.get("width"), j.get("height"), len(s.txt or ""), j.get("clip_score"))
    families_shown: set[str] = set()
    for split in ("stage2", "stage2_text"):
        for s in index_samples(out, split):
            if f.read[split] >= max_samples:
                f.cut.add(split)
                break
            f.read[split] += 1
            tasks = set()
            for lang, t in _assistant_turns(s.json):
                f.turns[(t["task"], lang, t["polarity"])] += 1
                f.origins[(t["generator"].split(":")[0], t["polarity"])] += 1
                tasks.add(t["task"])
            if yes_no_counts is None:
                from datagen.synth.checker import Checker

                yes_no_counts = Checker().yes_no_counts
            yes, total = yes_no_counts([s.json])
            for (kind, name), n in total.items():
                if kind == "family":
                    f.yes[name] += yes[(kind, name)]
                    f.yes_no[name] += n
            # The gallery: image samples that show a family not shown yet, then any, up to gallery_size.
            if s.images and len(f.gallery) < gallery_size and (tasks - families_shown or len(f.gallery) < gallery_size // 2):
                families_shown |= tasks
                f.gallery.append({"key": s.key, "images": [s.read(m) for m in s.images], "json": s.json})
    return f


def read_rejects(out: Path) -> pl.DataFrame:
    """Reject counts by level (``row``, or ``item`` for conversations not made), reason group and source."""
    path = out / "rejects.parquet"
    if not path.exists():
        return pl.DataFrame(schema={"level": pl.String, "reason": pl.String, "source": pl.String, "n": pl.UInt32})
    return (pl.scan_parquet(path).select("source", "step", "reason")
            .with_columns(reason_group_expr(),
                          pl.when(pl.col("step").is_in(list(ITEM_LEVEL_STEPS))).then(pl.lit("item"))
                          .otherwise(pl.lit("row")).alias("level"),
                          pl.col("source").fill_null("?"))
            .group_by("level", "reason", "source").len("n").sort("level", "reason", "source").collect())


def rejected_clip_scores(out: Path) -> list[float]:
    path = out / "rejects.parquet"
    if not path.exists():
        return []
    details = (pl.scan_parquet(path).filter(pl.col("reason") == "clip_below_threshold").select("detail")
               .collect()["detail"].to_list())
    return [float(m.group(1)) for d in details if d and (m := _SCORE_IN_DETAIL.search(d))]


# ---------------------------------------------------------------- plots (matplotlib -> inline SVG)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "datagen", "font.size": 9})
    return plt


def warm_up() -> None:
    """Import what ``write_report`` needs (matplotlib above all: about 0.35 s), ahead of time: ``datagen run``
    has this done during its pool pass, once a worker is idle (``executor.while_waiting``), so the run's serial
    tail is shorter."""
    _plt()


def _svg(fig, margins: tuple[float, float, float, float] | None = None) -> str:
    """The figure as an SVG data URI. ``margins`` (left, bottom, right, top; inches): the figure is laid out
    with them and drawn once; without, matplotlib finds them itself (``bbox_inches="tight"``: labels of any
    length fit), drawing the figure twice, which doubled its cost (40-50 ms a plot at the end of a run)."""
    buf = io.BytesIO()
    if margins is None:
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    else:
        w, h = fig.get_size_inches()
        left, bottom, right, top = margins
        fig.subplots_adjust(left=left / w, bottom=bottom / h, right=1 - right / w, top=1 - top / h)
        fig.savefig(buf, format="svg", metadata={"Date": None})
    _plt().close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _numeric_margins(ax) -> tuple[float, float, float, float]:
    """Margins for a plot with numbers on both axes and one label each: the left one grows with the
    longest y tick label (0.08 inch a character at 9 points), the rest are fixed."""
    labels = ax.yaxis.get_major_formatter().format_ticks(ax.get_yticks())
    return 0.3 + 0.08 * max(map(len, labels), default=1), 0.46, 0.12, 0.1


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{uri}">'


def plot_families(turns: Counter) -> str | None:
    if not turns:
        return None
    plt = _plt()
    rows = sorted({(task, lang) for task, lang, _ in turns})
    fig, ax = plt.subplots(figsize=(7.5, 0.2 * len(rows) + 1.0))
    left = [0] * len(rows)
    labels = [f"{task} ({lang})" for task, lang in rows]
    for pol in POLARITIES:
        vals = [turns.get((task, lang, pol), 0) for task, lang in rows]
        ax.barh(labels, vals, left=left, color=COLOURS[pol], label=pol, height=0.75)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel("assistant turns")
    ax.set_title(f"every task family by language and polarity ({len({t for t, _ in rows})} families)")
    ax.legend(loc="lower right")
    ax.margins(y=0.005)
    return _svg(fig)


def plot_rejects(rejects: pl.DataFrame, level: str) -> str | None:
    df = rejects.filter(pl.col("level") == level)
    if not df.height:
        return None
    plt = _plt()
    totals = df.group_by("reason").agg(pl.col("n").sum()).sort(["n", "reason"], descending=[True, False])
    reasons = totals["reason"].to_list()
    sources = sorted(set(df["source"].to_list()))
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(reasons) + 1.2))
    left = [0] * len(reasons)
    for i, src in enumerate(sources):
        by = dict(df.filter(pl.col("source") == src).group_by("reason").agg(pl.col("n").sum()).iter_rows())
        vals = [by.get(r, 0) for r in reasons]
        ax.barh(reasons, vals, left=left, color=cmap(i % 10), label=src)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("rows" if level == "row" else "items")
    ax.legend(title="source", loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(fig)


def plot_clip(kept: list[float], rejected: list[float], line: float | None, line_label: str) -> str | None:
    if not kept and not rejected:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    lo, hi = min(kept + rejected + ([line] if line is not None else [])), max(kept + rejected + ([line] if line is not None else []))
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
    ax.hist([kept, rejected], bins=bins, stacked=True, color=[COLOURS["kept"], COLOURS["rejected"]],
            label=[f"kept ({len(kept)})", f"rejected below the threshold ({len(rejected)})"])
    if line is not None:
        ax.axvline(line, color="black", linestyle="--", linewidth=1.2, label=line_label)
    ax.set_xlabel("CLIP score (cosine)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return _svg(fig, _numeric_margins(ax))


def plot_hist(series: dict[str, list[float]], xlabel: str) -> str | None:
    if not any(series.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(list(series.values()), bins=25, label=list(series), alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("stage-1 samples")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(series) > 1:
        ax.legend()
    return _svg(fig, _numeric_margins(ax))


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC","Noto Sans",sans-serif;
 margin:0 auto;max-width:1180px;padding:16px 24px;color:#222;background:#fafafa}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;background:#fff}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#5c4400;padding:10px 14px;margin:10px 0;border-radius:4px;font-weight:600}
.bar{display:inline-block;height:12px;vertical-align:middle}
.plot{max-width:100%;background:#fff;border:1px solid #eee}
.row{display:flex;flex-wrap:wrap;gap:16px}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;font-size:12px;white-space:pre-wrap}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px;display:flex;gap:10px}
.card img{width:160px;height:auto;object-fit:contain;border:1px solid #eee}
.card .imgs{display:flex;flex-direction:column;gap:4px}
.convs{display:grid;grid-template-columns:1fr 1fr;gap:8px;font-size:12px;flex:1;min-width:0;max-height:360px;overflow:auto}
.turn{margin:2px 0;word-wrap:break-word}.turn.user{color:#444}.turn.assistant{color:#000}
.neg{background:#ffebee;border-left:3px solid #c62828;padding-left:4px}
.tag{font-size:10px;border-radius:3px;padding:0 4px;color:#fff;margin-right:4px}
.tag.negative{background:#c62828}.tag.positive{background:#2e7d32}.tag.neutral{background:#757575}
.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def funnel_html(steps: list[dict]) -> str:
    top = max((max(s["in"], s["kept"]) for s in steps), default=0) or 1
    rows = []
    for s in steps:
        kept_w, rej_w = 300 * s["kept"] / top, 300 * s["rejected"] / top
        bar = (f'<span class="bar" style="width:{kept_w:.1f}px;background:{COLOURS["kept"]}"></span>'
               f'<span class="bar" style="width:{rej_w:.1f}px;background:{COLOURS["rejected"]}"></span>')
        took = "reused" if s.get("reused") else f"{s.get('seconds', 0):.1f}s"
        rows.append(f'<tr><td class="l">{_e(s["name"])}</td><td class="l">{_e(s["kind"])}</td><td>{s["in"]}</td>'
                    f'<td>{s["kept"]}</td><td>{s["rejected"]}</td><td>{took}</td><td class="l">{bar}</td></tr>')
    return ('<table id="funnel"><tr><th class="l">step</th><th class="l">kind</th><th>in</th><th>kept</th>'
            '<th>rejected</th><th>time</th><th class="l">kept / rejected</th></tr>' + "".join(rows) + "</table>")


def rejects_html(rejects: pl.DataFrame, level: str) -> str:
    df = rejects.filter(pl.col("level") == level)
    if not df.height:
        return '<p class="muted">none</p>'
    sources = sorted(set(df["source"].to_list()))
    cells: dict[str, dict[str, int]] = defaultdict(dict)
    for _, reason, source, n in df.iter_rows():
        cells[reason][source] = cells[reason].get(source, 0) + n
    order = sorted(cells, key=lambda r: (-sum(cells[r].values()), r))
    rows = [[r, *[cells[r].get(s, 0) for s in sources], sum(cells[r].values())] for r in order]
    plot = plot_rejects(rejects, level)
    return (_table(["reason", *sources, "total"], rows) + (_img(plot, f"{level} rejects by reason and source") if plot else ""))


def families_html(turns: Counter, yes: Counter, yes_no: Counter) -> str:
    tasks = sorted({t for t, _, _ in turns})
    langs = sorted({lang for _, lang, _ in turns})
    head = ["task family", *[f"{lang} {pol}" for lang in langs for pol in POLARITIES], "total", "yes/no answers",
            "yes share"]
    rows = []
    for t in tasks:
        vals = [turns.get((t, lang, pol), 0) for lang in langs for pol in POLARITIES]
        n = yes_no.get(t, 0)
        rows.append([t, *vals, sum(vals), n or "", f"{yes[t] / n:.2f}" if n else ""])
    return _table(head, rows).replace("<table>", '<table id="families">', 1)


def origins_html(origins: Counter) -> str:
    kinds = sorted({k for k, _ in origins})
    rows = [[k, *[origins.get((k, p), 0) for p in POLARITIES], sum(origins.get((k, p), 0) for p in POLARITIES)]
            for k in kinds]
    return _table(["origin", *POLARITIES, "total"], rows).replace("<table>", '<table id="origins">', 1)


def _thumb(data: bytes) -> str:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _turn_html(t: dict) -> str:
    pol = t["polarity"]
    text = _e(t["content"]).replace("\n", "<br>")
    tag = f'<span class="tag {pol}">{_e(pol)}</span>' if t["role"] == "assistant" else ""
    cls = "turn " + t["role"] + (" neg" if pol == "negative" else "")
    who = "Q" if t["role"] == "user" else "A"
    return f'<div class="{cls}">{tag}<b>{who}</b> <span class="muted">[{_e(t["task"])}]</span> {text}</div>'


def gallery_html(gallery: list[dict]) -> str:
    cards = []
    for s in gallery:
        by_lang: dict[str, list[dict]] = defaultdict(list)
        for conv in s["json"].get("conversations", []):
            by_lang[conv["lang"]].append(conv)
        cols = []
        for lang in sorted(by_lang):
            turns = "".join(_turn_html(t) for conv in by_lang[lang] for t in conv["turns"])
            cols.append(f'<div class="lang" data-lang="{_e(lang)}"><b>{_e(lang)}</b>{turns}</div>')
        negative = any(t["polarity"] == "negative" for c in s["json"].get("conversations", []) for t in c["turns"])
        imgs = "".join(_img(_thumb(b), s["key"], "thumb") for b in s["images"])
        cards.append(f'<div class="card{" has-negative" if negative else ""}"><div class="imgs">{imgs}'
                     f'<div class="muted">{_e(s["key"])}<br>{_e(s["json"].get("source", ""))}'
                     f'{"<br><b style=color:#c62828>has negatives</b>" if negative else ""}</div></div>'
                     f'<div class="convs">{"".join(cols)}</div></div>')
    return '<div class="gallery" id="gallery">' + "".join(cards) + "</div>"


def clip_section(manifest: dict, kept: list[float], rejected: list[float]) -> str:
    steps = {s["name"]: s["stats"] for s in manifest["steps"]}
    clip = steps.get("clip")
    if clip is None:
        return '<p class="muted">No CLIP step in this run.</p>'
    banner = ""
    if clip.get("untrained_fallback") or clip.get("scores_meaningful") is False:
        why = ("come from a small UNTRAINED model (the weights were not available)" if clip.get("untrained_fallback")
               else "come from a model with random weights (pretrained: null)")
        banner = (f'<div class="banner" id="clip-warning">Warning: these CLIP scores {why}; they mean nothing, '
                  f"and no row was dropped for its score. Model {_e(clip.get('model'))}/{_e(clip.get('pretrained'))}."
                  "</div>")
    thr = steps.get("clip_threshold", {})
    line, label = None, ""
    if thr.get("cutoff") is not None:
        line, label = thr["cutoff"], f"threshold {thr['cutoff']:.3f} (applied)"
    elif thr.get("min_score") is not None or clip.get("min_score") is not None:
        line = thr.get("min_score", clip.get("min_score"))
        label = f"min_score {line} (not applied)"
    plot = plot_clip(kept, rejected, line, label)
    return banner + (_img(plot, "CLIP score histogram") if plot else '<p class="muted">no scores in the shards</p>')


def render(out: Path, manifest: dict, facts: ShardFacts, rejects: pl.DataFrame, rejected_scores: list[float]) -> str:
    c = manifest["counts"]
    cut = ""
    if facts.cut:
        cut = (f'<p class="banner">Only the first {", ".join(f"{facts.read[s]} samples of {s}" for s in sorted(facts.cut))}'
               " were read for the per-sample sections below.</p>")
    warnings = "".join(f'<div class="banner">WARNING: {_e(w)}</div>' for w in manifest.get("warnings", []))
    sizes = plot_hist({"width": facts.widths, "height": facts.heights}, "pixels")
    caps = plot_hist({"caption": facts.caption_chars}, "caption length (characters)")
    fam_plot = plot_families(facts.turns)
    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>datagen report: {_e(manifest['name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Run report: {_e(manifest['name'])}</h1>",
        f"<p class=\"muted\">{_e(out)} · created {_e(manifest.get('created'))} · recipe sha256 "
        f"{_e(manifest.get('recipe_sha256', '')[:16])} · datagen {_e(manifest['tools'].get('datagen'))}</p>",
        warnings, cut,
        "<h2 id=\"summary\">Summary</h2>", f"<pre>{_e(summary(manifest))}</pre>",
        "<h2 id=\"steps\">Step funnel</h2>",
        f"<p>Pairs in {c['pairs']['in']} = kept {c['pairs']['kept']} + rejected {c['pairs']['rejected']}"
        f" ({'reconciled' if c['pairs']['reconciled'] else 'DOES NOT RECONCILE'}).</p>",
        funnel_html(manifest["steps"]),
        "<h2 id=\"rejects\">Rejects by reason and source</h2>",
        "<p>Reasons with a key (<code>duplicate_of:&lt;key&gt;</code>) are grouped as <code>duplicate_of:*</code>.</p>",
        "<h3>Rows rejected</h3>", rejects_html(rejects, "row"),
        "<h3>Not turned into instructions or translations</h3>", rejects_html(rejects, "item"),
        "<h2 id=\"families\">Task families</h2>",
        f"<p>{_e(template_items_line(manifest) or 'no template items')}</p>",
        "<p>Assistant turns in the shards by origin and polarity (both languages). The <code>template</code> row "
        "counts the same items as the summary's line above; text-only sets (<code>source</code>), LLM and "
        "translated turns come on top of it.</p>",
        origins_html(facts.origins),
        "<p>Every family, both languages, no cut-off. Yes share: the share of \"yes\" among a family's template "
        "yes/no answers (Yes/No, 是/不是, 有/没有, 能/不能), read from the text as the checker reads it.</p>",
        families_html(facts.turns, facts.yes, facts.yes_no),
        _img(fam_plot, "task families") if fam_plot else "",
        "<h2 id=\"clip\">CLIP scores</h2>", clip_section(manifest, facts.clip_kept, rejected_scores),
        "<h2 id=\"sizes\">Image sizes and caption lengths</h2>",
        '<div class="row">' + "".join(_img(p, a) for p, a in ((sizes, "image sizes"), (caps, "caption lengths")) if p)
        + "</div>",
        "<h2 id=\"samples\">Sample gallery</h2>",
        "<p>Stage-2 samples with their conversations in every language; negative answers are marked red.</p>",
        gallery_html(facts.gallery),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report(out: Path, max_samples: int = REPORT_MAX_SAMPLES, stage1: dict | None = None) -> Path:
    """Write ``out/report.html`` and return its path (``stage1``: see ``read_shards``)."""
    out = Path(out)
    manifest = require_finished(out)
    facts = read_shards(out, max_samples, stage1=stage1)
    page = render(out, manifest, facts, read_rejects(out), rejected_clip_scores(out))
    path = out / "report.html"
    tmp = path.with_suffix(".html.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
