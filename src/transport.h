/* The shared-memory transport between the shim (producer, inside the traced
 * process) and the collector (consumer, memtap's own process).
 *
 * One memfd holds a header and MT_SLOTS rings. A thread claims a free slot at
 * its first event and releases it when it ends; each ring has exactly one
 * producer (that thread) and one consumer (the collector), so the hot path
 * takes no lock. Events carry a number from one shared counter, taken as
 * design.md §2 orders it; the collector merges the rings by that number,
 * which is dense: every number taken is written, as an event or a NOP.
 *
 * Ring records are 8-byte aligned, start with struct mt_rhdr, and never
 * straddle the ring's end (a PAD record fills the rest of the ring).
 */
#ifndef MT_TRANSPORT_H
#define MT_TRANSPORT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MT_SHM_MAGIC 0x6d656d7461707368ull /* "memtapsh" */
#define MT_SHM_VERSION 4
#define MT_SLOTS 256
#define MT_RING_BYTES (1u << 20)  /* per thread; power of two */
#define MT_ENV_SHM "MEMTAP_SHM"   /* "<fd>:<inode>[:<fork socket name>]" */
/* --follow-fork: children announce themselves with a datagram to an abstract
 * Unix socket of the collector, named in MT_ENV_SHM (a name, not an inherited
 * descriptor, so a program that exec'd another one still reaches it). The
 * name is MT_FORK_NAME_PREFIX, the collector's pid and a random part. */
#define MT_FORK_NAME_PREFIX "memtap."
#define MT_FORK_NAME_MAX 64

enum mt_slot_state {
    MT_SLOT_FREE = 0,    /* no owner; the collector has drained it */
    MT_SLOT_OWNED = 1,   /* a live thread writes into it */
    MT_SLOT_CLOSED = 2,  /* the thread ended; drain, then free */
};

/* shm flags (the run options the shim must know) */
#define MT_SHMF_NATIVE 0x1u
#define MT_SHMF_PYALLOC 0x2u  /* --trace-python-allocators */
#define MT_SHMF_FOLLOW_FORK 0x4u  /* forked children get transports of their own */
#define MT_SHMF_ADDRESSES 0x8u    /* --addresses: only for the Python API to see */

/* What a followed child sends the collector on the socket named in
 * MT_ENV_SHM, with its new transport's memfd attached (SCM_RIGHTS); the
 * collector takes it only from its own user, with pid matching the kernel's
 * credentials of the sender. A program a child exec'd follows the note in
 * the same datagram with its command line (/proc/self/cmdline: arguments
 * each ended by a NUL, at most MT_FORK_COMMAND_MAX bytes); a forked child
 * sends none: it runs its parent's program. */
struct mt_fork_note {
    int32_t pid, ppid;
};
#define MT_FORK_COMMAND_MAX 4096

struct mt_slot {
    _Atomic uint32_t state;
    uint32_t tid;          /* the owner's kernel thread id */
    uint64_t pad0;
    _Alignas(64) _Atomic uint64_t head;   /* bytes written (producer) */
    _Alignas(64) _Atomic uint64_t tail;   /* bytes consumed (collector) */
    _Alignas(64) uint8_t pad1[64];
};

struct mt_shm {
    uint64_t magic;
    uint32_t version;
    uint32_t flags;                  /* MT_SHMF_* */
    int32_t collector_pid;           /* the shim stops tracking if it dies */
    _Atomic uint32_t ring_waits;     /* times a thread found its ring full */
    _Atomic int32_t producer_pid;    /* the traced process, once attached */
    _Atomic uint32_t disabled;       /* set by the shim on internal failure */
    _Atomic uint32_t ready;          /* the shim is set up: fields below set */
    _Atomic uint32_t stopped;        /* the shim stopped recording (the API) */
    char python_version[32];         /* "" when the program is not Python */
    /* Marks (MT_R_MARK): the collector publishes, for the last mark it
     * reached, where it is in the file, once all before it is written. */
    _Atomic uint64_t marks_done;     /* marks reached: the last one's number + 1 */
    uint64_t mark_offset;            /* the file offset (a block boundary) of
                                        the last mark; UINT64_MAX: no event
                                        stream (--aggregate) or a write failed */
    /* After an exec, the new program's shim waits until the collector has
     * started the capture over (MT_R_EXEC), which it publishes here: the
     * EXEC record's number + 1. */
    _Atomic uint64_t exec_done;
    char capture_path[4096];         /* absolute; "" until the capture exists */
    char program_exe[4096];          /* the program the shim set up in (its
                                        /proc/self/exe), valid once ready */
    _Alignas(64) _Atomic uint64_t seq;   /* the next event number */
    _Alignas(64) struct mt_slot slots[MT_SLOTS];
    /* followed by MT_SLOTS rings of MT_RING_BYTES, page aligned */
};

#define MT_SHM_RINGS_OFFSET \
    (((sizeof(struct mt_shm) + 4095) / 4096) * 4096)
#define MT_SHM_BYTES (MT_SHM_RINGS_OFFSET + (uint64_t)MT_SLOTS * MT_RING_BYTES)

/* Sets up the header of a new, zeroed transport. */
static inline void mt_shm_init(struct mt_shm *shm, uint32_t flags,
                               int32_t collector_pid)
{
    shm->magic = MT_SHM_MAGIC;
    shm->version = MT_SHM_VERSION;
    shm->flags = flags;
    shm->collector_pid = collector_pid;
}

static inline uint8_t *mt_shm_ring(struct mt_shm *shm, unsigned slot)
{
    return (uint8_t *)shm + MT_SHM_RINGS_OFFSET + (uint64_t)slot * MT_RING_BYTES;
}

enum mt_rtype {
    MT_R_PAD = 0,      /* skip to the ring's end */
    MT_R_ALLOC = 1,    /* struct mt_revent: an allocation succeeded */
    MT_R_FREE = 2,     /* struct mt_revent: addr freed (size 0) */
    /* realloc and mremap are written as FREE/MUNMAP and ALLOC, each with
     * its own number: 3 and 5 are unused */
    MT_R_MUNMAP = 4,   /* struct mt_revent: [addr, addr+size) unmapped */
    MT_R_NOP = 6,      /* a number taken for a call that failed */
    MT_R_CODE = 7,     /* struct mt_rcode + strings: a Python code object */
    MT_R_PYNODE = 8,   /* struct mt_rnode: a Python stack trie node */
    MT_R_NATIVENODE = 9, /* struct mt_rnode: a native stack trie node */
    MT_R_THREAD = 10,  /* struct mt_rthread: thread start or new name */
    MT_R_OBJECT = 11,  /* struct mt_robject + path + build-id: loaded object */
    MT_R_END = 12,     /* struct mt_revent (seq only): the program ended
                          (Python: the interpreter's teardown began) */
    MT_R_MARK = 13,    /* struct mt_revent (seq; addr = the mark's number):
                          a point in the event order the program asked for
                          (memtap.Tracker under memtap run) */
    MT_R_EXEC = 14,    /* struct mt_revent (seq only): the process exec'd
                          another program, whose shim writes this first:
                          the capture starts over with it */
    MT_R_EXIT = 15,    /* struct mt_revent (seq; addr = the status exit or
                          _exit was given): the process is ending. A
                          followed child's parent reaps it, not memtap,
                          which learns how it ended only from this */
    MT_R_OBJECTS = 16, /* struct mt_revent (seq; addr = the shim's count of
                          unloads seen): objects were unloaded, so a
                          return address may now lie in another object.
                          The thread forgot its native nodes and lists
                          every loaded object next. Numbered, so that every
                          node recorded before the unload is written before
                          the list */
};

struct mt_rhdr {
    uint16_t type;     /* enum mt_rtype */
    uint16_t kind;     /* allocator (enum mt_allocator) for events */
    uint32_t len;      /* whole record in bytes, a multiple of 8 */
};

/* Ids in stacks are local to the thread; 0 = none. Only an ALLOC carries
 * the whole record: FREE, NOP and END end after addr, MUNMAP after size
 * (mt_revent_len) — every byte crosses from the program's core to the
 * collector's. */
struct mt_revent {
    struct mt_rhdr h;
    uint64_t seq;
    uint64_t addr;
    uint64_t size;
    uint32_t py_stack;     /* leaf of the Python stack trie, 0 = none */
    uint32_t native_stack; /* leaf of the native stack trie, 0 = none */
};

static inline uint32_t mt_revent_len(uint16_t type)
{
    switch (type) {
    case MT_R_ALLOC: return sizeof(struct mt_revent);
    case MT_R_MUNMAP: return offsetof(struct mt_revent, py_stack);
    default: return offsetof(struct mt_revent, size);
    }
}

struct mt_rnode {
    struct mt_rhdr h;
    uint32_t id;
    uint32_t parent;       /* 0 = root */
    uint64_t a;            /* Python: code id; native: instruction pointer */
    uint32_t b;            /* Python: instruction offset; native: 0 */
    uint32_t flags;        /* Python: MT_PYF_* */
};

/* followed by name, qualname, filename, linetable bytes (lengths below) */
struct mt_rcode {
    struct mt_rhdr h;
    uint32_t id;
    int32_t firstlineno;
    uint32_t name_len, qualname_len, filename_len, linetable_len;
    uint8_t linetable_format;
    uint8_t pad[7];
};

/* followed by name bytes */
struct mt_rthread {
    struct mt_rhdr h;
    uint32_t tid;
    uint32_t name_len;
};

/* followed by path bytes, build-id bytes, then nseg × {vaddr, memsz} */
struct mt_robject {
    struct mt_rhdr h;
    uint64_t base;
    uint32_t path_len;
    uint32_t build_id_len;
    uint32_t nseg;
    uint32_t unload;       /* 1: this object was unloaded */
};

#endif
