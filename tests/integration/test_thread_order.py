"""Blocks passed between threads: the capture's one order of events keeps
every free after the allocation it ends and before the next allocation at
that address, whichever threads made them (design.md §2).

tests/programs/handoff.c: 4 workers share a queue; each makes 100,000 blocks
(malloc, realloc(NULL, n), every 64th an anonymous page; every 16th grown by
realloc), and frees or unmaps the oldest block of the queue, mostly one another
thread made, whose address glibc then hands out again at once.  A merge that
put one thread's free after another thread's reuse of the address (or an
allocation after the free of its block) shows as an allocation at a live
address, or the end of a block that is not alive, in `memtap parse`, and as
wrong live blocks at the end.  Each worker keeps one last block of 1000 + its
index bytes: with the C library's own (pthread_create's DTV callocs), those are
all that is left.
"""

import json
import re
import shutil
import subprocess

import pytest

from conftest import PROGRAMS, TIMEOUT, clean_env, memtap_stats

SOURCE = PROGRAMS / "handoff.c"
THREADS = 4
ITERATIONS = 100000


def expected_counts():
    """Per allocator, what the workers ask for (handoff.c's loop, built -O0)."""
    mmap = sum(1 for i in range(ITERATIONS) if i % 64 == 0)
    heap = [i for i in range(ITERATIONS) if i % 64 != 0]
    realloc_null = sum(1 for i in heap if i % 8 == 1)
    grown = sum(1 for i in heap if i % 16 == 3)
    return {
        "malloc": THREADS * (len(heap) - realloc_null + 1),  # + the kept block
        "realloc": THREADS * (realloc_null + grown),
        "mmap": THREADS * mmap,
    }


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH"
    exe = tmp_path_factory.mktemp("handoff") / "handoff"
    subprocess.run([cc, "-O0", "-g", "-pthread", "-o", str(exe), str(SOURCE)],
                   check=True, timeout=TIMEOUT)
    return exe


# No per-thread cache and one arena: a freed block goes back where every
# thread takes blocks from, so the next thread to allocate gets its address.
ONE_HEAP = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1"}


def record(memtap, prog, out, *options):
    proc = subprocess.run([str(memtap), "run", "-q", "-o", str(out), *options, str(prog),
                           str(THREADS), str(ITERATIONS)],
                          env=clean_env(ONE_HEAP), capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b""


def replay_by_address(memtap, capture):
    """Walks `memtap parse` of an --addresses capture, keeping live blocks by
    address. @return (events out of order, live blocks: [(allocator, size)])."""
    text = subprocess.run([str(memtap), "parse", str(capture)], check=True,
                          capture_output=True, timeout=TIMEOUT).stdout.decode()
    live, wrong = {}, []
    for line in text.splitlines():
        kind = line.split(" ", 1)[0]
        if kind not in ("ALLOC", "FREE", "MUNMAP"):
            continue
        addr = re.search(r" addr=(0x[0-9a-f]+)", line).group(1)
        if kind == "ALLOC":
            allocator = line.split()[2]
            key = ("mapping" if allocator.startswith("mmap") else "heap", addr)
            if key in live:
                wrong.append(line)
            live[key] = (allocator, int(re.search(r" size=(\d+)", line).group(1)))
        elif live.pop(("mapping" if kind == "MUNMAP" else "heap", addr), None) is None:
            wrong.append(line)
    return wrong, sorted(live.values())


@pytest.mark.parametrize("attempt", range(3))
def test_blocks_passed_between_threads_stay_in_order(memtap, prog, tmp_path, attempt):
    capture = tmp_path / "handoff.bin"
    record(memtap, prog, capture, "--addresses")
    wrong, live = replay_by_address(memtap, capture)
    assert wrong == [], "%d events out of order, first: %s" % (len(wrong), wrong[:3])
    kept = [size for allocator, size in live if allocator == "malloc"]
    assert kept == [1000 + k for k in range(THREADS)], live
    assert [a for a, _ in live if a not in ("malloc", "calloc")] == [], live
    stats = memtap_stats(capture)
    for allocator, count in expected_counts().items():
        assert stats["allocators"][allocator]["count"] == count, (allocator, stats["allocators"])
    assert stats["total_allocations"] - stats["total_frees"] == len(live)
    assert stats["end_memory_bytes"] == sum(size for _, size in live)


def test_aggregate_ends_with_the_same_blocks(memtap, prog, tmp_path):
    """--aggregate replays the merged order in the collector: the same blocks
    must be alive at the end as in a capture of every event."""
    full, agg = tmp_path / "full.bin", tmp_path / "agg.bin"
    record(memtap, prog, full, "--addresses")
    record(memtap, prog, agg, "--aggregate")
    _, live = replay_by_address(memtap, full)
    stats = memtap_stats(agg)
    assert stats["end_memory_bytes"] == sum(size for _, size in live)
    for allocator, count in expected_counts().items():
        assert stats["allocators"][allocator]["count"] == count, (allocator, stats["allocators"])
