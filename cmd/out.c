/* Small, fast formatters for the records tpar writes.  Out of memory while
 * formatting output ends tpar (alloc.c): a record half written is worse
 * than none. */
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

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0: no
 * overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (c > 0xF4 || len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) ||
        (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
        return 0;
    return len;
}

/* A JSON string literal for text that should be UTF-8: it comes from our
 * own messages and from file names, which may hold any bytes (or a message
 * cut in the middle of a character).  Each invalid byte becomes U+FFFD, so
 * every record stays valid JSON. */
void out_jstr(tpar_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    reserve(b, n * 6 + 2);
    uint8_t *o = b->data + b->len;
    const uint8_t *u = (const uint8_t *)s;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = u[i];
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
        } else if (c < 0x80) {
            *o++ = c;
        } else {
            size_t len = utf8_len(u + i, n - i);
            if (len) {
                memcpy(o, u + i, len);
                o += len;
                i += len - 1;
            } else {
                memcpy(o, "\\ufffd", 6);
                o += 6;
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}
