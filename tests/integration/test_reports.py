"""Known-answer tests for the reporters (issue 3): summary, tree, table,
flamegraph, export and parse over real captures of small programs whose
allocations are known to the byte and to the line.

Each program is traced once per module (fixtures below); the tests then read
its capture with the reporters.  Sizes: bytearray(n) mallocs n + 1 bytes.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import (DEFAULT_PYTHON, MEMTAP, TIMEOUT, clean_env, line_of,
                      memtap_run)

MiB = 2 ** 20

# ---- the programs ------------------------------------------------------------

# 50 MiB kept for the whole run (a leak) under caller() -> make_big(), plus
# 2 MiB kept under caller() -> make_small(); 20 blocks of 1 MiB churned, each
# freed at once; then a 20 MiB block that lives only for a moment, alongside
# the 50 MiB: that moment is the peak.
MAIN = """\
KEEP = []

def make_big():
    return bytearray(50 * 2**20)  # @keep50

def make_small():
    return bytearray(2 * 2**20)  # @keep1

def caller():
    KEEP.append(make_big())  # @caller_big
    KEEP.append(make_small())  # @caller_small

def churn():
    for _ in range(20):
        b = bytearray(2**20)  # @churn
        del b

def spike():
    t = bytearray(20 * 2**20)  # @spike
    del t

caller()  # @call_caller
churn()
spike()
"""

# Four named threads, each keeping (i + 2) MiB + i bytes at one line.
THREADS = """\
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
KEEP = []
START = threading.Barrier(4)

def work(i):
    libc.prctl(15, ("worker-%d" % i).encode(), 0, 0, 0)   # PR_SET_NAME
    START.wait()
    KEEP.append(bytearray((i + 2) * 2**20 + i))  # @thr

ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in ts:
    t.start()
for t in ts:
    t.join()
"""

# A 200-deep recursion keeping 3 MiB at its bottom.
DEEP = """\
import sys
sys.setrecursionlimit(5000)
KEEP = []

def recurse(n):
    if n == 0:
        KEEP.append(bytearray(3 * 2**20 + 7))  # @bottom
        return
    recurse(n - 1)  # @recurse

recurse(200)  # @top
"""

BIG = 50 * MiB + 1
SMALL = 2 * MiB + 1
SPIKE = 20 * MiB + 1
CHURN = MiB + 1


def _trace(tmp_path_factory, name, text, extra=()):
    d = tmp_path_factory.mktemp(name)
    script = d / (name + ".py")
    script.write_text(text)
    cap = d / (name + ".bin")
    proc = memtap_run(["-o", cap, *extra, "--python", DEFAULT_PYTHON, script], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert cap.exists()
    return cap, script, text


@pytest.fixture(scope="module")
def main_capture(tmp_path_factory):
    if not os.access(MEMTAP, os.X_OK):
        pytest.fail("memtap is not built: %s" % MEMTAP)
    return _trace(tmp_path_factory, "main", MAIN)


@pytest.fixture(scope="module")
def threads_capture(tmp_path_factory):
    return _trace(tmp_path_factory, "threads", THREADS)


@pytest.fixture(scope="module")
def deep_capture(tmp_path_factory):
    return _trace(tmp_path_factory, "deep", DEEP)


# ---- helpers -------------------------------------------------------------------

def memtap(*args, cwd=None, ok=True):
    """Runs memtap ARGS; returns the CompletedProcess (text)."""
    proc = subprocess.run([str(MEMTAP), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, env=clean_env({"NO_COLOR": "1"}))
    if ok:
        assert proc.returncode == 0, "memtap %s: %d\n%s" % (
            " ".join(map(str, args)), proc.returncode, proc.stderr)
    return proc


def summary_json(cap, *opts):
    proc = memtap("summary", cap, "--json", *opts)
    return json.loads(proc.stdout)


def rows_at(report, script, line):
    """Summary rows at script:line."""
    return [r for r in report["rows"] if r["file"] == str(script) and r["line"] == line]


def own_at(report, script, line):
    """(own_bytes, own_count) at script:line, (0, 0) when no row."""
    rows = rows_at(report, script, line)
    assert len(rows) <= 1 or report.get("split_threads"), rows
    return (sum(r["own_bytes"] for r in rows), sum(r["own_count"] for r in rows))


def total_at(report, script, line):
    rows = rows_at(report, script, line)
    return (sum(r["total_bytes"] for r in rows), sum(r["total_count"] for r in rows))


def embedded_json(html):
    m = re.search(r'<script id="memtap-data" type="application/json">(.*?)</script>',
                  html, re.S)
    assert m, "no embedded data in the page"
    return json.loads(m.group(1))


def assert_self_contained(html):
    """No external scripts, styles, fonts or images: the page works offline."""
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    assert not re.search(r"<link[^>]*\bhref=", html, re.I)
    assert not re.search(r"@import", html)
    assert "http://" not in html and "https://" not in html.replace(
        "https://www.speedscope.app", "")
    # the embedded JSON cannot close its <script> early
    body = re.search(r'type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in body


def assert_scripts_parse(html, tmp_path):
    """The page's inline JavaScript is valid (checked with node when installed)."""
    node = shutil.which("node") or shutil.which("nodejs")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert scripts, "no inline script"
    if not node:
        return
    js = tmp_path / "page.js"
    js.write_text("\n".join(scripts))
    proc = subprocess.run([node, "--check", str(js)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr


# ---- summary: peak, leaks, temporary ---------------------------------------------

def test_summary_peak_exact(main_capture):
    cap, script, text = main_capture
    rep = summary_json(cap)
    assert rep["mode"] == "peak"
    assert own_at(rep, script, line_of(text, "keep50")) == (BIG, 1)
    assert own_at(rep, script, line_of(text, "spike")) == (SPIKE, 1)
    assert own_at(rep, script, line_of(text, "keep1")) == (SMALL, 1)
    # the churn was over before the spike
    assert own_at(rep, script, line_of(text, "churn")) == (0, 0)
    # every live byte at the peak is in some row, exactly once
    assert sum(r["own_bytes"] for r in rep["rows"]) == rep["peak_memory_bytes"]
    assert rep["total_bytes"] == rep["peak_memory_bytes"]
    # start-up memory besides the known blocks stays small
    assert BIG + SMALL + SPIKE <= rep["peak_memory_bytes"] < BIG + SMALL + SPIKE + 16 * MiB
    # functions are named
    assert rows_at(rep, script, line_of(text, "keep50"))[0]["function"] == "make_big"
    assert rows_at(rep, script, line_of(text, "spike"))[0]["function"] == "spike"


def test_summary_leaks(main_capture):
    cap, script, text = main_capture
    rep = summary_json(cap, "--leaks")
    assert rep["mode"] == "leaks"
    assert own_at(rep, script, line_of(text, "keep50")) == (BIG, 1)
    assert own_at(rep, script, line_of(text, "keep1")) == (SMALL, 1)
    assert own_at(rep, script, line_of(text, "spike")) == (0, 0)
    assert own_at(rep, script, line_of(text, "churn")) == (0, 0)
    assert rep["total_bytes"] < BIG + SMALL + 16 * MiB


def test_summary_temporary(main_capture):
    cap, script, text = main_capture
    rep = summary_json(cap, "--temporary")
    assert rep["mode"] == "temporary"
    assert own_at(rep, script, line_of(text, "churn")) == (20 * CHURN, 20)
    assert own_at(rep, script, line_of(text, "spike")) == (SPIKE, 1)
    assert own_at(rep, script, line_of(text, "keep50")) == (0, 0)
    assert own_at(rep, script, line_of(text, "keep1")) == (0, 0)
    # --temporary N takes an optional count
    rep5 = summary_json(cap, "--temporary", "5")
    assert own_at(rep5, script, line_of(text, "churn")) == (20 * CHURN, 20)


def test_summary_own_and_total(main_capture):
    cap, script, text = main_capture
    rep = summary_json(cap, "--leaks")
    # caller's lines: nothing allocated there, everything below counted
    assert own_at(rep, script, line_of(text, "caller_big")) == (0, 0)
    assert total_at(rep, script, line_of(text, "caller_big")) == (BIG, 1)
    assert total_at(rep, script, line_of(text, "caller_small")) == (SMALL, 1)
    # the module line that calls caller() holds both callees
    assert own_at(rep, script, line_of(text, "call_caller")) == (0, 0)
    assert total_at(rep, script, line_of(text, "call_caller")) == (BIG + SMALL, 2)
    # a leaf's total is its own
    assert total_at(rep, script, line_of(text, "keep50")) == (BIG, 1)
    for r in rep["rows"]:
        assert r["total_bytes"] >= r["own_bytes"] and r["total_count"] >= r["own_count"], r


def test_summary_sort_and_rows(main_capture):
    cap, script, text = main_capture
    rep = summary_json(cap, "-n", "3")
    assert len(rep["rows"]) == 3
    assert [r["own_bytes"] for r in rep["rows"]] == sorted(
        (r["own_bytes"] for r in rep["rows"]), reverse=True)
    assert rep["rows"][0]["line"] == line_of(text, "keep50")
    rep = summary_json(cap, "--sort", "total")
    totals = [r["total_bytes"] for r in rep["rows"]]
    assert totals == sorted(totals, reverse=True)
    rep = summary_json(cap, "--sort", "count")
    counts = [r["own_count"] for r in rep["rows"]]
    assert counts == sorted(counts, reverse=True)
    keys = {"function", "file", "line", "own_bytes", "own_count", "total_bytes", "total_count"}
    assert all(keys <= set(r) for r in rep["rows"])


def test_summary_terminal_table(main_capture):
    cap, script, text = main_capture
    out = memtap("summary", cap).stdout
    assert "\033[" not in out               # not a TTY: no colours
    lines = out.splitlines()
    assert lines[0].startswith("Peak memory:")
    big = [l for l in lines if "%s:%d" % (script, line_of(text, "keep50")) in l]
    assert len(big) == 1 and "50.0 MiB" in big[0] and "make_big" in big[0], out
    out = memtap("summary", "--leaks", cap).stdout
    assert out.startswith("Leaks:")
    out = memtap("summary", "--temporary", cap).stdout
    assert out.startswith("Temporary allocations:")


def test_summary_terminal_shares(main_capture):
    # OWN % COUNT TOTAL % COUNT: each % is that column's share of the shown set
    cap, script, text = main_capture
    rep = summary_json(cap, "--leaks")
    out = memtap("summary", "--leaks", "--sort", "total", "-n", "1000", cap).stdout
    lines = out.splitlines()
    assert lines[2].split() == ["OWN", "%", "COUNT", "TOTAL", "%", "COUNT", "LOCATION"], out
    row = [l for l in lines if l.endswith("%s:%d" % (script, line_of(text, "call_caller")))]
    assert len(row) == 1, out
    share = "%.1f%%" % (100.0 * (BIG + SMALL) / rep["total_bytes"])
    assert row[0].split()[:8] == ["0", "B", "0.0%", "0", "52.0", "MiB", share, "2"], row


# ---- threads ------------------------------------------------------------------------

def test_split_threads_summary(threads_capture):
    cap, script, text = threads_capture
    line = line_of(text, "thr")
    merged = summary_json(cap)
    assert own_at(merged, script, line) == (sum((i + 2) * MiB + i + 1 for i in range(4)), 4)
    split = summary_json(cap, "--split-threads")
    rows = rows_at(split, script, line)
    got = sorted((r["thread"], r["own_bytes"], r["own_count"]) for r in rows)
    assert [(t.split(" ")[0], b, c) for t, b, c in got] == [
        ("worker-%d" % i, (i + 2) * MiB + i + 1, 1) for i in range(4)], rows


def test_split_threads_tree_and_collapsed(threads_capture):
    cap, script, text = threads_capture
    out = memtap("tree", "--split-threads", "-n", "4", cap).stdout
    for i in range(4):
        assert "worker-%d" % i in out, out
    lines = memtap("export", "--format", "collapsed", "--split-threads", cap).stdout.splitlines()
    leaf = "work (%s:%d)" % (script, line_of(text, "thr"))
    per_thread = {}
    for l in lines:
        stack, n = l.rsplit(" ", 1)
        frames = stack.split(";")
        if frames[-1] == leaf:
            per_thread[frames[0].split(" ")[0]] = int(n)
    assert per_thread == {"worker-%d" % i: (i + 2) * MiB + i + 1 for i in range(4)}, lines[:8]
    # the CSV names each thread as the collapsed stacks' root does (the
    # name and its id: two threads may share a name)
    roots = {l.rsplit(" ", 1)[0].split(";")[0] for l in lines}
    rows = list(csv.DictReader(io.StringIO(
        memtap("export", "--format", "csv", "--split-threads", cap).stdout)))
    assert {r["thread"] for r in rows} == roots, (roots, {r["thread"] for r in rows})
    assert all(re.fullmatch(r".+ \(thread \d+\)", t) for t in roots), roots


def test_split_threads_flamegraph(threads_capture, tmp_path):
    cap, script, text = threads_capture
    out = tmp_path / "fg.html"
    memtap("flamegraph", "--split-threads", "-o", out, cap)
    data = embedded_json(out.read_text())
    strings, locs = data["strings"], data["locs"]
    roots = [strings[locs[4 * n[0]]] for n in zip(*[iter(data["nodes"])] * 4) if n[1] == 0]
    names = {r.split(" ")[0] for r in roots}
    assert {"worker-%d" % i for i in range(4)} <= names, roots


# ---- tree ------------------------------------------------------------------------------

def test_tree_deep_recursion(deep_capture):
    cap, script, text = deep_capture
    out = memtap("tree", "-n", "1", cap).stdout
    rec = "%s:%d" % (script, line_of(text, "recurse"))
    assert sum(1 for l in out.splitlines() if l.rstrip().endswith(rec)) == 200, out[:3000]
    bottom = [l for l in out.splitlines() if l.rstrip().endswith(
        "%s:%d" % (script, line_of(text, "bottom")))]
    top = [l for l in out.splitlines() if l.rstrip().endswith(
        "%s:%d" % (script, line_of(text, "top")))]
    assert len(bottom) == 1 and len(top) == 1
    assert "3.00 MiB" in bottom[0] and "1 allocation" in bottom[0]
    # root first: <module> above the 200 frames, the allocating frame last
    lines = [l for l in out.splitlines() if str(script) in l]
    assert lines[0] is top[0] or lines[0] == top[0]
    assert lines[-1] == bottom[0]


TOO_DEEP = """\
import sys
sys.setrecursionlimit(100000)
KEEP = []

def recurse(n, size):
    if n == 0:
        KEEP.append(bytearray(size))  # @bottom
        return
    recurse(n - 1, size)  # @recurse

recurse(int(sys.argv[1]), 3 * 2**20)  # @fits
recurse(int(sys.argv[1]) + 1, 5 * 2**20)  # @cut
recurse(3000, 9 * 2**20)  # @mid
recurse(20000, 7 * 2**20)  # @far
"""


def test_a_stack_too_deep_keeps_its_root(tmp_path):
    # Stacks are recorded up to 2048 frames: a deeper one, up to 4096, keeps
    # its innermost 1983 and its outermost 64, with a marker between, so the
    # program's own top lines still total what was allocated beneath them;
    # deeper still, its innermost 2047 after the marker.
    script = tmp_path / "deep.py"
    script.write_text(TOO_DEEP)
    cap = tmp_path / "deep.bin"
    # <module> + 2047 recurse frames = 2048: the first call fits exactly
    proc = memtap_run(["-o", cap, "--python", DEFAULT_PYTHON, script, "2046"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stacks = {}
    for line in memtap("export", "--format", "collapsed", "--leaks", cap).stdout.splitlines():
        frames, size = line.rsplit(" ", 1)
        stacks[int(size)] = frames.split(";")
    rec = "recurse (%s:%d)" % (script, line_of(TOO_DEEP, "recurse"))
    bottom = "recurse (%s:%d)" % (script, line_of(TOO_DEEP, "bottom"))
    marker = "[deeper frames not recorded]"
    for size, top in ((3 * 2**20 + 1, "fits"), (5 * 2**20 + 1, "cut"),
                      (9 * 2**20 + 1, "mid"), (7 * 2**20 + 1, "far")):
        module = "<module> (%s:%d)" % (script, line_of(TOO_DEEP, top))
        got = stacks[size]
        if top == "fits":
            assert got == [module] + [rec] * 2046 + [bottom], got[:3]
        elif top in ("cut", "mid"):
            assert got == [module] + [rec] * 63 + [marker] + [rec] * 1982 + [bottom], (
                len(got), got[:3], got[60:70])
        else:  # deeper than 4,096: only the innermost frames, after the marker
            assert got == [marker] + [rec] * 2046 + [bottom], (len(got), got[:3])
    rows = json.loads(memtap("summary", "--leaks", "--json", cap).stdout)["rows"]
    totals = {r["line"]: r["total_bytes"] for r in rows if r["file"] == str(script)
              and r["function"] == "<module>"}
    # (20,000 frames grow CPython's frame stack: chunks allocated at "far"
    # while the stack was shallow enough are there; the big block is not)
    far = totals.pop(line_of(TOO_DEEP, "far"), 0)
    assert totals == {line_of(TOO_DEEP, "fits"): 3 * 2**20 + 1,
                      line_of(TOO_DEEP, "cut"): 5 * 2**20 + 1,
                      line_of(TOO_DEEP, "mid"): 9 * 2**20 + 1}, totals
    assert far < 7 * 2**20


def test_tree_main(main_capture):
    cap, script, text = main_capture
    out = memtap("tree", "--leaks", "-n", "2", cap).stdout
    assert out.startswith("Leaks:")
    assert "make_big" in out and "make_small" in out and "spike" not in out
    assert "the 2 biggest shown" in out


# ---- flamegraph and table ------------------------------------------------------------------

def _nodes(data):
    return [tuple(data["nodes"][i:i + 4]) for i in range(0, len(data["nodes"]), 4)]


def test_flamegraph(main_capture, tmp_path):
    cap, script, text = main_capture
    # default name, in the working directory
    proc = memtap("flamegraph", cap, cwd=tmp_path)
    out = tmp_path / "memtap-flamegraph-main.html"
    assert out.exists(), (proc.stderr, list(tmp_path.iterdir()))
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert_self_contained(html)
    assert_scripts_parse(html, tmp_path)
    data = embedded_json(html)
    assert data["mode"] == "peak" and data["inverted"] is False
    rep = summary_json(cap)
    assert data["peak_bytes"] == rep["peak_memory_bytes"]
    nodes = _nodes(data)
    # the roots sum to the peak; every node holds at least its children
    assert sum(n[2] for n in nodes if n[1] == 0) == rep["peak_memory_bytes"]
    strings, locs = data["strings"], data["locs"]

    def where(n):
        loc = n[0]
        return strings[locs[4 * loc]], strings[locs[4 * loc + 1]], locs[4 * loc + 2]

    big = [n for n in nodes if where(n) == ("make_big", str(script), line_of(text, "keep50"))]
    assert [(n[2], n[3]) for n in big] == [(BIG, 1)]
    spike = [n for n in nodes if where(n) == ("spike", str(script), line_of(text, "spike"))]
    assert [(n[2], n[3]) for n in spike] == [(SPIKE, 1)]
    # pre-order: a node's children follow it at depth + 1 and sum to at most its bytes
    for i, n in enumerate(nodes):
        kids, j = 0, i + 1
        while j < len(nodes) and nodes[j][1] > n[1]:
            if nodes[j][1] == n[1] + 1:
                kids += nodes[j][2]
            j += 1
        assert kids <= n[2], (i, n)


def test_default_report_names_have_no_control_characters(main_capture, tmp_path):
    # a capture named with a newline, an escape and a C1 control: the page
    # gets '_' for each, and the message names the file really written
    cap, _, _ = main_capture
    odd = tmp_path / "app\nx\x1b[31m\u0085y.bin"
    shutil.copy(cap, odd)
    for kind in ("flamegraph", "table"):
        proc = memtap(kind, odd, cwd=tmp_path)
        want = "memtap-%s-app_x_[31m_y.html" % kind
        assert (tmp_path / want).exists(), sorted(p.name for p in tmp_path.iterdir())
        assert "memtap: wrote " + want in proc.stderr, proc.stderr


def test_flamegraph_inverted_and_modes(main_capture, tmp_path):
    cap, script, text = main_capture
    out = tmp_path / "inv.html"
    memtap("flamegraph", "--inverted", "--leaks", "-o", out, cap)
    data = embedded_json(out.read_text())
    assert data["inverted"] is True and data["mode"] == "leaks"
    strings, locs = data["strings"], data["locs"]
    roots = {strings[locs[4 * n[0]]]: n[2] for n in _nodes(data) if n[1] == 0}
    # inverted: the allocating functions are the roots
    assert roots.get("make_big") == BIG and roots.get("make_small") == SMALL, roots
    assert "spike" not in roots
    out = tmp_path / "tmp.html"
    memtap("flamegraph", "--temporary", "-o", out, cap)
    data = embedded_json(out.read_text())
    assert data["mode"] == "temporary"


def test_table(main_capture, tmp_path):
    cap, script, text = main_capture
    memtap("table", cap, cwd=tmp_path)
    out = tmp_path / "memtap-table-main.html"
    assert out.exists(), list(tmp_path.iterdir())
    html = out.read_text()
    assert_self_contained(html)
    assert_scripts_parse(html, tmp_path)
    data = embedded_json(html)
    rows = [tuple(data["rows"][i:i + 4]) for i in range(0, len(data["rows"]), 4)]
    assert len(rows) == len(data["stacks"])
    rep = summary_json(cap)
    assert sum(r[1] for r in rows) == rep["peak_memory_bytes"]
    strings, locs = data["strings"], data["locs"]
    leaves = {}
    for (thread, nbytes, count, allocs), stack in zip(rows, data["stacks"]):
        loc = stack[0]
        key = (strings[locs[4 * loc]], locs[4 * loc + 2])
        leaves[key] = leaves.get(key, 0) + nbytes
    assert leaves[("make_big", line_of(text, "keep50"))] == BIG
    assert leaves[("spike", line_of(text, "spike"))] == SPIKE
    memtap("table", "--leaks", "-o", tmp_path / "l.html", cap)
    data = embedded_json((tmp_path / "l.html").read_text())
    assert data["mode"] == "leaks"
    assert sum(data["rows"][i + 1] for i in range(0, len(data["rows"]), 4)) < BIG + SMALL + 16 * MiB


# ---- exports ---------------------------------------------------------------------------------

def test_export_collapsed(main_capture):
    cap, script, text = main_capture
    out = memtap("export", "--format", "collapsed", cap).stdout
    rep = summary_json(cap)
    total, stacks = 0, {}
    for l in out.splitlines():
        m = re.fullmatch(r"(.+) (\d+)", l)
        assert m, l
        total += int(m.group(2))
        stacks[m.group(1)] = int(m.group(2))
    assert total == rep["peak_memory_bytes"]
    big = "<module> (%s:%d);caller (%s:%d);make_big (%s:%d)" % (
        script, line_of(text, "call_caller"), script, line_of(text, "caller_big"),
        script, line_of(text, "keep50"))
    assert stacks.get(big) == BIG, list(stacks)[:5]
    leaks = memtap("export", "--format", "collapsed", "--leaks", cap).stdout
    assert "spike" not in leaks and big + " %d" % BIG in leaks.splitlines()


NAMELESS = """\
import sys
def mk():
    return bytearray(300000)  # @alloc
c = mk.__code__.replace(co_name="", co_filename="")
if sys.version_info >= (3, 11):
    c = c.replace(co_qualname="")
mk.__code__ = c
KEEP = mk()
"""


def test_export_frame_without_name_or_file(tmp_path):
    """Code with an empty name and file name (compile(src, "", ...)) still
    has its line: every report names it, never an empty frame or location
    (exports had "...;" and the line was lost; summary, tree and diff showed
    a blank location)."""
    script = tmp_path / "nameless.py"
    script.write_text(NAMELESS)
    cap = tmp_path / "c.bin"
    proc = memtap_run(["-q", "-o", cap, "--python", DEFAULT_PYTHON, script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = line_of(NAMELESS, "alloc")
    shown = "[unnamed]  [no file]:%d" % line
    assert re.search(r"^ *293 KiB .*  1  " + re.escape(shown) + "$",
                     memtap("summary", "--leaks", cap).stdout, re.M)
    assert re.search(r"293 KiB \(.*, 1 allocation\)  " + re.escape(shown) + "$",
                     memtap("tree", "--leaks", cap).stdout, re.M)
    assert re.search(r"^ +293 KiB +293 KiB .* \+0  " + re.escape(shown) + "$",
                     memtap("diff", "--leaks", cap, cap).stdout, re.M)
    leaf = "[unnamed] ([no file]:%d)" % line
    stacks = [l.rsplit(" ", 1) for l in memtap("export", "--leaks", "--format", "collapsed",
                                                cap).stdout.splitlines()]
    assert [w for st, w in stacks if st.split(";")[-1] == leaf] == ["300001"], stacks[:5]
    rows = list(csv.DictReader(io.StringIO(memtap("export", "--leaks", "--format", "csv",
                                                  cap).stdout)))
    assert [r["bytes"] for r in rows if r["stack"].split(";")[-1] == leaf] == ["300001"]
    austin = memtap("export", "--leaks", "--format", "austin", cap).stdout
    assert [l for l in austin.splitlines()
            if l.endswith(";?:[unnamed]:%d 0,0,300001" % line_of(NAMELESS, "alloc"))], austin


LONG_NAMES = """\
NAME = "f" + "\\u00e9" * 3000
src = "def %s():\\n    return bytearray(400000)\\nKEEP = %s()\\n" % (NAME, NAME)
exec(compile(src, "long.py", "exec"))
# a file name that is no UTF-8 (bytes 0xff 0xfe), as os.fsdecode gives it
exec(compile("KEEP2 = bytearray(500000)\\n", b"/tmp/x\\xff\\xfe.py".decode("utf-8", "surrogateescape"), "exec"))
"""


def test_exports_keep_long_names_and_write_utf8(tmp_path):
    """A frame whose name is longer than 4 KiB keeps its (file:line) in
    exports (the text was cut at 4,096 bytes and the line was lost), and
    the name is cut between characters (it was cut in the middle of one); a file name that is no UTF-8 comes
    out with U+FFFD where its bytes were, as the readers of these formats
    take nothing else (Austin's tools failed on the raw bytes)."""
    script = tmp_path / "names.py"
    script.write_text(LONG_NAMES)
    cap = tmp_path / "c.bin"
    proc = memtap_run(["-q", "-o", cap, "--python", DEFAULT_PYTHON, script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    name = "f" + "\u00e9" * 2047  # reports keep 4,096 bytes of a name: whole characters
    bad = "/tmp/x\ufffd\ufffd.py"

    def export(fmt):
        out = subprocess.run([str(MEMTAP), "export", "--leaks", "--format", fmt, str(cap)],
                             capture_output=True, timeout=TIMEOUT, env=clean_env())
        assert out.returncode == 0, out.stderr
        return out.stdout.decode("utf-8")  # strict: the file is UTF-8

    stacks = dict(l.rsplit(" ", 1) for l in export("collapsed").splitlines())
    assert [w for st, w in stacks.items()
            if st.endswith(";%s (long.py:2)" % name)] == ["400001"]
    assert [w for st, w in stacks.items()
            if st.endswith(";<module> (%s:1)" % bad)] == ["500001"]
    rows = list(csv.DictReader(io.StringIO(export("csv"))))
    assert [(r["function"], r["bytes"]) for r in rows
            if r["stack"].endswith(";%s (long.py:2)" % name)] == [(name, "400001")]
    assert [r["file"] for r in rows if r["bytes"] == "500001"] == [bad]
    austin = export("austin").splitlines()
    assert [l for l in austin if l.endswith(";long.py:%s:2 0,0,400001" % name)]
    assert [l for l in austin if l.endswith(";%s:<module>:1 0,0,500001" % bad)]
    # the text reports cut a name too long for a line, never where it is
    # (text reports write a name's bytes as they are, as ls does)
    stats = subprocess.run([str(MEMTAP), "stats", str(cap)], capture_output=True,
                           timeout=TIMEOUT, env=clean_env()).stdout.decode(errors="replace")
    assert re.search(r"  f\u00e9+\.\.\. \(long\.py:2\)$", stats, re.M), stats


def test_export_speedscope(main_capture, tmp_path):
    cap, script, text = main_capture
    out = tmp_path / "s.json"
    memtap("export", "--format", "speedscope", "-o", out, cap)
    doc = json.loads(out.read_text())
    # speedscope's file-format schema: required keys and types
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert isinstance(doc["shared"]["frames"], list)
    for fr in doc["shared"]["frames"]:
        assert isinstance(fr["name"], str)
        assert set(fr) <= {"name", "file", "line", "col"}
    nframes = len(doc["shared"]["frames"])
    assert doc["profiles"]
    rep = summary_json(cap)
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and p["unit"] == "bytes"
        assert isinstance(p["name"], str)
        assert isinstance(p["startValue"], (int, float)) and isinstance(p["endValue"], (int, float))
        assert len(p["samples"]) == len(p["weights"])
        for s in p["samples"]:
            assert all(isinstance(i, int) and 0 <= i < nframes for i in s)
        assert sum(p["weights"]) == p["endValue"] - p["startValue"]
    assert sum(doc["profiles"][0]["weights"]) == rep["peak_memory_bytes"]
    frames = doc["shared"]["frames"]
    found = [w for s, w in zip(doc["profiles"][0]["samples"], doc["profiles"][0]["weights"])
             if frames[s[-1]]["name"] == "make_big"]
    assert found == [BIG]
    assert frames[doc["profiles"][0]["samples"][0][-1]].get("line") == line_of(text, "keep50")


def test_export_csv(main_capture):
    cap, script, text = main_capture
    out = memtap("export", "--format", "csv", cap).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and set(rows[0]) == {"thread", "bytes", "count", "allocators", "function",
                                     "file", "line", "stack"}
    rep = summary_json(cap)
    assert sum(int(r["bytes"]) for r in rows) == rep["peak_memory_bytes"]
    big = [r for r in rows if r["function"] == "make_big"]
    assert len(big) == 1
    assert (int(big[0]["bytes"]), int(big[0]["count"]), big[0]["file"], int(big[0]["line"])) == (
        BIG, 1, str(script), line_of(text, "keep50"))
    assert big[0]["allocators"] == "malloc"
    assert big[0]["stack"].split(";")[-1] == "make_big (%s:%d)" % (script, line_of(text, "keep50"))


def test_export_austin(main_capture):
    cap, script, text = main_capture
    out = memtap("export", "--format", "austin", cap).stdout
    meta = [l for l in out.splitlines() if l.startswith("# ")]
    samples = [l for l in out.splitlines() if l and not l.startswith("#")]
    assert "# mode: full" in meta
    rep = summary_json(cap)
    total = 0
    for l in samples:
        m = re.fullmatch(r"P\d+;T\d+:[0-9a-f]+(;[^;]+)+ 0,0,(\d+)", l)
        assert m, l
        total += int(m.group(2))
    assert total == rep["peak_memory_bytes"]
    assert any(l.endswith(";%s:make_big:%d 0,0,%d" % (script, line_of(text, "keep50"), BIG))
               for l in samples)


# ---- parse -------------------------------------------------------------------------------------

def test_parse_lists_every_record(main_capture):
    cap, script, text = main_capture
    out = memtap("parse", cap).stdout.splitlines()
    assert out[0].startswith("HEADER version=")
    m = re.fullmatch(r"# (\d+) records, complete", out[-1])
    assert m, out[-1]
    records = out[1:-1]
    assert len(records) == int(m.group(1))
    kinds = {l.split(" ")[0] for l in records}
    assert {"ALLOC", "FREE", "CODE", "PYNODE", "THREAD", "TRAILER"} <= kinds, kinds
    assert records[-1].startswith("TRAILER exit=0")

    allocs = [l for l in records if l.startswith("ALLOC ") and " size=%d " % BIG in l]
    assert len(allocs) == 1
    # the trailer's event count matches the events listed
    stats = json.loads(memtap("stats", cap, "--json").stdout)
    n_alloc = sum(1 for l in records if l.startswith(("ALLOC ", "REALLOC ")))
    assert n_alloc == stats["total_allocations"]


def test_parse_takes_a_file_after_a_double_dash(main_capture, tmp_path):
    cap, _, _ = main_capture
    (tmp_path / "-x.bin").write_bytes(cap.read_bytes())
    proc = subprocess.run([str(MEMTAP), "parse", "--", "-x.bin"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == memtap("parse", cap).stdout


# ---- bad inputs --------------------------------------------------------------------------------

REPORTS = [["summary"], ["tree"], ["table", "-o", "{out}"], ["flamegraph", "-o", "{out}"],
           ["export", "--format", "csv"], ["parse"]]


def _cmd(cmd, path, tmp_path):
    return [a.replace("{out}", str(tmp_path / "out.html")) for a in cmd] + [str(path)]


@pytest.mark.parametrize("cmd", REPORTS, ids=lambda c: c[0])
@pytest.mark.parametrize("kind", ["missing", "text", "empty", "directory"])
def test_bad_input(cmd, kind, tmp_path):
    path = tmp_path / "in.bin"
    if kind == "text":
        path.write_text("hello, this is not a capture\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    proc = memtap(*_cmd(cmd, path, tmp_path), ok=False)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    err = proc.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("memtap: ") and str(path) in err[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out.html").exists()


@pytest.mark.parametrize("cmd", REPORTS, ids=lambda c: c[0])
def test_truncated_capture(cmd, main_capture, tmp_path):
    cap, script, text = main_capture
    data = cap.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) * 2 // 3])
    proc = memtap(*_cmd(cmd, cut, tmp_path), ok=False)
    assert proc.returncode == 0, proc.stderr
    warn = [l for l in proc.stderr.splitlines() if l.startswith("memtap: warning:")]
    assert len(warn) == 1 and "truncated" in warn[0] or "incomplete" in warn[0], proc.stderr
    if cmd[0] == "summary":
        assert "incomplete" in proc.stdout
    if cmd[0] == "table" or cmd[0] == "flamegraph":
        data = embedded_json((tmp_path / "out.html").read_text())
        assert data["complete"] is False and data["warning"]


def test_report_written_again_keeps_its_files_mode(main_capture, tmp_path):
    # written to a new name and renamed over the old file: the new file is
    # given the old one's mode (a 0640 report came back 0644)
    cap, _, _ = main_capture
    out = tmp_path / "m.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    memtap("export", "--format", "csv", "-o", out, cap)
    assert out.read_text().startswith("thread,bytes,")
    assert out.stat().st_mode & 0o7777 == 0o640


def test_exports_of_an_incomplete_capture_say_so(main_capture, tmp_path):
    # the files outlive the warning on stderr: speedscope's profile name
    # (its schema has no other place) and Austin's metadata carry it
    cap, _, _ = main_capture
    data = cap.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) // 2])
    doc = json.loads(memtap("export", "--format", "speedscope", cut).stdout)
    assert doc["profiles"][0]["name"] == "peak (incomplete capture)"
    whole = json.loads(memtap("export", "--format", "speedscope", cap).stdout)
    assert whole["profiles"][0]["name"] == "peak"
    meta = [l for l in memtap("export", "--format", "austin", cut).stdout.splitlines()
            if l.startswith("# incomplete: ")]
    assert len(meta) == 1, meta
    assert not [l for l in memtap("export", "--format", "austin", cap).stdout.splitlines()
                if l.startswith("# incomplete")]


def test_summary_json_incomplete(main_capture, tmp_path):
    cap, script, text = main_capture
    data = cap.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) // 2])
    proc = memtap("summary", "--json", cut)
    rep = json.loads(proc.stdout)
    assert rep["complete"] is False
    assert sum(r["own_bytes"] for r in rep["rows"]) == rep["total_bytes"]


def test_usage_errors(main_capture):
    cap, _, _ = main_capture
    for args in (["summary"], ["summary", cap, "--sort", "bogus"],
                 ["summary", cap, "--leaks", "--temporary"], ["export", cap],
                 ["export", "--format", "nope", cap], ["tree", cap, "--json"],
                 ["parse", "--bogus", cap], ["summary", cap, "--leaks=false"],
                 ["summary", cap, "--json=no"], ["tree", cap, "--split-threads=0"],
                 ["summary", cap, "-n", "0"], ["tree", cap, "-n", "0"],
                 ["summary", "--temporary", "abc", cap]):
        proc = memtap(*args, ok=False)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("memtap: "), proc.stderr
        # what is wrong, then the command's synopsis (reports.md)
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and lines[1].startswith("usage: memtap %s " % args[0]), (
            args, proc.stderr)


def test_short_options_take_attached_values(main_capture, tmp_path):
    """-n5 and -oFILE as getopt takes them (-n5 was an unknown option), and
    diff's --rows=N as the other reports take it."""
    cap, _, _ = main_capture
    for cmd in ("summary", "tree"):
        assert memtap(cmd, "-n2", cap).stdout == memtap(cmd, "-n", "2", cap).stdout
    assert memtap("diff", "-n1", cap, cap).stdout == memtap("diff", "-n", "1", cap, cap).stdout
    assert (memtap("diff", "--rows=1", cap, cap).stdout
            == memtap("diff", "--rows", "1", cap, cap).stdout)
    memtap("export", "-fcsv", "-o" + str(tmp_path / "x.csv"), cap)
    assert (tmp_path / "x.csv").read_text().startswith("thread,bytes,")
    proc = memtap("summary", "-n0", cap, ok=False)
    assert proc.returncode == 2 and "bad row count '0'" in proc.stderr, proc.stderr


def test_numbers_out_of_range(main_capture):
    """A row count beyond any report's rows asks for all of them; a
    --temporary count out of range says its range, a number too big for
    any integer included."""
    cap, _, _ = main_capture
    every = memtap("summary", "--json", cap).stdout
    for n in ("100000001", "2147483647", "99999999999999999999"):
        assert memtap("summary", "--json", "-n", n, cap).stdout == every
        assert memtap("tree", "-n", n, cap).stdout == memtap("tree", "-n", "100000000", cap).stdout
    assert (memtap("diff", cap, cap, "-n", "200000000").stdout ==
            memtap("diff", cap, cap, "-n", "100000000").stdout)
    for n in ("0", "1000000001", "99999999999999999999", "-1"):
        proc = memtap("summary", "--temporary", n, cap, ok=False)
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[0] == (
            "memtap: bad --temporary value '%s' (1 to 1000000000)" % n), proc.stderr


def test_collect_usage_errors(tmp_path):
    """memtap collect (the Tracker's collector) says what is wrong in its
    own words, and starts no collection."""
    out = tmp_path / "c.bin"
    for args, first in ((["--bogus"], "memtap: unknown option '--bogus'"),
                        (["-o"], "memtap: '-o' needs a value"),
                        (["-o", out, "--pid"], "memtap: '--pid' needs a value"),
                        (["-o", out, "--pid", "12x"],
                         "memtap: --pid wants a process id, not '12x'"),
                        (["-o", out, "--pid", "0"], "memtap: --pid wants a process id, not '0'"),
                        (["-o", out], "memtap: --pid is needed"),
                        (["--pid", "5"], "memtap: -o FILE is needed"),
                        (["-o", out, "--pid", "5", "x"], "memtap: unexpected argument 'x'")):
        proc = memtap("collect", *args, ok=False)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert proc.stderr.splitlines()[0] == first, (args, proc.stderr)
        assert "usage: memtap collect" in proc.stderr
    assert not out.exists()


def test_stdout_that_cannot_be_written(main_capture):
    cap, _, _ = main_capture
    for cmd in (["stats"], ["stats", "--json"], ["summary"], ["tree"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([str(MEMTAP), *cmd, str(cap)], stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
        assert proc.returncode == 1 and proc.stderr == (
            "memtap: cannot write '<stdout>': No space left on device\n"), (cmd, proc.stderr)


def test_export_speedscope_split_threads(threads_capture, tmp_path):
    cap, script, text = threads_capture
    doc = json.loads(memtap("export", "--format", "speedscope", "--split-threads", cap).stdout)
    profiles = doc["profiles"]
    # one profile per thread that allocated, none empty, the biggest active
    assert all(p["samples"] and p["weights"] for p in profiles), [p["name"] for p in profiles]
    assert doc["activeProfileIndex"] == 0
    assert profiles[0]["endValue"] == max(p["endValue"] for p in profiles)
    for i in range(4):
        named = [p for p in profiles if "worker-%d" % i in p["name"]]
        assert len(named) == 1, [p["name"] for p in profiles]
        frames = doc["shared"]["frames"]
        got = [w for s, w in zip(named[0]["samples"], named[0]["weights"])
               if frames[s[-1]]["name"] == "work"]
        assert got == [(i + 2) * MiB + i + 1]
    merged = json.loads(memtap("export", "--format", "speedscope", cap).stdout)
    assert len(merged["profiles"]) == 1
    assert sum(p["endValue"] for p in profiles) == merged["profiles"][0]["endValue"]


def test_export_austin_thread_ids(threads_capture):
    cap, script, text = threads_capture
    stats = json.loads(memtap("stats", cap, "--json").stdout)
    tids = {"%x" % t["id"] for t in stats["threads"]}
    main_tid = "%x" % stats["pid"]
    merged = [l for l in memtap("export", "--format", "austin", cap).stdout.splitlines()
              if l.startswith("P")]
    assert {l.split(";")[1] for l in merged} == {"T0:" + main_tid}
    split = [l for l in memtap("export", "--format", "austin", "--split-threads",
                               cap).stdout.splitlines() if l.startswith("P")]
    seen = {l.split(";")[1][3:] for l in split}
    assert len(seen) == 5 and seen <= tids, (seen, tids)


KILLED = """\
import os, signal
KEEP = [bytearray(30 * 2**20)]  # @kept
tmp = bytearray(5 * 2**20)  # @freed
del tmp
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_program_leaks(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    cap = tmp_path / "killed.bin"
    # the command line, as stats and the Austin export show it, too
    proc = memtap_run(["-o", cap, "--python", DEFAULT_PYTHON, script, "\x1b[2Jarg\nv"],
                      cwd=tmp_path)
    assert proc.returncode in (137, -9), proc.returncode
    proc = memtap("summary", "--json", "--leaks", cap)
    rep = json.loads(proc.stdout)
    assert own_at(rep, script, line_of(KILLED, "kept")) == (30 * MiB + 1, 1)
    assert own_at(rep, script, line_of(KILLED, "freed")) == (0, 0)
    assert "killed by signal 9" in proc.stderr
    peak = summary_json(cap)
    assert own_at(peak, script, line_of(KILLED, "freed")) == (5 * MiB + 1, 1)
    # the note on leaks at the kill is for leak reports only
    assert memtap("summary", cap).stderr == ""


def test_reports_on_a_native_program(tmp_path):
    """A C++ program (not Python: traced natively without --native): every report works."""
    cxx = shutil.which("c++") or shutil.which("g++")
    assert cxx, "no C++ compiler"
    exe = tmp_path / "cxx_alloc"
    subprocess.run([cxx, "-O0", "-g", "-o", str(exe),
                    str(Path(__file__).resolve().parents[1] / "programs" / "cxx_alloc.cpp")],
                   check=True, timeout=TIMEOUT)
    cap = tmp_path / "c.bin"
    proc = memtap_run(["-o", cap, exe], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = summary_json(cap)
    assert sum(r["own_bytes"] for r in rep["rows"]) == rep["peak_memory_bytes"]
    assert rep["peak_memory_bytes"] >= 3000000 + 2000000 + 1234567
    assert "ns::Widget::make(int)" in {r["function"] for r in rep["rows"]}
    assert "ns::Widget::make(int)" in memtap("tree", cap).stdout
    memtap("flamegraph", "-o", tmp_path / "f.html", cap)
    data = embedded_json((tmp_path / "f.html").read_text())
    assert sum(n[2] for n in _nodes(data) if n[1] == 0) == rep["peak_memory_bytes"]
    memtap("table", "-o", tmp_path / "t.html", cap)
    for fmt in ("collapsed", "austin", "speedscope", "csv"):
        assert memtap("export", "--format", fmt, cap).stdout


def test_export_austin_read_by_austin_python(main_capture, tmp_path):
    """austin-python (PyPI; the test venv installs it) reads the export back."""
    from austin.events import AustinMetadata, AustinSample
    from austin.format.collapsed_stack import AustinFileReader

    cap, script, text = main_capture
    out = tmp_path / "a.austin"
    memtap("export", "--format", "austin", "-o", out, cap)
    meta, samples = {}, []
    with out.open() as f, AustinFileReader(f) as reader:
        for ev in reader:
            if isinstance(ev, AustinMetadata):
                meta[ev.name] = ev.value
            else:
                assert isinstance(ev, AustinSample), ev
                samples.append(ev)
    assert meta["mode"] == "full" and meta["memtap"] == "peak"
    rep = summary_json(cap)
    assert sum(s.metrics.memory for s in samples) == rep["peak_memory_bytes"]
    assert all(s.metrics.time == 0 for s in samples)
    big = [s for s in samples if s.frames and s.frames[-1].function == "make_big"]
    assert len(big) == 1 and big[0].metrics.memory == BIG
    assert [(f.function, f.line) for f in big[0].frames] == [
        ("<module>", line_of(text, "call_caller")), ("caller", line_of(text, "caller_big")),
        ("make_big", line_of(text, "keep50"))]
    assert big[0].frames[-1].filename == str(script)
    # and austin2speedscope, from the same package, converts it
    conv = Path(DEFAULT_PYTHON).parent / "austin2speedscope"
    if conv.exists():
        subprocess.run([str(conv), str(out), str(tmp_path / "ss.json")], check=True,
                       timeout=TIMEOUT)
        doc = json.loads((tmp_path / "ss.json").read_text())
        assert sum(sum(p["weights"]) for p in doc["profiles"]
                   if p["unit"] == "bytes") == rep["peak_memory_bytes"]


TEMPN = """\
def f():
    a = bytearray(1 * 2**20)  # @a
    b = bytearray(2 * 2**20)  # @b
    c = bytearray(3 * 2**20)  # @c
    del c
    del b
    del a

f()
"""


def test_temporary_n(tmp_path_factory):
    """--temporary N: freed on the same thread before N other allocations there."""
    cap, script, text = _trace(tmp_path_factory, "tempn", TEMPN)
    sizes = {"a": MiB + 1, "b": 2 * MiB + 1, "c": 3 * MiB + 1}
    for n, expect in ((1, "c"), (2, "cb"), (3, "cba")):
        rep = summary_json(cap, "--temporary", str(n))
        got = {k for k in "abc" if own_at(rep, script, line_of(text, k)) == (sizes[k], 1)}
        none = {k for k in "abc" if own_at(rep, script, line_of(text, k)) == (0, 0)}
        assert got == set(expect) and none == set("abc") - set(expect), (n, got, none)


KEPT_TO_THE_END = """\
keep = bytearray(8 * 2**20)  # @keep
"""


def test_temporary_leaves_out_the_teardown(tmp_path_factory):
    """A global kept all run is freed by the interpreter's teardown with no
    allocation in between: a leak, not temporary churn."""
    cap, script, text = _trace(tmp_path_factory, "kept", KEPT_TO_THE_END)
    line = line_of(text, "keep")
    assert own_at(summary_json(cap, "--leaks"), script, line) == (8 * MiB + 1, 1)
    assert own_at(summary_json(cap, "--temporary"), script, line) == (0, 0)


HOSTILE = """\
import sys
keep = []
def make(size):
    keep.append(bytearray(size))  # @alloc
evil = "\\x1b[2J\\x1b]0;PWNED\\x07e\\u009bvil\\nna\\u2028m\\u2029e"
fields = {"co_name": evil}
if sys.version_info >= (3, 11):
    fields["co_qualname"] = evil
make.__code__ = make.__code__.replace(**fields)
make(1234567)
import threading
t = threading.Thread(target=make, args=(4321,), name=evil)
t.start()
t.join()
"""


def test_names_that_are_no_text(tmp_path):
    # A script whose file name is not UTF-8 (Latin-1 bytes) and a function
    # whose name holds terminal escapes and line separators (U+2028, U+2029:
    # str.splitlines breaks lines there): JSON stays valid UTF-8 and gives
    # Python's own str for the name back; text reports show no control
    # character.
    d = tmp_path / os.fsdecode(b"lat\xe9dir")
    d.mkdir()
    script = d / os.fsdecode(b"caf\xe9.py")
    script.write_text(HOSTILE)
    cap = tmp_path / "c.bin"
    # the command line, as stats and the Austin export show it, too
    proc = memtap_run(["-o", cap, "--python", DEFAULT_PYTHON, script, "\x1b[2Jarg\nv"],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = line_of(HOSTILE, "alloc")
    for args in (["summary", "--json"], ["summary", "--json", "--leaks"]):
        out = subprocess.run([str(MEMTAP), *args, str(cap)], capture_output=True,
                             timeout=TIMEOUT, check=True).stdout
        rows = json.loads(out.decode("utf-8"))["rows"]  # strict: valid UTF-8
        mine = [r for r in rows if r["line"] == line and r["own_bytes"] >= 1234568]
        assert [r["file"] for r in mine] == [str(script)], rows[:3]
        assert mine[0]["function"] == "?[2J?]0;PWNED?e?vil?na?m?e", mine[0]
    stats = subprocess.run([str(MEMTAP), "stats", "--json", str(cap)], capture_output=True,
                           timeout=TIMEOUT, check=True).stdout
    assert json.loads(stats.decode("utf-8"))["command"].endswith(
        str(script) + " \x1b[2Jarg\nv")
    for cmd in (["summary"], ["tree"], ["stats"], ["export", "--format", "collapsed"],
                ["export", "--format", "austin"], ["summary", "--split-threads"]):
        out = subprocess.run([str(MEMTAP), *cmd, str(cap)], capture_output=True,
                             timeout=TIMEOUT, check=True, env=clean_env({"NO_COLOR": "1"})).stdout
        assert b"\x1b" not in out and b"\x07" not in out and b"\xc2\x9b" not in out, cmd
        assert b"\xe2\x80\xa8" not in out and b"\xe2\x80\xa9" not in out, cmd
        assert b"PWNED?e?vil?na?m?e" in out, (cmd, out[:2000])
        if cmd in (["stats"], ["export", "--format", "austin"]):
            assert b"?[2Jarg?v" in out, (cmd, out[:2000])


def test_a_report_never_writes_over_its_capture(tmp_path, main_capture):
    # -o naming the capture itself, or a link to it: refused, capture kept
    cap, _, _ = main_capture
    mine = tmp_path / "mine.bin"
    mine.write_bytes(cap.read_bytes())
    link = tmp_path / "link.html"
    link.symlink_to(mine)
    for cmd in (["flamegraph"], ["table"], ["export", "--format", "csv"]):
        for out in (mine, link):
            proc = subprocess.run([str(MEMTAP), *cmd, str(mine), "-o", str(out)],
                                  capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 1, (cmd, out, proc.stderr)
            assert proc.stderr == ("memtap: '%s' is the capture this report reads; give "
                                   "another output\n" % out), proc.stderr
            assert mine.read_bytes() == cap.read_bytes() and link.is_symlink()
    # nor does extract (the Tracker's cut of a capture), with -f: it replaced
    # the capture, then removed it when the cut failed
    for out in (mine, link):
        proc = subprocess.run([str(MEMTAP), "extract", str(mine), "--from", "0", "--to",
                               str(mine.stat().st_size), "-o", str(out), "-f"],
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 1, (out, proc.stderr)
        assert proc.stderr == ("memtap: '%s' is the capture this cuts; give another output\n"
                               % out), proc.stderr
        assert mine.read_bytes() == cap.read_bytes() and link.is_symlink()


def test_outputs_with_long_names(tmp_path, main_capture):
    """A 255-byte output name is a file name like any other: the temporary
    file the report is written to first gets a short name then; a default
    name made from a long capture name is cut to fit, at a character."""
    cap, _, _ = main_capture
    long_out = tmp_path / ("a" * 250 + ".html")
    proc = subprocess.run([str(MEMTAP), "table", str(cap), "-o", str(long_out)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0 and long_out.stat().st_size > 1000, proc.stderr
    for stem in ("b" * 251, "é" * 125):
        named = tmp_path / (stem + ".bin")
        named.write_bytes(cap.read_bytes())
        proc = subprocess.run([str(MEMTAP), "flamegraph", str(named)], capture_output=True,
                              text=True, timeout=TIMEOUT, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        made = [p for p in tmp_path.iterdir() if p.name.startswith("memtap-flamegraph-")]
        assert len(made) == 1 and len(made[0].name.encode()) in (254, 255), made
        assert stem.startswith(made[0].name[len("memtap-flamegraph-"):-len(".html")])
        made[0].unlink()
    assert sorted(p.name for p in tmp_path.iterdir() if ".part" in p.name) == []


def test_an_output_whose_directory_takes_no_new_file(tmp_path, main_capture):
    """Written in place when no temporary file can be made beside it (a
    file the user may write in a directory they may not): the error, if
    any, is the file's own."""
    cap, _, _ = main_capture
    proc = subprocess.run([str(MEMTAP), "table", str(cap), "-o", "/proc/version"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr in ("memtap: cannot write '/proc/version': Input/output error\n",
                           "memtap: cannot write '/proc/version': Permission denied\n"), \
        proc.stderr
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return
    # as nobody, in a directory of its own under /tmp (pytest's are root's)
    base = Path(tempfile.mkdtemp(prefix="memtap-ro-"))
    try:
        os.chmod(base, 0o755)
        mine = base / "c.bin"
        mine.write_bytes(cap.read_bytes())
        os.chmod(mine, 0o644)
        d = base / "ro"
        d.mkdir()
        out = d / "report.csv"
        out.write_text("old\n")
        os.chmod(out, 0o666)
        os.chmod(d, 0o555)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(MEMTAP), "export", "--format", "csv", str(mine), "-o",
                               str(out)], capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == memtap("export", "--format", "csv", mine).stdout
        assert sorted(p.name for p in d.iterdir()) == ["report.csv"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_capture_read_from_a_pipe(main_capture):
    # Captures are read front to back once: `cat app.bin | memtap stats
    # /dev/stdin` and a process substitution give what the file gives.
    cap, _, _ = main_capture
    for cmd in (["stats", "--json"], ["summary", "--json"], ["export", "--format", "collapsed"]):
        from_file = memtap(*cmd, cap).stdout
        cat = subprocess.Popen(["cat", str(cap)], stdout=subprocess.PIPE)
        piped = subprocess.run([str(MEMTAP), *cmd, "/dev/stdin"], stdin=cat.stdout,
                               capture_output=True, text=True, timeout=TIMEOUT)
        cat.stdout.close()
        cat.wait()
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == from_file, cmd


def test_a_capture_from_standard_input(main_capture, tmp_path):
    """`-` is the capture on standard input, a pipe included, for every
    report (it was "cannot read '-': No such file or directory"); diff takes
    one of its two captures from it."""
    cap, _, _ = main_capture
    data = cap.read_bytes()

    def piped(*args):
        proc = subprocess.Popen([str(MEMTAP), *map(str, args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=tmp_path, env=clean_env({"NO_COLOR": "1"}))
        out, err = proc.communicate(data, timeout=TIMEOUT)
        return proc.returncode, out.decode(), err.decode()

    for cmd in (["stats"], ["summary"], ["tree"], ["parse"],
                ["export", "--format", "collapsed"], ["summary", "--leaks", "--json"]):
        assert piped(*cmd, "-") == (0, memtap(*cmd, cap).stdout, ""), cmd
    rc, out, err = piped("diff", cap, "-")
    assert (rc, out) == (0, memtap("diff", cap, cap).stdout), err
    rc, out, err = piped("flamegraph", "-")
    assert (rc, out, err) == (0, "", "memtap: wrote memtap-flamegraph-stdin.html\n")
    assert (tmp_path / "memtap-flamegraph-stdin.html").stat().st_size > 10000
    rc, out, err = piped("diff", "-", "-")
    assert rc == 2 and err.startswith(
        "memtap: only one capture can come from standard input ('-')\n"), err


def test_messages_name_what_was_given(main_capture, tmp_path):
    """tree's -n counts stacks; export -o says where it wrote, as
    flamegraph and table do."""
    cap, _, _ = main_capture
    proc = memtap("tree", "-n", "0", cap, ok=False)
    assert proc.returncode == 2 and proc.stderr.startswith(
        "memtap: bad stack count '0' (1 or more)\n"), proc.stderr
    out = tmp_path / "x.csv"
    proc = memtap("export", "--format", "csv", "-o", out, cap)
    assert proc.stderr == "memtap: wrote %s\n" % out and proc.stdout == ""
    assert out.read_text().startswith("thread,bytes,")
    assert memtap("export", "--format", "csv", cap).stderr == ""
