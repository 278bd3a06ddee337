/* Unit tests for core/jsonline.c, the allocation-free JSON span scanner. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "jsonline.h"
#include "tpar.h"

static int failures, checks;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        checks++;                                                             \
        if (!(cond)) {                                                        \
            failures++;                                                       \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__,  \
                    #cond);                                                   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

/* Copies s to the very end of a page followed by a PROT_NONE page, so any
 * read past the end of the input crashes the test (picohttpparser's trick). */
static char *guarded(const char *s, size_t n)
{
    static char *region;
    static size_t page;
    if (!region) {
        page = (size_t)sysconf(_SC_PAGESIZE);
        region = mmap(NULL, 64 * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED)
            abort();
        mprotect(region + 63 * page, page, PROT_NONE);
    }
    if (n > 63 * page)
        abort();
    char *p = region + 63 * page - n;
    memcpy(p, s, n);
    return p;
}

static int value_ok_n(const char *s, size_t n)
{
    tpar_jsonline_span sp;
    tpar_jsonline_error err;
    return tpar_jsonline_value(guarded(s, n), n, &sp, &err) == 0;
}

static int value_ok(const char *s)
{
    return value_ok_n(s, strlen(s));
}

static void test_values(void)
{
    static const char *good[] = {
        "0", "-0", "1", "-12", "3.25", "1e5", "1E+5", "2.5e-3", "12345678901234567890123",
        "true", "false", "null", "\"\"", "\"abc\"", "\"a\\\"b\\\\c\\/\\b\\f\\n\\r\\t\"",
        "\"\\u00e9\\uD83D\\uDE00\"", "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"",
        "[]", "{}", " [ ] ", "[1,[2,[3,{}]]]", "{\"a\":{\"b\":[true,false,null]}}",
        "\t{\"k\" : \"v\" , \"k\" : 1}\r\n",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(value_ok(good[i]), "should accept %s", good[i]);
    static const char *bad[] = {
        "", " ", "01", "-", "1.", ".5", "1e", "+1", "0x10", "NaN", "Infinity",
        "tru", "nul", "\"abc", "\"a\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"a\tb\"",
        "\"\x80\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf5\x80\x80\x80\"",
        "[", "[1,]", "[,1]", "[1 2]", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{1:2}",
        "{'a':1}", "[1]]", "1 2", "{}x", "\"a\"\"b\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!value_ok(bad[i]), "should reject [%s]", bad[i]);
}

static void test_value_span(void)
{
    tpar_jsonline_span sp;
    tpar_jsonline_error err;
    const char *s = "  [1, \"x\"]  ";
    CHECK(tpar_jsonline_value(s, strlen(s), &sp, &err) == 0, "valid");
    CHECK(sp.off == 2 && sp.len == 8 && sp.type == TPAR_JSON_ARRAY,
          "span %zu+%zu type %d", sp.off, sp.len, sp.type);
    s = "[1, 2 x]";
    CHECK(tpar_jsonline_value(s, strlen(s), &sp, &err) == TPAR_EBADJSON, "invalid");
    CHECK(err.pos == 6 && strcmp(err.msg, "expected ',' or ']'") == 0,
          "pos %zu msg %s", err.pos, err.msg);
}

static void test_depth(void)
{
    char buf[2 * TPAR_JSONLINE_MAX_DEPTH + 4];
    size_t d = TPAR_JSONLINE_MAX_DEPTH;
    memset(buf, '[', d);
    memset(buf + d, ']', d);
    CHECK(value_ok_n(buf, 2 * d), "depth %zu accepted", d);
    memset(buf, '[', d + 1);
    memset(buf + d + 1, ']', d + 1);
    tpar_jsonline_span sp;
    tpar_jsonline_error err;
    CHECK(tpar_jsonline_value(buf, 2 * d + 2, &sp, &err) == TPAR_EBADJSON &&
              strcmp(err.msg, "nesting too deep") == 0,
          "depth %zu rejected", d + 1);
}

static int job(const char *s, tpar_jsonline_job *j, tpar_jsonline_error *err)
{
    return tpar_jsonline_job_parse(guarded(s, strlen(s)), strlen(s), j, err);
}

static int span_is(const char *line, tpar_jsonline_span sp, const char *want)
{
    return sp.len == strlen(want) && memcmp(line + sp.off, want, sp.len) == 0;
}

static void test_job(void)
{
    tpar_jsonline_job j;
    tpar_jsonline_error err;
    const char *s = "{\"id\": 12345678901234567890, \"fn\": \"operator:add\", "
                    "\"args\": [1, {\"fn\": 2}], \"kwargs\": {}, \"meta\": [[]], "
                    "\"timeout\": 2.5}";
    CHECK(job(s, &j, &err) == 0, "valid job: %s at %zu", err.msg, err.pos);
    CHECK(span_is(s, j.id, "12345678901234567890"), "id");
    CHECK(span_is(s, j.fn, "\"operator:add\""), "fn");
    CHECK(span_is(s, j.args, "[1, {\"fn\": 2}]"), "args (nested fn key ignored)");
    CHECK(span_is(s, j.kwargs, "{}"), "kwargs");
    CHECK(span_is(s, j.timeout, "2.5"), "timeout");
    CHECK(span_is(s, j.meta, "[[]]"), "meta");

    s = "{\"fn\":\"m:f\"}";
    CHECK(job(s, &j, &err) == 0, "minimal job");
    CHECK(j.id.type == TPAR_JSON_NONE && j.args.len == 0 && j.kwargs.len == 0,
          "absent keys are empty");

    s = "{\"f\\u006e\":\"m:f\",\"id\":\"a\\\"b\"}";
    CHECK(job(s, &j, &err) == 0, "escaped key");
    CHECK(span_is(s, j.fn, "\"m:f\"") && span_is(s, j.id, "\"a\\\"b\""), "escaped spans");
}

static void bad_job(const char *s, const char *msg)
{
    tpar_jsonline_job j;
    tpar_jsonline_error err = {0, NULL, 0};
    CHECK(job(s, &j, &err) == TPAR_EBADJSON && err.msg && strcmp(err.msg, msg) == 0,
          "%s: want [%s] got [%s]", s, msg, err.msg ? err.msg : "(accepted)");
}

static void test_bad_jobs(void)
{
    bad_job("", "empty input");
    bad_job("[1]", "not a JSON object");
    bad_job("\"fn\"", "not a JSON object");
    bad_job("[1", "expected ',' or ']'");
    bad_job("{}", "missing \"fn\"");
    bad_job("{\"args\":[]}", "missing \"fn\"");
    bad_job("{\"fn\":1}", "\"fn\" must be a string \"MOD:FN\"");
    bad_job("{\"fn\":\"m:f\",\"args\":{}}", "\"args\" must be an array");
    bad_job("{\"fn\":\"m:f\",\"args\":null}", "\"args\" must be an array");
    bad_job("{\"fn\":\"m:f\",\"kwargs\":[]}", "\"kwargs\" must be an object");
    bad_job("{\"fn\":\"m:f\",\"id\":[1]}", "\"id\" must be a JSON scalar");
    bad_job("{\"fn\":\"m:f\",\"id\":{}}", "\"id\" must be a JSON scalar");
    bad_job("{\"fn\":\"m:f\",\"timeout\":\"1s\"}", "\"timeout\" must be a number of seconds");
    bad_job("{\"fn\":\"m:f\",\"fn\":\"m:g\"}", "duplicate key");
    bad_job("{\"fn\":\"m:f\",\"f\\u006e\":\"m:g\"}", "duplicate key");
    bad_job("{\"fn\":\"m:f\"} {}", "unexpected data after the JSON value");
    bad_job("{\"fn\":\"m:f\",}", "expected a string key");
    bad_job("{\"fn\" \"m:f\"}", "expected ':'");
    bad_job("{\"fn\":\"m:f\" \"args\":[]}", "expected ',' or '}'");
    bad_job("{\"fn\":\"m:f\",\"args\":[1,2}", "expected ',' or ']'");
    bad_job("{\"fn\":\"m\tf\"}", "control character in string");
    bad_job("{\"fn\":\"m:\xff\"}", "invalid UTF-8");
    bad_job("{\"fn\":tru}", "invalid literal");
    bad_job("{\"fn\":\"m:f\",\"timeout\":01}", "leading zero in number");

    tpar_jsonline_job j;
    tpar_jsonline_error err;
    CHECK(job("{\"fn\":\"m:f\", \"args\":[1,,2]}", &j, &err) == TPAR_EBADJSON &&
              err.pos == 23,
          "error position %zu", err.pos);
    /* Syntax errors and valid JSON of the wrong shape are told apart. */
    CHECK(job("{\"fn\":", &j, &err) == TPAR_EBADJSON && err.syntax == 1, "syntax error");
    CHECK(job("{\"args\":[]}", &j, &err) == TPAR_EBADJSON && err.syntax == 0, "missing fn");
    CHECK(job("[]", &j, &err) == TPAR_EBADJSON && err.syntax == 0, "not an object");
    CHECK(job("{\"fn\":\"m:f\",\"args\":{}}", &j, &err) == TPAR_EBADJSON && err.syntax == 0,
          "wrong type");
    /* Every scalar is a valid id; a UTF-8 id span is kept raw. */
    const char *ids[] = {"1", "-2.5e3", "true", "false", "null", "\"\xc3\xa9\\u0041\""};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        char line[64];
        snprintf(line, sizeof line, "{\"id\":%s,\"fn\":\"m:f\"}", ids[i]);
        CHECK(job(line, &j, &err) == 0 && span_is(line, j.id, ids[i]), "id %s", ids[i]);
    }
    /* A key a job line does not have is an error at that key (a misspelt
     * kwargs would run the job without its arguments). */
    CHECK(job("{\"fn\":\"m:f\",\"kwrags\":{}}", &j, &err) == TPAR_EBADJSON &&
              err.msg == tpar_jsonline_unknown_key && err.pos == 12 && err.syntax == 0,
          "unknown key: %s at %zu", err.msg, err.pos);
    CHECK(job("{\"fn\":\"m:f\",\"meta\":1,\"meta\":2}", &j, &err) == TPAR_EBADJSON,
          "duplicate meta");
}

static void test_unescape(void)
{
    char out[64];
    const char *s = "\"a\\n\\u00e9\\ud83d\\ude00\\\"\\/z\"";
    long n = tpar_jsonline_unescape(s, strlen(s), out);
    const char *want = "a\n\xc3\xa9\xf0\x9f\x98\x80\"/z";
    CHECK(n == (long)strlen(want) && memcmp(out, want, (size_t)n) == 0, "unescape %ld", n);
    s = "\"\\ud83d\"";
    CHECK(tpar_jsonline_unescape(s, strlen(s), out) == -1, "lone high surrogate");
    s = "\"\\ude00x\"";
    CHECK(tpar_jsonline_unescape(s, strlen(s), out) == -1, "lone low surrogate");
    s = "\"a\\u0000b\"";
    CHECK(tpar_jsonline_unescape(s, strlen(s), out) == 3 && out[1] == 0, "NUL kept");
}

/* The one JSON string escaper (the CLI's records and the worker's EXTRA
 * frames): short escapes, \u00XX, UTF-8 kept, each bad byte U+FFFD, and
 * what it writes is a string the scanner accepts and that unescapes back
 * (reading past the end of the input crashes: guarded). */
static void test_escape(void)
{
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } cases[] = {
        {"", 0, "\"\""},
        {"a\"b\\c/", 6, "\"a\\\"b\\\\c/\""},
        {"l1\nl2\tx\r\x01\x1f", 10, "\"l1\\nl2\\tx\\u000d\\u0001\\u001f\""},
        {"a\0b", 3, "\"a\\u0000b\""},
        {"\xc3\xa9\xf0\x9f\x98\x80", 6, "\"\xc3\xa9\xf0\x9f\x98\x80\""},
        {"\xc3", 1, "\"\\ufffd\""},               /* cut mid-character */
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},     /* overlong */
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* a surrogate */
        {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* past U+10FFFF */
        {"\xff" "a", 2, "\"\\ufffda\""},
        {"\x7f", 1, "\"\x7f\""},
    };
    char out[128], back[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = cases[i].n;
        const char *in = guarded(cases[i].in, n);
        size_t k = tpar_jsonline_escape((const uint8_t *)in, n, out);
        CHECK(k <= TPAR_JSONLINE_ESCAPED_MAX(n), "case %zu: %zu bytes", i, k);
        CHECK(k == strlen(cases[i].want) && memcmp(out, cases[i].want, k) == 0,
              "case %zu: got %.*s", i, (int)k, out);
        CHECK(value_ok_n(out, k), "case %zu: not a JSON value", i);
        long m = tpar_jsonline_unescape(out, k, back);
        int valid = !strstr(cases[i].want, "fffd");
        if (valid)
            CHECK(m == (long)n && memcmp(back, cases[i].in, n) == 0, "case %zu: round trip", i);
    }
    /* The bound: every byte a control character. */
    char ctl[16];
    memset(ctl, 1, sizeof ctl);
    CHECK(tpar_jsonline_escape((const uint8_t *)ctl, sizeof ctl, out) ==
              TPAR_JSONLINE_ESCAPED_MAX(sizeof ctl),
          "worst case");
}

/* Every prefix of a valid job line is rejected without reading past it. */
static void test_prefixes(void)
{
    const char *s = "{\"id\":\"x\\u00e9\",\"fn\":\"m:f\",\"args\":[1.5e3,-2,true,null,\"\xc3\xa9\"],"
                    "\"kwargs\":{\"a\":{\"b\":[]}}}";
    size_t n = strlen(s);
    tpar_jsonline_job j;
    tpar_jsonline_error err;
    for (size_t k = 0; k < n; k++)
        CHECK(tpar_jsonline_job_parse(guarded(s, k), k, &j, &err) == TPAR_EBADJSON,
              "prefix of %zu bytes accepted", k);
    CHECK(tpar_jsonline_job_parse(guarded(s, n), n, &j, &err) == 0, "whole line");
}

int main(void)
{
    test_values();
    test_value_span();
    test_depth();
    test_job();
    test_bad_jobs();
    test_unescape();
    test_escape();
    test_prefixes();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
