/* --trace-python-allocators: wraps CPython's MEM and OBJ allocator domains
 * (pymalloc) so small Python objects are recorded one by one. */
#ifndef MT_PYALLOC_H
#define MT_PYALLOC_H

/* Installs the wrappers with PyMem_SetAllocator, at every start of
 * recording in a Python process (the shim's constructor, before the
 * interpreter initializes; the Python API's Tracker, with the GIL); ours
 * already in place stay as they are.
 * @return 0, or -1 when the interpreter's functions are not found. */
int mt_pyalloc_setup(void);
/* Puts back the allocators mt_pyalloc_setup replaced (recording stopped:
 * a later recording without the option must not see pymalloc's blocks,
 * nor the program pay for the wrappers). Call with the GIL held. */
void mt_pyalloc_teardown(void);

/* Set by mt_pyalloc_setup before the interpreter has initialized: its
 * pre-initialization (PYTHONMALLOC, -X dev) may replace the wrappers. */
extern int mt_pyalloc_watch;
/* While watching, after an allocation (the tracker's guard held, the
 * process still starting: one thread): wraps anew a domain whose
 * allocator is no longer ours. */
void mt_pyalloc_recheck(void);
/* The interpreter runs Python code: start-up can no longer replace them. */
void mt_pyalloc_settled(void);

#endif
