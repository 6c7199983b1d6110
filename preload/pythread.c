/* Python thread names (preload/pythread.h). No Python headers: the few C
 * API functions are found with dlsym and called through these types, which
 * are the same in every supported version (3.9+). */
#define _GNU_SOURCE
#include "pythread.h"
#include "pystack.h"

#include <dlfcn.h>
#include <string.h>

typedef struct py_object py_object;

static struct {
    int (*gil_check)(void);
    py_object *(*get_frame)(void);                   /* borrowed */
    py_object *(*frame_code)(py_object *);           /* new reference */
    py_object *(*get_locals)(void);                  /* borrowed */
    py_object *(*mapping_item)(py_object *, const char *);  /* new */
    py_object *(*generic_dict)(py_object *, void *);        /* new */
    py_object *(*dict_item)(py_object *, const char *);     /* borrowed */
    const char *(*utf8)(py_object *, long *);
    void (*decref)(py_object *);
    void (*err_fetch)(py_object **, py_object **, py_object **);
    void (*err_restore)(py_object *, py_object *, py_object *);
} api;

int mt_pythread_setup(void)
{
#define F(field, name) (api.field = (__typeof__(api.field))dlsym(RTLD_DEFAULT, name))
    if (!F(gil_check, "PyGILState_Check") || !F(get_frame, "PyEval_GetFrame") ||
        !F(frame_code, "PyFrame_GetCode") || !F(get_locals, "PyEval_GetLocals") ||
        !F(mapping_item, "PyMapping_GetItemString") ||
        !F(generic_dict, "PyObject_GenericGetDict") ||
        !F(dict_item, "PyDict_GetItemString") ||
        !F(utf8, "PyUnicode_AsUTF8AndSize") || !F(decref, "Py_DecRef") ||
        !F(err_fetch, "PyErr_Fetch") || !F(err_restore, "PyErr_Restore")) {
        api.gil_check = NULL;
        return -1;
    }
#undef F
    return 0;
}

static int ends_with(const char *s, size_t n, const char *tail)
{
    size_t t = strlen(tail);
    return n >= t && !memcmp(s + n - t, tail, t);
}

/* 1 when code is threading.Thread.start (the frame that calls
 * _thread.start_new_thread / start_joinable_thread). */
static int is_thread_start(py_object *code)
{
    struct mt_code_view v;
    char scratch[1024];
    if (mt_py_code_view(code, &v, scratch, sizeof scratch) < 0)
        return 0;
    return v.name_len == 5 && !memcmp(v.name, "start", 5) &&
           ends_with(v.filename, v.filename_len, "threading.py");
}

/* The Thread object's name, read from its instance dict so that no
 * property or __getattr__ of a subclass runs. */
static size_t copy_name(py_object *thread, char *buf, size_t cap)
{
    py_object *dict = api.generic_dict(thread, NULL);
    if (!dict)
        return 0;
    size_t n = 0;
    py_object *name = api.dict_item(dict, "_name");
    long len = 0;
    const char *s = name ? api.utf8(name, &len) : NULL;
    if (s && len > 0) {
        n = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
        memcpy(buf, s, n);
        buf[n] = 0;
    }
    api.decref(dict);
    return n;
}

size_t mt_py_starting_thread_name(char *buf, size_t cap)
{
    if (!api.gil_check || cap < 2 || !api.gil_check())
        return 0;
    py_object *frame = api.get_frame();
    if (!frame)
        return 0;
    py_object *code = api.frame_code(frame);
    int starting = code && is_thread_start(code);
    if (code)
        api.decref(code);
    if (!starting)
        return 0;
    py_object *type, *value, *tb;
    api.err_fetch(&type, &value, &tb);
    size_t n = 0;
    py_object *locals = api.get_locals();
    py_object *self = locals ? api.mapping_item(locals, "self") : NULL;
    if (self) {
        n = copy_name(self, buf, cap);
        api.decref(self);
    }
    /* Whatever failed above raised; the program must not see it. */
    api.err_restore(type, value, tb);
    return n;
}
