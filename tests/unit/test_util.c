/* core/util.c: the machine-load check that spinners ask first. */
#include "check.h"
#include "tpar.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) != -1;
    return n;
}

/* CPU-bound children, as many as `n`. */
static void hogs(pid_t *kids, long n)
{
    for (long i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0)
            for (;;) {
            }
    }
    struct timespec settle = {0, 50 * 1000 * 1000};
    nanosleep(&settle, NULL); /* they run */
}

static void no_hogs(pid_t *kids, long n)
{
    for (long i = 0; i < n; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
    }
}

/* A CPU-bound child per CPU online, with this process one more runnable
 * task than CPUs: the check must see it, from a fresh reading (now past
 * the cached one's age), and leave no fd open; and not when one of the
 * children is the caller's parent (`ours`): a worker's parent feeding it
 * is tpar's own, not contention (the old rule kept the workers of a
 * throughput run off the spin).  A parent asleep is not discounted. */
static void test_more_runnable_tasks_than_cpus_is_seen(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(cpus > 0 && cpus <= 256);
    pid_t kids[256];
    hogs(kids, cpus);
    int fds = count_fds(), seen = 0, calm = 0, asleep = 0;
    double now = tpar_now();
    for (int i = 0; i < 100 && !calm; i++) {
        now += 2 * TPAR_LOAD_CHECK_S;
        calm = !tpar_cpus_oversubscribed(now, kids[0]);
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    for (int i = 0; i < 100 && !asleep; i++) {
        now += 2 * TPAR_LOAD_CHECK_S;
        asleep = tpar_cpus_oversubscribed(now, getppid()); /* waits for us */
    }
    /* Some reading within a second finds them all runnable, and us. */
    for (int i = 0; i < 100 && !seen; i++) {
        now += 2 * TPAR_LOAD_CHECK_S;
        seen = tpar_cpus_oversubscribed(now, 0);
    }
    /* A reading is an answer for the `ours` it was made for: asked for
     * another within its age, the check reads again (it answered the
     * first caller's again before). */
    int both = 0;
    for (int i = 0; i < 100 && !both; i++) {
        now += 2 * TPAR_LOAD_CHECK_S;
        both = !tpar_cpus_oversubscribed(now, kids[0]) && tpar_cpus_oversubscribed(now, 0);
    }
    CHECK_EQ(seen, 1);
    CHECK_EQ(asleep, 1);
    CHECK_EQ(calm, 1);
    CHECK_EQ(both, 1);
    CHECK_EQ(count_fds(), fds);
    no_hogs(kids, cpus);
    /* Within TPAR_LOAD_CHECK_S of a reading, its answer is given again
     * without a new one (the hogs are gone now). */
    CHECK_EQ(tpar_cpus_oversubscribed(now + TPAR_LOAD_CHECK_S / 2, 0), 1);
}

static void test_the_runnable_count_is_read_from_loadavg_text(void)
{
    CHECK_EQ(tpar_loadavg_runnable("0.20 0.18 0.12 3/80 11206\n"), 3);
    CHECK_EQ(tpar_loadavg_runnable("1.00 1.00 1.00 17/1024 5\n"), 17);
    CHECK_EQ(tpar_loadavg_runnable(""), -1);
    CHECK_EQ(tpar_loadavg_runnable("0.20 0.18 0.12 x/80 1\n"), -1);
}

int main(void)
{
    RUN(test_the_runnable_count_is_read_from_loadavg_text);
    RUN(test_more_runnable_tasks_than_cpus_is_seen);
    return CHECK_DONE();
}
