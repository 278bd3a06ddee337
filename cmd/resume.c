/* --resume and --resume-failed: the set of ids that already have a final
 * record in an earlier output file (--resume: ok or failed; --resume-failed:
 * ok).  Ids are compared as their raw JSON text, which tpar copies
 * unchanged from the input line into the record.  A file that holds no
 * records (a joblog, the job input itself, anything else) is refused, so a
 * mistyped option never silently runs everything again. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* What one line of the file is. */
enum { L_OTHER, L_RESULT_SKIP, L_RESULT_RERUN, L_SUMMARY, L_ATTEMPT, L_JOB };

/* Classifies one line; for a result whose id is to be skipped, *id is its
 * span.  A cancelled job never ran to its end and bad input has no id of
 * its own: both run again. */
static int classify(const char *line, size_t n, int failed_too, tpar_jsonline_span *id)
{
    static const char *const keys[] = {"type", "status", "id", "fn"};
    tpar_jsonline_span v[4];
    tpar_jsonline_error err;
    if (tpar_jsonline_object(line, n, keys, 4, v, &err) < 0)
        return L_OTHER;
    if (v[0].type == TPAR_JSON_NONE)
        return v[3].type == TPAR_JSON_STRING ? L_JOB : L_OTHER;
    if (span_eq(line, v[0], "\"summary\""))
        return L_SUMMARY;
    if (span_eq(line, v[0], "\"attempt\""))
        return L_ATTEMPT;
    if (!span_eq(line, v[0], "\"result\"") || v[2].type == TPAR_JSON_NONE)
        return L_OTHER;
    *id = v[2];
    if (span_eq(line, v[1], "\"ok\""))
        return L_RESULT_SKIP;
    if (failed_too && (span_eq(line, v[1], "\"error\"") || span_eq(line, v[1], "\"timeout\"") ||
                       span_eq(line, v[1], "\"broken\"")))
        return L_RESULT_SKIP;
    return L_RESULT_RERUN;
}

static struct idset *idset_new(void)
{
    struct idset *s = calloc(1, sizeof *s);
    if (!s || !(s->slots = calloc(s->cap = 1024, sizeof(char *)))) {
        free(s);
        return NULL;
    }
    return s;
}

static int blank_line(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

/* A missing file is an empty set (the first run of a resumable job) when
 * missing_ok; else an error. */
struct idset *idset_load(const char *path, const char *opt, int failed_too, int missing_ok,
                         int *err)
{
    struct idset *s = idset_new();
    if (!s) {
        *err = -ENOMEM;
        return NULL;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT && missing_ok)
            return s;
        *err = -errno;
        idset_free(s);
        return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lines = 0, records = 0, attempts = 0, jobs = 0;
    *err = 0;
    while ((n = getline(&line, &cap, f)) >= 0 && !*err) {
        tpar_jsonline_span id;
        if (blank_line(line, (size_t)n))
            continue;
        lines++;
        switch (classify(line, (size_t)n, failed_too, &id)) {
        case L_RESULT_SKIP:
            *err = add(s, line + id.off, id.len);
            /* fall through */
        case L_RESULT_RERUN:
        case L_SUMMARY:
            records++;
            break;
        case L_ATTEMPT:
            attempts++;
            break;
        case L_JOB:
            jobs++;
            break;
        }
    }
    if (!*err && ferror(f))
        *err = -EIO;
    free(line);
    fclose(f);
    if (!*err && attempts)
        cli_die(EXIT_USAGE, "%s %s is a joblog (attempt lines); %s takes the output "
                "(-o or stdout) of the earlier run", opt, path, opt);
    if (!*err && jobs && !records)
        cli_die(EXIT_USAGE, "%s %s holds job lines, not result records: %s takes the "
                "output (-o or stdout) of the earlier run, and the jobs are the input "
                "(unlike GNU parallel's --resume, which reads --joblog)", opt, path, opt);
    if (!*err && lines && !records)
        cli_die(EXIT_USAGE, "%s %s holds no tpar records (%lu line%s); %s takes the "
                "output (-o or stdout) of the earlier run", opt, path, lines,
                lines == 1 ? "" : "s", opt);
    if (*err) {
        idset_free(s);
        return NULL;
    }
    return s;
}

/* --resume R -o R: R is rewritten, through a file beside it and a rename,
 * to hold only the first final record of each id in s (those the run
 * skips); records of jobs that run again, summaries and a partial last
 * line are dropped.  Then the records this run appends make one final
 * record per id.  0 or -errno. */
int idset_compact(const struct idset *s, const char *path, int failed_too)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    struct idset *seen = idset_new();
    if (!tmp || !seen) {
        free(tmp);
        idset_free(seen);
        fclose(f);
        return -ENOMEM;
    }
    snprintf(tmp, plen + 16, "%s.tpar-XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    FILE *o = fd >= 0 ? fdopen(fd, "we") : NULL;
    int rc = 0;
    if (!o)
        rc = -errno;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        tpar_jsonline_span id;
        if (n == 0 || line[n - 1] != '\n') /* cut by a killed run */
            continue;
        if (classify(line, (size_t)n, failed_too, &id) != L_RESULT_SKIP ||
            !idset_has(s, line + id.off, id.len) || idset_has(seen, line + id.off, id.len))
            continue;
        if ((rc = add(seen, line + id.off, id.len)) < 0)
            break;
        if (fwrite(line, 1, (size_t)n, o) != (size_t)n)
            rc = -errno;
    }
    if (!rc && ferror(f))
        rc = -EIO;
    free(line);
    fclose(f);
    idset_free(seen);
    if (o) {
        if (fflush(o) != 0 && !rc)
            rc = -errno;
        struct stat st;
        if (!rc && stat(path, &st) == 0)
            fchmod(fileno(o), st.st_mode & 07777);
        fclose(o);
    }
    if (!rc && rename(tmp, path) < 0)
        rc = -errno;
    if (rc && fd >= 0)
        unlink(tmp);
    free(tmp);
    return rc;
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
