#!/usr/bin/env python3
"""Generate preload/pyoffsets.h: CPython struct offsets, per version,
taken from each version's own headers (never typed by hand).

For each interpreter it compiles a small C program with -DPy_BUILD_CORE
against that version's include/ (and include/internal/), which prints
offsetof()/sizeof() values; one table row per minor version. Patch
releases of one minor version must agree (else the generator fails: the
table would need a row per patch release).

  tools/gen-pyoffsets.py          # rewrite preload/pyoffsets.h
  tools/gen-pyoffsets.py --check  # exit 1 if the header is stale or
                                  # the installed headers disagree
  PYTHONS="python3.9 ..."         # interpreters to use (default below)
"""
import os
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "preload", "pyoffsets.h")
DEFAULT_PYTHONS = [
    "/root/.pyenv/versions/3.9.18/bin/python3",
    "/root/.pyenv/versions/3.10.13/bin/python3",
    "/root/.pyenv/versions/3.11.7/bin/python3",
    "/usr/bin/python3",  # Debian's 3.11.2: must match pyenv's 3.11.7
    "/root/.pyenv/versions/3.12.1/bin/python3",
    "/root/.pyenv/versions/3.13.0/bin/python3",
]

# name, minimum version, C expression. Absent fields are -1.
FIELDS = [
    ("ob_type", (3, 9), "offsetof(PyObject, ob_type)"),
    ("runtime_finalizing", (3, 9), "offsetof(_PyRuntimeState, _finalizing)"),
    ("tstate_thread_id", (3, 9), "offsetof(PyThreadState, thread_id)"),
    ("tstate_frame", (3, 9), "offsetof(PyThreadState, frame)", (3, 11)),
    ("frame_back", (3, 9), "offsetof(PyFrameObject, f_back)", (3, 11)),
    ("frame_code", (3, 9), "offsetof(PyFrameObject, f_code)", (3, 11)),
    ("frame_lasti", (3, 9), "offsetof(PyFrameObject, f_lasti)", (3, 11)),
    ("tstate_cframe", (3, 11), "offsetof(PyThreadState, cframe)", (3, 13)),
    ("cframe_current_frame", (3, 11), "offsetof(_PyCFrame, current_frame)", (3, 13)),
    ("tstate_current_frame", (3, 13), "offsetof(PyThreadState, current_frame)"),
    ("iframe_previous", (3, 11), "offsetof(_PyInterpreterFrame, previous)"),
    ("iframe_code", (3, 11), "offsetof(_PyInterpreterFrame, f_code)", (3, 13)),
    ("iframe_code", (3, 13), "offsetof(_PyInterpreterFrame, f_executable)"),
    ("iframe_instr", (3, 11), "offsetof(_PyInterpreterFrame, prev_instr)", (3, 13)),
    ("iframe_instr", (3, 13), "offsetof(_PyInterpreterFrame, instr_ptr)"),
    ("iframe_owner", (3, 11), "offsetof(_PyInterpreterFrame, owner)"),
    ("iframe_is_entry", (3, 11), "offsetof(_PyInterpreterFrame, is_entry)", (3, 12)),
    ("owned_by_generator", (3, 11), "FRAME_OWNED_BY_GENERATOR"),
    ("owned_by_cstack", (3, 12), "FRAME_OWNED_BY_CSTACK"),
    ("code_size", (3, 9), "sizeof(PyCodeObject)"),
    ("code_name", (3, 9), "offsetof(PyCodeObject, co_name)"),
    ("code_qualname", (3, 11), "offsetof(PyCodeObject, co_qualname)"),
    ("code_filename", (3, 9), "offsetof(PyCodeObject, co_filename)"),
    ("code_firstlineno", (3, 9), "offsetof(PyCodeObject, co_firstlineno)"),
    ("code_linetable", (3, 9), "offsetof(PyCodeObject, co_lnotab)", (3, 10)),
    ("code_linetable", (3, 10), "offsetof(PyCodeObject, co_linetable)"),
    ("code_code", (3, 9), "offsetof(PyCodeObject, co_code)", (3, 11)),
    ("code_adaptive", (3, 11), "offsetof(PyCodeObject, co_code_adaptive)"),
    ("code_firsttraceable", (3, 11), "offsetof(PyCodeObject, _co_firsttraceable)"),
    ("bytes_size", (3, 9), "offsetof(PyBytesObject, ob_base.ob_size)"),
    ("bytes_sval", (3, 9), "offsetof(PyBytesObject, ob_sval)"),
    ("str_length", (3, 9), "offsetof(PyASCIIObject, length)"),
    ("str_state", (3, 9), "offsetof(PyASCIIObject, state)"),
    ("str_ascii_size", (3, 9), "sizeof(PyASCIIObject)"),
    ("str_compact_size", (3, 9), "sizeof(PyCompactUnicodeObject)"),
    ("str_utf8_length", (3, 9), "offsetof(PyCompactUnicodeObject, utf8_length)"),
    ("str_utf8", (3, 9), "offsetof(PyCompactUnicodeObject, utf8)"),
    ("str_kind_mask", (3, 9), "STATE_MASK(kind)"),
    ("str_compact_mask", (3, 9), "STATE_MASK(compact)"),
    ("str_ascii_mask", (3, 9), "STATE_MASK(ascii)"),
    # Where _Py_DebugOffsets sits in _PyRuntime, and where the fields we
    # read sit inside it (the 3.13 layout; see pystack.c for later ones).
    ("dbg_runtime", (3, 13), "offsetof(_PyRuntimeState, debug_offsets)"),
]
DBG_FIELDS = [
    "version", "free_threaded",
    "runtime_state.size", "runtime_state.finalizing",
    "thread_state.size", "thread_state.current_frame", "thread_state.thread_id",
    "interpreter_frame.size", "interpreter_frame.previous",
    "interpreter_frame.executable", "interpreter_frame.instr_ptr",
    "interpreter_frame.owner",
    "code_object.size", "code_object.filename", "code_object.name",
    "code_object.qualname", "code_object.linetable", "code_object.firstlineno",
    "code_object.co_code_adaptive",
    "pyobject.size", "pyobject.ob_type",
    "bytes_object.size", "bytes_object.ob_size", "bytes_object.ob_sval",
    "unicode_object.size", "unicode_object.state", "unicode_object.length",
    "unicode_object.asciiobject_size",
]

PROGRAM = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <frameobject.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_pystate.h"
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
#endif
/* Bit mask of a bitfield of PyASCIIObject.state, as stored in memory. */
#define STATE_MASK(f) ({ PyASCIIObject o; unsigned int w;                    \
        memset(&o, 0, sizeof o); o.state.f = ~0u;                        \
        memcpy(&w, &o.state, sizeof w); (long)w; })
int main(void) {
    printf("version %d.%d.%d\n", PY_MAJOR_VERSION, PY_MINOR_VERSION, PY_MICRO_VERSION);
#ifdef Py_TRACE_REFS
    printf("error Py_TRACE_REFS\n");
#endif
#ifdef Py_GIL_DISABLED
    printf("error Py_GIL_DISABLED\n");
#endif
%s
    return 0;
}
"""


def probe(py):
    info = subprocess.run(
        [py, "-c", "import sys, sysconfig; print(sys.version_info[0], "
         "sys.version_info[1]); print(sysconfig.get_paths()['include'])"],
        check=True, capture_output=True, text=True).stdout.split("\n")
    ver = tuple(int(x) for x in info[0].split())
    inc = info[1]
    lines = []
    for f in FIELDS:
        name, lo, expr = f[0], f[1], f[2]
        hi = f[3] if len(f) > 3 else (99, 0)
        if lo <= ver < hi:
            lines.append('    printf("%s %%ld\\n", (long)(%s));' % (name, expr))
    if ver >= (3, 13):
        for d in DBG_FIELDS:
            lines.append('    printf("dbg_%s %%ld\\n", (long)offsetof(_Py_DebugOffsets, %s));'
                         % (d.replace(".", "_"), d))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as fh:
            fh.write(PROGRAM.replace("%s", "\n".join(lines), 1))
        subprocess.run(["cc", "-std=gnu11", "-w", "-I", inc, "-I",
                        os.path.join(inc, "internal"), src, "-o", exe],
                       check=True)
        out = subprocess.run([exe], check=True, capture_output=True,
                             text=True).stdout
    vals = {}
    for line in out.splitlines():
        k, v = line.split(None, 1)
        if k == "error":
            raise SystemExit("%s: unsupported build (%s)" % (py, v))
        vals[k] = v if k == "version" else int(v)
    return ver, vals


def names():
    seen = []
    for f in FIELDS:
        if f[0] not in seen:
            seen.append(f[0])
    return seen


def render(rows):
    out = ["/* GENERATED by tools/gen-pyoffsets.py from each CPython version's",
           " * own headers; do not edit. Re-check: tools/gen-pyoffsets.py --check",
           " * Absent fields are -1. */",
           "#ifndef MT_PYOFFSETS_H", "#define MT_PYOFFSETS_H", "",
           "#include <stdint.h>", "",
           "struct mt_pyoffsets {",
           "    uint8_t major, minor;",
           "    const char *from;  /* the releases it was generated from */"]
    for n in names():
        out.append("    int32_t %s;" % n)
    out.append("};")
    out.append("")
    out.append("/* Offsets of fields inside _Py_DebugOffsets (3.13 layout). */")
    out.append("struct mt_pydbg_layout {")
    for d in DBG_FIELDS:
        out.append("    int32_t %s;" % d.replace(".", "_"))
    out.append("};")
    out.append("")
    out.append("static const struct mt_pyoffsets mt_pyoffsets_table[] = {")
    dbg = None
    for (ver, froms, vals) in rows:
        out.append("    {")
        out.append("        .major = %d, .minor = %d, .from = \"%s\"," % (ver[0], ver[1], " ".join(froms)))
        for n in names():
            out.append("        .%s = %d," % (n, vals.get(n, -1)))
        out.append("    },")
        if ver == (3, 13):
            dbg = vals
    out.append("};")
    out.append("")
    out.append("static const struct mt_pydbg_layout mt_pydbg_layout_313 = {")
    for d in DBG_FIELDS:
        key = "dbg_" + d.replace(".", "_")
        out.append("    .%s = %d," % (d.replace(".", "_"), dbg[key] if dbg else -1))
    out.append("};")
    out.append("")
    out.append("#endif")
    return "\n".join(out) + "\n"


def main():
    pythons = os.environ.get("PYTHONS", "").split() or DEFAULT_PYTHONS
    rows = {}
    for py in pythons:
        ver, vals = probe(py)
        full = vals.pop("version")
        if ver in rows:
            if rows[ver][1] != vals:
                diff = [k for k in vals if rows[ver][1].get(k) != vals[k]]
                raise SystemExit("%s differs from %s in %s: the table needs a row "
                                 "per patch release" % (full, rows[ver][0], diff))
            rows[ver][0].append(full)
        else:
            rows[ver] = ([full], vals)
    text = render([(v, rows[v][0], rows[v][1]) for v in sorted(rows)])
    if "--check" in sys.argv:
        with open(OUT) as fh:
            if fh.read() != text:
                print("preload/pyoffsets.h is stale: run tools/gen-pyoffsets.py",
                      file=sys.stderr)
                return 1
        return 0
    with open(OUT, "w") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
