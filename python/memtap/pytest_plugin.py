"""memtap's pytest plugin (installed with the package, entry point pytest11).

    pytest --memtap                 each test runs under a memtap.Tracker;
                                    after the run, the tests that allocated most
    @pytest.mark.limit_memory("24 MB")   fails a test whose peak is higher
    @pytest.mark.limit_leaks("1 MiB")    fails a test that leaves more alive

Sizes: KB, MB, GB are powers of 10; KiB, MiB, GiB powers of 2. The peak is
the most memory alive at once during the test's call (not its fixtures); a
leak is what the test allocated and left alive when it returned. Failure
messages show the top locations. Works under pytest-xdist: each worker
tracks its own tests, results travel in the reports.
"""

import argparse
import hashlib
import os
import shutil
import tempfile
import urllib.parse

import pytest

from ._capture import Capture, parse_size
from ._tracker import Tracker

_PEAK = "memtap_peak_bytes"
_LEAKED = "memtap_leaked_bytes"


def _count(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError("'%s' is not a number of tests (0 or more)" % text)
    return n


def pytest_addoption(parser):
    group = parser.getgroup("memtap", "memory tracking with memtap")
    group.addoption("--memtap", action="store_true", default=False,
                    help="track each test's allocations (limit_memory, limit_leaks)")
    group.addoption("--memtap-top", type=_count, default=5, metavar="N",
                    help="how many tests to show in the summary (default 5; 0: none)")
    group.addoption("--memtap-native", action="store_true", default=False,
                    help="native stacks in the captures and failure messages")
    group.addoption("--memtap-dir", default=None, metavar="DIR",
                    help="keep each test's capture in DIR (default: deleted)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "limit_memory(size): fail when the test's peak memory is over size "
        "(with --memtap; e.g. '24 MB', '1.5 GiB')")
    config.addinivalue_line(
        "markers", "limit_leaks(size): fail when the test leaves more than size alive "
        "(with --memtap)")
    if config.getoption("memtap"):
        config.pluginmanager.register(_Plugin(config), "memtap-plugin")


def _fmt(n):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d B" % n


def _limit(item, name):
    """(bytes, as written) of the test's marker, or None."""
    m = item.get_closest_marker(name)
    if m is None:
        return None
    given = list(m.args) + ([m.kwargs["size"]] if "size" in m.kwargs else [])
    if len(given) != 1 or set(m.kwargs) - {"size"}:
        raise pytest.UsageError("%s: @pytest.mark.%s takes one size" % (item.nodeid, name))
    try:
        return parse_size(given[0]), given[0]
    except ValueError as e:
        raise pytest.UsageError("%s: @pytest.mark.%s: %s" % (item.nodeid, name, e))


class _Plugin:
    def __init__(self, config):
        self.config = config
        self.keep = config.getoption("memtap_dir")
        if self.keep:
            self.keep = os.path.abspath(self.keep)  # a test may change directory
            try:
                os.makedirs(self.keep, exist_ok=True)
            except OSError as e:
                raise pytest.UsageError("--memtap-dir %s: %s" % (self.keep, e.strerror or e))
            self.dir = self.keep
        else:
            self.dir = tempfile.mkdtemp(prefix="memtap-pytest-")
        self.results = {}   # nodeid -> (peak, leaked)

    def pytest_collection_modifyitems(self, items):
        # A marker that cannot be read stops the run before any test runs.
        for item in items:
            for name in ("limit_memory", "limit_leaks"):
                _limit(item, name)

    def _path(self, item):
        # Percent-escaped, so that no two ids share a name ("[a b]", "[a/b]",
        # "[a_b]"), and a run again replaces its tests' captures; an id
        # too long for a file name is cut, with a hash of it to keep it
        # apart.
        name = urllib.parse.quote(item.nodeid, safe=":[],=+@", errors="surrogatepass")
        if len(name) > 150:
            digest = hashlib.sha1(item.nodeid.encode("utf-8", "surrogatepass")).hexdigest()
            name = "%s-%s" % (name[-140:], digest[:10])
        return os.path.join(self.dir, name + ".bin")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        path = self._path(item)
        tracker = Tracker(path, native=self.config.getoption("memtap_native"),
                          overwrite=True)
        tracker._started_by = "pytest --memtap records each test inside one"
        runtest = item.runtest
        own = "runtest" in vars(item)  # another plugin's wrapper, kept
        ran = []

        # The test itself, not pytest's own work around it in this hook
        # (its PYTEST_CURRENT_TEST variable, set anew for each phase).
        def traced():
            tracker.__enter__()
            ran.append(True)
            try:
                runtest()
            finally:
                tracker.stop()

        item.runtest = traced
        failed = None
        try:
            result = yield
        except BaseException as e:  # the test's own failure: measured all the same
            failed = e
        finally:
            if own:
                item.runtest = runtest
            else:
                del item.runtest
        if not ran or isinstance(failed, KeyboardInterrupt):
            if failed is not None:
                raise failed
            return result
        try:
            cap = Capture(path)
        except Exception:
            if failed is None:
                raise
            cap = None
        if cap is None:  # the test's failure says more than ours (raised outside
            raise failed  # the handler: not chained to memtap's error)
        peak, leaked = cap.peak_memory_bytes, cap.leaked_bytes
        item.user_properties.append((_PEAK, peak))
        item.user_properties.append((_LEAKED, leaked))
        problems = []
        for marker, value, leaks, what in (
                ("limit_memory", peak, False, "peak memory"),
                ("limit_leaks", leaked, True, "leaked memory")):
            lim = _limit(item, marker)
            if lim is not None and value > lim[0]:
                lines = ["Test %s %s (%d bytes) is over its limit of %s (%s)"
                         % (item.name, what, value, lim[1], marker),
                         "Top locations%s:" % (" still alive at the end" if leaks else
                                               " at the peak")]
                # the test's lines, not CPython's C functions (--memtap-native)
                for loc in cap.top(5, leaks=leaks, python_only=True):
                    where = "%s:%d" % (loc.file, loc.line) if loc.line else loc.file
                    lines.append("    %10s in %d allocation%s  %s  %s" % (
                        _fmt(loc.own_bytes), loc.own_count,
                        "" if loc.own_count == 1 else "s", loc.function, where))
                problems.append("\n".join(lines))
        if not self.keep:
            try:
                os.unlink(path)
            except OSError:
                pass
        if failed is not None:  # its own failure comes first; the limits are secondary
            raise failed
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
        return result

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        props = dict(p for p in report.user_properties if len(p) == 2)
        if _PEAK in props:
            self.results[report.nodeid] = (props[_PEAK], props[_LEAKED])

    def pytest_terminal_summary(self, terminalreporter):
        top = self.config.getoption("memtap_top")
        if not self.results or top <= 0:
            return
        tr = terminalreporter
        shown = min(top, len(self.results))
        tr.write_sep("=", "memtap: the test that allocated most" if shown == 1 else
                     "memtap: the %d tests that allocated most" % shown)
        rows = sorted(self.results.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
        tr.write_line("%12s %12s  %s" % ("PEAK", "LEAKED", "TEST"))
        for nodeid, (peak, leaked) in rows:
            tr.write_line("%12s %12s  %s" % (_fmt(peak), _fmt(leaked), nodeid))

    def pytest_unconfigure(self, config):
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
