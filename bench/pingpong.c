/* The floor under a worker round trip: one byte back and forth between a
 * parent and a forked child over two pipes, no Python anywhere.
 *
 *   pingpong [ROUND_TRIPS] [any|same|split]
 *
 * `same` pins both processes on CPU 0, `split` puts them on CPUs 0 and 1,
 * `any` leaves placement to the scheduler.  Prints microseconds per round
 * trip on stdout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity");
}

static int xfer(int rfd, int wfd, int first)
{
    char c = 'x';
    if (first && write(wfd, &c, 1) != 1)
        return -1;
    if (read(rfd, &c, 1) != 1)
        return -1;
    if (!first && write(wfd, &c, 1) != 1)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    const char *mode = argc > 2 ? argv[2] : "any";
    int ping[2], pong[2];
    if (n <= 0 || pipe2(ping, O_CLOEXEC) != 0 || pipe2(pong, O_CLOEXEC) != 0) {
        fprintf(stderr, "usage: pingpong [ROUND_TRIPS] [any|same|split]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        if (strcmp(mode, "any") != 0)
            pin(strcmp(mode, "same") == 0 ? 0 : 1);
        for (long i = 0; i < n; i++)
            if (xfer(ping[0], pong[1], 0) != 0)
                _exit(1);
        _exit(0);
    }
    if (strcmp(mode, "any") != 0)
        pin(0);
    double t0 = now();
    for (long i = 0; i < n; i++)
        if (xfer(pong[0], ping[1], 1) != 0) {
            fprintf(stderr, "pingpong: pipe failed at %ld: %s\n", i,
                    strerror(errno));
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return 1;
        }
    double dt = now() - t0;
    int st;
    waitpid(pid, &st, 0);
    printf("%.3f\n", dt / (double)n * 1e6);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
