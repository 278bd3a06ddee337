/* libFuzzer target: the job-line scanner (core/jsonline.c).
 *
 * Reference check: a plain recursive-descent validator written from RFC
 * 8259 (with jsonline's documented nesting limit and UTF-8 rule) must agree
 * with tpar_jsonline_value on every input.  On success every span must lie
 * in the input and scan again, alone, as a value of its type; the job
 * parser's spans must have the types it promises, and unescaping "fn" must
 * never grow it. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonline.h"
#include "tpar.h"

struct ref {
    const uint8_t *p, *end;
    int depth;
};

static void ws(struct ref *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int ref_value(struct ref *r);

static int utf8_ok(struct ref *r)
{
    const uint8_t *p = r->p;
    uint32_t cp;
    size_t n;
    if (p[0] < 0x80)
        return 0;
    if ((p[0] & 0xE0) == 0xC0) { n = 2; cp = p[0] & 0x1F; }
    else if ((p[0] & 0xF0) == 0xE0) { n = 3; cp = p[0] & 0x0F; }
    else if ((p[0] & 0xF8) == 0xF0) { n = 4; cp = p[0] & 0x07; }
    else return 0;
    if ((size_t)(r->end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    r->p += n;
    return 1;
}

static int hex(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int ref_string(struct ref *r)
{
    r->p++; /* the quote */
    while (r->p < r->end) {
        uint8_t c = *r->p;
        if (c == '"') {
            r->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (r->end - r->p < 2)
                return 0;
            c = r->p[1];
            if (c == 'u') {
                if (r->end - r->p < 6)
                    return 0;
                for (int i = 2; i < 6; i++)
                    if (!hex(r->p[i]))
                        return 0;
                r->p += 6;
            } else if (strchr("\"\\/bfnrt", c) && c) {
                r->p += 2;
            } else {
                return 0;
            }
        } else if (c >= 0x80) {
            if (!utf8_ok(r))
                return 0;
        } else {
            r->p++;
        }
    }
    return 0;
}

static int digit(struct ref *r)
{
    return r->p < r->end && *r->p >= '0' && *r->p <= '9';
}

static int ref_number(struct ref *r)
{
    if (r->p < r->end && *r->p == '-')
        r->p++;
    if (!digit(r))
        return 0;
    if (*r->p == '0')
        r->p++;
    else
        while (digit(r))
            r->p++;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (!digit(r))
            return 0;
        while (digit(r))
            r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (!digit(r))
            return 0;
        while (digit(r))
            r->p++;
    }
    return 1;
}

static int word(struct ref *r, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n))
        return 0;
    r->p += n;
    return 1;
}

static int ref_container(struct ref *r, int obj)
{
    if (++r->depth > TPAR_JSONLINE_MAX_DEPTH)
        return 0;
    r->p++;
    ws(r);
    if (r->p < r->end && *r->p == (obj ? '}' : ']')) {
        r->p++;
        r->depth--;
        return 1;
    }
    for (;;) {
        if (obj) {
            ws(r);
            if (r->p >= r->end || *r->p != '"' || !ref_string(r))
                return 0;
            ws(r);
            if (r->p >= r->end || *r->p != ':')
                return 0;
            r->p++;
        }
        if (!ref_value(r))
            return 0;
        ws(r);
        if (r->p >= r->end)
            return 0;
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p != (obj ? '}' : ']'))
            return 0;
        r->p++;
        r->depth--;
        return 1;
    }
}

static int ref_value(struct ref *r)
{
    ws(r);
    if (r->p >= r->end)
        return 0;
    switch (*r->p) {
    case '{': return ref_container(r, 1);
    case '[': return ref_container(r, 0);
    case '"': return ref_string(r);
    case 't': return word(r, "true");
    case 'f': return word(r, "false");
    case 'n': return word(r, "null");
    default: return ref_number(r);
    }
}

static int ref_valid(const uint8_t *s, size_t n)
{
    struct ref r = {s, s + n, 0};
    if (!ref_value(&r))
        return 0;
    ws(&r);
    return r.p == r.end;
}

static void check_span(const char *s, size_t n, const tpar_jsonline_span *v)
{
    if (v->type == TPAR_JSON_NONE) {
        assert(v->len == 0);
        return;
    }
    assert(v->off <= n && v->len <= n - v->off && v->len > 0);
    tpar_jsonline_span again;
    tpar_jsonline_error err;
    /* the span alone, in a buffer of its own size (ASan sees an over-read) */
    char *copy = malloc(v->len);
    memcpy(copy, s + v->off, v->len);
    assert(tpar_jsonline_value(copy, v->len, &again, &err) == 0);
    assert(again.off == 0 && again.len == v->len && again.type == v->type);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    tpar_jsonline_span v;
    tpar_jsonline_error err;
    int rc = tpar_jsonline_value(s, size, &v, &err);
    int want = ref_valid(data, size);
    if ((rc == 0) != want) {
        fprintf(stderr, "jsonline says %s, the reference says %s (%s at %zu)\n",
                rc == 0 ? "valid" : "invalid", want ? "valid" : "invalid",
                rc ? err.msg : "-", rc ? err.pos : 0);
        abort();
    }
    if (rc == 0)
        check_span(s, size, &v);
    else
        assert(err.pos <= size && err.msg);

    tpar_jsonline_job job;
    if (tpar_jsonline_job_parse(s, size, &job, &err) == 0) {
        assert(want && v.type == TPAR_JSON_OBJECT);
        check_span(s, size, &job.id);
        check_span(s, size, &job.fn);
        check_span(s, size, &job.args);
        check_span(s, size, &job.kwargs);
        check_span(s, size, &job.timeout);
        check_span(s, size, &job.meta);
        assert(job.fn.type == TPAR_JSON_STRING);
        assert(job.args.type == TPAR_JSON_NONE || job.args.type == TPAR_JSON_ARRAY);
        assert(job.kwargs.type == TPAR_JSON_NONE || job.kwargs.type == TPAR_JSON_OBJECT);
        assert(job.id.type != TPAR_JSON_OBJECT && job.id.type != TPAR_JSON_ARRAY);
        assert(job.timeout.type == TPAR_JSON_NONE || job.timeout.type == TPAR_JSON_NUMBER ||
               job.timeout.type == TPAR_JSON_NULL);
        char *out = malloc(job.fn.len);
        long k = tpar_jsonline_unescape(s + job.fn.off, job.fn.len, out);
        assert(k <= (long)job.fn.len);
        free(out);
    } else {
        assert(err.pos <= size && err.msg);
    }
    return 0;
}
