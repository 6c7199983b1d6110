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
    # a cell that raises: its own peak, not IPython's rendering of the error
    with capture_output() as cap:
        ip.run_cell_magic("memtap_summary", "-n 2", "v = bytearray(2 * 2**20)\\nraise ValueError('boom')\\n")
    out["raising"] = cap.stdout
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
    # the peak is the cell's 2 MiB; the traceback is still shown, after
    shown, summary = out["raising"].split("Peak memory: ")
    assert "ValueError" in shown and "boom" in shown
    assert summary.startswith("2.0") and " MiB" in summary.splitlines()[0], summary
    assert "posixpath" not in summary and "ultratb" not in summary, summary
    # the kernel's captures go with it
    assert out["dir"] and not os.path.exists(out["dir"])
