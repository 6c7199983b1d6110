"""memtap.Tracker: record the allocations made inside a `with` block.

The shim (libmemtap.so) is loaded into this process with dlopen, a collector
process (`memtap collect`) is started beside it, the allocation functions of
the loaded objects are redirected to the shim (GOT patching, preload/patch.c)
and recording starts; leaving the block stops it, puts the functions back,
and waits for the collector to close the capture. No thread is added to this
process.
"""

import ctypes
import importlib.machinery
import os
import socket
import subprocess
import sys
import threading

from . import _paths

_lock = threading.Lock()
_active = None          # the Tracker recording, if any
_shim = None            # ctypes.PyDLL of libmemtap.so


class TrackerError(RuntimeError):
    """A Tracker could not start or finish."""


def _preloaded():
    """True when this process runs under `memtap run` (the shim preloaded)."""
    return "libmemtap.so" in os.environ.get("LD_PRELOAD", "") and \
        any("libmemtap.so" in line for line in open("/proc/self/maps"))


def _load_shim():
    global _shim
    if _shim is None:
        # PyDLL: calls keep the GIL (the Python allocators are swapped with
        # it held under trace_python_allocators).
        lib = ctypes.PyDLL(_paths.shim(), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        for name in ("memtap_start", "memtap_patch", "memtap_unpatch"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = []
        lib.memtap_stop.restype = None
        lib.memtap_stop.argtypes = []
        _shim = lib
    return _shim


def _patch_new_objects():
    """Redirect the objects loaded since the last look (cheap when none)."""
    if _active is not None and _shim is not None:
        _shim.memtap_patch()


class _ExtensionLoaderHook:
    """Extension modules imported inside the block: their allocation calls
    are redirected as soon as they are loaded (before their module code
    runs, for multi-phase initialisation)."""

    def __init__(self):
        self._orig = None

    def install(self):
        cls = importlib.machinery.ExtensionFileLoader
        orig = cls.create_module
        self._orig = orig

        def create_module(loader, spec):
            mod = orig(loader, spec)
            _patch_new_objects()
            return mod
        cls.create_module = create_module

    def remove(self):
        if self._orig is not None:
            importlib.machinery.ExtensionFileLoader.create_module = self._orig
            self._orig = None


class Tracker:
    """Records the allocations made inside a `with` block into a capture.

        with memtap.Tracker("out.bin"):
            work()

    native: native (C) stacks too; aggregate: a small capture of per-stack
    totals (`memtap run --aggregate`); follow_fork: children forked inside
    the block are recorded in captures of their own; trace_python_allocators:
    pymalloc's allocations are recorded one by one; overwrite: replace an
    existing file. Only one Tracker may record at a time.
    """

    def __init__(self, path, native=False, aggregate=False, follow_fork=False,
                 trace_python_allocators=False, overwrite=False):
        self.path = os.fspath(path)
        self.native = native
        self.aggregate = aggregate
        self.follow_fork = follow_fork
        self.trace_python_allocators = trace_python_allocators
        self.overwrite = overwrite
        self._proc = None
        self._hook = _ExtensionLoaderHook()
        self._sock = None

    def __enter__(self):
        global _active
        with _lock:
            if _active is not None:
                raise TrackerError(
                    "memtap: a Tracker is already recording into '%s'; trackers "
                    "cannot be nested or run concurrently" % _active.path)
            if _preloaded():
                raise TrackerError(
                    "memtap: this process runs under 'memtap run', which already "
                    "records it; use memtap.Tracker in a process started without it")
            _active = self
        try:
            self._start()
        except BaseException:
            with _lock:
                _active = None
            raise
        return self

    def _start(self):
        lib = _load_shim()
        cmd = [_paths.binary(), "collect", "-o", self.path, "--pid", str(os.getpid()),
               "--command", " ".join([sys.executable] + sys.argv)]
        if self.overwrite:
            cmd.append("-f")
        if self.native:
            cmd.append("--native")
        if self.aggregate:
            cmd.append("--aggregate")
        if self.trace_python_allocators:
            cmd.append("--trace-python-allocators")
        pass_fds = ()
        sock_fd = -1
        if self.follow_fork:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._sock = mine
            cmd += ["--follow-fork", "--socket", str(theirs.fileno())]
            pass_fds = (theirs.fileno(),)
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, pass_fds=pass_fds)
        finally:
            if self.follow_fork:
                theirs.close()
        line = self._proc.stdout.readline().split()
        if len(line) != 3:
            err = self._proc.stderr.read().decode(errors="replace").strip()
            self._proc.wait()
            self._proc = None
            raise TrackerError(err or "memtap: the collector did not start")
        cpid, cfd, ino = (int(x) for x in line)
        fd = os.open("/proc/%d/fd/%d" % (cpid, cfd), os.O_RDWR | os.O_CLOEXEC)
        if self._sock is not None:
            sock_fd = os.dup(self._sock.fileno())   # the shim keeps (and closes) it
        self._hook.install()
        try:
            if lib.memtap_patch() < 0:
                raise TrackerError("memtap: cannot redirect the allocation functions")
            os.environ["MEMTAP_SHM"] = "%d:%d:%d" % (fd, ino, sock_fd)
            try:
                rc = lib.memtap_start()
            finally:
                os.environ.pop("MEMTAP_SHM", None)
            if rc != 0:
                raise TrackerError("memtap: the shim could not start recording")
        except BaseException:
            self._hook.remove()
            lib.memtap_unpatch()
            for f in (fd, sock_fd):
                try:
                    os.close(f)
                except OSError:
                    pass
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            raise

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        """Stops recording and waits until the capture is complete."""
        global _active
        if self._proc is None:
            return
        lib = _shim
        lib.memtap_stop()         # first: what follows is not the block's
        lib.memtap_unpatch()
        self._hook.remove()
        _, err = self._proc.communicate()
        rc = self._proc.returncode
        self._proc = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with _lock:
            _active = None
        if rc != 0:
            raise TrackerError(err.decode(errors="replace").strip() or
                               "memtap: the collector failed (%d)" % rc)
