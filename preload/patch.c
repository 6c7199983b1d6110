/* GOT patching for the Python API (patch.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "patch.h"
#include "real.h"

#define EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__)
#define R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define R_GLOB_DAT R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define R_GLOB_DAT R_AARCH64_GLOB_DAT
#else
#error "GOT patching: RELA relocations of x86-64 or AArch64 only"
#endif

#define ELF_R_SYM(i) ELF64_R_SYM(i)
#define ELF_R_TYPE(i) ELF64_R_TYPE(i)

/* The functions redirected, in the order of struct mt_real. */
static const char *const names[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
    "aligned_alloc", "memalign", "valloc", "pvalloc", "mmap", "mmap64",
    "munmap", "mremap", "prctl", "pthread_setname_np", "pthread_create", "dlclose",
    "_exit",
};
#define NNAMES (sizeof names / sizeof *names)

static void *hooks[NNAMES];

/* One rewritten GOT entry and what it held. */
struct slot {
    void **where;
    void *old;
    int relro;     /* in the pages the loader made read-only */
};

/* One patched object: identified by its load address, program headers and
 * name (a later object can reuse an address range). */
struct object {
    uintptr_t base;
    const void *phdr;
    uint64_t name_hash;
    uint32_t first, n;     /* its slots */
    int seen;
};

#define MAX_OBJECTS 4096
#define MAX_SLOTS 65536
static struct object objects[MAX_OBJECTS];
static struct slot slots[MAX_SLOTS];
static uint32_t nobjects, nslots;
static unsigned long long last_adds = ~0ull, last_subs = ~0ull;
static uintptr_t self_base;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int name_is(const char *path, const char *prefix)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, prefix, strlen(prefix)) == 0;
}

static int hook_index(const char *name)
{
    for (unsigned i = 0; i < NNAMES; i++)
        if (!strcmp(name, names[i]))
            return (int)i;
    return -1;
}

/* The shim's exported hooks, through a handle on the shim itself (a plain
 * reference from here would bind to libc's definitions: the shim was
 * loaded RTLD_LOCAL, after libc). */
static int find_hooks(void)
{
    if (hooks[0])
        return 0;
    Dl_info me;
    if (!dladdr((void *)find_hooks, &me) || !me.dli_fname)
        return -1;
    void *h = dlopen(me.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return -1;
    for (unsigned i = 0; i < NNAMES; i++)
        if (!(hooks[i] = dlsym(h, names[i])) ) {
            dlclose(h);
            hooks[0] = NULL;
            return -1;
        }
    dlclose(h);   /* drops the reference NOLOAD took; the shim stays */
    self_base = (uintptr_t)me.dli_fbase;
    /* dlsym(RTLD_NEXT) from a dlopen'ed shim searches its own dependency
     * list after itself: libc. Make sure, since a hook whose "real"
     * function is itself would recurse forever. */
    mt_real_resolve();
    void **real = (void **)&mt_real;
    for (unsigned i = 0; i < NNAMES; i++)
        if (!real[i] || real[i] == hooks[i]) {
            void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
            void *f = libc ? dlsym(libc, names[i]) : NULL;
            if (libc)
                dlclose(libc);
            if (!f || f == hooks[i])
                return -1;
            __atomic_store_n(&real[i], f, __ATOMIC_RELEASE);
        }
    return 0;
}

static uintptr_t dyn_ptr(uintptr_t v, uintptr_t base)
{
    /* glibc relocates most d_ptr entries in place; a read-only dynamic
     * section (vdso, some targets) keeps them relative. */
    return v < base ? v + base : v;
}

static struct object *find_object(const struct dl_phdr_info *info, uint64_t h)
{
    for (uint32_t i = 0; i < nobjects; i++)
        if (objects[i].base == info->dlpi_addr && objects[i].phdr == info->dlpi_phdr &&
            objects[i].name_hash == h)
            return &objects[i];
    return NULL;
}

static int skip_object(const struct dl_phdr_info *info)
{
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    return info->dlpi_addr == self_base && self_base != 0 ? 1
         : name_is(name, "ld-linux") || name_is(name, "ld-musl") ||
           name_is(name, "linux-vdso") || name_is(name, "linux-gate");
}

/* Rewrites the allocation relocations of one object. @return slots. */
static uint32_t patch_object(const struct dl_phdr_info *info)
{
    uintptr_t base = info->dlpi_addr;
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t relro = 0, relro_end = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        if (p->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(base + p->p_vaddr);
        else if (p->p_type == PT_GNU_RELRO) {
            relro = base + p->p_vaddr;
            relro_end = relro + p->p_memsz;
        }
    }
    if (!dyn)
        return 0;
    /* The loader protects whole pages only: from the first page of the
     * segment up to the last page that ends inside it (glibc
     * _dl_protect_relro). */
    long page = sysconf(_SC_PAGESIZE);
    relro &= ~(uintptr_t)(page - 1);
    relro_end &= ~(uintptr_t)(page - 1);
    uintptr_t jmprel = 0, rela = 0, symtab = 0, strtab = 0;
    size_t pltrelsz = 0, relasz = 0;
    long pltrel = DT_RELA;
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_JMPREL: jmprel = dyn_ptr(d->d_un.d_ptr, base); break;
        case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
        case DT_PLTREL: pltrel = (long)d->d_un.d_val; break;
        case DT_RELA: rela = dyn_ptr(d->d_un.d_ptr, base); break;
        case DT_RELASZ: relasz = d->d_un.d_val; break;
        case DT_SYMTAB: symtab = dyn_ptr(d->d_un.d_ptr, base); break;
        case DT_STRTAB: strtab = dyn_ptr(d->d_un.d_ptr, base); break;
        }
    }
    if (!symtab || !strtab || pltrel != DT_RELA)
        return 0;
    /* libc defines the functions and calls them through its own GOT (so
     * that they can be interposed): those entries are patched too, as
     * LD_PRELOAD would. Elsewhere an object that defines malloc has an
     * allocator of its own: left alone. */
    int is_libc = name_is(info->dlpi_name ? info->dlpi_name : "", "libc.so");
    const ElfW(Sym) *syms = (const ElfW(Sym) *)symtab;
    const char *str = (const char *)strtab;
    const struct { uintptr_t at; size_t size; } tables[2] = {{jmprel, pltrelsz}, {rela, relasz}};

    /* Pass 1: which entries (so RELRO is opened once, only when needed). */
    uint32_t first = nslots, n = 0;
    int in_relro = 0;
    for (int t = 0; t < 2; t++) {
        if (!tables[t].at) continue;
        const ElfW(Rela) *r = (const ElfW(Rela) *)tables[t].at;
        size_t count = tables[t].size / sizeof *r;
        for (size_t i = 0; i < count; i++) {
            unsigned type = (unsigned)ELF_R_TYPE(r[i].r_info);
            if (type != R_JUMP_SLOT && type != R_GLOB_DAT)
                continue;
            const ElfW(Sym) *s = &syms[ELF_R_SYM(r[i].r_info)];
            int k = hook_index(str + s->st_name);
            if (k < 0 || (s->st_shndx != SHN_UNDEF && !is_libc))
                continue;
            if (nslots + n >= MAX_SLOTS)
                break;
            void **where = (void **)(base + r[i].r_offset);
            int ro = (uintptr_t)where >= relro && (uintptr_t)where < relro_end;
            slots[first + n++] = (struct slot){where, (void *)(uintptr_t)k, ro};
            in_relro |= ro;
        }
    }
    if (!n)
        return 0;
    void *lo = (void *)relro;
    size_t len = relro_end - relro;
    if (in_relro && mprotect(lo, len, PROT_READ | PROT_WRITE) != 0)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        struct slot *sl = &slots[first + i];
        int k = (int)(uintptr_t)sl->old;
        sl->old = __atomic_load_n(sl->where, __ATOMIC_RELAXED);
        __atomic_store_n(sl->where, hooks[k], __ATOMIC_RELEASE);
    }
    if (in_relro)
        mprotect(lo, len, PROT_READ);
    nslots += n;
    return n;
}

static int counters(struct dl_phdr_info *info, size_t size, void *data)
{
    unsigned long long *c = data;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        c[0] = info->dlpi_adds;
        c[1] = info->dlpi_subs;
    }
    return 1;  /* the counters are the same in every entry */
}

/* Marks loaded objects seen; patches the new ones when `patch`, restores
 * the seen ones otherwise. */
struct walk { int patch; int done; };

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct walk *w = data;
    if (skip_object(info))
        return 0;
    uint64_t h = hash_name(info->dlpi_name);
    struct object *o = find_object(info, h);
    if (!w->patch) {
        if (!o)
            return 0;
        /* Restore in reverse: an entry listed twice gets its first value. */
        for (uint32_t i = o->n; i-- > 0;) {
            struct slot *sl = &slots[o->first + i];
            size_t page = (size_t)sysconf(_SC_PAGESIZE);
            void *at = (void *)((uintptr_t)sl->where & ~(uintptr_t)(page - 1));
            /* RELRO is read-only again: open the page for this write. */
            if (sl->relro && mprotect(at, page, PROT_READ | PROT_WRITE) != 0)
                continue;
            __atomic_store_n(sl->where, sl->old, __ATOMIC_RELEASE);
            if (sl->relro)
                mprotect(at, page, PROT_READ);
            w->done++;
        }
        return 0;
    }
    if (o) {
        o->seen = 1;
        return 0;
    }
    if (nobjects == MAX_OBJECTS)
        return 0;
    uint32_t first = nslots, n = patch_object(info);
    objects[nobjects++] = (struct object){info->dlpi_addr, info->dlpi_phdr, h, first, n, 1};
    w->done += (int)n;
    return 0;
}

EXPORT int memtap_patch(void)
{
    pthread_mutex_lock(&lock);
    if (find_hooks() < 0) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    unsigned long long c[2] = {0, 0};
    dl_iterate_phdr(counters, c);
    if (c[0] == last_adds && c[1] == last_subs) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    for (uint32_t i = 0; i < nobjects; i++)
        objects[i].seen = 0;
    struct walk w = {1, 0};
    dl_iterate_phdr(visit, &w);
    /* Objects unloaded since: forget them (their memory is gone). */
    uint32_t k = 0;
    for (uint32_t i = 0; i < nobjects; i++)
        if (objects[i].seen)
            objects[k++] = objects[i];
    nobjects = k;
    last_adds = c[0];
    last_subs = c[1];
    pthread_mutex_unlock(&lock);
    return w.done;
}

EXPORT int memtap_unpatch(void)
{
    pthread_mutex_lock(&lock);
    struct walk w = {0, 0};
    dl_iterate_phdr(visit, &w);
    nobjects = nslots = 0;
    last_adds = last_subs = ~0ull;
    pthread_mutex_unlock(&lock);
    return w.done;
}
