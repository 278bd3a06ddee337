/* jsonline: a validating JSON scanner that allocates nothing.
 *
 * It checks that a buffer holds well-formed JSON (RFC 8259, strings in
 * valid UTF-8) and hands back the raw byte spans of values instead of
 * building a tree, so a caller can forward JSON text without re-encoding
 * it (big integers stay exact, floats keep their digits).  The CLI uses it
 * to read a job line in one pass: it finds the top-level keys it knows
 * (id, fn, args, kwargs, timeout) and copies their spans into the frame
 * it sends to a worker.  Sans-I/O, line based, no global state. */
#ifndef TPAR_JSONLINE_H
#define TPAR_JSONLINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nesting deeper than this is rejected (the scanner is iterative; the
 * limit protects the worker's converter, which is not). */
#define TPAR_JSONLINE_MAX_DEPTH 512

enum tpar_jsonline_type {
    TPAR_JSON_NONE = 0, /* absent */
    TPAR_JSON_OBJECT,
    TPAR_JSON_ARRAY,
    TPAR_JSON_STRING,
    TPAR_JSON_NUMBER,
    TPAR_JSON_TRUE,
    TPAR_JSON_FALSE,
    TPAR_JSON_NULL,
};

typedef struct tpar_jsonline_span {
    size_t off; /* first byte of the value's text in the buffer */
    size_t len; /* its length; 0 when absent */
    int type;   /* enum tpar_jsonline_type; TPAR_JSON_NONE when absent */
} tpar_jsonline_span;

typedef struct tpar_jsonline_error {
    size_t pos;      /* byte offset (0-based) where the problem was seen */
    const char *msg; /* static text, e.g. "expected ',' or '}'" */
    int syntax;      /* 1: not well-formed JSON; 0: valid JSON, wrong shape */
} tpar_jsonline_error;

/* Checks that s[0..n) is exactly one JSON value, with optional whitespace
 * around it, and sets *out to its span.  Returns 0, or TPAR_EBADJSON with
 * *err filled (out is then unspecified). */
int tpar_jsonline_value(const char *s, size_t n, tpar_jsonline_span *out,
                        tpar_jsonline_error *err);

/* Checks that s[0..n) is exactly one JSON object and, for each top-level
 * key equal to keys[i] (compared after unescaping), sets vals[i] to the
 * span of its value; keys that are absent get a zero span.  A wanted key
 * that appears twice is an error; other keys are only validated.  Returns
 * 0 or TPAR_EBADJSON with *err filled. */
int tpar_jsonline_object(const char *s, size_t n, const char *const keys[],
                         size_t nkeys, tpar_jsonline_span vals[],
                         tpar_jsonline_error *err);

/* A job line: {"id": scalar, "fn": "MOD:FN", "args": [...], "kwargs": {...},
 * "timeout": number, "meta": any}; only fn is required, and no other key
 * is allowed (a misspelt "kwrags" must not run the job without its
 * arguments). */
typedef struct tpar_jsonline_job {
    tpar_jsonline_span id;      /* string, number, true, false or null */
    tpar_jsonline_span fn;      /* string (with its quotes) */
    tpar_jsonline_span args;    /* array */
    tpar_jsonline_span kwargs;  /* object */
    tpar_jsonline_span timeout; /* number or null */
    tpar_jsonline_span meta;    /* any value: the user's, carried to the record */
} tpar_jsonline_job;

/* err->msg of a key a job line may not have (compare the pointer); err->pos
 * is the key's opening quote. */
extern const char tpar_jsonline_unknown_key[];

/* Scans a job line and checks the types of its keys.  Returns 0 or
 * TPAR_EBADJSON with *err filled: malformed JSON, not an object, no "fn",
 * a key of the wrong type, or an unknown key. */
int tpar_jsonline_job_parse(const char *s, size_t n, tpar_jsonline_job *out,
                            tpar_jsonline_error *err);

/* Decodes the JSON string literal s[0..n) (quotes included, already
 * validated) into UTF-8 at out, which must hold n bytes (decoding never
 * grows a string).  Returns the decoded length, or -1 on a lone
 * surrogate escape.  The result may contain NUL bytes (\u0000). */
long tpar_jsonline_unescape(const char *s, size_t n, char *out);

/* Room tpar_jsonline_escape may need for n bytes. */
#define TPAR_JSONLINE_ESCAPED_MAX(n) ((n) * 6 + 2)

/* Writes the bytes s[0..n) as a JSON string literal, quotes included, at
 * out, which must hold TPAR_JSONLINE_ESCAPED_MAX(n) bytes; returns the
 * length written.  The bytes should be UTF-8 (our messages, file names, a
 * job's output, a message cut mid-character): each byte that does not
 * start a valid sequence (no overlong forms, no surrogates, nothing past
 * U+10FFFF) becomes U+FFFD, so the literal is always valid JSON.  '"' and
 * '\\' are escaped, \n and \t in their short forms, other control
 * characters as \u00XX; the rest is copied as it is.  The CLI's records
 * and the worker's EXTRA frames both write strings with it. */
size_t tpar_jsonline_escape(const uint8_t *s, size_t n, char *out);

#ifdef __cplusplus
}
#endif
#endif
