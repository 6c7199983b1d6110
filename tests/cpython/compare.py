"""Compares the outcomes of CPython's tests run untracked and under memtap
(tests/cpython/run.sh writes DIR/<module>.<mode>.{xml,rc,log}).

  python3 compare.py DIR

Prints, per module: the exit status and time of each mode, the number of
test cases passed/failed/errored/skipped, and every case whose outcome
differs from the untracked run. Exit status 1 when any differs."""
import os
import sys
import xml.etree.ElementTree as ET

MODES = ["plain", "memtap", "native"]


def outcomes(path):
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    res = {}
    for case in root.iter("testcase"):
        name = "%s.%s" % (case.get("classname", ""), case.get("name", ""))
        kind = "pass"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "fail", "error": "error", "skipped": "skip"}[child.tag]
                break
        if case.get("status") == "skipped" or case.get("result") == "skipped":
            kind = "skip"
        res[name] = kind
    return res


def main(d):
    modules = sorted({f.split(".")[0] for f in os.listdir(d) if f.endswith(".rc")})
    differ = False
    for m in modules:
        rows, res = [], {}
        for mode in MODES:
            rcfile = os.path.join(d, "%s.%s.rc" % (m, mode))
            if not os.path.exists(rcfile):
                continue
            rc, secs = open(rcfile).read().split()
            res[mode] = outcomes(os.path.join(d, "%s.%s.xml" % (m, mode)))
            counts = {}
            for k in (res[mode] or {}).values():
                counts[k] = counts.get(k, 0) + 1
            rows.append("%-7s exit %-4s %5ss  %s" % (
                mode, rc, secs, " ".join("%s=%d" % kv for kv in sorted(counts.items()))
                if res[mode] is not None else "no results (crashed or timed out?)"))
        print("  %s" % m)
        for r in rows:
            print("    " + r)
        base = res.get("plain")
        for mode in MODES[1:]:
            other = res.get(mode)
            if mode not in res:
                continue
            if base is None or other is None:
                if base != other:
                    differ = True
                    print("    DIFFERS (%s): results missing" % mode)
                continue
            for name in sorted(set(base) | set(other)):
                a, b = base.get(name, "absent"), other.get(name, "absent")
                if a != b:
                    differ = True
                    print("    DIFFERS (%s): %s: untracked %s, %s %s" % (mode, name, a, mode, b))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
