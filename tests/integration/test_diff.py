"""memtap diff (issue 7): two captures of the same program, the second with
one extra 10 MiB allocation at a known line; the diff shows exactly that
growth there, nothing else of the program's own lines changes, and
--fail-over turns the growth into an exit status.

bytearray(n) mallocs n + 1 bytes.
"""

import json
import os
import subprocess

import pytest

from conftest import DEFAULT_PYTHON, MEMTAP, TIMEOUT, clean_env, line_of, memtap_run

MiB = 2 ** 20

PROG = """\
import sys
KEEP = []
KEEP.append(bytearray(3 * 2**20))  # @base
if len(sys.argv) > 1:
    KEEP.append(bytearray(10 * 2**20))  # @extra
"""


@pytest.fixture(scope="module")
def captures(tmp_path_factory, memtap):
    d = tmp_path_factory.mktemp("diff")
    script = d / "prog.py"
    script.write_text(PROG)
    out = []
    for name, args in (("before.bin", []), ("after.bin", ["x"])):
        proc = memtap_run(["-q", "-o", d / name, DEFAULT_PYTHON, script, *args], cwd=d)
        assert proc.returncode == 0, proc.stderr
        out.append(d / name)
    return script, out[0], out[1]


def diff(*args):
    return subprocess.run([str(MEMTAP), "diff", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=clean_env())


def rows_of(script, doc):
    return {r["line"]: r for r in doc["rows"] if r["file"] == str(script)}


@pytest.mark.parametrize("metric", [[], ["--leaks"]], ids=["peak", "leaks"])
def test_diff_json_known_answer(captures, metric):
    script, before, after = captures
    proc = diff(before, after, "--json", *metric)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == ("leaks" if metric else "peak")
    rows = rows_of(script, doc)
    extra = rows[line_of(PROG, "extra")]
    assert (extra["before_bytes"], extra["after_bytes"], extra["change_bytes"]) == \
        (0, 10 * MiB + 1, 10 * MiB + 1)
    assert (extra["before_count"], extra["after_count"], extra["change_count"]) == (0, 1, 1)
    base = rows[line_of(PROG, "base")]
    assert base["before_bytes"] == base["after_bytes"] == 3 * MiB + 1
    assert base["change_bytes"] == 0
    # sorted by growth: the extra allocation comes first
    assert doc["rows"][0]["line"] == extra["line"] and doc["rows"][0]["file"] == str(script)
    # the totals: the growth is the extra block, give or take interpreter noise
    assert abs(doc["total_change_bytes"] - (10 * MiB + 1)) < 2 * MiB
    assert doc["after"]["total_bytes"] - doc["before"]["total_bytes"] == doc["total_change_bytes"]


def test_diff_text(captures):
    script, before, after = captures
    proc = diff(before, after, "-n", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Peak memory:")
    first = [l for l in lines if "%s:%d" % (script, line_of(PROG, "extra")) in l]
    assert first and "+10.0 MiB" in first[0], proc.stdout
    assert "more location" in proc.stdout


def test_diff_fail_over(captures):
    _, before, after = captures
    proc = diff(before, after, "--fail-over", "12MiB")
    assert proc.returncode == 0, proc.stderr
    proc = diff(before, after, "--leaks", "--fail-over", "5 MB")
    assert proc.returncode == 3
    assert "memtap: leaks grew by" in proc.stderr and "more than --fail-over" in proc.stderr
    # the message gives the bytes exactly, not only rounded
    growth = json.loads(diff(before, after, "--leaks", "--json").stdout)["total_change_bytes"]
    assert ("(%d bytes), more than --fail-over 4.77 MiB (5000000 bytes)" % growth) in \
        proc.stderr, proc.stderr
    # the other way round it shrank: never over the limit
    proc = diff(after, before, "--fail-over", "0")
    assert proc.returncode == 0, proc.stderr


def test_diff_shrinking_comes_before_unchanged(captures):
    """What shrank comes right after what grew, biggest first, not behind
    every location that did not change."""
    script, before, after = captures
    doc = json.loads(diff(after, before, "--json").stdout)
    changes = [r["change_bytes"] for r in doc["rows"]]
    grew = [c for c in changes if c > 0]
    shrank = [c for c in changes if c < 0]
    assert changes == grew + shrank + [0] * changes.count(0), changes[:10]
    assert grew == sorted(grew, reverse=True) and shrank == sorted(shrank), changes[:10]
    # and what did not change, biggest first: the 3 MiB base before any start-up crumb
    same = [r["after_bytes"] for r in doc["rows"] if r["change_bytes"] == 0]
    assert same == sorted(same, reverse=True), same[:10]
    assert rows_of(script, doc)[line_of(PROG, "base")] == doc["rows"][len(grew) + len(shrank)]
    first_shrink = doc["rows"][len(grew)]
    assert (first_shrink["file"], first_shrink["line"]) == (str(script), line_of(PROG, "extra"))


def test_diff_usage(captures, tmp_path):
    _, before, _ = captures
    assert diff(before).returncode == 2
    assert diff(before, before, "--fail-over", "lots").returncode == 2
    # what strtod would take but is no size: nan would never fail the gate
    for bad in ("nan", "inf", "1e3", "0x10", ".", "1.2.3", "-1"):
        assert diff(before, before, "--fail-over", bad).returncode == 2, bad
    assert diff(before, before, "-n", "0").returncode == 2
    assert diff(before, before, "--bogus").returncode == 2
    proc = diff(before, tmp_path / "missing.bin")
    assert proc.returncode == 1 and "missing.bin" in proc.stderr
    for opt in ("--fail-over", "-n"):
        proc = diff(before, before, opt)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[0] == "memtap: option '%s' needs a value" % opt


def test_diff_takes_files_after_a_double_dash(captures, tmp_path):
    script, before, after = captures
    dashed = tmp_path / "-after.bin"
    dashed.write_bytes(after.read_bytes())
    os.chdir(tmp_path)
    try:
        proc = diff("--json", "--", before, "-after.bin")
    finally:
        os.chdir("/")
    assert proc.returncode == 0, proc.stderr
    extra = rows_of(script, json.loads(proc.stdout))[line_of(PROG, "extra")]
    assert extra["change_bytes"] == 10 * 2**20 + 1, extra


def test_one_location_in_two_libraries(tmp_path):
    """An inline function of one header, compiled into two libraries, is one
    location (function, file, line) to diff: its rows are summed on each
    side, not paired across the libraries in whatever order they came."""
    (tmp_path / "hdr.h").write_text(
        "#include <stdlib.h>\nstatic inline void *grab(size_t n) { return malloc(n); }\n")
    for lib in "ab":
        (tmp_path / ("%s.c" % lib)).write_text(
            '#include "hdr.h"\nvoid *volatile s%s;\n'
            "void %s_f(size_t n) { s%s = grab(n); }\n" % (lib, lib, lib))
        subprocess.run(["cc", "-g", "-O0", "-shared", "-fPIC", "-o",
                        str(tmp_path / ("lib%s.so" % lib)), str(tmp_path / ("%s.c" % lib))],
                       check=True)
    (tmp_path / "m.c").write_text(
        "#include <stdlib.h>\nvoid a_f(size_t); void b_f(size_t);\n"
        "int main(int c, char **v) { a_f(atoi(v[1])); b_f(atoi(v[2])); return 0; }\n")
    subprocess.run(["cc", "-g", "-O0", "-o", str(tmp_path / "m"), str(tmp_path / "m.c"),
                    "-L" + str(tmp_path), "-la", "-lb", "-Wl,-rpath," + str(tmp_path)],
                   check=True)
    caps = []
    for name, args in (("before.bin", ["100", "50"]), ("after.bin", ["10", "160"])):
        proc = memtap_run(["-q", "-o", tmp_path / name, "./m", *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        caps.append(tmp_path / name)
    doc = json.loads(diff(*caps, "--leaks", "--json").stdout)
    rows = [r for r in doc["rows"] if r["file"] == str(tmp_path / "hdr.h")]
    assert [(r["line"], r["before_bytes"], r["after_bytes"], r["change_bytes"])
            for r in rows] == [(2, 150, 170, 20)], rows


@pytest.fixture(scope="module")
def native_captures(tmp_path_factory, captures):
    script = captures[0]
    d = tmp_path_factory.mktemp("diff-native")
    out = []
    for name, args in (("before.bin", []), ("after.bin", ["x"])):
        proc = memtap_run(["-q", "--native", "-o", d / name, DEFAULT_PYTHON, script, *args],
                          cwd=d)
        assert proc.returncode == 0, proc.stderr
        out.append(d / name)
    return out


@pytest.mark.parametrize("pair", ["native", "mixed"])
def test_diff_of_native_captures_is_by_python_line(captures, native_captures, pair):
    """With native stacks, an allocation's innermost frame is the
    interpreter's (PyByteArray_Resize): diff counts it at the Python line
    that asked, as without them, so that the growth shows at its line, and
    a capture with native stacks pairs with one without."""
    script = captures[0]
    before = native_captures[0] if pair == "native" else captures[1]
    doc = json.loads(diff(before, native_captures[1], "--json").stdout)
    rows = rows_of(script, doc)
    extra, base = rows[line_of(PROG, "extra")], rows[line_of(PROG, "base")]
    assert (extra["before_bytes"], extra["after_bytes"], extra["change_count"]) == \
        (0, 10 * MiB + 1, 1)
    assert (base["before_bytes"], base["after_bytes"], base["change_count"]) == \
        (3 * MiB + 1, 3 * MiB + 1, 0)
    assert doc["rows"][0]["line"] == extra["line"] and doc["rows"][0]["file"] == str(script)


def test_diff_show_internals_counts_at_the_innermost_frame(captures, native_captures):
    """--show-internals keeps the interpreter's frames: the growth is then
    at its C function, not at the Python line."""
    script = captures[0]
    doc = json.loads(diff(*native_captures, "--show-internals", "--json").stdout)
    assert line_of(PROG, "extra") not in rows_of(script, doc)
    top = doc["rows"][0]
    assert top["file"] != str(script) and top["change_bytes"] == 10 * MiB + 1, top
