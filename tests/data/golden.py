"""The program behind the golden captures of each format version,
tests/data/format-v*.bin (tests/integration/test_golden.py). It makes a few allocations
whose sizes are known, in two threads, keeps one block to the end (a leak)
and maps, remaps and unmaps anonymous memory. Re-recording it makes a different
file (addresses, times): never replace a golden capture, add one for a new
format version."""
import mmap
import threading

KEEP = []


def worker():
    buf = bytearray(300000)        # @worker: malloc(300001)
    del buf


def main():
    a = bytearray(100000)          # @a: malloc(100001), freed below
    KEEP.append(bytearray(200000)) # @leak: malloc(200001), alive at the end
    m = mmap.mmap(-1, 1 << 20)     # @mmap: an anonymous mapping of 1 MiB
    m.resize(2 << 20)              # @mremap: grown to 2 MiB (mremap)
    m.close()                      # munmap
    t = threading.Thread(target=worker, name="worker")
    t.start()
    t.join()
    del a


main()
