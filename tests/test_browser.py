"""report.html and `datagen view` rendered in a real browser: Debian's chromium driven by Playwright.

Playwright's own browser download cannot work offline, so the system chromium is launched through
``executable_path``. Without playwright or chromium these tests are SKIPPED, saying why (.ci/run
installs chromium). Every request the browser makes is checked: anything but 127.0.0.1 (or a local
file for the report) is aborted and recorded, and each test asserts the record is empty.
"""

import shutil
import threading
from io import BytesIO
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

# No host name resolves inside the browser (belt and braces beside the request guard; Playwright already
# turns off background networking).
CHROMIUM_ARGS = ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path, or a skip saying what is missing (asked first, so a skip costs no demo run)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'datagen[dev]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    return exe


@pytest.fixture(scope="module")
def browser(chromium):
    """Module-scoped: Playwright's sync API holds an event loop on this thread while it is open, which
    would break later tests that call asyncio.run()."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 - a browser that does not start is a skip with its reason
            pytest.skip(f"chromium at {chromium} does not start: {e}")
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page whose non-local requests are aborted and listed in ``page.outside`` (must stay empty)."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    outside, seen = [], []

    def guard(route):
        url = route.request.url
        seen.append(url)
        parts = urlsplit(url)
        if parts.scheme in ("data", "file") or (parts.scheme == "http" and parts.hostname in LOOPBACK):
            return route.continue_()
        outside.append(url)
        return route.abort()

    ctx.route("**/*", guard)
    pg.outside, pg.seen = outside, seen
    yield pg
    ctx.close()


def not_blank(png: bytes) -> float:
    from PIL import Image, ImageStat

    im = Image.open(BytesIO(png)).convert("L")
    assert im.size[0] >= 1000
    return ImageStat.Stat(im).stddev[0]


def broken_images(pg) -> list[str]:
    """Alt texts of the images that did not render. Waits until every image has finished loading or
    failing first (an image that fails is complete too): on a busy machine the page is ready before its
    images are (seen in CI)."""
    pg.wait_for_function("[...document.images].every(i => i.complete)", timeout=60_000)
    return pg.eval_on_selector_all("img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.alt)")


def test_report_renders_in_chromium(chromium, page, demo_run):  # browser first: a skip costs no demo run
    out, _ = demo_run
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    n_img = page.eval_on_selector_all("img", "els => els.length")
    assert n_img >= 8 and broken_images(page) == []
    assert page.is_visible("#clip-warning")  # the demo's CLIP model is the untrained fallback
    assert page.locator("#families tr").count() > 10
    assert page.locator("#gallery .card").count() >= 6
    assert not_blank(page.screenshot(full_page=False)) > 20
    # Only the file itself was requested: everything else is inline.
    assert page.outside == [] and all(u.startswith(("file:", "data:")) for u in page.seen)


@pytest.fixture(scope="module")
def viewer(demo_run):
    from datagen.view import make_server

    out, _ = demo_run
    server = make_server(out, 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def shown(pg):
    """(keys of the samples on the page, languages of the conversations shown, tasks of the turns shown)."""
    pg.wait_for_selector("body[data-ready='1']")
    keys = pg.eval_on_selector_all(".sample", "els => els.map(e => e.dataset.key)")
    langs = pg.eval_on_selector_all(".conv", "els => els.map(e => e.dataset.lang)")
    return keys, langs, pg.eval_on_selector_all(".conv", "els => els.map(e => [...e.querySelectorAll('.turn')].map(t => t.dataset.task))")


def choose(pg, select: str, value: str) -> None:
    """Pick a filter value and wait until the page shows its result."""
    pg.evaluate("document.body.dataset.ready = ''")
    pg.select_option(select, value)
    pg.wait_for_selector("body[data-ready='1']")


def test_viewer_pages_filters_and_shows_details(chromium, page, viewer):
    assert viewer.url.startswith("http://127.0.0.1:")
    page.goto(viewer.url)
    keys, langs, _ = shown(page)
    assert len(keys) == 12 and set(langs) == {"en", "zh"}
    assert page.eval_on_selector_all("img", "els => els.length") >= 12 and broken_images(page) == []
    assert not_blank(page.screenshot()) > 20

    choose(page, "#task", "counting")
    k_task, _, tasks = shown(page)
    assert k_task and k_task != keys and all("counting" in conv for conv in tasks)
    assert int(page.get_attribute("#status", "data-total")) < viewer.catalog.meta()["splits"]["stage2"]

    choose(page, "#task", "")
    choose(page, "#lang", "zh")
    k_zh, l_zh, _ = shown(page)
    assert set(l_zh) == {"zh"} and l_zh != langs

    # Stage 1: Chinese captions only, images beside them.
    choose(page, "#split", "stage1")
    choose(page, "#lang", "zh")
    k1, _, _ = shown(page)
    assert k1 and all(k.startswith("wukong") for k in k1) and broken_images(page) == []
    choose(page, "#lang", "en")
    k1_en, _, _ = shown(page)
    assert k1_en and not set(k1_en) & set(k1)

    # Paging, and a sample's rejects and stats.
    choose(page, "#lang", "")
    first, _, _ = shown(page)
    page.evaluate("document.body.dataset.ready = ''")
    page.click("#next")
    second, _, _ = shown(page)
    assert second and not set(second) & set(first)
    page.click(".sample summary")
    page.wait_for_selector(".sample details h4")
    assert "clip_score" in page.inner_text(".sample details")
    assert page.outside == [] and page.seen
