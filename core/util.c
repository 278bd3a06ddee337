/* Error strings, the clock, the CPU count and load. */
#include "tpar.h"

#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *tpar_strerror(int err)
{
    switch (err) {
#define TPAR__ERR_CASE(name, code, msg)                                        \
    case TPAR_E##name:                                                         \
        return msg;
        TPAR_ERRNO_MAP(TPAR__ERR_CASE)
#undef TPAR__ERR_CASE
    }
    return err < 0 ? strerror(-err) : "success";
}

double tpar_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int tpar_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

long tpar_loadavg_runnable(const char *text)
{
    const char *p = text;
    for (int field = 0; field < 3; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    char *end;
    long n = strtol(p, &end, 10);
    return end != p && *end == '/' ? n : -1;
}

/* Reads the small file at `path` into buf as a string (NUL-terminated);
 * 0, or -1 when it cannot be read.  Opened each time (every few ms at
 * most): no fd of ours stays open in a worker, where a job may count or
 * close them. */
static int read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

/* 1 when process `pid` is runnable now (state R in /proc/PID/stat). */
static int pid_runnable(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (read_small(path, buf, sizeof buf) < 0)
        return 0;
    const char *end = strrchr(buf, ')'); /* the name may hold anything */
    return end && end[1] == ' ' && end[2] == 'R';
}

int tpar_cpus_oversubscribed(double now, pid_t ours)
{
    /* Per process, shared by threads: a reading's age, the `ours` it was
     * made for and its answer.  Relaxed: two threads that race both read
     * the file, nothing worse; a torn pair (one's age, the other's
     * `ours`) only reads it again. */
    static _Atomic double next;
    static atomic_int loaded, loaded_for = -1;
    static long cpus;
    if (now < atomic_load_explicit(&next, memory_order_relaxed) &&
        (int)ours == atomic_load_explicit(&loaded_for, memory_order_relaxed))
        return atomic_load_explicit(&loaded, memory_order_relaxed);
    atomic_store_explicit(&next, now + TPAR_LOAD_CHECK_S, memory_order_relaxed);
    atomic_store_explicit(&loaded_for, (int)ours, memory_order_relaxed);
    if (!cpus) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cpus = n > 0 ? n : 1;
    }
    char buf[128];
    if (read_small("/proc/loadavg", buf, sizeof buf) < 0)
        return 0;
    long running = tpar_loadavg_runnable(buf);
    /* A worker's parent, running, is tpar's own: it feeds the workers and
     * waits for them.  Counted as contention, a parent and a worker per
     * CPU (the package's default limiter, the CLI's default -j) kept every
     * worker off the spin in the throughput case, where blocking costs
     * each job a wake-up (docs/design.md, "Spinning before blocking"). */
    if (running > cpus && ours > 0 && pid_runnable(ours)) /* read only if it matters */
        running--;
    int over = running > cpus;
    atomic_store_explicit(&loaded, over, memory_order_relaxed);
    return over;
}
