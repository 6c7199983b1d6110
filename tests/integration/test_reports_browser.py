"""The HTML reports in a real browser: Debian's headless Chromium, driven by
Playwright (PyPI) through the DevTools protocol. Each page is opened from a
real capture; it must render without console errors, and respond like it
does for a user: a click on a frame zooms, a search highlights and sums, a
column header sorts, the filter filters, and a page of 100,000 stacks loads
in under 2 s.

The flame graph is drawn on a canvas: an init script records where each
frame's label is drawn (fillText), so the test can click the frame it
wants. Needs `chromium` (Debian) and `playwright` (PyPI, in the test venv);
`make test` installs both.
"""

import shutil
import time

import pytest

# The same programs and helpers as the node-driven tests.
from test_reports_html import PROG, WIDE, _trace as trace, memtap

CHROMIUM = shutil.which("chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium (Debian) not installed")

# Where the page draws each label, in CSS pixels of the canvas.
RECORD_LABELS = """
window.__labels = [];
const fill = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, x, y) {
  if (this.canvas && this.canvas.id === "flame") {
    const m = this.getTransform();
    window.__labels.push({text: String(text), x: m.a ? (x * m.a + m.e) / devicePixelRatio : x,
                          y: m.d ? (y * m.d + m.f) / devicePixelRatio : y});
  }
  return fill.apply(this, arguments);
};
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return trace(tmp_path_factory, "page", PROG)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """A page opened offline, its console errors collected."""

    def __init__(self, browser, path):
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 800},
                                       offline=True)
        self.page = self.ctx.new_page()
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: r.url.startswith("file:") or
                     self.errors.append("network request: " + r.url))
        self.page.add_init_script(RECORD_LABELS)
        t0 = time.monotonic()
        self.page.goto(path.as_uri(), wait_until="load")
        self.load_s = time.monotonic() - t0

    def text(self, selector):
        return self.page.inner_text(selector)

    def labels(self):
        return self.page.evaluate("window.__labels")

    def click_frame(self, name):
        self.page.evaluate("window.__labels = []")
        # A loaded machine may take longer than labels_now's wait to redraw.
        for _ in range(20):
            hits = [l for l in self.labels_now() if l["text"].startswith(name)]
            if hits:
                break
        assert hits, "no frame labelled %r" % name
        box = self.page.locator("#flame").bounding_box()
        self.page.mouse.click(box["x"] + hits[0]["x"] + 2, box["y"] + hits[0]["y"] - 3)

    def labels_now(self):
        # redraw so the labels are those on screen now
        self.page.evaluate("window.__labels = []; window.dispatchEvent(new Event('resize'))")
        self.page.wait_for_timeout(100)
        return self.labels()

    def close(self):
        self.ctx.close()


def test_flamegraph_in_chromium(browser, capture, tmp_path):
    page_file = tmp_path / "fg.html"
    memtap("flamegraph", "-o", page_file, capture)
    pg = Page(browser, page_file)
    try:
        texts = [l["text"] for l in pg.labels_now()]
        assert any(t.startswith("make_big") for t in texts), texts
        assert any(t.startswith("spike") for t in texts), texts
        pg.click_frame("make_big")
        crumbs = pg.text("#crumbs")
        assert crumbs.startswith("Zoomed: <module>") and "make_big" in crumbs, crumbs
        assert "50.0 MiB" in crumbs, crumbs
        pg.page.fill("#search", "spike")
        pg.page.wait_for_function(
            "document.getElementById('match').textContent.startsWith('Matched')")
        assert pg.text("#match").startswith("Matched: 20.0 MiB"), pg.text("#match")
        assert pg.errors == [], pg.errors
    finally:
        pg.close()


def test_table_in_chromium(browser, capture, tmp_path):
    page_file = tmp_path / "t.html"
    memtap("table", "-o", page_file, capture)
    pg = Page(browser, page_file)
    try:
        rows = pg.page.locator("#body tr")
        first = rows.nth(0).locator("td").all_inner_texts()
        assert first[1] == "50.0 MiB" and first[4].startswith("make_big"), first
        pg.page.click('th[data-col="count"]')
        assert pg.page.get_attribute('th[data-col="count"]', "aria-sort") == "descending"
        counts = [int(r.locator("td").nth(2).inner_text().replace(",", ""))
                  for r in rows.all()[:20]]
        assert len(counts) > 2 and counts == sorted(counts, reverse=True), counts
        pg.page.fill("#filter", "make_big")
        pg.page.wait_for_function("document.getElementById('status').textContent.startsWith('1 of')")
        names = [r.locator("td").nth(4).inner_text().split(" ")[0] for r in rows.all()]
        assert names == ["make_big"], names
        assert pg.errors == [], pg.errors
    finally:
        pg.close()


def test_100k_stacks_load_fast_in_chromium(browser, tmp_path_factory, tmp_path):
    cap = trace(tmp_path_factory, "wide", WIDE)
    for kind in ("flamegraph", "table"):
        page_file = tmp_path / (kind + ".html")
        memtap(kind, "--leaks", "-o", page_file, cap)
        pg = Page(browser, page_file)
        try:
            assert pg.load_s < 2.0, (kind, pg.load_s)
            assert pg.errors == [], pg.errors
        finally:
            pg.close()


DEEP = """\
import sys
sys.setrecursionlimit(5000)
def bottom():
    return bytearray(3 * 2**20)
def r(n):
    return bottom() if n == 0 else r(n - 1)
keep = r(1900)
"""


def test_deep_stack_drawn_when_zoomed(browser, tmp_path_factory, tmp_path):
    """A stack deeper than the canvas's rows (1,666) shows its deepest frames
    once a deep frame is zoomed into; the page says so."""
    cap = trace(tmp_path_factory, "deep", DEEP)
    page_file = tmp_path / "deep.html"
    memtap("flamegraph", "--leaks", "-o", page_file, cap)
    pg = Page(browser, page_file)
    try:
        labels = pg.labels_now()
        assert not [l for l in labels if l["text"].startswith("bottom")]
        assert "show their deepest frames when zoomed" in pg.text("#crumbs")
        deepest = max((l for l in labels if l["text"] == "r"), key=lambda l: l["y"])
        # the canvas is 30,000 px tall: bring that row into the window first
        top = pg.page.evaluate("document.getElementById('flame').getBoundingClientRect().top"
                               " + window.scrollY")
        pg.page.evaluate("window.scrollTo(0, %d)" % (top + deepest["y"] - 400))
        box = pg.page.locator("#flame").bounding_box()
        pg.page.mouse.click(box["x"] + deepest["x"] + 2, box["y"] + deepest["y"] - 3)
        assert pg.text("#crumbs").startswith("Zoomed: <module>")
        assert [l for l in pg.labels_now() if l["text"].startswith("bottom")]
        assert pg.errors == [], pg.errors
    finally:
        pg.close()
