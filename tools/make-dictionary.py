#!/usr/bin/env python3
"""Makes a preset dictionary for captures of programs on one CPython version.

usage: make-dictionary.py MEMTAP PYTHON ID OUTDIR

Runs PYTHON under MEMTAP (default mode) on a script that only imports the
standard-library modules most programs import, decodes the capture and
writes the first 64 KiB of its records to OUTDIR/ID-cpython-X.Y.bin.

Why: every capture of a Python program starts with the interpreter's
start-up (a few thousand allocations, the frozen importlib's code and stack
nodes), and a short program's capture is mostly that. LZ4 compresses such a
small stream poorly on its own; against a stream much like it, it keeps
about a third. docs/format.md (Dictionaries) says how a block names its
dictionary.

A dictionary's ID is permanent: captures name it, so its bytes may never
change. A new or better dictionary gets a new ID (and a new format
version): list it in src/dictionary.c (with the first format version that
may name it: a dictionary holds records in one version's encoding) and
meson.build, and its size and CRC-32 in docs/format.md and
tests/unit/test-capture.c (which pin them). A new encoding of the records
needs new dictionaries made by a memtap that writes it.
"""
import os
import struct
import subprocess
import sys
import tempfile

# Imported by the script the dictionary is made from: start-up plus the
# modules a typical program imports. Not the benchmark's workloads.
IMPORTS = ("os, sys, re, json, time, threading, collections, functools, "
           "itertools, typing, pathlib, subprocess, logging, argparse, "
           "dataclasses, math, random, datetime, io, tempfile")
LIMIT = 64 * 1024   # LZ4 looks no further back than 64 KiB
DICTIONARIES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "..", "src", "dictionaries")
BLOCK_MAGIC = 0x4B4C424D


def extended(src, i, length):
    """A token's 4-bit length of 15 goes on in bytes up to one below 255."""
    if length == 15:
        while True:
            b = src[i]
            i += 1
            length += b
            if b != 255:
                break
    return length, i


def lz4_block(src, prefix):
    """Decodes one LZ4 block (lz4_Block_format.md) after PREFIX (its
    dictionary). ValueError when a match reaches back before PREFIX."""
    out = bytearray(prefix)
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        length, i = extended(src, i + 1, token >> 4)
        out += src[i:i + length]
        i += length
        if i >= n:
            break
        offset = src[i] | src[i + 1] << 8
        length, i = extended(src, i + 2, token & 15)
        start = len(out) - offset
        if offset == 0 or start < 0:
            raise ValueError("a match before the start of the dictionary")
        for k in range(length + 4):   # may overlap what it writes
            out.append(out[start + k])
    return bytes(out[len(prefix):])


def dictionary_bytes(ident):
    for name in os.listdir(DICTIONARIES):
        if name.startswith("%d-" % ident) and name.endswith(".bin"):
            with open(os.path.join(DICTIONARIES, name), "rb") as f:
                return f.read()
    raise SystemExit("make-dictionary: the capture names dictionary %d, "
                     "not in %s" % (ident, DICTIONARIES))


def records(path):
    """The decompressed records of a capture, blocks joined."""
    with open(path, "rb") as f:
        data = f.read()
    version, hlen = struct.unpack_from("<II", data, 8)
    pos = 16 + hlen + 4
    raw = bytearray()
    while pos + 16 <= len(data):
        magic, length, clen, _ = struct.unpack_from("<IIII", data, pos)
        if magic != BLOCK_MAGIC:
            raise SystemExit("make-dictionary: bad block at %d" % pos)
        ident = length >> 24 if version >= 4 else 0
        length &= 0xFFFFFF
        prefix = dictionary_bytes(ident) if ident else b""
        block = lz4_block(data[pos + 16:pos + 16 + clen], prefix)
        if len(block) != length:
            raise SystemExit("make-dictionary: block at %d decodes to %d "
                             "bytes, not %d" % (pos, len(block), length))
        raw += block
        pos += 16 + clen
    return bytes(raw)


def main(argv):
    if len(argv) != 5:
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    memtap, python, ident, outdir = argv[1], argv[2], int(argv[3]), argv[4]
    minor = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "imports.py")
        with open(script, "w") as f:
            f.write("import %s\n" % IMPORTS)
        capture = os.path.join(tmp, "capture.bin")
        subprocess.run([memtap, "run", "-q", "-o", capture, "--python", python,
                        script], check=True)
        raw = records(capture)[:LIMIT]
    out = os.path.join(outdir, "%d-cpython-%s.bin" % (ident, minor))
    with open(out, "wb") as f:
        f.write(raw)
    print("%s: %d bytes" % (out, len(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
