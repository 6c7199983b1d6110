/* Redirecting a running process's allocation calls to the shim, for the
 * Python API (memtap.Tracker), which loads the shim with dlopen: nothing is
 * interposed then, so the relocations (GOT entries) that bind each loaded
 * object's malloc & co. are rewritten to the shim's hooks, and put back when
 * recording stops. dlopen is not interposed (design.md §2: it would hide
 * the caller's RUNPATH); objects loaded later are found by asking again
 * (memtap_patch is cheap when the loader's add/sub counters are unchanged).
 *
 * Not for use inside a hook (dl_iterate_phdr takes the loader's lock).
 * Serialized by a mutex of its own. ELF RELA targets (x86-64, AArch64). */
#ifndef MT_PATCH_H
#define MT_PATCH_H

/* Points the allocation relocations of every loaded object (except the
 * shim and the dynamic loader) at the shim's hooks; objects already patched
 * are left alone. @return the number of relocations rewritten by this call
 * (0 when nothing was loaded since the last call), or -1 when the shim's
 * own hooks or the real functions cannot be found (nothing patched). */
int memtap_patch(void);

/* Puts back every relocation memtap_patch rewrote in objects still loaded.
 * @return how many were restored. */
int memtap_unpatch(void);

#endif
