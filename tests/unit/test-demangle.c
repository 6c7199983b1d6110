/* Rust v0 names (reader/rust-demangle.c): known answers from symbols of a
 * real extension (cryptography's Rust module), checked against binutils'
 * demangler, and damaged names, which must give NULL and never read past
 * their end. */
#define CHECK_SEED 0x9e3779b97f4a7c15ull
#include "check.h"

#include <stdlib.h>
#include <string.h>

#include "rust-demangle.h"

static const struct { const char *mangled, *want; } cases[] = {
    /* a crate's function; an inherent impl's method */
    {"_RNvCs15kBYyAo9fc_7mycrate7example", "mycrate::example"},
    {"_RNvMsd_NtNtCsi1HTDsDXWYj_17cryptography_rust4x50911certificateNtB5_11Certificate"
     "24___pymethod_fingerprint__",
     "<cryptography_rust::x509::certificate::Certificate>::__pymethod_fingerprint__"},
    /* a trait impl for a basic type, through backrefs */
    {"_RNvXsf_NtNtNtCs7MpWdNTwp7n_4pyo311conversions3std3nummNtNtBb_10conversion"
     "12IntoPyObject13into_pyobject",
     "<u32 as pyo3::conversion::IntoPyObject>::into_pyobject"},
    /* generic arguments, the instantiating crate and LLVM's suffix left out */
    {"_RINvNtCsgxBkk5gSRhY_4core3ptr9drop_glueNtCs5U07ux3YbLY_24cryptography_key_parsing"
     "15KeyParsingErrorECsi1HTDsDXWYj_17cryptography_rust.llvm.2740796771196829332",
     "core::ptr::drop_glue::<cryptography_key_parsing::KeyParsingError>"},
    /* a closure */
    {"_RNCNvCsgStHSCytQ6I_7mycrate4main0B3_", "mycrate::main::{closure#0}"},
    /* a dyn trait with an associated type inside its generic arguments */
    {"_RINvCs1_1a1fDNtCs2_1b1TEL_E", "a::f::<dyn b::T>"},
    /* constants: a char */
    {"_RINvCs1_1a1fKc61_E", "a::f::<'a'>"},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *got = mt_rust_v0_demangle(cases[i].mangled);
        CHECK(got && !strcmp(got, cases[i].want), "%s: got %s, want %s", cases[i].mangled,
              got ? got : "NULL", cases[i].want);
        free(got);
    }
    static const char *const not_v0[] = {
        "_ZN4core3ptr13drop_in_place17h0123456789abcdefE", "main", "_R", "_RB_",
        "_RIB_E", "_R0NvC1a1b", "_RNvC1a", "_RNvCs_1a1b_trailing",
    };
    for (size_t i = 0; i < sizeof not_v0 / sizeof *not_v0; i++) {
        char *got = mt_rust_v0_demangle(not_v0[i]);
        CHECK(!got, "%s: got %s, want NULL", not_v0[i], got);
        free(got);
    }
    /* every prefix and every one-byte change of a real name: no crash, and
     * a copy on the heap of exactly its length (ASan sees an over-read) */
    const char *real = cases[3].mangled;
    size_t n = strlen(real);
    for (size_t cut = 0; cut <= n; cut++) {
        for (int change = 0; change < 40; change++) {
            char *s = malloc(cut + 1);
            memcpy(s, real, cut);
            s[cut] = 0;
            if (change && cut > 2)
                s[2 + rnd() % (cut - 2)] = "0123456789abcdefghijklmnopqrstuvwxyzBCEINMXY_"[rnd() % 46];
            free(mt_rust_v0_demangle(s));
            free(s);
        }
    }
    if (failures)
        fprintf(stderr, "test-demangle: %d check(s) failed\n", failures);
    else
        fprintf(stderr, "test-demangle: ok\n");
    return failures != 0;
}
