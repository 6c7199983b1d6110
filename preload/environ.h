/* memtap run's variables in the program's environment (preload/environ.c). */
#ifndef MT_ENVIRON_H
#define MT_ENVIRON_H

/* Takes shim_path out of LD_PRELOAD and shm_name out of the environment,
 * keeping both for mt_environ_for_exec. Call from the constructor of the
 * process memtap run started, before the program reads its environment,
 * and only when its children are not followed. Does nothing unless
 * LD_PRELOAD names shim_path. */
void mt_environ_hide(const char *shm_name, const char *shim_path);

/* The environment an exec in this process should pass instead of envp:
 * envp with the two variables back when this is the process that hid them
 * (its next program goes on being recorded), envp itself in any other
 * process (a child, which runs as it would without memtap). Never
 * allocates; safe in a vfork child. */
char *const *mt_environ_for_exec(char *const envp[]);

/* Whether an exec here starts a program without the shim: a child (not
 * the process that hid the variables) of a program whose children are not
 * followed. Reads only; safe in a vfork child. */
int mt_environ_exec_untraced(void);

/* The exec given env (from mt_environ_for_exec(given)) returned: frees it. */
void mt_environ_exec_failed(char *const env[], char *const given[]);

#endif
