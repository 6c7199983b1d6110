"""Shared fixtures for memtap's integration tests.

These tests run the real `memtap` CLI on real programs and check the capture
through `memtap stats FILE --json`.  Test programs are written into tmp_path
by the tests (so file and line are known exactly) or live in tests/programs/.

A line a test needs to look up carries a marker comment: `# @name` in Python,
`/* @name */` in C; `line_of(text, "name")` finds it.

Environment:
  MEMTAP_BUILD   build directory holding `memtap` (default: <repo>/build)
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MEMTAP_BUILD") or REPO / "build")
MEMTAP = BUILD / "memtap"


def memtap_sanitized():
    """Whether MEMTAP is built with AddressSanitizer (make sanitize), which
    reserves terabytes of address space (no ulimit -v) and must come first
    in the library list (no LD_PRELOAD of the user's own)."""
    return b"__asan_init" in MEMTAP.read_bytes()
PROGRAMS = REPO / "tests" / "programs"

# Every interpreter the spec names; tests parametrized over these skip the
# ones that are not installed (and only those).
INTERPRETERS = [
    "/root/.pyenv/versions/3.9.18/bin/python3.9",
    "/root/.pyenv/versions/3.10.13/bin/python3.10",
    "/root/.pyenv/versions/3.11.7/bin/python3.11",
    "/root/.pyenv/versions/3.12.1/bin/python3.12",
    "/root/.pyenv/versions/3.13.0/bin/python3.13",
    "/usr/bin/python3",
]

# The interpreter used when a test does not care which one: the one running
# pytest (3.11), named explicitly with --python so results do not depend on
# what `python3` on PATH happens to be.
DEFAULT_PYTHON = sys.executable

ALLOCATORS = {
    "malloc", "calloc", "realloc", "reallocarray", "posix_memalign",
    "aligned_alloc", "memalign", "valloc", "pvalloc", "mmap", "mmap_file",
    "mmap_reserve",
}

STATS_KEYS = {
    "format_version", "pid", "command", "python_version", "native",
    "complete", "exit", "duration_ms", "total_allocations", "total_frees",
    "total_allocated_bytes", "peak_memory_bytes", "end_memory_bytes",
    "allocators", "threads", "top_locations",
}

TIMEOUT = 120  # seconds, per subprocess; each test is meant to take < ~10 s

_USE_DEFAULT = object()


def interpreter_params(min_version=None):
    """pytest.param per interpreter in INTERPRETERS, skipped when absent.

    min_version: (major, minor) tuple; older interpreters are left out
    entirely (they are not "skipped": the test does not apply to them).
    """
    params = []
    for path in INTERPRETERS:
        m = re.search(r"python(\d+)\.(\d+)$", path) or re.search(
            r"versions/(\d+)\.(\d+)", path)
        ident = path
        if m:
            ver = (int(m.group(1)), int(m.group(2)))
            if min_version and ver < min_version:
                continue
            ident = "py%d.%d" % ver
        if path == "/usr/bin/python3":
            ident = "debian-python3"
            if min_version and os.access(path, os.X_OK) and python_version_of(path)[:2] < min_version:
                continue
        marks = []
        if not os.access(path, os.X_OK):
            marks.append(pytest.mark.skip(reason="interpreter not installed: " + path))
        params.append(pytest.param(path, id=ident, marks=marks))
    return params


def python_version_of(python):
    """(major, minor, micro) of an interpreter."""
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:3])"],
        check=True, capture_output=True, text=True, timeout=TIMEOUT).stdout
    return tuple(int(x) for x in out.split())


def clean_env(extra=None):
    """Environment for traced and untraced runs alike.

    PYTHONMALLOC is removed (design.md §2: known-answer tests unset it, the
    debug allocator pads sizes); the hash seed is fixed so that interpreter
    start-up, and so pymalloc's arena use, is the same run to run.
    """
    env = dict(os.environ)
    for k in ("PYTHONMALLOC", "PYTHONDEVMODE", "PYTHONTRACEMALLOC",
              "PYTHONSTARTUP", "PYTHONWARNINGS", "PYTHONINSPECT"):
        env.pop(k, None)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def line_of(text, tag):
    """1-based line number of the unique line carrying the marker `@tag`."""
    pat = re.compile(r"(#|/\*)\s*@" + re.escape(tag) + r"\b")
    hits = [i for i, l in enumerate(text.splitlines(), 1) if pat.search(l)]
    assert len(hits) == 1, "marker @%s found %d times" % (tag, len(hits))
    return hits[0]


def find_locations(stats, file, line):
    """All top_locations rows whose file's basename is `file` and line is `line`."""
    return [row for row in stats["top_locations"]
            if os.path.basename(str(row.get("file"))) == file and row.get("line") == line]


def location_totals(stats, file, line):
    """(bytes, count) summed over the rows at file:line ((0, 0) if none)."""
    rows = find_locations(stats, file, line)
    return sum(r["bytes"] for r in rows), sum(r["count"] for r in rows)


def describe_locations(stats, limit=15):
    """The first rows of top_locations, for assertion messages."""
    return "\n".join(
        "  %s:%s %s bytes=%s count=%s" % (r.get("file"), r.get("line"), r.get("function"),
                                          r.get("bytes"), r.get("count"))
        for r in stats.get("top_locations", [])[:limit])


def assert_location(stats, file, line, nbytes, count=1, function=None):
    """Exactly `nbytes` bytes in `count` allocations attributed to file:line."""
    rows = find_locations(stats, file, line)
    got = (sum(r["bytes"] for r in rows), sum(r["count"] for r in rows))
    assert got == (nbytes, count), (
        "expected %d bytes in %d allocation(s) at %s:%d, got %r; top_locations:\n%s"
        % (nbytes, count, file, line, got, describe_locations(stats)))
    if function is not None:
        assert {r["function"] for r in rows} == {function}, rows
    return rows


def memtap_stats(capture):
    """Parsed `memtap stats CAPTURE --json`."""
    proc = subprocess.run([str(MEMTAP), "stats", str(capture), "--json"],
                          capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, "memtap stats failed (%d): %s" % (
        proc.returncode, proc.stderr.decode(errors="replace"))
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError("memtap stats --json printed no JSON object (%s): %r"
                             % (e, proc.stdout[:2000]))


def memtap_run(args, cwd, env=None, stdin_data=None, timeout=TIMEOUT):
    """Run `memtap run ARGS...` (args after "run"); return the CompletedProcess (bytes)."""
    return subprocess.run([str(MEMTAP), "run", *map(str, args)], cwd=str(cwd),
                          env=env if env is not None else clean_env(),
                          input=stdin_data if stdin_data is not None else b"",
                          capture_output=True, timeout=timeout)


def untracked_run(python, args, cwd, env=None, stdin_data=None):
    """The same program without memtap: `PYTHON ARGS...`."""
    return subprocess.run([python, *map(str, args)], cwd=str(cwd),
                          env=env if env is not None else clean_env(),
                          input=stdin_data if stdin_data is not None else b"",
                          capture_output=True, timeout=TIMEOUT)


def strip_memtap_lines(stderr):
    """stderr without the lines memtap itself may add (they start with `memtap:`)."""
    return b"".join(l for l in stderr.splitlines(keepends=True)
                    if not l.startswith(b"memtap:"))


def write_script(tmp_path, text, name="prog.py"):
    path = Path(tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def memtap():
    """Path to the memtap binary under test (fails, not skips, when it is not built)."""
    if not os.access(MEMTAP, os.X_OK):
        pytest.fail("memtap is not built: %s missing (run make, or set MEMTAP_BUILD)" % MEMTAP)
    return MEMTAP


@pytest.fixture
def run_memtap(memtap):
    """run_memtap(tmp_path, script_text_or_args, python=..., extra=[...], ...) -> (proc, stats)

    script_text_or_args:
      str   a Python program, written to tmp_path/<name> and run as a script
            (absolute path); `args` are its arguments
      list  the target, passed as is after the options: ["-m", "pkg.mod", ...],
            ["-c", code, ...], ["./prog", ...]
    python:  interpreter for --python (default: the one running pytest);
             None passes no --python
    extra:   further `memtap run` options, before the target
    out:     capture path (default tmp_path/capture.bin); "" passes no -o
    check:   assert the run ended with exit code `expect_rc` (default 0)
    stats:   False to skip `memtap stats` (returns (proc, None))
    The capture path is proc.capture, the script path proc.script.
    """
    def run(tmp_path, script_text_or_args, python=_USE_DEFAULT, extra=(), args=(),
            out=None, name="prog.py", cwd=None, env=None, stdin_data=None,
            check=True, expect_rc=0, stats=True, timeout=TIMEOUT):
        tmp_path = Path(tmp_path)
        if isinstance(script_text_or_args, str):
            script = write_script(tmp_path, script_text_or_args, name)
            target = [str(script), *args]
        else:
            script = None
            target = [*script_text_or_args, *args]
        if python is _USE_DEFAULT:
            python = DEFAULT_PYTHON
        if out is None:
            out = tmp_path / "capture.bin"
        cmd = []
        if out != "":
            cmd += ["-o", str(out)]
        cmd += list(extra)
        if python is not None:
            cmd += ["--python", python]
        cmd += target
        proc = memtap_run(cmd, cwd=cwd or tmp_path, env=env, stdin_data=stdin_data,
                          timeout=timeout)
        proc.capture = Path(out) if out != "" else None
        proc.script = script
        if check:
            assert proc.returncode == expect_rc, (
                "memtap run %r ended with %d, expected %d\nstdout: %s\nstderr: %s"
                % (cmd, proc.returncode, expect_rc, proc.stdout[-2000:].decode(errors="replace"),
                   proc.stderr[-4000:].decode(errors="replace")))
        result = None
        if stats:
            assert proc.capture is not None and proc.capture.exists(), (
                "no capture written at %s; stderr: %s"
                % (proc.capture, proc.stderr[-4000:].decode(errors="replace")))
            result = memtap_stats(proc.capture)
        return proc, result

    return run
