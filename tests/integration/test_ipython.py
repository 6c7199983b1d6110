"""The IPython magics (issue 7), from the pip-installed package with
IPython in the same venv: %load_ext memtap, %%memtap_flamegraph renders the
cell's flame graph inline (an iframe whose srcdoc is the report page), and
%memtap_summary prints the text summary of the last cell."""

import json
import os
import textwrap

from memtap_pkg import pkg  # noqa: F401  (fixture)

DRIVER = textwrap.dedent("""\
    import html, json, re, sys
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "memtap")
    out = {}
    with capture_output() as cap:
        ip.run_cell_magic("memtap_flamegraph", "", "x = bytearray(12 * 2**20)\\n")
    out["flame_outputs"] = [sorted(o.data) for o in cap.outputs]
    out["flame_html"] = cap.outputs[0].data["text/html"] if cap.outputs else ""
    out["x_len"] = len(ip.user_ns["x"])
    with capture_output() as cap:
        ip.run_cell_magic("memtap_flamegraph", "--leaks", "y = bytearray(3 * 2**20)\\nz = bytearray(9 * 2**20); del z\\n")
    out["leaks_html"] = cap.outputs[0].data["text/html"]
    with capture_output() as cap:
        ip.run_line_magic("memtap_summary", "-n 3")
    out["summary"] = cap.stdout
    with capture_output() as cap:
        ip.run_cell_magic("memtap_summary", "--leaks -n 2", "w = bytearray(5 * 2**20)\\n")
    out["cell_summary"] = cap.stdout
    # a misused magic: IPython's UsageError, not argparse's exit
    try:
        ip.run_line_magic("memtap_summary", "--bogus")
        out["bad"] = "accepted"
    except BaseException as e:
        out["bad"] = "%s: %s" % (type(e).__name__, e)
    # a cell that raises: its own peak, not IPython's rendering of the
    # error; the error is the cell's, as without the magic
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary -n 2\\nv = bytearray(2 * 2**20)\\nraise ValueError('boom')\\n")
    out["raising"] = cap.stdout
    out["raising_error"] = repr(r.error_in_exec)
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_flamegraph\\nraise KeyError('flame')\\n")
    out["flame_error"] = [repr(r.error_in_exec), len(cap.outputs)]
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary\\nx = (\\n")
    out["syntax_error"] = type(r.error_in_exec).__name__
    # a function defined in cell N is named after cell N, its lines counted
    # from the line after the magic's; the cell's value is still Out[N]
    ip.run_cell("pass", store_history=True)
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary -n 1\\ndef grow():\\n    return bytearray(3 * 10**6)\\nkept = grow()\\n'value'\\n",
                        store_history=True)
    out["named"] = [r.execution_count, ip.user_ns["grow"].__code__.co_filename, cap.stdout,
                    sorted(ip.user_ns["Out"].items())[-1]]
    # another cell magic on the cell's first line; the magics do not nest
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary -n 1\\n%%capture captured\\ntimed = bytearray(4 * 10**6)\\n")
    out["inner_magic"] = [r.success, len(ip.user_ns.get("timed", b"")), cap.stdout.split("\\n")[3]]
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary\\nget_ipython().run_cell_magic('memtap_summary', '', 'q = 1')\\n")
    out["nested"] = repr(r.error_in_exec)
    # an indented cell, as IPython takes it
    with capture_output() as cap:
        r = ip.run_cell("%%memtap_summary -n 1\\n    ind = bytearray(10**5)\\n    ind2 = 7\\n")
    out["indented"] = [r.success, ip.user_ns.get("ind2")]
    with capture_output() as cap:
        r = ip.run_cell("%memtap_summary /nonexistent/cell.bin")
    out["missing"] = type(r.error_in_exec).__name__ + ": " + str(r.error_in_exec)
    out["dir"] = __import__("memtap._ipython", fromlist=["_state"])._state["dir"]
    print(json.dumps(out))
    """)


def peak_of(page):
    import html
    import re
    m = re.search(r'"peak_bytes": (\d+)', html.unescape(page))
    assert m, page[:500]
    return int(m.group(1))


def test_magics(pkg, tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = pkg.run([pkg.python, "-W", "error::UserWarning", "driver.py"], cwd=tmp_path,
                   env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["x_len"] == 12 * 2 ** 20          # the cell ran, in the user namespace
    assert out["flame_outputs"] == [["text/html", "text/plain"]]
    page = out["flame_html"]
    assert page.startswith("<div><iframe srcdoc=") and "class=\"memtap-flamegraph\"" in page
    assert len(page) > 10000
    peak = peak_of(page)
    assert 12 * 2 ** 20 + 1 <= peak < 13 * 2 ** 20
    # --leaks: the 9 MiB freed inside the cell is in the peak but no leak
    assert 12 * 2 ** 20 <= peak_of(out["leaks_html"]) < 13 * 2 ** 20
    assert out["summary"].startswith("Peak memory:")
    assert "12.0 MiB" in out["summary"] or "3.00 MiB" in out["summary"]
    assert "Leaks:" in out["cell_summary"] and "5.00 MiB" in out["cell_summary"]
    assert out["bad"].startswith("UsageError: %memtap_summary: unrecognized arguments: --bogus")
    # the peak is the cell's 2 MiB; the error is the cell's (IPython shows
    # it once, after the summary: the magic raises it again)
    assert out["raising"].startswith("Peak memory: "), out["raising"]
    summary = out["raising"][len("Peak memory: "):]
    assert summary.startswith("2.0") and " MiB" in summary.splitlines()[0], summary
    assert "posixpath" not in summary and "ultratb" not in summary, summary
    assert out["raising_error"] == "ValueError('boom')"
    assert out["flame_error"] == ["KeyError('flame')", 1]   # the graph, then the error
    assert out["syntax_error"] == "UsageError"   # after IPython's own rendering of it
    count, filename, named, last_out = out["named"]
    assert filename.startswith("<ipython-input-%d-" % count), (count, filename)
    assert " grow  %s:2\n" % filename in named, named       # the bytearray's line
    assert last_out == [count, "value"], (count, last_out)
    ran, timed, row = out["inner_magic"]
    assert ran and timed == 4 * 10**6 and row.startswith("  3.81 MiB "), out["inner_magic"]
    assert out["nested"].startswith("UsageError('the memtap magics cannot be used inside"), out
    assert out["indented"] == [True, 7]
    assert out["missing"] == ("UsageError: memtap: cannot read '/nonexistent/cell.bin': "
                              "No such file or directory")
    # the kernel's captures go with it
    assert out["dir"] and not os.path.exists(out["dir"])


def test_failing_cell_fails(pkg, tmp_path):
    """`ipython -c` (and a notebook run) stops at a cell that raises under
    the magic, as it does without it."""
    ipython = os.path.join(os.path.dirname(pkg.python), "ipython")
    for magic in ("memtap_summary", "memtap_flamegraph"):
        proc = pkg.run([ipython, "--no-banner", "--ext", "memtap", "-c",
                        "%%%%%s\nraise ValueError('cell %s')\n" % (magic, magic)],
                       cwd=tmp_path, env={"HOME": str(tmp_path)})
        assert proc.returncode == 1, (magic, proc.stdout[-2000:], proc.stderr[-2000:])
        assert proc.stdout.count("ValueError") >= 1 and "cell " + magic in proc.stdout
