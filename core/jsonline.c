/* jsonline: see jsonline.h.  One pass, no allocation, no recursion: nested
 * containers are tracked in a bit stack (1 = object, 0 = array). */
#include "jsonline.h"

#include <stdint.h>
#include <string.h>

#include "tpar.h"

struct scan {
    const uint8_t *start; /* the buffer, for error offsets */
    const uint8_t *p;     /* next byte */
    const uint8_t *end;
    tpar_jsonline_error *err;
};

/* Byte classes inside a string: 0 plain, 1 quote, 2 backslash, 3 control,
 * 4 UTF-8 lead byte, 5 never valid in UTF-8. */
enum { C_PLAIN, C_QUOTE, C_BSLASH, C_CTRL, C_LEAD, C_BAD };

static const uint8_t str_class[256] = {
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
    5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
};

static int fail(struct scan *sc, const uint8_t *at, const char *msg)
{
    sc->err->pos = (size_t)(at - sc->start);
    sc->err->msg = msg;
    sc->err->syntax = 1;
    return TPAR_EBADJSON;
}

static void skip_ws(struct scan *sc)
{
    while (sc->p < sc->end &&
           (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r'))
        sc->p++;
}

static int is_cont(const uint8_t *p, const uint8_t *end, uint8_t lo, uint8_t hi)
{
    return p < end && *p >= lo && *p <= hi;
}

/* Validates one UTF-8 sequence starting with lead byte *p; returns its
 * length or 0. */
static size_t utf8_seq(const uint8_t *p, const uint8_t *end)
{
    uint8_t c = *p;
    if (c <= 0xDF)
        return is_cont(p + 1, end, 0x80, 0xBF) ? 2 : 0;
    if (c <= 0xEF) {
        uint8_t lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return is_cont(p + 1, end, lo, hi) && is_cont(p + 2, end, 0x80, 0xBF) ? 3 : 0;
    }
    uint8_t lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return is_cont(p + 1, end, lo, hi) && is_cont(p + 2, end, 0x80, 0xBF) &&
                   is_cont(p + 3, end, 0x80, 0xBF)
               ? 4
               : 0;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int scan_escape(struct scan *sc)
{
    const uint8_t *p = sc->p; /* at the backslash */
    if (p + 1 >= sc->end)
        return fail(sc, p, "unterminated string");
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        sc->p = p + 2;
        return 0;
    case 'u':
        for (int i = 2; i < 6; i++)
            if (p + i >= sc->end || hexval(p[i]) < 0)
                return fail(sc, p, "invalid \\u escape");
        sc->p = p + 6;
        return 0;
    default:
        return fail(sc, p, "invalid escape in string");
    }
}

/* sc->p at the opening quote; leaves it after the closing quote.  *bs is
 * set when the string holds an escape. */
static int scan_string(struct scan *sc, int *bs)
{
    const uint8_t *open = sc->p++;
    for (;;) {
        const uint8_t *p = sc->p, *end = sc->end;
        while (p < end && str_class[*p] == C_PLAIN)
            p++;
        sc->p = p;
        if (p >= end)
            return fail(sc, open, "unterminated string");
        switch (str_class[*p]) {
        case C_QUOTE:
            sc->p = p + 1;
            return 0;
        case C_BSLASH:
            if (bs)
                *bs = 1;
            if (scan_escape(sc) < 0)
                return TPAR_EBADJSON;
            break;
        case C_CTRL:
            return fail(sc, p, "control character in string");
        case C_LEAD: {
            size_t k = utf8_seq(p, end);
            if (!k)
                return fail(sc, p, "invalid UTF-8");
            sc->p = p + k;
            break;
        }
        default:
            return fail(sc, p, "invalid UTF-8");
        }
    }
}

static int is_digit(const uint8_t *p, const uint8_t *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static int scan_number(struct scan *sc)
{
    const uint8_t *p = sc->p, *end = sc->end;
    if (*p == '-')
        p++;
    if (!is_digit(p, end))
        return fail(sc, p, "invalid number");
    if (*p == '0') {
        p++;
        if (is_digit(p, end))
            return fail(sc, p, "leading zero in number");
    } else {
        while (is_digit(p, end))
            p++;
    }
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end))
            return fail(sc, p, "expected a digit after '.'");
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return fail(sc, p, "expected a digit in exponent");
        while (is_digit(p, end))
            p++;
    }
    sc->p = p;
    return 0;
}

static int scan_literal(struct scan *sc, const char *word, size_t n)
{
    if ((size_t)(sc->end - sc->p) < n || memcmp(sc->p, word, n) != 0)
        return fail(sc, sc->p, "invalid literal");
    sc->p += n;
    return 0;
}

/* Scans "key" ws ':' inside an object; sc->p at the key's quote. */
static int scan_key(struct scan *sc)
{
    if (sc->p >= sc->end || *sc->p != '"')
        return fail(sc, sc->p, "expected a string key");
    if (scan_string(sc, NULL) < 0)
        return TPAR_EBADJSON;
    skip_ws(sc);
    if (sc->p >= sc->end || *sc->p != ':')
        return fail(sc, sc->p, "expected ':'");
    sc->p++;
    return 0;
}

static int type_of(uint8_t c)
{
    switch (c) {
    case '{': return TPAR_JSON_OBJECT;
    case '[': return TPAR_JSON_ARRAY;
    case '"': return TPAR_JSON_STRING;
    case 't': return TPAR_JSON_TRUE;
    case 'f': return TPAR_JSON_FALSE;
    case 'n': return TPAR_JSON_NULL;
    default: return TPAR_JSON_NUMBER;
    }
}

/* Scans one complete value starting at sc->p (after whitespace). */
static int scan_value(struct scan *sc)
{
    uint8_t stack[TPAR_JSONLINE_MAX_DEPTH / 8];
    int depth = 0;
value:
    skip_ws(sc);
    if (sc->p >= sc->end)
        return fail(sc, sc->p, "unexpected end of input");
    switch (*sc->p) {
    case '{': case '[': {
        int obj = *sc->p == '{';
        if (depth == TPAR_JSONLINE_MAX_DEPTH)
            return fail(sc, sc->p, "nesting too deep");
        if (obj)
            stack[depth / 8] |= (uint8_t)(1u << (depth % 8));
        else
            stack[depth / 8] &= (uint8_t)~(1u << (depth % 8));
        depth++;
        sc->p++;
        skip_ws(sc);
        if (sc->p < sc->end && *sc->p == (obj ? '}' : ']')) {
            sc->p++;
            depth--;
            goto after;
        }
        if (obj && scan_key(sc) < 0)
            return TPAR_EBADJSON;
        goto value;
    }
    case '"':
        if (scan_string(sc, NULL) < 0)
            return TPAR_EBADJSON;
        break;
    case 't':
        if (scan_literal(sc, "true", 4) < 0)
            return TPAR_EBADJSON;
        break;
    case 'f':
        if (scan_literal(sc, "false", 5) < 0)
            return TPAR_EBADJSON;
        break;
    case 'n':
        if (scan_literal(sc, "null", 4) < 0)
            return TPAR_EBADJSON;
        break;
    default:
        if (*sc->p != '-' && (*sc->p < '0' || *sc->p > '9'))
            return fail(sc, sc->p, "expected a JSON value");
        if (scan_number(sc) < 0)
            return TPAR_EBADJSON;
    }
after:
    if (depth == 0)
        return 0;
    skip_ws(sc);
    {
        int obj = (stack[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
        if (sc->p >= sc->end)
            return fail(sc, sc->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        if (*sc->p == ',') {
            sc->p++;
            if (obj) {
                skip_ws(sc);
                if (scan_key(sc) < 0)
                    return TPAR_EBADJSON;
            }
            goto value;
        }
        if (*sc->p != (obj ? '}' : ']'))
            return fail(sc, sc->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        sc->p++;
        depth--;
        goto after;
    }
}

static void scan_init(struct scan *sc, const char *s, size_t n, tpar_jsonline_error *err)
{
    sc->start = sc->p = (const uint8_t *)s;
    sc->end = sc->start + n;
    sc->err = err;
}

/* Scans a value, fills *out, leaves sc->p after it. */
static int span_value(struct scan *sc, tpar_jsonline_span *out)
{
    skip_ws(sc);
    const uint8_t *v = sc->p;
    if (scan_value(sc) < 0)
        return TPAR_EBADJSON;
    out->off = (size_t)(v - sc->start);
    out->len = (size_t)(sc->p - v);
    out->type = type_of(*v);
    return 0;
}

static int expect_end(struct scan *sc)
{
    skip_ws(sc);
    if (sc->p != sc->end)
        return fail(sc, sc->p, "unexpected data after the JSON value");
    return 0;
}

int tpar_jsonline_value(const char *s, size_t n, tpar_jsonline_span *out,
                        tpar_jsonline_error *err)
{
    struct scan sc;
    scan_init(&sc, s, n, err);
    if (span_value(&sc, out) < 0)
        return TPAR_EBADJSON;
    return expect_end(&sc);
}

long tpar_jsonline_unescape(const char *s, size_t n, char *out)
{
    const char *p = s + 1, *end = s + n - 1; /* inside the quotes */
    char *o = out;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        char c = p[1];
        p += 2;
        switch (c) {
        case 'b': *o++ = '\b'; continue;
        case 'f': *o++ = '\f'; continue;
        case 'n': *o++ = '\n'; continue;
        case 'r': *o++ = '\r'; continue;
        case 't': *o++ = '\t'; continue;
        case 'u': break;
        default: *o++ = c; continue;
        }
        uint32_t cp = 0;
        for (int i = 0; i < 4; i++)
            cp = cp << 4 | (uint32_t)hexval((uint8_t)p[i]);
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return -1;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
                return -1;
            uint32_t lo = 0;
            for (int i = 2; i < 6; i++)
                lo = lo << 4 | (uint32_t)hexval((uint8_t)p[i]);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else if (cp < 0x800) {
            *o++ = (char)(0xC0 | cp >> 6);
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *o++ = (char)(0xE0 | cp >> 12);
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else {
            *o++ = (char)(0xF0 | cp >> 18);
            *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    return (long)(o - out);
}

/* Index of the wanted key equal to the string literal at k[0..n), or -1. */
static int match_key(const uint8_t *k, size_t n, int bs, const char *const keys[],
                     size_t nkeys)
{
    char tmp[64];
    const char *name = (const char *)k + 1;
    size_t len = n - 2;
    if (bs) {
        if (n > sizeof tmp)
            return -1;
        long m = tpar_jsonline_unescape((const char *)k, n, tmp);
        if (m < 0)
            return -1;
        name = tmp;
        len = (size_t)m;
    }
    for (size_t i = 0; i < nkeys; i++)
        if (strlen(keys[i]) == len && memcmp(keys[i], name, len) == 0)
            return (int)i;
    return -1;
}

const char tpar_jsonline_unknown_key[] = "unknown key";

/* One "key": value member of the top-level object; with strict, a key not
 * in keys is an error (tpar_jsonline_unknown_key, at the key). */
static int scan_member(struct scan *sc, const char *const keys[], size_t nkeys,
                       tpar_jsonline_span vals[], int strict)
{
    const uint8_t *k = sc->p;
    int bs = 0;
    if (k >= sc->end || *k != '"')
        return fail(sc, k, "expected a string key");
    if (scan_string(sc, &bs) < 0)
        return TPAR_EBADJSON;
    int idx = match_key(k, (size_t)(sc->p - k), bs, keys, nkeys);
    if (idx < 0 && strict) {
        fail(sc, k, tpar_jsonline_unknown_key);
        sc->err->syntax = 0;
        return TPAR_EBADJSON;
    }
    skip_ws(sc);
    if (sc->p >= sc->end || *sc->p != ':')
        return fail(sc, sc->p, "expected ':'");
    sc->p++;
    if (idx >= 0 && vals[idx].type != TPAR_JSON_NONE)
        return fail(sc, k, "duplicate key");
    tpar_jsonline_span tmp;
    return span_value(sc, idx >= 0 ? &vals[idx] : &tmp);
}

static int object(const char *s, size_t n, const char *const keys[], size_t nkeys,
                  tpar_jsonline_span vals[], tpar_jsonline_error *err, int strict)
{
    struct scan sc;
    scan_init(&sc, s, n, err);
    memset(vals, 0, nkeys * sizeof *vals);
    skip_ws(&sc);
    if (sc.p >= sc.end)
        return fail(&sc, sc.p, "empty input");
    if (*sc.p != '{') {
        tpar_jsonline_span any;
        if (tpar_jsonline_value(s, n, &any, err) < 0)
            return TPAR_EBADJSON;
        fail(&sc, sc.p, "not a JSON object");
        err->syntax = 0;
        return TPAR_EBADJSON;
    }
    sc.p++;
    skip_ws(&sc);
    if (sc.p < sc.end && *sc.p == '}') {
        sc.p++;
        return expect_end(&sc);
    }
    for (;;) {
        if (scan_member(&sc, keys, nkeys, vals, strict) < 0)
            return TPAR_EBADJSON;
        skip_ws(&sc);
        if (sc.p < sc.end && *sc.p == ',') {
            sc.p++;
            skip_ws(&sc);
            continue;
        }
        if (sc.p < sc.end && *sc.p == '}') {
            sc.p++;
            return expect_end(&sc);
        }
        return fail(&sc, sc.p, "expected ',' or '}'");
    }
}

static int wrong_type(tpar_jsonline_error *err, const tpar_jsonline_span *v,
                      const char *msg)
{
    err->pos = v->off;
    err->msg = msg;
    err->syntax = 0;
    return TPAR_EBADJSON;
}

int tpar_jsonline_object(const char *s, size_t n, const char *const keys[],
                         size_t nkeys, tpar_jsonline_span vals[],
                         tpar_jsonline_error *err)
{
    return object(s, n, keys, nkeys, vals, err, 0);
}

int tpar_jsonline_job_parse(const char *s, size_t n, tpar_jsonline_job *out,
                            tpar_jsonline_error *err)
{
    static const char *const keys[] = {"id", "fn", "args", "kwargs", "timeout", "meta"};
    tpar_jsonline_span v[6];
    if (object(s, n, keys, 6, v, err, 1) < 0)
        return TPAR_EBADJSON;
    if (v[1].type == TPAR_JSON_NONE) {
        err->pos = 0;
        err->msg = "missing \"fn\"";
        err->syntax = 0;
        return TPAR_EBADJSON;
    }
    if (v[1].type != TPAR_JSON_STRING)
        return wrong_type(err, &v[1], "\"fn\" must be a string \"MOD:FN\"");
    if (v[0].type == TPAR_JSON_OBJECT || v[0].type == TPAR_JSON_ARRAY)
        return wrong_type(err, &v[0], "\"id\" must be a JSON scalar");
    if (v[2].type != TPAR_JSON_NONE && v[2].type != TPAR_JSON_ARRAY)
        return wrong_type(err, &v[2], "\"args\" must be an array");
    if (v[3].type != TPAR_JSON_NONE && v[3].type != TPAR_JSON_OBJECT)
        return wrong_type(err, &v[3], "\"kwargs\" must be an object");
    if (v[4].type != TPAR_JSON_NONE && v[4].type != TPAR_JSON_NUMBER &&
        v[4].type != TPAR_JSON_NULL)
        return wrong_type(err, &v[4], "\"timeout\" must be a number of seconds");
    out->id = v[0];
    out->fn = v[1];
    out->args = v[2];
    out->kwargs = v[3];
    out->timeout = v[4];
    out->meta = v[5];
    return 0;
}

/* ------------------------------------------------------------- escaping */

size_t tpar_jsonline_escape(const uint8_t *s, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n' || c == '\t') {
            *o++ = '\\';
            *o++ = c == '\n' ? 'n' : 't';
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else if (c < 0x80) {
            *o++ = (char)c;
        } else {
            /* a lead byte, then its valid continuation */
            size_t len = c >= 0xC2 && c <= 0xF4 ? utf8_seq(s + i, s + n) : 0;
            if (len) {
                memcpy(o, s + i, len);
                o += len;
                i += len - 1;
            } else {
                memcpy(o, "\\ufffd", 6);
                o += 6;
            }
        }
    }
    *o++ = '"';
    return (size_t)(o - out);
}
