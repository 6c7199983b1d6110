/* Native symbolization with elfutils libdw; see symbols.h. */
#define _GNU_SOURCE
#include "symbols.h"
#include "rust-demangle.h"
#include "map.h"

#include <dlfcn.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum obj_state { OBJ_UNOPENED, OBJ_OPEN, OBJ_NO_FILE };

struct cu_range { Dwarf_Addr lo, hi; Dwarf_Off die; };

/* The functions of one compile unit: each range of each subprogram DIE
 * that is not nested in another function, sorted by (lo, die); maxhi[i]
 * is the largest hi of f[0..i], which ends a search for overlaps. */
struct cu_funcs { Dwarf_Off cu; struct cu_range *f; Dwarf_Addr *maxhi; size_t n; };

/* A function symbol with a size, at its runtime address; the name points
 * into the ELF string table libdwfl keeps for the module. */
struct elf_sym { uint64_t addr, size; const char *name; int rank; };

struct object {
    char *path;
    uint64_t base;
    uint8_t *build_id;
    size_t build_id_len;
    struct mt_segment *segs;
    size_t nsegs;
    enum obj_state state;
    Dwfl *dwfl;          /* one session per object: objects may replace each
                            other at the same addresses */
    Dwfl_Module *mod;
    struct cu_range *cus; /* sorted; built on the first aranges miss */
    size_t ncus;
    int cus_built;
    struct elf_sym *syms; /* sorted by addr; built on first use */
    size_t nsyms;
    int syms_built;
    struct cu_funcs *funcs; /* the CUs looked into so far */
    size_t nfuncs, funcs_cap;
    uint32_t killed;     /* objects declared when a later object at the
                            same place replaced it; UINT32_MAX: never */
};

/* One return address's frames, as seen from one generation of objects. */
struct ip_entry {
    uint64_t ip;         /* 0: empty slot (0 is never a return address) */
    uint32_t generation; /* replacements before the address was recorded */
    uint32_t first, count; /* into frames[] */
};

struct str_entry { char *s; uint64_t hash; };

struct mt_symbolizer {
    struct object *objs;
    size_t nobjs, objs_cap;
    uint32_t declared;      /* mt_symbolizer_add_object calls */
    uint32_t *kills;        /* ascending: `declared` after each replacement */
    size_t nkills, kills_cap;

    struct ip_entry *ips;   /* open addressing, power-of-two size */
    size_t ips_cap, ips_used;

    struct mt_symbol *frames;
    size_t nframes, frames_cap;

    struct str_entry *strs; /* interned strings */
    size_t strs_cap, strs_used;

    /* qualified C++ names of declarations without a linkage name, by the
     * address of their DIE (unique across objects): one CU walk each */
    struct mt_amap quals;

    char *(*cxa_demangle)(const char *, char *, size_t *, int *);
};

/* ---- small containers ---------------------------------------------------- */

static uint64_t hash_bytes(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static uint64_t hash_ip(uint64_t ip)
{
    ip ^= ip >> 33;
    ip *= 0xff51afd7ed558ccdull;
    ip ^= ip >> 33;
    return ip;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t n = *cap ? *cap : 16;
    void *q;

    if (need <= *cap)
        return 0;
    while (n < need)
        n *= 2;
    q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* Returns the symbolizer's copy of s (NULL stays NULL), or NULL when out of
 * memory with *oom set. */
static const char *intern(struct mt_symbolizer *s, const char *str, int *oom)
{
    uint64_t h;
    size_t i, mask;

    if (!str)
        return NULL;
    if (s->strs_used * 2 >= s->strs_cap) {
        size_t ncap = s->strs_cap ? s->strs_cap * 2 : 256;
        struct str_entry *n = calloc(ncap, sizeof(*n));
        if (!n) {
            *oom = 1;
            return NULL;
        }
        for (i = 0; i < s->strs_cap; i++) {
            if (!s->strs[i].s)
                continue;
            size_t j = s->strs[i].hash & (ncap - 1);
            while (n[j].s)
                j = (j + 1) & (ncap - 1);
            n[j] = s->strs[i];
        }
        free(s->strs);
        s->strs = n;
        s->strs_cap = ncap;
    }
    h = hash_bytes(str);
    mask = s->strs_cap - 1;
    for (i = h & mask; s->strs[i].s; i = (i + 1) & mask)
        if (s->strs[i].hash == h && strcmp(s->strs[i].s, str) == 0)
            return s->strs[i].s;
    s->strs[i].s = strdup(str);
    if (!s->strs[i].s) {
        *oom = 1;
        return NULL;
    }
    s->strs[i].hash = h;
    s->strs_used++;
    return s->strs[i].s;
}

static struct ip_entry *ip_slot(struct mt_symbolizer *s, uint64_t ip,
                                uint32_t generation)
{
    size_t mask = s->ips_cap - 1, i;

    for (i = hash_ip(ip + generation) & mask;
         s->ips[i].ip && (s->ips[i].ip != ip || s->ips[i].generation != generation);
         i = (i + 1) & mask)
        ;
    return &s->ips[i];
}

static int ip_reserve(struct mt_symbolizer *s)
{
    struct ip_entry *old = s->ips;
    size_t old_cap = s->ips_cap, i;

    if ((s->ips_used + 1) * 2 <= s->ips_cap)
        return 0;
    s->ips_cap = old_cap ? old_cap * 2 : 1024;
    s->ips = calloc(s->ips_cap, sizeof(*s->ips));
    if (!s->ips) {
        s->ips = old;
        s->ips_cap = old_cap;
        return -1;
    }
    for (i = 0; i < old_cap; i++)
        if (old[i].ip)
            *ip_slot(s, old[i].ip, old[i].generation) = old[i];
    free(old);
    return 0;
}

/* ---- demangling ------------------------------------------------------------ */

/* Rust legacy symbols end in "::h" + 16 hex digits once demangled as C++,
 * and escape punctuation as $..$ and "." in identifiers. */
static int is_rust_hash(const char *p)
{
    if (p[0] != ':' || p[1] != ':' || p[2] != 'h')
        return 0;
    for (int i = 3; i < 19; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return p[19] == '\0';
}

static void rust_legacy_cleanup(char *d)
{
    static const struct { const char *from, *to; } esc[] = {
        { "$SP$", "@" }, { "$BP$", "*" }, { "$RF$", "&" }, { "$LT$", "<" },
        { "$GT$", ">" }, { "$LP$", "(" }, { "$RP$", ")" }, { "$C$", "," },
        { "$u7e$", "~" }, { "$u20$", " " }, { "$u27$", "'" },
        { "$u5b$", "[" }, { "$u5d$", "]" }, { "$u7b$", "{" },
        { "$u7d$", "}" }, { "$u3b$", ";" }, { "$u2b$", "+" },
        { "$u22$", "\"" },
    };
    char *r = d, *w = d;
    size_t len = strlen(d);

    if (len >= 19 && is_rust_hash(d + len - 19))
        d[len - 19] = '\0';
    while (*r) {
        size_t k;
        for (k = 0; k < sizeof(esc) / sizeof(esc[0]); k++) {
            size_t n = strlen(esc[k].from);
            if (strncmp(r, esc[k].from, n) == 0) {
                size_t m = strlen(esc[k].to);
                memmove(w, esc[k].to, m); /* m <= n: never overtakes r */
                w += m;
                r += n;
                break;
            }
        }
        if (k < sizeof(esc) / sizeof(esc[0]))
            continue;
        if (r[0] == '.' && r[1] == '.') { /* ".." is "::" */
            *w++ = ':';
            *w++ = ':';
            r += 2;
            continue;
        }
        *w++ = *r++;
    }
    *w = '\0';
}

/* Returns a malloc'd demangled name, or NULL to keep `name` as it is.
 * C++ and Rust legacy names go through libstdc++'s __cxa_demangle, found at
 * run time so the reader does not need the C++ runtime to start; Rust v0
 * names ("_R...") through rust-demangle.c. */
static char *demangle(struct mt_symbolizer *s, const char *name)
{
    int status = -1;
    char *d;

    if (name[0] == '_' && name[1] == 'R')
        return mt_rust_v0_demangle(name);
    if (!s->cxa_demangle || name[0] != '_' || name[1] != 'Z')
        return NULL;
    d = s->cxa_demangle(name, NULL, NULL, &status);
    if (status != 0 || !d) {
        free(d);
        return NULL;
    }
    /* Rust legacy: _ZN...17h<16 hex>E */
    size_t len = strlen(name);
    if (len > 20 && strncmp(name + len - 20, "17h", 3) == 0 &&
        name[len - 1] == 'E')
        rust_legacy_cleanup(d);
    return d;
}

static const char *intern_symbol(struct mt_symbolizer *s, const char *name,
                                 int *oom)
{
    char *d;
    const char *r;

    if (!name)
        return NULL;
    d = demangle(s, name);
    if (!d)
        return intern(s, name, oom);
    r = intern(s, d, oom);
    free(d);
    return r;
}

/* ---- objects ---------------------------------------------------------------- */

static const Dwfl_Callbacks offline_callbacks = {
    .find_elf = dwfl_build_id_find_elf,
    /* Looks beside the file, in .debug/ and /usr/lib/debug (debuglink and
     * build-id); debuginfod only when DEBUGINFOD_URLS survived
     * mt_symbolizer_new(). */
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = dwfl_offline_section_address,
};

struct mt_symbolizer *mt_symbolizer_new(void)
{
    struct mt_symbolizer *s = calloc(1, sizeof(*s));
    const char *opt = getenv("MEMTAP_DEBUGINFOD");
    void *cxx;

    if (!s)
        return NULL;
    /* libdw starts its debuginfod client only when DEBUGINFOD_URLS is set,
     * and distributions set it in every login shell; a reader that quietly
     * downloads gigabytes of debug info is not acceptable. */
    if (!opt || strcmp(opt, "1") != 0)
        unsetenv("DEBUGINFOD_URLS");
    cxx = dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL);
    if (cxx)
        *(void **)&s->cxa_demangle = dlsym(cxx, "__cxa_demangle");
    /* The handle stays open for the process's lifetime: demangled strings
     * are copied, but unloading libstdc++ is never worth the risk. */
    return s;
}

static int same_object(const struct object *a, const struct object *b)
{
    if (a->base != b->base || a->nsegs != b->nsegs ||
        a->build_id_len != b->build_id_len || strcmp(a->path, b->path) != 0 ||
        (a->build_id_len && memcmp(a->build_id, b->build_id, a->build_id_len) != 0))
        return 0;
    for (size_t i = 0; i < a->nsegs; i++)
        if (a->segs[i].vaddr != b->segs[i].vaddr || a->segs[i].memsz != b->segs[i].memsz)
            return 0;
    return 1;
}

static int ranges_overlap(const struct object *a, const struct object *b)
{
    for (size_t i = 0; i < a->nsegs; i++)
        for (size_t j = 0; j < b->nsegs; j++) {
            uint64_t alo = a->base + a->segs[i].vaddr;
            uint64_t ahi = alo + a->segs[i].memsz;
            uint64_t blo = b->base + b->segs[j].vaddr;
            uint64_t bhi = blo + b->segs[j].memsz;
            if (alo < bhi && blo < ahi)
                return 1;
        }
    return 0;
}

int mt_symbolizer_add_object(struct mt_symbolizer *s, const char *path,
                             uint64_t base, const uint8_t *build_id,
                             size_t build_id_len,
                             const struct mt_segment *segs, size_t nsegs)
{
    struct object o;
    int replaced = 0;

    if (!s)
        return -1;
    s->declared++;  /* the caller's count of objects, even when this fails */
    if (!path || (nsegs && !segs))
        return -1;
    memset(&o, 0, sizeof(o));
    o.killed = UINT32_MAX;
    o.base = base;
    o.path = strdup(path);
    if (build_id && build_id_len) {
        o.build_id = malloc(build_id_len);
        if (o.build_id)
            memcpy(o.build_id, build_id, build_id_len);
        o.build_id_len = build_id_len;
    }
    if (nsegs) {
        o.segs = malloc(nsegs * sizeof(*segs));
        if (o.segs)
            memcpy(o.segs, segs, nsegs * sizeof(*segs));
        o.nsegs = nsegs;
    }
    if (!o.path || (o.build_id_len && !o.build_id) || (nsegs && !o.segs) ||
        grow((void **)&s->objs, &s->objs_cap, s->nobjs + 1, sizeof(o)) ||
        grow((void **)&s->kills, &s->kills_cap, s->nkills + 1, sizeof(*s->kills))) {
        free(o.path);
        free(o.build_id);
        free(o.segs);
        return -1;
    }
    /* The same object again (a capture lists every object anew after an
     * unload) changes nothing. */
    for (size_t i = 0; i < s->nobjs; i++)
        if (s->objs[i].killed == UINT32_MAX && same_object(&s->objs[i], &o)) {
            free(o.path);
            free(o.build_id);
            free(o.segs);
            return 0;
        }
    for (size_t i = 0; i < s->nobjs; i++)
        if (s->objs[i].killed == UINT32_MAX && ranges_overlap(&s->objs[i], &o)) {
            s->objs[i].killed = s->declared;
            replaced = 1;
        }
    if (replaced)
        s->kills[s->nkills++] = s->declared;
    s->objs[s->nobjs++] = o;
    return 0;
}

uint32_t mt_symbolizer_generation(const struct mt_symbolizer *s, uint32_t objects)
{
    uint32_t g = 0;
    while (g < s->nkills && s->kills[g] <= objects)
        g++;
    return g;
}

/* The object pc lay in when `objects` objects had been declared: of those
 * covering pc, the first not replaced by then. One declared later is
 * taken too: the collector may write a thread's frames before another
 * thread's list of objects, never after a replacement of theirs. */
static struct object *find_object(struct mt_symbolizer *s, uint64_t pc, uint32_t objects)
{
    struct object *best = NULL;
    for (size_t i = s->nobjs; i-- > 0;) {
        struct object *o = &s->objs[i];
        if ((o->killed != UINT32_MAX && o->killed <= objects) ||
            (best && best->killed <= o->killed))
            continue;
        for (size_t j = 0; j < o->nsegs; j++) {
            uint64_t lo = o->base + o->segs[j].vaddr;
            if (pc >= lo && pc - lo < o->segs[j].memsz) {
                best = o;
                break;
            }
        }
    }
    return best;
}

static Dwfl_Module *report(struct object *o, const char *file)
{
    const unsigned char *bits;
    GElf_Addr vaddr;
    Dwfl_Module *mod;
    const char *name = strrchr(o->path, '/');
    int n;

    /* Only regular files: a path in a capture may name a FIFO or a device,
     * whose open() would block or read forever. */
    struct stat st;
    if (stat(file, &st) != 0 || !S_ISREG(st.st_mode) || access(file, R_OK) != 0)
        return NULL;
    o->dwfl = dwfl_begin(&offline_callbacks);
    if (!o->dwfl)
        return NULL;
    dwfl_report_begin(o->dwfl);
    /* add_p_vaddr = false: `base` is the load bias, as dlpi_addr is. */
    mod = dwfl_report_elf(o->dwfl, name ? name + 1 : o->path, file, -1,
                          o->base, false);
    dwfl_report_end(o->dwfl, NULL, NULL);
    if (mod && o->build_id_len) {
        n = dwfl_module_build_id(mod, &bits, &vaddr);
        if (n != (int)o->build_id_len || memcmp(bits, o->build_id, n) != 0)
            mod = NULL;
    }
    if (!mod) {
        dwfl_end(o->dwfl);
        o->dwfl = NULL;
    }
    return mod;
}

/* Opens the object's file, or failing that the separate debug file named by
 * its build-id (which keeps the program headers, so it reports at the same
 * base), checking the build-id either way. */
static void object_open(struct object *o)
{
    o->state = OBJ_NO_FILE;
    if (o->path[0] && o->path[0] != '[')
        o->mod = report(o, o->path);
    if (!o->mod && o->build_id_len >= 2) {
        char file[sizeof("/usr/lib/debug/.build-id//.debug") + 2 * 64 + 1];
        char *p = file;
        size_t n = o->build_id_len > 64 ? 64 : o->build_id_len;

        p += sprintf(p, "/usr/lib/debug/.build-id/%02x/", o->build_id[0]);
        for (size_t i = 1; i < n; i++)
            p += sprintf(p, "%02x", o->build_id[i]);
        strcpy(p, ".debug");
        o->mod = report(o, file);
    }
    if (o->mod)
        o->state = OBJ_OPEN;
}

/* ---- compile units without .debug_aranges ------------------------------------ */

static int cu_range_cmp(const void *a, const void *b)
{
    const struct cu_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* In r[0..n), sorted by lo: the index of the first range starting after pc. */
static size_t ranges_after(const struct cu_range *r, size_t n, Dwarf_Addr pc)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r[mid].lo <= pc)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* clang emits no .debug_aranges by default, and libdw before 0.191 then
 * finds no CU for any address (dwfl_module_addrdie returns NULL).  Build the
 * table from the CUs' own DW_AT_ranges/low_pc instead. */
static void build_cu_ranges(struct object *o)
{
    Dwarf_Addr bias;
    Dwarf *dw = dwfl_module_getdwarf(o->mod, &bias);
    Dwarf_CU *unit = NULL;
    Dwarf_Die cu;
    size_t cap = 0;
    uint8_t unit_type;
    Dwarf_Half version;

    o->cus_built = 1;
    if (!dw)
        return;
    while (dwarf_get_units(dw, unit, &unit, &version, &unit_type, &cu,
                           NULL) == 0) {
        Dwarf_Addr base, lo, hi;
        ptrdiff_t r = 0;

        if (unit_type != DW_UT_compile && unit_type != DW_UT_partial)
            continue;
        while ((r = dwarf_ranges(&cu, r, &base, &lo, &hi)) > 0) {
            if (lo >= hi)
                continue;
            if (grow((void **)&o->cus, &cap, o->ncus + 1, sizeof(*o->cus)))
                return;
            o->cus[o->ncus].lo = lo;
            o->cus[o->ncus].hi = hi;
            o->cus[o->ncus].die = dwarf_dieoffset(&cu);
            o->ncus++;
        }
    }
    if (o->ncus > 1)
        qsort(o->cus, o->ncus, sizeof(*o->cus), cu_range_cmp);
}

/* The CU DIE covering pc, with the module's DWARF bias. */
static Dwarf_Die *object_cu(struct object *o, uint64_t pc, Dwarf_Die *buf,
                            Dwarf_Addr *bias)
{
    Dwarf_Die *cu = dwfl_module_addrdie(o->mod, pc, bias);
    Dwarf *dw;

    if (cu)
        return cu;
    if (!o->cus_built)
        build_cu_ranges(o);
    dw = dwfl_module_getdwarf(o->mod, bias);
    if (!dw)
        return NULL;
    /* Ranges may nest or overlap (rare): scan back from the last start <= pc. */
    size_t lo = ranges_after(o->cus, o->ncus, pc - *bias);
    while (lo-- > 0)
        if (pc - *bias < o->cus[lo].hi)
            return dwarf_offdie(dw, o->cus[lo].die, buf);
    return NULL;
}

/* ---- ELF symbols ---------------------------------------------------------- */

static int elf_sym_cmp(const void *a, const void *b)
{
    const struct elf_sym *x = a, *y = b;
    if (x->addr != y->addr)
        return x->addr < y->addr ? -1 : 1;
    return x->rank - y->rank;
}

/* dwfl_module_addrinfo() scans the whole symbol table on every call (libdw
 * 0.188: ~100 us per lookup in libc's), so sort the table once instead.
 * Among aliases at one address prefer global, then weak, then local, then
 * fewer leading underscores ("getppid" over "__getppid"). */
static void build_symtab(struct object *o)
{
    int n = dwfl_module_getsymtab(o->mod);
    size_t cap = 0, w = 0;

    o->syms_built = 1;
    for (int i = 1; i < n; i++) {
        GElf_Sym sym;
        GElf_Addr addr;
        GElf_Word shndx;
        const char *name = dwfl_module_getsym_info(o->mod, i, &sym, &addr,
                                                   &shndx, NULL, NULL);
        int type = GELF_ST_TYPE(sym.st_info), bind, rank;

        if (!name || !name[0] || sym.st_size == 0 || shndx == SHN_UNDEF ||
            (type != STT_FUNC && type != STT_GNU_IFUNC && type != STT_NOTYPE))
            continue;
        if (grow((void **)&o->syms, &cap, o->nsyms + 1, sizeof(*o->syms)))
            break;
        bind = GELF_ST_BIND(sym.st_info);
        rank = bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 1 : 2;
        rank = rank * 8 + (name[0] == '_') + (name[0] == '_' && name[1] == '_');
        o->syms[o->nsyms].addr = addr;
        o->syms[o->nsyms].size = sym.st_size;
        o->syms[o->nsyms].name = name;
        o->syms[o->nsyms].rank = rank;
        o->nsyms++;
    }
    if (o->nsyms > 1)  /* a stripped object has none: o->syms stays NULL */
        qsort(o->syms, o->nsyms, sizeof(*o->syms), elf_sym_cmp);
    for (size_t i = 0; i < o->nsyms; i++) /* keep the best of each address */
        if (w == 0 || o->syms[w - 1].addr != o->syms[i].addr)
            o->syms[w++] = o->syms[i];
    o->nsyms = w;
}

/* The symbol whose [addr, addr+size) holds pc, or NULL. */
static const struct elf_sym *object_sym(struct object *o, uint64_t pc)
{
    size_t lo = 0, hi;

    if (!o->syms_built)
        build_symtab(o);
    hi = o->nsyms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (o->syms[mid].addr <= pc)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* A few steps back covers symbols nested in bigger ones. */
    for (size_t k = 0; lo-- > 0 && k < 4; k++)
        if (pc - o->syms[lo].addr < o->syms[lo].size)
            return &o->syms[lo];
    return NULL;
}

/* ---- resolving ------------------------------------------------------------- */

/* A DIE's function name: linkage name if any (through abstract_origin and
 * specification), else its plain name. */
static int is_cplusplus(Dwarf_Die *die)
{
    Dwarf_Die cu;
    if (!dwarf_diecu(die, &cu, NULL, NULL))
        return 0;
    int lang = dwarf_srclang(&cu);
    return lang == DW_LANG_C_plus_plus || lang == DW_LANG_C_plus_plus_03 ||
           lang == DW_LANG_C_plus_plus_11 || lang == DW_LANG_C_plus_plus_14;
}

/* "outer::(anonymous namespace)::Widget::name": name qualified by the
 * namespaces and classes around die's declaration, or NULL when it has
 * none. malloc'd. */
static char *qualify(Dwarf_Die *die, const char *name)
{
    Dwarf_Die decl = *die, ref, *scopes = NULL;
    Dwarf_Attribute attr;
    /* an inlined copy or an out-of-class definition points at the
     * declaration, which sits in its scope */
    for (int k = 0; k < 8; k++) {
        if (!dwarf_formref_die(dwarf_attr(&decl, DW_AT_abstract_origin, &attr), &ref) &&
            !dwarf_formref_die(dwarf_attr(&decl, DW_AT_specification, &attr), &ref))
            break;
        decl = ref;
    }
    int n = dwarf_getscopes_die(&decl, &scopes);
    size_t len = strlen(name) + 1;
    for (int i = 1; i < n; i++)
        len += (dwarf_diename(&scopes[i]) ? strlen(dwarf_diename(&scopes[i]))
                                           : sizeof "(anonymous namespace)") + 2;
    char *q = n > 1 ? malloc(len) : NULL;
    if (q) {
        char *p = q;
        *p = 0;
        for (int i = n - 1; i >= 1; i--) {  /* outermost first; scopes[0] is decl */
            int tag = dwarf_tag(&scopes[i]);
            const char *sn = dwarf_diename(&scopes[i]);
            if (tag == DW_TAG_namespace)
                sn = sn ? sn : "(anonymous namespace)";
            else if (tag != DW_TAG_class_type && tag != DW_TAG_structure_type &&
                     tag != DW_TAG_union_type)
                continue;  /* the compile unit; a function around a local class */
            else if (!sn)
                sn = "(anonymous class)";
            p += sprintf(p, "%s::", sn);
        }
        if (p == q) {
            free(q);
            q = NULL;
        } else {
            strcpy(p, name);
        }
    }
    free(scopes);
    return q;
}

/* qualify(), once per declaration. */
static const char *qualified_name(struct mt_symbolizer *s, Dwarf_Die *die,
                                  const char *name, int *oom)
{
    int found;
    uint64_t *slot = mt_amap_upsert(&s->quals, (uintptr_t)die->addr, &found);
    if (!slot) {
        *oom = 1;
        return NULL;
    }
    if (!found) {
        char *q = qualify(die, name);
        *slot = (uintptr_t)intern(s, q ? q : name, oom);
        free(q);
    }
    return (const char *)(uintptr_t)*slot;
}

/* The name a frame of function DIE die shows: its demangled linkage name;
 * for C++ without one (an anonymous namespace, a file-static function),
 * the ELF symbol's when die is the function at pc (it has the parameters,
 * as linkage names do), else the name qualified by its scopes; for C, its
 * name. */
static const char *die_function_name(struct mt_symbolizer *s, Dwarf_Die *die,
                                     const char *elfname, int *oom)
{
    Dwarf_Attribute attr;
    const char *name;

    name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_linkage_name, &attr));
    if (!name)
        name = dwarf_formstring(
            dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr));
    if (name)
        return intern_symbol(s, name, oom);
    name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr));
    if (!name || !is_cplusplus(die))
        return intern(s, name, oom);
    if (elfname && elfname[0] == '_' && elfname[1] == 'Z') {
        /* without a clone's suffix (".constprop.0", ".cold"), which a
         * linkage name never has: no mangled name holds a '.' */
        size_t n = strcspn(elfname, ".");
        char *base = strndup(elfname, n);
        if (!base) {
            *oom = 1;
            return NULL;
        }
        const char *r = intern_symbol(s, base, oom);
        free(base);
        return r;
    }
    return qualified_name(s, die, name, oom);
}

static int push_frame(struct mt_symbolizer *s, const struct mt_symbol *f)
{
    if (grow((void **)&s->frames, &s->frames_cap, s->nframes + 1,
             sizeof(*f)))
        return -1;
    s->frames[s->nframes++] = *f;
    return 0;
}

struct die_vec { Dwarf_Die *v; size_t n, cap; };

/* Collects, outermost first, the subprogram and inlined_subroutine DIEs under
 * `parent` whose ranges hold pc.  One descent along the path to pc: other
 * subtrees are skipped by sibling, unlike dwarf_getscopes() followed by
 * dwarf_getscopes_die() (two full walks, ~100 us per address in libc).
 * Namespaces and classes have no ranges, so they are searched through.
 * @return 1 when a DIE holding pc was found under parent. */
static int walk_scopes(Dwarf_Die *parent, Dwarf_Addr pc, struct die_vec *out,
                       int depth)
{
    Dwarf_Die child;

    if (depth > 256 || dwarf_child(parent, &child) != 0)
        return 0;
    do {
        int tag = dwarf_tag(&child);
        switch (tag) {
        case DW_TAG_subprogram:
        case DW_TAG_inlined_subroutine:
        case DW_TAG_lexical_block:
            if (dwarf_haspc(&child, pc) != 1)
                break;
            if (tag != DW_TAG_lexical_block) {
                if (grow((void **)&out->v, &out->cap, out->n + 1,
                         sizeof(*out->v)))
                    return 1;
                out->v[out->n++] = child;
            }
            walk_scopes(&child, pc, out, depth + 1);
            return 1;
        case DW_TAG_namespace:
        case DW_TAG_module:
        case DW_TAG_class_type:
        case DW_TAG_structure_type:
        case DW_TAG_union_type:
            if (walk_scopes(&child, pc, out, depth + 1))
                return 1;
            break;
        default:
            break;
        }
    } while (dwarf_siblingof(&child, &child) == 0);
    return 0;
}

static int func_range_cmp(const void *a, const void *b)
{
    const struct cu_range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->die < y->die ? -1 : x->die > y->die;
}

/* Adds the ranges of the functions under parent (through namespaces and
 * classes, as walk_scopes goes) to cf. @return -1 out of memory. */
static int collect_funcs(Dwarf_Die *parent, struct cu_funcs *cf, size_t *cap,
                         int depth)
{
    Dwarf_Die child;

    if (depth > 256 || dwarf_child(parent, &child) != 0)
        return 0;
    do {
        switch (dwarf_tag(&child)) {
        case DW_TAG_subprogram: {
            Dwarf_Addr base, lo, hi;
            ptrdiff_t r = 0;
            while ((r = dwarf_ranges(&child, r, &base, &lo, &hi)) > 0) {
                if (lo >= hi)
                    continue;
                if (grow((void **)&cf->f, cap, cf->n + 1, sizeof(*cf->f)))
                    return -1;
                cf->f[cf->n++] = (struct cu_range){lo, hi, dwarf_dieoffset(&child)};
            }
            break;
        }
        case DW_TAG_namespace:
        case DW_TAG_module:
        case DW_TAG_class_type:
        case DW_TAG_structure_type:
        case DW_TAG_union_type:
            if (collect_funcs(&child, cf, cap, depth + 1) < 0)
                return -1;
            break;
        default:
            break;
        }
    } while (dwarf_siblingof(&child, &child) == 0);
    return 0;
}

/* The function table of the CU cudie, built on first use: an address in a
 * big CU (CPython's ceval.c) then costs a binary search, not a walk over
 * every function before it. NULL when out of memory. */
static struct cu_funcs *cu_funcs(struct object *o, Dwarf_Die *cudie)
{
    Dwarf_Off off = dwarf_dieoffset(cudie);
    for (size_t i = 0; i < o->nfuncs; i++)
        if (o->funcs[i].cu == off)
            return &o->funcs[i];
    struct cu_funcs cf = {off, NULL, NULL, 0};
    size_t cap = 0;
    if (collect_funcs(cudie, &cf, &cap, 0) < 0 ||
        !(cf.maxhi = malloc((cf.n ? cf.n : 1) * sizeof(*cf.maxhi))) ||
        grow((void **)&o->funcs, &o->funcs_cap, o->nfuncs + 1, sizeof(*o->funcs))) {
        free(cf.f);
        free(cf.maxhi);
        return NULL;
    }
    if (cf.n > 1)
        qsort(cf.f, cf.n, sizeof(*cf.f), func_range_cmp);
    for (size_t i = 0; i < cf.n; i++)
        cf.maxhi[i] = i && cf.maxhi[i - 1] > cf.f[i].hi ? cf.maxhi[i - 1] : cf.f[i].hi;
    o->funcs[o->nfuncs] = cf;
    return &o->funcs[o->nfuncs++];
}

/* Collects, outermost first, the function holding pc in the CU and the
 * inlined subroutines inside it that hold pc. When functions overlap
 * (assembly aliases: __clone3 and clone3), the first in DIE order, as a
 * walk of the CU would find. */
static void cu_scopes(struct object *o, Dwarf_Die *cudie, Dwarf_Addr pc,
                      struct die_vec *out)
{
    struct cu_funcs *cf = cu_funcs(o, cudie);
    const struct cu_range *best = NULL;
    Dwarf_Die fn;

    if (!cf) {
        walk_scopes(cudie, pc, out, 0);
        return;
    }
    size_t lo = ranges_after(cf->f, cf->n, pc);
    while (lo-- > 0 && cf->maxhi[lo] > pc)
        if (pc < cf->f[lo].hi && (!best || cf->f[lo].die < best->die))
            best = &cf->f[lo];
    if (!best || !dwarf_offdie(dwarf_cu_getdwarf(cudie->cu), best->die, &fn) ||
        grow((void **)&out->v, &out->cap, out->n + 1, sizeof(*out->v)))
        return;
    out->v[out->n++] = fn;
    walk_scopes(&fn, pc, out, 1);
}

/* Appends the frames of pc (= ip - 1) in object o to s->frames. */
static int resolve_in_object(struct mt_symbolizer *s, struct object *o,
                             uint64_t ip, int *oom)
{
    uint64_t pc = ip - 1;
    struct mt_symbol f;
    const struct elf_sym *esym;
    GElf_Off symoff = 0;
    const char *elfname = NULL;
    Dwarf_Addr bias = 0;
    Dwarf_Die cubuf, *cudie, *scopes = NULL;
    int nscopes = 0;
    size_t start = s->nframes;

    memset(&f, 0, sizeof(f));
    f.object = intern(s, o->path, oom);
    f.address = ip - o->base;
    if (o->state == OBJ_UNOPENED)
        object_open(o);
    if (o->state != OBJ_OPEN) {
        f.flags = MT_SYM_NO_FILE;
        return push_frame(s, &f);
    }

    /* Only a symbol whose size covers pc: in a stripped object the nearest
     * exported symbol before pc is usually someone else (design.md §4). */
    esym = object_sym(o, pc);
    if (esym) {
        elfname = esym->name;
        symoff = pc - esym->addr;
    }

    cudie = object_cu(o, pc, &cubuf, &bias);
    if (cudie) {
        /* The physical nesting, innermost first: each inlined_subroutine
         * DIE carries its call site in the next one out. */
        struct die_vec chain = { NULL, 0, 0 };
        cu_scopes(o, cudie, pc - bias, &chain);
        for (size_t i = 0; i < chain.n / 2; i++) {
            Dwarf_Die t = chain.v[i];
            chain.v[i] = chain.v[chain.n - 1 - i];
            chain.v[chain.n - 1 - i] = t;
        }
        scopes = chain.v;
        nscopes = (int)chain.n;
    }

    /* Innermost location from the line table. */
    Dwarf_Line *line = cudie ? dwarf_getsrc_die(cudie, pc - bias) : NULL;
    const char *file = NULL;
    int lineno = 0, col = 0;
    if (line) {
        file = dwarf_linesrc(line, NULL, NULL);
        dwarf_lineno(line, &lineno);
        dwarf_linecol(line, &col);
    }

    Dwarf_Files *files = NULL;
    if (cudie && dwarf_getsrcfiles(cudie, &files, NULL) != 0)
        files = NULL;

    for (int i = 0; i < nscopes; i++) {
        int tag = dwarf_tag(&scopes[i]);
        Dwarf_Attribute attr;
        Dwarf_Word val;

        if (tag != DW_TAG_inlined_subroutine && tag != DW_TAG_subprogram)
            continue;
        f.function = die_function_name(s, &scopes[i],
                                       tag == DW_TAG_subprogram ? elfname : NULL, oom);
        f.file = intern(s, file, oom);
        f.line = lineno > 0 ? (uint32_t)lineno : 0;
        f.column = col > 0 ? (uint32_t)col : 0;
        f.flags = tag == DW_TAG_inlined_subroutine ? MT_SYM_INLINED : 0;
        f.offset = 0;
        if (tag == DW_TAG_subprogram) {
            if (!f.function && elfname)
                f.function = intern_symbol(s, elfname, oom);
            if (elfname)
                f.offset = symoff + 1;
            if (push_frame(s, &f))
                return -1;
            break; /* an enclosing subprogram is lexical nesting only */
        }
        if (push_frame(s, &f))
            return -1;
        /* The next frame out is positioned at this inline's call site. */
        file = NULL;
        lineno = col = 0;
        if (files && dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_file,
                                                &attr), &val) == 0)
            file = dwarf_filesrc(files, val, NULL, NULL);
        if (dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_line, &attr),
                            &val) == 0)
            lineno = (int)val;
        if (dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_column, &attr),
                            &val) == 0)
            col = (int)val;
    }
    free(scopes);

    if (s->nframes == start) {
        /* No DWARF function: ELF symbol (if it covers pc) and line table. */
        f.function = intern_symbol(s, elfname, oom);
        f.offset = elfname ? symoff + 1 : 0;
        f.file = intern(s, file, oom);
        f.line = lineno > 0 ? (uint32_t)lineno : 0;
        f.column = col > 0 ? (uint32_t)col : 0;
        f.flags = 0;
        return push_frame(s, &f);
    }
    /* If DWARF ended on an inline without its subprogram (unusual), the
     * last frame pushed is marked inlined; leave it: still truthful. */
    return 0;
}

int mt_symbolizer_resolve(struct mt_symbolizer *s, uint64_t ip, uint32_t objects,
                          struct mt_symbol *out, int max)
{
    struct ip_entry *e;
    struct object *o;
    size_t start;
    int oom = 0, i;

    if (!s || ip == 0 || (max > 0 && !out))
        return -1;
    if (ip_reserve(s))
        return -1;
    uint32_t g = mt_symbolizer_generation(s, objects);
    e = ip_slot(s, ip, g);
    if (!e->ip) {
        start = s->nframes;
        o = find_object(s, ip - 1, objects);
        if (o) {
            if (resolve_in_object(s, o, ip, &oom)) {
                s->nframes = start;
                return -1;
            }
        } else {
            struct mt_symbol f;
            memset(&f, 0, sizeof(f));
            f.address = ip;
            if (push_frame(s, &f))
                return -1;
        }
        if (oom) {
            s->nframes = start;
            return -1;
        }
        e->ip = ip;
        e->generation = g;
        e->first = (uint32_t)start;
        e->count = (uint32_t)(s->nframes - start);
        s->ips_used++;
    }
    for (i = 0; i < (int)e->count && i < max; i++)
        out[i] = s->frames[e->first + i];
    return (int)e->count;
}

int mt_symbol_format(const struct mt_symbol *sym, char *buf, size_t size)
{
    const char *obj = sym->object;
    const char *slash = obj ? strrchr(obj, '/') : NULL;

    if (slash)
        obj = slash + 1;
    if (sym->function && sym->file && sym->line)
        return snprintf(buf, size, "%s (%s:%" PRIu32 ")", sym->function,
                        sym->file, sym->line);
    if (sym->function && sym->offset)
        return snprintf(buf, size, "%s+0x%" PRIx64 " (%s)", sym->function,
                        sym->offset, obj ? obj : "?");
    if (sym->function)
        return snprintf(buf, size, "%s (%s)", sym->function, obj ? obj : "?");
    if (obj)
        return snprintf(buf, size, "0x%" PRIx64 " (%s)", sym->address,
                        obj[0] ? obj : "main program");
    return snprintf(buf, size, "0x%" PRIx64, sym->address);
}

void mt_symbolizer_free(struct mt_symbolizer *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nobjs; i++) {
        if (s->objs[i].dwfl)
            dwfl_end(s->objs[i].dwfl);
        free(s->objs[i].path);
        free(s->objs[i].build_id);
        free(s->objs[i].segs);
        free(s->objs[i].cus);
        free(s->objs[i].syms);
        for (size_t j = 0; j < s->objs[i].nfuncs; j++) {
            free(s->objs[i].funcs[j].f);
            free(s->objs[i].funcs[j].maxhi);
        }
        free(s->objs[i].funcs);
    }
    for (size_t i = 0; i < s->strs_cap; i++)
        free(s->strs[i].s);
    free(s->strs);
    mt_amap_release(&s->quals);
    free(s->objs);
    free(s->kills);
    free(s->ips);
    free(s->frames);
    free(s);
}
