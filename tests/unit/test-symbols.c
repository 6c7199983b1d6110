/* Unit test for reader/symbols.c: symbolizes return addresses in this very
 * binary (built with -g), found through dl_iterate_phdr like the shim does,
 * and checks function, file:line, inlined frames and demangling exactly.
 * The C++ check runs when test-symbols-cxx.cpp is linked in. */
#define _GNU_SOURCE
#include "symbols.h"

#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond); \
            failures++; \
        } \
    } while (0)

/* ---- the code being symbolized ---------------------------------------------- */

static volatile uintptr_t seen;

__attribute__((noinline)) static void capture(void)
{
    seen = (uintptr_t)__builtin_return_address(0);
    __asm__ volatile("" ::: "memory");
}

/* The call and the recorded line share one source line on purpose. */
__attribute__((noinline)) uintptr_t mt_test_plain_site(int *line)
{
    *line = __LINE__; capture();
    __asm__ volatile("" ::: "memory"); /* no tail call */
    return seen;
}

static inline __attribute__((always_inline)) void inlined_helper(int *line)
{
    *line = __LINE__; capture();
}

__attribute__((noinline)) uintptr_t mt_test_inline_site(int *inner, int *outer)
{
    *outer = __LINE__; inlined_helper(inner);
    __asm__ volatile("" ::: "memory");
    return seen;
}

uintptr_t mt_test_cxx_site(int *line) __attribute__((weak));

/* ---- the main program's object, as the shim would capture it ---------------- */

struct self {
    uint64_t base;
    uint8_t build_id[64];
    size_t build_id_len;
    struct mt_segment segs[16];
    size_t nsegs;
    char libc_path[512];
    uint64_t libc_base;
    struct mt_segment libc_segs[16];
    size_t libc_nsegs;
};

static void read_build_id(struct dl_phdr_info *info, uint8_t *out, size_t *len)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        size_t off = 0, align = ph->p_align == 8 ? 8 : 4;
        if (ph->p_type != PT_NOTE)
            continue;
        const unsigned char *p = (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
        while (off + sizeof(ElfW(Nhdr)) <= ph->p_memsz) {
            const ElfW(Nhdr) *nh = (const void *)(p + off);
            size_t desc = off + sizeof(*nh) + ((nh->n_namesz + align - 1) & ~(align - 1));
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                !memcmp(p + off + sizeof(*nh), "GNU", 4) && nh->n_descsz <= 64) {
                memcpy(out, p + desc, nh->n_descsz);
                *len = nh->n_descsz;
                return;
            }
            off = desc + ((nh->n_descsz + align - 1) & ~(align - 1));
        }
    }
}

static int find_self(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct self *s = arg;
    (void)size;
    if (info->dlpi_name[0] == '\0' && s->nsegs == 0) {
        s->base = info->dlpi_addr;
        for (int i = 0; i < info->dlpi_phnum && s->nsegs < 16; i++)
            if (info->dlpi_phdr[i].p_type == PT_LOAD) {
                s->segs[s->nsegs].vaddr = info->dlpi_phdr[i].p_vaddr;
                s->segs[s->nsegs].memsz = info->dlpi_phdr[i].p_memsz;
                s->segs[s->nsegs].flags = info->dlpi_phdr[i].p_flags;
                s->nsegs++;
            }
        read_build_id(info, s->build_id, &s->build_id_len);
    } else if (strstr(info->dlpi_name, "/libc.so")) {
        snprintf(s->libc_path, sizeof(s->libc_path), "%s", info->dlpi_name);
        s->libc_base = info->dlpi_addr;
        for (int i = 0; i < info->dlpi_phnum && s->libc_nsegs < 16; i++)
            if (info->dlpi_phdr[i].p_type == PT_LOAD) {
                s->libc_segs[s->libc_nsegs].vaddr = info->dlpi_phdr[i].p_vaddr;
                s->libc_segs[s->libc_nsegs].memsz = info->dlpi_phdr[i].p_memsz;
                s->libc_segs[s->libc_nsegs].flags = info->dlpi_phdr[i].p_flags;
                s->libc_nsegs++;
            }
    }
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = s ? strlen(s) : 0, b = strlen(suffix);
    return s && a >= b && strcmp(s + a - b, suffix) == 0;
}

static void dump(const char *what, const struct mt_symbol *f, int n)
{
    char buf[512];
    for (int i = 0; i < n; i++) {
        mt_symbol_format(&f[i], buf, sizeof(buf));
        fprintf(stderr, "  %s #%d: %s%s\n", what, i, buf,
                f[i].flags & MT_SYM_INLINED ? " [inlined]" : "");
    }
}

int main(void)
{
    struct self self;
    struct mt_symbol f[8];
    char exe[512], buf[512];
    ssize_t len;
    int n, line, outer;
    uintptr_t ip;

    memset(&self, 0, sizeof(self));
    dl_iterate_phdr(find_self, &self);
    len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    CHECK(len > 0 && self.nsegs > 0 && self.build_id_len > 0);
    if (len <= 0)
        return 1;
    exe[len] = '\0';

    /* Make sure a configured debuginfod is never contacted. */
    setenv("DEBUGINFOD_URLS", "http://127.0.0.1:9/", 1);
    unsetenv("MEMTAP_DEBUGINFOD");
    struct mt_symbolizer *s = mt_symbolizer_new();
    CHECK(s != NULL);
    CHECK(getenv("DEBUGINFOD_URLS") == NULL);
    CHECK(mt_symbolizer_add_object(s, exe, self.base, self.build_id,
                                   self.build_id_len, self.segs, self.nsegs) == 0);
    if (self.libc_nsegs)
        CHECK(mt_symbolizer_add_object(s, self.libc_path, self.libc_base, NULL, 0,
                                       self.libc_segs, self.libc_nsegs) == 0);

    /* 1. a plain call site */
    ip = mt_test_plain_site(&line);
    n = mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, f, 8);
    dump("plain", f, n);
    CHECK(n == 1);
    CHECK(f[0].function && strcmp(f[0].function, "mt_test_plain_site") == 0);
    CHECK(ends_with(f[0].file, "tests/unit/test-symbols.c"));
    CHECK(f[0].line == (uint32_t)line);
    CHECK(f[0].object && strcmp(f[0].object, exe) == 0);
    CHECK(f[0].address == ip - self.base);
    CHECK(f[0].flags == 0);
    /* cached: same answer, same strings */
    {
        struct mt_symbol g[8];
        CHECK(mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, g, 8) == 1);
        CHECK(g[0].function == f[0].function && g[0].line == f[0].line);
        CHECK(mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, NULL, 0) == 1);
    }

    /* 2. an inlined frame inside its caller */
    ip = mt_test_inline_site(&line, &outer);
    n = mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, f, 8);
    dump("inline", f, n);
    CHECK(n == 2);
    if (n == 2) {
        CHECK(f[0].function && strcmp(f[0].function, "inlined_helper") == 0);
        CHECK(f[0].flags & MT_SYM_INLINED);
        CHECK(ends_with(f[0].file, "tests/unit/test-symbols.c"));
        CHECK(f[0].line == (uint32_t)line);
        CHECK(f[1].function && strcmp(f[1].function, "mt_test_inline_site") == 0);
        CHECK(!(f[1].flags & MT_SYM_INLINED));
        CHECK(ends_with(f[1].file, "tests/unit/test-symbols.c"));
        CHECK(f[1].line == (uint32_t)outer);
    }
    /* truncated output still reports the full count */
    CHECK(mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, f, 1) == 2);

    /* 3. a C++ member function, demangled */
    if (mt_test_cxx_site) {
        ip = mt_test_cxx_site(&line);
        n = mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, f, 8);
        dump("c++", f, n);
        CHECK(n == 1);
        CHECK(f[0].function &&
              strcmp(f[0].function, "mt_test::Widget::make(int*)") == 0);
        CHECK(ends_with(f[0].file, "tests/unit/test-symbols-cxx.cpp"));
        CHECK(f[0].line == (uint32_t)line);
    } else {
        fprintf(stderr, "  c++: skipped (helper not linked)\n");
    }

    /* 4. a libc function without our debug info: ELF symbol + offset */
    if (self.libc_nsegs) {
        ip = (uintptr_t)&getppid + 1;
        n = mt_symbolizer_resolve(s, ip, MT_OBJECTS_ALL, f, 8);
        dump("libc", f, n);
        CHECK(n >= 1 && f[n - 1].function && strstr(f[n - 1].function, "getppid"));
        CHECK(n >= 1 && f[n - 1].offset == 1);
    }

    /* 5. an address in no object */
    n = mt_symbolizer_resolve(s, 0x10, MT_OBJECTS_ALL, f, 8);
    CHECK(n == 1 && !f[0].function && !f[0].object && f[0].address == 0x10);
    mt_symbol_format(&f[0], buf, sizeof(buf));
    CHECK(strcmp(buf, "0x10") == 0);

    /* 6. a missing file, and a file whose build-id differs: addresses only */
    {
        struct mt_segment seg = { 0, 0x1000, PF_R | PF_X };
        uint8_t bad_id[20] = { 1, 2, 3 };
        CHECK(mt_symbolizer_add_object(s, "/nonexistent/libfoo.so", 0x100000,
                                       NULL, 0, &seg, 1) == 0);
        n = mt_symbolizer_resolve(s, 0x100123, MT_OBJECTS_ALL, f, 8);
        CHECK(n == 1 && !f[0].function && (f[0].flags & MT_SYM_NO_FILE));
        mt_symbol_format(&f[0], buf, sizeof(buf));
        CHECK(strcmp(buf, "0x123 (libfoo.so)") == 0);

        CHECK(mt_symbolizer_add_object(s, exe, 0x200000, bad_id, sizeof(bad_id),
                                       &seg, 1) == 0);
        n = mt_symbolizer_resolve(s, 0x200456, MT_OBJECTS_ALL, f, 8);
        CHECK(n == 1 && !f[0].function && (f[0].flags & MT_SYM_NO_FILE));
        CHECK(f[0].address == 0x456);
    }

    /* 7. formatting of a resolved frame */
    {
        struct mt_symbol sym = { .function = "f", .file = "a.c", .line = 7,
                                 .object = "/x/liby.so" };
        mt_symbol_format(&sym, buf, sizeof(buf));
        CHECK(strcmp(buf, "f (a.c:7)") == 0);
        sym.file = NULL;
        sym.line = 0;
        sym.offset = 0x1a;
        mt_symbol_format(&sym, buf, sizeof(buf));
        CHECK(strcmp(buf, "f+0x1a (liby.so)") == 0);
    }

    /* 8. objects replaced over time (dlclose, dlopen at the same place): an
     * address is named after the object that lay there when its node was
     * recorded, the one declared first when recorded before any */
    {
        struct mt_symbolizer *t = mt_symbolizer_new();
        struct mt_segment seg = { 0, 0x1000, PF_R | PF_X };
        const uint64_t ip = 0x300124;
        CHECK(t != NULL);
        CHECK(mt_symbolizer_add_object(t, "/nonexistent/liba.so", 0x300000, NULL, 0,
                                       &seg, 1) == 0);                    /* 1 */
        CHECK(mt_symbolizer_resolve(t, ip, 1, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/liba.so") == 0);
        CHECK(mt_symbolizer_add_object(t, "/nonexistent/libb.so", 0x300000, NULL, 0,
                                       &seg, 1) == 0);                    /* 2 */
        CHECK(mt_symbolizer_generation(t, 1) == 0 && mt_symbolizer_generation(t, 2) == 1);
        CHECK(mt_symbolizer_resolve(t, ip, 2, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/libb.so") == 0);
        CHECK(mt_symbolizer_resolve(t, ip, MT_OBJECTS_ALL, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/libb.so") == 0);
        CHECK(mt_symbolizer_resolve(t, ip, 1, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/liba.so") == 0);
        CHECK(mt_symbolizer_resolve(t, ip, 0, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/liba.so") == 0);
        /* the same object listed again: nothing changes */
        CHECK(mt_symbolizer_add_object(t, "/nonexistent/libb.so", 0x300000, NULL, 0,
                                       &seg, 1) == 0);                    /* 3 */
        CHECK(mt_symbolizer_generation(t, 3) == 1);
        CHECK(mt_symbolizer_resolve(t, ip, 3, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/libb.so") == 0);
        /* the first one back */
        CHECK(mt_symbolizer_add_object(t, "/nonexistent/liba.so", 0x300000, NULL, 0,
                                       &seg, 1) == 0);                    /* 4 */
        CHECK(mt_symbolizer_generation(t, 4) == 2);
        CHECK(mt_symbolizer_resolve(t, ip, 4, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/liba.so") == 0);
        CHECK(mt_symbolizer_resolve(t, ip, 3, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/libb.so") == 0);
        CHECK(mt_symbolizer_resolve(t, ip, 1, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/liba.so") == 0);
        /* an object beside them is found from every generation */
        CHECK(mt_symbolizer_add_object(t, "/nonexistent/libc.so", 0x400000, NULL, 0,
                                       &seg, 1) == 0);                    /* 5 */
        CHECK(mt_symbolizer_generation(t, 5) == 2);
        CHECK(mt_symbolizer_resolve(t, 0x400010, 2, f, 8) == 1 &&
              strcmp(f[0].object, "/nonexistent/libc.so") == 0);
        mt_symbolizer_free(t);
    }

    mt_symbolizer_free(s);
    mt_symbolizer_free(NULL);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
