"""The Python API (issue 7), used from a venv where `pip install .` put the
package: memtap.Tracker records what a `with` block allocates in an ordinary
python process (the shim loaded at run time, a collector process beside it,
the allocation functions redirected), memtap.Capture reads the result, and
the `memtap` command and `python -m memtap` come with the package.

bytearray(n) mallocs n + 1 bytes.
"""

import ast
import json
import os
import subprocess
import textwrap

import pytest

from conftest import clean_env, line_of, memtap_sanitized
from memtap_pkg import pkg  # noqa: F401  (fixture)

MiB = 2 ** 20

KNOWN = """\
import memtap, sys
before = bytearray(30 * 2**20)  # @before
with memtap.Tracker(sys.argv[1]):
    kept = bytearray(50 * 2**20)  # @keep
    gone = bytearray(5 * 2**20)  # @gone
    del gone
after = bytearray(20 * 2**20)  # @after
del before
cap = memtap.Capture(sys.argv[1])
import json
print(json.dumps({"peak": cap.peak_memory_bytes, "leaked": cap.leaked_bytes,
                  "rows": [r._asdict() for r in cap.locations()],
                  "leaks": [r._asdict() for r in cap.locations(leaks=True)],
                  "top": [tuple(r) for r in cap.top(1)]}))
"""


def at(rows, script, line):
    return [r for r in rows if r["file"] == str(script) and r["line"] == line]


def test_known_answer(pkg, tmp_path):
    script = tmp_path / "known.py"
    script.write_text(KNOWN)
    out = tmp_path / "out.bin"
    proc = pkg.run([pkg.python, script, out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    keep = at(doc["rows"], script, line_of(KNOWN, "keep"))
    assert [(r["own_bytes"], r["own_count"]) for r in keep] == [(50 * MiB + 1, 1)]
    # nothing from outside the block
    for tag in ("before", "after"):
        assert not at(doc["rows"], script, line_of(KNOWN, tag)), tag
        assert not at(doc["leaks"], script, line_of(KNOWN, tag)), tag
    # the 5 MiB block is freed inside the block: in the peak, not a leak
    gone = line_of(KNOWN, "gone")
    assert [(r["own_bytes"]) for r in at(doc["rows"], script, gone)] == [5 * MiB + 1]
    assert not at(doc["leaks"], script, gone)
    assert 55 * MiB + 2 <= doc["peak"] < 56 * MiB
    assert 50 * MiB + 1 <= doc["leaked"] < 51 * MiB
    assert doc["top"][0][:3] == ["<module>", str(script), line_of(KNOWN, "keep")]
    # the same capture through the installed command
    stats = json.loads(pkg.run([pkg.memtap, "stats", out, "--json"], cwd=tmp_path).stdout)
    assert stats["complete"] and stats["pid"] > 0


def test_native_threads_and_extension_loaded_inside(pkg, tmp_path):
    """Native stacks (rows are native functions: the script's lines are in
    their totals); an allocation on another thread; an extension module
    imported inside the block (its calls are redirected when it loads)."""
    src = textwrap.dedent("""\
        import memtap, sys, threading
        def work():
            work.buf = bytearray(3 * 2**20)  # @thread
        with memtap.Tracker(sys.argv[1], native=True):
            import _decimal  # loaded now, allocates in C
            t = threading.Thread(target=work); t.start(); t.join()
            keep = bytearray(7 * 2**20)  # @keep
        c = memtap.Capture(sys.argv[1])
        print(c.stats["native"], len(c.stats["threads"]))
        for r in c.locations():
            print(r.file, r.line, r.total_bytes)
        """)
    script = tmp_path / "nat.py"
    script.write_text(src)
    proc = pkg.run([pkg.python, script, tmp_path / "n.bin"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["True", "2"], lines[0]
    rows = [l.rsplit(" ", 2) for l in lines[1:]]
    def bytes_at(tag):
        return sum(int(b) for f, l, b in rows if f == str(script) and int(l) == line_of(src, tag))
    assert bytes_at("keep") == 7 * MiB + 1
    assert bytes_at("thread") == 3 * MiB + 1


def test_errors(pkg, tmp_path):
    src = textwrap.dedent("""\
        import memtap, sys
        out = sys.argv[1]
        with memtap.Tracker(out):
            try:
                with memtap.Tracker(out + ".2"):
                    pass
            except memtap.TrackerError as e:
                print("nested:", e)
        try:
            with memtap.Tracker(out):
                pass
        except memtap.TrackerError as e:
            print("exists:", e)
        # one after the other is fine, and the functions are put back
        with memtap.Tracker(out + ".3"):
            x = bytearray(2**20)
        print(memtap.Capture(out + ".3").peak_memory_bytes >= 2**20)
        """)
    script = tmp_path / "err.py"
    script.write_text(src)
    proc = pkg.run([pkg.python, script, tmp_path / "e.bin"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nested: memtap: a Tracker is already recording" in proc.stdout
    assert "exists: memtap: " in proc.stdout and "exists" in proc.stdout.split("exists:")[1]
    assert proc.stdout.strip().endswith("True")


def test_aggregate_and_python_allocators(pkg, tmp_path):
    src = textwrap.dedent("""\
        import memtap, sys
        with memtap.Tracker(sys.argv[1], aggregate=True, trace_python_allocators=True):
            keep = [object() for _ in range(10000)]  # @objs
            big = bytearray(4 * 2**20)  # @big
        c = memtap.Capture(sys.argv[1])
        print(sorted(c.stats["allocators"]))
        for r in c.locations():
            print(r.file, r.line, r.own_bytes, r.own_count)
        """)
    script = tmp_path / "agg.py"
    script.write_text(src)
    proc = pkg.run([pkg.python, script, tmp_path / "a.bin"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "pymalloc" in lines[0]
    rows = [l.rsplit(" ", 3) for l in lines[1:]]
    big = [r for r in rows if r[0] == str(script) and int(r[1]) == line_of(src, "big")]
    # the buffer, and the bytearray object itself (pymalloc, traced too)
    assert [int(r[3]) for r in big] == [2]
    assert 4 * MiB + 1 < int(big[0][2]) < 4 * MiB + 256
    objs = [r for r in rows if r[0] == str(script) and int(r[1]) == line_of(src, "objs")]
    assert objs and sum(int(r[3]) for r in objs) >= 10000, lines[:10]
    # nothing of the Tracker's own start and stop
    assert not [r for r in rows if "memtap" in r[0]], rows


def test_command_and_module(pkg, tmp_path):
    proc = pkg.run([pkg.memtap, "--version"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("memtap ")
    proc = pkg.run([pkg.python, "-m", "memtap", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "diff" in proc.stdout
    script = tmp_path / "p.py"
    script.write_text("x = bytearray(3 * 2**20)  # @x\n")
    proc = pkg.run([pkg.memtap, "run", "-q", "-o", tmp_path / "r.bin", pkg.python, script],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(pkg.run([pkg.memtap, "summary", tmp_path / "r.bin", "--json"],
                             cwd=tmp_path).stdout)
    assert at(doc["rows"], script, 1)[0]["own_bytes"] == 3 * MiB + 1
    # python -m memtap run: the package's own Python runs the program, not
    # the python3 first on PATH (the venv is not activated here)
    env = clean_env()
    env.pop("MEMTAP_BUILD", None)
    for argv in ([pkg.python, "-m", "memtap"], [pkg.memtap]):
        proc = subprocess.run([*map(str, argv), "run", "-q", "-f", "-o", str(tmp_path / "s.bin"),
                               "-c", "import sys; print(sys.prefix)"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "%s\n" % pkg.root, (argv, proc.stdout)
    # a script whose "#!" names its Python keeps it
    other = "/usr/bin/python3"
    if os.access(other, os.X_OK):
        tool = tmp_path / "tool"
        tool.write_text("#!%s\nimport sys; print(sys.executable)\n" % other)
        tool.chmod(0o755)
        proc = subprocess.run([str(pkg.python), "-m", "memtap", "run", "-q", "-f", "-o",
                               str(tmp_path / "t.bin"), str(tool)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "%s\n" % other, proc.stdout


def test_diff_from_the_package(pkg, tmp_path):
    """diff on two captures of the same program, one with an extra 10 MiB."""
    src = "import sys\nk = bytearray(2**20)\nif sys.argv[1:]:\n    e = bytearray(10 * 2**20)  # @extra\n"
    script = tmp_path / "d.py"
    script.write_text(src)
    for name, args in (("b.bin", []), ("a.bin", ["x"])):
        proc = pkg.run([pkg.memtap, "run", "-q", "-o", tmp_path / name, pkg.python, script,
                        *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = pkg.run([pkg.memtap, "diff", tmp_path / "b.bin", tmp_path / "a.bin", "--json",
                    "--fail-over", "5MB"], cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    row = json.loads(proc.stdout)["rows"][0]
    assert (row["file"], row["line"], row["change_bytes"]) == \
        (str(script), line_of(src, "extra"), 10 * MiB + 1)


SCOPED = """\
import memtap, sys, threading
before = bytearray(30 * 2**20)  # @before
with memtap.Tracker(sys.argv[1]):
    kept = bytearray(50 * 2**20)  # @keep
    gone = bytearray(5 * 2**20)  # @gone
    del gone
    del before  # allocated before the block: its free is not the block's
    t = threading.Thread(target=lambda: kept2.append(bytearray(7 * 2**20)))  # @thread
    kept2 = []
    t.start(); t.join()
after = bytearray(20 * 2**20)  # @after
for option in ("native", "aggregate"):
    try:
        with memtap.Tracker(sys.argv[1] + "." + option, **{option: True}):
            pass
    except memtap.TrackerError as e:
        print(option + ":", e)
cap = memtap.Capture(sys.argv[1])
import json
print(json.dumps({"peak": cap.peak_memory_bytes, "leaked": cap.leaked_bytes,
                  "rows": [r._asdict() for r in cap.locations()],
                  "leaks": [r._asdict() for r in cap.locations(leaks=True)]}))
"""


def test_tracker_under_memtap_run_scopes_the_recording(pkg, tmp_path):
    """Under `memtap run` the block's capture is cut from the run's: the
    block's allocations, from every thread, exactly; nothing from before or
    after; and the run's own capture still holds everything."""
    script = tmp_path / "scoped.py"
    script.write_text(SCOPED)
    out, run = tmp_path / "block.bin", tmp_path / "run.bin"
    proc = pkg.run([pkg.memtap, "run", "-q", "-o", run, "--python", pkg.python,
                    script, out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("native: memtap: this process runs under 'memtap run' "
                               "without --native"), lines
    assert lines[1].startswith("aggregate: memtap: "), lines
    doc = json.loads(lines[2])
    # at the peak: kept and the thread's block (gone was freed before)
    own = {tag: [(r["own_bytes"], r["own_count"])
                 for r in at(doc["rows"], script, line_of(SCOPED, tag)) if r["own_count"]]
           for tag in ("before", "keep", "gone", "thread", "after")}
    assert own == {"before": [], "keep": [(50 * MiB + 1, 1)], "gone": [],
                   "thread": [(7 * MiB + 1, 1)], "after": []}
    leaks = {(r["line"], r["own_bytes"]) for r in doc["leaks"]
             if r["file"] == str(script) and r["own_count"]}
    assert leaks == {(line_of(SCOPED, "keep"), 50 * MiB + 1),
                     (line_of(SCOPED, "thread"), 7 * MiB + 1)}
    assert 57 * MiB + 2 <= doc["peak"] < 58 * MiB
    # the run's capture is whole
    summary = json.loads(pkg.run([pkg.memtap, "summary", "--leaks", "--json", "-n", "100000", run],
                                 cwd=tmp_path).stdout)
    at_exit = {r["line"]: r["own_bytes"] for r in summary["rows"]
               if r["file"] == str(script) and r["own_count"]}
    assert at_exit[line_of(SCOPED, "keep")] == 50 * MiB + 1
    assert at_exit[line_of(SCOPED, "after")] == 20 * MiB + 1
    assert line_of(SCOPED, "before") not in at_exit


REPEATED = """\
import memtap, os, sys
def shmem_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssShmem:"):
            return int(line.split()[1])
    return 0
path = os.path.join(sys.argv[1], "t.bin")
for i in range(40):
    with memtap.Tracker(path, overwrite=True):
        x = [bytes(1000) for _ in range(20000)]  # fills most of a 1 MiB ring
    del x
    assert memtap.Capture(path).peak_memory_bytes > 20000 * 1000
print(shmem_kb())
"""


def test_tracker_many_times_keeps_little_shared_memory(pkg, tmp_path):
    """A Tracker per test (the pytest plugin) must not keep each use's
    transport: its rings are released when the collector is done. 40 uses
    that each fill ~1 MiB of ring keep less than 8 MiB of shared memory
    (they kept ~34 MiB before)."""
    script = tmp_path / "repeat.py"
    script.write_text(REPEATED)
    proc = pkg.run([pkg.python, script, tmp_path], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) < 8 * 1024, proc.stdout


ADDRESSES = """\
import ctypes, memtap, sys
try:
    memtap.Tracker(sys.argv[1] + "x", addresses=True, aggregate=True).__enter__()
except memtap.TrackerError as e:
    print("error", e)
for addresses in (False, True):
    path = sys.argv[1] + str(int(addresses))
    try:
        with memtap.Tracker(path, addresses=addresses):
            b = bytearray(1_000_001)
    except memtap.TrackerError as e:
        print("error", str(e).split(";")[0])
        continue
    print(hex(ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))))
"""


def test_tracker_addresses(pkg, tmp_path):
    """addresses=True stores heap addresses (the buffer's own, as Python
    sees it); under memtap run it is the run's choice."""
    script = tmp_path / "addresses.py"
    script.write_text(ADDRESSES)
    out = tmp_path / "a"
    proc = pkg.run([pkg.python, script, out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, rest = proc.stdout.split("\n", 1)
    assert first == ("error memtap: addresses=True and aggregate=True exclude each other: "
                     "an aggregate capture keeps no blocks"), first
    addrs = rest.split()
    for i, flag in enumerate(("0x0 ", "0x10,addresses ")):
        lines = pkg.run([pkg.memtap, "parse", "%s%d" % (out, i)], cwd=tmp_path).stdout
        assert lines.startswith("HEADER version=5 flags=" + flag), lines[:80]
        big = [l for l in lines.splitlines() if "size=1000002 " in l]
        want = " addr=%s " % addrs[1] if i else " block="
        assert len(big) == 1 and want in big[0], (big, want)
    proc = pkg.run([pkg.memtap, "run", "-q", "-o", tmp_path / "run.bin", "--python",
                    pkg.python, script, out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2] == ("error memtap: this process runs under 'memtap run' without "
                        "--addresses, which decides what is recorded"), lines


def test_tracker_follows_forked_children(pkg, tmp_path):
    src = textwrap.dedent("""\
        import memtap, os, sys

        def links():
            out = []
            for f in os.listdir("/proc/self/fd"):
                try:
                    out.append(os.readlink("/proc/self/fd/" + f))
                except OSError:
                    pass  # listdir's own descriptor, closed
            return out

        with memtap.Tracker(sys.argv[1], follow_fork=True):
            kept = bytearray(4 * 2**20)  # @parent
            # the socket is the collector's, named: none in the process
            fds = links()
            pid = os.fork()
            if pid == 0:
                child = bytearray(9 * 2**20)  # @child
                os._exit(5)
            os.waitpid(pid, 0)
        after = os.fork()  # after the block: not followed
        if after == 0:
            os._exit(0)
        os.waitpid(after, 0)
        with memtap.Tracker(sys.argv[1][:-4] + "-again.bin"):
            later = os.fork()  # in a Tracker without follow_fork: not followed
            if later == 0:
                os._exit(0)
            os.waitpid(later, 0)
        print(len([f for f in fds if f.startswith("socket:")]))
        for path in (sys.argv[1], sys.argv[1][:-4] + ".%d.bin" % pid):
            rows = memtap.Capture(path).locations()
            print(sorted((r.line, r.own_bytes, r.own_count) for r in rows
                         if r.file == sys.argv[0] and r.own_bytes > 2**20))
        """)
    script = tmp_path / "forks.py"
    script.write_text(src)
    proc = pkg.run([pkg.python, script, tmp_path / "f.bin"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sockets, parent, child = proc.stdout.splitlines()
    assert sockets == "0"
    assert proc.stderr == "", proc.stderr
    names = sorted(p.name for p in tmp_path.glob("f*.bin"))
    assert len(names) == 3 and names[0] == "f-again.bin" and names[2] == "f.bin", names
    assert names[1].startswith("f.") and names[1][2:-4].isdigit(), names
    assert parent == str([(line_of(src, "parent"), 4 * MiB + 1, 1)])
    assert child == str([(line_of(src, "child"), 9 * MiB + 1, 1)])
    # the child's end, as _exit was given it: its parent reaped it, not memtap
    stats = json.loads(pkg.run([pkg.memtap, "stats", "--json", tmp_path / names[1]],
                               cwd=tmp_path).stdout)
    assert stats["exit"] == {"code": 5}, stats["exit"]


AGAIN = """\
import memtap, sys
kw = [{}, {"trace_python_allocators": True}, {}, {"trace_python_allocators": True},
      {"native": True}, {"native": True}]
for i, opts in enumerate(kw):
    path = "%s.%d" % (sys.argv[1], i)
    with memtap.Tracker(path, **opts):
        x = bytearray(10**6)  # @alloc
    c = memtap.Capture(path)
    mine = [r for r in c.locations() if r.line == int(sys.argv[2])]
    print(i, c.stats["allocators"].get("pymalloc", {}).get("count", 0),
          [(r.function, r.own_bytes, r.own_count) for r in mine])
"""


def test_trackers_one_after_another(pkg, tmp_path):
    """Each Tracker records with its own options, whatever came before: a
    second trace_python_allocators one used to wrap its own wrappers (and
    loop for ever), a plain one after it saw pymalloc still, and every
    native one after the first had no objects to name frames by."""
    script = tmp_path / "again.py"
    script.write_text(AGAIN)
    line = line_of(AGAIN, "alloc")
    proc = pkg.run([pkg.python, script, tmp_path / "t.bin", str(line)], cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [l.split(" ", 2) for l in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    for i, pymalloc, mine in rows:
        traced = i in ("1", "3")
        assert (int(pymalloc) > 0) == traced, rows
        # the buffer; with pymalloc traced, the bytearray object too
        [(function, nbytes, count)] = ast.literal_eval(mine)
        assert function == "<module>", rows
        if i in ("4", "5"):
            assert (nbytes, count) == (0, 0), rows  # its own: in CPython's frames
        elif traced:
            assert count == 2 and 10**6 + 1 + 32 <= nbytes <= 10**6 + 1 + 128, rows
        else:
            assert (nbytes, count) == (10**6 + 1, 1), rows
    for i in (4, 5):
        stats = json.loads(pkg.run([pkg.memtap, "stats", "%s.%d" % (tmp_path / "t.bin", i),
                                    "--json"], cwd=tmp_path).stdout)
        # frames named from the objects the capture lists, not addresses
        top = stats["top_locations"]
        assert top and not [r for r in top if r["function"].startswith("0x")], (i, top)
        assert top[0]["function"] == "PyByteArray_Resize", (i, top)


UNDER_TRACEMALLOC = """\
import memtap, sys, tracemalloc
with memtap.Tracker(sys.argv[1] + ".1", trace_python_allocators=True):
    tracemalloc.start()       # hooks itself on top of memtap's wrappers
    a = [str(i) for i in range(1000)]
with memtap.Tracker(sys.argv[1] + ".2", trace_python_allocators=True):
    b = [str(i) for i in range(1000)]
tracemalloc.stop()
t = memtap.Tracker(sys.argv[1] + ".3")
with t:
    try:
        with t:
            pass
    except memtap.TrackerError as e:
        print("refused:", e)
    kept = bytearray(10**6)  # @kept
c = memtap.Capture(sys.argv[1] + ".3")
print(sorted((r.line, r.own_bytes) for r in c.locations() if r.own_bytes > 10**5))
"""


def test_trackers_with_tracemalloc_and_twice_entered(pkg, tmp_path):
    """A Tracker with trace_python_allocators after one that tracemalloc
    hooked itself on top of (memtap's wrappers stay inside its chain: they
    must not be wrapped again, which looped for ever); a Tracker entered
    while it records refuses, and its recording goes on."""
    script = tmp_path / "tm.py"
    script.write_text(UNDER_TRACEMALLOC)
    proc = pkg.run([pkg.python, script, tmp_path / "tm.bin"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    refused, rows = proc.stdout.splitlines()
    assert refused.startswith("refused: memtap: a Tracker is already recording"), refused
    assert rows == str([(line_of(UNDER_TRACEMALLOC, "kept"), 10**6 + 1)]), rows


DASHED = """\
import memtap
with memtap.Tracker("-lead.bin"):
    x = bytearray(12345)
c = memtap.Capture("-lead.bin")
print(c.peak_memory_bytes >= 12346, [l.own_bytes for l in c.locations() if l.line == 3])
"""


def test_capture_reads_a_path_that_starts_with_a_dash(pkg, tmp_path):
    # the Tracker writes such a file; Capture must not take it for an option
    script = tmp_path / "dashed.py"
    script.write_text(DASHED)
    proc = pkg.run([pkg.python, script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "True [12346]", proc.stdout


BLOCK_END = """\
import memtap, sys
try:
    with memtap.Tracker(b"end.bin", overwrite=True):
        x = bytearray(54321)
        sys.exit(6)
finally:
    c = memtap.Capture(b"end.bin")
    print(c.stats["exit"], c.stats["complete"], c.peak_memory_bytes)
"""


def test_a_trackers_capture_says_its_block_ended(pkg, tmp_path):
    """A block's capture ends where the block did, not with the process:
    it has no exit status (the process goes on, here to exit 6), alone
    and under memtap run. Capture takes a bytes path, as Tracker does."""
    script = tmp_path / "end.py"
    script.write_text(BLOCK_END)
    for under_run in (False, True):
        cmd = [pkg.python, script]
        if under_run:
            cmd = [pkg.memtap, "run", "-q", "-f", "-o", tmp_path / "run.bin",
                   "--python", pkg.python, script]
        proc = pkg.run(cmd, cwd=tmp_path)
        assert proc.returncode == 6, (under_run, proc.stderr)
        assert proc.stdout == "None True 54322\n", (under_run, proc.stdout, proc.stderr)
        text = pkg.run([pkg.memtap, "stats", tmp_path / "end.bin"], cwd=tmp_path).stdout
        assert "(a Tracker's block; the process ran on)" in text.splitlines()[2], text
        assert "exited" not in text
    assert json.loads(pkg.run([pkg.memtap, "stats", "--json", tmp_path / "run.bin"],
                              cwd=tmp_path).stdout)["exit"] == {"code": 6}


FORK_IN_THE_BLOCK = """\
import memtap, os
with memtap.Tracker("parent.bin"):
    keep = bytearray(5 * 2**20)  # @parent
    pid = os.fork()
    if pid == 0:  # the child records a block of its own
        with memtap.Tracker("child.bin"):
            mine = bytearray(3 * 2**20)  # @child
        print("child", memtap.Capture("child.bin").peak_memory_bytes >= 3 * 2**20, flush=True)
    # and leaves the parent's block: the parent's recording is not its own
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
c = memtap.Capture("parent.bin")
print("parent", c.complete, [l.own_bytes for l in c.locations(leaks=True) if l.line == 3])
"""


def test_a_child_forked_in_a_block(pkg, tmp_path):
    # was: TrackerError "a Tracker is already recording" in the child
    script = tmp_path / "fork.py"
    script.write_text(FORK_IN_THE_BLOCK)
    proc = pkg.run([pkg.python, script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child True", "parent True [5242881]"], \
        (proc.stdout, proc.stderr)


HELPERS_UNDER_FOLLOW_FORK = """\
import memtap, sys
with memtap.Tracker("block.bin", follow_fork=True):
    keep = bytearray(2 * 2**20)
print(memtap.Capture("block.bin").peak_memory_bytes >= 2 * 2**20)
"""


def test_memtaps_own_helpers_are_not_followed_children(pkg, tmp_path):
    # memtap run --follow-fork of a program whose Tracker starts `memtap
    # extract` and whose Capture starts `memtap stats`: those are memtap's,
    # not the program's children, and get no captures of their own
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS_UNDER_FOLLOW_FORK)
    proc = pkg.run([pkg.memtap, "run", "-q", "--follow-fork", "-o", tmp_path / "run.bin",
                    pkg.python, script], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "True\n", (proc.stdout, proc.stderr)
    assert sorted(p.name for p in tmp_path.glob("run*.bin")) == ["run.bin"]


TRACKER_CHILD_LIMIT = """\
import memtap, os
def limit():
    for line in open("/proc/self/limits"):
        if line.startswith("Max address space"):
            return line.split()[3:5]
print("parent", limit(), flush=True)
with memtap.Tracker("t.bin"):
    pid = os.fork()
    if pid == 0:
        print("child", limit(), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_a_trackers_children_keep_their_limit(pkg, tmp_path):
    # no memtap run gave a Tracker's process room for the rings: a child
    # forked there must not give back room it never had (it lost 256 MiB,
    # hard limit included)
    import resource
    if memtap_sanitized():
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    script = tmp_path / "limit.py"
    script.write_text(TRACKER_CHILD_LIMIT)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4000000 * 1024, 4000000 * 1024))

    proc = pkg.run([pkg.python, script], cwd=tmp_path, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    parent, child = proc.stdout.splitlines()
    assert parent.split(" ", 1)[1] == child.split(" ", 1)[1] == \
        "['4096000000', '4096000000']", proc.stdout
