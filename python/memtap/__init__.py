"""memtap: a memory-allocation tracker for Python and native code.

    with memtap.Tracker("out.bin"):      # record a block of code
        work()
    cap = memtap.Capture("out.bin")      # read a capture
    print(cap.peak_memory_bytes, cap.top(5))

Also: the `memtap` command (`python -m memtap`), a pytest plugin
(`pytest --memtap`, markers limit_memory and limit_leaks) and IPython magics
(`%load_ext memtap`). See docs/python.md.
"""

from ._tracker import Tracker, TrackerError
from ._capture import Capture, Location, parse_size

__all__ = ["Tracker", "TrackerError", "Capture", "Location", "parse_size",
           "load_ipython_extension"]
__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext memtap`: the %%memtap_flamegraph and %memtap_summary magics."""
    from ._ipython import load
    load(ipython)
