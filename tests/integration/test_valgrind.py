"""valgrind memcheck on the reader (issue 6): every report command over real
captures — Python, --native numpy with libdw symbolization, a C++ program,
an aggregate capture, and a capture cut in the middle — with no invalid read
or write, no use of uninitialised memory and no definite leak.

valgrind is one of the Debian packages `make` installs: the tests fail, not
skip, without it.  The ASan/UBSan build (`make sanitize`) covers the same
code paths differently; memcheck also sees uninitialised reads, which ASan
does not.

`make test` runs a quick set of commands per capture (about 30 s);
`make sanitize` runs every command (MEMTAP_VALGRIND=full).
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import MEMTAP, PROGRAMS, TIMEOUT, clean_env, memtap_run


def _sanitized():
    """An ASan build cannot run under valgrind; `make sanitize` runs this
    file again on the plain build after its ASan pass."""
    ldd = subprocess.run(["ldd", str(MEMTAP)], capture_output=True, text=True)
    return "libasan" in ldd.stdout


pytestmark = pytest.mark.skipif(_sanitized(), reason="ASan build (make sanitize runs "
                                "this file on the plain build too)")

PROG = """\
import numpy as np
KEEP = [np.ones(100_000) for _ in range(3)]
for i in range(2000):
    tmp = bytearray(1000 + i)
del tmp
LEAK = [bytes(5000) for _ in range(50)]
"""

COMMANDS = [
    ["stats"], ["stats", "--json"],
    ["summary"], ["summary", "--leaks", "--json"], ["summary", "--temporary"],
    ["tree"], ["table", "-o", "{out}.html"], ["flamegraph", "-o", "{out}.html"],
    ["flamegraph", "--inverted", "--split-threads", "-o", "{out}.html"],
    ["export", "--format", "collapsed"], ["export", "--format", "austin"],
    ["export", "--format", "speedscope"], ["export", "--format", "csv"],
    ["parse"],
]
QUICK = [["stats", "--json"], ["summary", "--temporary"], ["tree"],
         ["flamegraph", "-o", "{out}.html"], ["export", "--format", "austin"], ["parse"]]
# Symbolizing numpy and libpython with libdw takes ~5 s per command under memcheck.
QUICK_NATIVE = [["stats"], ["flamegraph", "-o", "{out}.html"]]
FULL = os.environ.get("MEMTAP_VALGRIND") == "full"
# What an aggregate capture cannot answer (every event is needed), refused cleanly.
NEEDS_EVENTS = {"--temporary"}


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    assert shutil.which("valgrind"), "valgrind is not installed (make deps installs it)"
    d = tmp_path_factory.mktemp("vg")
    (d / "prog.py").write_text(PROG)
    caps = {}
    for name, opts in (("python", []), ("native", ["--native"]),
                       ("aggregate", ["--aggregate"])):
        cap = d / (name + ".bin")
        proc = memtap_run(["-o", cap, *opts, "--python", sys.executable,
                           d / "prog.py"], cwd=d)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        caps[name] = cap
    cxx = shutil.which("c++") or shutil.which("g++")
    exe = d / "cxx_alloc"
    subprocess.run([cxx, "-O0", "-g", "-o", str(exe), str(PROGRAMS / "cxx_alloc.cpp")],
                   check=True, timeout=TIMEOUT)
    caps["cxx"] = d / "cxx.bin"
    proc = memtap_run(["-o", caps["cxx"], "--native", exe], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    data = caps["native"].read_bytes()
    caps["cut"] = d / "cut.bin"
    caps["cut"].write_bytes(data[:len(data) * 2 // 3])
    return d, caps


@pytest.mark.parametrize("which", ["python", "native", "aggregate", "cxx", "cut"])
def test_reader_is_memcheck_clean(captures, which):
    d, caps = captures
    failures = []
    commands = COMMANDS if FULL else QUICK_NATIVE if which == "native" else QUICK
    for cmd in commands:
        if which == "aggregate" and NEEDS_EVENTS & set(cmd):
            expect = (1,)
        else:
            expect = (0,)
        args = [a.format(out=d / ("%s-%s" % (which, cmd[0]))) for a in cmd]
        proc = subprocess.run(
            ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
             "--errors-for-leak-kinds=definite",
             str(MEMTAP), *args, str(caps[which])],
            capture_output=True, timeout=TIMEOUT * 3, env=clean_env({"NO_COLOR": "1"}))
        if proc.returncode not in expect or b"==" in proc.stderr:
            failures.append("memtap %s %s: exit %d\n%s" % (
                " ".join(args), caps[which].name, proc.returncode,
                proc.stderr.decode(errors="replace")[-3000:]))
    assert not failures, "\n\n".join(failures)
