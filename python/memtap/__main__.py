"""`python -m memtap ...` and the `memtap` console script: the memtap
program installed inside this package."""

import os
import sys

from . import _paths


def main():
    exe = _paths.binary()
    # Scripts, -m and -c run with the Python this package is installed in
    # (a virtual environment's, activated or not), unless --python says
    # otherwise; a script's "#!" still names its own.
    os.environ.setdefault("MEMTAP_DEFAULT_PYTHON", sys.executable)
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    main()
