"""The pytest plugin (issue 7), from the pip-installed package: pytest runs
in a subprocess on a sample test file; limit_memory and limit_leaks fail
the tests over their limits (with the top locations in the message) and pass
those under; the summary lists the tests that allocated most; the same under
pytest-xdist workers."""

import textwrap

import pytest

from conftest import line_of
from memtap_pkg import pkg  # noqa: F401  (fixture)

SAMPLE = textwrap.dedent("""\
    import pytest

    KEPT = []

    @pytest.mark.limit_memory("24 MB")
    def test_over_memory():
        b = bytearray(30 * 2**20)  # @over
        del b

    @pytest.mark.limit_memory("24 MB")
    def test_under_memory():
        b = bytearray(20 * 10**6)
        del b

    @pytest.mark.limit_memory("10 MiB")
    def test_binary_units():
        b = bytearray(10 * 2**20 - 1)  # 10 MiB exactly: pytest's own work is not counted

    @pytest.mark.limit_leaks(0)
    def test_leaks_nothing():
        x = 1 + 1

    @pytest.mark.limit_leaks("1 MB")
    def test_leaks_too_much():
        KEPT.append(bytearray(2 * 10**6))  # @leak

    @pytest.mark.limit_leaks("1 MB")
    def test_leaks_little():
        KEPT.append(bytearray(10**5))
        tmp = bytearray(5 * 10**6)

    def test_no_marker():
        b = bytearray(40 * 2**20)  # the biggest: first in the summary
    """)


def run_pytest(pkg, tmp_path, *args):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    return pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_sample.py", *args], cwd=tmp_path, timeout=300)


def check(proc, tmp_path):
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "2 failed, 5 passed" in out, out
    for name in ("test_over_memory", "test_leaks_too_much"):
        assert "FAILED test_sample.py::%s" % name in out, out
    for name in ("test_under_memory", "test_binary_units", "test_leaks_little", "test_no_marker",
                 "test_leaks_nothing"):
        assert "FAILED test_sample.py::%s" % name not in out, out
    # the failure messages name the limit and the top location
    assert "peak memory" in out and "over its limit of 24 MB (limit_memory)" in out
    assert "leaked memory" in out and "over its limit of 1 MB (limit_leaks)" in out
    script = tmp_path / "test_sample.py"
    assert "test_over_memory  %s:%d" % (script, line_of(SAMPLE, "over")) in out, out
    assert "test_leaks_too_much  %s:%d" % (script, line_of(SAMPLE, "leak")) in out, out
    assert "30.0 MiB in 1 allocation" in out
    # the summary: biggest first
    summary = out.split("memtap: the 5 tests that allocated most")[1].splitlines()[2:7]
    assert summary[0].endswith("test_sample.py::test_no_marker"), summary
    assert summary[0].split()[:2] == ["40.0", "MiB"], summary
    assert summary[1].endswith("test_sample.py::test_over_memory"), summary


def test_plugin(pkg, tmp_path):
    check(run_pytest(pkg, tmp_path), tmp_path)


def test_plugin_native_names_the_tests_lines(pkg, tmp_path):
    # with native stacks the innermost frame is CPython's
    # (PyByteArray_Resize): the messages still name the test's lines
    check(run_pytest(pkg, tmp_path, "--memtap-native"), tmp_path)


def test_plugin_xdist(pkg, tmp_path):
    proc = run_pytest(pkg, tmp_path, "-n", "2")
    check(proc, tmp_path)
    assert "2 workers" in proc.stdout or "gw1" in proc.stdout


def test_markers_dormant_without_flag(pkg, tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers",
                    "test_sample.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert "memtap:" not in proc.stdout


CHDIR = textwrap.dedent("""\
    import os

    def test_moves(tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        x = bytearray(10**6)

    def test_moves_for_good(tmp_path):
        os.chdir(tmp_path)

    def test_after():
        y = bytearray(10**5)
    """)


def test_relative_capture_directory(pkg, tmp_path):
    """--memtap-dir given relative: tests that change directory still have
    their captures read and kept there."""
    (tmp_path / "test_chdir.py").write_text(CHDIR)
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "--memtap-dir", "keep", "test_chdir.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout
    assert len(list((tmp_path / "keep").glob("*.bin"))) == 3



def test_kept_captures_one_per_test(pkg, tmp_path):
    """--memtap-dir: parameters that differ only in characters a file name
    cannot keep still get a capture each."""
    (tmp_path / "test_ids.py").write_text(textwrap.dedent("""\
        import pytest

        @pytest.mark.parametrize("p", ["a b", "a/b", "a_b", "a:b"])
        def test_coll(p):
            x = bytearray(10**5)
        """))
    for run in range(2):
        proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                        "--memtap-dir", "keep", "test_ids.py"], cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "4 passed" in proc.stdout, proc.stdout
        # readable, one per test, and replaced by the next run
        assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == [
            "test_ids.py::test_coll[a%20b].bin", "test_ids.py::test_coll[a%2Fb].bin",
            "test_ids.py::test_coll[a:b].bin", "test_ids.py::test_coll[a_b].bin"]


def test_top_is_a_count(pkg, tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "--memtap-top", "-1", "test_one.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "'-1' is not a number of tests (0 or more)" in proc.stderr, proc.stderr


def test_a_tracker_in_a_test_under_the_plugin_says_why(pkg, tmp_path):
    """A test that starts its own Tracker under --memtap is refused with the
    reason: the plugin records the test inside one (the message named a
    Tracker the test's author never started)."""
    (tmp_path / "test_own.py").write_text(textwrap.dedent("""\
        import memtap

        def test_own_tracker(tmp_path):
            with memtap.Tracker(tmp_path / "own.bin"):
                pass
        """))
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_own.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout + proc.stderr
    assert ("TrackerError: memtap: a Tracker is already recording into '" in proc.stdout
            and "(pytest --memtap records each test inside one); trackers cannot be nested"
            in proc.stdout), proc.stdout


def test_bad_markers_stop_the_run_first(pkg, tmp_path):
    """A marker whose size cannot be read is a usage error before any test
    runs, not a failure after the test; size= works as the argument."""
    (tmp_path / "test_marks.py").write_text(textwrap.dedent("""\
        import pytest

        @pytest.mark.limit_memory(size="1 MB")
        def test_keyword():
            b = bytearray(10**5)

        @pytest.mark.limit_leaks("lots")
        def test_bad():
            open("ran", "w").write("the test ran")
        """))
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_marks.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr   # pytest's usage error
    assert "test_marks.py::test_bad: @pytest.mark.limit_leaks: not a size: 'lots'" in (
        proc.stdout + proc.stderr)
    assert not (tmp_path / "ran").exists()
    (tmp_path / "test_marks.py").write_text(textwrap.dedent("""\
        import pytest

        @pytest.mark.limit_memory(size="1 MB")
        def test_keyword():
            b = bytearray(2 * 10**6)
        """))
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_marks.py"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "over its limit of 1 MB (limit_memory)" in proc.stdout


FAILING = textwrap.dedent("""\
    import pytest

    @pytest.mark.limit_memory("1 KB")
    def test_fails_and_big():
        b = bytearray(5 * 10**6)
        raise ValueError("the test's own failure")

    def test_small():
        c = bytearray(10**3)
    """)


def test_failing_tests_are_measured(pkg, tmp_path):
    """A test that fails on its own is measured all the same: it is in the
    summary, and its own failure is what pytest reports (not the limit)."""
    (tmp_path / "test_failing.py").write_text(FAILING)
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_failing.py"], cwd=tmp_path, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1 and "1 failed, 1 passed" in out, out + proc.stderr
    assert "the test's own failure" in out and "over its limit" not in out, out
    rows = out.split("memtap: the 2 tests that allocated most")[1].splitlines()[2:4]
    assert rows[0].split()[:2] == ["4.8", "MiB"] and rows[0].endswith("::test_fails_and_big"), rows
    assert rows[1].endswith("::test_small"), rows
    # one test: the heading says so
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "test_failing.py::test_small"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "memtap: the test that allocated most" in proc.stdout, (
        proc.stdout)


def test_unusable_capture_directory_is_a_usage_error(pkg, tmp_path):
    (tmp_path / "test_failing.py").write_text(FAILING)
    (tmp_path / "file").write_text("")
    proc = pkg.run([pkg.python, "-m", "pytest", "-p", "no:cacheprovider", "--memtap",
                    "--memtap-dir", tmp_path / "file" / "sub", "test_failing.py"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert "--memtap-dir %s: Not a directory" % (tmp_path / "file" / "sub") in proc.stderr, (
        proc.stdout + proc.stderr)
