"""`memtap flamegraph --temporal`: the flame graph of a time range picked on
the memory-over-time chart (docs/reports.md, "Temporal flame graphs").

A program allocates 10 MiB in phase A and 20 MiB in phase B, with quiet
sleeps between, then frees A's. Its page's script runs under node with a
small stand-in for the DOM (as in test_reports_html.py) and is driven like
a user would: API calls, a drag on the chart, the keyboard, the inputs, the
buttons and the mode radio buttons. Sizes are checked exactly.

node is required (Debian's `nodejs`); these tests skip, and say so, without it.
"""

import json
import re
import shutil
import subprocess

import pytest

from conftest import DEFAULT_PYTHON, MEMTAP, TIMEOUT, clean_env, line_of, memtap_run

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(not NODE, reason="node (Debian package nodejs) not installed")

MiB = 2 ** 20

# The last sleep makes the run longer than 128 buckets of 10 ms, so the
# replay merges buckets mid-run: the sizes must still come out exact.
PHASES = """\
import time
MiB = 2 ** 20
KEEP = [None, None]


def phase_a():
    KEEP[0] = bytearray(10 * MiB)  # @phase_a


def phase_b():
    KEEP[1] = bytearray(20 * MiB)  # @phase_b


time.sleep(0.3)
phase_a()
time.sleep(0.3)
phase_b()
time.sleep(0.3)
KEEP[0] = None  # @free_a
time.sleep(0.5)
"""

HARNESS = r"""
// Runs a memtap flame graph page's inline script under node with a small
// stand-in for the DOM, applies the steps given as JSON and prints, after
// loading and after each step, what the page shows, as one JSON object.
//
//   node harness.js PAGE.html STEPS_JSON FILE
//
// A step: {"range": [t0_us, t1_us]} | {"peak": t0_us} | {"alloc": bool}
// | {"drag": [x0, x1]} (chart pixels) | {"key": name, "shift": bool}
// | {"inputs": [from_s, to_s]} | {"type": [id, value]} | {"click": id} | {"radio": id}.
// "lines" sums what is drawn per line of FILE (the frames whose file ends
// with it). getElementById returns null for ids the page does not have.
"use strict";
const fs = require("fs");
const [page, stepsJson, fileName] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const html = fs.readFileSync(page, "utf8");
const ids = new Set([...html.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]));
const dataText = html.match(/<script id="memtap-data" type="application\/json">([\s\S]*?)<\/script>/)[1];
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);

const ctx = new Proxy({}, {
  get(t, p) { return p in t ? t[p] : p === "measureText" ? (s) => ({ width: 7 * s.length }) : () => {}; },
  set(t, p, v) { t[p] = v; return true; },
});
class El {
  constructor(tag, id) {
    this.tagName = tag; this.id = id; this.style = {}; this.attrs = {}; this.listeners = {};
    this.value = ""; this.checked = false; this.disabled = false; this.innerHTML = "";
    this._text = id === "memtap-data" ? dataText : "";
    this.clientWidth = 1200; this.clientHeight = 110; this.offsetWidth = 200; this.offsetHeight = 60;
    this.parentNode = { clientWidth: 1232 };
  }
  get textContent() { return this._text; }
  set textContent(v) { this._text = String(v); }
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); }
  fire(t, ev) { for (const f of this.listeners[t] || []) f(Object.assign({ target: this, currentTarget: this, preventDefault() {} }, ev)); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  getContext() { return ctx; }
  getBoundingClientRect() { return { left: 0, top: 0 }; }
}
const byId = {}, errors = [];
global.window = { devicePixelRatio: 1, innerWidth: 1280, innerHeight: 800, addEventListener() {} };
global.document = {
  getElementById(id) {
    if (!ids.has(id)) { errors.push("no element #" + id); return null; }
    return byId[id] || (byId[id] = new El(id === "flame" || id === "chart" ? "canvas" : "div", id));
  },
  createElement(tag) { return new El(tag, ""); },
  addEventListener() {},
};
global.setTimeout = (f) => { f(); return 1; };
global.clearTimeout = () => {};

function snap() {
  const F = window.memtapFlame, lines = {};
  for (const [fn, file, line, bytes, count] of F.frames()) {
    if (!file.endsWith(fileName)) continue;
    const l = lines[line] || (lines[line] = [0, 0]);
    l[0] += bytes; l[1] += count;
  }
  const t = (id) => byId[id] ? byId[id].textContent : null;
  return { total: F.total, lines, title: t("title"), info: t("rangeinfo"), meta: t("meta"),
           from: byId.from && byId.from.value, to: byId.to && byId.to.value,
           alive: byId["m-alive"] && byId["m-alive"].checked };
}

const out = { errors, steps: [], step_ms: [] };
const t0 = process.hrtime.bigint();
try {
  for (const s of scripts) (0, eval)(s);
} catch (e) { errors.push("exception: " + e.stack); }
out.load_ms = Number(process.hrtime.bigint() - t0) / 1e6;
if (!errors.length) {
  out.initial = snap();
  out.tabindex = byId.chart.getAttribute("tabindex");
  try {
    for (const s of steps) {
      const u0 = process.hrtime.bigint();
      const F = window.memtapFlame;
      if (s.range) F.range(s.range[0], s.range[1]);
      else if (s.peak !== undefined) F.rangeToPeak(s.peak);
      else if (s.alloc !== undefined) F.allocated(s.alloc);
      else if (s.drag) {
        byId.chart.fire("mousedown", { clientX: s.drag[0], clientY: 50 });
        byId.chart.fire("mousemove", { clientX: (s.drag[0] + s.drag[1]) / 2, clientY: 50 });
        byId.chart.fire("mousemove", { clientX: s.drag[1], clientY: 50 });
        byId.chart.fire("mouseup", { clientX: s.drag[1], clientY: 50 });
      } else if (s.key) byId.chart.fire("keydown", { key: s.key, shiftKey: !!s.shift });
      else if (s.inputs) {
        document.getElementById("from").value = String(s.inputs[0]);
        document.getElementById("to").value = String(s.inputs[1]);
        document.getElementById("to").fire("change", {});
      } else if (s.type) {   /* one box typed in: [id, value] */
        document.getElementById(s.type[0]).value = String(s.type[1]);
        document.getElementById(s.type[0]).fire("change", {});
      } else if (s.click) document.getElementById(s.click).fire("click", {});
      else if (s.radio) {
        for (const r of ["m-alive", "m-alloc"]) document.getElementById(r).checked = r === s.radio;
        document.getElementById(s.radio).fire("change", {});
      }
      out.step_ms.push(Number(process.hrtime.bigint() - u0) / 1e6);
      out.steps.push(snap());
    }
  } catch (e) { errors.push("exception: " + e.stack); }
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    p = tmp_path_factory.mktemp("harness") / "harness.js"
    p.write_text(HARNESS)
    return p


def memtap(*args, check=True):
    proc = subprocess.run([str(MEMTAP), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=clean_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def trace(tmp_path_factory, name, text, *extra):
    d = tmp_path_factory.mktemp(name)
    script = d / (name + ".py")
    script.write_text(text)
    cap = d / (name + ".bin")
    proc = memtap_run(["-o", cap, *extra, "--python", DEFAULT_PYTHON, script], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return cap


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return trace(tmp_path_factory, "phases", PHASES)


def page_data(page):
    html = page.read_text()
    m = re.search(r'<script id="memtap-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def run_page(harness, page, steps, file="phases.py"):
    proc = subprocess.run([NODE, str(harness), str(page), json.dumps(steps), file],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == [], out["errors"]
    return out


def phase_times(data):
    """(sample before, first sample showing) phase A's allocation, B's, A's free.

    An event is dated by the last sample before it: phase A's allocation
    lies in [before, showing] of the sample clock."""
    s = data["samples"]
    found = {}
    for prev, cur in zip(s, s[1:]):
        d = cur[2] - prev[2]
        for key, lo, hi in (("a", 10 * MiB, 11 * MiB), ("b", 20 * MiB, 21 * MiB),
                            ("free", -11 * MiB, -10 * MiB)):
            if lo <= d < hi and key not in found:
                found[key] = (prev[0], cur[0])
    assert set(found) == {"a", "b", "free"}, s
    return found


def lines_of(snap, *names):
    return {n: tuple(snap["lines"].get(str(line_of(PHASES, n)), (0, 0))) for n in names}


def summary(capture, *flags):
    return json.loads(memtap("summary", "--json", *flags, capture).stdout)


A = (10 * MiB + 1, 1)
B = (20 * MiB + 1, 1)
NONE = (0, 0)


def test_phase_ranges(harness, capture, tmp_path):
    page = tmp_path / "t.html"
    memtap("flamegraph", "--temporal", "-o", page, capture)
    data = page_data(page)
    tm = data["temporal"]
    # a 1.5 s run outgrows 128 buckets of 10 ms: pairs were merged
    assert tm["bucket_us"] >= 20000 and tm["nbuckets"] <= 128, tm["bucket_us"]
    ph = phase_times(data)
    pad = 50000
    (a0, a1), (b0, b1), (f0, f1) = ph["a"], ph["b"], ph["free"]
    out = run_page(harness, page, [
        {"range": [a0 - pad, a1 + pad]},          # phase A
        {"range": [b0 - pad, b1 + pad]},          # phase B
        {"range": [a0 - pad, f1 + pad]},          # A to after A's free: A is gone
        {"alloc": True},                          # ... but was allocated in it
        {"range": [a0 - pad, b1 + pad]},          # A and B, allocated
        {"alloc": False},                         # A and B, alive at the end of the range
        {"peak": 0},                              # the whole run up to the peak
        {"peak": b0 - pad},                       # from phase B up to the peak
    ])
    s = out["steps"]
    # phase A alone: exactly its 10 MiB + 1 (the bytearray's terminating NUL)
    assert s[0]["total"] == A[0], s[0]
    assert lines_of(s[0], "phase_a", "phase_b") == {"phase_a": A, "phase_b": NONE}
    assert "still alive at its end" in s[0]["title"] and s[0]["info"].startswith("Range ")
    assert s[0]["alive"] is True
    # phase B alone
    assert s[1]["total"] == B[0], s[1]
    assert lines_of(s[1], "phase_a", "phase_b") == {"phase_a": NONE, "phase_b": B}
    # a range ending after A was freed: A's bytes are no longer alive at its end
    assert lines_of(s[2], "phase_a", "phase_b") == {"phase_a": NONE, "phase_b": B}
    assert lines_of(s[3], "phase_a", "phase_b") == {"phase_a": A, "phase_b": B}
    assert s[3]["alive"] is False and "Allocated from" in s[3]["title"]
    assert s[4]["total"] == A[0] + B[0]
    assert lines_of(s[5], "phase_a", "phase_b") == {"phase_a": A, "phase_b": B}
    # up to the peak from the start: exactly the peak flame graph
    peak = summary(capture)["peak_memory_bytes"]
    assert s[6]["total"] == peak, (s[6], peak)
    assert "the peak" in s[6]["info"]
    assert lines_of(s[6], "phase_a", "phase_b") == {"phase_a": A, "phase_b": B}
    assert s[7]["total"] == B[0] and lines_of(s[7], "phase_b") == {"phase_b": B}
    # the range and its totals are shown
    assert "20.0 MiB in 1 allocation allocated in it and still alive at the peak" in s[7]["info"], s[7]["info"]


def test_initial_views_match_peak_and_leaks(harness, capture, tmp_path):
    page = tmp_path / "t.html"
    memtap("flamegraph", "--temporal", "-o", page, capture)
    out = run_page(harness, page, [])
    assert out["initial"]["total"] == summary(capture)["peak_memory_bytes"]
    assert "alive at the peak" in out["initial"]["title"]
    assert "shown: " in out["initial"]["meta"]
    page = tmp_path / "leaks.html"
    memtap("flamegraph", "--temporal", "--leaks", "-o", page, capture)
    out = run_page(harness, page, [])
    leaks = summary(capture, "--leaks")
    assert out["initial"]["total"] == leaks["total_bytes"]
    assert lines_of(out["initial"], "phase_a", "phase_b") == {"phase_a": NONE, "phase_b": B}
    assert "the end" in out["initial"]["info"]


def test_drag_keyboard_inputs_buttons(harness, capture, tmp_path):
    page = tmp_path / "t.html"
    memtap("flamegraph", "--temporal", "--inverted", "-o", page, capture)
    data = page_data(page)
    tm = data["temporal"]
    ph = phase_times(data)
    (b0, b1) = ph["b"]
    (a0, a1) = ph["a"]
    run_end = max(tm["end_us"], (tm["nbuckets"] - 1) * tm["bucket_us"])
    # the chart's time axis: 0 .. the run's end over x = 70 .. 70 + (1200 - 76)
    x = lambda t: 70 + t / run_end * (1200 - 76)
    w = tm["bucket_us"]
    out = run_page(harness, page, [
        {"drag": [x(b1 + 50000), x(b0 - 50000)]},   # right to left over phase B
        {"key": "ArrowRight", "shift": True},        # the end one bucket later
        {"key": "ArrowLeft"},                        # the whole range one bucket earlier
        {"inputs": [(a0 - 50000) / 1e6, (a1 + 50000) / 1e6]},
        {"click": "r-all"},
        {"click": "r-peak"},
        {"radio": "m-alloc"},
        {"click": "r-after"},
        {"radio": "m-alive"},
    ])
    assert out["tabindex"] == "0"
    s = out["steps"]
    assert s[0]["total"] == B[0] and lines_of(s[0], "phase_b") == {"phase_b": B}, s[0]
    frm, to = float(s[0]["from"]), float(s[0]["to"])
    assert frm <= b0 / 1e6 and to >= b1 / 1e6
    assert abs(float(s[1]["to"]) - (to + w / 1e6)) < 1e-6 and s[1]["from"] == s[0]["from"]
    assert abs(float(s[2]["to"]) - to) < 1e-6
    assert abs(float(s[2]["from"]) - (frm - w / 1e6)) < 1e-6
    assert s[3]["total"] == A[0] and lines_of(s[3], "phase_a") == {"phase_a": A}, s[3]
    assert s[4]["total"] == summary(capture, "--leaks")["total_bytes"]     # whole run, alive at the end
    assert s[5]["total"] == summary(capture)["peak_memory_bytes"]          # up to the peak
    assert s[6]["total"] >= s[5]["total"] and s[6]["alive"] is False       # all allocated up to it
    assert lines_of(s[7], "phase_a", "phase_b")["phase_a"] == NONE        # after the peak
    assert s[8]["alive"] is True


def test_typing_a_range_past_the_current_one(harness, capture, tmp_path):
    """From, then To, typed one box at a time, each past the range shown:
    the range is what was typed (From past To used to swap them, so the
    old end became the start)."""
    page = tmp_path / "t.html"
    memtap("flamegraph", "--temporal", "-o", page, capture)
    data = page_data(page)
    w = data["temporal"]["bucket_us"] / 1e6
    ph = phase_times(data)
    (a0, a1), (b0, b1) = ph["a"], ph["b"]
    assert a1 < b0
    out = run_page(harness, page, [{"inputs": [0, a1 / 1e6]},   # a range ending before B
                                   {"type": ["from", b0 / 1e6]},
                                   {"type": ["to", b1 / 1e6]}])
    s = out["steps"][1:]
    assert abs(float(s[0]["from"]) - b0 / 1e6) <= w and float(s[0]["to"]) >= float(s[0]["from"])
    assert abs(float(s[1]["from"]) - b0 / 1e6) <= w, s[1]
    assert abs(float(s[1]["to"]) - b1 / 1e6) <= w, s[1]
    assert out["errors"] == [], out["errors"]


def test_aggregate_capture_is_refused(tmp_path_factory):
    cap = trace(tmp_path_factory, "agg", "x = bytearray(1000)\n", "--aggregate")
    proc = memtap("flamegraph", "--temporal", "-o", cap.with_suffix(".html"), cap, check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memtap: ") and "aggregate" in err[0] \
        and "--temporal" in err[0], err
    assert not cap.with_suffix(".html").exists()


def test_temporal_and_temporary_exclude_each_other(capture):
    proc = memtap("flamegraph", "--temporal", "--temporary", capture, check=False)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


# 317 lines in outer() each calling inner(), whose 317 lines each allocate:
# 100,489 distinct stacks (as in test_reports_html.py).
WIDE_N = 317
WIDE = "\n".join(["KEEP = []", "def inner():"] +
                 ["    KEEP.append(bytearray(600))"] * WIDE_N +
                 ["def outer():"] + ["    inner()"] * WIDE_N + ["outer()"]) + "\n"


def test_100k_stacks(harness, tmp_path_factory, tmp_path):
    cap = trace(tmp_path_factory, "wide", WIDE)
    page = tmp_path / "wide.html"
    memtap("flamegraph", "--temporal", "-o", page, cap)
    tm = page_data(page)["temporal"]
    end = tm["nbuckets"] * tm["bucket_us"]
    out = run_page(harness, page, [{"range": [0, end]}, {"alloc": True}, {"range": [0, end // 2]}],
                   file="wide.py")
    # How fast it loads and redraws is measured in bench/, never asserted
    # here: machines are noisy. Here: the numbers are right at this size.
    # the whole run, alive at its end: the leaks; up to the peak: the peak
    assert out["steps"][0]["total"] == summary(cap, "--leaks")["total_bytes"]
    assert out["initial"]["total"] == summary(cap)["peak_memory_bytes"]
    # all 100,489 bytearrays (and the list's growth) were allocated in the run
    inner = out["steps"][1]["lines"]
    assert sum(inner[str(k)][1] for k in range(3, 3 + WIDE_N)) >= WIDE_N * WIDE_N
