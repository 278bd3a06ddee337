/* Out of memory: the CLI's one policy.  When an allocation in tpar's own
 * code fails, tpar writes the records it has formatted whole, says "out of
 * memory" and exits 255 at once.  Nothing goes on with a NULL; its workers
 * and the zygote die with it (PR_SET_PDEATHSIG, EOF on their pipes).  A
 * later run with --resume does what is left.  Where going without the
 * memory loses nothing (a smaller buffer kept, a payload sent inline
 * rather than through a lane, a cache not filled), the code does so
 * instead, and says so where it does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void (*cli_oom_flush)(void);

void cli_oom(void)
{
    void (*flush)(void) = cli_oom_flush;
    cli_oom_flush = NULL; /* once, even if flushing runs out too */
    if (flush)
        flush();
    /* Not cli_die: options.c formats with out.c, which comes here; this
     * file stays a leaf. */
    fputs("tpar: out of memory\n", stderr);
    exit(EXIT_USAGE);
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        cli_oom();
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        cli_oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        cli_oom();
    return q;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}
