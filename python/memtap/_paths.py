"""Where the memtap binary and the shim are: inside the installed package
(pip install), else in $MEMTAP_BUILD (a meson build directory), else the
`memtap` on PATH and its ../lib/memtap/libmemtap.so."""

import os
import shutil

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    yield _HERE
    build = os.environ.get("MEMTAP_BUILD")
    if build:
        yield build
    exe = shutil.which("memtap")
    if exe:
        exe = os.path.realpath(exe)
        d = os.path.dirname(exe)
        yield d
        yield os.path.join(d, "..", "lib", "memtap")


def binary():
    """Path of the memtap command-line program."""
    for d in _candidates():
        p = os.path.join(d, "memtap")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise RuntimeError("memtap: cannot find the memtap program "
                       "(install the package with pip, or set MEMTAP_BUILD)")


def shim():
    """Path of libmemtap.so."""
    for d in _candidates():
        p = os.path.join(d, "libmemtap.so")
        if os.path.isfile(p):
            return os.path.abspath(p)
    raise RuntimeError("memtap: cannot find libmemtap.so "
                       "(install the package with pip, or set MEMTAP_BUILD)")


def helper_env():
    """The environment for a memtap this package starts (the collector, a
    report): without what `memtap run` gives the program, so that under
    --follow-fork memtap is not recorded as one of the program's children."""
    env = dict(os.environ)
    env.pop("MEMTAP_SHM", None)
    pre = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
           if p and os.path.basename(p) != "libmemtap.so"]
    if pre:
        env["LD_PRELOAD"] = ":".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    return env
