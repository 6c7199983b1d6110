"""memtap.Tracker: record the allocations made inside a `with` block.

The shim (libmemtap.so) is loaded into this process with dlopen, a collector
process (`memtap collect`) is started beside it, the allocation functions of
the loaded objects are redirected to the shim (GOT patching, preload/patch.c)
and recording starts; leaving the block stops it, puts the functions back,
and waits for the collector to close the capture. No thread is added to this
process.

In a process `memtap run` started, everything is recorded already: the
block only scopes it. Entering and leaving put marks in the event order
(memtap_mark); the run's collector ends a block of its capture at each and
says where, and on leaving, `memtap extract` cuts the part between the two
into the Tracker's own capture.
"""

import ctypes
import importlib.machinery
import os
import subprocess
import sys
import threading
import time

from . import _paths

_lock = threading.Lock()
_active = None          # the Tracker recording, if any


_forks = 0              # forks this process is down from the first: a
                        # small int, which comparing allocates nothing


def _forked():
    """In a child forked inside a Tracker's block, the block is the parent's:
    the child may start a Tracker of its own, and leaving the block there
    leaves the parent's recording alone."""
    global _lock, _active, _forks
    _lock = threading.Lock()  # another thread may have held it at the fork
    _active = None
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
_shim = None            # ctypes.PyDLL of libmemtap.so


class TrackerError(RuntimeError):
    """A Tracker could not start or finish."""


# MT_SHMF_* (src/transport.h): what a memtap run records.
_RUN_NATIVE, _RUN_PYALLOC, _RUN_FOLLOW_FORK, _RUN_ADDRESSES = 0x1, 0x2, 0x4, 0x8


def _loaded_shim():
    """The shim already in this process (preloaded by memtap run, or loaded
    by an earlier Tracker), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.rstrip("\n").split(None, 5)
            if len(parts) == 6 and parts[5].endswith("/libmemtap.so"):
                return parts[5]
    return None


def _load_shim():
    global _shim
    if _shim is None:
        # One shim per process: the one memtap run preloaded, if any.
        # PyDLL: calls keep the GIL (the Python allocators are swapped with
        # it held under trace_python_allocators).
        loaded = _loaded_shim()
        mode = os.RTLD_NOW | (os.RTLD_NOLOAD if loaded else os.RTLD_LOCAL)
        lib = ctypes.PyDLL(loaded or _paths.shim(), mode=mode)
        for name in ("memtap_start", "memtap_patch", "memtap_unpatch"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = []
        lib.memtap_stop.restype = None
        lib.memtap_stop.argtypes = []
        for name in ("memtap_mark", "memtap_run_flags", "memtap_collector_pid"):
            getattr(lib, name).restype = ctypes.c_long
            getattr(lib, name).argtypes = []
        lib.memtap_mark_offset.restype = ctypes.c_longlong
        lib.memtap_mark_offset.argtypes = [ctypes.c_long]
        lib.memtap_capture_path.restype = ctypes.c_char_p
        lib.memtap_capture_path.argtypes = []
        _shim = lib
    return _shim


def _patch_new_objects():
    """Redirect the objects loaded since the last look (cheap when none)."""
    if _active is not None and _shim is not None:
        _shim.memtap_patch()


def _mark(lib, timeout=30.0):
    """Puts a mark in memtap run's event order and waits until the run's
    collector has written everything before it. @return its file offset."""
    k = lib.memtap_mark()
    if k < 0:
        raise TrackerError("memtap: memtap run stopped recording this process")
    deadline = time.monotonic() + timeout
    while True:
        at = lib.memtap_mark_offset(k)
        if at >= 0:
            return at
        if at == -1:
            raise TrackerError(
                "memtap: the capture of this 'memtap run' has no events to cut a "
                "Tracker's block from (an --aggregate run, or it could not be written)")
        if time.monotonic() > deadline:
            raise TrackerError("memtap: memtap run's collector did not answer")
        time.sleep(0.0005)


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
    pymalloc's allocations are recorded one by one; addresses: heap blocks'
    addresses are stored too (`memtap parse` shows them; reports do not need
    them); overwrite: replace an existing file. Only one Tracker may record
    at a time.
    """

    def __init__(self, path, native=False, aggregate=False, follow_fork=False,
                 trace_python_allocators=False, addresses=False, overwrite=False):
        self.path = os.fspath(path)
        self.native = native
        self.aggregate = aggregate
        self.follow_fork = follow_fork
        self.trace_python_allocators = trace_python_allocators
        self.addresses = addresses
        self.overwrite = overwrite
        self._proc = None
        self._hook = _ExtensionLoaderHook()
        self._scope = None      # under memtap run: (memtap, run's capture, start, time)
        self._started_by = None  # who started it when not the program (for errors)
        self._forks = None      # _forks in the process that started recording

    def __enter__(self):
        global _active
        # Python 3.9/3.10 make a call's frame object when the code is first
        # called, and keep it for the next call: made now, __exit__'s and
        # stop's are not allocated inside the block (and left there). Not
        # while recording: that would stop it (a Tracker entered twice).
        if self._proc is None and self._scope is None:
            self.__exit__(None, None, None)
        if self.addresses and self.aggregate:
            raise TrackerError("memtap: addresses=True and aggregate=True exclude each "
                               "other: an aggregate capture keeps no blocks")
        with _lock:
            if _active is not None:
                raise TrackerError(
                    "memtap: a Tracker is already recording into '%s'%s; trackers "
                    "cannot be nested or run concurrently" % (
                        _active.path, " (%s)" % _active._started_by
                        if _active._started_by else ""))
            _active = self
        self._forks = _forks
        try:
            lib = _load_shim()
            flags = lib.memtap_run_flags()
            if flags >= 0:
                self._start_scoped(lib, flags)
            else:
                self._start()
        except BaseException:
            with _lock:
                _active = None
            raise
        return self

    def _start_scoped(self, lib, flags):
        """Inside memtap run: the block is cut from the run's capture."""
        wanted = [(self.native, _RUN_NATIVE, "native", "--native"),
                  (self.trace_python_allocators, _RUN_PYALLOC,
                   "trace_python_allocators", "--trace-python-allocators"),
                  (self.follow_fork, _RUN_FOLLOW_FORK, "follow_fork", "--follow-fork"),
                  (self.addresses, _RUN_ADDRESSES, "addresses", "--addresses")]
        for asked, bit, name, option in wanted:
            if asked and not flags & bit:
                raise TrackerError(
                    "memtap: this process runs under 'memtap run' without %s, which "
                    "decides what is recorded; %s=True needs 'memtap run %s'"
                    % (option, name, option))
        if self.aggregate:
            raise TrackerError(
                "memtap: under 'memtap run' a Tracker's capture is cut from the run's "
                "events; aggregate=True needs a process started without memtap run")
        if os.path.lexists(self.path) and not self.overwrite:
            raise TrackerError("memtap: '%s' exists; pass overwrite=True to replace it"
                               % self.path)
        run_capture = lib.memtap_capture_path().decode(errors="surrogateescape")
        try:  # the memtap that writes the run's capture reads it best
            memtap = os.readlink("/proc/%d/exe" % lib.memtap_collector_pid())
        except OSError:
            memtap = _paths.binary()
        start = _mark(lib)
        self._scope = (memtap, run_capture, start, time.monotonic())

    def _stop_scoped(self):
        lib = _shim
        memtap, run_capture, start, began = self._scope
        self._scope = None
        end = _mark(lib)
        cmd = [memtap, "extract", run_capture, "--from", str(start),
               "--to", str(end), "-o", self.path,
               "--duration-us", str(int((time.monotonic() - began) * 1e6))]
        if self.overwrite:
            cmd.append("-f")
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              env=_paths.helper_env(),
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise TrackerError(proc.stderr.decode(errors="replace").strip() or
                               "memtap: memtap extract failed (%d)" % proc.returncode)

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
        if self.addresses:
            cmd.append("--addresses")
        if self.follow_fork:
            cmd.append("--follow-fork")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=_paths.helper_env(),
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        line = self._proc.stdout.readline().split()
        if len(line) != (4 if self.follow_fork else 3):
            err = self._proc.stderr.read().decode(errors="replace").strip()
            self._proc.wait()
            self._proc = None
            raise TrackerError(err or "memtap: the collector did not start")
        cpid, cfd, ino = (int(x) for x in line[:3])
        # Children announce themselves to the collector's socket by this name.
        fork_name = ":" + line[3].decode() if self.follow_fork else ""
        fd = os.open("/proc/%d/fd/%d" % (cpid, cfd), os.O_RDWR | os.O_CLOEXEC)
        self._hook.install()
        try:
            if lib.memtap_patch() < 0:
                raise TrackerError("memtap: cannot redirect the allocation functions")
            os.environ["MEMTAP_SHM"] = "%d:%d%s" % (fd, ino, fork_name)
            try:
                rc = lib.memtap_start()
            finally:
                os.environ.pop("MEMTAP_SHM", None)
            if rc != 0:
                raise TrackerError("memtap: the shim could not start recording")
        except BaseException:
            self._hook.remove()
            lib.memtap_unpatch()
            try:
                os.close(fd)
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
        if self._forks is not None and self._forks != _forks:
            # a child forked in the block: the recording is the parent's
            self._proc = self._scope = None
            return
        if self._scope is not None:
            try:
                self._stop_scoped()
            finally:
                with _lock:
                    _active = None
            return
        if self._proc is None:
            return
        lib = _shim
        lib.memtap_stop()         # first: what follows is not the block's
        lib.memtap_unpatch()
        self._hook.remove()
        _, err = self._proc.communicate()
        rc = self._proc.returncode
        self._proc = None
        with _lock:
            _active = None
        if rc != 0:
            raise TrackerError(err.decode(errors="replace").strip() or
                               "memtap: the collector failed (%d)" % rc)
