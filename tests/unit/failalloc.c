/* Linked into a copy of tpar with -Wl,--wrap=malloc,calloc,realloc,strdup
 * (tests/unit/meson.build): the allocations made by tpar's own code (cmd/
 * and core/, not libc's or libuv's inside themselves) are counted, and the
 * one numbered $TPAR_FAIL_ALLOC (from 1; unset or 0: none) fails.  At exit
 * the count goes to the file $TPAR_FAIL_ALLOC_COUNT, so tests/unit/oom.py
 * knows when it has failed each one in turn. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static unsigned long calls, fail_at;
static int started;

static void report(void)
{
    const char *path = getenv("TPAR_FAIL_ALLOC_COUNT");
    char buf[32];
    if (!path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    int n = snprintf(buf, sizeof buf, "%lu\n", calls);
    (void)!write(fd, buf, (size_t)n);
    close(fd);
}

static int fail_now(void)
{
    if (!started) {
        const char *e = getenv("TPAR_FAIL_ALLOC");
        started = 1;
        fail_at = e ? strtoul(e, NULL, 10) : 0;
        atexit(report);
    }
    return ++calls == fail_at;
}

void *__wrap_malloc(size_t n)
{
    return fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return fail_now() ? NULL : __real_strdup(s);
}
