"""Faults in the traced program (issue 6, "Faults in the traced process").

Each program is run twice, untracked and under `memtap run`, and the two
runs must agree: stdout byte for byte, the ending (exit code, or the signal
that killed it: `memtap run` ends the way its program did), and stderr but
for lines that start with `memtap:`. Nothing may hang: every run has a
timeout. Where a capture is written it must be readable by `memtap stats`
(complete, or marked incomplete), never an error.
"""

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (DEFAULT_PYTHON, MEMTAP, clean_env, memtap_sanitized, memtap_stats,
                      strip_memtap_lines, write_script)

TIMEOUT = 60


def run(argv, cwd, timeout=TIMEOUT):
    try:
        return subprocess.run([str(a) for a in argv], cwd=str(cwd), env=clean_env(),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("hung: %s" % " ".join(map(str, argv)))


def said(p):
    """memtap's own lines on p's stderr."""
    return [l for l in p.stderr.decode().splitlines() if l.startswith("memtap:")]


def describe(p):
    return "exit %d\nstdout: %s\nstderr: %s" % (
        p.returncode, p.stdout[-1500:].decode(errors="replace"),
        p.stderr[-3000:].decode(errors="replace"))


def compare(tmp_path, text, memtap_opts=("-q",), out="capture.bin", args=(),
            python=DEFAULT_PYTHON, expect_capture=True):
    """Runs the program untracked and tracked; asserts they agree.
    @return (untracked, tracked, capture path or None)"""
    script = write_script(tmp_path, text)
    plain = run([python, script, *args], tmp_path)
    cap = None
    opts = list(memtap_opts)
    if out is not None:
        cap = Path(out) if os.path.isabs(str(out)) else Path(tmp_path) / out
        opts += ["-o", cap]
    traced = run([MEMTAP, "run", *opts, "--python", python, script, *args], tmp_path)
    assert traced.stdout == plain.stdout, (
        "stdout differs\nuntracked: %s\ntracked: %s" % (describe(plain), describe(traced)))
    assert traced.returncode == plain.returncode, (
        "ending differs\nuntracked: %s\ntracked: %s" % (describe(plain), describe(traced)))
    assert strip_memtap_lines(traced.stderr) == plain.stderr, (
        "stderr differs\nuntracked: %s\ntracked: %s" % (describe(plain), describe(traced)))
    for line in traced.stderr.splitlines():
        assert not line.startswith(b"Traceback") or line in plain.stderr
    if expect_capture and cap is not None:
        assert cap.exists(), "no capture written\n" + describe(traced)
        memtap_stats(cap)   # readable: complete or marked incomplete
    return plain, traced, cap


ALLOCATE = """
import sys
data = [bytearray(i % 512 + 1) for i in range(20000)]
text = "".join(str(i) for i in range(10000))
print("allocated", len(data), len(text))
"""


# ---- the capture cannot be written ---------------------------------------------

def test_output_directory_not_writable(tmp_path):
    """The output's parent is a regular file (ENOTDIR even for root): the
    program runs untracked, with one `memtap:` line saying why."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    _, traced, _ = compare(tmp_path, ALLOCATE, out=blocker / "x.bin", expect_capture=False)
    lines = [l for l in traced.stderr.splitlines() if l.startswith(b"memtap:")]
    assert len(lines) == 1 and b"x.bin" in lines[0], describe(traced)


def test_output_on_read_only_filesystem(tmp_path):
    """/proc/sys is read-only for root too."""
    compare(tmp_path, ALLOCATE, out="/proc/sys/memtap-capture.bin", expect_capture=False)


def test_disk_full_dev_full(tmp_path):
    """Writes to /dev/full fail with ENOSPC from the first block on."""
    compare(tmp_path, ALLOCATE, memtap_opts=("-q", "-f"), out="/dev/full",
            expect_capture=False)


def test_output_is_a_symbolic_link(tmp_path):
    """A capture is never written through a link (one planted in a shared
    directory must not make memtap overwrite its target), even with -f:
    memtap says why and runs the program untracked."""
    target = tmp_path / "target"
    target.write_text("kept\n")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    _, traced, _ = compare(tmp_path, ALLOCATE, memtap_opts=("-q", "-f"), out=link,
                           expect_capture=False)
    assert said(traced) == [
        "memtap: cannot create '%s': it is a symbolic link, which a capture is not written "
        "through; running the program untracked" % link], describe(traced)
    assert target.read_text() == "kept\n"


def test_output_is_a_fifo(tmp_path):
    """-o names a FIFO: with no process reading it, memtap says so and
    runs the program untracked at once (it used to wait for a reader for
    ever, deaf to SIGTERM); with one, the capture streams through it."""
    import threading
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _, traced, _ = compare(tmp_path, ALLOCATE, memtap_opts=("-q", "-f"), out=fifo,
                           expect_capture=False)
    assert said(traced) == [
        "memtap: cannot create '%s': it is a FIFO that no process reads; running the "
        "program untracked" % fifo], describe(traced)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(fifo, os.O_WRONLY)  # no end of file before memtap's
    os.set_blocking(rfd, True)
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(rfd, 65536), b"")))
    reader.start()
    try:
        # no -f needed: there is no file to replace; nor a file to read after
        _, traced, _ = compare(tmp_path, ALLOCATE, memtap_opts=(), out=fifo,
                               expect_capture=False)
    finally:
        os.close(wfd)
        reader.join(TIMEOUT)
        os.close(rfd)
    streamed = tmp_path / "streamed.bin"
    streamed.write_bytes(b"".join(got))
    stats = memtap_stats(streamed)
    assert stats["complete"] is True and stats["exit"] == {"code": 0}, stats
    assert said(traced) == ["memtap: wrote %d events to '%s'" % (stats["total_allocations"]
                            + stats["total_frees"], fifo)], describe(traced)


def test_output_is_dev_null(tmp_path):
    """/dev/null takes the capture without -f: nothing is there to lose."""
    _, traced, _ = compare(tmp_path, ALLOCATE, memtap_opts=(), out="/dev/null",
                           expect_capture=False)
    lines = said(traced)
    assert len(lines) == 1 and lines[0].startswith("memtap: wrote ") and \
        lines[0].endswith(" events to '/dev/null'"), describe(traced)


def test_closing_line_names_the_capture_as_a_shell_word(tmp_path):
    """The 'next:' command can be pasted into a shell as it is."""
    name = "-a b's.bin"
    script = write_script(tmp_path, ALLOCATE)
    traced = run([MEMTAP, "run", "-o", name, "--python", DEFAULT_PYTHON, script], tmp_path)
    assert traced.returncode == 0, describe(traced)
    line = said(traced)[-1]
    assert line.endswith("; next: memtap stats ./'-a b'\\''s.bin'"), line
    word = line.split("next: memtap stats ", 1)[1]
    shell = subprocess.run(["sh", "-c", "printf %s " + word], cwd=str(tmp_path),
                           capture_output=True, text=True)
    assert shell.stdout == "./" + name and (tmp_path / shell.stdout).exists(), shell



def test_closing_line_keeps_control_characters_off_the_terminal(tmp_path):
    """A program or capture named with control characters: the default
    capture name has them as '_', a given one is spelled as bash's $'...',
    which pastes back into the shell; the terminal gets no escape."""
    evil = "ex\x1b[2Je\nname"
    script = write_script(tmp_path, ALLOCATE, name=evil + ".py")
    traced = run([MEMTAP, "run", "--python", DEFAULT_PYTHON, script], tmp_path)
    assert traced.returncode == 0, describe(traced)
    assert b"\x1b" not in traced.stderr and traced.stderr.count(b"\n") == len(said(traced))
    line = said(traced)[-1]
    assert line.startswith("memtap: wrote ") and "'memtap-ex_[2Je_name." in line, line
    given = "o\x1bx 'q'.bin"
    traced = run([MEMTAP, "run", "-o", given, "--python", DEFAULT_PYTHON, script], tmp_path)
    assert traced.returncode == 0 and b"\x1b" not in traced.stderr, describe(traced)
    line = said(traced)[-1]
    word = "$'o\\x1bx \\'q\\'.bin'"
    assert line.endswith(" events to %s; next: memtap stats %s" % (word, word)), line
    shell = subprocess.run(["bash", "-c", "printf %s " + word], cwd=str(tmp_path),
                           capture_output=True, text=True)
    assert shell.stdout == given and (tmp_path / given).exists(), shell


ROOMY = """\
import sys
try:
    b = bytearray(300 * 2**20)  # @big
    print("got it")
except MemoryError:
    print("MemoryError")
sys.exit(3)
"""


def run_limited(tmp_path, soft, hard):
    script = write_script(tmp_path, ROOMY)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    plain = subprocess.run([DEFAULT_PYTHON, str(script)], cwd=str(tmp_path), env=clean_env(),
                           capture_output=True, timeout=TIMEOUT, preexec_fn=limit)
    traced = subprocess.run([str(MEMTAP), "run", "-o", str(tmp_path / "c.bin"), "--python",
                             DEFAULT_PYTHON, str(script)], cwd=str(tmp_path), env=clean_env(),
                            capture_output=True, timeout=TIMEOUT, preexec_fn=limit)
    return plain, traced


def test_ulimit_v_leaves_the_program_its_memory(tmp_path):
    """A ulimit -v counts the shim's 256 MiB of rings in the program: memtap
    raises the soft limit by that much, so a program that fits untracked
    fits tracked, and is recorded."""
    if memtap_sanitized():
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    soft = 400 * 2**20
    plain, traced = run_limited(tmp_path, soft, resource.RLIM_INFINITY)
    assert (plain.returncode, plain.stdout) == (3, b"got it\n"), describe(plain)
    assert (traced.returncode, traced.stdout) == (3, b"got it\n"), describe(traced)
    stats = memtap_stats(tmp_path / "c.bin")
    assert any(r["bytes"] == 300 * 2**20 + 1 for r in stats["top_locations"])


def test_hard_ulimit_v_runs_the_program_untracked(tmp_path):
    """A hard limit memtap may not raise: recording would leave the program
    less memory than it has alone, so it runs untracked, as it would."""
    if memtap_sanitized():
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    limit = 400 * 2**20
    plain, traced = run_limited(tmp_path, limit, limit)
    if traced.stderr == b"":  # allowed to raise it (CAP_SYS_RESOURCE): recorded
        assert (traced.returncode, traced.stdout) == (3, b"got it\n")
        return
    assert (traced.returncode, traced.stdout) == (plain.returncode, plain.stdout)
    assert traced.stderr.decode().splitlines() == [
        "memtap: a hard ulimit -v leaves no room for memtap's rings beside the program's "
        "own memory (a soft limit, ulimit -S -v, does): Operation not permitted; running "
        "the program untracked"], describe(traced)
    assert not (tmp_path / "c.bin").exists()


OPEN_FILES = """\
import os
keep = bytearray(3 * 2**20)
print(sorted(os.listdir("/proc/self/fd"))[:3], len(keep))
"""


@pytest.mark.parametrize("limit", [16, 63, 64, 256, 500])
def test_a_low_limit_on_open_files(tmp_path, limit):
    """memtap's copy of the rings' descriptor goes high (500), or to the top
    of a lower limit; under 64 there is no room for memtap's own files and
    the program runs untracked, as it would alone."""
    script = tmp_path / "prog.py"
    script.write_text(OPEN_FILES)
    cmd = ["prlimit", "--nofile=%d" % limit, "--"]
    plain = subprocess.run(cmd + [DEFAULT_PYTHON, str(script)], capture_output=True,
                           timeout=TIMEOUT, cwd=tmp_path, env=clean_env())
    traced = subprocess.run(cmd + [str(MEMTAP), "run", "-q", "-o", "c.bin", "--python",
                                   DEFAULT_PYTHON, str(script)], capture_output=True,
                            timeout=TIMEOUT, cwd=tmp_path, env=clean_env())
    assert (traced.returncode, traced.stdout) == (0, plain.stdout), describe(traced)
    if limit < 64:
        assert traced.stderr.decode() == (
            "memtap: the limit on open files (ulimit -n) is under 64, which leaves memtap no "
            "room for its own; running the program untracked\n"), describe(traced)
        assert not (tmp_path / "c.bin").exists()
        return
    assert traced.stderr == b"", describe(traced)
    stats = memtap_stats(tmp_path / "c.bin")
    assert any(r["bytes"] == 3 * 2**20 + 1 and r["line"] == 2 for r in stats["top_locations"])


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("modes", [["--native"], ["--native", "--aggregate"]])
def test_disk_full_while_writing(tmp_path, tiny_tmpfs, modes):
    """A 12 KiB filesystem fills up part way through (native stacks make
    the capture large; an aggregate checkpoint of them too): the program is
    not disturbed, memtap does not claim it wrote the capture, and what was
    written reads as an incomplete capture."""
    text = ALLOCATE + "more = [str(i) * 3 for i in range(200000)]\nprint(len(more))\n"
    _, traced, cap = compare(tmp_path, text, memtap_opts=("-q", *modes),
                             out=tiny_tmpfs / "c.bin", expect_capture=False)
    lines = said(traced)
    assert lines[-1] == ("memtap: '%s' is incomplete: it holds what was written before "
                         "writing failed" % cap), lines
    assert not [l for l in lines if "wrote" in l], lines
    # the block that did not fit is cut off again: its space is the
    # program's (it may write there after memtap failed)
    vfs = os.statvfs(str(tiny_tmpfs))
    assert vfs.f_bavail * vfs.f_frsize >= 4096, (vfs, cap.stat().st_size)
    if cap.exists() and cap.stat().st_size > 0:
        proc = subprocess.run([str(MEMTAP), "stats", str(cap)], capture_output=True,
                              timeout=TIMEOUT)
        assert proc.returncode in (0, 1) and b"Traceback" not in proc.stderr, describe(proc)
        if proc.returncode == 0:
            assert b"incomplete" in proc.stderr, describe(proc)


FORKS_ON_A_FULL_DISK = """
import os
keep = []
for i in range(60000):
    keep.append(bytearray(600 + i * 7919 % 5000))
    if len(keep) > 1000:
        keep.pop(0)
    if i % 1000 == 0:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
print("done")
"""


def test_disk_full_with_children(tmp_path, tiny_tmpfs):
    """--follow-fork on a disk that fills: why writing failed is said once
    for the program (the errno of the write, not of what memtap did since)
    and once for the children, which are then counted, not listed."""
    _, traced, cap = compare(tmp_path, FORKS_ON_A_FULL_DISK,
                             memtap_opts=("-q", "--follow-fork"),
                             out=tiny_tmpfs / "c.bin", expect_capture=False)
    lines = said(traced)
    assert ("memtap: cannot write '%s': No space left on device; the program continues "
            "untracked" % cap) in lines, lines
    children = [l for l in lines if l.startswith("memtap: cannot record child")]
    assert len(children) == 1 and children[0].endswith(": No space left on device"), lines
    more = [l for l in lines if l.endswith("more children were not recorded")]
    assert len(more) == 1 and lines[-1].endswith("writing failed"), lines
    assert len(lines) == 4, lines


@pytest.mark.parametrize("modes", [[], ["--aggregate"]])
def test_disk_full_from_the_start(tmp_path, tiny_tmpfs, modes):
    """Not even the capture's header fits: the program runs untracked and
    no empty file is left (a next run without -f would refuse it)."""
    with open(tiny_tmpfs / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 512)
        except OSError:
            pass
    _, traced, _ = compare(tmp_path, ALLOCATE, memtap_opts=("-q", *modes),
                           out=tiny_tmpfs / "z.bin", expect_capture=False)
    assert said(traced) == ["memtap: cannot create '%s': No space left on device; running the "
                            "program untracked" % (tiny_tmpfs / "z.bin")], said(traced)
    assert sorted(x.name for x in tiny_tmpfs.iterdir()) == ["filler"]


@pytest.mark.parametrize("cmd", [["table"], ["flamegraph"], ["export", "--format", "csv"]])
def test_report_on_a_full_disk_leaves_the_old_file(tmp_path, tiny_tmpfs, cmd):
    """A report that does not fit is not left half written, and the file
    it was to replace is kept."""
    script = write_script(tmp_path, ALLOCATE)
    cap = tmp_path / "c.bin"
    traced = run([MEMTAP, "run", "-q", "--native", "-o", cap, "--python", DEFAULT_PYTHON,
                  script], tmp_path)
    assert traced.returncode == 0, describe(traced)
    out = tiny_tmpfs / "report"
    out.write_text("the old report\n")
    p = run([MEMTAP, *cmd, cap, "-o", out], tmp_path)
    assert p.returncode == 1, describe(p)
    assert p.stderr.decode().splitlines() == [
        "memtap: cannot write '%s': No space left on device" % out], describe(p)
    assert out.read_text() == "the old report\n"
    assert sorted(x.name for x in tiny_tmpfs.iterdir()) == ["report"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_report_interrupted_leaves_no_part_file(tmp_path, sig):
    """A report killed while it writes its temporary file removes it; one
    killed just after its rename leaves the whole report."""
    script = write_script(tmp_path, ALLOCATE)
    cap = tmp_path / "c.bin"
    assert run([MEMTAP, "run", "-q", "--native", "-o", cap, "--python", DEFAULT_PYTHON,
                script], tmp_path).returncode == 0
    whole = tmp_path / "whole.html"
    assert run([MEMTAP, "flamegraph", "-o", whole, cap], tmp_path).returncode == 0
    out = tmp_path / "out"
    caught = 0
    for _ in range(20):
        out.mkdir()
        p = subprocess.Popen([str(MEMTAP), "flamegraph", "-o", str(out / "f.html"), str(cap)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        part = out / ("f.html.%d.part" % p.pid)
        while not part.exists() and p.poll() is None:
            pass
        p.send_signal(sig)
        rc = p.wait(timeout=TIMEOUT)
        if rc == -sig:
            caught += 1
            left = list(out.iterdir())
            assert left in ([], [out / "f.html"]), left
            if left:
                assert left[0].read_bytes() == whole.read_bytes()
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    assert caught, "never caught the report while it wrote"


def test_report_with_sighup_ignored_survives_it(tmp_path):
    """Under nohup (SIGHUP ignored) a report is not killed by a hangup
    while it writes: ignored stays ignored."""
    script = write_script(tmp_path, ALLOCATE)
    cap = tmp_path / "c.bin"
    assert run([MEMTAP, "run", "-q", "--native", "-o", cap, "--python", DEFAULT_PYTHON,
                script], tmp_path).returncode == 0
    out = tmp_path / "f.html"
    for _ in range(5):
        p = subprocess.Popen([str(MEMTAP), "flamegraph", "-o", str(out), str(cap)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
        part = tmp_path / ("f.html.%d.part" % p.pid)
        while not part.exists() and p.poll() is None:
            pass
        p.send_signal(signal.SIGHUP)
        assert p.wait(timeout=TIMEOUT) == 0
        assert out.exists() and not part.exists()


# ---- the program does unusual things --------------------------------------------

def test_closes_all_file_descriptors(tmp_path):
    _, _, cap = compare(tmp_path, """
import os
os.closerange(3, 65536)
data = [bytearray(100) for i in range(50000)]
import threading
t = threading.Thread(target=lambda: [bytes(1000) for i in range(1000)])
t.start(); t.join()
print("after closerange", len(data))
""")
    stats = memtap_stats(cap)
    assert stats["total_allocations"] > 0


def test_fork_while_threads_allocate(tmp_path):
    compare(tmp_path, """
import os, threading, sys
stop = False
def churn():
    while not stop:
        x = [bytearray(64) for i in range(100)]
threads = [threading.Thread(target=churn) for i in range(4)]
for t in threads: t.start()
results = []
for n in range(5):
    pid = os.fork()
    if pid == 0:
        data = [bytes(i % 300) for i in range(20000)]
        os._exit(len(data) % 256 + n)
    _, status = os.waitpid(pid, 0)
    results.append(os.waitstatus_to_exitcode(status))
stop = True
for t in threads: t.join()
print("children exited with", results)
""")


def test_fork_follow_fork_while_threads_allocate(tmp_path):
    compare(tmp_path, """
import os, threading
stop = False
def churn():
    while not stop:
        x = [bytearray(64) for i in range(100)]
threads = [threading.Thread(target=churn) for i in range(3)]
for t in threads: t.start()
pids = []
for n in range(3):
    pid = os.fork()
    if pid == 0:
        data = [bytes(i % 300) for i in range(20000)]
        print("child", n, len(data), flush=True)
        os._exit(n)
    os.waitpid(pid, 0)
stop = True
for t in threads: t.join()
print("parent done")
""", memtap_opts=("-q", "--follow-fork"))


def test_exec_another_python(tmp_path):
    compare(tmp_path, """
import os, sys
data = [bytearray(100) for i in range(1000)]
sys.stdout.flush()
os.execv(sys.executable, [sys.executable, "-c",
         "x = [bytes(100) for i in range(10000)]; print('after exec', len(x))"])
""")


def test_exec_a_native_program(tmp_path):
    compare(tmp_path, """
import os
data = [bytearray(100) for i in range(1000)]
os.execv("/bin/sh", ["/bin/sh", "-c", "echo from sh; ls / >/dev/null; exit 3"])
""")


def test_signal_handlers_that_allocate(tmp_path):
    compare(tmp_path, """
import signal
hits = []
def handler(sig, frame):
    hits.append([bytearray(200) for i in range(20)])
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
total = 0
for i in range(300000):
    b = bytearray(i % 1000)
    total += len(b)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print("total", total, "handler ran", bool(hits))
""")


def test_native_signal_handler_allocates(tmp_path):
    """A C-level handler (faulthandler-free): SIGUSR1 sent to itself while
    malloc-heavy code runs on other threads."""
    compare(tmp_path, """
import os, signal, threading
n = [0]
def handler(sig, frame):
    n[0] += 1
    x = {i: str(i) for i in range(100)}
signal.signal(signal.SIGUSR1, handler)
def churn():
    for i in range(20000):
        y = [bytearray(32) for j in range(10)]
t = threading.Thread(target=churn); t.start()
for i in range(200):
    os.kill(os.getpid(), signal.SIGUSR1)
t.join()
print("signals handled", n[0])
""")


def test_os_exit(tmp_path):
    _, _, cap = compare(tmp_path, """
import os, sys
data = [bytearray(100) for i in range(10000)]
print("exiting", flush=True)
sys.stderr.write("on stderr\\n"); sys.stderr.flush()
os._exit(5)
""")
    assert memtap_stats(cap)["total_allocations"] > 0


@pytest.mark.parametrize("when", [0, 1, 50, 2000, 20000])
def test_killed_by_itself(tmp_path, when):
    """SIGKILL at a chosen moment (after `when` allocations): same ending,
    capture readable."""
    _, traced, cap = compare(tmp_path, """
import os, signal, sys
when = int(sys.argv[1])
data = []
for i in range(when):
    data.append(bytearray(i % 700))
print("before kill", len(data), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
""", args=[str(when)])
    assert traced.returncode == -signal.SIGKILL


PROGRESS = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
data = []
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:
    data.append(bytearray(i % 4096))
    if len(data) > 5000:
        del data[:2500]
    i += 1
print("finished", flush=True)
"""


def wait_for_file(path, deadline):
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.01)
    pytest.fail("the program did not start")


@pytest.mark.parametrize("seed", range(6))
def test_killed_at_random_moments(tmp_path, seed):
    """SIGKILL from outside at a random moment: memtap run ends with SIGKILL
    too, and the capture is readable (complete or marked incomplete)."""
    rnd = random.Random(seed)
    script = write_script(tmp_path, PROGRESS)
    pidfile = tmp_path / "pid"
    cap = tmp_path / "capture.bin"
    p = subprocess.Popen([str(MEMTAP), "run", "-q", "-o", str(cap), "--python", DEFAULT_PYTHON,
                          str(script), str(pidfile), "3"], cwd=str(tmp_path),
                         env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = wait_for_file(pidfile, time.monotonic() + 30)
        time.sleep(rnd.uniform(0, 1.5))
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL, (p.returncode, err)
    assert b"finished" not in out
    stats = memtap_stats(cap)
    if stats["complete"]:
        assert stats["exit"]["signal"] == signal.SIGKILL, stats["exit"]


def test_out_of_memory_is_passed_through(tmp_path):
    compare(tmp_path, """
import resource
limit = 200 << 20  # the program's own memory (memtap's rings are not counted in)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for size in (1 << 40, 1 << 33, 300 << 20):
    try:
        x = bytearray(size)
        print("allocated", size)
    except MemoryError:
        print("MemoryError for", size)
small = [bytearray(1000) for i in range(10000)]
print("still working", len(small))
""")


def test_out_of_memory_native(tmp_path):
    """malloc returning NULL reaches the program unchanged (native mode)."""
    compare(tmp_path, """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.calloc.restype = ctypes.c_void_p
libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
print("malloc(huge) is NULL:", libc.malloc(1 << 62) is None)
print("calloc overflow is NULL:", libc.calloc(1 << 40, 1 << 40) is None)
print("errno is ENOMEM:", ctypes.get_errno() in (0, 12))
""", memtap_opts=("-q", "--native"))


# ---- memtap itself dies ----------------------------------------------------------

def memtap_killed(tmp_path, reap):
    """Kills memtap (not the program) 0.8 s into a 2.5 s run; returns what the
    program printed and the capture's stats. reap: wait for memtap's exit
    status at once (as a shell does) rather than leave it a zombie until the
    program's pipes close (as a Popen.communicate caller, or a pipeline
    `memtap run prog | tee log`, does)."""
    script = write_script(tmp_path, PROGRESS)
    pidfile = tmp_path / "pid"
    cap = tmp_path / "capture.bin"
    p = subprocess.Popen([str(MEMTAP), "run", "-q", "-o", str(cap), "--python", DEFAULT_PYTHON,
                          str(script), str(pidfile), "2.5"], cwd=str(tmp_path),
                         env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = None
    try:
        pid = wait_for_file(pidfile, time.monotonic() + 30)
        time.sleep(0.8)
        p.kill()   # memtap, not the program
        if reap:
            os.waitpid(p.pid, 0)
            p.returncode = -signal.SIGKILL
        # The program holds the pipes: EOF comes when it ends.
        try:
            out, err = p.stdout.read(), p.stderr.read()
        except Exception:
            raise
    finally:
        if p.returncode is None:
            p.kill()
            p.wait()
    assert out == b"finished\n", (out, err)
    stats = memtap_stats(cap)
    assert not stats["complete"]
    assert stats["total_allocations"] > 0
    return err


def _watchdog(pid_file, seconds):
    """Kills the program if it is still running after `seconds` (so a hang
    fails the test instead of blocking it)."""
    import threading

    def kill_later():
        time.sleep(seconds)
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    t = threading.Thread(target=kill_later, daemon=True)
    t.start()


def test_memtap_killed_program_finishes(tmp_path):
    """The collector is killed (and reaped): the program is not stopped and
    does not hang (the shim stops tracking); the capture reads as
    incomplete, up to the last flush."""
    _watchdog(tmp_path / "pid", 30)
    err = memtap_killed(tmp_path, reap=True)
    assert b"collector is gone" in err, err


def test_memtap_killed_not_reaped_program_finishes(tmp_path):
    """As above, but memtap stays a zombie until the program's output ends
    (Popen.communicate, a shell pipeline): the program must still finish."""
    _watchdog(tmp_path / "pid", 20)
    memtap_killed(tmp_path, reap=False)


# ---- the capture file itself (issue 6, "Security") ---------------------------------

def test_symlink_at_output_path_is_refused(tmp_path):
    """A symlink planted at the output path is not followed, with or without
    -f: its target is left untouched."""
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    link = tmp_path / "capture.bin"
    link.symlink_to(target)
    for opts in (["-q"], ["-q", "-f"]):
        script = write_script(tmp_path, ALLOCATE)
        traced = run([MEMTAP, "run", *opts, "-o", link, "--python", DEFAULT_PYTHON, script],
                     tmp_path)
        assert target.read_text() == "precious\n", describe(traced)
        assert link.is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_capture_mode_follows_umask_never_world_writable(tmp_path, umask):
    script = write_script(tmp_path, "x = [bytes(10) for i in range(10)]\n")
    cap = tmp_path / ("capture-%03o.bin" % umask)
    proc = subprocess.run([str(MEMTAP), "run", "-q", "-o", str(cap), "--python", DEFAULT_PYTHON,
                           str(script)], cwd=str(tmp_path), env=clean_env(), capture_output=True,
                          timeout=TIMEOUT, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, describe(proc)
    mode = cap.stat().st_mode & 0o777
    assert mode == 0o644 & ~umask, oct(mode)
    assert not mode & 0o002


EARLY_READER = """\
import time
print("one", flush=True)
time.sleep(0.3)
keep = bytearray(1000)
print("two")
"""


def first_line_then_close(cmd, cwd):
    """Runs cmd with stdout and stderr into one pipe, reads one line and
    closes the pipe (as `cmd 2>&1 | head -1`). @return (line, exit status)"""
    p = subprocess.Popen([str(c) for c in cmd], cwd=str(cwd), env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = p.stdout.readline()
    p.stdout.close()
    return line, p.wait(timeout=TIMEOUT)


def test_a_reader_that_goes_away_early(tmp_path):
    """memtap's closing line goes to a pipe nobody reads any more: memtap
    must not die of SIGPIPE (it did: exit 141, the capture cut short);
    the program ends as it would without memtap."""
    script = write_script(tmp_path, EARLY_READER)
    plain = first_line_then_close([DEFAULT_PYTHON, script], tmp_path)
    cap = tmp_path / "c.bin"
    traced = first_line_then_close([MEMTAP, "run", "-o", cap, "--python", DEFAULT_PYTHON,
                                    script], tmp_path)
    assert traced == plain == (b"one\n", 1), (plain, traced)
    stats = memtap_stats(cap)
    assert stats["complete"] is True and stats["exit"] == {"code": 1}, stats


FORKS_UNDER_A_LIMIT = """\
import os, subprocess, sys
pid = os.fork()
if pid == 0:
    keep = bytearray(3 * 2**20)  # @forked
    os._exit(0)
os.waitpid(pid, 0)
subprocess.run([sys.executable, "-c", "keep = bytearray(5 * 2**20)"], check=True)
"""


def test_children_followed_under_a_soft_address_space_limit(tmp_path):
    """Under `ulimit -S -v` each followed child maps a transport of its own
    (no room for its parent's as well) and memtap one per child: both are
    recorded, exactly (neither was, with 'cannot follow this child')."""
    if memtap_sanitized():
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    script = write_script(tmp_path, FORKS_UNDER_A_LIMIT)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (200 * 2**20, resource.RLIM_INFINITY))

    proc = subprocess.run([str(MEMTAP), "run", "-q", "--follow-fork", "-o",
                           str(tmp_path / "c.bin"), "--python", DEFAULT_PYTHON, str(script)],
                          cwd=str(tmp_path), env=clean_env(), capture_output=True,
                          timeout=TIMEOUT, preexec_fn=limit)
    assert proc.returncode == 0 and said(proc) == [], describe(proc)
    children = sorted(tmp_path.glob("c.*.bin"))
    assert len(children) == 2, describe(proc)
    found = sorted(max(r["bytes"] for r in memtap_stats(c)["top_locations"]) for c in children)
    assert found == [3 * 2**20 + 1, 5 * 2**20 + 1], found


OWN_LIMIT = """\
import resource
print(resource.getrlimit(resource.RLIMIT_AS))
resource.setrlimit(resource.RLIMIT_AS, (150 * 2**20, resource.RLIM_INFINITY))
print(resource.getrlimit(resource.RLIMIT_AS), resource.prlimit(0, resource.RLIMIT_AS))
keep = [bytearray(2**20) for _ in range(20)]  # @keep
print("allocated 20 MiB")
try:
    more = bytearray(200 * 2**20)
except MemoryError:
    print("MemoryError")
"""


def test_a_program_that_limits_its_own_address_space(tmp_path):
    """The program sets RLIMIT_AS for its own memory: the shim's 256 MiB of
    rings are not taken out of it (20 MiB raised MemoryError), and the
    program reads back what it set, as it does any limit it was given."""
    plain, traced, _ = compare(tmp_path, OWN_LIMIT)
    assert traced.stdout.splitlines()[-2:] == [b"allocated 20 MiB", b"MemoryError"]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (400 * 2**20, resource.RLIM_INFINITY))

    for p in (plain, traced):
        assert p.stdout.splitlines()[0] == b"(-1, -1)", p.stdout
    if memtap_sanitized():
        return  # AddressSanitizer's memtap cannot start under a ulimit -v
    script = tmp_path / "prog.py"
    given = [subprocess.run(cmd, cwd=str(tmp_path), env=clean_env(), capture_output=True,
                            timeout=TIMEOUT, preexec_fn=limit).stdout.splitlines()[0]
             for cmd in ([DEFAULT_PYTHON, str(script)],
                         [str(MEMTAP), "run", "-q", "-f", "-o", str(tmp_path / "l.bin"),
                          "--python", DEFAULT_PYTHON, str(script)])]
    assert given == [b"(%d, -1)" % (400 * 2**20)] * 2, given


SIGNALLED = """\
import os, signal, sys, time
got = []
def note(sig, frame):
    got.append(signal.Signals(sig).name)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGINT, signal.SIGQUIT,
          signal.SIGTERM):
    signal.signal(s, note)
open(sys.argv[1], "w").close()
deadline = time.time() + 20
while "SIGTERM" not in got and time.time() < deadline:
    time.sleep(0.01)
keep = bytearray(2**20)
print(" ".join(got))
"""


def test_signals_sent_to_memtap_reach_the_program_once(tmp_path):
    """What a supervisor sends the process it started (USR1 to reopen logs,
    TERM to stop, INT as a container's stop signal) reaches the program,
    once each; memtap is not killed by it with the program left running
    unrecorded (INT and QUIT were ignored: the program ran on)."""
    script = write_script(tmp_path, SIGNALLED)
    ready = tmp_path / "ready"
    cap = tmp_path / "c.bin"
    p = subprocess.Popen([str(MEMTAP), "run", "-q", "-o", str(cap), "--python",
                          DEFAULT_PYTHON, str(script), str(ready)], cwd=str(tmp_path),
                         env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + TIMEOUT
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.01)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGINT,
                signal.SIGQUIT, signal.SIGTERM):
        p.send_signal(sig)
        time.sleep(0.2)
    out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    assert out == b"SIGUSR1 SIGUSR2 SIGALRM SIGINT SIGQUIT SIGTERM\n", (out, err)
    stats = memtap_stats(cap)
    assert stats["complete"] is True and stats["exit"] == {"code": 0}, stats


def test_followed_children_into_dev_null(tmp_path):
    """-o /dev/null --follow-fork: the children's captures go there too, not
    into files beside it in /dev."""
    before = set(Path("/dev").glob("null.*"))
    _, traced, _ = compare(tmp_path, FORKS_UNDER_A_LIMIT, memtap_opts=("-q", "--follow-fork"),
                           out="/dev/null", expect_capture=False)
    made = set(Path("/dev").glob("null.*")) - before
    for p in made:
        p.unlink()
    assert not made and said(traced) == [], (made, describe(traced))


def test_a_limit_the_program_sets_for_its_children(tmp_path):
    """A shell sets ulimit -v for a child it forks: the child, which runs
    without memtap, gets that limit (it got 256 MiB more, for rings it does
    not have), and a hard limit and a legal soft one read and set as they
    would without memtap."""
    exe = tmp_path / "alloc"
    src = tmp_path / "alloc.c"
    src.write_text('#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
                   'int main(int c, char **v) { size_t n = (size_t)atoi(v[1]) << 20;\n'
                   '  char *p = malloc(n); if (!p) { puts("failed"); return 1; }\n'
                   '  memset(p, 1, n); puts("ok"); return 0; }\n')
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, timeout=TIMEOUT)
    for shell, out in (("ulimit -v 300000; ./alloc 400; ulimit -Sv; ulimit -Hv",
                        b"failed\n300000\n300000\n"),
                       ("ulimit -Sv 300000; ulimit -Hv 1000000; ulimit -Sv; ulimit -Hv; "
                        "ulimit -Sv 1000000 && ulimit -Sv", b"300000\n1000000\n1000000\n")):
        plain = run(["bash", "-c", shell], tmp_path)
        assert plain.stdout == out, describe(plain)
        traced = run([MEMTAP, "run", "-q", "-f", "-o", tmp_path / "c.bin", "bash", "-c", shell],
                     tmp_path)
        assert (traced.stdout, traced.returncode) == (out, plain.returncode), describe(traced)


SIGNALS_ITS_PARENT = """\
import os, signal, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
os.kill(os.getppid(), signal.SIGUSR1)  # "ready", to whoever started it
time.sleep(0.3)
print(len(got))
"""

ALARM_BEFORE_EXEC = """\
import os, signal, sys
signal.alarm(1)  # set by the process that becomes memtap
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_signals_from_the_program_and_an_inherited_alarm(tmp_path):
    """The program's own signal to its parent (memtap) does not come back to
    it; an alarm set before memtap was exec'd reaches the program, as it
    would have without memtap (it was swallowed)."""
    script = write_script(tmp_path, SIGNALS_ITS_PARENT)
    traced = run([MEMTAP, "run", "-q", "-o", tmp_path / "c.bin", "--python", DEFAULT_PYTHON,
                  script], tmp_path)
    assert (traced.returncode, traced.stdout) == (0, b"0\n"), describe(traced)
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(ALARM_BEFORE_EXEC)
    start = time.time()
    traced = run([DEFAULT_PYTHON, wrapper, MEMTAP, "run", "-q", "-f", "-o", tmp_path / "c.bin",
                  "sleep", "20"], tmp_path)
    assert traced.returncode == -signal.SIGALRM and time.time() - start < 15, describe(traced)


CHILDREN_LIMITS = """\
import os, resource, subprocess, sys
print("self", resource.getrlimit(resource.RLIMIT_AS)[0], flush=True)
# a child by vfork (subprocess without preexec_fn), one by fork and exec
subprocess.run([sys.executable, "-c", "import re; print('spawned', [l.split()[3] for l in open('/proc/self/limits') if l.startswith('Max address space')][0])"])
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-c", "print('forked', [l.split()[3] for l in open('/proc/self/limits') if l.startswith('Max address space')][0])"])
os.waitpid(pid, 0)
"""


def test_children_get_the_limit_the_program_has(tmp_path):
    """Under a soft ulimit -v memtap raised for the rings, a child that runs
    without the shim gets the limit as the program was given it, whether
    started by vfork (subprocess) or fork: 256 MiB more before."""
    if memtap_sanitized():
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    script = write_script(tmp_path, CHILDREN_LIMITS)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4000000 * 1024, resource.RLIM_INFINITY))

    out = []
    for cmd in ([DEFAULT_PYTHON, str(script)],
                [str(MEMTAP), "run", "-q", "-o", str(tmp_path / "c.bin"), "--python",
                 DEFAULT_PYTHON, str(script)]):
        p = subprocess.run(cmd, cwd=str(tmp_path), env=clean_env(), capture_output=True,
                           timeout=TIMEOUT, preexec_fn=limit)
        assert p.returncode == 0, describe(p)
        out.append(p.stdout)
    assert out[0] == out[1] == b"self 4096000000\nspawned 4096000000\nforked 4096000000\n", out


HANGUP = """\
import signal, sys, time
def hup(sig, frame):
    open(sys.argv[1], "w").write("hangup")
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
time.sleep(20)
"""


def memtap_on_a_terminal(tmp_path, text, mark):
    """`memtap run` of a script (text; argv[1] = mark) in a new session
    whose terminal is a pty, memtap leading it; once the script printed
    "ready": (pid, the pty's master, what it printed, the deadline)."""
    import pty
    script = write_script(tmp_path, text)
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(str(tmp_path))
        os.execve(str(MEMTAP), [str(MEMTAP), "run", "-q", "-o", str(tmp_path / "c.bin"),
                                "--python", DEFAULT_PYTHON, str(script), str(mark)],
                  clean_env())
    seen = b""
    deadline = time.time() + TIMEOUT
    while b"ready" not in seen and time.time() < deadline:
        try:
            seen += os.read(master, 1024)
        except OSError:
            break
    return pid, master, seen, deadline


def test_a_terminal_hangup_when_memtap_leads_the_session(tmp_path):
    """memtap run as the session's leader (a terminal or ssh runs it
    directly): the kernel tells the leader alone of the hangup, and memtap
    passes it on (it kept it, and the program ran on)."""
    mark = tmp_path / "got"
    pid, master, seen, deadline = memtap_on_a_terminal(tmp_path, HANGUP, mark)
    os.close(master)  # the hangup
    while time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.05)
    assert mark.exists() and mark.read_text() == "hangup", seen
    assert time.time() < deadline


CTRL_C = """\
import signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda s, f: got.append(s))
print("ready", flush=True)
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # a second one, passed on by memtap, would be here by now
open(sys.argv[1], "w").write(str(len(got)))
"""


def test_ctrl_c_at_the_terminal_reaches_the_program(tmp_path):
    """Ctrl-C goes to the terminal's foreground process group, the program
    in it: the program handles it and ends, and memtap, which now catches
    SIGINT to pass on one a process sends it, survives this one and
    finishes the capture. (Passing it on too would not show here: the
    kernel merges a signal sent again while it is pending.)"""
    mark = tmp_path / "got"
    pid, master, seen, deadline = memtap_on_a_terminal(tmp_path, CTRL_C, mark)
    os.write(master, b"\x03")  # Ctrl-C
    while time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        try:
            os.read(master, 1024)
        except OSError:
            time.sleep(0.05)
    os.close(master)
    assert mark.exists() and mark.read_text() == "1", seen
    stats = memtap_stats(tmp_path / "c.bin")
    assert stats["complete"] is True and stats["exit"] == {"code": 0}, stats
