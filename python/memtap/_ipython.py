"""IPython / Jupyter magics (`%load_ext memtap`):

    %%memtap_flamegraph [--leaks] [--native]   run the cell under a Tracker and
                                               show its flame graph inline
    %%memtap_summary [--leaks] [--native] [-n ROWS]   run the cell, print the summary
    %memtap_summary [--leaks] [-n ROWS] [FILE]  the summary of FILE, or of the
                                               last cell run by these magics
"""

import argparse
import atexit
import html
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from . import _paths
from ._tracker import Tracker

_state = {"dir": None, "last": None, "count": 0}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # IPython's own way to say a magic was misused (argparse would
        # exit the kernel's process, which IPython turns into a warning).
        from IPython.core.error import UsageError
        raise UsageError("%s: %s\nusage: %s" % (self.prog, message,
                                                self.format_usage().strip()[7:]))


def _parser(name, cell, rows):
    p = _Parser(prog="%" + name, add_help=False)
    p.add_argument("--leaks", action="store_true")
    if cell:
        p.add_argument("--native", action="store_true")
    if rows:
        p.add_argument("-n", type=int, default=None)
    if not cell:
        p.add_argument("file", nargs="?")
    return p


def _forget():
    if _state["dir"]:
        shutil.rmtree(_state["dir"], ignore_errors=True)


def _run_cell(ipython, cell, native):
    if _state["dir"] is None:
        _state["dir"] = tempfile.mkdtemp(prefix="memtap-ipython-")
        atexit.register(_forget)  # the captures live as long as the kernel
    _state["count"] += 1
    path = os.path.join(_state["dir"], "cell-%d.bin" % _state["count"])
    # A cell that raises: IPython renders its traceback inside run_cell,
    # which is IPython's work, not the cell's; it is shown after the block.
    shown = []
    own = "showtraceback" in vars(ipython)
    show = ipython.showtraceback

    def later(*args, **kwargs):
        if not args and "exc_tuple" not in kwargs:
            kwargs["exc_tuple"] = sys.exc_info()
        shown.append((args, kwargs))

    ipython.showtraceback = later
    try:
        with Tracker(path, native=native, overwrite=True):
            result = ipython.run_cell(cell)
    finally:
        if own:
            ipython.showtraceback = show
        else:
            del ipython.showtraceback
    for args, kwargs in shown:
        show(*args, **kwargs)
    _state["last"] = path
    return path, result


def _memtap(*args):
    proc = subprocess.run([_paths.binary(), *args], capture_output=True, text=True,
                          env=_paths.helper_env())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or "memtap %s failed" % args[0])
    return proc.stdout


def flamegraph(ipython, line, cell):
    from IPython.display import HTML, display
    opts = _parser("memtap_flamegraph", True, False).parse_args(shlex.split(line))
    path, _ = _run_cell(ipython, cell, opts.native)
    out = path[:-4] + ".html"
    _memtap("flamegraph", path, "-o", out, *(["--leaks"] if opts.leaks else []))
    with open(out, encoding="utf-8") as f:
        page = f.read()
    # srcdoc: the page's scripts run in a frame of their own (no network);
    # in a div, which IPython's HTML takes without a warning about iframes.
    display(HTML('<div><iframe srcdoc="%s" style="width: 100%%; height: 640px; border: 0" '
                 'class="memtap-flamegraph"></iframe></div>' % html.escape(page, quote=True)))


def summary(ipython, line, cell=None):
    opts = _parser("memtap_summary", cell is not None, True).parse_args(shlex.split(line))
    if cell is not None:
        path, _ = _run_cell(ipython, cell, opts.native)
    else:
        path = opts.file or _state["last"]
        if not path:
            print("memtap: no capture yet; run a cell with %%memtap_summary or "
                  "%%memtap_flamegraph, or name a file")
            return
    args = ["summary", path]
    if opts.leaks:
        args.append("--leaks")
    if opts.n is not None:
        args += ["-n", str(opts.n)]
    print(_memtap(*args), end="")


def load(ipython):
    ipython.register_magic_function(
        lambda line, cell: flamegraph(ipython, line, cell),
        magic_kind="cell", magic_name="memtap_flamegraph")
    ipython.register_magic_function(
        lambda line, cell=None: summary(ipython, line, cell),
        magic_kind="line_cell", magic_name="memtap_summary")
