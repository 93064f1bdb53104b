"""The README's screenshots of the report and the viewer, rendered in Debian's chromium.

    python scripts/screenshots.py [--out out/demo] [--dest docs] [--width 1200]

Runs the bundled demo into ``--out`` when that folder holds no finished run, writes its
report.html, serves ``datagen view`` on 127.0.0.1, and saves ``report.png`` and ``viewer.png``
(palette PNGs, ``--width`` pixels wide) under ``--dest``. The browser may only load the report file
and 127.0.0.1: any other request is aborted and fails the script. ``make screenshots`` runs it.
Chinese text renders only with a CJK font installed (Debian: ``apt-get install fonts-wqy-microhei``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

# No host name resolves inside the browser (belt and braces beside the request guard; Playwright already
# turns off background networking).
CHROMIUM_ARGS = ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
ROOT = Path(__file__).resolve().parents[1]


def shrink(png: bytes, dest: Path) -> None:
    """An adaptive 256-colour palette, optimised: a page of text and a few photos stays small."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dest, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"), help="a run's output folder (the demo runs here if it has none)")
    ap.add_argument("--dest", default=str(ROOT / "docs"), help="where report.png and viewer.png go")
    ap.add_argument("--width", type=int, default=1200, help="screenshot width in pixels")
    args = ap.parse_args(argv)
    out, dest = Path(args.out), Path(args.dest)

    from playwright.sync_api import sync_playwright

    from datagen.cli import main as datagen
    from datagen.report import write_report
    from datagen.view import make_server

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    if not (out / "manifest.json").exists() and datagen(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out)]):
        return 1
    report = write_report(out)
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    def guard(route):
        u = urlsplit(route.request.url)
        if u.scheme in ("file", "data") or (u.scheme == "http" and u.hostname == "127.0.0.1"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": args.width, "height": 1000})
            ctx.route("**/*", guard)
            page = ctx.new_page()
            # The report at its task families: origins, every family by language and polarity, the plot.
            page.goto(report.as_uri())
            top = page.eval_on_selector("#families", "e => e.getBoundingClientRect().top + window.scrollY") - 10
            shrink(page.screenshot(full_page=True, clip={"x": 0, "y": top, "width": args.width, "height": 1500}),
                   dest / "report.png")
            # The viewer: stage-2 samples that have negative answers, both languages.
            page.goto(server.url + "#split=stage2&polarity=negative&page=0")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            shrink(page.screenshot(), dest / "viewer.png")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if outside:
        print(f"the pages asked for something other than 127.0.0.1: {outside}", file=sys.stderr)
        return 1
    for name in ("report.png", "viewer.png"):
        print(f"{dest / name}: {(dest / name).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
