/* Error strings, the clock, the CPU count. */
#include "tpar.h"

#include <sched.h>
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
