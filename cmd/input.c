/* Reading the job stream: FILEs in order ("-" or none: stdin), split into
 * lines, each line parsed into a job.  Memory stays bounded: lines are
 * parsed only while the engine wants more jobs, and a chunk is read only
 * when no whole line is left.  Pipes and ttys are waited on with uv_poll
 * (their fd stays blocking: it may be shared with the shell); regular files
 * are read directly. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "jsonline.h"

#define CHUNK (256 * 1024)
#define PENDING_MAX 4096 /* parsed jobs waiting for a worker, at most */

struct input IN;

static void on_input(uv_poll_t *h, int status, int events);

static const char *file_name(int i)
{
    return IN.o->nfiles ? IN.o->files[i] : "-";
}

static int stdin_fd = -1; /* tpar's stdin, moved off fd 0 */

/* Workers inherit fd 0: give them /dev/null, so a job that reads its stdin
 * cannot steal lines of the job stream (or wait on the terminal). */
void input_hide_stdin(void)
{
    stdin_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0 && null != 0) {
        dup2(null, 0); /* dup2 clears O_CLOEXEC on fd 0 */
        close(null);
    }
}

int input_init(const struct opts *o, uv_loop_t *loop)
{
    IN.o = o;
    IN.loop = loop;
    IN.fd = -1;
    IN.idx = -1;
    for (int i = 0; i < IN.o->nfiles; i++) {
        const char *f = IN.o->files[i];
        if (!strcmp(f, "-"))
            continue;
        int fd = open(f, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            cli_die(EXIT_USAGE, "cannot read %s: %s", f, strerror(errno));
        close(fd);
    }
    return 0;
}

int input_wants_more(void)
{
    if (J.pending.n >= PENDING_MAX || RUN.stop != STOP_NONE)
        return 0;
    /* Memory is bounded by bytes too: the jobs read and not yet recorded
     * with the copies in the frames not yet written to their workers, and
     * the records held for -k (--max-buffer; one job always gets in),
     * and the records the output has not taken yet. */
    size_t held = J.bytes + R.held + pool_out_bytes(); /* frames: copies of jobs */
    if (held >= IN.o->max_buffer && held > 0)
        return 0;
    if (output_backed_up())
        return 0;
    return record_window_has_room(IN.last_seq);
}

/* The poll handle is reused for the next FILE, so that one is opened only
 * once the handle has finished closing (uv_poll_init on a closing handle
 * trips libuv). */
static void on_poll_closed(uv_handle_t *h)
{
    IN.closing = 0;
    input_pump();
}

static void close_current(void)
{
    if (IN.poll_ready) {
        uv_close((uv_handle_t *)&IN.poll, on_poll_closed);
        IN.poll_ready = IN.polling = 0;
        IN.closing = 1;
    }
    if (IN.fd >= 0 && IN.fd != stdin_fd)
        close(IN.fd);
    IN.fd = -1;
}

/* Opens the next FILE; 0, or 1 when there is none left. */
static int open_next(void)
{
    int n = IN.o->nfiles ? IN.o->nfiles : 1;
    if (++IN.idx >= n)
        return 1;
    IN.name = file_name(IN.idx);
    IN.lineno = 0;
    IN.eof = 0;
    IN.skipping = 0;
    IN.scanned = 0;
    if (!strcmp(IN.name, "-")) {
        if ((IN.fd = stdin_fd) < 0) {
            run_fatal("cannot read stdin: %s", strerror(EBADF));
            return 1;
        }
    } else if ((IN.fd = open(IN.name, O_RDONLY | O_CLOEXEC)) < 0) {
        run_fatal("cannot read %s: %s", IN.name, strerror(errno));
        return 1;
    }
    struct stat st;
    IN.pollable = 0;
    if (fstat(IN.fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* uv_poll_init makes the fd non-blocking; put its flags back. */
        int fl = fcntl(IN.fd, F_GETFL);
        if (uv_poll_init(IN.loop, &IN.poll, IN.fd) == 0) {
            IN.pollable = IN.poll_ready = 1;
            IN.poll.data = NULL;
        }
        if (fl >= 0)
            fcntl(IN.fd, F_SETFL, fl);
    }
    return 0;
}

/* Reads one chunk; returns bytes read, 0 at EOF, -EAGAIN, or fatal. */
static ssize_t read_chunk(void)
{
    struct input *in = &IN;
    if (in->start > 0) {
        memmove(in->buf, in->buf + in->start, in->len - in->start);
        in->len -= in->start;
        in->start = 0;
    }
    if (in->cap - in->len < CHUNK) {
        size_t cap = in->cap ? in->cap * 2 : 2 * CHUNK;
        while (cap - in->len < CHUNK)
            cap *= 2;
        in->buf = xrealloc(in->buf, cap);
        in->cap = cap;
    }
    for (;;) {
        ssize_t n = read(in->fd, in->buf + in->len, CHUNK);
        if (n >= 0) {
            in->len += (size_t)n;
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return -EAGAIN;
        run_fatal("cannot read %s: %s", in->name, strerror(errno));
        return -errno;
    }
}

/* After a long line the buffer may be huge: give the memory back. */
static void maybe_shrink(void)
{
    struct input *in = &IN;
    if (in->cap <= 4 * CHUNK || in->len - in->start > CHUNK)
        return;
    memmove(in->buf, in->buf + in->start, in->len - in->start);
    in->len -= in->start;
    in->start = 0;
    char *b = realloc(in->buf, 2 * CHUNK);
    if (b) { /* else the larger buffer stays: nothing lost */
        in->buf = b;
        in->cap = 2 * CHUNK;
    }
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

static void too_long(void)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s%sline %llu: longer than --max-line (%zu bytes)",
             strcmp(IN.name, "-") ? IN.name : "", strcmp(IN.name, "-") ? ", " : "",
             (unsigned long long)IN.lineno, IN.o->max_line);
    record_bad_input(++IN.last_seq, IN.lineno, IN.name, msg);
}

static void line(const char *s, size_t n)
{
    IN.lineno++;
    if (IN.lineno == 1 && !IN.o->null && n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) { /* BOM */
        s += 3;
        n -= 3;
    }
    if (n > IN.o->max_line) {
        too_long();
        return;
    }
    /* --raw keeps a line of spaces (it may be a name); -0 has no BOM. */
    if (IN.o->raw ? n == 0 : blank(s, n))
        return;
    job_from_line(s, n, ++IN.last_seq, IN.lineno, IN.name);
}

/* Takes one line (or an over-long prefix) out of the buffer; 0 when no
 * whole line is there. */
static int take_line(void)
{
    struct input *in = &IN;
    char *s = in->buf + in->start;
    size_t avail = in->len - in->start;
    /* Scan only what came in since the last look: a long line arrives in
     * many chunks (64 KiB each from a pipe). */
    char *nl = avail > in->scanned
                   ? memchr(s + in->scanned, IN.o->null ? 0 : '\n', avail - in->scanned)
                   : NULL;
    in->scanned = avail;
    if (nl) {
        size_t n = (size_t)(nl - s);
        in->start += n + 1;
        in->scanned = 0;
        if (in->skipping)
            in->skipping = 0;
        else
            line(s, n);
        return 1;
    }
    if (avail > IN.o->max_line || (in->skipping && avail)) {
        if (!in->skipping) {
            in->lineno++;
            too_long();
            in->skipping = 1;
        }
        in->start = in->len;
        in->scanned = 0;
        maybe_shrink();
        return 1;
    }
    if (in->eof && avail) {
        in->start = in->len;
        in->scanned = 0;
        if (!in->skipping)
            line(s, avail);
        in->skipping = 0;
        return 1;
    }
    return 0;
}

void input_stop(void)
{
    close_current();
    IN.done = 1;
}

void input_pump(void)
{
    struct input *in = &IN;
    while (!in->done && input_wants_more()) {
        if (in->fd < 0 && in->closing)
            return; /* on_poll_closed goes on */
        if (in->fd < 0 && open_next()) {
            input_stop();
            break;
        }
        if (take_line())
            continue;
        if (in->eof) {
            close_current();
            continue;
        }
        if (in->pollable) {
            if (!in->polling)
                uv_poll_start(&in->poll, UV_READABLE, on_input);
            in->polling = 1;
            return;
        }
        ssize_t r = read_chunk();
        if (r == 0)
            in->eof = 1;
        else if (r < 0)
            return;
    }
    if (in->polling) {
        uv_poll_stop(&in->poll);
        in->polling = 0;
    }
}

static void on_input(uv_poll_t *h, int status, int events)
{
    ssize_t r = read_chunk();
    if (r == 0 || (status < 0 && r != -EAGAIN))
        IN.eof = 1;
    input_pump();
}
