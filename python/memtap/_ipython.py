"""IPython / Jupyter magics (`%load_ext memtap`):

    %%memtap_flamegraph [--leaks] [--native]   run the cell under a Tracker and
                                               show its flame graph inline
    %%memtap_summary [--leaks] [--native] [-n ROWS]   run the cell, print the summary
    %memtap_summary [--leaks] [-n ROWS] [FILE]  the summary of FILE, or of the
                                               last cell run by these magics
"""

import argparse
import ast
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
        p.add_argument("-n", type=int, default=None, metavar="ROWS")
    if not cell:
        p.add_argument("file", nargs="?", metavar="FILE")
    return p


def _forget():
    if _state["dir"]:
        shutil.rmtree(_state["dir"], ignore_errors=True)


def _begin():
    """The recording's start, run as the cell's first statement."""
    tracker = _state.pop("pending", None)
    if tracker is not None:
        _state["recording"] = tracker  # first: stopped even when entering fails
        tracker.__enter__()
        _state["entered"] = True


class _StartHere(ast.NodeTransformer):
    """Puts the recording's start before the cell's first statement, once:
    IPython's reading, transforming and parsing of the cell come before it.
    (An AST node, not a line of text: a cell magic on the cell's first line
    stays there, and the cell's text is the user's.)"""

    def __init__(self):
        self.done = False

    def visit_Module(self, node):
        if not self.done:
            self.done = True
            start = ast.parse("__import__('memtap._ipython')._ipython._begin()").body[0]
            if node.body:
                ast.copy_location(start, node.body[0])
            node.body.insert(0, ast.fix_missing_locations(start))
        return node


def _run_cell(ipython, cell, native):
    """Runs the cell under a Tracker. @return (the capture's path, or None
    when the cell did not start, the exception the cell raised or None)."""
    from IPython.core.error import UsageError
    if "pending" in _state or "recording" in _state:
        raise UsageError("the memtap magics cannot be used inside a cell that runs "
                         "under one")
    if _state["dir"] is None:
        _state["dir"] = tempfile.mkdtemp(prefix="memtap-ipython-")
        atexit.register(_forget)  # the captures live as long as the kernel
    _state["count"] += 1
    path = os.path.join(_state["dir"], "cell-%d.bin" % _state["count"])
    # The cell's error is raised again from the magic, after the report,
    # for IPython to show once and count (the cell fails, as it would
    # without the magic); other tracebacks (an event callback's, %run's)
    # are shown after the block, outside it.
    # (A syntax error is shown at once: nothing records before the cell runs.)
    shown = []
    own_show = "showtraceback" in vars(ipython)
    show = ipython.showtraceback

    def later(*args, **kwargs):
        if not args and "exc_tuple" not in kwargs:
            kwargs["exc_tuple"] = sys.exc_info()
        shown.append((sys.exc_info()[1], args, kwargs))

    # The cell is named after the cell the user ran (IPython 9 counted it
    # already: the nested run would take the next cell's number), its
    # output still numbered by IPython.
    outer = getattr(getattr(ipython, "displayhook", None), "exec_result", None)
    number = getattr(outer, "execution_count", None)
    compiler = ipython.compile
    renamed = number is not None and "cache" not in vars(compiler)
    start = _StartHere()
    _state["pending"] = Tracker(path, native=native, overwrite=True)
    try:
        ipython.showtraceback = later
        if renamed:
            cache = compiler.cache
            compiler.cache = lambda code, n=0, raw_code=None: cache(code, number,
                                                                     raw_code=raw_code)
        ipython.ast_transformers.insert(0, start)
        result = ipython.run_cell(cell)  # its own transforms dedent an indented cell
    finally:
        if start in ipython.ast_transformers:
            ipython.ast_transformers.remove(start)
        if renamed:
            del compiler.cache
        if own_show:
            ipython.showtraceback = show
        else:
            del ipython.showtraceback
        _state.pop("pending", None)
        entered = _state.pop("entered", False)
        tracker = _state.pop("recording", None)
        if tracker is not None:
            tracker.stop()
    error = result.error_in_exec
    for value, args, kwargs in shown:
        if error is None or value is not error:
            show(*args, **kwargs)
    if result.error_before_exec is not None:
        # Shown above, as IPython shows it; the cell fails without a second
        # rendering through the magic's frames.
        raise UsageError("the cell did not run (%s)" % type(result.error_before_exec).__name__)
    if not entered:
        return None, error
    _state["last"] = path
    return path, error


def _memtap(*args):
    proc = subprocess.run([_paths.binary(), *args], capture_output=True, text=True,
                          env=_paths.helper_env())
    if proc.returncode != 0:
        # memtap's own one-line error (a missing or damaged file), shown as
        # IPython shows a magic's misuse: the line, no traceback.
        from IPython.core.error import UsageError
        raise UsageError(proc.stderr.strip() or "memtap %s failed" % args[0])
    return proc.stdout


def flamegraph(ipython, line, cell):
    from IPython.display import HTML, display
    __tracebackhide__ = True
    opts = _parser("memtap_flamegraph", True, False).parse_args(shlex.split(line))
    path, error = _run_cell(ipython, cell, opts.native)
    if path is None:
        raise error
    out = path[:-4] + ".html"
    _memtap("flamegraph", path, "-o", out, *(["--leaks"] if opts.leaks else []))
    with open(out, encoding="utf-8") as f:
        page = f.read()
    # srcdoc: the page's scripts run in a frame of their own (no network);
    # in a div, which IPython's HTML takes without a warning about iframes.
    display(HTML('<div><iframe srcdoc="%s" style="width: 100%%; height: 640px; border: 0" '
                 'class="memtap-flamegraph"></iframe></div>' % html.escape(page, quote=True)))
    if error is not None:
        raise error


def summary(ipython, line, cell=None):
    __tracebackhide__ = True
    opts = _parser("memtap_summary", cell is not None, True).parse_args(shlex.split(line))
    error = None
    if cell is not None:
        path, error = _run_cell(ipython, cell, opts.native)
        if path is None:
            raise error
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
    if error is not None:
        raise error


def load(ipython):
    # __tracebackhide__: a cell's error, raised again from the magic, is
    # shown from the cell's own frames, as IPython shows it without one.
    def memtap_flamegraph(line, cell):
        __tracebackhide__ = True
        return flamegraph(ipython, line, cell)

    def memtap_summary(line, cell=None):
        __tracebackhide__ = True
        return summary(ipython, line, cell)

    ipython.register_magic_function(memtap_flamegraph, magic_kind="cell")
    ipython.register_magic_function(memtap_summary, magic_kind="line_cell")
