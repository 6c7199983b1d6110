/* Rust's v0 symbol mangling ("_R...", RFC 2603), read back into the path a
 * reader knows: `<u32 as pyo3::conversion::IntoPyObject>::into_pyobject`.
 * Crate disambiguators (hashes) are left out, as the legacy names' are.
 * libstdc++'s __cxa_demangle knows only the legacy scheme.
 */
#ifndef MT_RUST_DEMANGLE_H
#define MT_RUST_DEMANGLE_H

/* The demangled name of a v0 symbol (a ".llvm.N"-style suffix dropped), in
 * a malloc'd string; NULL when name is not one, is malformed, or memory
 * ran out (show it as it is). */
char *mt_rust_v0_demangle(const char *name);

#endif
