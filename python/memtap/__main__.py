"""`python -m memtap ...` and the `memtap` console script: the memtap
program installed inside this package."""

import os
import sys

from . import _paths


def main():
    exe = _paths.binary()
    args = sys.argv[1:]
    if args[:1] == ["run"]:
        # Scripts run with the Python this package is installed in (a
        # virtual environment's, activated or not); a --python the user
        # gives comes later and wins.
        args[1:1] = ["--python", sys.executable]
    os.execv(exe, [exe] + args)


if __name__ == "__main__":
    main()
