"""Golden captures: files written by a real `memtap run`, checked in, decoded
by every later memtap forever (style.md rule 7; docs/format.md).

tests/data/format-v1.bin            memtap run --python /usr/bin/python3
                                    tests/data/golden.py (Debian 3.11.2)
tests/data/format-v1-aggregate.bin  the same with --aggregate
tests/data/format-v2.bin            the same program, format version 2
tests/data/format-v2-aggregate.bin  ... with --aggregate
tests/data/format-v2-native.bin     ... with --native
tests/data/format-v3.bin            the same program, format version 3 (no heap addresses)
tests/data/format-v3-addresses.bin  ... with --addresses
tests/data/format-v4.bin            the same program, format version 4 (its block
                                    compressed against dictionary 3, CPython 3.11's)
tests/data/format-v5.bin            the same program, format version 5 (dictionary 8)

Their numbers never change: a reader that reports anything else for them has
broken compatibility with that format version (or changed what a report
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
GOLDEN2 = DATA / "format-v2.bin"
AGGREGATE2 = DATA / "format-v2-aggregate.bin"
NATIVE2 = DATA / "format-v2-native.bin"
GOLDEN3 = DATA / "format-v3.bin"
ADDRESSES3 = DATA / "format-v3-addresses.bin"
GOLDEN4 = DATA / "format-v4.bin"
GOLDEN5 = DATA / "format-v5.bin"
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

# Version 2 was recorded later, from a collector that names Python threads
# and writes realloc as ALLOC of allocator realloc plus its FREE.
COMMON2 = dict(
    COMMON, format_version=2, total_allocations=1642, total_frees=1604,
    total_allocated_bytes=8709971, peak_memory_bytes=5510490,
    allocators={
        "malloc": {"count": 1340, "bytes": 2392236},
        "calloc": {"count": 100, "bytes": 459813},
        "realloc": {"count": 196, "bytes": 582274},
        "mmap": {"count": 6, "bytes": 5275648},
    })


def threads2(pid):
    return [{"id": pid, "index": 1, "name": "python3"},
            {"id": pid + 1, "index": 2, "name": "worker"}]


EXPECTED = {
    GOLDEN: dict(COMMON, pid=4747, duration_ms=72, peak_rss_bytes=9646080,
                 threads=[{"id": 4747, "index": 1, "name": "python3"},
                          {"id": 4749, "index": 2, "name": "python3"}]),
    AGGREGATE: dict(COMMON, pid=4751, duration_ms=23, peak_rss_bytes=8822784,
                    threads=[{"id": 4751, "index": 1, "name": "python3"},
                             {"id": 4753, "index": 2, "name": "python3"}]),
    GOLDEN2: dict(COMMON2, pid=8402, duration_ms=23, peak_rss_bytes=10145792,
                  end_memory_bytes=3270345, threads=threads2(8402)),
    AGGREGATE2: dict(COMMON2, pid=8405, duration_ms=18, peak_rss_bytes=8798208,
                     end_memory_bytes=3270705, threads=threads2(8405)),
    NATIVE2: dict(COMMON2, pid=8408, duration_ms=29, peak_rss_bytes=10592256, native=True,
                  end_memory_bytes=3270345, threads=threads2(8408)),
    GOLDEN3: dict(COMMON2, format_version=3, pid=30317, duration_ms=24,
                  peak_rss_bytes=10248192, end_memory_bytes=3270345,
                  threads=threads2(30317)),
    ADDRESSES3: dict(COMMON2, format_version=3, pid=30320, duration_ms=30,
                     peak_rss_bytes=10104832, end_memory_bytes=3270345,
                     threads=threads2(30320)),
    GOLDEN4: dict(COMMON2, format_version=4, pid=11276, duration_ms=55,
                  peak_rss_bytes=10534912, end_memory_bytes=3270345,
                  threads=threads2(11276)),
    GOLDEN5: dict(COMMON2, format_version=5, pid=22744, duration_ms=26,
                  peak_rss_bytes=9723904, end_memory_bytes=3270705,
                  threads=threads2(22744)),
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
    GOLDEN2: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 3, "CODE": 108,
              "PYNODE": 874, "ALLOC": 1642, "FREE": 1600, "MUNMAP": 4, "SAMPLE": 3,
              "END": 1, "TRAILER": 1},
    AGGREGATE2: {"HEADER": 1, "PROGRAM": 1, "THREAD": 2, "CODE": 109, "PYNODE": 874,
                 "GROUP": 367, "TOTALS": 1, "SAMPLE": 2, "TRAILER": 1},
    NATIVE2: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 5, "CODE": 109,
              "PYNODE": 874, "NATIVENODE": 3713, "OBJECT": 11, "ALLOC": 1642, "FREE": 1600,
              "MUNMAP": 4, "SAMPLE": 3, "END": 1, "TRAILER": 1},
    GOLDEN3: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 3, "CODE": 108,
              "PYNODE": 873, "ALLOC": 1642, "FREE": 1600, "MUNMAP": 4, "SAMPLE": 3,
              "END": 1, "TRAILER": 1},
    ADDRESSES3: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 3, "CODE": 108,
                 "PYNODE": 874, "ALLOC": 1642, "FREE": 1600, "MUNMAP": 4, "SAMPLE": 3,
                 "END": 1, "TRAILER": 1},
    GOLDEN4: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 3, "CODE": 108,
              "PYNODE": 874, "ALLOC": 1642, "FREE": 1600, "MUNMAP": 4, "SAMPLE": 6,
              "END": 1, "TRAILER": 1},
    GOLDEN5: {"HEADER": 1, "PROGRAM": 1, "THREAD": 3, "THREAD_SWITCH": 5, "CODE": 109,
              "PYNODE": 874, "ALLOC": 1642, "FREE": 1600, "MUNMAP": 4, "SAMPLE": 3,
              "END": 1, "TRAILER": 1},
}
PARSE_TOTAL = {GOLDEN: 4053, AGGREGATE: 1357, GOLDEN2: 4240, AGGREGATE2: 1357,
               NATIVE2: 7967, GOLDEN3: 4239, ADDRESSES3: 4240, GOLDEN4: 4243,
               GOLDEN5: 4243}
# Version 2 stores a sample's time as the change of its step from the last.
PARSE_SAMPLES = {
    GOLDEN2: ["SAMPLE time_us=528 rss=1576960", "SAMPLE time_us=10834 rss=8228864",
              "SAMPLE time_us=21093 rss=10145792"],
    AGGREGATE2: ["SAMPLE time_us=620 rss=1732608 heap=0",
                 "SAMPLE time_us=10856 rss=8798208 heap=2934410"],
    NATIVE2: ["SAMPLE time_us=461 rss=1695744", "SAMPLE time_us=10467 rss=8331264",
              "SAMPLE time_us=20641 rss=10592256"],
    GOLDEN3: ["SAMPLE time_us=90 rss=237568", "SAMPLE time_us=10211 rss=7909376",
              "SAMPLE time_us=20216 rss=10248192"],
    ADDRESSES3: ["SAMPLE time_us=115 rss=237568", "SAMPLE time_us=13975 rss=8568832",
                 "SAMPLE time_us=24518 rss=10104832"],
    GOLDEN4: ["SAMPLE time_us=634 rss=1589248", "SAMPLE time_us=10851 rss=8015872",
              "SAMPLE time_us=21414 rss=9203712", "SAMPLE time_us=31670 rss=9650176",
              "SAMPLE time_us=41878 rss=9650176", "SAMPLE time_us=52461 rss=10534912"],
    GOLDEN5: ["SAMPLE time_us=584 rss=184320", "SAMPLE time_us=10713 rss=8056832",
              "SAMPLE time_us=20961 rss=9723904"],
}
PARSE_HEADER = {
    GOLDEN: 'HEADER version=1 flags=0x0 pid=4747 start=2026-11-22T03:25:16Z '
            'command="/usr/bin/python3 tests/data/golden.py"',
    AGGREGATE: 'HEADER version=1 flags=0x2,aggregate pid=4751 start=2026-11-22T03:25:16Z '
               'command="/usr/bin/python3 tests/data/golden.py"',
    GOLDEN2: 'HEADER version=2 flags=0x0 pid=8402 start=2026-12-01T12:55:52Z '
             'command="/usr/bin/python3 tests/data/golden.py"',
    AGGREGATE2: 'HEADER version=2 flags=0x2,aggregate pid=8405 start=2026-12-01T12:55:52Z '
                'command="/usr/bin/python3 tests/data/golden.py"',
    NATIVE2: 'HEADER version=2 flags=0x1,native pid=8408 start=2026-12-01T12:55:52Z '
             'command="/usr/bin/python3 tests/data/golden.py"',
    GOLDEN3: 'HEADER version=3 flags=0x0 pid=30317 start=2026-12-01T14:11:28Z '
             'command="/usr/bin/python3 tests/data/golden.py"',
    ADDRESSES3: 'HEADER version=3 flags=0x10,addresses pid=30320 start=2026-12-01T14:11:28Z '
                'command="/usr/bin/python3 tests/data/golden.py"',
    GOLDEN4: 'HEADER version=4 flags=0x0 pid=11276 start=2026-12-01T20:36:01Z '
             'command="/usr/bin/python3 tests/data/golden.py"',
    GOLDEN5: 'HEADER version=5 flags=0x0 pid=22744 start=2026-12-02T06:06:43Z '
             'command="/usr/bin/python3 tests/data/golden.py"',
}
PARSE_TRAILER = {
    GOLDEN: "TRAILER exit=0 duration_us=72714 events=3051 lost=0",
    AGGREGATE: "TRAILER exit=0 duration_us=23249 events=3051 lost=0",
    GOLDEN2: "TRAILER exit=0 duration_us=23440 events=3246 lost=0",
    AGGREGATE2: "TRAILER exit=0 duration_us=18799 events=3246 lost=0",
    NATIVE2: "TRAILER exit=0 duration_us=29793 events=3246 lost=0",
    GOLDEN3: "TRAILER exit=0 duration_us=24954 events=3246 lost=0",
    ADDRESSES3: "TRAILER exit=0 duration_us=30890 events=3246 lost=0",
    GOLDEN4: "TRAILER exit=0 duration_us=55305 events=3246 lost=0",
    GOLDEN5: "TRAILER exit=0 duration_us=26325 events=3246 lost=0",
}

CAPTURES = [pytest.param(GOLDEN, id="format-v1"),
            pytest.param(AGGREGATE, id="format-v1-aggregate"),
            pytest.param(GOLDEN2, id="format-v2"),
            pytest.param(AGGREGATE2, id="format-v2-aggregate"),
            pytest.param(NATIVE2, id="format-v2-native"),
            pytest.param(GOLDEN3, id="format-v3"),
            pytest.param(ADDRESSES3, id="format-v3-addresses"),
            pytest.param(GOLDEN4, id="format-v4"),
            pytest.param(GOLDEN5, id="format-v5")]


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
    if capture == NATIVE2:
        return  # its locations are native frames: this machine's symbols, not the format's
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
    if capture in PARSE_SAMPLES:
        assert [line for line in lines if line.startswith("SAMPLE ")] == PARSE_SAMPLES[capture]
    check_blocks(capture, lines)


def check_blocks(capture, lines):
    """Heap blocks go by address in captures that store addresses, else by
    allocation number: numbered 1, 2, 3... in order (mappings count too),
    each freed at most once, and only after it was made."""
    addresses = capture not in (GOLDEN3, GOLDEN4, GOLDEN5)
    number, live = 0, set()
    for line in lines:
        tag, fields = line.split(" ", 1)[0], dict(
            f.split("=", 1) for f in line.split(" ")[1:] if "=" in f)
        mapping = tag == "ALLOC" and line.split(" ")[2].startswith("mmap")
        if tag == "ALLOC":
            number += 1
            if addresses or mapping:
                assert fields["addr"].startswith("0x") and "block" not in fields, line
            else:
                assert fields["block"] == str(number) and "addr" not in fields, line
                live.add(number)
        elif tag == "FREE":
            if addresses:
                assert fields["addr"].startswith("0x") and "block" not in fields, line
            else:
                assert int(fields["block"]) in live, line
                live.remove(int(fields["block"]))


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
    assert GOLDEN2.stat().st_size == 12507
    assert AGGREGATE2.stat().st_size == 5367
    assert NATIVE2.stat().st_size == 23414
    assert GOLDEN3.stat().st_size == 8410
    assert ADDRESSES3.stat().st_size == 11825
    assert GOLDEN4.stat().st_size == 3547
    assert GOLDEN5.stat().st_size == 3563
