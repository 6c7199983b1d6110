"""(g) native C allocations from THREADS pthreads (bench/native_alloc.c through ctypes).
Not one of the shared design workloads: added by the benchmark suite (bench/run.py builds the
library and passes its path in NATIVE_ALLOC_LIB).  argv[1] = threads (default 2); every thread does
the same ITERS iterations, so the 1-thread run is the per-thread baseline for the scaling target.
ctypes releases the GIL for the call, so the threads really run in parallel.
"""
import ctypes, os, sys, time
from _wl import report, scaled

T = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ITERS = scaled(3_000_000)
lib = ctypes.CDLL(os.environ["NATIVE_ALLOC_LIB"])
lib.native_alloc_run.argtypes = (ctypes.c_int, ctypes.c_long)

t0 = time.perf_counter()
rc = lib.native_alloc_run(T, ITERS)
if rc < 0:
    sys.exit("native_alloc_run failed")
report("native%d" % T, t0, {"n_native_allocs_min": T * ITERS, "threads": T})
