"""memtap.Capture: a capture file's peak, leaks and per-location rows as
Python objects, read with the memtap program (`stats --json`,
`summary --json`), so scripts can make their own checks."""

import collections
import json
import os
import re
import subprocess

from . import _paths

Location = collections.namedtuple(
    "Location", "function file line own_bytes own_count total_bytes total_count")
Location.__doc__ = """One location (function, file, line) of a capture: the bytes and
allocations whose innermost frame is there (own) and those with it anywhere
on their stack (total), at the peak or at the end (leaks)."""

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(size):
    """Bytes in a size: an int, or "24 MB" / "1.5GiB" / "4096" (KB, MB, GB
    are powers of 10; KiB, MiB, GiB powers of 2)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ValueError("not a size: %r (a size is 0 or more)" % (size,))
        return size
    if not isinstance(size, str):
        raise ValueError("not a size: %r (e.g. '24 MB', '1.5 GiB', 4096)" % (size,))
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError("not a size: %r (e.g. '24 MB', '1.5 GiB', 4096)" % (size,))
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def _run(*args):
    proc = subprocess.run([_paths.binary(), *args], capture_output=True,
                          env=_paths.helper_env())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace").strip() or
                           "memtap %s failed (%d)" % (args[0], proc.returncode))
    return json.loads(proc.stdout)


class Capture:
    """A capture file written by `memtap run` or memtap.Tracker.

    stats:              the whole `memtap stats --json` object (dict)
    peak_memory_bytes:  the most memory alive at once
    leaked_bytes:       memory still alive at the end
    locations(leaks=False, n=None, python_only=False):
                        [Location], biggest own bytes first; python_only: a
                        stack with Python frames is those alone (`--native`
                        captures: the Python line that called into C, not
                        the interpreter's C function)
    top(n=10, leaks=False, python_only=False):  the n biggest locations
    """

    def __init__(self, path):
        self.path = os.fsdecode(os.fspath(path))  # str, bytes or a path object
        self.stats = _run("stats", "--json", "--", self.path)
        self._rows = {}

    @property
    def peak_memory_bytes(self):
        return self.stats["peak_memory_bytes"]

    @property
    def leaked_bytes(self):
        return self.stats["end_memory_bytes"]

    @property
    def total_allocations(self):
        return self.stats["total_allocations"]

    @property
    def complete(self):
        return self.stats["complete"]

    def locations(self, leaks=False, n=None, python_only=False):
        key = (bool(leaks), bool(python_only))
        if key not in self._rows:
            args = ["summary", "--json", "--sort", "own"]
            if leaks:
                args.append("--leaks")
            if python_only:
                args.append("--python-only")
            args += ["--", self.path]  # a path may start with '-'
            doc = _run(*args)
            self._rows[key] = [
                Location(r["function"], r["file"], r["line"], r["own_bytes"],
                         r["own_count"], r["total_bytes"], r["total_count"])
                for r in doc["rows"]]
        rows = self._rows[key]
        return rows if n is None else rows[:n]

    def top(self, n=10, leaks=False, python_only=False):
        return [r for r in self.locations(leaks, python_only=python_only) if r.own_bytes][:n]

    def __repr__(self):
        return "<memtap.Capture %r peak=%d leaked=%d>" % (
            self.path, self.peak_memory_bytes, self.leaked_bytes)
