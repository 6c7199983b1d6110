"""Golden captures: files written by a real `memtap run`, checked in, decoded
by every later memtap forever (style.md rule 7; docs/format.md).

tests/data/format-v1.bin            memtap run --python /usr/bin/python3
                                    tests/data/golden.py (Debian 3.11.2)
tests/data/format-v1-aggregate.bin  the same with --aggregate

Their numbers never change: a reader that reports anything else for them has
broken compatibility with format version 1 (or changed what a report
means, which then needs a reason in the commit). Never re-record these
files; a new format version gets new ones next to them.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MEMTAP, TIMEOUT, memtap_stats

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "format-v1.bin"
AGGREGATE = DATA / "format-v1-aggregate.bin"
SCRIPT = "/work/main/tests/data/golden.py"  # the path it was recorded from

COMMON = {
    "format_version": 1,
    "command": "/usr/bin/python3 tests/data/golden.py",
    "python_version": "3.11.2",
    "native": False,
    "complete": True,
    "exit": {"code": 0},
    "total_allocations": 1639,
    "total_frees": 1601,
    "total_allocated_bytes": 8700294,
    "peak_memory_bytes": 5504346,
    "end_memory_bytes": 3264561,
    "lost_events": 0,
    "allocators": {
        "malloc": {"count": 1339, "bytes": 2384040},
        "calloc": {"count": 100, "bytes": 459813},
        "realloc": {"count": 194, "bytes": 580793},
        "mmap": {"count": 6, "bytes": 5275648},
    },
}

EXPECTED = {
    GOLDEN: dict(COMMON, pid=4747, duration_ms=72, peak_rss_bytes=9646080,
                 threads=[{"id": 4747, "index": 1, "name": "python3"},
                          {"id": 4749, "index": 2, "name": "python3"}]),
    AGGREGATE: dict(COMMON, pid=4751, duration_ms=23, peak_rss_bytes=8822784,
                    threads=[{"id": 4751, "index": 1, "name": "python3"},
                             {"id": 4753, "index": 2, "name": "python3"}]),
}

# The lines of golden.py, as (function, line, bytes, count) in top_locations.
GOLDEN_LINES = [
    ("main", 22, 2097152, 1),   # @mremap: the mapping grown to 2 MiB
    ("main", 21, 1048576, 1),   # @mmap
    ("worker", 14, 300001, 1),  # @worker, in the second thread
    ("main", 20, 200001, 1),    # @leak
    ("main", 19, 100001, 1),    # @a
]

# Records per tag as `memtap parse` names them.
PARSE_COUNTS = {
    GOLDEN: {"HEADER": 1, "PROGRAM": 1, "THREAD": 2, "THREAD_SWITCH": 7, "CODE": 109,
             "PYNODE": 874, "ALLOC": 1444, "FREE": 1409, "REALLOC": 194, "MREMAP": 1,
             "MUNMAP": 3, "SAMPLE": 7, "END": 1, "TRAILER": 1},
    # and 368 GROUP and TOTALS records (parse does not name them yet)
    AGGREGATE: {"HEADER": 1, "PROGRAM": 1, "THREAD": 2, "CODE": 109, "PYNODE": 874,
                "SAMPLE": 2, "TRAILER": 1},
}
PARSE_TOTAL = {GOLDEN: 4053, AGGREGATE: 1357}
PARSE_HEADER = {
    GOLDEN: 'HEADER version=1 flags=0x0 pid=4747 start=2026-11-22T03:25:16Z '
            'command="/usr/bin/python3 tests/data/golden.py"',
    AGGREGATE: 'HEADER version=1 flags=0x2,aggregate pid=4751 start=2026-11-22T03:25:16Z '
               'command="/usr/bin/python3 tests/data/golden.py"',
}
PARSE_TRAILER = {
    GOLDEN: "TRAILER exit=0 duration_us=72714 events=3051 lost=0",
    AGGREGATE: "TRAILER exit=0 duration_us=23249 events=3051 lost=0",
}

CAPTURES = [pytest.param(GOLDEN, id="format-v1"),
            pytest.param(AGGREGATE, id="format-v1-aggregate")]


def has_command(name):
    out = subprocess.run([str(MEMTAP), "--help"], capture_output=True, text=True,
                         timeout=TIMEOUT).stdout
    return any(line.split()[:1] == [name] for line in out.splitlines())


@pytest.mark.parametrize("capture", CAPTURES)
def test_golden_stats(memtap, capture):
    stats = memtap_stats(capture)
    for key, want in EXPECTED[capture].items():
        assert stats.get(key) == want, "%s: %s is %r, want %r" % (
            capture.name, key, stats.get(key), want)
    rows = [(r["function"], r["line"], r["bytes"], r["count"])
            for r in stats["top_locations"] if r.get("file") == SCRIPT]
    assert rows == GOLDEN_LINES, rows


@pytest.mark.parametrize("capture", CAPTURES)
def test_golden_parse(memtap, capture):
    if not has_command("parse"):
        pytest.skip("memtap parse is not built")
    proc = subprocess.run([str(memtap), "parse", str(capture)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == PARSE_HEADER[capture]
    assert lines[-2] == PARSE_TRAILER[capture]
    assert lines[-1] == "# %d records, complete" % PARSE_TOTAL[capture]
    counts = {}
    for line in lines[:-1]:
        tag = line.split(" ", 1)[0]
        counts[tag] = counts.get(tag, 0) + 1
    for tag, want in PARSE_COUNTS[capture].items():
        assert counts.get(tag) == want, "%s: %d %s records, want %d" % (
            capture.name, counts.get(tag, 0), tag, want)
    assert sum(counts.values()) - 1 == PARSE_TOTAL[capture]  # the header is no record


def test_golden_truncated(memtap, tmp_path):
    """The golden capture cut inside its only block: nothing but the header."""
    cut = tmp_path / "cut.bin"
    cut.write_bytes(GOLDEN.read_bytes()[:8000])
    stats = memtap_stats(cut)
    assert stats["complete"] is False
    assert stats["truncated_at"] == 69  # the block starts after the 69-byte header
    assert stats["pid"] == 4747 and stats["total_allocations"] == 0


def test_golden_files_unchanged():
    """The golden files are never re-recorded (their sizes are part of the pin)."""
    assert GOLDEN.stat().st_size == 13057
    assert AGGREGATE.stat().st_size == 6928
