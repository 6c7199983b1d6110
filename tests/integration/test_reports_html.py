"""The HTML reports (flamegraph, table) run: their inline script is executed
under node with a small stand-in for the DOM (no browser is needed), and
driven like a user would: a click zooms, a search highlights, a column sorts,
the filter filters.  The page must also load fast with 100,000 stacks.

node is required (Debian's `nodejs`); these tests skip, and say so, without it.
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import DEFAULT_PYTHON, MEMTAP, TIMEOUT, clean_env, memtap_run

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(not NODE, reason="node (Debian package nodejs) not installed")

MiB = 2 ** 20

HARNESS = r"""
// Runs a memtap HTML report's inline script under node with a small stand-in
// for the DOM (no browser needed), then drives it the way a user would and
// prints what it saw as one JSON object. Used by this file's tests.
//
//   node harness.js PAGE.html flame|table [ACTION JSON]
//
// getElementById returns null for ids the page does not have, so a script
// that looks up a missing element fails here as it would in a browser.
"use strict";
const fs = require("fs");

const [page, kind, actionJson] = process.argv.slice(2);
const action = actionJson ? JSON.parse(actionJson) : {};
const html = fs.readFileSync(page, "utf8");
const ids = new Set([...html.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]));
const dataText = html.match(/<script id="memtap-data" type="application\/json">([\s\S]*?)<\/script>/)[1];
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
const thCols = [...html.matchAll(/<th[^>]*data-col="([^"]+)"/g)].map((m) => m[1]);

const rects = [];   // flame graph: [x, y, w, label] of every frame drawn
let lastRect = null;
function makeCtx() {
  return new Proxy({}, {
    get(target, prop) {
      if (prop in target) return target[prop];
      if (prop === "fillRect") return (x, y, w, h) => { lastRect = [x, y, w, ""]; rects.push(lastRect); };
      if (prop === "fillText") return (t) => { if (lastRect && !lastRect[3]) lastRect[3] = t; };
      if (prop === "measureText") return (t) => ({ width: 7 * t.length });
      return () => {};
    },
    set(target, prop, v) { target[prop] = v; return true; },
  });
}

class El {
  constructor(tag, id) {
    this.tagName = tag; this.id = id || ""; this.style = {}; this.children = [];
    this.attrs = {}; this.listeners = {}; this.value = ""; this.disabled = false;
    this._text = id === "memtap-data" ? dataText : "";
    this.className = ""; this.clientWidth = 1200; this.clientHeight = 160;
    this.offsetWidth = 200; this.offsetHeight = 60; this.parentNode = { clientWidth: 1232 };
    this.title = ""; this.innerHTML = "";
  }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set textContent(v) { this._text = String(v); this.children = []; }
  appendChild(c) {
    if (c.isFragment) this.children.push(...c.children); else this.children.push(c);
    return c;
  }
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); }
  fire(t, ev) { for (const f of this.listeners[t] || []) f(Object.assign({ currentTarget: this, target: this }, ev)); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  removeAttribute(k) { delete this.attrs[k]; }
  getContext() { return this.ctx || (this.ctx = makeCtx()); }
  getBoundingClientRect() { return { left: 0, top: 0 }; }
  closest(sel) {
    return sel === "tr.row" && this.tagName === "tr" && this.className === "row" ? this
      : this.parent ? this.parent.closest(sel) : null;
  }
}
const byId = {};
const ths = thCols.map((c) => { const t = new El("th"); t.attrs["data-col"] = c; return t; });
const errors = [];
global.window = {
  devicePixelRatio: 1, innerWidth: 1280, innerHeight: 800,
  addEventListener() {},
};
global.document = {
  getElementById(id) {
    if (!ids.has(id)) { errors.push("no element #" + id); return null; }
    return byId[id] || (byId[id] = new El(id === "flame" || id === "chart" ? "canvas" : "div", id));
  },
  createElement(tag) { return new El(tag); },
  createDocumentFragment() { const f = new El("#fragment"); f.isFragment = true; return f; },
  createTextNode(t) { const e = new El("#text"); e._text = String(t); return e; },
  querySelectorAll(sel) { return sel === "th" ? ths : []; },
  addEventListener() {},
};
// timers run at once: debounced handlers fire synchronously
global.setTimeout = (f) => { f(); return 1; };
global.clearTimeout = () => {};

const out = { errors };
const t0 = process.hrtime.bigint();
try {
  for (const s of scripts) (0, eval)(s);
} catch (e) {
  errors.push("exception: " + e.stack);
}
out.load_ms = Number(process.hrtime.bigint() - t0) / 1e6;

function text(id) { return byId[id] ? byId[id].textContent : null; }

if (kind === "flame" && !errors.length) {
  out.total = window.memtapFlame.total;
  out.nodes = window.memtapFlame.nodes;
  out.title = text("title");
  out.labels = rects.filter((r) => r[3]).map((r) => r[3]);
  if (action.click) {
    const r = rects.find((q) => q[3].startsWith(action.click));
    out.clicked = !!r;
    if (r) {
      rects.length = 0;
      byId.flame.fire("click", { clientX: r[0] + r[2] / 2, clientY: r[1] + 5 });
      out.crumbs = text("crumbs");
      out.zoomed_widths = rects.filter((q) => q[3]).map((q) => [q[3], q[2]]);
    }
  }
  if (action.search) {
    byId.search = byId.search || document.getElementById("search");
    byId.search.fire("input", { target: { value: action.search } });
    out.match = text("match");
  }
}
if (kind === "table" && !errors.length) {
  const rows = () => byId.body.children.filter((c) => c.className === "row");
  const cells = (tr) => tr.children.map((c) => c.textContent);
  out.status = text("status");
  out.first = rows().slice(0, 5).map(cells);
  if (action.sort) {
    for (const n of action.sort) ths.find((t) => t.attrs["data-col"] === n).fire("click", {});
    out.sorted = rows().map(cells);
    out.aria = ths.map((t) => [t.attrs["data-col"], t.getAttribute("aria-sort")]);
  }
  if (action.filter !== undefined) {
    byId.filter.value = action.filter;
    byId.filter.fire("input", {});
    out.filtered = rows().map(cells);
    out.status = text("status");
  }
  if (action.open) {
    const tr = rows()[0];
    tr.parent = byId.body;
    byId.body.fire("click", { target: tr });
    out.stack = byId.body.children.filter((c) => c.className === "stack").map((c) => c.textContent);
  }
}
process.stdout.write(JSON.stringify(out));
"""

PROG = """\
KEEP = []

def make_big():
    return bytearray(50 * 2**20)

def spike():
    t = bytearray(20 * 2**20)
    del t

KEEP.append(make_big())
spike()
"""

# 317 lines in outer() each calling inner(), whose 317 lines each allocate:
# 317 * 317 = 100,489 distinct stacks from a 640-line program.
WIDE_N = 317
WIDE = "\n".join(["KEEP = []", "def inner():"] +
                  ["    KEEP.append(bytearray(600))"] * WIDE_N +
                  ["def outer():"] + ["    inner()"] * WIDE_N + ["outer()"]) + "\n"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    p = tmp_path_factory.mktemp("harness") / "harness.js"
    p.write_text(HARNESS)
    return p


def _trace(tmp_path_factory, name, text):
    if not os.access(MEMTAP, os.X_OK):
        pytest.fail("memtap is not built: %s" % MEMTAP)
    d = tmp_path_factory.mktemp(name)
    script = d / (name + ".py")
    script.write_text(text)
    cap = d / (name + ".bin")
    proc = memtap_run(["-o", cap, "--python", DEFAULT_PYTHON, script], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return cap


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return _trace(tmp_path_factory, "page", PROG)


def memtap(*args):
    proc = subprocess.run([str(MEMTAP), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_page(harness, page, kind, action=None):
    proc = subprocess.run([NODE, str(harness), str(page), kind, json.dumps(action or {})],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == [], out["errors"]
    return out


def test_flamegraph_page_runs(harness, capture, tmp_path):
    page = tmp_path / "fg.html"
    memtap("flamegraph", "-o", page, capture)
    peak = json.loads(memtap("summary", "--json", capture))["peak_memory_bytes"]
    out = run_page(harness, page, "flame", {"click": "make_big", "search": "spike"})
    assert out["total"] == peak
    assert "make_big" in out["labels"] and "spike" in out["labels"], out["labels"]
    # a click zooms: the frame now spans the whole width, the crumbs name it
    assert out["clicked"]
    assert out["crumbs"].startswith("Zoomed: <module>") and "make_big" in out["crumbs"]
    assert "50.0 MiB" in out["crumbs"], out["crumbs"]
    widths = dict(out["zoomed_widths"])
    assert widths["make_big"] > 1000, out["zoomed_widths"]
    # a search highlights and sums what matched
    assert out["match"].startswith("Matched: 20.0 MiB"), out["match"]


def test_flamegraph_inverted_page_runs(harness, capture, tmp_path):
    page = tmp_path / "inv.html"
    memtap("flamegraph", "--inverted", "--leaks", "-o", page, capture)
    out = run_page(harness, page, "flame", {"search": "make_big"})
    assert "(inverted)" in out["title"] and "leaks" in out["title"]
    assert out["labels"][0] == "make_big", out["labels"]
    assert out["match"].startswith("Matched: 50.0 MiB"), out["match"]


def test_table_page_runs(harness, capture, tmp_path):
    page = tmp_path / "t.html"
    memtap("table", "-o", page, capture)
    out = run_page(harness, page, "table",
                   {"sort": ["count"], "filter": "make_big", "open": True})
    n = out["status"].split(" of ")[1].split(" ")[0]
    # biggest first by default
    assert out["first"][0][1] == "50.0 MiB" and out["first"][0][4].startswith("make_big ")
    assert out["first"][1][1] == "20.0 MiB" and out["first"][1][4].startswith("spike ")
    # a click on "count" sorts by count, biggest first
    counts = [int(r[2]) for r in out["sorted"]]
    assert counts == sorted(counts, reverse=True) and len(counts) > 2
    assert dict(out["aria"])["count"] == "descending"
    # the filter keeps the matching rows; a click on a row shows its stack
    assert [r[4].split(" ")[0] for r in out["filtered"]] == ["make_big"]
    assert out["status"].startswith("1 of %s stacks" % n)
    assert len(out["stack"]) == 1 and "make_big (" in out["stack"][0] and "<module> (" in out["stack"][0]


def test_pages_load_fast_with_100k_stacks(harness, tmp_path_factory, tmp_path):
    cap = _trace(tmp_path_factory, "wide", WIDE)
    page = tmp_path / "wide.html"
    memtap("flamegraph", "--leaks", "-o", page, cap)
    out = run_page(harness, page, "flame", {"search": "inner"})
    assert out["nodes"] >= 100000
    assert out["load_ms"] < 2000, out["load_ms"]
    assert out["match"].startswith("Matched: ")
    page = tmp_path / "wide-table.html"
    memtap("table", "--leaks", "-o", page, cap)
    out = run_page(harness, page, "table", {"sort": ["location"], "filter": "inner"})
    assert int(out["status"].split(" of ")[1].split(" ")[0]) >= 100000
    assert out["load_ms"] < 2000, out["load_ms"]
