/* See unwind.h. Why not libunwind alone: its fast path (unw_backtrace) keeps
 * one 256 kB hash table per thread, so a program's few thousand return
 * addresses sit on as many cache lines in every thread's table, and each
 * call sets up a 1 kB cursor; on threads --native a single load in its
 * lookup was ~5 % of all samples. Here one table serves every thread (a
 * layout never changes once read, so the lines stay shared between cores)
 * and a call starts from three registers.
 *
 * The layout of a frame is the CFI row at the return address minus one (the
 * call instruction, as libunwind does): CFA = rsp or rbp + offset, the
 * return address at CFA - 8, rbp either unchanged or saved at CFA + offset.
 * Anything else gives up, and that answer is kept for the address too. */
#define _GNU_SOURCE
#include "unwind.h"

#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* DWARF register numbers, x86-64 psABI */
#define DW_RBP 6
#define DW_RSP 7
#define DW_RA 16
#define DW_REGS 17

/* How a frame's caller is found: packed in one word, so that a thread
 * reading the table sees a whole layout or none. */
enum { L_STEP = 1, L_END = 2, L_GIVE_UP = 3 };
#define LAYOUT_END ((uint64_t)L_END << 48)
#define LAYOUT_GIVE_UP ((uint64_t)L_GIVE_UP << 48)
#define L_KIND(l) ((unsigned)((l) >> 48) & 3u)
#define L_CFA_RBP(l) ((unsigned)((l) >> 50) & 1u)
#define L_CFA_OFF(l) ((int64_t)(int32_t)(uint32_t)(l))
#define L_RBP_OFF(l) ((int64_t)(int16_t)(uint16_t)((l) >> 32)) /* 0: unchanged */
#define LAYOUT_HIDDEN ((uint64_t)1 << 51)  /* with L_STEP: a frame left out of the stack */
#define L_HIDDEN(l) ((l) & LAYOUT_HIDDEN)

static uint64_t layout_pack(unsigned kind, int cfa_rbp, int32_t cfa_off, int16_t rbp_off)
{
    return (uint64_t)(uint32_t)cfa_off | (uint64_t)(uint16_t)rbp_off << 32 |
           (uint64_t)kind << 48 | (uint64_t)(cfa_rbp != 0) << 50;
}

/* ---- reading .eh_frame_hdr and .eh_frame ----------------------------- */

struct cursor { const uint8_t *p, *end; int bad; };

static uint64_t get_uleb(struct cursor *c)
{
    uint64_t v = 0;
    unsigned shift = 0;
    while (c->p < c->end) {
        uint8_t b = *c->p++;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80))
            return v;
    }
    c->bad = 1;
    return 0;
}

static int64_t get_sleb(struct cursor *c)
{
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0;
    while (c->p < c->end) {
        b = *c->p++;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) {
            if (shift < 64 && (b & 0x40))
                v |= ~(uint64_t)0 << shift;
            return (int64_t)v;
        }
    }
    c->bad = 1;
    return 0;
}

static uint64_t get_fixed(struct cursor *c, unsigned n)
{
    if ((size_t)(c->end - c->p) < n) {
        c->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, c->p, n);  /* little-endian */
    c->p += n;
    return v;
}

#define DW_EH_PE_omit 0xff

/* A pointer in one of the DW_EH_PE encodings the toolchains emit for code
 * addresses: absolute or relative to its own place (pcrel), or to the
 * .eh_frame_hdr (datarel, only there). value_only: the pc_range of an FDE,
 * which uses the format but no base. */
static uint64_t get_encoded(struct cursor *c, uint8_t enc, uint64_t datarel,
                            int value_only)
{
    uint64_t at = (uint64_t)(uintptr_t)c->p, v;
    switch (enc & 0x0f) {
    case 0x00: v = get_fixed(c, 8); break;
    case 0x01: v = get_uleb(c); break;
    case 0x02: v = get_fixed(c, 2); break;
    case 0x03: v = get_fixed(c, 4); break;
    case 0x04: v = get_fixed(c, 8); break;
    case 0x09: v = (uint64_t)get_sleb(c); break;
    case 0x0a: v = (uint64_t)(int64_t)(int16_t)get_fixed(c, 2); break;
    case 0x0b: v = (uint64_t)(int64_t)(int32_t)get_fixed(c, 4); break;
    case 0x0c: v = get_fixed(c, 8); break;
    default: c->bad = 1; return 0;
    }
    if (value_only)
        return v;
    switch (enc & 0x70) {
    case 0x00: return v;
    case 0x10: return v + at;
    case 0x30: if (datarel) return v + datarel; /* fall through */
    default: c->bad = 1; return 0;
    }
}

/* What a CIE says that its FDEs need. */
struct cie {
    uint64_t code_align;
    int64_t data_align;
    uint8_t fde_enc;
    int has_aug_len;   /* 'z': FDEs carry an augmentation length */
    int signal;        /* 'S': a signal frame */
    struct cursor insns;
};

static int read_cie(const uint8_t *at, const uint8_t *limit, struct cie *cie)
{
    struct cursor c = {at, limit, 0};
    uint64_t len = get_fixed(&c, 4);
    if (len == 0 || len == 0xffffffffu || len > (uint64_t)(limit - c.p))
        return -1;
    c.end = c.p + len;
    if (get_fixed(&c, 4) != 0)  /* CIE id */
        return -1;
    unsigned version = (unsigned)get_fixed(&c, 1);
    if (version != 1 && version != 3)
        return -1;
    const char *aug = (const char *)c.p;
    while (c.p < c.end && *c.p)
        c.p++;
    if (c.p >= c.end)
        return -1;
    c.p++;
    if (aug[0] && aug[0] != 'z')
        return -1;  /* "eh" and other ancient forms */
    memset(cie, 0, sizeof *cie);
    cie->code_align = get_uleb(&c);
    cie->data_align = get_sleb(&c);
    uint64_t ra = version == 1 ? get_fixed(&c, 1) : get_uleb(&c);
    if (ra != DW_RA)
        return -1;
    cie->fde_enc = 0;  /* absptr unless 'R' says otherwise */
    if (aug[0] == 'z') {
        cie->has_aug_len = 1;
        uint64_t alen = get_uleb(&c);
        if (c.bad || alen > (uint64_t)(c.end - c.p))
            return -1;
        const uint8_t *after = c.p + alen;
        for (const char *a = aug + 1; *a; a++) {
            if (*a == 'R') {
                cie->fde_enc = (uint8_t)get_fixed(&c, 1);
            } else if (*a == 'P') {
                uint8_t penc = (uint8_t)get_fixed(&c, 1);
                (void)get_encoded(&c, penc & 0x7f, 0, 1);  /* indirect or not: skip */
            } else if (*a == 'L') {
                (void)get_fixed(&c, 1);
            } else if (*a == 'S') {
                cie->signal = 1;
            } else if (*a != 'B' && *a != 'G') {
                return -1;
            }
        }
        c.p = after;
    }
    if (c.bad)
        return -1;
    cie->insns = c;
    return 0;
}

/* The rules of one CFI row that a step needs. */
enum { R_SAME = 0, R_OFFSET, R_UNDEF, R_OTHER };
struct row {
    int cfa_reg;       /* DW_RSP, DW_RBP, or -1: anything else */
    int64_t cfa_off;
    uint8_t rule[DW_REGS];
    int64_t off[DW_REGS];
};

#define CFI_STATES 8

/* Runs CFI instructions up to the row covering pc. init: the CIE's row,
 * for DW_CFA_restore. @return 0, or -1 on what this reader does not know. */
static int run_cfi(struct cursor c, const struct cie *cie, uint64_t loc, uint64_t pc,
                   struct row *r, const struct row *init)
{
    struct row saved[CFI_STATES];
    unsigned depth = 0;
    while (c.p < c.end) {
        uint8_t op = *c.p++;
        uint64_t reg = 0, delta = 0;
        int64_t off = 0;
        switch (op & 0xc0) {
        case 0x40:
            delta = (op & 0x3f) * cie->code_align;
            goto advance;
        case 0x80:
            reg = op & 0x3f;
            off = (int64_t)get_uleb(&c) * cie->data_align;
            goto set_offset;
        case 0xc0:
            reg = op & 0x3f;
            goto restore;
        }
        switch (op) {
        case 0x00: break;                                       /* nop */
        case 0x02: delta = get_fixed(&c, 1) * cie->code_align; goto advance;
        case 0x03: delta = get_fixed(&c, 2) * cie->code_align; goto advance;
        case 0x04: delta = get_fixed(&c, 4) * cie->code_align; goto advance;
        case 0x05:                                              /* offset_extended */
            reg = get_uleb(&c);
            off = (int64_t)get_uleb(&c) * cie->data_align;
            goto set_offset;
        case 0x11:                                              /* offset_extended_sf */
            reg = get_uleb(&c);
            off = get_sleb(&c) * cie->data_align;
            goto set_offset;
        case 0x2f:                                      /* GNU_negative_offset_extended */
            reg = get_uleb(&c);
            off = -(int64_t)get_uleb(&c) * cie->data_align;
            goto set_offset;
        case 0x06:                                              /* restore_extended */
            reg = get_uleb(&c);
            goto restore;
        case 0x07:                                              /* undefined */
        case 0x08:                                              /* same_value */
            reg = get_uleb(&c);
            if (reg < DW_REGS)
                r->rule[reg] = op == 0x07 ? R_UNDEF : R_SAME;
            break;
        case 0x09:                                              /* register */
            reg = get_uleb(&c);
            (void)get_uleb(&c);
            if (reg < DW_REGS)
                r->rule[reg] = R_OTHER;
            break;
        case 0x14:                                              /* val_offset */
        case 0x15:                                              /* val_offset_sf */
            reg = get_uleb(&c);
            if (op == 0x14)
                (void)get_uleb(&c);
            else
                (void)get_sleb(&c);
            if (reg < DW_REGS)
                r->rule[reg] = R_OTHER;
            break;
        case 0x10:                                              /* expression */
        case 0x16: {                                            /* val_expression */
            reg = get_uleb(&c);
            uint64_t n = get_uleb(&c);
            if (n > (uint64_t)(c.end - c.p))
                return -1;
            c.p += n;
            if (reg < DW_REGS)
                r->rule[reg] = R_OTHER;
            break;
        }
        case 0x0a:                                              /* remember_state */
            if (depth == CFI_STATES)
                return -1;
            saved[depth++] = *r;
            break;
        case 0x0b:                                              /* restore_state */
            if (depth == 0)
                return -1;
            *r = saved[--depth];
            break;
        case 0x0c:                                              /* def_cfa */
            reg = get_uleb(&c);
            r->cfa_reg = reg == DW_RSP || reg == DW_RBP ? (int)reg : -1;
            r->cfa_off = (int64_t)get_uleb(&c);
            break;
        case 0x12:                                              /* def_cfa_sf */
            reg = get_uleb(&c);
            r->cfa_reg = reg == DW_RSP || reg == DW_RBP ? (int)reg : -1;
            r->cfa_off = get_sleb(&c) * cie->data_align;
            break;
        case 0x0d:                                              /* def_cfa_register */
            reg = get_uleb(&c);
            r->cfa_reg = reg == DW_RSP || reg == DW_RBP ? (int)reg : -1;
            break;
        case 0x0e:                                              /* def_cfa_offset */
            r->cfa_off = (int64_t)get_uleb(&c);
            break;
        case 0x13:                                              /* def_cfa_offset_sf */
            r->cfa_off = get_sleb(&c) * cie->data_align;
            break;
        case 0x0f: {                                            /* def_cfa_expression */
            uint64_t n = get_uleb(&c);
            if (n > (uint64_t)(c.end - c.p))
                return -1;
            c.p += n;
            r->cfa_reg = -1;
            break;
        }
        case 0x2e:                                              /* GNU_args_size */
            (void)get_uleb(&c);
            break;
        default:                                  /* set_loc, vendor extensions */
            return -1;
        }
        if (c.bad)
            return -1;
        continue;
    advance:
        if (c.bad)
            return -1;
        loc += delta;
        if (loc > pc)
            return 0;
        continue;
    set_offset:
        if (c.bad)
            return -1;
        if (reg < DW_REGS) {
            r->rule[reg] = R_OFFSET;
            r->off[reg] = off;
        }
        continue;
    restore:
        if (c.bad || !init)
            return -1;
        if (reg < DW_REGS) {
            r->rule[reg] = init->rule[reg];
            r->off[reg] = init->off[reg];
        }
        continue;
    }
    return 0;
}

/* The layout from an FDE's row at pc. *outside: set when the FDE does not
 * cover pc. */
static uint64_t layout_of_fde(const uint8_t *fde, const uint8_t *limit, uint64_t pc,
                              int *outside)
{
    struct cursor c = {fde, limit, 0};
    uint64_t len = get_fixed(&c, 4);
    if (c.bad || len == 0 || len == 0xffffffffu || len > (uint64_t)(limit - c.p))
        return LAYOUT_GIVE_UP;
    c.end = c.p + len;
    const uint8_t *id_at = c.p;
    uint64_t cie_off = get_fixed(&c, 4);
    if (c.bad || cie_off == 0 || cie_off > (uint64_t)(uintptr_t)id_at)
        return LAYOUT_GIVE_UP;
    struct cie cie;
    /* The CIE comes before its FDE in the same section: bound it by the FDE. */
    if (read_cie(id_at - cie_off, fde, &cie) < 0 || cie.signal)
        return LAYOUT_GIVE_UP;
    uint64_t begin = get_encoded(&c, cie.fde_enc, 0, 0);
    uint64_t range = get_encoded(&c, cie.fde_enc, 0, 1);
    *outside = !c.bad && (pc < begin || pc - begin >= range);
    if (c.bad || *outside)
        return LAYOUT_GIVE_UP;
    if (cie.has_aug_len) {
        uint64_t alen = get_uleb(&c);
        if (c.bad || alen > (uint64_t)(c.end - c.p))
            return LAYOUT_GIVE_UP;
        c.p += alen;
    }
    struct row init, r;
    memset(&init, 0, sizeof init);
    init.cfa_reg = -1;
    if (run_cfi(cie.insns, &cie, begin, UINT64_MAX, &init, NULL) < 0)
        return LAYOUT_GIVE_UP;
    r = init;
    if (run_cfi(c, &cie, begin, pc, &r, &init) < 0)
        return LAYOUT_GIVE_UP;
    if (r.rule[DW_RA] == R_UNDEF)
        return LAYOUT_END;  /* the outermost frame (_start, clone) */
    if (r.cfa_reg < 0 || r.cfa_off != (int32_t)r.cfa_off ||
        r.rule[DW_RA] != R_OFFSET || r.off[DW_RA] != -8 || r.rule[DW_RSP] != R_SAME)
        return LAYOUT_GIVE_UP;
    int16_t rbp_off = 0;
    if (r.rule[DW_RBP] == R_OFFSET) {
        if (r.off[DW_RBP] == 0 || r.off[DW_RBP] != (int16_t)r.off[DW_RBP])
            return LAYOUT_GIVE_UP;
        rbp_off = (int16_t)r.off[DW_RBP];
    } else if (r.rule[DW_RBP] != R_SAME) {
        return LAYOUT_GIVE_UP;
    }
    return layout_pack(L_STEP, r.cfa_reg == DW_RBP, (int32_t)r.cfa_off, rbp_off);
}

struct find_ctx {
    uint64_t pc;
    const uint8_t *hdr;      /* the object's .eh_frame_hdr, NULL if none */
    int found;               /* pc lies in a loaded object */
    unsigned long long subs; /* the loader's unload counter */
};

static int find_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct find_ctx *f = arg;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs)
        f->subs = info->dlpi_subs;
    const uint8_t *hdr = NULL;
    int inside = 0;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uint64_t at = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && f->pc >= at && f->pc - at < ph->p_memsz)
            inside = 1;
        else if (ph->p_type == PT_GNU_EH_FRAME)
            hdr = (const uint8_t *)(uintptr_t)at;
    }
    if (!inside)
        return 0;
    f->found = 1;
    f->hdr = hdr;
    return 1;
}

/* CPython's perf trampolines (3.12+, `-X perf`): copies, back to back in
 * anonymous memory no unwind table covers, of a small function in
 * libpython that calls the evaluator (`call *%rcx`). A return address no
 * object covers is one of them when the bytes around it are the template's
 * exactly: it steps by the template's prologue, and the frame, which is not
 * the program's, is left out of the stack. The template and its layout are
 * read at setup; the copy is read with a system call, which fails rather
 * than faults on memory that is not there. */
static const uint8_t *tramp;       /* the template, NULL: this process has none */
static size_t tramp_len, tramp_ret; /* its length; the return address's offset */
static uint64_t tramp_layout;

void mt_unwind_know_trampolines(const void *start, const void *end)
{
    static const uint8_t plain[4] = {0x48, 0x83, 0xec, 0x08},  /* sub $8,%rsp */
                         framed[4] = {0x55, 0x48, 0x89, 0xe5}; /* push %rbp; mov %rsp,%rbp */
    const uint8_t *s = start, *e = end;
    tramp = NULL;
    if (!s || !e || e <= s || e - s > 64)
        return;
    for (size_t i = 4; i + 2 <= (size_t)(e - s); i++) {
        if (s[i] != 0xff || s[i + 1] != 0xd1)  /* call *%rcx */
            continue;
        if (!memcmp(s + i - 4, plain, 4))
            tramp_layout = layout_pack(L_STEP, 0, 16, 0);
        else if (!memcmp(s + i - 4, framed, 4))
            tramp_layout = layout_pack(L_STEP, 1, 16, -16);
        else
            return;
        tramp_layout |= LAYOUT_HIDDEN;
        tramp_len = (size_t)(e - s);
        tramp_ret = i + 2;
        tramp = s;
        return;
    }
}

static uint64_t trampoline_layout(uint64_t ip)
{
    uint8_t copy[64];
    if (!tramp || ip < tramp_ret)
        return LAYOUT_GIVE_UP;
    struct iovec local = {copy, tramp_len},
                 remote = {(void *)(uintptr_t)(ip - tramp_ret), tramp_len};
    int saved = errno;
    long got = syscall(SYS_process_vm_readv, (long)getpid(), &local, 1L, &remote, 1L, 0L);
    errno = saved;
    if (got != (long)tramp_len || memcmp(copy, tramp, tramp_len))
        return LAYOUT_GIVE_UP;
    return tramp_layout;
}

/* The layout for return address ip, from its object's unwind tables.
 * *subs: the loader's unload counter, read on the way. */
static uint64_t layout_read(uint64_t ip, unsigned long long *subs)
{
    struct find_ctx f = {ip - 1, NULL, 0, 0};
    dl_iterate_phdr(find_object, &f);
    *subs = f.subs;
    if (!f.found)
        return trampoline_layout(ip);
    if (!f.hdr)
        return LAYOUT_GIVE_UP;
    /* .eh_frame_hdr: version, three encodings, the .eh_frame pointer, the
     * FDE count and a sorted table of (start, FDE) pairs, 4-byte offsets
     * from the header (datarel sdata4: what ld.bfd, gold, lld and mold
     * write). The table's bounds are not known beyond its count. */
    const uint8_t *h = f.hdr;
    if (h[0] != 1 || h[3] != 0x3b)
        return LAYOUT_GIVE_UP;
    struct cursor c = {h + 4, h + 4 + 16, 0};
    (void)get_encoded(&c, h[1], (uint64_t)(uintptr_t)h, 0);
    uint64_t count = get_encoded(&c, h[2], (uint64_t)(uintptr_t)h, 0);
    if (c.bad || h[2] == DW_EH_PE_omit || count == 0)
        return LAYOUT_GIVE_UP;
    const int32_t *table = (const int32_t *)(const void *)c.p;
    uint64_t base = (uint64_t)(uintptr_t)h, lo = 0, hi = count;
    if (f.pc < base + (uint64_t)(int64_t)table[0])
        return LAYOUT_GIVE_UP;
    while (hi - lo > 1) {  /* the last entry starting at or before pc */
        uint64_t mid = lo + (hi - lo) / 2;
        if (base + (uint64_t)(int64_t)table[2 * mid] <= f.pc)
            lo = mid;
        else
            hi = mid;
    }
    const uint8_t *fde = (const uint8_t *)(uintptr_t)(base + (uint64_t)(int64_t)table[2 * lo + 1]);
    /* An FDE's length bounds what is read of it; 1 MiB bounds the length. */
    int outside = 0;
    uint64_t l = layout_of_fde(fde, fde + (1u << 20), f.pc, &outside);
    /* A return address at a function's first byte, after bytes no FDE
     * covers, was put there by no call: makecontext's (glibc's
     * __start_context). It is a coroutine's outermost frame, where
     * libunwind ends too; handing such stacks to it cost ~6 KiB of the
     * coroutine's stack per traced call. */
    if (outside && lo + 1 < count && base + (uint64_t)(int64_t)table[2 * (lo + 1)] == ip)
        return LAYOUT_END;
    return l;
}

/* ---- the table of layouts ---------------------------------------------- */

/* Open addressing, insert-only: a slot, once its key is published, never
 * changes, so readers take no lock. A writer claims an empty slot with its
 * key plus CLAIMED, stores the layout, then publishes the key. A full table
 * is replaced by a larger copy; the old one stays mapped (a thread may still
 * read it), which costs at most as much again as the last table. */
struct slot { _Atomic uint64_t ip; uint64_t layout; };
struct table {
    uint64_t cap;
    unsigned shift;
    _Atomic uint64_t used;
    unsigned long long subs;  /* the loader's unload counter when made */
    _Atomic unsigned gen;     /* unload_gen it was checked against */
    struct slot s[];
};

#define CLAIMED (1ull << 63)  /* user-space addresses never have it */
#ifndef MT_UNWIND_TABLE_FIRST  /* the unit test starts small, to grow it */
#define MT_UNWIND_TABLE_FIRST (1u << 12)
#endif
#define TABLE_FIRST MT_UNWIND_TABLE_FIRST
#define TABLE_LAST (1u << 20)
#define PROBES 32

/* Tables given up because objects were unloaded: each stays mapped, so a
 * program that unloads objects over and over would add one every time.
 * Past this many, stacks go to libunwind (which never forgets a layout). */
#define STALE_TABLES 8

static struct table *_Atomic layouts;
static _Atomic unsigned stale_tables;
/* dlclose calls seen (mt_unwind_forget): a layout found in the table is
 * only looked at again on a miss, so a table kept from before an unload
 * would give code loaded later at the same addresses the old layouts. */
static _Atomic unsigned unload_gen;

static struct table *table_new(uint64_t cap, unsigned long long subs)
{
    size_t bytes = sizeof(struct table) + cap * sizeof(struct slot);
    void *p = (void *)syscall(SYS_mmap, NULL, bytes, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct table *t = p;  /* zeroed by the kernel */
    t->cap = cap;
    t->shift = 64 - (unsigned)__builtin_ctzll(cap);
    t->subs = subs;
    t->gen = atomic_load_explicit(&unload_gen, memory_order_acquire);
    return t;
}

static void table_drop(struct table *t)
{
    syscall(SYS_munmap, t, sizeof(struct table) + t->cap * sizeof(struct slot));
}

static uint64_t slot_home(const struct table *t, uint64_t ip)
{
    return (ip * 0x9e3779b97f4a7c15ull) >> t->shift;
}

/* @return the layout, or 0 when ip is not (yet) in t. */
static uint64_t table_get(const struct table *t, uint64_t ip)
{
    uint64_t mask = t->cap - 1, j = slot_home(t, ip);
    for (unsigned n = 0; n < PROBES; n++, j = (j + 1) & mask) {
        uint64_t k = atomic_load_explicit(&t->s[j].ip, memory_order_acquire);
        if (k == ip)
            return t->s[j].layout;
        if (k == 0)
            return 0;
    }
    return 0;
}

static void table_put(struct table *t, uint64_t ip, uint64_t layout)
{
    uint64_t mask = t->cap - 1, j = slot_home(t, ip);
    for (unsigned n = 0; n < PROBES; n++, j = (j + 1) & mask) {
        uint64_t k = atomic_load_explicit(&t->s[j].ip, memory_order_acquire);
        if (k == 0 && atomic_compare_exchange_strong_explicit(
                          &t->s[j].ip, &k, ip | CLAIMED, memory_order_acquire,
                          memory_order_acquire)) {
            t->s[j].layout = layout;
            atomic_store_explicit(&t->s[j].ip, ip, memory_order_release);
            atomic_fetch_add_explicit(&t->used, 1, memory_order_relaxed);
            return;
        }
        if ((k & ~CLAIMED) == ip)
            return;  /* another thread got there first */
    }
}

/* A larger copy of t (its published slots), or a fresh one when objects
 * were unloaded since t was made (their layouts may now be wrong). */
static void table_replace(struct table *t, unsigned long long subs)
{
    int stale = t && t->subs != subs;
    if (stale && atomic_fetch_add_explicit(&stale_tables, 1, memory_order_relaxed) >=
                     STALE_TABLES)
        return;
    uint64_t cap = !t || stale ? (t ? t->cap : TABLE_FIRST) : t->cap * 4;
    if (cap > TABLE_LAST)
        return;  /* stays full: misses read .eh_frame each time */
    struct table *n = table_new(cap, subs);
    if (!n)
        return;
    if (t && !stale)
        for (uint64_t i = 0; i < t->cap; i++) {
            uint64_t k = atomic_load_explicit(&t->s[i].ip, memory_order_acquire);
            if (k && !(k & CLAIMED))
                table_put(n, k, t->s[i].layout);
        }
    struct table *expect = t;
    if (!atomic_compare_exchange_strong_explicit(&layouts, &expect, n,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire))
        table_drop(n);  /* another thread replaced it: use theirs */
}

/* A miss: the layout read from the tables and kept. noinline: its locals
 * are not in every walk's frame (the stack of each traced call). */
__attribute__((noinline))
static uint64_t layout_learn(struct table *t, uint64_t ip)
{
    unsigned long long subs;
    uint64_t l = layout_read(ip, &subs);
    if (!t || t->subs != subs ||
        (atomic_load_explicit(&t->used, memory_order_relaxed) + 1) * 2 > t->cap) {
        table_replace(t, subs);
        t = atomic_load_explicit(&layouts, memory_order_acquire);
    }
    if (t)
        table_put(t, ip, l);
    return l;
}

static uint64_t layout_get(uint64_t ip)
{
    struct table *t = atomic_load_explicit(&layouts, memory_order_acquire);
    uint64_t l = t ? table_get(t, ip) : 0;
    return l ? l : layout_learn(t, ip);
}

/* ---- the walk ---------------------------------------------------------- */

/* regs[0] = the return address into the caller, regs[1] = the caller's rsp
 * at it, regs[2] = rbp (the caller's, untouched here). */
void mt_unwind_regs(uint64_t regs[3]);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl mt_unwind_regs\n"
        ".hidden mt_unwind_regs\n"
        ".type mt_unwind_regs, @function\n"
        "mt_unwind_regs:\n"
        ".cfi_startproc\n"
        "    movq (%rsp), %rax\n"
        "    movq %rax, 0(%rdi)\n"
        "    leaq 8(%rsp), %rax\n"
        "    movq %rax, 8(%rdi)\n"
        "    movq %rbp, 16(%rdi)\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size mt_unwind_regs, .-mt_unwind_regs\n");

/* Frames further out than this from the walk's start are not believed: no
 * thread's stack is that deep. */
#define STACK_MAX (1ull << 30)

extern void *__libc_stack_end;  /* the loader's: the stack pointer at entry */

/* The end of the calling thread's stack, seen from sp: glibc puts a
 * thread's descriptor above its stack, and the main thread's frames are all
 * below where the kernel started the process. 0 when sp is in neither (an
 * alternate signal stack, a thread glibc did not start): not bounded. */
static uintptr_t stack_top(uintptr_t sp)
{
    uintptr_t self = (uintptr_t)pthread_self(), start = (uintptr_t)__libc_stack_end;
    if (sp < self && self - sp < STACK_MAX)
        return self;
    if (sp < start && start - sp < STACK_MAX)
        return start;
    return 0;
}

/* The walk from regs (mt_unwind_regs of the public function's own frame),
 * reading nothing at or above top (0: anywhere). A frame whose return
 * address or saved rbp would lie there ends the stack: its layout does not
 * fit this stack (unwind tables that are wrong, or stale: other code now
 * at an address whose layout was read before), and following it could
 * read memory that is not there. */
static inline __attribute__((always_inline))
int walk(const uint64_t regs[3], uintptr_t *ips, int max, int skip, uintptr_t top)
{
    uint64_t ip = regs[0], sp = regs[1], rbp = regs[2];
    /* ip is in the public function's own frame: stepped over, not written. */
    for (int n = -1 - (skip > 0 ? skip : 0);; n++) {
        uint64_t l = layout_get(ip);
        if (n >= 0) {
            if (n == max)
                return n;
            if (L_HIDDEN(l))
                n--;
            else
                ips[n] = ip;
        }
        unsigned kind = L_KIND(l);
        if (kind == L_END)
            return n + 1 > 0 ? n + 1 : 0;
        if (kind != L_STEP)
            return -1;
        uint64_t cfa = (L_CFA_RBP(l) ? rbp : sp) + (uint64_t)L_CFA_OFF(l);
        if (cfa <= sp || (cfa & 7))
            return -1;  /* not a frame further out: let libunwind judge */
        uint64_t saved = cfa + (uint64_t)L_RBP_OFF(l);
        if (top && (cfa > top || (L_RBP_OFF(l) && (saved < sp || saved + 8 > top))))
            return n + 1 > 0 ? n + 1 : 0;
        if (L_RBP_OFF(l))
            rbp = *(const uint64_t *)(uintptr_t)saved;
        ip = *(const uint64_t *)(uintptr_t)(cfa - 8);
        sp = cfa;
        if (ip == 0)
            return n + 1 > 0 ? n + 1 : 0;
    }
}

static int read_subs(struct dl_phdr_info *info, size_t size, void *arg)
{
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs)
        *(unsigned long long *)arg = info->dlpi_subs;
    return 1;  /* the counter is global: the first object is enough */
}

/* The loader's unload counter (its lock, briefly: once per dlclose). */
static unsigned long long unloads_now(void)
{
    unsigned long long subs = 0;
    dl_iterate_phdr(read_subs, &subs);
    return subs;
}

void mt_unwind_forget(void)
{
    atomic_fetch_add_explicit(&unload_gen, 1, memory_order_acq_rel);
}

/* After a dlclose: the table is replaced when an object was unloaded
 * since it was made (a dlclose that only drops a reference keeps it). */
static void check_unloads(void)
{
    struct table *t = atomic_load_explicit(&layouts, memory_order_acquire);
    unsigned gen = atomic_load_explicit(&unload_gen, memory_order_acquire);
    if (!t || atomic_load_explicit(&t->gen, memory_order_relaxed) == gen)
        return;
    unsigned long long subs = unloads_now();
    if (subs != t->subs)
        table_replace(t, subs);
    else
        atomic_store_explicit(&t->gen, gen, memory_order_relaxed);
}

__attribute__((noinline))
int mt_unwind_backtrace(uintptr_t *ips, int max, int skip)
{
    check_unloads();
    if (atomic_load_explicit(&stale_tables, memory_order_relaxed) > STALE_TABLES)
        return -1;
    uint64_t regs[3];
    mt_unwind_regs(regs);
    return walk(regs, ips, max, skip, stack_top(regs[1]));
}

__attribute__((noinline))
int mt_unwind_backtrace_below(uintptr_t *ips, int max, int skip, uintptr_t top)
{
    check_unloads();
    if (atomic_load_explicit(&stale_tables, memory_order_relaxed) > STALE_TABLES)
        return -1;
    uint64_t regs[3];
    mt_unwind_regs(regs);
    return walk(regs, ips, max, skip, top);
}
