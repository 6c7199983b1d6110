/* --trace-python-allocators: wraps CPython's MEM and OBJ allocator domains
 * (pymalloc) so small Python objects are recorded one by one. */
#ifndef MT_PYALLOC_H
#define MT_PYALLOC_H

/* Installs the wrappers with PyMem_SetAllocator. Call once from the shim's
 * constructor, before the interpreter initializes, in a Python process.
 * @return 0, or -1 when the interpreter's functions are not found. */
int mt_pyalloc_setup(void);

#endif
