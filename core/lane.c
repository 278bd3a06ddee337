/* Lanes: large frame payloads through a shared memfd instead of the pipe
 * (the contract is in tpar.h).
 *
 * Why not a fresh memfd per payload: on the machines we measure, touching
 * fresh pages costs three to five times a copy into warm ones (100 MB:
 * ~50 ms against ~9 ms), so a lane keeps its pages between transfers and
 * only an idle worker gives them back.  Why not the pipe: every byte is
 * copied in and out of the kernel, 1 MiB at a time, with a context switch
 * each time. */
#include "tpar.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL */
#endif

enum { FREE = 0, WRITING = 1, FULL = 2, TRIM = 3 };

static size_t page_round(size_t n)
{
    return (n + TPAR_LANE_HDR - 1) & ~(TPAR_LANE_HDR - 1);
}

static _Atomic uint32_t *state(tpar_lane *l)
{
    return (_Atomic uint32_t *)(void *)l->map;
}

/* Maps at least `len` bytes of the file (the header page at least). */
static int map_at_least(tpar_lane *l, size_t len)
{
    if (len < TPAR_LANE_HDR)
        len = TPAR_LANE_HDR;
    if (l->map && l->map_len >= len)
        return 0;
    void *m = l->map ? mremap(l->map, l->map_len, len, MREMAP_MAYMOVE)
                     : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, l->fd, 0);
    if (m == MAP_FAILED)
        return -errno;
    l->map = m;
    l->map_len = len;
    return 0;
}

void tpar_lane_adopt(tpar_lane *l, int fd)
{
    l->fd = fd;
    l->map = NULL;
    l->map_len = l->size = 0;
}

int tpar_lane_create(tpar_lane *l)
{
    int fd = memfd_create("tpar-lane", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)TPAR_LANE_HDR) < 0) { /* state FREE: zeroes */
        int err = -errno;
        close(fd);
        return err;
    }
    tpar_lane_adopt(l, fd);
    return 0;
}

void tpar_lane_close(tpar_lane *l)
{
    if (l->map)
        munmap(l->map, l->map_len);
    if (l->fd >= 0)
        close(l->fd);
    tpar_lane_adopt(l, -1);
}

/* FREE -> to; 1 when it was FREE, 0 when held, -errno. */
static int take(tpar_lane *l, uint32_t to)
{
    if (l->fd < 0)
        return 0;
    int rc = map_at_least(l, TPAR_LANE_HDR);
    if (rc < 0)
        return rc;
    uint32_t expect = FREE;
    return atomic_compare_exchange_strong(state(l), &expect, to);
}

int tpar_lane_claim(tpar_lane *l)
{
    int rc = take(l, WRITING);
    if (rc <= 0)
        return rc;
    struct stat st; /* the worker may have trimmed it since */
    if (fstat(l->fd, &st) < 0) {
        rc = -errno;
        tpar_lane_abort(l);
        return rc;
    }
    l->size = (size_t)st.st_size;
    return 1;
}

int tpar_lane_reserve(tpar_lane *l, size_t len, uint8_t **data)
{
    if (len > SIZE_MAX / 2 - TPAR_LANE_HDR)
        return -ENOMEM;
    size_t need = TPAR_LANE_HDR + len;
    size_t fresh = l->map_len; /* from here on, pages are new to us */
    if (l->size < need) {
        size_t want = l->size * 2 > need ? l->size * 2 : need;
        want = page_round(want);
        if (ftruncate(l->fd, (off_t)want) < 0)
            return -errno;
        if (l->size < fresh) /* a mapping kept from before a trim */
            fresh = l->size;
        l->size = want;
    }
    /* Mapped apart from the growth: a mapping that failed after the file
     * grew (no address space, for one) leaves a file larger than the map,
     * which the next claim must not take for room. */
    int rc = map_at_least(l, l->size);
    if (rc < 0)
        return rc;
    if (l->size > fresh) /* one call, not one fault per page */
        (void)madvise(l->map + fresh, l->size - fresh, MADV_POPULATE_WRITE);
    *data = l->map + TPAR_LANE_HDR;
    return 0;
}

void tpar_lane_publish(tpar_lane *l)
{
    atomic_store_explicit(state(l), FULL, memory_order_release);
}

void tpar_lane_abort(tpar_lane *l)
{
    atomic_store_explicit(state(l), FREE, memory_order_release);
}

int tpar_lane_put(tpar_lane *l, const void *p, size_t n)
{
    uint8_t *dst;
    if (tpar_lane_claim(l) != 1)
        return 0;
    if (tpar_lane_reserve(l, n, &dst) < 0) {
        tpar_lane_abort(l);
        return 0;
    }
    memcpy(dst, p, n);
    tpar_lane_publish(l);
    return 1;
}

int tpar_lane_view(tpar_lane *l, size_t len, const uint8_t **data)
{
    if (l->fd < 0)
        return TPAR_EBADFRAME;
    int rc = map_at_least(l, TPAR_LANE_HDR);
    if (rc < 0)
        return rc;
    if (atomic_load_explicit(state(l), memory_order_acquire) != FULL)
        return TPAR_EBADFRAME;
    if (len > SIZE_MAX - TPAR_LANE_HDR)
        return TPAR_EBADFRAME;
    if (l->map_len < TPAR_LANE_HDR + len) {
        struct stat st; /* never map (or read) past the end of the file */
        if (fstat(l->fd, &st) < 0)
            return -errno;
        if ((size_t)st.st_size < TPAR_LANE_HDR + len)
            return TPAR_EBADFRAME;
        if ((rc = map_at_least(l, (size_t)st.st_size)) < 0)
            return rc;
    }
    *data = l->map + TPAR_LANE_HDR;
    return 0;
}

void tpar_lane_done(tpar_lane *l)
{
    atomic_store_explicit(state(l), FREE, memory_order_release);
}

/* The progress words sit in the state page, a cache line away from the
 * state word (the worker stores them at every job). */
#define PROGRESS_OFF 64

static _Atomic uint64_t *progress(tpar_lane *l)
{
    return (_Atomic uint64_t *)(void *)(l->map + PROGRESS_OFF);
}

int tpar_lane_progress_set(tpar_lane *l, uint64_t started, uint64_t finished)
{
    if (l->fd < 0)
        return -ENOENT;
    if (!l->map) {
        int rc = map_at_least(l, TPAR_LANE_HDR);
        if (rc < 0)
            return rc;
    }
    atomic_store_explicit(&progress(l)[0], started, memory_order_release);
    atomic_store_explicit(&progress(l)[1], finished, memory_order_release);
    return 0;
}

int tpar_lane_progress_get(tpar_lane *l, uint64_t *started, uint64_t *finished)
{
    if (l->fd < 0)
        return -ENOENT;
    int rc = map_at_least(l, TPAR_LANE_HDR);
    if (rc < 0)
        return rc;
    *finished = atomic_load_explicit(&progress(l)[1], memory_order_acquire);
    *started = atomic_load_explicit(&progress(l)[0], memory_order_acquire);
    return 0;
}

#define DOORBELL_OFF 128

static _Atomic uint64_t *doorbell(tpar_lane *l)
{
    return (_Atomic uint64_t *)(void *)(l->map + DOORBELL_OFF);
}

int tpar_lane_ring(tpar_lane *l)
{
    if (l->fd < 0)
        return -ENOENT;
    int rc = map_at_least(l, TPAR_LANE_HDR);
    if (rc < 0)
        return rc;
    atomic_fetch_add_explicit(doorbell(l), 1, memory_order_release);
    return 0;
}

int tpar_lane_rang(tpar_lane *l, uint64_t *seen)
{
    if (l->fd < 0 || map_at_least(l, TPAR_LANE_HDR) < 0)
        return 0;
    uint64_t v = atomic_load_explicit(doorbell(l), memory_order_acquire);
    if (v == *seen)
        return 0;
    *seen = v;
    return 1;
}

int tpar_lane_trim(tpar_lane *l)
{
    struct stat st;
    if (l->fd < 0 || fstat(l->fd, &st) < 0 || (size_t)st.st_size <= TPAR_LANE_HDR)
        return 0;
    int rc = take(l, TRIM);
    if (rc <= 0)
        return rc ? rc : -EBUSY;
    if (ftruncate(l->fd, (off_t)TPAR_LANE_HDR) < 0)
        rc = -errno;
    else if (l->map_len > TPAR_LANE_HDR) { /* keep the state word's page */
        munmap(l->map + TPAR_LANE_HDR, l->map_len - TPAR_LANE_HDR);
        l->map_len = TPAR_LANE_HDR;
    }
    l->size = TPAR_LANE_HDR;
    atomic_store_explicit(state(l), FREE, memory_order_release);
    return rc;
}
