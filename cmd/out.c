/* Small, fast formatters for the records tpar writes.  Out of memory while
 * formatting output ends tpar (alloc.c): a record half written is worse
 * than none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jsonline.h"

const char *const status_names[ST_COUNT] = {
    "ok", "error", "timeout", "broken", "cancelled", "bad_input",
};

static void reserve(tpar_buf *b, size_t n)
{
    if (b->cap - b->len < n && tpar_buf_reserve(b, n) < 0)
        cli_oom();
}

void out_lit(tpar_buf *b, const char *s, size_t n)
{
    reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

void out_u64(tpar_buf *b, uint64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_lit(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Seconds with microsecond resolution, trailing zeros dropped: 0.000123. */
void out_secs(tpar_buf *b, double secs)
{
    if (!(secs >= 0) || secs > 1e12)
        secs = 0;
    uint64_t us = (uint64_t)llround(secs * 1e6);
    out_u64(b, us / 1000000);
    uint64_t frac = us % 1000000;
    char tmp[8] = {'.', '0', '0', '0', '0', '0', '0', '0'};
    for (int i = 6; i >= 1; i--, frac /= 10)
        tmp[i] = (char)('0' + frac % 10);
    size_t n = 7;
    while (n > 2 && tmp[n - 1] == '0')
        n--;
    out_lit(b, tmp, n);
}

/* A JSON string literal for text that should be UTF-8: it comes from our
 * own messages and from file names, which may hold any bytes (or a message
 * cut in the middle of a character).  Each invalid byte becomes U+FFFD, so
 * every record stays valid JSON. */
void out_jstr(tpar_buf *b, const char *s, size_t n)
{
    reserve(b, TPAR_JSONLINE_ESCAPED_MAX(n));
    b->len += tpar_jsonline_escape((const uint8_t *)s, n, (char *)b->data + b->len);
}
