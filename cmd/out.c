/* Small, fast formatters for the records tpar writes.  Out of memory while
 * formatting output is fatal: a record half written is worse than none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char *const status_names[ST_COUNT] = {
    "ok", "error", "timeout", "broken", "cancelled", "bad_input",
};

static void reserve(tpar_buf *b, size_t n)
{
    if (b->cap - b->len < n && tpar_buf_reserve(b, n) < 0)
        cli_die(EXIT_USAGE, "out of memory");
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

/* A JSON string literal for UTF-8 text (invalid bytes pass through: the
 * text we quote comes from our own messages and from file names). */
void out_jstr(tpar_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    reserve(b, n * 6 + 2);
    uint8_t *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = c;
        } else if (c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = (uint8_t)hex[c >> 4];
            *o++ = (uint8_t)hex[c & 15];
        } else {
            *o++ = c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}
