#!/bin/bash
# CPython's own regression tests under memtap (issue 6): each test module is
# run untracked, under `memtap run`, and under `memtap run --native`, and the
# per-test-case outcomes (from --junit-xml) are compared. Slow (minutes per
# interpreter); not part of `make test`.
#
#   tests/cpython/run.sh [-o OUTDIR] [-t "test_os test_gc ..."] PYTHON...
#
# PYTHON: interpreters (e.g. /root/.pyenv/versions/3.12.1/bin/python3.12);
# default: every pyenv 3.9+ interpreter found. Each uses its own
# lib/pythonX.Y/test. Modules it does not have are skipped (and said so).
# Exit status: 0 when every interpreter gave the same outcomes in all modes.
#
# Environment: MEMTAP (default: build/memtap), TEST_TIMEOUT (seconds per
# module, default 1200).
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MEMTAP=${MEMTAP:-$REPO/build/memtap}
OUT=$REPO/build/cpython-tests
TESTS="test_threading test_mmap test_ctypes test_gc test_subprocess test_os test_signal test_multiprocessing_fork"
TEST_TIMEOUT=${TEST_TIMEOUT:-1200}
while getopts "o:t:" opt; do
    case $opt in
    o) OUT=$OPTARG ;;
    t) TESTS=$OPTARG ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
PYTHONS=("$@")
if [ ${#PYTHONS[@]} -eq 0 ]; then
    for p in /root/.pyenv/versions/3.*/bin/python3.*; do
        case $p in *-config|*m) continue ;; esac
        v=$("$p" -c 'import sys; print(sys.version_info >= (3, 9))' 2>/dev/null) || continue
        [ "$v" = True ] && PYTHONS+=("$p")
    done
fi
[ -x "$MEMTAP" ] || { echo "run.sh: $MEMTAP is not built" >&2; exit 2; }
mkdir -p "$OUT"
status=0

for py in "${PYTHONS[@]}"; do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    libtest=$("$py" -c 'import os, test; print(os.path.dirname(test.__file__))' 2>/dev/null)
    if [ -z "$libtest" ]; then
        echo "== python $ver ($py): no test package installed; skipped"
        continue
    fi
    dir=$OUT/$ver
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== python $ver ($py), tests from $libtest"
    for t in $TESTS; do
        if [ ! -e "$libtest/$t.py" ] && [ ! -d "$libtest/$t" ]; then
            echo "   $t: not in this interpreter's test suite; skipped"
            continue
        fi
        for mode in plain memtap native; do
            xml=$dir/$t.$mode.xml
            log=$dir/$t.$mode.log
            case $mode in
            plain)  cmd=("$py") ;;
            memtap) cmd=("$MEMTAP" run -q -f -o "$dir/$t.$mode.bin" --python "$py") ;;
            native) cmd=("$MEMTAP" run -q -f --native -o "$dir/$t.$mode.bin" --python "$py") ;;
            esac
            start=$(date +%s)
            # -j0 off: everything in one process, the one memtap traces.
            ( cd "$dir" && exec timeout -k 30 "$TEST_TIMEOUT" "${cmd[@]}" -m test \
                --junit-xml "$xml" --timeout 600 "$t" ) >"$log" 2>&1
            rc=$?
            echo "$rc $(( $(date +%s) - start ))" > "$dir/$t.$mode.rc"
            # The capture is only a by-product; keep the logs, not gigabytes.
            # The capture must read (complete, or marked incomplete).
            if [ -f "$dir/$t.$mode.bin" ]; then
                "$MEMTAP" stats "$dir/$t.$mode.bin" > "$dir/$t.$mode.stats" 2>&1
                src=$?
                echo "stats exit $src" >> "$dir/$t.$mode.stats"
                [ $src = 0 ] || { echo "   $t $mode: memtap stats failed ($src)"; status=1; }
            elif [ $mode != plain ]; then
                echo "   $t $mode: no capture written"; status=1
            fi
            rm -f "$dir/$t.$mode.bin" "$dir"/$t.$mode.*.bin
        done
    done
    python3 "$REPO/tests/cpython/compare.py" "$dir" || status=1
done
exit $status
