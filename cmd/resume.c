/* --resume: the set of ids that already have an ok record in an earlier
 * output file.  Ids are compared as their raw JSON text, which tpar copies
 * unchanged from the input line into the record. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jsonline.h"

struct idset {
    char **slots;   /* open addressing; each entry: u32 length, then text */
    size_t cap;     /* power of two */
    size_t n;
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int entry_is(const char *e, const char *s, size_t n)
{
    uint32_t len;
    memcpy(&len, e, sizeof len);
    return len == n && memcmp(e + sizeof len, s, n) == 0;
}

int idset_has(const struct idset *s, const char *id, size_t n)
{
    if (!s || !s->n)
        return 0;
    for (size_t i = hash(id, n) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slots[i])
            return 0;
        if (entry_is(s->slots[i], id, n))
            return 1;
    }
}

static void place(struct idset *s, char *e)
{
    uint32_t len;
    memcpy(&len, e, sizeof len);
    size_t i = hash(e + sizeof len, len) & (s->cap - 1);
    while (s->slots[i])
        i = (i + 1) & (s->cap - 1);
    s->slots[i] = e;
}

static int grow(struct idset *s)
{
    struct idset bigger = {calloc(s->cap * 2, sizeof(char *)), s->cap * 2, s->n};
    if (!bigger.slots)
        return -ENOMEM;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i])
            place(&bigger, s->slots[i]);
    free(s->slots);
    *s = bigger;
    return 0;
}

static int add(struct idset *s, const char *id, size_t n)
{
    if (idset_has(s, id, n))
        return 0;
    if ((s->n + 1) * 2 > s->cap && grow(s) < 0)
        return -ENOMEM;
    uint32_t len = (uint32_t)n;
    char *e = malloc(sizeof len + n);
    if (!e)
        return -ENOMEM;
    memcpy(e, &len, sizeof len);
    memcpy(e + sizeof len, id, n);
    place(s, e);
    s->n++;
    return 0;
}

static int span_eq(const char *line, tpar_jsonline_span sp, const char *lit)
{
    return sp.type == TPAR_JSON_STRING && sp.len == strlen(lit) &&
           memcmp(line + sp.off, lit, sp.len) == 0;
}

/* Adds the id of one line when it is an ok result; other lines (a partial
 * last line of a killed run, summaries, failures) are ignored. */
static int add_line(struct idset *s, const char *line, size_t n)
{
    static const char *const keys[] = {"type", "status", "id"};
    tpar_jsonline_span v[3];
    tpar_jsonline_error err;
    if (tpar_jsonline_object(line, n, keys, 3, v, &err) < 0)
        return 0;
    if (!span_eq(line, v[0], "\"result\"") || !span_eq(line, v[1], "\"ok\"") ||
        v[2].type == TPAR_JSON_NONE)
        return 0;
    return add(s, line + v[2].off, v[2].len);
}

/* A missing file is an empty set: the first run of a resumable job. */
struct idset *idset_load(const char *path, int *err)
{
    struct idset *s = calloc(1, sizeof *s);
    if (!s || !(s->slots = calloc(s->cap = 1024, sizeof(char *)))) {
        free(s);
        *err = -ENOMEM;
        return NULL;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT)
            return s;
        *err = -errno;
        idset_free(s);
        return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    *err = 0;
    while ((n = getline(&line, &cap, f)) >= 0 && !*err)
        *err = add_line(s, line, (size_t)n);
    if (!*err && ferror(f))
        *err = -EIO;
    free(line);
    fclose(f);
    if (*err) {
        idset_free(s);
        return NULL;
    }
    return s;
}

size_t idset_size(const struct idset *s)
{
    return s ? s->n : 0;
}

void idset_free(struct idset *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->slots[i]);
    free(s->slots);
    free(s);
}
