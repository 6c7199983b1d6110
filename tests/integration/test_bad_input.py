"""The reader against bad input (issue 6, "Reader against bad input").

Every report command is given files that are not captures, or captures that
are damaged, and must answer with either

  * a result (exit 0) -- for a capture cut short: what it holds, with a
    warning on stderr that it is incomplete, or
  * exactly one line on stderr, `memtap: ...`, naming the file, and exit 1,

and never crash (a signal), hang (timeout), print a traceback, or use
unbounded memory (the commands run under an address-space limit, except in
sanitizer builds, whose shadow memory needs a huge reservation).

Captures are also crafted here from raw records (helpers `capture()`,
`block()`: LZ4 blocks made of literals only, which any LZ4 decoder reads),
to reach the decoder and the analysis past the CRCs.
"""

import os
import re
import random
import resource
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import DEFAULT_PYTHON, MEMTAP, clean_env, memtap_run

TIMEOUT = 30           # seconds per command: anything slower is a hang
MEMORY_LIMIT = 1 << 30  # bytes of address space per command

# (id, argv after `memtap`, with FILE and OUT placeholders)
COMMANDS = [
    ("stats", ["stats", "FILE"]),
    ("stats-json", ["stats", "--json", "FILE"]),
    ("summary", ["summary", "FILE"]),
    ("tree", ["tree", "FILE"]),
    ("table", ["table", "FILE", "-o", "OUT"]),
    ("flamegraph", ["flamegraph", "FILE", "-o", "OUT"]),
    ("export-collapsed", ["export", "--format", "collapsed", "FILE", "-o", "OUT"]),
    ("parse", ["parse", "FILE"]),
]
COMMAND_IDS = [c[0] for c in COMMANDS]
QUICK = ["stats", "parse", "flamegraph"]   # for the many-variant sweeps


def _sanitized():
    try:
        return b"__asan_init" in MEMTAP.read_bytes()
    except OSError:
        return False


SANITIZED = _sanitized()


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def report(cmd_id, file, tmp_path, timeout=TIMEOUT):
    """Runs one report command on `file`; returns the CompletedProcess."""
    argv = dict(COMMANDS)[cmd_id]
    out = Path(tmp_path) / ("out-" + cmd_id)
    args = [str(file) if a == "FILE" else str(out) if a == "OUT" else a for a in argv]
    try:
        return subprocess.run([str(MEMTAP), *args], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout,
                              env=clean_env(),
                              preexec_fn=None if SANITIZED else _limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail("memtap %s %s hung (no answer in %d s)" % (cmd_id, file, timeout))


def describe(proc):
    return "exit %d\nstderr: %s\nstdout: %s" % (
        proc.returncode, proc.stderr[-3000:].decode(errors="replace"),
        proc.stdout[:1000].decode(errors="replace"))


def check_sane(proc, file):
    """Never a crash, a traceback or a sanitizer report."""
    assert proc.returncode >= 0, "killed by signal %d\n%s" % (-proc.returncode, describe(proc))
    assert proc.returncode in (0, 1), describe(proc)
    for marker in (b"Traceback (most recent call last)", b"AddressSanitizer",
                   b"runtime error:", b"LeakSanitizer", b"Segmentation fault"):
        assert marker not in proc.stderr, describe(proc)


def assert_error(proc, file, problem=None):
    """Exit 1 and exactly one line on stderr: `memtap: ...` naming the file."""
    check_sane(proc, file)
    assert proc.returncode == 1, describe(proc)
    lines = proc.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1, "expected one line on stderr\n" + describe(proc)
    assert lines[0].startswith("memtap: "), describe(proc)
    assert str(file) in lines[0], "the message does not name %s\n%s" % (file, describe(proc))
    if problem:
        assert problem in lines[0].lower(), describe(proc)


def assert_result_or_error(proc, file):
    """Either a result or the one-line error."""
    check_sane(proc, file)
    if proc.returncode != 0:
        assert_error(proc, file)
    else:
        for line in proc.stderr.decode(errors="replace").splitlines():
            assert line.startswith("memtap:"), describe(proc)


def assert_incomplete_result(proc, file):
    """A result, with a warning that the capture is incomplete."""
    check_sane(proc, file)
    assert proc.returncode == 0, describe(proc)
    err = proc.stderr.decode(errors="replace")
    # one wording for every command, parse included
    assert re.search(r"^memtap: warning: '%s' is incomplete \(truncated at byte \d+: [^)]+\); "
                     r"reporting what it holds$" % re.escape(str(file)), err, re.M), \
        describe(proc)


# ---- crafting captures -------------------------------------------------------

MAGIC = b"MEMTAPv\x01"
BLOCK_MAGIC = 0x4B4C424D


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def zz(v):
    return (v << 1) ^ (v >> 63) if v >= 0 else ((-v) << 1) - 1


def sbytes(b):
    if isinstance(b, str):
        b = b.encode()
    return varint(len(b)) + b


def header(flags=1, pid=4242, start_us=1_700_000_000_000_000, command="crafted",
           version=1):
    payload = varint(flags) + varint(pid) + varint(start_us) + sbytes(command)
    fixed = MAGIC + struct.pack("<II", version, len(payload))
    return fixed + payload + struct.pack("<I", zlib.crc32(fixed + payload))


def lz4_literals(raw):
    """An LZ4 block holding `raw` as one literal run (valid for any decoder)."""
    n = len(raw)
    if n < 15:
        return bytes([n << 4]) + raw
    out = bytearray([0xF0])
    n -= 15
    while n >= 255:
        out.append(255)
        n -= 255
    out.append(n)
    return bytes(out) + raw


def block(raw):
    comp = lz4_literals(raw)
    return struct.pack("<IIII", BLOCK_MAGIC, len(raw), len(comp), zlib.crc32(comp)) + comp


def trailer(code=0, signal=0, duration=1000, events=0, lost=0):
    return b"\x7f" + varint(zz(code)) + varint(signal) + varint(duration) + \
        varint(events) + varint(lost)


def capture(*blocks, **hdr):
    return header(**hdr) + b"".join(block(b) for b in blocks)


def alloc(addr_delta, size, py=0, native=None, allocator=1):
    tag = 0x20 | allocator | (0x10 if native is not None else 0)
    rec = bytes([tag]) + varint(zz(addr_delta)) + varint(size) + varint(zz(py))
    if native is not None:
        rec += varint(zz(native))
    return rec


def nativenode(id_delta, parent_back, ip_delta):
    return b"\x14" + varint(zz(id_delta)) + varint(zz(parent_back)) + varint(zz(ip_delta))


def obj(path, base=0x400000, build_id=b"", segs=((0, 0x10000),)):
    rec = b"\x15" + sbytes(path) + varint(base) + sbytes(build_id) + varint(len(segs))
    for vaddr, memsz in segs:
        rec += varint(vaddr) + varint(memsz)
    return rec + varint(0)


# ---- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="session")
def real_captures(tmp_path_factory, memtap):
    """Small real captures: Python with native stacks, and an aggregate one."""
    d = tmp_path_factory.mktemp("bad-input")
    code = ("import threading\n"
            "def f(): return [bytes(1000) for i in range(30)]\n"
            "t = threading.Thread(target=f); t.start(); t.join()\n"
            "x = [bytearray(64) for i in range(200)]\n")
    out = {}
    for name, extra in (("native", ["--native"]), ("aggregate", ["--aggregate"])):
        path = d / (name + ".bin")
        proc = memtap_run(["-q", "-o", path, *extra, "--python", DEFAULT_PYTHON, "-c", code],
                          cwd=d)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        out[name] = path.read_bytes()
    return out


def header_length(data):
    return 16 + struct.unpack_from("<I", data, 12)[0] + 4


def write(tmp_path, name, data):
    p = Path(tmp_path) / name
    p.write_bytes(data)
    return p


# ---- not captures ------------------------------------------------------------

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


@pytest.mark.parametrize("cmd", COMMAND_IDS)
@pytest.mark.parametrize("kind", ["empty", "random", "png", "text", "directory", "missing",
                                  "magic-only", "fifo-like-dev-null", "dev-zero"])
def test_not_a_capture(cmd, kind, tmp_path, memtap):
    rnd = random.Random(6)
    if kind == "empty":
        f, problem = write(tmp_path, "empty.bin", b""), "empty"
    elif kind == "random":
        f, problem = write(tmp_path, "random.bin", bytes(rnd.getrandbits(8) for _ in range(4096))), None
    elif kind == "png":
        f, problem = write(tmp_path, "image.png", PNG), "not a memtap capture"
    elif kind == "text":
        f, problem = write(tmp_path, "notes.txt", b"memtap is a memory tracker\n" * 40), \
            "not a memtap capture"
    elif kind == "directory":
        f, problem = tmp_path / "adir", None
        f.mkdir()
    elif kind == "missing":
        f, problem = tmp_path / "no-such-capture.bin", "no such file"
    elif kind == "magic-only":
        f, problem = write(tmp_path, "magic.bin", MAGIC), None
    elif kind == "dev-zero":
        f, problem = Path("/dev/zero"), "not a memtap capture"
    else:
        f, problem = Path("/dev/null"), "empty"
    assert_error(report(cmd, f, tmp_path), f, problem)


# ---- damaged captures --------------------------------------------------------

@pytest.mark.parametrize("cmd", COMMAND_IDS)
def test_newer_version(cmd, tmp_path, real_captures):
    data = bytearray(real_captures["native"])
    struct.pack_into("<I", data, 8, struct.unpack_from("<I", data, 8)[0] + 1)
    f = write(tmp_path, "newer.bin", bytes(data))
    proc = report(cmd, f, tmp_path)
    assert_error(proc, f, "version")


@pytest.mark.parametrize("cmd", COMMAND_IDS)
def test_cut_inside_header(cmd, tmp_path, real_captures):
    data = real_captures["native"]
    for cut in sorted({1, 7, 8, 12, 15, 16, 17, header_length(data) - 1}):
        f = write(tmp_path, "cut%d.bin" % cut, data[:cut])
        assert_error(report(cmd, f, tmp_path), f)


@pytest.mark.parametrize("cmd", COMMAND_IDS)
@pytest.mark.parametrize("which", ["native", "aggregate"])
def test_cut_anywhere_after_header(cmd, which, tmp_path, real_captures):
    """Cut at many offsets: what is before the cut, marked incomplete."""
    data = real_captures[which]
    hl = header_length(data)
    rnd = random.Random(which)
    cuts = {hl, hl + 1, hl + 15, hl + 16, hl + 17, len(data) - 1, len(data) - 2}
    cuts |= {rnd.randrange(hl, len(data)) for _ in range(6 if cmd in QUICK else 2)}
    for cut in sorted(cuts):
        f = write(tmp_path, "cut%d.bin" % cut, data[:cut])
        assert_incomplete_result(report(cmd, f, tmp_path), f)


@pytest.mark.parametrize("cmd", COMMAND_IDS)
@pytest.mark.parametrize("which", ["native", "aggregate"])
def test_bytes_flipped(cmd, which, tmp_path, real_captures):
    """One byte flipped at many positions (every header byte for the quick
    commands): a result or the one-line error, never worse."""
    data = real_captures[which]
    hl = header_length(data)
    rnd = random.Random(which + cmd)
    if cmd in QUICK:
        positions = set(range(hl)) | {rnd.randrange(len(data)) for _ in range(25)}
    else:
        positions = {0, 8, 12, hl - 1, hl, hl + 5, hl + 13} | \
            {rnd.randrange(len(data)) for _ in range(5)}
    for pos in sorted(positions):
        d = bytearray(data)
        d[pos] ^= 1 << rnd.randrange(8) if pos % 2 else 0xFF
        f = write(tmp_path, "flip%d.bin" % pos, bytes(d))
        assert_result_or_error(report(cmd, f, tmp_path), f)


@pytest.mark.parametrize("cmd", QUICK)
def test_random_garbage_after_header(cmd, tmp_path, real_captures):
    data = real_captures["native"]
    hl = header_length(data)
    rnd = random.Random(7)
    for i in range(5):
        tail = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 3000)))
        f = write(tmp_path, "garbage%d.bin" % i, data[:hl] + tail)
        assert_result_or_error(report(cmd, f, tmp_path), f)


# ---- crafted captures: past the CRCs -----------------------------------------

def test_crafted_capture_is_read(tmp_path, memtap):
    """The crafting helpers make captures the reader accepts (sanity check
    for the tests below)."""
    f = write(tmp_path, "ok.bin",
              capture(alloc(0x10000, 100) + alloc(0x100, 50) + trailer(events=2)))
    proc = report("stats-json", f, tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert b'"total_allocations": 2' in proc.stdout.replace(b'":2', b'": 2'), proc.stdout


@pytest.mark.parametrize("cmd", ["stats", "stats-json", "summary", "tree", "flamegraph"])
def test_crafted_double_free_stops_the_reports(cmd, tmp_path, memtap):
    """A capture ends each block it numbered once: a second free of one
    (damage past the checksums) marks the capture incomplete where it is,
    and the reports show what comes before."""
    raw = alloc(0x10000, 100) + alloc(0x20000, 50) + b"\x02" + varint(zz(1)) + \
        b"\x02" + varint(zz(0)) + alloc(0x30000, 70)
    f = write(tmp_path, "double.bin", capture(raw + trailer(events=5)))
    proc = report(cmd, f, tmp_path)
    assert_incomplete_result(proc, f)
    assert b"corrupt capture data" in proc.stderr, describe(proc)
    if cmd == "stats-json":
        assert b'"complete": false' in proc.stdout, proc.stdout


@pytest.mark.parametrize("cmd", COMMAND_IDS)
def test_crafted_records_out_of_range(cmd, tmp_path, memtap):
    """Records with fields no collector writes (unknown allocator, frees of
    unknown blocks, mappings that wrap around, zero addresses): a result or
    the one-line error."""
    cases = {
        "unknown-allocator": alloc(0x1000, 10, allocator=14) + alloc(0x10, 10, allocator=15),
        "zero-address": alloc(0, 10) + alloc(0, 20),
        "free-unknown": alloc(0x1000, 10) + b"\x02" + varint(zz(5)),
        "wrapping-mmap": alloc(-0x1000, 1 << 63, allocator=10) +
                         b"\x04" + varint(zz(-0x10)) + varint((1 << 64) - 1),
        "munmap-hole": alloc(0x100000, 0x10000, allocator=10) +
                       b"\x04" + varint(zz(0x101000)) + varint(0x1000),
        "huge-size": alloc(0x1000, (1 << 64) - 1) + alloc(0x10, (1 << 64) - 1),
        "parent-cycle": nativenode(1, -1, 0x401000) + nativenode(1, -1, 0x10) +
                        alloc(0x1000, 8, native=2),
        "bad-tag": alloc(0x1000, 8) + b"\x60\x61\x62",
        "many-segments": obj("/nonexistent/lib.so", segs=[(i, 1) for i in range(33)]),
        "thread-switch": b"\x10" + varint(7) + alloc(0x1000, 8),
    }
    for name, raw in cases.items():
        f = write(tmp_path, name + ".bin", capture(raw + trailer()))
        assert_result_or_error(report(cmd, f, tmp_path), f)


@pytest.mark.parametrize("cmd", ["stats", "summary", "flamegraph"])
@pytest.mark.parametrize("what", ["native-node", "python-node", "code", "thread"])
def test_crafted_huge_ids(cmd, what, tmp_path, memtap):
    """An id near 2**31 in a 30-byte capture must not make the reader
    allocate tables of that size (unbounded memory, then an out-of-memory
    exit that names no file): an id beyond the records seen so far makes
    the capture corrupt from that record on."""
    big = (1 << 31) - 5
    raw = {
        "native-node": nativenode(big, 1, 0x401000) + alloc(0x1000, 8, native=big),
        "python-node": b"\x13" + varint(zz(big)) + varint(zz(1)) + varint(1) + varint(3) +
                       varint(0) + alloc(0x1000, 8, py=big),
        "code": b"\x12" + varint(big) + varint(zz(1)) + sbytes("f") + sbytes("f") +
                sbytes("x.py"),
        "thread": b"\x11" + varint(big) + varint(1234) + sbytes("t") +
                  b"\x10" + varint(big) + alloc(0x1000, 8),
    }[what]
    f = write(tmp_path, what + ".bin", capture(raw + trailer()))
    proc = report(cmd, f, tmp_path)
    check_sane(proc, f)
    if proc.returncode:
        assert_error(proc, f)


def test_object_path_is_a_fifo(tmp_path, memtap):
    """An object path naming a FIFO (or a device) must not block the reader:
    object files are only opened to read symbols, and only regular files."""
    fifo = tmp_path / "trap.fifo"
    os.mkfifo(fifo)
    raw = (obj(str(fifo), base=0x400000, segs=[(0, 0x100000)]) +
           obj("/dev/zero", base=0x7f0000000000, segs=[(0, 0x100000)]) +
           nativenode(1, 1, 0x401000) + nativenode(1, 1, 0x7f0000000100 - 0x401000) +
           alloc(0x1000, 8, native=1) + alloc(0x100, 8, native=1))
    f = write(tmp_path, "fifo.bin", capture(raw + trailer()))
    assert_result_or_error(report("summary", f, tmp_path, timeout=10), f)


def test_reader_loads_nothing_named_in_capture(tmp_path, memtap):
    """Security: an object path naming a shared library whose constructor
    would leave a mark: the reader reads it for symbols, never loads it."""
    mark = tmp_path / "constructor-ran"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n'
                   '__attribute__((constructor)) static void boom(void)\n'
                   '{ FILE *f = fopen("%s", "w"); if (f) fclose(f); }\n'
                   'int evil_function(int x) { return x + 1; }\n' % mark)
    lib = tmp_path / "libevil.so"
    cc = subprocess.run(["cc", "-shared", "-fPIC", "-g", "-o", str(lib), str(src)],
                        capture_output=True)
    if cc.returncode != 0:
        pytest.skip("no C compiler: " + cc.stderr.decode(errors="replace"))
    raw = (obj(str(lib), base=0x7f0000000000, segs=[(0, 0x4000)]) +
           nativenode(1, 1, 0x7f0000001100) + alloc(0x1000, 8, native=1))
    f = write(tmp_path, "evil.bin", capture(raw + trailer()))
    for cmd in ("summary", "tree", "flamegraph", "export-collapsed", "parse"):
        assert_result_or_error(report(cmd, f, tmp_path), f)
    assert not mark.exists(), "the reader ran the constructor of a library named in a capture"


# ---- where reading stops, in a capture of many blocks --------------------------

def _many_blocks(nblocks, per_block, bad=None):
    """A capture of nblocks blocks of per_block 100-byte allocations each;
    bad = (block index, record): that record is put in the middle of that
    block. @return the bytes and each block's offset."""
    raws = []
    for k in range(nblocks):
        recs = [alloc(0x10000 if k == 0 and i == 0 else 0x100, 100) for i in range(per_block)]
        if bad and bad[0] == k:
            recs.insert(per_block // 2, bad[1])
        raws.append(b"".join(recs))
    raws[-1] += trailer(events=nblocks * per_block)
    data = header()
    offsets = []
    for raw in raws:
        offsets.append(len(data))
        data += block(raw)
    return data, offsets


def _stats_json(f, tmp_path):
    import json
    proc = report("stats-json", f, tmp_path)
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout)


def test_stop_offset_many_blocks_bad_crc(tmp_path, memtap):
    """Reading runs ahead of the replay on a second thread, in batches of
    records that span blocks: a block whose CRC fails must still end the
    report exactly at that block, with every allocation before it."""
    data, offsets = _many_blocks(12, 9000)
    for k in (1, 7, 11):
        bad = bytearray(data)
        bad[offsets[k] + 12] ^= 0xFF  # the block's CRC
        stats = _stats_json(write(tmp_path, "crc%d.bin" % k, bytes(bad)), tmp_path)
        assert stats["complete"] is False
        assert stats["truncated_at"] == offsets[k], (k, stats["truncated_at"], offsets[k])
        assert stats["total_allocations"] == k * 9000


def test_stop_offset_many_blocks_record_refused(tmp_path, memtap):
    """A record the replay refuses (an event of thread 10^9, more threads than
    records so far) in the middle of block 6: the report ends at that block,
    with the allocations before the record, none after."""
    switch = b"\x10" + varint(10 ** 9)
    data, offsets = _many_blocks(12, 9000, bad=(6, switch + alloc(0x100, 100)))
    stats = _stats_json(write(tmp_path, "refused.bin", data), tmp_path)
    assert stats["complete"] is False
    assert stats["truncated_at"] == offsets[6], (stats["truncated_at"], offsets[6])
    assert stats["total_allocations"] == 6 * 9000 + 4500


def test_messages_keep_control_characters_off_the_terminal(tmp_path, real_captures):
    """A file named with an escape and a line break: the error about it is
    one line, with '?' where they were; so is the line that names a report
    written there."""
    evil = "no\x1b[2Jsuch\nfile"
    proc = subprocess.run([str(MEMTAP), "stats", str(tmp_path / evil)], capture_output=True,
                          env=clean_env(), timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert proc.stderr == ("memtap: cannot read '%s/no?[2Jsuch?file': No such file or "
                           "directory\n" % tmp_path).encode(), proc.stderr
    cap = write(tmp_path, "native.bin", real_captures["native"])
    for cmd in ("flamegraph", "table"):
        out = tmp_path / (cmd + "\x1bx\n.html")
        proc = subprocess.run([str(MEMTAP), cmd, str(cap), "-o", str(out)], capture_output=True,
                              env=clean_env(), timeout=TIMEOUT)
        assert proc.returncode == 0 and out.exists(), describe(proc)
        assert proc.stderr == ("memtap: wrote %s/%s?x?.html\n" % (tmp_path, cmd)).encode(), proc.stderr
