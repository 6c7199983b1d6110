"""Capture modes (issue 4): --aggregate, --follow-fork,
--trace-python-allocators, thread names. Real programs, real captures."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import (DEFAULT_PYTHON, MEMTAP, assert_location, clean_env,
                      describe_locations, find_locations, line_of,
                      memtap_stats)

CHURN = """\
import sys
keep = []

def hold():
    keep.append(bytearray(50 * 2**20))  # @hold

def churn():
    for i in range(2_000_000):
        b = bytes(600 + i % 400)  # @churn

hold()
churn()
"""


def summary_rows(capture, *flags):
    out = subprocess.run([str(MEMTAP), "summary", "--json", *flags, str(capture)],
                         capture_output=True, check=True, env=clean_env())
    data = json.loads(out.stdout)
    rows = {(r["function"], r["file"], r["line"]):
            (r["own_bytes"], r["own_count"], r["total_bytes"], r["total_count"])
            for r in data["rows"]}
    return data, rows


def run_without_aslr(tmp_path, script, out, *flags):
    """memtap run with address randomization off: CPython's start-up uses
    memory a little differently from one address layout to the next (which
    import crosses into a new pymalloc arena), and two captures can only
    match exactly if the program did exactly the same thing twice."""
    proc = subprocess.run(["setarch", os.uname().machine, "-R", str(MEMTAP), "run",
                           "-q", "-o", str(out), *flags, "--python", DEFAULT_PYTHON,
                           str(script)], capture_output=True, env=clean_env(),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return memtap_stats(out)


def test_aggregate_is_small_and_reports_the_same(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(CHURN)
    run_without_aslr(tmp_path, script, tmp_path / "full.bin")
    stats = run_without_aslr(tmp_path, script, tmp_path / "agg.bin", "--aggregate")
    size = (tmp_path / "agg.bin").stat().st_size
    assert size < 64 * 1024, size
    # 2,000,000 bytes objects of 600..999 bytes: calloc(1, 33 + n) each
    assert_location(stats, "prog.py", line_of(CHURN, "churn"),
                    5000 * (400 * 33 + (600 + 999) * 400 // 2), 2_000_000,
                    function="churn")
    assert stats["complete"] and stats["exit"] == {"code": 0}
    for flags in ([], ["--leaks"]):
        d_full, rows_full = summary_rows(tmp_path / "full.bin", *flags)
        d_agg, rows_agg = summary_rows(tmp_path / "agg.bin", *flags)
        assert d_full["peak_memory_bytes"] == d_agg["peak_memory_bytes"]
        assert rows_full == rows_agg
    assert rows_agg[("hold", str(tmp_path / "prog.py"), line_of(CHURN, "hold"))][0] == 52428801


def test_aggregate_refuses_temporary(tmp_path, run_memtap):
    run_memtap(tmp_path, "x = bytearray(1000)\n", extra=["--aggregate"])
    proc = subprocess.run([str(MEMTAP), "summary", "--temporary", str(tmp_path / "capture.bin")],
                          capture_output=True, env=clean_env())
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memtap: ") and "aggregate" in err[0]


KILLED = """\
import os
keep = bytearray(30 * 2**20)  # @keep
os.kill(os.getpid(), 9)
"""


def test_aggregate_program_killed_keeps_its_memory(tmp_path, run_memtap):
    proc, stats = run_memtap(tmp_path, KILLED, extra=["--aggregate"], expect_rc=-9)
    assert stats["complete"] is True
    assert stats["exit"] == {"signal": 9}
    assert stats["end_memory_bytes"] >= 30 * 2**20
    assert_location(stats, "prog.py", line_of(KILLED, "keep"), 30 * 2**20 + 1, 1)


SLOW = """\
import time
keep = [bytearray(2**20) for _ in range(20)]  # @keep
print("ready", flush=True)
time.sleep(4)
print("done", flush=True)
"""


def test_aggregate_memtap_killed_leaves_last_checkpoint(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(SLOW)
    out = tmp_path / "agg.bin"
    proc = subprocess.Popen([str(MEMTAP), "run", "-q", "--aggregate", "-o", str(out),
                             "--python", DEFAULT_PYTHON, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_env(), cwd=tmp_path)
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(2.5)  # at least two checkpoints after the list was made
    proc.kill()  # memtap itself, not the program
    proc.wait(timeout=30)
    stats = memtap_stats(out)
    assert stats["complete"] is False
    assert_location(stats, "prog.py", line_of(SLOW, "keep"), 20 * (2**20 + 1), 20)
    # the program, orphaned, ran on and finished untracked
    time.sleep(2.5)


POOL = """\
import multiprocessing as mp, os

def work(n):
    data = [bytes(1000 + i % 7) for i in range(n)]  # @work
    return len(data)

if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(3) as pool:
        print(sum(pool.map(work, [3000] * 9)))
"""


def test_follow_fork_pool(tmp_path, run_memtap):
    proc, stats = run_memtap(tmp_path, POOL, extra=["--follow-fork"])
    assert proc.stdout == b"27000\n"
    children = sorted(tmp_path.glob("capture.*.bin"))
    assert len(children) == 3, children
    line = line_of(POOL, "work")
    counted = 0
    for child in children:
        pid = int(child.name.split(".")[1])
        cs = memtap_stats(child)
        assert cs["pid"] == pid and cs["complete"]
        assert cs["command"] == stats["command"]  # a forked child: its parent's program
        counted += sum(l["count"] for l in find_locations(cs, "prog.py", line)
                       if l["function"] in ("work", "<listcomp>", "work.<locals>.<listcomp>"))
    # 9 tasks x 3000 bytes objects, plus the list's own growth at that line
    assert 27000 <= counted <= 27000 + 9 * 40, counted
    assert not find_locations(stats, "prog.py", line)
    stderr = proc.stderr.decode()
    for child in children:
        assert str(child) in stderr or child.name in stderr


FOREIGN = """\
import array, os, socket, struct
name = os.environ["MEMTAP_SHM"].split(":", 2)[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
note = struct.pack("ii", os.getpid(), os.getppid())
fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))]
s.sendto(b"junk", "\\0" + name)                    # no descriptor, wrong size
s.sendmsg([note], fds, 0, "\\0" + name)             # a pipe, not a transport
s.sendmsg([struct.pack("ii", 1, 0)], fds, 0, "\\0" + name)  # not the sender's pid
s.sendmsg([note], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", [r, w, r]))], 0, "\\0" + name)  # three
pid = os.fork()
if pid == 0:
    child = bytearray(7 * 2**20)  # @child
    os._exit(0)
os.waitpid(pid, 0)
print("ok")
"""


def test_follow_fork_ignores_what_is_not_a_child(tmp_path, run_memtap):
    # Anything else sent to the collector's socket is dropped (or, for a
    # descriptor that is no transport, said so); the real child is followed.
    proc, stats = run_memtap(tmp_path, FOREIGN, extra=["--follow-fork"])
    assert proc.stdout == b"ok\n"
    said = [l for l in proc.stderr.decode().splitlines() if "transport" in l]
    assert said == ["memtap: process %d sent something other than a memtap "
                    "transport; ignored" % stats["pid"]] * 2, proc.stderr
    children = list(tmp_path.glob("capture.*.bin"))
    assert len(children) == 1, (children, proc.stderr)
    child = memtap_stats(children[0])
    assert child["complete"]
    assert_location(child, "prog.py", line_of(FOREIGN, "child"), 7 * 2**20 + 1)


BURST = """\
import os, subprocess
pids = []
for i in range(64):
    pid = os.fork()
    if pid == 0:
        b = bytearray((i + 1) * 4096)  # @burst
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
procs = [subprocess.Popen(["/bin/true"]) for _ in range(64)]
print(sum(p.wait() for p in procs))
"""


def test_follow_fork_takes_a_burst_of_children(tmp_path, run_memtap):
    # 128 children announce themselves at once to a socket whose queue holds
    # 10 datagrams: none is refused, each has its capture.
    proc, stats = run_memtap(tmp_path, BURST, extra=["--follow-fork"])
    assert proc.stdout == b"0\n"
    assert b"cannot follow" not in proc.stderr, proc.stderr
    children = list(tmp_path.glob("capture.*.bin"))
    assert len(children) == 128, len(children)
    sizes, trues = [], 0
    for child in children:
        cs = memtap_stats(child)
        assert cs["complete"]
        if cs["command"] == "/bin/true":
            trues += 1
        sizes += [l["bytes"] for l in find_locations(cs, "prog.py", line_of(BURST, "burst"))]
    assert trues == 64
    assert sorted(sizes) == [(i + 1) * 4096 + 1 for i in range(64)], sorted(sizes)[:3]


ENDINGS = """\
import os, signal, subprocess, sys

def forked(end):
    pid = os.fork()
    if pid == 0:
        b = bytearray(4096)
        end()
    os.waitpid(pid, 0)  # reaped at once: memtap cannot read its status

def vfork_then_killed():
    # subprocess's vfork child fails to exec and _exits 255 in our memory:
    # that is not this process's end.
    try:
        subprocess.run(["/nonexistent-program"])
    except FileNotFoundError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)

forked(lambda: os._exit(7))
forked(lambda: sys.exit(9))
forked(vfork_then_killed)
subprocess.run([sys.executable, "-c", "import sys; sys.exit(5)"])
subprocess.run(["/bin/sh", "-c", "exit 3"])
print("ok")
"""


def test_follow_fork_knows_how_children_ended(tmp_path, run_memtap):
    # The parent reaps each child before memtap can look at it: its exit
    # status comes from the child's own _exit or exit.
    proc, stats = run_memtap(tmp_path, ENDINGS, extra=["--follow-fork"])
    assert proc.stdout == b"ok\n"
    ends = {}
    for child in tmp_path.glob("capture.*.bin"):
        cs = memtap_stats(child)
        assert cs["complete"]
        ends[cs["pid"]] = (cs["command"].split()[-1], cs["exit"])
        # samples are timed from the child's start: never before it
        records = subprocess.run([str(MEMTAP), "parse", str(child)], capture_output=True,
                                 text=True, check=True, env=clean_env()).stdout
        times = [int(l.split("time_us=")[1].split()[0]) for l in records.splitlines()
                 if l.startswith("SAMPLE")]
        assert all(t < 60 * 10**6 for t in times), (child, times[:5])
    got = [e for _, e in sorted(ends.items())]
    prog = stats["command"].split()[-1]
    # The killed one: unknown, unless memtap saw it before its parent reaped it.
    killed = got[2][1] if len(got) == 5 and got[2][1] == {"signal": 9} else None
    assert got == [(prog, {"code": 7}), (prog, {"code": 9}), (prog, killed),
                   ("sys.exit(5)", {"code": 5}), ("3", {"code": 3})], got
    assert stats["exit"] == {"code": 0}


def test_without_follow_fork_children_write_nothing(tmp_path, run_memtap):
    proc, stats = run_memtap(tmp_path, POOL)
    assert proc.stdout == b"27000\n"
    assert list(tmp_path.glob("capture.*.bin")) == []


MANY_THREADS = """\
import threading, queue
N = 300
bar = threading.Barrier(N)
q = queue.Queue()
kept = [None] * N
def work(i):
    bar.wait()                      # all 300 alive at once
    kept[i] = bytearray(100000 + i)  # @each
    if i < 10:
        q.put(bytearray(1000000 + i))   # @handed
    bar.wait()
    if i == N - 1:
        while not q.empty():
            q.get()                 # freed by another thread, maybe a shared one
threads = [threading.Thread(target=work, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(kept))
"""


def test_more_threads_than_slots(tmp_path, run_memtap):
    # 255 threads record into rings of their own; the others share one, in
    # turns: every allocation and every free is recorded, exactly.
    proc, stats = run_memtap(tmp_path, MANY_THREADS)
    assert proc.stdout == b"300\n"
    assert proc.stderr.decode().count("more than 255 threads at once") == 1, proc.stderr
    each = line_of(MANY_THREADS, "each")
    rows = find_locations(stats, "prog.py", each)
    assert sum(r["count"] for r in rows) == 300, rows
    assert sum(r["bytes"] for r in rows) == sum(100000 + i + 1 for i in range(300))
    assert "[threads beyond 255, or ended]" in [t["name"] for t in stats["threads"]]
    data, leaks = summary_rows(proc.capture, "--leaks")
    handed = line_of(MANY_THREADS, "handed")
    assert not [k for k in leaks if k[2] == handed], leaks
    assert sum(v[1] for k, v in leaks.items() if k[2] == each) == 300


THREAD_NAMES = """\
import ctypes, threading
libc = ctypes.CDLL(None)

def worker():
    libc.prctl(15, b"mt-cruncher", 0, 0, 0)  # PR_SET_NAME
    keep.append(bytearray(3 * 2**20))  # @alloc

def loader():
    keep.append(bytearray(5 * 2**20))  # @named

class Quiet(threading.Thread):
    @property
    def name(self):  # never called by memtap: it reads the instance's _name
        raise RuntimeError("name read")

keep = []
threads = [threading.Thread(target=worker),
           threading.Thread(target=loader, name="loader-\u00e9t\u00e9"),
           Quiet(target=loader, name="quiet-one")]
for t in threads:
    t.start()
    t.join()
print(len(keep))
"""


def test_thread_names(tmp_path, run_memtap):
    """Names set with prctl and Python's threading names both reach the
    capture; a Thread subclass's own name property is not run."""
    proc, stats = run_memtap(tmp_path, THREAD_NAMES)
    assert proc.stdout == b"3\n"
    assert [l for l in proc.stderr.splitlines() if not l.startswith(b"memtap:")] == []
    by_name = {t["name"]: t for t in stats["threads"]}
    assert {"mt-cruncher", "loader-\u00e9t\u00e9", "quiet-one"} <= set(by_name), by_name
    summary = subprocess.run([str(MEMTAP), "summary", "--split-threads", "--json",
                              str(tmp_path / "capture.bin")], capture_output=True,
                             check=True, env=clean_env())
    rows = json.loads(summary.stdout)["rows"]
    line = line_of(THREAD_NAMES, "named")
    named = sorted((r["thread"].split(" (thread ")[0], r["own_bytes"]) for r in rows
                   if r["file"].endswith("prog.py") and r["line"] == line)
    assert named == [("loader-\u00e9t\u00e9", 5 * 2**20 + 1), ("quiet-one", 5 * 2**20 + 1)]
    assert any(r["thread"].startswith("mt-cruncher (thread ") for r in rows)


TUPLES = """\
x = [(i, i + 1) for i in range(1000, 101000)]  # @tuples
"""


def test_trace_python_allocators_counts_small_objects(tmp_path, run_memtap):
    proc, stats = run_memtap(tmp_path, TUPLES, extra=["--trace-python-allocators"])
    assert "pymalloc" in stats["allocators"]
    locs = find_locations(stats, "prog.py", line_of(TUPLES, "tuples"))
    count = sum(l["count"] for l in locs)
    nbytes = sum(l["bytes"] for l in locs)
    # per item: the int from range, the int i + 1, the 2-tuple; the tuple
    # free list serves up to 2000 tuples without allocating; the list grows
    assert 300_000 - 2000 <= count <= 300_000 + 100, describe_locations(stats)
    assert nbytes >= 100_000 * (2 * sys.getsizeof(10**4) + sys.getsizeof((1, 2))) - 2000 * 56
    # without the flag the tuples are invisible (inside pymalloc arenas)
    proc, plain = run_memtap(tmp_path, TUPLES, out=tmp_path / "plain.bin")
    assert sum(l["count"] for l in find_locations(plain, "prog.py", line_of(TUPLES, "tuples"))) < 1000


KEPT_OBJECTS = """\
def small(n):
    return [object() for _ in range(n)]  # @objects
a = small(1000)
b = small(2000)
"""


def test_trace_python_allocators_with_pythonmalloc_and_dev_mode(tmp_path, run_memtap):
    """PYTHONMALLOC and -X dev put their allocators in while the interpreter
    pre-initializes, over the wrappers the shim installed before it: the
    objects are recorded all the same, exactly as with the default (the
    debug hooks' padding is not the program's)."""
    line = line_of(KEPT_OBJECTS, "objects")
    seen = {}
    for var, value in ((None, None), ("PYTHONMALLOC", "pymalloc"),
                       ("PYTHONMALLOC", "pymalloc_debug"), ("PYTHONMALLOC", "malloc"),
                       ("PYTHONMALLOC", "debug"), ("PYTHONDEVMODE", "1")):
        env = clean_env()
        if var:
            env[var] = value
        out = tmp_path / ("%s-%s.bin" % (var, value))
        run_memtap(tmp_path, KEPT_OBJECTS, extra=["--trace-python-allocators"], out=out,
                   env=env, stats=False)
        doc = json.loads(subprocess.run([str(MEMTAP), "summary", "--leaks", "--json", "-n",
                                         "100000", str(out)], capture_output=True, check=True,
                                        env=clean_env()).stdout)
        seen[value] = [(r["own_count"], r["own_bytes"]) for r in doc["rows"]
                       if r["file"].endswith("prog.py") and r["line"] == line]
    # 3000 objects, 2 lists, their growth
    assert seen[None][0][0] >= 3000, seen
    assert all(v == seen[None] for v in seen.values()), seen


ADDRESSES = """\
import ctypes
keep = bytearray(3_000_001)  # @keep
addr = ctypes.addressof((ctypes.c_char * len(keep)).from_buffer(keep))
with open(OUT, "w") as f:
    f.write(hex(addr))
for i in range(1000):
    b = bytes(5000 + i)  # @churn
"""


def parse_lines(capture):
    out = subprocess.run([str(MEMTAP), "parse", str(capture)], capture_output=True,
                         check=True, env=clean_env())
    return out.stdout.decode().splitlines()


def test_addresses_only_when_asked(tmp_path, run_memtap):
    """Heap addresses are left out unless --addresses: the reports are the
    same either way, the capture smaller without; with them, parse shows
    where each block was (here, the bytearray's buffer as Python saw it)."""
    results = {}
    for flag in ([], ["--addresses"]):
        out = tmp_path / ("addr%d.txt" % len(flag))
        script = ADDRESSES.replace("OUT", repr(str(out)))
        proc, stats = run_memtap(tmp_path, script, extra=flag,
                                 out=tmp_path / ("c%d.bin" % len(flag)))
        keep = line_of(script, "keep")
        assert_location(stats, "prog.py", keep, 3_000_002)  # +1: bytearray's NUL
        lines = parse_lines(proc.capture)
        big = [l for l in lines if l.startswith("ALLOC ") and "size=3000002 " in l]
        assert len(big) == 1, big
        if flag:
            assert " addr=%s " % out.read_text() in big[0], (big[0], out.read_text())
        else:
            assert " block=" in big[0] and " addr=" not in big[0], big[0]
            assert not any(" addr=" in l for l in lines
                           if l.startswith(("FREE ", "ALLOC ")) and " mmap" not in l)
        results[bool(flag)] = (proc.capture.stat().st_size,
                               {k: stats[k] for k in ("total_allocations", "total_frees",
                                                      "total_allocated_bytes")})
    assert results[False][1]["total_allocations"] > 1000
    assert results[False][0] < results[True][0], results
    # an aggregate capture keeps no blocks to give addresses to
    proc = subprocess.run([str(MEMTAP), "run", "--addresses", "--aggregate", "-o",
                           str(tmp_path / "x.bin"), "--python", DEFAULT_PYTHON, "-c", "pass"],
                          capture_output=True, env=clean_env())
    assert proc.returncode == 2 and not (tmp_path / "x.bin").exists()
    assert proc.stderr.decode().splitlines()[0] == (
        "memtap: --addresses and --aggregate exclude each other"), proc.stderr
