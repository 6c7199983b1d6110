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

#endif
