/* The two environment variables memtap run gives the program (LD_PRELOAD
 * naming the shim, MEMTAP_SHM naming the transport), kept out of the
 * program's sight when its children are not followed: a child must start
 * as it would without memtap (an ASan program refuses a preloaded library
 * before its runtime; `env` must print what it would). The program itself
 * gets them back when it execs another program: the capture goes on there. */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "environ.h"
#include "real.h"

extern char **environ;

static int hidden;
static pid_t owner;            /* the process whose exec keeps them */
static char shm_entry[256];    /* "MEMTAP_SHM=..." */
static char self_path[4096];   /* the shim, as LD_PRELOAD named it */

/* The LD_PRELOAD entries of list (':' or ' ' apart) but self_path, into
 * out (cap bytes). @return 1 when self_path was among them. */
static int without_self(const char *list, char *out, size_t cap)
{
    size_t self = strlen(self_path), n = 0;
    int found = 0;
    out[0] = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ": ");
        if (len == self && !memcmp(p, self_path, len)) {
            found = 1;  /* every copy: an environment saved before could hold one */
        } else if (len && n + len + 2 < cap) {
            if (n)
                out[n++] = ':';
            memcpy(out + n, p, len);
            n += len;
            out[n] = 0;
        }
        p += len;
        p += *p != 0;
    }
    return found;
}

/* environ's entry for name, or NULL. The program's own getenv and
 * setenv may be its own (bash has them, working on its variables once it
 * runs): environ is read and replaced directly. */
static char **entry(const char *name)
{
    size_t len = strlen(name);
    for (char **e = environ; e && *e; e++)
        if (!strncmp(*e, name, len) && (*e)[len] == '=')
            return e;
    return NULL;
}

void mt_environ_hide(const char *shm_name, const char *shim_path)
{
    char **shm = entry(shm_name), **pre = entry("LD_PRELOAD");
    char rest[4096];
    if (!shm || !pre || strlen(*shm) >= sizeof shm_entry ||
        strlen(shim_path) >= sizeof self_path || strlen(*pre) >= sizeof rest)
        return;
    strcpy(self_path, shim_path);
    if (!without_self(*pre + 11, rest, sizeof rest))
        return;  /* not preloaded by name: leave the environment alone */
    /* memtap run put the shim before the program's own list: that list
     * goes back as it was written (spaces, empty entries), unless it
     * named the shim too. */
    const char *own = *pre + 11 + strlen(self_path);
    char again[4096];
    int verbatim = !strncmp(*pre + 11, self_path, strlen(self_path)) && *own == ':' &&
                   !without_self(own + 1, again, sizeof again);
    if (verbatim)
        strcpy(rest, own + 1);  /* even empty: the program had it set */
    strcpy(shm_entry, *shm);
    size_t n = 0;
    while (environ[n])
        n++;
    /* A new array (the old one may be the kernel's, on the stack); the
     * program may free or replace it as it likes. */
    size_t bytes = (n + 1) * sizeof(char *) + 11 + strlen(rest) + 1;
    char **env = mt_raw_mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (env == MAP_FAILED)
        return;
    char *line = (char *)(env + n + 1);
    strcpy(line, "LD_PRELOAD=");
    strcat(line, rest);
    size_t k = 0;
    for (char **e = environ; *e; e++) {
        if (e == shm)
            continue;
        if (e == pre) {
            if (rest[0] || verbatim)
                env[k++] = line;
            continue;
        }
        env[k++] = *e;
    }
    env[k] = NULL;
    environ = env;
    owner = getpid();
    hidden = 1;
}

/* The arrays mt_environ_for_exec maps start this far after their mapping,
 * which begins with its size. */
#define ENV_HEADER 16

int mt_environ_exec_untraced(void)
{
    return hidden && getpid() != owner;
}

char *const *mt_environ_for_exec(char *const envp[])
{
    if (!hidden || getpid() != owner)
        return envp;
    size_t n = 0, pre = (size_t)-1;
    size_t shm_name = (size_t)(strchr(shm_entry, '=') - shm_entry) + 1;
    for (; envp && envp[n]; n++)
        if (!strncmp(envp[n], "LD_PRELOAD=", 11))
            pre = n;
    /* Mapped, not allocated: nothing here may call the hooks. */
    size_t old = pre != (size_t)-1 ? strlen(envp[pre]) : 0;
    size_t bytes = ENV_HEADER + (n + 3) * sizeof(char *) + 11 + strlen(self_path) + 1 + old + 1;
    char *map = mt_raw_mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return envp;
    memcpy(map, &bytes, sizeof bytes);
    char **out = (char **)(map + ENV_HEADER);
    char *line = (char *)(out + n + 3);
    strcpy(line, "LD_PRELOAD=");
    strcat(line, self_path);
    if (pre != (size_t)-1) {
        /* the shim once, first, then the program's list as it wrote it
         * (mt_environ_hide gives it back so); a list saved before the
         * constructor hid the shim (/proc/self/environ) holds it already,
         * and goes without it */
        size_t at = strlen(line);
        if (!without_self(envp[pre] + 11, line + at + 1, old + 1)) {
            line[at] = ':';
            strcpy(line + at + 1, envp[pre] + 11);
        } else if (line[at + 1]) {
            line[at] = ':';
        }
    }
    /* LD_PRELOAD where it was, the rest after, as setenv puts them: the
     * next program's environment, once it has hidden them again, is in
     * the order the program gave. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (i == pre)
            out[k++] = line;
        else if (strncmp(envp[i], shm_entry, shm_name))
            out[k++] = envp[i];
    if (pre == (size_t)-1)
        out[k++] = line;
    out[k++] = shm_entry;
    out[k] = NULL;
    return out;
}

void mt_environ_exec_failed(char *const env[], char *const given[])
{
    if (env == given || !env)
        return;
    char *map = (char *)env - ENV_HEADER;
    size_t bytes;
    memcpy(&bytes, map, sizeof bytes);
    mt_raw_munmap(map, bytes);
}
