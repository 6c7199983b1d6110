/*
 * alloc_all: calls every function memtap intercepts, with distinctive exact
 * sizes, so tests/integration/test_native_program.py can check the capture's
 * per-allocator counts and bytes exactly.  Prints nothing.
 *
 * Usage: alloc_all [MODE]
 *   all       (default) run exercise() on the main thread, then on a pthread
 *   baseline  start and join the same pthread, allocate nothing ourselves
 *             (what libc itself allocates, e.g. the new thread's DTV, is the
 *             same in both modes, so the tests compare the two)
 *   mremap    baseline + an anonymous mapping moved/resized with mremap
 *   locations three large allocations at known lines, one in a named thread
 *   exit7     baseline, then exit(7)
 *   dontunmap baseline + 3 pages moved by mremap(MREMAP_DONTUNMAP), which
 *             leaves the old range mapped: 6 pages live (exit 3: the kernel
 *             has no MREMAP_DONTUNMAP)
 *   failed    baseline + a block that failed realloc and reallocarray calls
 *             (too big, n x size overflowing) leave alive: a 100-byte leak
 *
 * Lines the tests look up carry a marker comment "@name".  Keep every call on
 * one line.  The expected numbers live in the test, next to EXERCISE_* below.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* volatile so that the compiler neither folds nor warns about the sizes meant to fail */
static volatile size_t huge_n = SIZE_MAX / 2;
static volatile size_t huge = (size_t)PTRDIFF_MAX + 1;
/* volatile so that the compiler cannot turn realloc(NULL, n) into malloc(n) */
static void *volatile null_ptr;

static void *keep[64];
static int nkeep;

static void exercise(void)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p;

	/* malloc: 1001 + 2002 (the second one is grown by realloc below) */
	p = malloc(1001); /* @malloc */
	free(p);
	p = malloc(huge); /* fails: nothing recorded */
	if (p)
		abort();

	/* calloc: 7 x 111 = 777; an overflowing n x size records nothing */
	p = calloc(7, 111); /* @calloc */
	free(p);
	p = calloc(huge_n, 3); /* @calloc_overflow */
	if (p)
		abort();

	/* realloc: grow 2002 -> 3003, realloc(NULL, 4004), realloc(p, 0) frees */
	void *q = malloc(2002); /* @malloc2 */
	q = realloc(q, 3003); /* @realloc_grow */
	void *r = realloc(null_ptr, 4004); /* @realloc_null */
	r = realloc(r, 0); /* @realloc_zero: glibc frees and returns NULL */
	if (r)
		free(r);
	free(q);

	/* reallocarray: 5 x 1001 = 5005, then 6 x 1001 = 6006; overflow fails */
	/* glibc's reallocarray calls realloc through the PLT: recorded once, as reallocarray */
	void *volatile a = reallocarray(null_ptr, 5, 1001); /* @reallocarray */
	a = reallocarray(a, 6, 1001); /* @reallocarray_grow */
	p = reallocarray(a, huge_n, 3); /* fails, a untouched */
	if (p)
		abort();
	free(a);

	/* posix_memalign: 6007 at 64; a bad alignment fails (EINVAL) */
	if (posix_memalign(&p, 64, 6007) != 0) /* @posix_memalign */
		abort();
	free(p);
	void *bad = NULL;
	if (posix_memalign(&bad, 3, 100) == 0) /* fails */
		abort();

	p = aligned_alloc(128, 7040); /* @aligned_alloc */
	free(p);
	p = memalign(256, 8008); /* @memalign */
	free(p);
	p = valloc(9009); /* @valloc */
	free(p);
	p = pvalloc(10010); /* @pvalloc: recorded page-rounded, 12288 */
	free(p);

	/* anonymous mmap: 3 pages + 100 bytes, counted page-rounded (4 pages) */
	char *m = mmap(NULL, 3 * page + 100, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* @mmap */
	if (m == MAP_FAILED)
		abort();
	munmap(m + page, page); /* partial: the second page */
	munmap(m, page);
	munmap(m + 2 * page, 2 * page);

	/* mmap64, 5 pages */
	char *m64 = mmap64(NULL, 5 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* @mmap64 */
	if (m64 == MAP_FAILED)
		abort();
	munmap(m64, 5 * page);

	/* a failing mmap records nothing */
	if (mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED)
		abort();

	/* file-backed: two pages of our own executable */
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		abort();
	void *f = mmap(NULL, 2 * page, PROT_READ, MAP_PRIVATE, fd, 0); /* @mmap_file */
	if (f == MAP_FAILED)
		abort();
	close(fd);
	munmap(f, 2 * page);

	/* a reservation: PROT_NONE, MAP_NORESERVE, 1 MiB */
	void *res = mmap(NULL, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0); /* @mmap_reserve */
	if (res == MAP_FAILED)
		abort();
	munmap(res, 1 << 20);
}

static void *exercise_thread(void *arg)
{
	(void)arg;
	exercise();
	return NULL;
}

static void *idle_thread(void *arg)
{
	(void)arg;
	return NULL;
}

static void run_thread(void *(*fn)(void *))
{
	pthread_t t;
	if (pthread_create(&t, NULL, fn, NULL) != 0)
		abort();
	pthread_join(t, NULL);
}

/* mremap: 4 pages, cut the second page out, grow the first piece to 5 pages
 * (may move), shrink the last piece (2 pages) to 1; everything is left mapped
 * at exit: live = 5 + 1 = 6 pages */
static void do_mremap(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *m = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* @mr_mmap */
	if (m == MAP_FAILED)
		abort();
	munmap(m + page, page);
	char *g = mremap(m, page, 5 * page, MREMAP_MAYMOVE); /* @mr_grow */
	if (g == MAP_FAILED)
		abort();
	char *s = mremap(m + 2 * page, 2 * page, page, 0); /* @mr_shrink */
	if (s == MAP_FAILED)
		abort();
	keep[nkeep++] = g;
	keep[nkeep++] = s;
}

static void *leaf_alloc(size_t n)
{
	return malloc(n); /* @loc_leaf */
}

static void *loc_worker(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "mt-worker");
	keep[nkeep++] = calloc(1, 2000002); /* @loc_thread */
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "all";

	if (strcmp(mode, "all") == 0) {
		exercise();
		run_thread(exercise_thread);
	} else if (strcmp(mode, "baseline") == 0) {
		run_thread(idle_thread);
	} else if (strcmp(mode, "mremap") == 0) {
		run_thread(idle_thread);
		do_mremap();
	} else if (strcmp(mode, "locations") == 0) {
		keep[nkeep++] = malloc(3000001); /* @loc_main */
		keep[nkeep++] = leaf_alloc(1000003); /* @loc_leaf_call */
		run_thread(loc_worker);
	} else if (strcmp(mode, "dontunmap") == 0) {
		run_thread(idle_thread);
		long page = sysconf(_SC_PAGESIZE);
		char *m = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* @du_mmap */
		if (m == MAP_FAILED)
			abort();
		char *moved = mremap(m, 3 * page, 3 * page, MREMAP_MAYMOVE | 4 /* MREMAP_DONTUNMAP */); /* @du_move */
		if (moved == MAP_FAILED)
			return 3;
		keep[nkeep++] = m;
		keep[nkeep++] = moved;
	} else if (strcmp(mode, "failed") == 0) {
		run_thread(idle_thread);
		void *p = malloc(100); /* @failed_keep */
		if (realloc(p, huge) || reallocarray(p, huge_n, 3) || reallocarray(p, 1, huge))
			abort();
		keep[nkeep++] = p;
	} else if (strcmp(mode, "exit7") == 0) {
		run_thread(idle_thread);
		exit(7);
	} else {
		return 2;
	}
	return 0;
}
