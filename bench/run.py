#!/usr/bin/env python3
"""memtap benchmark suite: memtap side by side with memray, heaptrack and tracemalloc.

Run by `make bench` (or directly: python3 bench/run.py [--quick] [--runs N] [--scale]).
Standard library only.  What it does, in order:

  1. checks build/memtap, creates build/bench-venv (pip install memray numpy playwright; memray
     is a peer for comparison, never a memtap dependency), installs heaptrack from Debian if missing
     (only as root; otherwise heaptrack is skipped with a note), compiles bench/*.c into
     build/bench/;
  2. runs every workload under every tool, interleaved (run 1 of every tool, then run 2, ...),
     so that slow drift of a noisy machine hits all tools alike; records wall time of the whole
     command, the workload's own loop time and peak RSS (the WLSTATS line on stderr) and the
     capture size;
  3. times the reports (stats, summary, flamegraph) of memtap and memray on the largest capture
     of each mode (median of up to 3 runs), with the peak RSS of the report process (os.wait4
     rusage), and opens each flame graph page in Debian's Chromium (bench/open_html.py, through
     Playwright) to time it;
  4. with --scale: a capture of 10^8 allocation events made by build/bench/many_allocs under the
     shim, and every memtap report on it (time, peak RSS);
  5. prints a Markdown report and writes it to bench/results/latest.md.

The interpreter is the same for every tool: the venv's python.  Workloads live in
bench/workloads/ (copies of the project's shared workloads, plus w_native.py).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WLDIR = os.path.join(HERE, "workloads")

# Workloads: (name, script, extra args).  "empty" measures each tool's fixed cost and is not
# part of the targets.  native2/native1 are the C workload on 2 threads and on 1 thread.
WORKLOADS = [
    ("small", "w_small.py", []),
    ("deep", "w_deep.py", []),
    ("large", "w_large.py", []),
    ("threads", "w_threads.py", []),
    ("numpy", "w_numpy.py", []),
    ("calls", "w_calls.py", []),
    ("native2", "w_native.py", ["2"]),
    ("native1", "w_native.py", ["1"]),
    ("empty", "w_empty.py", []),
]
TARGET_WORKLOADS = ["small", "deep", "large", "threads", "numpy", "calls", "native2"]

# Tools: name -> (family, mode).  Mode pairs memtap with memray for the ratios.
TOOLS = [
    ("untracked", None, None),
    ("memtap", "memtap", "default"),
    ("memtap --native", "memtap", "native"),
    ("memtap --aggregate", "memtap", "aggregate"),
    ("memray", "memray", "default"),
    ("memray --native", "memray", "native"),
    ("memray --aggregate", "memray", "aggregate"),
    ("heaptrack", "heaptrack", None),
    ("tracemalloc", "tracemalloc", None),
]
MODES = ["default", "native", "aggregate"]
MODE_FLAG = {"default": [], "native": ["--native"], "aggregate": ["--aggregate"]}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def sh(cmd, **kw):
    """Output of a short command, or '' if it fails."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw).stdout.strip()
    except Exception:
        return ""


def run_timed(cmd, out_path, err_path, cwd=None, env=None, timeout=900):
    """Runs cmd; returns (wall seconds, exit status, peak RSS kB of the direct child, timed out)."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                             env=env, start_new_session=True)
        fired = []

        def kill():
            fired.append(1)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    return wall, p.returncode, ru.ru_maxrss, bool(fired)


def tail(path, n=6):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [l for l in lines if not l.startswith("WLSTATS ")]
    return "\n".join(lines[-n:])


def wlstats(err_path):
    try:
        with open(err_path, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                if line.startswith("WLSTATS "):
                    return json.loads(line[8:])
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------------------------------------
# setup

class Env:
    pass


def setup(args):
    e = Env()
    e.build = os.path.join(ROOT, "build")
    e.memtap = os.path.join(e.build, "memtap")
    e.out = os.path.join(e.build, "bench-out")
    e.bin = os.path.join(e.build, "bench")
    e.venv = os.path.join(e.build, "bench-venv")
    e.notes = []
    os.makedirs(e.out, exist_ok=True)
    os.makedirs(e.bin, exist_ok=True)
    if not os.access(e.memtap, os.X_OK):
        sys.exit("bench: %s not built; run `make` first" % e.memtap)
    if not args.no_snapshot:
        # Others may rebuild build/ while the suite runs (a capture written by one build and read
        # by the next one would look corrupt): run a private copy of memtap and its shim.
        snap = os.path.join(e.build, "bench", "memtap-snapshot")
        os.makedirs(snap, exist_ok=True)
        for f in ("memtap", "libmemtap.so"):
            shutil.copy2(os.path.join(e.build, f), os.path.join(snap, f))
        e.memtap = os.path.join(snap, "memtap")

    py = os.path.join(e.venv, "bin", "python")
    e.memray = os.path.join(e.venv, "bin", "memray")
    if not (os.access(e.memray, os.X_OK)
            and subprocess.run([py, "-c", "import numpy, playwright"],
                               capture_output=True).returncode == 0):
        log("bench: creating %s (pip install memray numpy playwright)" % e.venv)
        subprocess.run([args.python, "-m", "venv", e.venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "memray", "numpy", "playwright"],
                       check=True)
    e.python = py
    # Flame graph pages are opened in Debian's Chromium (`make bench` installs it), driven by
    # Playwright from the venv.
    e.chromium = shutil.which("chromium")

    e.heaptrack = shutil.which("heaptrack")
    if not e.heaptrack and not args.no_heaptrack:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("bench: installing heaptrack (apt-get install -y heaptrack)")
            envn = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(["apt-get", "install", "-y", "heaptrack"], env=envn,
                               capture_output=True)
            if r.returncode:
                subprocess.run(["apt-get", "update"], env=envn, capture_output=True)
                subprocess.run(["apt-get", "install", "-y", "heaptrack"], env=envn,
                               capture_output=True)
            e.heaptrack = shutil.which("heaptrack")
        if not e.heaptrack:
            e.notes.append("heaptrack skipped: not installed (as root: apt-get install -y heaptrack)")
    if args.no_heaptrack:
        e.heaptrack = None
        e.notes.append("heaptrack skipped (--no-heaptrack)")

    cc = os.environ.get("CC", "cc")
    src = os.path.join(HERE, "native_alloc.c")
    e.native_lib = os.path.join(e.bin, "libnative_alloc.so")
    e.native_exe = os.path.join(e.bin, "native_alloc")
    e.many_allocs = os.path.join(e.bin, "many_allocs")
    subprocess.run([cc, "-O2", "-pthread", "-fPIC", "-shared", "-DNATIVE_ALLOC_LIBRARY", "-o",
                    e.native_lib, src], check=True)
    subprocess.run([cc, "-O2", "-pthread", "-o", e.native_exe, src], check=True)
    subprocess.run([cc, "-O2", "-fno-builtin", "-o", e.many_allocs,
                    os.path.join(HERE, "many_allocs.c")], check=True)

    # What this memtap can do: its commands and its run options.
    top = sh([e.memtap, "--help"])
    e.memtap_cmds = set(re.findall(r"^\s{2}(\w+)\s", top, re.M))
    runhelp = subprocess.run([e.memtap, "run", "--help"], capture_output=True, text=True)
    runhelp = runhelp.stdout + runhelp.stderr
    e.memtap_modes = {"default"} | {m for m in ("native", "aggregate") if "--" + m in runhelp}
    return e


def machine_info(e):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    git = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu or platform.processor(),
        "kernel": platform.release(),
        "python": sh([e.python, "-c", "import sys; print(sys.version.split()[0])"]),
        "memtap": (sh([e.memtap, "--version"]) or "?") + " (git %s%s)" % (git, ", dirty tree" if dirty else ""),
        "memray": sh([e.memray, "--version"]),
        "numpy": sh([e.python, "-c", "import numpy; print(numpy.__version__)"]),
        "heaptrack": sh([e.heaptrack, "--version"]) if e.heaptrack else "not installed",
        "load_start": "%.1f" % os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# tracking runs

def capture_path(e, wl, tool):
    return os.path.join(e.out, "%s.%s" % (wl, tool.replace(" --", "-")))


def tool_cmd(e, tool, fam, mode, wl, script, extra):
    """(argv, capture file or None) for one run; None if the tool cannot run here."""
    cap = capture_path(e, wl, tool)
    if fam is None:
        return [e.python, script] + extra, None
    if fam == "memtap":
        if mode not in e.memtap_modes:
            return None
        return ([e.memtap, "run", "--python", e.python, "-q", "-f", "-o", cap + ".bin"]
                + MODE_FLAG[mode] + [script] + extra, cap + ".bin")
    if fam == "memray":
        return ([e.memray, "run", "-q", "-f", "-o", cap + ".bin"] + MODE_FLAG[mode]
                + [script] + extra, cap + ".bin")
    if fam == "heaptrack":
        if not e.heaptrack:
            return None
        return [e.heaptrack, "-o", cap, e.python, script] + extra, cap
    if fam == "tracemalloc":
        return [e.python, "-X", "tracemalloc=25", script] + extra, None
    raise ValueError(fam)


def heaptrack_file(cap):
    for ext in (".zst", ".gz", ""):
        if os.path.exists(cap + ext) and (ext or os.path.isfile(cap)):
            return cap + ext
    return None


def remove_capture(fam, cap):
    if not cap:
        return
    if fam == "heaptrack":
        for ext in (".zst", ".gz"):
            if os.path.exists(cap + ext):
                os.unlink(cap + ext)
    elif os.path.exists(cap):
        os.unlink(cap)


def run_tracking(e, args, results):
    env = dict(os.environ, WL_SCALE=str(args.wl_scale), NATIVE_ALLOC_LIB=e.native_lib)
    wls = [w for w in WORKLOADS if not args.workloads or w[0] in args.workloads]
    for r in range(args.runs):
        for wl, script, extra in wls:
            # An untimed untracked run first: the first command after another
            # workload's tools pays for what they evicted from the page cache
            # (numpy's import: 0.5-3 s more in single runs), and whichever tool
            # comes first would carry it.
            warm = tool_cmd(e, "untracked", None, None, wl, script, extra)[0]
            base = capture_path(e, wl, "warm-up")
            run_timed(warm, base + ".out", base + ".err", cwd=WLDIR, env=env,
                      timeout=args.timeout)
            for tool, fam, mode in TOOLS:
                if args.tools and tool not in args.tools:
                    continue
                key = (wl, tool)
                res = results.setdefault(key, {"walls": [], "works": [], "rss": [], "status": "ok"})
                if res["status"] not in ("ok",):
                    continue            # failed once: do not retry (it is reported)
                spec = tool_cmd(e, tool, fam, mode, wl, script, extra)
                if spec is None:
                    res["status"] = "n/a"
                    continue
                cmd, cap = spec
                remove_capture(fam, cap)
                base = capture_path(e, wl, tool)
                wall, rc, _, timed_out = run_timed(cmd, base + ".out", base + ".err", cwd=WLDIR,
                                                   env=env, timeout=args.timeout)
                st = wlstats(base + ".err")
                if timed_out or rc != 0 or st is None:
                    res["status"] = "timeout" if timed_out else ("exit %d" % rc if rc else "no WLSTATS")
                    res["cmd"] = " ".join(cmd)
                    res["stderr"] = tail(base + ".err", 12)
                    log("  %-8s %-20s FAILED (%s)" % (wl, tool, res["status"]))
                    continue
                res["walls"].append(wall)
                res["works"].append(st["work_s"])
                res["rss"].append(st["vmhwm_kb"])
                if cap:
                    f = heaptrack_file(cap) if fam == "heaptrack" else cap
                    res["size"] = os.path.getsize(f) if f and os.path.exists(f) else None
                    res["file"] = f
                log("  run %d/%d %-8s %-20s %7.3f s  loop %7.3f s" % (r + 1, args.runs, wl, tool, wall,
                                                                   st["work_s"]))


def check_captures(e, results):
    """memtap stats on every memtap capture: does the reader see a complete capture?"""
    for (wl, tool), r in results.items():
        if not tool.startswith("memtap") or r.get("status") != "ok" or not r.get("file"):
            continue
        p = subprocess.run([e.memtap, "stats", r["file"]], capture_output=True, text=True)
        if p.returncode or "incomplete" in (p.stderr + p.stdout).lower():
            r["valid"] = "INCOMPLETE"
            r["valid_msg"] = (p.stderr.strip() or p.stdout.strip()).splitlines()[:2]
            log("  %s / %s: capture not read back completely: %s" % (wl, tool, r["valid_msg"]))
        else:
            r["valid"] = "ok"
            m = re.search(r"allocations\s+(\d+)", p.stdout)
            r["allocs"] = int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# reports

MEMTAP_REPORTS = {
    "stats": lambda f, o: ["stats", f],
    "summary": lambda f, o: ["summary", f],
    "flamegraph": lambda f, o: ["flamegraph", f, "-o", o],
}
MEMRAY_REPORTS = {
    "stats": lambda f, o: ["stats", f],
    "summary": lambda f, o: ["summary", f],
    "flamegraph": lambda f, o: ["flamegraph", "-f", "-o", o, f],
}


def time_reports(e, jobs, runs):
    """{name: median wall time and largest peak RSS} of `runs` runs of each job (name, prog,
    argv, tag), the jobs taking turns (A B A B ...) so that a busy spell of the machine slows
    each alike."""
    walls = {name: [] for name, _, _, _ in jobs}
    rsss = {name: [] for name, _, _, _ in jobs}
    failed = {}
    for _ in range(runs):
        for name, prog, argv, tag in jobs:
            if name in failed:
                continue
            base = os.path.join(e.out, "report-" + tag)
            wall, rc, rss, to = run_timed([prog] + argv, base + ".out", base + ".err",
                                          timeout=1800)
            if to or rc:
                failed[name] = {"status": "timeout" if to else "exit %d" % rc,
                                "cmd": " ".join([prog] + argv), "stderr": tail(base + ".err", 6)}
                continue
            walls[name].append(wall)
            rsss[name].append(rss)
    return {name: failed.get(name) or {"wall": statistics.median(walls[name]),
                                       "rss_kb": max(rsss[name]), "status": "ok",
                                       "runs": walls[name]}
            for name, _, _, _ in jobs}


def time_report(e, prog, argv, tag, runs):
    """Median wall time and largest peak RSS of `runs` runs of one report."""
    return time_reports(e, [("report", prog, argv, tag)], runs)["report"]


def time_open(e, files, runs=3):
    """{file: seconds to open it in Chromium (median)}, or {} without a browser."""
    files = [f for f in files if os.path.exists(f)]
    if not e.chromium or not files:
        return {}
    r = subprocess.run([e.python, os.path.join(HERE, "open_html.py"), e.chromium, str(runs)] +
                       files, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        log("bench: opening the flame graphs failed: %s" % r.stderr.strip()[-300:])
        return {}
    return json.loads(r.stdout)


def report_runs(args):
    """Runs per report: up to 5 (a report of memray takes seconds)."""
    return max(1, min(args.runs, 5))


def run_reports(e, results, runs):
    """On the largest capture of each mode: memtap's and memray's reports (median of `runs`,
    the two taking turns), and how long each flame graph takes to open in Chromium."""
    out = []
    for mode in MODES:
        mt_tool = "memtap" + ("" if mode == "default" else " --" + mode)
        mr_tool = "memray" + ("" if mode == "default" else " --" + mode)
        cands = [(results[(wl, mt_tool)].get("size") or 0, wl) for wl, _, _ in WORKLOADS
                 if results.get((wl, mt_tool), {}).get("status") == "ok"
                 and results[(wl, mt_tool)].get("file")]
        by = mt_tool
        if not cands:   # memtap has no such mode: pick memray's largest
            cands = [(results[(wl, mr_tool)].get("size") or 0, wl) for wl, _, _ in WORKLOADS
                     if results.get((wl, mr_tool), {}).get("status") == "ok"]
            by = mr_tool
        if not cands:
            continue
        wl = max(cands)[1]
        for rep in ("stats", "summary", "flamegraph"):
            row = {"mode": mode, "workload": wl, "report": rep, "chosen_by": by}
            mt = results.get((wl, mt_tool), {})
            mr = results.get((wl, mr_tool), {})
            jobs = []
            mt_html = os.path.join(e.out, "fg-%s-memtap.html" % mode)
            mr_html = os.path.join(e.out, "fg-%s-memray.html" % mode)
            if mt.get("status") != "ok" or not mt.get("file"):
                row["memtap"] = {"status": "n/a (no %s capture)" % mt_tool}
            elif rep not in e.memtap_cmds:
                row["memtap"] = {"status": "n/a (no `memtap %s`)" % rep}
            else:
                jobs.append(("memtap", e.memtap, MEMTAP_REPORTS[rep](mt["file"], mt_html),
                             "%s-%s-memtap" % (mode, rep)))
            if mr.get("status") != "ok" or not mr.get("file"):
                row["memray"] = {"status": "n/a"}
            else:
                if os.path.exists(mr_html):
                    os.unlink(mr_html)
                jobs.append(("memray", e.memray, MEMRAY_REPORTS[rep](mr["file"], mr_html),
                             "%s-%s-memray" % (mode, rep)))
            row.update(time_reports(e, jobs, runs))
            for tool, res, html in (("memtap", mt, mt_html), ("memray", mr, mr_html)):
                if row[tool].get("status") == "ok":
                    row[tool]["size_mb"] = res["size"] / 1e6
                    if rep == "flamegraph" and os.path.exists(html):
                        row[tool]["html_kb"] = os.path.getsize(html) / 1e3
            if rep == "flamegraph":
                for tool in ("memtap", "memray"):
                    html = os.path.join(e.out, "fg-%s-%s.html" % (mode, tool))
                    opened = time_open(e, [html]).get(html)
                    if opened and row[tool].get("status") == "ok":
                        row[tool]["open_s"] = opened["median_s"]
                        row[tool]["open_errors"] = opened["errors"]
            log("  report %-9s %-10s on %-8s memtap %s  memray %s" % (
                mode, rep, wl, fmt_rep(row["memtap"]), fmt_rep(row["memray"])))
            out.append(row)
    return out


def run_scale(e, args):
    """Captures of N allocation events (malloc+free pairs of many_allocs) and every memtap report."""
    rows = []
    sizes = [int(x) for x in args.scale_events.split(",")]
    for events in sizes:
        pairs = events // 2
        cap = os.path.join(e.out, "scale-%d.bin" % events)
        base = os.path.join(e.out, "scale-%d" % events)
        if os.path.exists(cap):
            os.unlink(cap)
        cmd = [e.memtap, "run", "-q", "-f", "-o", cap, e.many_allocs, str(pairs)]
        wall, rc, rss, to = run_timed(cmd, base + ".out", base + ".err", timeout=3600)
        row = {"events": events, "run_wall": wall, "run_status": "ok" if not (rc or to) else
               ("timeout" if to else "exit %d" % rc), "reports": {}}
        # untracked time of the same program, for the slowdown
        w0, _, _, _ = run_timed([e.many_allocs, str(pairs)], base + ".u.out", base + ".u.err")
        row["untracked_wall"] = w0
        row["size"] = os.path.getsize(cap) if os.path.exists(cap) else None
        if row["run_status"] != "ok":
            row["cmd"] = " ".join(cmd)
            row["stderr"] = tail(base + ".err")
        log("  scale %d events: run %.1f s (untracked %.2f s), capture %s, %s" % (
            events, wall, w0, fmt_size(row["size"]), row["run_status"]))
        for rep in ("stats", "summary", "flamegraph"):
            if rep not in e.memtap_cmds:
                row["reports"][rep] = {"status": "n/a (no `memtap %s`)" % rep}
            elif not row["size"]:
                row["reports"][rep] = {"status": "no capture"}
            else:
                html = os.path.join(e.out, "fg-scale.html")
                row["reports"][rep] = time_report(e, e.memtap, MEMTAP_REPORTS[rep](cap, html),
                                                  "scale-%d-%s" % (events, rep), 1)
            log("    memtap %-10s %s" % (rep, fmt_rep(row["reports"][rep])))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# analysis and Markdown

def fmt_size(b):
    if b is None:
        return "–"
    if b >= 1e9:
        return "%.2f GB" % (b / 1e9)
    if b >= 1e6:
        return "%.1f MB" % (b / 1e6)
    return "%.0f kB" % (b / 1e3)


def fmt_rep(r):
    if r.get("status") != "ok":
        return r.get("status", "?")
    return "%.2f s / %.0f MB" % (r["wall"], r["rss_kb"] / 1024)


def fmt_errors(errors):
    """Browser console errors in a cell: how many, each distinct text once."""
    if not errors:
        return "none"
    distinct = list(dict.fromkeys(errors))
    return "%d: %s" % (len(errors), "; ".join(x.replace("|", "/")[:80] for x in distinct[:2]))


def med(xs):
    return statistics.median(xs) if xs else None


def summarize(results):
    """Per (workload, tool): medians, slowdowns, overheads."""
    s = {}
    for (wl, tool), r in results.items():
        d = dict(r)
        d["wall"] = med(r["walls"])
        d["work"] = med(r["works"])
        d["rss_kb"] = max(r["rss"]) if r["rss"] else None
        s[(wl, tool)] = d
    for (wl, tool), d in s.items():
        u = s.get((wl, "untracked"))
        if d["wall"] is not None and u and u["wall"]:
            d["slow"] = d["wall"] / u["wall"]
            d["slow_loop"] = d["work"] / u["work"] if u["work"] else None
        else:
            d["slow"] = d["slow_loop"] = None
    return s


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def verdict(mt_over, mr_over):
    """Target: memtap overhead <= 0.5 x memray's; where memray's < 10 %, memtap's <= 5 % absolute."""
    if mt_over is None or mr_over is None:
        return "n/a"
    if mr_over < 0.10:
        return "met" if mt_over <= 0.05 else "NOT met"
    return "met" if mt_over <= 0.5 * mr_over else "NOT met"


def f2(x, fmt="%.2f", none="–"):
    return none if x is None else fmt % x


def markdown(e, args, info, s, reports, scale):
    L = []
    w = L.append
    w("# memtap benchmark results")
    w("")
    w("Generated by `bench/run.py` (`make bench`) on %s." % info["date"])
    w("")
    w("| machine | |")
    w("|---|---|")
    w("| CPUs (nproc) | %s |" % info["nproc"])
    w("| CPU | %s |" % info["cpu"])
    w("| kernel | %s |" % info["kernel"])
    w("| python (every tool) | %s (`%s`) |" % (info["python"], os.path.relpath(e.python, ROOT)))
    w("| memtap | %s |" % info["memtap"])
    w("| memray | %s |" % info["memray"])
    w("| heaptrack | %s |" % info["heaptrack"])
    w("| numpy | %s |" % info["numpy"])
    w("| runs per cell | %d (median)%s |" % (args.runs, " — quick mode" if args.quick else ""))
    w("| WL_SCALE | %s |" % args.wl_scale)
    w("| load average (1 min) at start → end | %s → %.1f (other jobs on the machine add noise) |"
      % (info.get("load_start", "?"), os.getloadavg()[0]))
    w("")
    for n in e.notes:
        w("Note: " + n)
        w("")

    # ---- headline: memtap vs memray per workload and mode
    w("## memtap vs memray (targets of issue 5)")
    w("")
    w("Overhead = slowdown − 1, wall time of the whole command, median. *ratio* = memtap's overhead ÷ "
      "memray's in the same mode (target ≤ 0.50; where memray's overhead is < 10 %, memtap's must be "
      "≤ 5 % absolute). *loop* = the same from the workload's own timed loop (no start-up/exit). "
      "*size* = memtap capture ÷ memray capture (target ≤ 0.50).")
    w("")
    w("| workload | mode | memray overhead | memtap overhead | ratio | loop ratio | size ratio | overhead target | size target |")
    w("|---|---|---|---|---|---|---|---|---|")
    for wl in TARGET_WORKLOADS:
        for mode in MODES:
            mt = s.get((wl, "memtap" + ("" if mode == "default" else " --" + mode)), {})
            mr = s.get((wl, "memray" + ("" if mode == "default" else " --" + mode)), {})
            mt_over = mt["slow"] - 1 if mt.get("slow") else None
            mr_over = mr["slow"] - 1 if mr.get("slow") else None
            mt_lo = mt["slow_loop"] - 1 if mt.get("slow_loop") else None
            mr_lo = mr["slow_loop"] - 1 if mr.get("slow_loop") else None
            sr = ratio(mt.get("size"), mr.get("size")) if mt.get("status") == "ok" else None
            if mt.get("valid") == "INCOMPLETE":
                sr = None
            mt_txt = ("%+.0f %%" % (100 * mt_over)) if mt_over is not None else (mt.get("status") or "–")
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                wl, mode,
                ("%+.0f %%" % (100 * mr_over)) if mr_over is not None else (mr.get("status") or "–"),
                mt_txt,
                f2(ratio(mt_over, mr_over)), f2(ratio(mt_lo, mr_lo)), f2(sr),
                verdict(mt_over, mr_over),
                "n/a" if sr is None else ("met" if sr <= 0.5 else "NOT met")))
    w("")

    # ---- threads scaling
    w("## Thread scaling (native C workload)")
    w("")
    w("Slowdown of memtap with 2 threads allocating ÷ its slowdown with 1 thread (same per-thread "
      "work; each against the untracked run with the same thread count). Target ≤ 1.30. Loop time "
      "(the ctypes call) is the measure here, since Python start-up would dilute it.")
    w("")
    w("| tool | loop slowdown 1 thread | loop slowdown 2 threads | 2-vs-1 | target |")
    w("|---|---|---|---|---|")
    for tool, fam, mode in TOOLS:
        if fam is None:
            continue
        a, b = s.get(("native1", tool), {}), s.get(("native2", tool), {})
        if a.get("slow_loop") is None or b.get("slow_loop") is None:
            if a or b:
                w("| %s | %s | %s | – | – |" % (tool, a.get("status", "–"), b.get("status", "–")))
            continue
        rr = b["slow_loop"] / a["slow_loop"]
        tgt = ("met" if rr <= 1.3 else "NOT met") if fam == "memtap" else ""
        w("| %s | %.2f× | %.2f× | %.2f | %s |" % (tool, a["slow_loop"], b["slow_loop"], rr, tgt))
    w("")

    # ---- full table per workload
    w("## All tools, per workload")
    w("")
    w("wall = median wall time of the whole command; slowdown over untracked (loop slowdown in "
      "brackets); *vs memray* = memtap overhead ÷ memray overhead, same mode; peak RSS = VmHWM of "
      "the traced Python process (from WLSTATS).")
    w("")
    for wl, _, _ in WORKLOADS:
        if not any(k[0] == wl for k in s):
            continue
        w("### %s" % wl)
        w("")
        w("| tool | wall | slowdown (loop) | overhead | vs memray | capture | size vs memray | peak RSS |")
        w("|---|---|---|---|---|---|---|---|")
        for tool, fam, mode in TOOLS:
            d = s.get((wl, tool))
            if not d:
                continue
            if d["status"] != "ok":
                w("| %s | %s | | | | | | |" % (tool, d["status"]))
                continue
            vs = sv = "–"
            if fam == "memtap":
                mr = s.get((wl, "memray" + ("" if mode == "default" else " --" + mode)), {})
                if mr.get("slow") and d.get("slow"):
                    vs = f2(ratio(d["slow"] - 1, mr["slow"] - 1))
                sv = f2(ratio(d.get("size"), mr.get("size")))
            w("| %s | %.2f s | %s (%s) | %s | %s | %s | %s | %.1f MB |" % (
                tool, d["wall"], f2(d["slow"], "%.2f×"), f2(d["slow_loop"], "%.2f×"),
                f2(d["slow"] - 1 if d["slow"] else None, "%+.2f"), vs,
                (fmt_size(d.get("size")) + (" **INCOMPLETE**" if d.get("valid") == "INCOMPLETE" else ""))
                if "size" in d else "–", sv, d["rss_kb"] / 1024))
        w("")

    # ---- reports
    w("## Reports on the largest capture of each mode")
    w("")
    nrep = report_runs(args)
    w("Wall time (median of %d run%s, memtap's and memray's taking turns) / peak RSS of the "
      "report process. Target: memtap ≥ 10× faster than memray's same report."
      % (nrep, "s" if nrep > 1 else ""))
    w("")
    w("| mode | workload | report | memtap | memray | speed-up | target |")
    w("|---|---|---|---|---|---|---|")
    for r in reports:
        a, b = r["memtap"], r["memray"]
        sp = ratio(b.get("wall"), a.get("wall")) if a.get("status") == b.get("status") == "ok" else None
        tgt = "n/a" if sp is None else ("met" if sp >= 10 else "NOT met")
        cap = lambda x: (" (%s capture)" % f2(x.get("size_mb"), "%.1f MB")) if x.get("size_mb") else ""
        w("| %s | %s | %s | %s%s | %s%s | %s | %s |" % (
            r["mode"], r["workload"], r["report"], fmt_rep(a), cap(a) if r["report"] == "stats" else "",
            fmt_rep(b), cap(b) if r["report"] == "stats" else "", f2(sp, "%.0f×"), tgt))
    w("")
    fgs = [r for r in reports if r["report"] == "flamegraph"]
    if any(r[k].get("open_s") for r in fgs for k in ("memtap", "memray")):
        w("Flame graph pages opened in headless Chromium (Playwright; from navigation to the load "
          "event plus the next painted frame, median of 3). Target: under 2 s.")
        w("")
        w("| mode | tool | HTML | opens in | console errors | target |")
        w("|---|---|---|---|---|---|")
        for r in fgs:
            for k in ("memtap", "memray"):
                d = r[k]
                if not d.get("open_s"):
                    continue
                w("| %s | %s | %s kB | %.2f s | %s | %s |" % (
                    r["mode"], k, f2(d.get("html_kb"), "%.0f"), d["open_s"],
                    fmt_errors(d.get("open_errors")),
                    ("met" if d["open_s"] < 2 else "NOT met") if k == "memtap" else ""))
    else:
        w("Flame graph pages were not opened (no Chromium or Playwright); HTML sizes: " +
          ", ".join("%s %s %s kB" % (r["mode"], k, f2(r[k].get("html_kb"), "%.0f"))
                    for r in fgs for k in ("memtap", "memray") if r[k].get("html_kb")) + ".")
    w("")

    # ---- scale
    if scale:
        w("## Scale: synthetic captures (many_allocs under the shim)")
        w("")
        w("| events | run (untracked) | capture | bytes/event | report | time | reader peak RSS |")
        w("|---|---|---|---|---|---|---|")
        for row in scale:
            first = True
            for rep, r in row["reports"].items():
                pre = ("| %.0e | %.1f s (%.2f s) %s | %s | %s |" % (
                    row["events"], row["run_wall"], row["untracked_wall"],
                    "" if row["run_status"] == "ok" else row["run_status"], fmt_size(row["size"]),
                    f2(ratio(row["size"], row["events"]), "%.2f"))) if first else "| | | | |"
                first = False
                w("%s %s | %s | %s |" % (pre, rep, f2(r.get("wall"), "%.1f s", r.get("status")),
                                         f2(r.get("rss_kb") / 1024 if r.get("rss_kb") else None,
                                            "%.0f MB")))
        w("")

    # ---- failures
    fails = [(k, d) for k, d in sorted(s.items()) if d["status"] not in ("ok", "n/a")]
    fails += [(k, {"status": "capture not read back completely by `memtap stats`",
                   "cmd": "memtap stats " + (d.get("file") or ""),
                   "stderr": "\n".join(d.get("valid_msg") or [])})
              for k, d in sorted(s.items()) if d.get("valid") == "INCOMPLETE"]
    fails += [(("report " + r["mode"] + " " + r["report"], k), r[k]) for r in reports
              for k in ("memtap", "memray") if r[k].get("cmd")]
    if fails:
        w("## Failures")
        w("")
        for (wl, tool), d in fails:
            w("- **%s / %s**: %s — `%s`" % (wl, tool, d["status"], d.get("cmd", "")))
            if d.get("stderr"):
                w("")
                w("  ```")
                for line in d["stderr"].splitlines():
                    w("  " + line)
                w("  ```")
        w("")
    na = sorted({t for (wl, t), d in s.items() if d["status"] == "n/a"})
    if na:
        w("Not available here (n/a): " + ", ".join(na) + ".")
        w("")
    return "\n".join(L)


def phase(name, fn, *a):
    try:
        return fn(*a)
    except Exception:
        import traceback
        log("bench: the %s phase failed; its section is left out:\n%s" % (
            name, traceback.format_exc()))
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per tool and workload (median)")
    ap.add_argument("--quick", action="store_true", help="1 run, WL_SCALE=0.3")
    ap.add_argument("--wl-scale", type=float, default=None, help="WL_SCALE for the workloads")
    ap.add_argument("--scale", action="store_true", help="also the 10^8-event scale test (minutes)")
    ap.add_argument("--scale-events", default="10000000,100000000",
                    help="comma-separated event counts for --scale (default 1e7,1e8)")
    ap.add_argument("--workloads", nargs="*", help="only these workloads (names)")
    ap.add_argument("--tools", nargs="*", help="only these tools (names, e.g. 'memtap --native')")
    ap.add_argument("--no-heaptrack", action="store_true")
    ap.add_argument("--no-reports", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run build/memtap itself, not a copy taken at start")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per tracked run")
    ap.add_argument("--python", default="python3", help="interpreter that creates the venv")
    ap.add_argument("--output", default=os.path.join(HERE, "results", "latest.md"))
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    if args.wl_scale is None:
        args.wl_scale = 0.3 if args.quick else 1.0
    if args.tools and "untracked" not in args.tools:
        args.tools.append("untracked")

    e = setup(args)
    info = machine_info(e)
    log("bench: %d run(s), WL_SCALE=%s, memtap commands %s, modes %s" % (
        args.runs, args.wl_scale, sorted(e.memtap_cmds), sorted(e.memtap_modes)))
    results = {}
    run_tracking(e, args, results)
    check_captures(e, results)
    s = summarize(results)
    # A failure in a later phase must not throw away the tracking runs (minutes of work): it
    # is logged and that phase's section stays empty.
    reports = [] if args.no_reports else phase("reports", run_reports, e, s, report_runs(args))
    scale = phase("scale", run_scale, e, args) if args.scale else []
    md = markdown(e, args, info, s, reports, scale)
    print(md)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(md + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"info": info, "args": vars(args),
                   "results": {"%s|%s" % k: v for k, v in s.items()},
                   "reports": reports, "scale": scale}, f, indent=1, default=str)
    log("bench: written %s" % args.output)


if __name__ == "__main__":
    main()
