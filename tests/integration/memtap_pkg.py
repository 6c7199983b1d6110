"""The pip-installed memtap package, for the tests of issue 7 (the Python
API, the pytest plugin, the IPython magics, `memtap diff` from the wheel).

`make test` prepares a venv with `pip install .` (plus pytest, pytest-xdist
and ipython) and names it in MEMTAP_PKG_VENV. Without it, the `pkg` fixture
builds one in a temporary directory (a minute or so).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env

PKG_TIMEOUT = 600


class Venv:
    def __init__(self, root):
        self.root = Path(root)
        self.python = self.root / "bin" / "python"
        self.memtap = self.root / "bin" / "memtap"

    def run(self, args, cwd, env=None, timeout=180, **kw):
        """Runs bin/ARGS[0] (or the venv's python for a .py) in cwd; returns
        the CompletedProcess (text)."""
        e = clean_env(env)
        e.pop("MEMTAP_BUILD", None)      # the package must find its own binary
        e["PATH"] = "%s:%s" % (self.root / "bin", e.get("PATH", ""))
        return subprocess.run([str(a) for a in args], cwd=str(cwd), env=e,
                              capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def pkg(tmp_path_factory):
    root = os.environ.get("MEMTAP_PKG_VENV")
    if not root:
        root = tmp_path_factory.mktemp("pkg-venv")
        for cmd in ([sys.executable, "-m", "venv", str(root)],
                    [str(Path(root) / "bin" / "pip"), "install", "-q", str(REPO),
                     "pytest", "pytest-xdist", "ipython"]):
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=PKG_TIMEOUT)
            assert proc.returncode == 0, proc.stderr[-3000:]
    v = Venv(root)
    if not v.memtap.exists():
        pytest.fail("no memtap in %s: pip install . failed?" % root)
    return v
