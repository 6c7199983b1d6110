"""`python -m memtap ...` and the `memtap` console script: the memtap
program installed inside this package."""

import os
import sys

from . import _paths


def main():
    exe = _paths.binary()
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    main()
