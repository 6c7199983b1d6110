/* Python's own thread names (threading.Thread.name), for the capture.
 *
 * The one place the shim calls the Python C API: only from the
 * pthread_create hook, never from an allocation hook. CPython does not
 * give a threading.Thread's name to the OS before 3.14, so the name is read
 * in the creating thread, inside Thread.start, and recorded by the new
 * thread before it runs.
 */
#ifndef MT_PYTHREAD_H
#define MT_PYTHREAD_H

#include <stddef.h>

/* Finds the C API functions used below. Call once from the shim's
 * constructor, after mt_py_setup succeeded. @return 0, or -1 (names of
 * Python threads are then not recorded). */
int mt_pythread_setup(void);

/* When the calling thread holds the GIL and is inside threading.Thread.start
 * (about to create that thread), copies the Thread's name as UTF-8 into
 * buf (cut to cap - 1 bytes, NUL-terminated) and @return its length; else
 * @return 0. Runs Python C API calls that may allocate: never call it from
 * an allocation hook or with the tracker's guard held. Leaves the
 * interpreter's error state as it found it. */
size_t mt_py_starting_thread_name(char *buf, size_t cap);

#endif
