"""A traced process that exec's another program: the capture is the program
it became (launcher scripts such as pyenv's shims, `#!/usr/bin/env python3`,
a program re-exec'ing itself), while a child that exec's a program stays
unrecorded, unless --follow-fork gives it a capture of its own. Real programs
under the real shim; numbers exact."""

import os
import re
import shutil
import stat
import subprocess

import pytest

from conftest import (DEFAULT_PYTHON, MEMTAP, PROGRAMS, assert_location, clean_env,
                      find_locations, line_of, memtap_sanitized, memtap_stats,
                      python_version_of,
                      strip_memtap_lines)

PYVER = ".".join(map(str, python_version_of(DEFAULT_PYTHON)))

BIG = """\
import sys
keep = bytearray(30 * 2**20)  # @big
print("done", len(keep))
"""


def write_exec(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def python_only(stats):
    """No location of a native frame: what the launchers (sh, env) allocated
    is not in the capture, only the Python program's (no --native)."""
    return [r for r in stats["top_locations"]
            if not r["file"] and r["function"] != "[no stack recorded]"] == []


def run(tmp_path, target, *flags, env=None):
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(MEMTAP), "run", "-q", "-f", "-o", str(out), *flags,
                           *map(str, target)], cwd=tmp_path, capture_output=True,
                          env=env or clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, memtap_stats(out)


def test_a_launcher_script_records_the_python_it_execs(tmp_path):
    script = tmp_path / "big.py"
    script.write_text(BIG)
    # Two launchers deep, as pyenv's shim (sh) exec's pyenv (sh), which
    # exec's the interpreter.
    inner = write_exec(tmp_path / "inner.sh",
                       '#!/bin/sh\nexec "%s" "$@"\n' % DEFAULT_PYTHON)
    outer = write_exec(tmp_path / "outer.sh", '#!/bin/sh\nexec "%s" "$@"\n' % inner)
    for flags in ([], ["--native"], ["--aggregate"]):
        proc, stats = run(tmp_path, [outer, script], *flags)
        assert proc.stdout == b"done %d\n" % (30 * 2**20)
        assert strip_memtap_lines(proc.stderr) == b""
        assert stats["python_version"] == PYVER, flags
        # the program the launchers became, as it was started
        assert stats["command"] == "%s %s" % (DEFAULT_PYTHON, script)
        assert stats["complete"] and stats["exit"]["code"] == 0
        if flags == ["--native"]:  # the innermost frame is CPython's own
            assert (30 * 2**20 + 1, 1) in [(r["bytes"], r["count"])
                                           for r in stats["top_locations"]]
        else:
            assert_location(stats, script.name, line_of(BIG, "big"), 30 * 2**20 + 1)
            assert python_only(stats), stats["top_locations"]
        # Nothing of the shells' own heaps: the capture is Python's alone.
        assert stats["peak_memory_bytes"] < 40 * 2**20


def test_an_env_shebang_records_the_python_it_finds(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(DEFAULT_PYTHON)
    # The assignment makes env(1) allocate (setenv) before it exec's.
    script = write_exec(tmp_path / "big", "#!/usr/bin/env -S WHERE=env python3\n" + BIG)
    env = clean_env({"PATH": "%s:/usr/bin:/bin" % bindir})
    proc, stats = run(tmp_path, [script], env=env)
    assert stats["python_version"] == PYVER
    assert_location(stats, script.name, line_of("#!\n" + BIG, "big"), 30 * 2**20 + 1)
    assert python_only(stats), stats["top_locations"]


def test_a_program_that_execs_itself_is_recorded_from_the_exec(tmp_path):
    first = """\
import os, sys
gone = bytearray(50 * 2**20)  # @gone
os.execv(sys.executable, [sys.executable, sys.argv[1]])
"""
    second = tmp_path / "second.py"
    second.write_text(BIG)
    script = tmp_path / "first.py"
    script.write_text(first)
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script, second])
    assert proc.stdout == b"done %d\n" % (30 * 2**20)
    assert find_locations(stats, script.name, line_of(first, "gone")) == []
    assert_location(stats, second.name, line_of(BIG, "big"), 30 * 2**20 + 1)
    assert stats["peak_memory_bytes"] < 40 * 2**20


def test_a_failed_exec_goes_on_recording_the_program(tmp_path):
    text = """\
import os
before = bytearray(20 * 2**20)  # @before
try:
    os.execv("/nonexistent/program", ["program"])
except OSError:
    pass
after = bytearray(10 * 2**20)  # @after
"""
    script = tmp_path / "prog.py"
    script.write_text(text)
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script])
    assert_location(stats, script.name, line_of(text, "before"), 20 * 2**20 + 1)
    assert_location(stats, script.name, line_of(text, "after"), 10 * 2**20 + 1)


def memtap_lines(proc):
    return [l for l in proc.stderr.decode().splitlines() if l.startswith("memtap:")]


def test_a_program_without_the_shim_is_said(tmp_path):
    # A statically linked program never loads the shim; a launcher that
    # replaces LD_PRELOAD execs a program that runs without it. Neither can
    # be recorded, and memtap says so (even with -q) instead of nothing.
    src = tmp_path / "static.c"
    src.write_text("#include <stdlib.h>\nint main(void) { return malloc(100) ? 5 : 6; }\n")
    exe = tmp_path / "static"
    if subprocess.run(["cc", "-static", "-o", str(exe), str(src)],
                      capture_output=True).returncode != 0:
        pytest.skip("no static libc here")
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(MEMTAP), "run", "-q", "-o", str(out), str(exe)],
                          cwd=tmp_path, capture_output=True, env=clean_env(), timeout=120)
    assert proc.returncode == 5
    assert memtap_lines(proc) == [
        "memtap: the program never started memtap's shim (a statically linked or setuid "
        "program, its LD_PRELOAD replaced, or the shim could not set up): nothing was "
        "recorded"], \
        proc.stderr

    # the program execs a static one (that lives long enough to be seen):
    # said, and nothing after recorded
    src.write_text("#include <stdlib.h>\n#include <unistd.h>\n"
                   "int main(void) { usleep(300000); return malloc(100) ? 5 : 6; }\n")
    subprocess.run(["cc", "-static", "-o", str(exe), str(src)], check=True)
    launcher = write_exec(tmp_path / "launch-static", "#!/bin/sh\nexec %s\n" % exe)
    proc = subprocess.run([str(MEMTAP), "run", "-q", "-o", str(out), "-f", str(launcher)],
                          cwd=tmp_path, capture_output=True, env=clean_env(), timeout=120)
    assert proc.returncode == 5
    assert memtap_lines(proc) == [
        "memtap: the program exec'd '%s', which runs without memtap's shim (LD_PRELOAD "
        "replaced, a statically linked or setuid program): not recorded from there on"
        % exe], proc.stderr

    # a launcher that empties LD_PRELOAD before it execs: the shim comes
    # back with the exec (memtap's variables are the process's, not the
    # environment's its program builds), and the capture goes on
    script = tmp_path / "big.py"
    script.write_text("import time\n" + BIG + "time.sleep(0.3)\n")
    launcher = write_exec(tmp_path / "launch", "#!/bin/sh\nexport LD_PRELOAD=\n"
                          "exec %s %s\n" % (DEFAULT_PYTHON, script))
    proc, stats = run(tmp_path, [launcher])
    assert proc.stdout == b"done %d\n" % (30 * 2**20)
    assert memtap_lines(proc) == [], proc.stderr  # -q: the exec is not news
    assert_location(stats, script.name, line_of(BIG, "big") + 1, 30 * 2**20 + 1)
    # the usual case says nothing of the kind
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script])
    assert memtap_lines(proc) == [], proc.stderr


def test_a_child_that_execs_is_not_recorded_without_follow_fork(tmp_path):
    text = """\
import subprocess, sys
mine = bytearray(10 * 2**20)  # @mine
out = subprocess.run([sys.executable, "-c", "b = bytearray(60 * 2**20); print(len(b))"],
                     capture_output=True, check=True)
print(out.stdout.decode().strip(), out.stderr.decode().strip())
"""
    script = tmp_path / "prog.py"
    script.write_text(text)
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script])
    assert proc.stdout == b"%d \n" % (60 * 2**20)
    assert_location(stats, script.name, line_of(text, "mine"), 10 * 2**20 + 1)
    assert stats["peak_memory_bytes"] < 60 * 2**20
    assert [p.name for p in tmp_path.glob("*.bin")] == ["capture.bin"]


def test_an_exec_while_another_thread_allocates(tmp_path):
    # The exec ends the other thread wherever it is, often inside a hook with
    # an event number taken and never written: the collector must not wait
    # for it (the new program waits for the collector).
    first = """\
import os, sys, threading
def churn():
    while True:
        b = [bytes(100 + i % 50) for i in range(1000)]
threading.Thread(target=churn, daemon=True).start()
for i in range(200):
    b = [bytes(200) for i in range(1000)]
os.execv(sys.executable, [sys.executable, sys.argv[1]])
"""
    second = tmp_path / "second.py"
    second.write_text(BIG)
    script = tmp_path / "first.py"
    script.write_text(first)
    for _ in range(3):
        proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script, second])
        assert strip_memtap_lines(proc.stderr) == b""
        assert b"memtap:" not in proc.stderr, proc.stderr
        assert_location(stats, second.name, line_of(BIG, "big"), 30 * 2**20 + 1)
        assert stats["duration_ms"] < 1500, stats["duration_ms"]


def test_an_exec_ends_a_thread_inside_a_hook(tmp_path):
    # tests/programs/stuck_free.c, preloaded after the shim, keeps a thread
    # inside memtap's free hook (its event number taken, its record never
    # written) when the main thread exec's: the collector must not wait for
    # that number, the new program waits for the collector.
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH"
    lib = tmp_path / "stuck_free.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib),
                    str(PROGRAMS / "stuck_free.c")], check=True, timeout=120)
    first = """\
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
threading.Thread(target=libc.free, args=(0x5107,), daemon=True).start()
time.sleep(0.2)
os.execv(sys.executable, [sys.executable, sys.argv[1]])
"""
    second = tmp_path / "second.py"
    second.write_text(BIG)
    script = tmp_path / "first.py"
    script.write_text(first)
    # Preloaded after the shim, in the program only (not in memtap: a
    # sanitizer build of memtap must come first in its own process).
    launch = '''exec env LD_PRELOAD="$LD_PRELOAD:%s" "%s" "%s" "%s"''' % (
        lib, DEFAULT_PYTHON, script, second)
    proc, stats = run(tmp_path, ["/bin/sh", "-c", launch])
    assert proc.stderr == b"", proc.stderr
    assert_location(stats, second.name, line_of(BIG, "big"), 30 * 2**20 + 1)
    assert stats["duration_ms"] < 1500, stats["duration_ms"]


def test_memtap_says_which_program_it_recorded(tmp_path):
    script = tmp_path / "big.py"
    script.write_text(BIG)
    launcher = write_exec(tmp_path / "launch.sh", '#!/bin/sh\nexec "%s" "$@"\n' % DEFAULT_PYTHON)
    out = tmp_path / "capture.bin"
    proc = subprocess.run([str(MEMTAP), "run", "-o", str(out), str(launcher), str(script)],
                          cwd=tmp_path, capture_output=True, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines[0] == ("memtap: the program exec'd '%s'; the capture records it from "
                        "there on" % os.path.realpath(DEFAULT_PYTHON)), lines
    assert lines[1].startswith("memtap: wrote "), lines
    # without an exec, no such line
    proc = subprocess.run([str(MEMTAP), "run", "-f", "-o", str(out), "--python",
                           DEFAULT_PYTHON, str(script)], cwd=tmp_path, capture_output=True,
                          env=clean_env(), timeout=120)
    assert [l for l in proc.stderr.decode().splitlines() if "exec" in l] == []


FORKS = """\
import os
keep = bytearray(30 * 2**20)  # @big
pid = os.fork()
if pid == 0:
    child = bytearray(7 * 2**20)  # @child
    os._exit(0)
os.waitpid(pid, 0)
print("parent", len(keep))
"""


def test_children_of_the_program_a_launcher_execs_are_followed(tmp_path):
    # With --follow-fork, children announce themselves to the collector by
    # a socket name, which the exec'd program still has (a descriptor would
    # not survive the exec).
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    launcher = write_exec(tmp_path / "launch.sh",
                          '#!/bin/sh\nexec "%s" "$@"\n' % DEFAULT_PYTHON)
    proc, stats = run(tmp_path, [launcher, script], "--follow-fork")
    assert proc.stdout == b"parent %d\n" % (30 * 2**20)
    assert_location(stats, script.name, line_of(FORKS, "big"), 30 * 2**20 + 1)
    assert not find_locations(stats, script.name, line_of(FORKS, "child"))
    children = list(tmp_path.glob("capture.*.bin"))
    assert len(children) == 1, children
    child = memtap_stats(children[0])
    assert child["complete"]
    assert child["pid"] == int(children[0].name.split(".")[1])
    assert_location(child, script.name, line_of(FORKS, "child"), 7 * 2**20 + 1)


KID = """\
import sys
kid = bytearray(int(sys.argv[1]) * 2**20)  # @kid
print("kid", len(kid))
"""

SPAWNS = """\
import os, subprocess, sys
mine = bytearray(10 * 2**20)  # @mine
# vfork and exec (subprocess), then fork, work, and exec
subprocess.run([sys.executable, "kid.py", "11"], check=True)
pid = os.fork()
if pid == 0:
    before = bytearray(40 * 2**20)  # @before
    os.execv(sys.executable, [sys.executable, "kid.py", "13"])
os.waitpid(pid, 0)
print("parent", sys.executable)
"""


def test_follow_fork_records_the_programs_children_exec(tmp_path):
    # Each child that runs a program gets a capture of its own, which is
    # that program (a forked child that exec's starts its capture over).
    (tmp_path / "kid.py").write_text(KID)
    script = tmp_path / "prog.py"
    script.write_text(SPAWNS)
    kid_line = line_of(KID, "kid")
    for flags in ([], ["--aggregate"]):
        for old in tmp_path.glob("*.bin"):
            old.unlink()
        proc, stats = run(tmp_path, ["--follow-fork", *flags, "--python", DEFAULT_PYTHON,
                                     script])
        out = proc.stdout.decode().splitlines()
        assert out[:2] == ["kid %d" % (11 * 2**20), "kid %d" % (13 * 2**20)]
        exe = out[2].split(" ", 1)[1]
        assert out[2] == "parent " + exe
        assert_location(stats, script.name, line_of(SPAWNS, "mine"), 10 * 2**20 + 1)
        assert not find_locations(stats, "kid.py", kid_line), flags
        assert not find_locations(stats, script.name, line_of(SPAWNS, "before")), flags
        assert stats["peak_memory_bytes"] < 20 * 2**20, flags  # start-up ~4.4 MiB
        children = sorted(tmp_path.glob("capture.*.bin"), key=lambda p: p.stat().st_mtime)
        assert len(children) == 2, (flags, children)
        sizes = []
        for child in children:
            cs = memtap_stats(child)
            # each child's capture names the program it ran
            assert cs["command"] in ("%s kid.py 11" % exe, "%s kid.py 13" % exe), cs

            assert cs["pid"] == int(child.name.split(".")[1]) and cs["complete"], flags
            assert cs["python_version"] == PYVER
            kid = find_locations(cs, "kid.py", kid_line)
            assert len(kid) == 1 and kid[0]["count"] == 1, (flags, kid)
            sizes.append(kid[0]["bytes"])
            assert cs["command"].endswith(" %d" % (kid[0]["bytes"] // 2**20))
            # the forked child's work before its exec is not in its capture
            assert not find_locations(cs, script.name, line_of(SPAWNS, "before"))
            assert cs["peak_memory_bytes"] < 13 * 2**20 + 8 * 2**20, flags
        assert sorted(sizes) == [11 * 2**20 + 1, 13 * 2**20 + 1], flags


QUICK_EXECS = """\
import os, threading
keep = []
def churn():  # keeps memtap busy while the children come and go
    for _ in range(20000):
        keep.append(bytearray(700))
threads = [threading.Thread(target=churn) for _ in range(3)]
for t in threads:
    t.start()
codes = []
for i in range(100):
    pid = os.fork()
    if pid == 0:
        x = [bytearray(900) for _ in range(100)]
        os.execv("/bin/sh", ["sh", "-c", "exit %d" % (i % 7)])
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
for t in threads:
    t.join()
print(codes)
"""


def test_follow_fork_children_that_exec_and_end_at_once(tmp_path):
    """A child that execs a program that ends at once (`sh -c 'exit 3'`):
    its note of the exec could reach memtap after it saw the child end and
    closed its capture, which then held the Python part with sh's exit code,
    and the note a second capture at the same name ("file exists")."""
    script = tmp_path / "prog.py"
    script.write_text(QUICK_EXECS)
    # without -f: a second capture at a child's name is refused, and said
    proc = subprocess.run([str(MEMTAP), "run", "-q", "-o", "capture.bin", "--follow-fork",
                           "--python", DEFAULT_PYTHON, str(script)], cwd=tmp_path,
                          capture_output=True, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "%s\n" % [i % 7 for i in range(100)]
    assert proc.stderr == b"", proc.stderr
    children = list(tmp_path.glob("capture.*.bin"))
    assert len(children) == 100
    seen = []
    for child in children:
        cs = memtap_stats(child)
        assert cs["complete"] and cs["python_version"] is None, cs
        assert cs["command"] == "sh -c exit %d" % cs["exit"]["code"], cs
        seen.append(cs["exit"]["code"])
    assert sorted(seen) == sorted(i % 7 for i in range(100))


STDERR_BESIDE_CHILDREN = """\
import subprocess, sys, threading
done = False
def talk():
    n = 0
    while not done:
        sys.stderr.write("program line %d\\n" % n)
        n += 1
t = threading.Thread(target=talk)
t.start()
for _ in range(20):
    subprocess.run(["true"])
done = True
t.join()
"""


def test_memtaps_lines_stay_whole_beside_the_programs(tmp_path):
    """memtap's lines while the program runs (a child recorded) go in one
    write each: written a character at a time, the program's own lines,
    on the same stderr, came out with memtap's characters in them."""
    script = tmp_path / "prog.py"
    script.write_text(STDERR_BESIDE_CHILDREN)
    for _ in range(3):
        for old in tmp_path.glob("*.bin"):
            old.unlink()
        proc = subprocess.run([str(MEMTAP), "run", "-o", "capture.bin", "--follow-fork",
                               "--python", DEFAULT_PYTHON, str(script)], cwd=tmp_path,
                              capture_output=True, env=clean_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stderr.decode().splitlines()
        ours = [l for l in lines if l.startswith("memtap: ")]
        assert len([l for l in ours if re.fullmatch(
            r"memtap: child \d+ recorded in 'capture\.\d+\.bin'", l)]) == 20, ours
        assert all(re.fullmatch(r"program line \d+", l) for l in lines if l not in ours), [
            l for l in lines if l not in ours and not re.fullmatch(r"program line \d+", l)][:5]


GIVES_UP_ROOT = """\
import os
os.setgid(65534)
os.setuid(65534)
pid = os.fork()
if pid == 0:
    keep = bytearray(5 * 2**20 + 7)  # @child
    os._exit(0)
os.waitpid(pid, 0)
print("done")
"""


def test_follow_fork_after_the_program_gave_up_root(tmp_path):
    """A server started as root forks its workers once it runs as another
    user: memtap, root too, takes their announcements."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    script = tmp_path / "prog.py"
    script.write_text(GIVES_UP_ROOT)
    os.chmod(tmp_path, 0o755)
    proc, _ = run(tmp_path, ["--follow-fork", "--python", DEFAULT_PYTHON, script])
    assert proc.stdout == b"done\n" and proc.stderr == b"", proc.stderr
    children = list(tmp_path.glob("capture.*.bin"))
    assert len(children) == 1, children
    assert_location(memtap_stats(children[0]), "prog.py", line_of(GIVES_UP_ROOT, "child"),
                    5 * 2**20 + 7 + 1)


POOL_SPAWN = """\
import multiprocessing as mp

def work(n):
    return len(bytes(n * 1000))  # @work

if __name__ == "__main__":
    with mp.get_context("spawn").Pool(2) as pool:
        print(sum(pool.map(work, [1000] * 6)))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_follow_fork_records_spawned_multiprocessing_workers(tmp_path, method):
    # forkserver: a spawned server process forks the workers
    script = tmp_path / "prog.py"
    script.write_text(POOL_SPAWN.replace('"spawn"', repr(method)))
    proc, stats = run(tmp_path, ["--follow-fork", "--python", DEFAULT_PYTHON, script])
    assert proc.stdout == b"6000000\n"
    line = line_of(POOL_SPAWN, "work")
    assert not find_locations(stats, script.name, line)
    found = []
    for child in tmp_path.glob("capture.*.bin"):
        cs = memtap_stats(child)
        found += [(l["bytes"], l["count"]) for l in find_locations(cs, script.name, line)]
    # six bytes(1,000,000) objects among the two workers: 1,000,033 bytes each
    assert sum(c for _, c in found) == 6 and {b // c for b, c in found} == {1000033}, found


def test_a_python_named_launcher_is_resolved_not_run(tmp_path):
    # `memtap run python3 x.py` where python3 is a launcher (pyenv's shim):
    # memtap runs the interpreter it finds, as for `memtap run x.py`, so the
    # launcher's shells are no children of the program (--follow-fork).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_exec(bindir / "python3", '#!/bin/sh\nwhere=$(echo sub)\nexec "%s" "$@"\n'
               % DEFAULT_PYTHON)
    script = tmp_path / "big.py"
    script.write_text(BIG)
    env = clean_env({"PATH": "%s:/usr/bin:/bin" % bindir})
    proc, stats = run(tmp_path, ["--follow-fork", "python3", script], env=env)
    assert proc.stdout == b"done %d\n" % (30 * 2**20)
    assert list(tmp_path.glob("capture.*.bin")) == []
    assert_location(stats, script.name, line_of(BIG, "big"), 30 * 2**20 + 1)
    exe = subprocess.run([DEFAULT_PYTHON, "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert stats["command"] == "%s %s" % (exe, script)


def test_the_capture_names_the_program_the_process_became(tmp_path):
    # After an exec the capture is the new program's: its header command is
    # the new command line (default and --aggregate).
    text = ("import os, sys\nkeep = bytearray(10**6)\n"
            "os.execv(sys.executable, [sys.executable, '-c', 'b = bytearray(3 * 2**20)', 'x y'])\n")
    script = tmp_path / "prog.py"
    script.write_text(text)
    for mode in ([], ["--aggregate"]):
        proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, *mode, script])
        assert stats["command"].endswith(" -c b = bytearray(3 * 2**20) x y"), stats["command"]
        assert not stats["command"].endswith("prog.py")


ENVIRONMENT = """\
import os, subprocess, sys
print(sorted(k for k in os.environ if "PRELOAD" in k or "MEMTAP" in k))
# a child through fork and exec, one through posix_spawn (os.system), and
# a bash, which has setenv and getenv of its own
subprocess.run(["env"], check=True)
os.system("env | sort | grep -c . >/dev/null; echo system $?")
subprocess.run(["bash", "-c", 'echo "bash [$LD_PRELOAD]"; env | grep -c MEMTAP_SHM'])
sys.stdout.flush()
keep = bytearray(3 * 2**20)  # @keep
if len(sys.argv) == 1:  # the program itself execs: recorded on, and clean
    os.execv(sys.executable, [sys.executable, __file__, "again"])
"""


@pytest.mark.parametrize("preload", ["", "/lib/x86_64-linux-gnu/libz.so.1",
                                     # as written, spaces and empty entries kept
                                     " /lib/x86_64-linux-gnu/libz.so.1  "
                                     "/lib/x86_64-linux-gnu/libm.so.6::"],
                         ids=["no-preload", "user-preload", "user-preload-list"])
def test_children_and_the_program_see_the_environment_they_would(tmp_path, preload):
    # Without --follow-fork nothing of memtap's reaches a child (an ASan
    # program refuses a library preloaded before its runtime; `env` prints
    # what it would), nor the program's own environment; a user's own
    # LD_PRELOAD stays; the program's exec of another program is recorded.
    if preload and memtap_sanitized():
        pytest.skip("AddressSanitizer's memtap must come first in the library list")
    script = tmp_path / "prog.py"
    script.write_text(ENVIRONMENT)
    env = clean_env({"LD_PRELOAD": preload} if preload else None)
    plain = subprocess.run([DEFAULT_PYTHON, str(script)], cwd=tmp_path, env=env,
                           capture_output=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script], env=env)
    assert proc.stdout == plain.stdout
    assert b"MEMTAP_SHM" not in proc.stdout and b"libmemtap" not in proc.stdout
    # the capture is the program the exec made, which the shim recorded
    assert stats["command"].endswith("prog.py again"), stats["command"]
    assert_location(stats, "prog.py", line_of(ENVIRONMENT, "keep"), 3 * 2**20 + 1)


EXEC_THEN_FORK = """\
import os, sys
if len(sys.argv) == 1:
    os.execv(sys.executable, [sys.executable, __file__, "again"])
pid = os.fork()
if pid == 0:
    keep = bytearray(4 * 2**20)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_child_forked_after_an_exec_has_the_new_command(tmp_path):
    # its capture names the program its parent is now, not the one before
    script = tmp_path / "prog.py"
    script.write_text(EXEC_THEN_FORK)
    proc, stats = run(tmp_path, ["--python", DEFAULT_PYTHON, script], "--follow-fork")
    assert stats["command"].endswith("prog.py again"), stats["command"]
    [child] = [p for p in tmp_path.glob("capture.*.bin")]
    assert memtap_stats(child)["command"] == stats["command"]


REEXEC_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long rss_kib(void)
{
    char line[256]; long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kib = atol(line + 6);
    if (f) fclose(f);
    return kib;
}

/* the environment as the kernel gave it, saved before any constructor */
static char **saved_environment(void)
{
    static char buf[1 << 16], *env[512];
    int fd = open("/proc/self/environ", O_RDONLY), n = 0;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    for (char *p = buf; len > 0 && p < buf + len && n < 511; p += strlen(p) + 1)
        env[n++] = p;
    env[n] = NULL;
    return env;
}

int main(int argc, char **argv)
{
    int gen = argc > 1 ? atoi(argv[1]) : 0;
    const char *pre = getenv("LD_PRELOAD");
    printf("generation %d sees LD_PRELOAD %s\n", gen, pre ? pre : "(none)");
    fflush(stdout);
    if (gen == 0) {  /* failed execs cost nothing that stays */
        long before = rss_kib();
        char *no[] = {"/nonexistent/x", NULL};
        for (int i = 0; i < 20000; i++)
            execv(no[0], no);
        printf("failed execs kept %s\n", rss_kib() - before < 4096 ? "little" : "a lot");
        fflush(stdout);
    }
    char *keep = malloc(1000000 + gen);  /* one per generation, kept */
    keep[0] = 1;
    if (gen == 2)
        return 0;
    char next[16];
    snprintf(next, sizeof next, "%d", gen + 1);
    char *args[] = {argv[0], next, NULL};
    if (gen == 0)  /* by execveat, with the environment the kernel gave */
        execveat(AT_FDCWD, "/proc/self/exe", args, saved_environment(), 0);
    else
        execve("/proc/self/exe", args, saved_environment());
    return 9;
}
"""


def test_reexecs_through_execveat_and_a_saved_environment(tmp_path):
    # execveat, and an environment read back from /proc/self/environ
    # (which holds the shim's entry already): each generation is recorded,
    # none sees LD_PRELOAD, and failed execs give back what they took
    src = tmp_path / "reexec.c"
    src.write_text(REEXEC_C)
    exe = tmp_path / "reexec"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, timeout=120)
    proc, stats = run(tmp_path, [exe])
    assert proc.stdout.decode().splitlines() == [
        "generation 0 sees LD_PRELOAD (none)", "failed execs kept little",
        "generation 1 sees LD_PRELOAD (none)", "generation 2 sees LD_PRELOAD (none)"], proc.stdout
    assert stats["command"].endswith("reexec 2"), stats["command"]
    # the last generation's block (main also owns stdio's buffer there)
    big = [r["bytes"] for r in stats["top_locations"] if r["bytes"] >= 1000000]
    assert len(big) == 1 and 1000002 <= big[0] < 1000002 + 8192, big
