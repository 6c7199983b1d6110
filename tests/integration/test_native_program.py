"""A C program calling every intercepted function, traced with `memtap run ./prog`.

tests/programs/alloc_all.c is built here with `cc -O0 -g`.  The C library
allocates a little on its own (glibc 2.36: pthread_create's calloc(18, 16) for
the new thread's DTV, through the shim because ld.so uses the interposed
calloc), so per-allocator numbers are compared with the same program's
"baseline" mode, which starts and joins the same thread and allocates nothing
itself.  What the program itself asks for, per call of exercise() (run on the
main thread and on a pthread, so everything below is doubled):

  malloc         1001, 2002                     count 2  bytes  3003
  calloc         7 x 111 (the overflowing one fails)  1       777
  realloc        2002 -> 3003, realloc(NULL, 4004)    2      7007
                 (realloc(p, 0) frees: nothing allocated)
  reallocarray   5 x 1001, 6 x 1001 (glibc's reallocarray calls realloc
                 through the PLT: recorded once, as reallocarray)
                                                 2     11011
  posix_memalign 6007 (the EINVAL one fails)     1      6007
  aligned_alloc  7040                            1      7040
  memalign       8008                            1      8008
  valloc         9009                            1      9009
  pvalloc        10010, page-rounded             1     12288
  mmap           3 pages + 100 (page-rounded: 4 pages) and mmap64 of 5 pages
                                                 2     36864
  mmap_file      2 pages of /proc/self/exe       1      8192
  mmap_reserve   1 MiB PROT_NONE|MAP_NORESERVE   1   1048576
(page = 4096 on this machine; computed from os.sysconf below.)
Failed calls (malloc/mmap of 2^63 bytes, overflowing calloc/reallocarray,
posix_memalign with alignment 3) record nothing.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (
    DEFAULT_PYTHON, PROGRAMS, TIMEOUT, assert_location, clean_env, describe_locations, line_of,
    memtap_stats,
)

SOURCE = PROGRAMS / "alloc_all.c"
PAGE = os.sysconf("SC_PAGESIZE")


def expected_per_exercise():
    return {
        "malloc": (2, 1001 + 2002),
        "calloc": (1, 7 * 111),
        "realloc": (2, 3003 + 4004),
        "reallocarray": (2, 5 * 1001 + 6 * 1001),
        "posix_memalign": (1, 6007),
        "aligned_alloc": (1, 7040),
        "memalign": (1, 8008),
        "valloc": (1, 9009),
        "pvalloc": (1, -(-10010 // PAGE) * PAGE),
        "mmap": (2, 4 * PAGE + 5 * PAGE),
        "mmap_file": (1, 2 * PAGE),
        "mmap_reserve": (1, 1 << 20),
    }


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    """alloc_all built with `cc -O0 -g` into a temporary directory."""
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH"
    d = tmp_path_factory.mktemp("native")
    exe = d / "alloc_all"
    subprocess.run([cc, "-O0", "-g", "-pthread", "-o", str(exe), str(SOURCE)],
                   check=True, timeout=TIMEOUT)
    return exe


def run_prog(memtap, prog, tmp_path, mode, expect_rc=0, extra=()):
    """`memtap run ./alloc_all MODE` in tmp_path; returns (proc, stats)."""
    work = tmp_path / mode
    work.mkdir()
    shutil.copy2(prog, work / "alloc_all")
    out = work / "capture.bin"
    proc = subprocess.run([str(memtap), "run", "-o", str(out), *extra, "./alloc_all", mode],
                          cwd=work, env=clean_env(), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == expect_rc, (proc.returncode, proc.stderr.decode(errors="replace"))
    assert proc.stdout == b"", "alloc_all prints nothing"
    return proc, memtap_stats(out)


def allocator(stats, name):
    a = stats["allocators"].get(name, {"count": 0, "bytes": 0})
    return a["count"], a["bytes"]


@pytest.fixture(scope="module")
def baseline(memtap, prog, tmp_path_factory):
    return run_prog(memtap, prog, tmp_path_factory.mktemp("baseline"), "baseline")[1]


def test_every_intercepted_function_exact(memtap, prog, tmp_path, baseline):
    proc, stats = run_prog(memtap, prog, tmp_path, "all")
    assert stats["python_version"] is None
    assert stats["complete"] is True
    assert stats["exit"] == {"code": 0}
    got, want = {}, {}
    for name, (count, nbytes) in expected_per_exercise().items():
        base = allocator(baseline, name)
        full = allocator(stats, name)
        got[name] = (full[0] - base[0], full[1] - base[1])
        want[name] = (2 * count, 2 * nbytes)  # main thread + pthread
    assert got == want, "per-allocator (count, bytes) over the baseline run"
    # nothing under any other name
    assert set(stats["allocators"]) <= set(expected_per_exercise())
    # the totals are of the memory the heap counts: file mappings and
    # reservations are listed by allocator only (they were in the count,
    # not in the bytes)
    counted = [v for k, v in expected_per_exercise().items()
               if k not in ("mmap_file", "mmap_reserve")]
    assert (stats["total_allocations"] - baseline["total_allocations"],
            stats["total_allocated_bytes"] - baseline["total_allocated_bytes"]) == \
        (2 * sum(c for c, _ in counted), 2 * sum(b for _, b in counted))
    # everything the program allocated itself was freed or unmapped
    assert stats["end_memory_bytes"] == baseline["end_memory_bytes"]


def test_baseline_is_only_libc(baseline):
    # the shim records none of its own allocations: what is left is libc's,
    # a few hundred bytes, through malloc/calloc only
    assert baseline["python_version"] is None
    assert set(baseline["allocators"]) <= {"malloc", "calloc", "realloc"}, baseline["allocators"]
    assert baseline["total_allocated_bytes"] < 64 * 1024


def test_mremap(memtap, prog, tmp_path, baseline):
    # 4 pages mapped, the 2nd cut out, the 1st grown to 5 pages (may move),
    # the last two shrunk to one; all left mapped at exit
    proc, stats = run_prog(memtap, prog, tmp_path, "mremap")
    live_end = 5 * PAGE + 1 * PAGE
    live_peak = 5 * PAGE + 2 * PAGE
    assert stats["end_memory_bytes"] - baseline["end_memory_bytes"] == live_end
    assert stats["peak_memory_bytes"] >= live_peak
    assert stats["peak_memory_bytes"] <= live_peak + baseline["peak_memory_bytes"]
    # NEEDSWORK: the spec does not say how mremap shows in "allocators"; read
    # like realloc (design.md §2: free(old) + alloc(new), under "mmap"):
    # mmap 4 pages, then 5 pages, then 1 page
    count, nbytes = allocator(stats, "mmap")
    assert (count, nbytes) == (3, 4 * PAGE + 5 * PAGE + 1 * PAGE)


def test_mremap_dontunmap_leaves_the_old_range(memtap, prog, tmp_path, baseline):
    # MREMAP_DONTUNMAP moves the pages and keeps the old range mapped: both
    # count, 3 + 3 pages, as the kernel's own accounting has them
    work = tmp_path / "dontunmap"
    work.mkdir()
    shutil.copy2(prog, work / "alloc_all")
    out = work / "capture.bin"
    proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), "./alloc_all",
                           "dontunmap"], cwd=work, env=clean_env(), capture_output=True,
                          timeout=TIMEOUT)
    if proc.returncode == 3:
        pytest.skip("this kernel has no MREMAP_DONTUNMAP")
    assert proc.returncode == 0, proc.stderr
    stats = memtap_stats(out)
    assert stats["end_memory_bytes"] - baseline["end_memory_bytes"] == 6 * PAGE


def test_failed_reallocs_leave_the_block_alive(memtap, prog, tmp_path, baseline):
    # realloc too big, reallocarray with n x size overflowing, and too big:
    # each fails and leaves the block as it was (a failure is not a free)
    proc, stats = run_prog(memtap, prog, tmp_path, "failed")
    assert stats["end_memory_bytes"] - baseline["end_memory_bytes"] == 100
    out = subprocess.run([str(memtap), "summary", "--leaks", "--json",
                          str(tmp_path / "failed" / "capture.bin")],
                         capture_output=True, check=True, env=clean_env())
    line = line_of(SOURCE.read_text(), "failed_keep")
    rows = [(r["own_bytes"], r["own_count"]) for r in json.loads(out.stdout)["rows"]
            if r["file"].endswith("alloc_all.c") and r["line"] == line]
    assert rows == [(100, 1)], out.stdout[:2000]


def test_native_locations_and_thread_name(memtap, prog, tmp_path):
    proc, stats = run_prog(memtap, prog, tmp_path, "locations")
    text = SOURCE.read_text()
    # innermost frame outside libc and the shim: the caller's own line
    assert_location(stats, "alloc_all.c", line_of(text, "loc_main"), 3000001, 1, function="main")
    assert_location(stats, "alloc_all.c", line_of(text, "loc_leaf"), 1000003, 1, function="leaf_alloc")
    assert_location(stats, "alloc_all.c", line_of(text, "loc_thread"), 2000002, 1, function="loc_worker")
    rows = stats["top_locations"]
    assert [(r["line"], r["bytes"]) for r in rows[:3]] == [
        (line_of(text, "loc_main"), 3000001),
        (line_of(text, "loc_thread"), 2000002),
        (line_of(text, "loc_leaf"), 1000003)], describe_locations(stats)
    assert "mt-worker" in [t["name"] for t in stats["threads"]], stats["threads"]
    assert len(stats["threads"]) >= 2
    assert stats["end_memory_bytes"] >= 3000001 + 2000002 + 1000003


def test_native_exit_code_preserved(memtap, prog, tmp_path):
    proc, stats = run_prog(memtap, prog, tmp_path, "exit7", expect_rc=7)
    assert stats["exit"] == {"code": 7}
    assert stats["complete"] is True
    assert stats["python_version"] is None


def test_native_default_output_name(memtap, prog, tmp_path):
    shutil.copy2(prog, tmp_path / "alloc_all")
    proc = subprocess.run([str(memtap), "run", "./alloc_all", "baseline"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    caps = sorted(p.name for p in tmp_path.glob("*.bin"))
    assert len(caps) == 1 and caps[0].startswith("memtap-alloc_all.") and caps[0].endswith(".bin"), caps
    stats = memtap_stats(tmp_path / caps[0])
    assert caps[0] == "memtap-alloc_all.%d.bin" % stats["pid"]


def test_native_stacks_exact(memtap, tmp_path):
    """tests/programs/stack_paths.c: two paths that part at the last frames,
    taken in turn, and a recursion: every stack and its bytes, exactly
    (the shim keeps its last two native stacks to skip the frames a new one
    shares with them; a frame left stale there would put a site under the
    wrong caller)."""
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH"
    src = PROGRAMS / "stack_paths.c"
    exe = tmp_path / "stack_paths"
    subprocess.run([cc, "-O0", "-g", "-o", str(exe), str(src)], check=True, timeout=TIMEOUT)
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), str(exe)], cwd=tmp_path,
                          env=clean_env(), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = src.read_text()

    def at(function, tag):
        return "%s (stack_paths.c:%d)" % (function, line_of(text, tag))

    take = at("take", "take")
    want = {}
    for tag, nx, ny in (("alternate", 50, 50), ("mixed", 33, 17)):
        want[";".join([at("main", tag), at("fork_xy", "fork_x"), at("leaf_x", "leaf_x"),
                       take])] = nx * 777
        want[";".join([at("main", tag), at("fork_xy", "fork_y"), at("leaf_y", "leaf_y"),
                       take])] = ny * 888
    for depth in range(41):  # rec(0) ... rec(40): take(1000 + depth), once each
        want[";".join([at("main", "recurse")] + [at("rec", "rec_rec")] * depth +
                      [at("rec", "rec_take"), take])] = 1000 + depth
    for depth in (38, 39, 40):  # rec(38), 50 times
        want[";".join([at("main", "mixed_rec")] + [at("rec", "rec_rec")] * (depth - 38) +
                      [at("rec", "rec_take"), take])] = 50 * (1000 + depth)
    exported = subprocess.run([str(memtap), "export", "--format", "collapsed", str(out)],
                              capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    got = {}
    for entry in exported.splitlines():
        stack, nbytes = entry.rsplit(" ", 1)
        stack = stack.replace(str(src.parent) + "/", "")
        if stack.startswith("main ("):  # the C library's own allocations aside
            got[stack] = got.get(stack, 0) + int(nbytes)
    assert got == want


DEEP_C = """\
#include <stdlib.h>
void *keep[2];
__attribute__((noinline)) int rec(int n, int i) {
    if (n == 0) { keep[i] = malloc(100000 + i); return 1; } /* @take */
    return rec(n - 1, i) + 1; /* @rec */
}
int main(void) { return rec(100, 0) + rec(5000, 1) == 5102 ? 0 : 1; } /* @main */
"""


def test_native_stack_too_deep_is_marked(memtap, tmp_path):
    # Native stacks are recorded up to 512 frames: a deeper one keeps its
    # innermost frames and ends in a marker where its outer frames would be.
    src = tmp_path / "deep.c"
    src.write_text(DEEP_C)
    exe = tmp_path / "deep"
    subprocess.run(["cc", "-O0", "-g", "-o", str(exe), str(src)], check=True, timeout=TIMEOUT)
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), str(exe)], cwd=tmp_path,
                          env=clean_env(), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    exported = subprocess.run([str(memtap), "export", "--format", "collapsed", "--leaks",
                               str(out)], capture_output=True, text=True, timeout=TIMEOUT,
                              check=True).stdout
    stacks = {int(n): s.split(";") for s, n in (e.rsplit(" ", 1) for e in exported.splitlines())}

    def at(function, tag):
        return "%s (%s:%d)" % (function, src, line_of(DEEP_C, tag))

    assert stacks[100000] == [at("main", "main")] + [at("rec", "rec")] * 100 + [at("rec", "take")]
    deep = stacks[100001]
    assert deep[0] == "[deeper frames not recorded]" and deep[-1] == at("rec", "take"), deep[:3]
    # 512 frames: 511 of the program's and the marker
    assert set(deep[1:-1]) == {at("rec", "rec")} and len(deep) == 512, len(deep)


EARLY_LIB = """\
#include <stdlib.h>
void *early_block;
__attribute__((constructor)) static void early(void) { early_block = malloc(55555); } /* @lib */
"""

EARLY_EXE = """\
#include <stdlib.h>
extern void *early_block;
void *late_block;
__attribute__((constructor)) static void late(void) { late_block = malloc(44444); } /* @exe */
int main(void) { return early_block && late_block ? 0 : 1; }
"""


def test_allocations_in_constructors_before_the_shims(memtap, tmp_path):
    # A library the program links to is initialised before the preloaded
    # shim: the shim starts at its first call, so its constructor's block
    # is recorded too.
    (tmp_path / "early.c").write_text(EARLY_LIB)
    (tmp_path / "main.c").write_text(EARLY_EXE)
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", str(tmp_path / "libearly.so"),
                    str(tmp_path / "early.c")], check=True, timeout=TIMEOUT)
    subprocess.run(["cc", "-g", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"),
                    "-L" + str(tmp_path), "-learly", "-Wl,-rpath," + str(tmp_path)],
                   check=True, timeout=TIMEOUT)
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), str(tmp_path / "main")],
                          cwd=tmp_path, env=clean_env(), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    stats = memtap_stats(out)
    assert_location(stats, "early.c", line_of(EARLY_LIB, "lib"), 55555, 1, function="early")
    assert_location(stats, "main.c", line_of(EARLY_EXE, "exe"), 44444, 1, function="late")


def compile_c(tmp_path, name, text, *flags):
    """tmp_path/NAME.c holding text, built with `cc -O0 -g FLAGS`; returns
    the executable (or library, with -shared) path."""
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH"
    src = tmp_path / ("%s.c" % name)
    src.write_text(text)
    out = tmp_path / (name + (".so" if "-shared" in flags else ""))
    subprocess.run([cc, "-O0", "-g", *flags, "-o", str(out), str(src)], check=True,
                   timeout=TIMEOUT)
    return out


def native_run(memtap, cwd, out, *argv, options=()):
    """`memtap run -q OPTIONS -o OUT ARGV...` in cwd; asserts it ended with 0."""
    proc = subprocess.run([str(memtap), "run", "-q", *options, "-o", str(out), *map(str, argv)],
                          cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc


def leaks_in(memtap, capture, file, metric="--leaks"):
    """(line, bytes, count) of the CSV rows of a metric (the leaks by
    default) in a file named `file`."""
    rows = subprocess.run([str(memtap), "export", metric, "--format", "csv", str(capture)],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    return sorted((int(r[6]), int(r[1]), int(r[2])) for r in csv.reader(io.StringIO(rows))
                  if r and r[5].endswith(file))


PLUGIN_C = """\
#include <stdlib.h>
static void *keep[8];
static int kept;
__attribute__((noinline)) void *alloc_in_%(name)s(size_t n) {
    return keep[kept++] = malloc(n); /* @take */
}
void *entry(size_t n) { return alloc_in_%(name)s(n); }
"""


def build_plugins(tmp_path):
    """plugin_a.so and plugin_b.so (PLUGIN_C) and tests/programs/plugins.c."""
    for name in ("a", "b"):
        compile_c(tmp_path, "plugin_" + name, PLUGIN_C % {"name": name}, "-shared", "-fPIC")
    return compile_c(tmp_path, "plugins", (PROGRAMS / "plugins.c").read_text(), "-pthread",
                     "-ldl")


@pytest.mark.parametrize("mode", ["default", "aggregate"])
def test_unloaded_objects(memtap, tmp_path, mode):
    """tests/programs/plugins.c loads plugin A, B, then A again at the same
    address, unloading each (dlclose) before the next: every allocation is
    named after the plugin that made it, though the return addresses are
    the same, on the main thread and on a thread that lives across the
    unloads (its own record of the stack must not outlive the unload)."""
    exe = build_plugins(tmp_path)
    out = tmp_path / "capture.bin"
    proc = native_run(memtap, tmp_path, out, exe, tmp_path / "plugin_a.so",
                      tmp_path / "plugin_b.so",
                      options=["--aggregate"] if mode == "aggregate" else [])
    entries = proc.stdout.split()
    assert len(entries) == 3 and len(set(entries)) == 1, (
        "the loader put the plugins at different places: %r" % entries)
    stats = memtap_stats(out)
    take = line_of(PLUGIN_C, "take")
    assert_location(stats, "plugin_a.c", take, 1000 + 100 + 3000 + 300, 4,
                    function="alloc_in_a")
    assert_location(stats, "plugin_b.c", take, 2000 + 200, 2, function="alloc_in_b")


# The same code at the same addresses in two objects, but entry's frame is
# 16 bytes in one and 96 in the other: a layout read from one is wrong for
# the other. x86-64 assembly, so that nothing but the frame size differs.
PLUGIN_S = """\
    .text
    .globl alloc_in_%(name)s
    .type alloc_in_%(name)s, @function
alloc_in_%(name)s:
    .cfi_startproc
    subq $8, %%rsp
    .cfi_def_cfa_offset 16
    call malloc@PLT
    addq $8, %%rsp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size alloc_in_%(name)s, .-alloc_in_%(name)s
    .globl entry
    .type entry, @function
entry:
    .cfi_startproc
    subq $%(frame)d, %%rsp
    .cfi_def_cfa_offset %(cfa)d
    call alloc_in_%(name)s
    addq $%(frame)d, %%rsp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size entry, .-entry
    .section .note.GNU-stack,"",@progbits
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 assembly")
def test_unloaded_objects_with_other_frame_layouts(memtap, tmp_path):
    """plugins.c with two objects whose code sits at the same addresses with
    other frame layouts: after each unload the layouts read before are
    forgotten (they were kept until a miss, so B's stacks were stepped with
    A's layouts and got frames of dlsym's in the middle, on both threads)."""
    for name, frame in (("a", 8), ("b", 88)):
        src = tmp_path / ("plugin_%s.s" % name)
        src.write_text(PLUGIN_S % {"name": name, "frame": frame, "cfa": frame + 8})
        subprocess.run([shutil.which("cc"), "-shared", "-fPIC", "-o",
                        str(tmp_path / ("plugin_%s.so" % name)), str(src)],
                       check=True, timeout=TIMEOUT)
    exe = compile_c(tmp_path, "plugins", (PROGRAMS / "plugins.c").read_text(), "-pthread",
                    "-ldl")
    out = tmp_path / "capture.bin"
    proc = native_run(memtap, tmp_path, out, exe, tmp_path / "plugin_a.so",
                      tmp_path / "plugin_b.so")
    entries = proc.stdout.split()
    assert len(entries) == 3 and len(set(entries)) == 1, (
        "the loader put the plugins at different places: %r" % entries)
    stacks = subprocess.run([str(memtap), "export", "--leaks", "--format", "collapsed",
                             str(out)], capture_output=True, text=True, timeout=TIMEOUT,
                            check=True).stdout.splitlines()
    got = {}
    for line in stacks:
        frames, n = line.rsplit(" ", 1)
        frames = frames.split(";")
        if frames[-1].startswith("alloc_in_"):
            # the plugin's two frames, then what called entry: plugins.c
            key = (frames[-1].split()[0], frames[-3].split()[0])
            got[key] = got.get(key, 0) + int(n)
    assert got == {("alloc_in_a", "main"): 1000 + 3000, ("alloc_in_a", "worker"): 100 + 300,
                   ("alloc_in_b", "main"): 2000, ("alloc_in_b", "worker"): 200}, stacks


KEY_C = """\
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static pthread_key_t key;
static void *sink;
static void drop(void *v) {
    free(v);
    sink = malloc(88); /* @in_destructor */
}
static void *thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, malloc(99)); /* @kept_for_key */
    return NULL;
}
int main(void) {
    int fd = open("/dev/null", O_RDONLY);
    printf("first descriptor %d\\n", fd);
    pthread_key_create(&key, drop);
    pthread_t t;
    pthread_create(&t, NULL, thread, NULL);
    pthread_join(t, NULL);
    return 0;
}
"""


def test_thread_exit_and_descriptors(memtap, tmp_path):
    """A thread's pthread key destructors run after memtap's own: what they
    free and allocate is recorded (the 99 bytes freed, the 88 kept); and
    the program's first open() gets descriptor 3, as without memtap (the
    unwinder's pipe used to take 3 and 4)."""
    exe = compile_c(tmp_path, "keys", KEY_C, "-pthread")
    plain = subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT)
    out = tmp_path / "capture.bin"
    proc = native_run(memtap, tmp_path, out, exe)
    assert proc.stdout == plain.stdout == "first descriptor 3\n"
    mine = leaks_in(memtap, out, "keys.c")
    assert mine == [(line_of(KEY_C, "in_destructor"), 88, 1)], mine
    # a program that is not Python always has native stacks, and says so
    assert memtap_stats(out)["native"] is True


FORK_C = """\
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void *keep;
__attribute__((noinline)) static void in_child(void) {
    keep = malloc(2002); /* @child */
}
int main(void) {
    void *parent = malloc(1001);  /* the parent names its objects first */
    pid_t pid = fork();
    if (pid == 0) {
        in_child();
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    free(parent);
    return 0;
}
"""



def test_forked_child_names_its_frames(memtap, tmp_path):
    """A forked child of a native program (no exec) writes its capture with
    the objects it has loaded, so its frames have names, not addresses."""
    exe = compile_c(tmp_path, "forker", FORK_C)
    out = tmp_path / "f.bin"
    native_run(memtap, tmp_path, out, exe, options=["--follow-fork"])
    children = [p for p in tmp_path.iterdir() if p.name.startswith("f.") and p != out]
    assert len(children) == 1, list(tmp_path.iterdir())
    stats = memtap_stats(children[0])
    assert_location(stats, "forker.c", line_of(FORK_C, "child"), 2002, 1, function="in_child")


def test_library_opened_by_a_relative_path(memtap, tmp_path):
    """dlopen("./plugin_a.so"): the capture names the library by its full
    path, so a report run from another directory still names its frames."""
    build_plugins(tmp_path)
    out = tmp_path / "capture.bin"
    native_run(memtap, tmp_path, out, "./plugins", "./plugin_a.so", "./plugin_b.so")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stats = json.loads(subprocess.run([str(memtap), "stats", "--json", str(out)],
                                      cwd=elsewhere, capture_output=True, text=True,
                                      timeout=TIMEOUT, check=True).stdout)
    take = line_of(PLUGIN_C, "take")
    assert_location(stats, "plugin_a.c", take, 1000 + 100 + 3000 + 300, 4,
                    function="alloc_in_a")


PIECES_C = """\
#include <stdio.h>
#include <sys/mman.h>
int main(void) {
    char *m = mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* @map */
    m[0] = 1;
    munmap(m + 2 * 4096, 2 * 4096);  /* a hole: pieces [0, 2) and [4, 8) */
    munmap(m, 2 * 4096);             /* the first piece, which carried the count */
    return m == MAP_FAILED;
}
"""



def test_mapping_cut_in_pieces_keeps_its_count(memtap, tmp_path):
    """What is left of a mapping after munmap cut its first piece away is
    still one mapping alive (it was left with bytes and no count)."""
    if PAGE != 4096:
        pytest.skip("written for 4 KiB pages")
    exe = compile_c(tmp_path, "pieces", PIECES_C)
    out = tmp_path / "capture.bin"
    native_run(memtap, tmp_path, out, exe)
    mine = leaks_in(memtap, out, "pieces.c")
    assert mine == [(line_of(PIECES_C, "map"), 4 * 4096, 1)], mine


PIECES_TEMPORARY_C = """\
#include <stdlib.h>
#include <sys/mman.h>
#define P 4096
#define MAP(n) mmap(0, (n) * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
int main(void) {
    char *a = MAP(4);      /* @a */
    munmap(a, P);          /* its first page, */
    munmap(a + P, 3 * P);  /* then the rest, nothing allocated between */
    char *b = MAP(4);      /* @b */
    munmap(b + P, P);      /* a hole: pieces of 4 and 8 KiB */
    munmap(b, 4 * P);      /* both */
    char *c = MAP(4);      /* @c */
    munmap(c + 2 * P, 2 * P);  /* trimmed to 8 KiB, and kept */
    void *volatile d = malloc(100);
    return !a || !b || !c || !d;
}
"""


def test_mapping_unmapped_in_pieces_is_temporary_whole(memtap, tmp_path):
    """A mapping whose pieces all go before the next allocation was a
    short-lived allocation of its whole size, not of its last piece (it
    counted 12 KiB and 8 KiB of these 16 KiB mappings)."""
    if PAGE != 4096:
        pytest.skip("written for 4 KiB pages")
    exe = compile_c(tmp_path, "pieces_temp", PIECES_TEMPORARY_C)
    out = tmp_path / "capture.bin"
    native_run(memtap, tmp_path, out, exe)
    line = lambda tag: line_of(PIECES_TEMPORARY_C, tag)
    assert leaks_in(memtap, out, "pieces_temp.c", "--temporary") == \
        [(line("a"), 4 * 4096, 1), (line("b"), 4 * 4096, 1)]
    assert [r for r in leaks_in(memtap, out, "pieces_temp.c") if r[0] == line("c")] == \
        [(line("c"), 2 * 4096, 1)]


ONE_LINE_MANY_CALLS = """\
#include <pthread.h>
#include <stdlib.h>
#define NI __attribute__((noinline))
void *volatile sink[64];
#define A8(x) x x x x x x x x
NI void many_sites(void) { int i = 0; A8(A8(sink[i++] = malloc(16);)) }  /* @many */
NI void one_site(void) { sink[0] = malloc(600); }
NI void *worker(void *a) { sink[1] = malloc(400); return a; }
int main(void) {
    many_sites();
    one_site();
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
    return 0;
}
"""


def test_return_addresses_that_print_alike_are_one_stack(tmp_path, memtap):
    # 64 calls of malloc on one line (a macro) have 64 return addresses and
    # one printed stack: tree, the exports and the table show and count it
    # once, with its 64 allocations, and rank it by its 1 KiB (it used to
    # be 64 stacks of 16 B, left out of `tree -n 2`)
    exe = compile_c(tmp_path, "many", ONE_LINE_MANY_CALLS, "-pthread")
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    line = line_of(ONE_LINE_MANY_CALLS, "many")
    assert [r for r in leaks_in(memtap, cap, "many.c") if r[0] == line] == [(line, 1024, 64)]
    tree = subprocess.run([str(memtap), "tree", "--leaks", "-n", "2", str(cap)],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert "many_sites" in tree and "1.00 KiB (" in tree and "64 allocations" in tree, tree
    stacks = int(re.search(r" in (\d+) stacks", tree).group(1))
    collapsed = subprocess.run([str(memtap), "export", "--leaks", "--format", "collapsed",
                                str(cap)], capture_output=True, text=True, timeout=TIMEOUT,
                               check=True).stdout.splitlines()
    names = [l.rsplit(" ", 1)[0] for l in collapsed]
    assert len(names) == len(set(names)) == stacks, collapsed


MAIN_LEAVES_FIRST = """\
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static void *worker(void *a) { void *w = malloc(1000); usleep(100000); return w; }  /* @worker */
static void at_end(void) { volatile char *p = malloc(1234567); p[0] = 1; }  /* @at_end */
int main(void) {
    atexit(at_end);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    pthread_exit(0);  /* the process ends when worker returns: exit(0) on its thread */
}
"""


def test_atexit_on_a_thread_that_has_ended(tmp_path, memtap):
    # main leaves by pthread_exit: the last thread's end runs exit(), and
    # the atexit handlers, after that thread's own teardown; what they
    # allocate is recorded (it was dropped)
    exe = compile_c(tmp_path, "pexit", MAIN_LEAVES_FIRST, "-pthread")
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    got = leaks_in(memtap, cap, "pexit.c")
    assert got == sorted([(line_of(MAIN_LEAVES_FIRST, "worker"), 1000, 1),
                          (line_of(MAIN_LEAVES_FIRST, "at_end"), 1234567, 1)]), got


def test_austin_names_the_main_thread_by_the_pid(tmp_path, memtap):
    # not by the first thread the capture happens to record (a worker)
    exe = compile_c(tmp_path, "many", ONE_LINE_MANY_CALLS, "-pthread")
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    pid = memtap_stats(cap)["pid"]
    out = subprocess.run([str(memtap), "export", "--format", "austin", "--leaks", str(cap)],
                         capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    samples = [l for l in out.splitlines() if l.startswith("P")]
    assert samples and {l.split(";")[1] for l in samples} == {"T0:%x" % pid}, samples[:3]


def test_speedscope_of_nothing_split_by_thread(tmp_path, memtap):
    # a speedscope file holds at least one profile, which its
    # activeProfileIndex names (there were none)
    exe = compile_c(tmp_path, "nothing", "int main(void) { return 0; }\n")
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    out = subprocess.run([str(memtap), "export", "--format", "speedscope", "--split-threads",
                          "--leaks", str(cap)], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout
    doc = json.loads(out)
    assert len(doc["profiles"]) == 1 and doc["activeProfileIndex"] == 0, doc["profiles"]
    assert doc["profiles"][0]["samples"] == [] and doc["profiles"][0]["endValue"] == 0


CXX_UNWIND = r"""
#include <pthread.h>
#include <stdexcept>
#include <string>
static int destroyed;
struct D { std::string s; D() : s(100, 'x') {} ~D() { destroyed++; } };
__attribute__((noinline)) static void deeper() { D d; pthread_exit(nullptr); }
static void *thread(void *) { D d; deeper(); return nullptr; }
extern "C" int forced_unwind(void)
{
    pthread_t t;
    destroyed = 0;
    pthread_create(&t, nullptr, thread, nullptr);
    pthread_join(t, nullptr);
    return destroyed;
}
extern "C" int throws(int n)
{
    int caught = 0;
    for (int i = 0; i < n; i++) {
        try { D d; throw std::runtime_error(std::string(50, 'e')); }
        catch (const std::exception &) { caught++; }
    }
    return caught + destroyed;
}
"""

CXX_UNWIND_PY = """\
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
print(lib.forced_unwind(), lib.throws(1000))
"""


@pytest.mark.parametrize("mode", [[], ["--native"]], ids=["default", "native"])
def test_cxx_unwinding_in_a_library_loaded_later(tmp_path, memtap, mode):
    # the shim's own unwinder must not stand in for libgcc's _Unwind_* in a
    # C++ library the program loads: a thread's forced unwind ran no
    # destructors (0, not 2), and throws were 40 times slower
    src = tmp_path / "unwinding.cpp"
    src.write_text(CXX_UNWIND)
    lib = tmp_path / "libunwinding.so"
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-pthread", "-o", str(lib), str(src)],
                   check=True, timeout=TIMEOUT)
    script = tmp_path / "load.py"
    script.write_text(CXX_UNWIND_PY)
    plain = subprocess.run([DEFAULT_PYTHON, str(script), str(lib)], capture_output=True,
                           text=True, timeout=TIMEOUT, env=clean_env())
    assert plain.stdout == "2 2002\n", plain.stderr
    proc = native_run(memtap, tmp_path, tmp_path / "c.bin", "--python", DEFAULT_PYTHON,
                      script, lib, options=mode)
    assert proc.stdout == plain.stdout


DEV_ZERO = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
int main(void)
{
    int fd = open("/dev/zero", O_RDWR);
    size_t page = 4096;
    char *a = mmap(0, 100 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    char *b = mmap(0, 100 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    memset(a, 1, 100 * page);
    memset(b, 1, 100 * page);
    a = mremap(a, 100 * page, 200 * page, MREMAP_MAYMOVE);
    b = mremap(b, 100 * page, 50 * page, MREMAP_MAYMOVE);
    return a == MAP_FAILED || b == MAP_FAILED;
}
"""


def test_dev_zero_mappings_are_memory_before_and_after_mremap(tmp_path, memtap):
    # the kernel makes a mapping of /dev/zero anonymous memory: counted as
    # such from the mmap on, not as a file's pages that mremap then turned
    # into 1 MiB of heap from nowhere
    exe = compile_c(tmp_path, "devzero", DEV_ZERO)
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    stats = memtap_stats(cap)
    assert "mmap_file" not in stats["allocators"], stats["allocators"]
    assert stats["allocators"]["mmap"]["count"] >= 2, stats["allocators"]
    leaks = leaks_in(memtap, cap, "devzero.c")
    assert sorted(b for _, b, _ in leaks) == [50 * 4096, 200 * 4096], leaks


MANY_MAPPINGS = r"""
#include <stdlib.h>
#include <sys/mman.h>
int main(void)
{
    enum { N = 3000 };
    static char *p[N];
    for (int i = 0; i < N; i++)  /* 1 to 3 pages each, PROT_READ: never merged */
        p[i] = mmap(0, 4096 * (1 + i % 3), i % 2 ? PROT_READ : PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = N - 1; i >= 0; i -= 2)  /* newest first: every other one */
        munmap(p[i], 4096 * (1 + i % 3));
    for (int i = 0; i < N; i += 4)  /* oldest first: the first page of some */
        munmap(p[i], 4096);
    return 0;
}
"""


def test_many_mappings_unmapped_in_any_order(tmp_path, memtap):
    # the replay's mappings, kept lowest last: exact totals however they go
    exe = compile_c(tmp_path, "maps", MANY_MAPPINGS)
    cap = tmp_path / "c.bin"
    native_run(memtap, tmp_path, cap, exe)
    left = sum(4096 * (1 + i % 3) - (4096 if i % 4 == 0 else 0)
               for i in range(3000) if i % 2 == 0)
    assert sum(b for _, b, _ in leaks_in(memtap, cap, "maps.c")) == left


def test_short_run_has_no_early_rss_sample(memtap, tmp_path):
    """A program gone within 10 ms is "not sampled" (stats.md); a sample taken
    at once read the exec'd image before the loader had mapped libc (12-200
    KiB for a program whose real RSS is megabytes)."""
    for i in range(5):
        out = tmp_path / ("t%d.bin" % i)
        proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), "/bin/true"],
                              env=clean_env(), capture_output=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        rss = memtap_stats(out)["peak_rss_bytes"]
        assert rss == 0 or rss >= 1 << 20, rss


ERRNO_LIB = """\
#include <errno.h>
#include <stdlib.h>
int errno_in_ctor = -1;
void *kept_by_ctor;
/* a dependency's constructor runs before the shim's: its malloc starts it */
__attribute__((constructor)) static void early(void) {
    errno = 0;
    kept_by_ctor = malloc(100);
    errno_in_ctor = errno;
}
"""

ERRNO_MAIN = """\
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
extern int errno_in_ctor;
static void *churn(void *arg) {
    long changed = 0;
    for (int i = 0; i < 200000; i++) {
        errno = 0;
        void *p = malloc(i % 5000 + 1);
        p = realloc(p, i % 7000 + 1);
        free(p);
        if (i % 1000 == 0)
            munmap(mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                   1 << 20);
        changed += errno != 0;
    }
    return (void *)changed;
}
int main(void) {
    int at_main = errno;
    pthread_t t;
    void *changed;
    pthread_create(&t, 0, churn, 0);
    long here = (long)churn(0);
    pthread_join(t, &changed);
    printf("main %d ctor %d calls %ld\\n", at_main, errno_in_ctor, here + (long)changed);
    return 0;
}
"""


@pytest.mark.parametrize("options", [[], ["--aggregate"], ["--follow-fork"]])
def test_errno_is_the_programs_own(memtap, tmp_path, options):
    """The program sees errno as it would untraced: 0 at main() (the shim's
    start-up left EAGAIN there, from a read of its own pipe), unchanged by a
    successful allocation, in a dependency's constructor that starts the
    shim too, and on threads."""
    lib = compile_c(tmp_path, "liberrno", ERRNO_LIB, "-shared", "-fPIC")
    src = tmp_path / "errno_main.c"
    src.write_text(ERRNO_MAIN)
    exe = tmp_path / "errno_main"
    subprocess.run(["cc", "-O0", "-g", "-pthread", "-o", str(exe), str(src), str(lib),
                    "-Wl,-rpath,%s" % tmp_path], check=True, timeout=TIMEOUT)
    alone = subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT)
    assert alone.stdout == "main 0 ctor 0 calls 0\n", alone
    out = tmp_path / "c.bin"
    proc = native_run(memtap, tmp_path, out, exe, options=options)
    assert proc.stdout == alone.stdout


STACK_USE = """\
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#define SIZE (1 << 16)
static void *volatile kept;
static void calls(void) {
    kept = malloc(100); /* @kept */
    void *p = calloc(1, 200);
    p = realloc(p, 300);
    free(p);
}
static void *on_thread(void *arg) { (void)arg; calls(); return 0; }
static ucontext_t back, co;
/* How much of a stack filled with a pattern the calls wrote over. */
static size_t used(const unsigned char *s) {
    for (size_t i = 0; i < SIZE; i++)
        if (s[i] != 0xAB)
            return SIZE - i;
    return 0;
}
static size_t thread_use(void) {
    unsigned char *s = aligned_alloc(4096, SIZE);
    memset(s, 0xAB, SIZE);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstack(&at, s, SIZE);
    pthread_t t;
    pthread_create(&t, &at, on_thread, 0);
    pthread_join(t, 0);
    return used(s);
}
static size_t coroutine_use(void) {
    unsigned char *s = malloc(SIZE);
    memset(s, 0xAB, SIZE);
    getcontext(&co);
    co.uc_stack.ss_sp = s;
    co.uc_stack.ss_size = SIZE;
    co.uc_link = &back;
    makecontext(&co, calls, 0);
    swapcontext(&back, &co);
    return used(s);
}
int main(void) {
    calls();
    thread_use();
    coroutine_use();  /* the first of each learns the frames' layouts */
    printf("%zu %zu\\n", thread_use(), coroutine_use());
    return 0;
}
"""


def test_traced_calls_need_little_stack(memtap, tmp_path):
    """A traced call with its native stack needs under 1 KiB of the
    caller's stack more than untraced (3 KiB before: a 2 KiB buffer for
    libunwind sat in every walk's frame), also in a makecontext coroutine,
    whose stacks libunwind walked (6 KiB more) and the fast walk now ends
    where libunwind did, at the coroutine's first frame."""
    exe = compile_c(tmp_path, "stack_use", STACK_USE, "-pthread")
    alone = subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT,
                           check=True)
    cap = tmp_path / "c.bin"
    traced = native_run(memtap, tmp_path, cap, exe)
    (thread0, co0), (thread1, co1) = (map(int, p.stdout.split()) for p in (alone, traced))
    assert thread1 - thread0 < 1024 and co1 - co0 < 1024, (alone.stdout, traced.stdout)
    # the stacks of the kept blocks: main's, the two threads' and the two
    # coroutines', whose outermost frame is glibc's (makecontext's return)
    rows = subprocess.run([str(memtap), "export", "--leaks", "--format", "collapsed", str(cap)],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    leaf = "calls (%s:%d) " % (tmp_path / "stack_use.c", line_of(STACK_USE, "kept"))
    kept = [r.rsplit(" ", 1) for r in rows.splitlines() if leaf in r]
    outer = sorted((r[0].split(";")[0].split(" ")[0], r[0].count(";"), r[1]) for r in kept)
    assert len(outer) == 3 and [o for o in outer if o[0] in ("__clone3", "main")] == [
        ("__clone3", 3, "200"), ("main", 1, "100")], rows
    co = [r[0].split(";") for r in kept if r[1] == "200" and not r[0].startswith("__clone3")]
    assert len(co) == 1 and len(co[0]) == 2 and co[0][0].endswith(" (libc.so.6)"), rows
