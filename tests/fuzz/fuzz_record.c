/* libFuzzer target: the result-record writer's formatters (cmd/out.c:
 * out_jstr, out_secs, out_u64, out_lit) composed as the engine composes a
 * record: a raw id and a worker's error body or value spliced between
 * fixed text.
 *
 * The input is split into a message (any bytes: a file name, a message cut
 * mid-character) and an id and a value (kept only when they are valid
 * JSON, as the engine's are: the scanner checked them).  The record must
 * be one line, one JSON object (checked with core/jsonline.c) with the id,
 * value and message at their keys; the message must unescape to valid
 * UTF-8 that equals the input when the input was valid UTF-8 (each bad
 * byte U+FFFD otherwise, never more text); a duration must read back
 * within a microsecond. */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jsonline.h"

void cli_die(int code, const char *fmt, ...)
{
    abort();
}

void cli_oom(void)
{
    abort();
}

/* Strict UTF-8 (no overlongs, surrogates or > U+10FFFF): the reference. */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { k = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 4; cp = c & 0x07; }
        else return 0;
        if (n - i < k)
            return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

static const char *keys[] = {"id", "value", "error", "duration", "worker", "seq"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t a = data[0] % (size - 2), b = data[1] % (size - 2 - a);
    const char *msg = (const char *)data + 2, *id = msg + a, *val = id + b;
    size_t nmsg = a, nid = b, nval = size - 2 - a - b;
    tpar_jsonline_span sp;
    tpar_jsonline_error err;
    /* The id comes from one input line, the value from the worker's
     * encoder, which writes compact JSON: neither holds a newline. */
    if (nid == 0 || memchr(id, '\n', nid) || tpar_jsonline_value(id, nid, &sp, &err) < 0 ||
        sp.type == TPAR_JSON_OBJECT || sp.type == TPAR_JSON_ARRAY)
        id = "7", nid = 1;
    else
        id += sp.off, nid = sp.len; /* the engine copies the span */
    if (nval == 0 || memchr(val, '\n', nval) || tpar_jsonline_value(val, nval, &sp, &err) < 0)
        val = "null", nval = 4;
    else
        val += sp.off, nval = sp.len;
    double dur;
    memcpy(&dur, data + size - (size >= 10 ? 8 : 0), size >= 10 ? 8 : 0);
    if (size < 10)
        dur = data[0] / 7.0;
    uint64_t seq = (uint64_t)data[0] << 40 | (uint64_t)size;

    tpar_buf out = {0};
    OUT_LIT(&out, "{\"type\":\"result\",\"id\":");
    out_lit(&out, id, nid);
    OUT_LIT(&out, ",\"seq\":");
    out_u64(&out, seq);
    OUT_LIT(&out, ",\"status\":\"");
    out_lit(&out, status_names[data[1] % ST_COUNT], strlen(status_names[data[1] % ST_COUNT]));
    OUT_LIT(&out, "\",\"value\":");
    out_lit(&out, val, nval);
    OUT_LIT(&out, ",\"error\":{\"type\":\"X\",\"message\":");
    out_jstr(&out, msg, nmsg);
    OUT_LIT(&out, ",\"traceback\":null},\"duration\":");
    out_secs(&out, dur);
    OUT_LIT(&out, ",\"worker\":");
    out_u64(&out, (uint64_t)data[0] * 1000);
    OUT_LIT(&out, "}\n");

    /* one line */
    assert(out.data[out.len - 1] == '\n');
    assert(!memchr(out.data, '\n', out.len - 1));
    /* one JSON object, in a buffer of its own size */
    size_t n = out.len - 1;
    char *line = malloc(n);
    memcpy(line, out.data, n);
    tpar_jsonline_span v[6];
    if (tpar_jsonline_object(line, n, keys, 6, v, &err) < 0) {
        fprintf(stderr, "not JSON at %zu (%s): %.*s\n", err.pos, err.msg, (int)n, line);
        abort();
    }
    assert(v[0].len == nid && memcmp(line + v[0].off, id, nid) == 0);
    assert(v[1].len == nval && memcmp(line + v[1].off, val, nval) == 0);
    assert(v[4].type == TPAR_JSON_NUMBER && v[5].type == TPAR_JSON_NUMBER);
    /* the message */
    tpar_jsonline_span m[1];
    static const char *mk[] = {"message"};
    assert(tpar_jsonline_object(line + v[2].off, v[2].len, mk, 1, m, &err) == 0);
    assert(m[0].type == TPAR_JSON_STRING);
    char *text = malloc(m[0].len);
    long k = tpar_jsonline_unescape(line + v[2].off + m[0].off, m[0].len, text);
    assert(k >= 0 && utf8_valid((const uint8_t *)text, (size_t)k));
    if (utf8_valid((const uint8_t *)msg, nmsg))
        assert((size_t)k == nmsg && memcmp(text, msg, nmsg) == 0);
    else
        assert((size_t)k <= 3 * nmsg); /* U+FFFD is 3 bytes per bad byte */
    /* the duration */
    char num[64];
    assert(v[3].type == TPAR_JSON_NUMBER && v[3].len < sizeof num);
    memcpy(num, line + v[3].off, v[3].len);
    num[v[3].len] = 0;
    double back = strtod(num, NULL);
    if (dur >= 0 && dur <= 1e12)
        assert(fabs(back - dur) <= 5e-7 * (1 + dur * 1e-9) + 1e-6);
    else
        assert(back == 0);
    free(text);
    free(line);
    tpar_buf_free(&out);
    return 0;
}
