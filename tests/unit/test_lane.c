/* Lanes: a payload written by one process is read in place by another;
 * ownership passes by the state word; an idle lane gives its pages back. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

static off_t file_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : -1;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed);
}

static int same(const uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(i * 31 + seed))
            return 0;
    return 1;
}

/* The other side of a lane: the same memfd, its own mapping. */
static void reader_of(tpar_lane *r, const tpar_lane *w)
{
    tpar_lane_adopt(r, fcntl(w->fd, F_DUPFD_CLOEXEC, 0));
}

static void test_write_then_read_in_place(void)
{
    tpar_lane w, r;
    uint8_t *dst;
    const uint8_t *src;
    size_t n = 3 * 1024 * 1024 + 17;
    CHECK_EQ(tpar_lane_create(&w), 0);
    reader_of(&r, &w);
    CHECK_EQ(tpar_lane_view(&r, 10, &src), TPAR_EBADFRAME); /* nothing published */
    CHECK_EQ(tpar_lane_claim(&w), 1);
    CHECK_EQ(tpar_lane_claim(&w), 0); /* held: a second payload goes inline */
    CHECK_EQ(tpar_lane_reserve(&w, n, &dst), 0);
    fill(dst, n, 1);
    CHECK_EQ(tpar_lane_view(&r, n, &src), TPAR_EBADFRAME); /* not yet published */
    tpar_lane_publish(&w);
    CHECK_EQ(tpar_lane_claim(&w), 0); /* the reader holds it now */
    CHECK_EQ(tpar_lane_view(&r, n, &src), 0);
    CHECK(same(src, n, 1));
    tpar_lane_done(&r);
    CHECK_EQ(tpar_lane_claim(&w), 1); /* back to the writer */
    tpar_lane_abort(&w);
    uint8_t small[64];
    fill(small, sizeof small, 9);
    CHECK_EQ(tpar_lane_put(&w, small, sizeof small), 1); /* claimed, copied, published */
    CHECK_EQ(tpar_lane_put(&w, small, sizeof small), 0); /* held: goes inline */
    CHECK_EQ(tpar_lane_view(&r, sizeof small, &src), 0);
    CHECK(same(src, sizeof small, 9));
    tpar_lane_done(&r);
    tpar_lane_close(&w);
    tpar_lane_close(&r);
    CHECK_EQ(w.fd, -1);
    tpar_lane_close(&w); /* idempotent */
}

/* The reader never maps or reads past the file: a length the writer did
 * not make room for is refused, not a SIGBUS. */
static void test_view_past_the_end_refused(void)
{
    tpar_lane w, r;
    uint8_t *dst;
    const uint8_t *src;
    CHECK_EQ(tpar_lane_create(&w), 0);
    reader_of(&r, &w);
    CHECK_EQ(tpar_lane_claim(&w), 1);
    CHECK_EQ(tpar_lane_reserve(&w, 100, &dst), 0);
    tpar_lane_publish(&w);
    CHECK_EQ(tpar_lane_view(&r, (size_t)file_size(w.fd), &src), TPAR_EBADFRAME);
    CHECK_EQ(tpar_lane_view(&r, 100, &src), 0);
    tpar_lane_done(&r);
    tpar_lane_close(&w);
    tpar_lane_close(&r);
    tpar_lane l = TPAR_LANE_NONE; /* no memfd: never claimed, never viewed */
    CHECK_EQ(tpar_lane_claim(&l), 0);
    CHECK_EQ(tpar_lane_view(&l, 1, &src), TPAR_EBADFRAME);
    CHECK_EQ(tpar_lane_trim(&l), 0);
}

/* Trim gives the pages back only when nobody holds the lane, and a writer
 * grows it again afterwards even though its own mapping is stale. */
static void test_trim(void)
{
    tpar_lane w, r;
    uint8_t *dst;
    const uint8_t *src;
    size_t n = 8 * 1024 * 1024;
    CHECK_EQ(tpar_lane_create(&w), 0);
    reader_of(&r, &w);
    CHECK_EQ(tpar_lane_trim(&r), 0); /* already small */
    CHECK_EQ(tpar_lane_claim(&w), 1);
    CHECK_EQ(tpar_lane_reserve(&w, n, &dst), 0);
    fill(dst, n, 2);
    CHECK(file_size(w.fd) >= (off_t)(TPAR_LANE_HDR + n));
    CHECK_EQ(tpar_lane_trim(&r), -EBUSY); /* being written */
    tpar_lane_publish(&w);
    CHECK_EQ(tpar_lane_trim(&r), -EBUSY); /* not yet read */
    CHECK_EQ(tpar_lane_view(&r, n, &src), 0);
    CHECK(same(src, n, 2));
    tpar_lane_done(&r);
    CHECK_EQ(tpar_lane_trim(&r), 1);
    CHECK_EQ(file_size(w.fd), (off_t)TPAR_LANE_HDR);
    /* The writer's mapping still spans 8 MiB; its next claim sees the file
     * is small and grows it before writing. */
    CHECK_EQ(tpar_lane_claim(&w), 1);
    CHECK_EQ(tpar_lane_reserve(&w, n / 2, &dst), 0);
    fill(dst, n / 2, 3);
    tpar_lane_publish(&w);
    CHECK_EQ(tpar_lane_view(&r, n / 2, &src), 0);
    CHECK(same(src, n / 2, 3));
    tpar_lane_done(&r);
    tpar_lane_close(&w);
    tpar_lane_close(&r);
}

/* A writer whose file grew but whose mapping did not (the mmap failed,
 * for want of address space): its next claim finds the file large enough
 * and must still map it before handing out the room. */
static void test_file_larger_than_the_map(void)
{
    tpar_lane w, r;
    uint8_t *dst;
    const uint8_t *src;
    size_t n = 1024 * 1024;
    CHECK_EQ(tpar_lane_create(&w), 0);
    reader_of(&r, &w);
    CHECK_EQ(tpar_lane_claim(&w), 1); /* maps the header page only */
    tpar_lane_abort(&w);
    CHECK_EQ(ftruncate(w.fd, (off_t)(TPAR_LANE_HDR + 2 * n)), 0); /* the grown file */
    CHECK_EQ(tpar_lane_claim(&w), 1);
    CHECK_EQ(tpar_lane_reserve(&w, n, &dst), 0);
    CHECK(w.map_len >= TPAR_LANE_HDR + n);
    fill(dst, n, 5); /* faults (SIGSEGV) if the room is not mapped */
    tpar_lane_publish(&w);
    CHECK_EQ(tpar_lane_view(&r, n, &src), 0);
    CHECK(same(src, n, 5));
    tpar_lane_done(&r);
    tpar_lane_close(&w);
    tpar_lane_close(&r);
}

/* Across processes, repeatedly, with the payload growing: what a worker
 * and its parent do. */
static void test_across_processes(void)
{
    tpar_lane down, up;
    int go[2], back[2];
    CHECK_EQ(tpar_lane_create(&down), 0);
    CHECK_EQ(tpar_lane_create(&up), 0);
    CHECK_EQ(pipe(go), 0);
    CHECK_EQ(pipe(back), 0);
    pid_t pid = fork();
    if (pid == 0) { /* echoes each payload from down to up */
        uint32_t n;
        close(go[1]);
        close(back[0]);
        while (read(go[0], &n, sizeof n) == sizeof n) {
            const uint8_t *src;
            uint8_t *dst;
            if (tpar_lane_view(&down, n, &src) < 0 || !same(src, n, n & 0xff))
                _exit(3);
            while (tpar_lane_claim(&up) != 1)
                ;
            if (tpar_lane_reserve(&up, n, &dst) < 0)
                _exit(4);
            memcpy(dst, src, n);
            tpar_lane_done(&down);
            tpar_lane_publish(&up);
            if (write(back[1], &n, sizeof n) != sizeof n)
                _exit(5);
        }
        _exit(0);
    }
    close(go[0]);
    close(back[1]);
    for (uint32_t n = 1000; n < 20u * 1024 * 1024; n *= 3) {
        uint8_t *dst;
        const uint8_t *src;
        uint32_t got = 0;
        CHECK_EQ(tpar_lane_claim(&down), 1);
        CHECK_EQ(tpar_lane_reserve(&down, n, &dst), 0);
        fill(dst, n, n & 0xff);
        tpar_lane_publish(&down);
        CHECK_EQ(write(go[1], &n, sizeof n), (ssize_t)sizeof n);
        CHECK_EQ(read(back[0], &got, sizeof got), (ssize_t)sizeof got);
        CHECK_EQ(got, n);
        CHECK_EQ(tpar_lane_view(&up, n, &src), 0);
        CHECK(same(src, n, n & 0xff));
        tpar_lane_done(&up);
    }
    close(go[1]);
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(back[0]);
    tpar_lane_close(&down);
    tpar_lane_close(&up);
}

/* Progress survives the worker: a child that publishes and is killed
 * leaves the counts for its parent; trimming keeps them; no lane: -ENOENT. */
static void test_progress(void)
{
    tpar_lane up, none = TPAR_LANE_NONE;
    uint64_t s = 1, f = 1;
    CHECK_EQ(tpar_lane_create(&up), 0);
    CHECK_EQ(tpar_lane_progress_get(&up, &s, &f), 0);
    CHECK_EQ(s, 0); /* a fresh lane: nothing started */
    CHECK_EQ(f, 0);
    pid_t pid = fork();
    if (pid == 0) {
        tpar_lane mine;
        tpar_lane_adopt(&mine, dup(up.fd)); /* its own mapping, as a worker */
        uint8_t *dst;
        if (tpar_lane_progress_set(&mine, 41, 40) < 0 || tpar_lane_claim(&mine) != 1 ||
            tpar_lane_reserve(&mine, 3 * TPAR_LANE_HDR, &dst) < 0)
            _exit(3);
        tpar_lane_abort(&mine);
        if (tpar_lane_trim(&mine) != 1 || tpar_lane_progress_set(&mine, 42, 41) < 0)
            _exit(4);
        raise(SIGKILL);
    }
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    CHECK_EQ(tpar_lane_progress_get(&up, &s, &f), 0);
    CHECK_EQ(s, 42);
    CHECK_EQ(f, 41);
    CHECK_EQ(tpar_lane_progress_get(&none, &s, &f), -ENOENT);
    CHECK_EQ(tpar_lane_progress_set(&none, 1, 1), -ENOENT);
    tpar_lane_close(&up);
}

int main(void)
{
    RUN(test_progress);
    RUN(test_write_then_read_in_place);
    RUN(test_view_past_the_end_refused);
    RUN(test_trim);
    RUN(test_file_larger_than_the_map);
    RUN(test_across_processes);
    return CHECK_DONE();
}
