// A C++ program with known allocations at known lines, for the native
// symbolization tests (tests/integration/test_reports_native.py): built with
// `c++ -O0 -g`, traced with `memtap run --native`. Sizes and lines are
// pinned by the test; lines carry `/* @name */` markers.
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace ns {

// Forced inline even at -O0: libdw reports it as an inlined frame.
inline __attribute__((always_inline)) char *inl_alloc(std::size_t n)
{
    return static_cast<char *>(std::malloc(n)); /* @inlined */
}

struct Widget {
    std::vector<char> buf;
    char *raw = nullptr;

    static Widget *make(int n)
    {
        Widget *w = new Widget;           /* @new_widget */
        w->buf.resize(std::size_t(n));    /* @resize */
        return w;
    }

    void grow(std::size_t n)
    {
        raw = inl_alloc(n);               /* @grow */
    }
};

template <typename T> T *alloc_array(std::size_t n)
{
    return new T[n];                      /* @template */
}

// Internal linkage: no linkage name in the DWARF of these; the names come
// from the ELF symbol (with parameters) or, inlined, from the scopes around
// the declaration.
namespace {
struct Cache {
    static __attribute__((noinline)) char *fill(std::size_t n)
    {
        return static_cast<char *>(std::malloc(n)); /* @anon_static */
    }
};

inline __attribute__((always_inline)) char *anon_inl(std::size_t n)
{
    return static_cast<char *>(std::malloc(n)); /* @anon_inlined */
}
} // namespace

} // namespace ns

static __attribute__((noinline)) char *file_static(std::size_t n)
{
    return static_cast<char *>(std::malloc(n)); /* @file_static */
}

static std::vector<ns::Widget *> keep;
static char *internal[3];

int main()
{
    keep.reserve(4);                                   /* @reserve */
    keep.push_back(ns::Widget::make(3000000));         /* @main_make */
    keep.back()->grow(1234567);                        /* @main_grow */
    long *a = ns::alloc_array<long>(250000);           /* @main_tmpl */
    internal[0] = ns::Cache::fill(111111);
    internal[1] = ns::anon_inl(222222);                /* @main_anon_inl */
    internal[2] = file_static(333333);
    std::printf("%ld\n", a[0] = 7);
    return 0;
}
