/* Tiny assertion helpers: each failure prints expected and actual. */
#ifndef TPAR_CHECK_H
#define TPAR_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_failures;

#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s): %lld != %lld\n",         \
                    __FILE__, __LINE__, #a, #b, a_, b_);                       \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

/* Runs one test function and prints a TAP-ish line for it. */
#define RUN(fn)                                                                \
    do {                                                                       \
        int before_ = check_failures;                                          \
        fn();                                                                  \
        printf("%s %s\n", check_failures == before_ ? "ok" : "not ok", #fn);   \
    } while (0)

#define CHECK_DONE() (check_failures ? (fprintf(stderr, "%d check(s) failed\n", check_failures), 1) : 0)

#endif
