"""memtap's demo: a small program with a peak, a leak and churn."""
import sys

cache = []


def load_table(rows):
    # Kept until the end: shows up at the peak and as a leak.
    cache.append([bytes(1000) for _ in range(rows)])


def parse(chunk):
    # Short-lived: a big temporary buffer per call.
    buf = bytearray(chunk * 1024)
    return len(buf)


def main():
    load_table(20_000)
    total = sum(parse(n) for n in range(1, 200))
    print(f"parsed {total} bytes, cached {len(cache[0])} rows")
    big = bytearray(30 * 2**20)  # the peak: alive only here
    del big


if __name__ == "__main__":
    main()
    sys.exit(0)
