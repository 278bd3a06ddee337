/* See interp.h. */
#include "interp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Prints NUL-terminated fields: magic, sys.executable, version, EXT_SUFFIX,
 * the shared libpython (LIBDIR/INSTSONAME, else <base_prefix>/lib/INSTSONAME
 * for a relocated build, else ""), platlib, purelib, prefix.  -S keeps the
 * environment's .pth files out (they cost ~50 ms here); before 3.11 a venv's
 * prefix is site's to set, so the venv is found from pyvenv.cfg here. */
static const char probe_code[] =
    "import sys,os,sysconfig as s\n"
    "g=s.get_config_var\n"
    "e=sys.executable\n"
    "so=g('INSTSONAME') or ''\n"
    "lib=''\n"
    "if '.so' in so:\n"
    " for d in (g('LIBDIR') or '',os.path.join(sys.base_prefix,'lib')):\n"
    "  if d and os.path.isfile(os.path.join(d,so)):lib=os.path.join(d,so);break\n"
    "b=os.path.dirname(e)\n"
    "v=[p for p in (b,os.path.dirname(b)) if os.path.isfile(os.path.join(p,'pyvenv.cfg'))]\n"
    "x={'base':v[0],'platbase':v[0]} if v else None\n"
    "f=['tpar-probe-1',e,sys.version.split()[0],g('EXT_SUFFIX') or '',lib,"
    "s.get_path('platlib',vars=x),s.get_path('purelib',vars=x),v[0] if v else sys.prefix]\n"
    "sys.stdout.write('\\0'.join(f)+'\\0')\n";

#define PROBE_MAGIC "tpar-probe-1"
#define CACHE_MAGIC "tpar-interp-2"
#define NFIELDS 8

static void say(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* snprintf for paths: 0, or -ENAMETOOLONG when it did not fit. */
static int pathf(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int pathf(char *out, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    return r < 0 || (size_t)r >= n ? -ENAMETOOLONG : 0;
}

const char *tpar__interp_default(char *buf, size_t n, const char *self_dir, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    const char *env = getenv("TPAR_PYTHON");
    if (env && *env)
        return *why = "TPAR_PYTHON", env;
    const char *venv = getenv("VIRTUAL_ENV");
    if (venv && *venv && pathf(buf, n, "%s/bin/python", venv) == 0 && access(buf, X_OK) == 0)
        return *why = "VIRTUAL_ENV", buf;
    if (self_dir && pathf(buf, n, "%s/python3", self_dir) == 0 && access(buf, X_OK) == 0)
        return *why = "the python3 beside tpar", buf;
    return *why = "python3 in PATH", "python3";
}

/* `name` as execvp would find it; an absolute path for a relative one. */
static int resolve_path(const char *name, char *out, size_t n)
{
    if (strchr(name, '/')) {
        if (name[0] == '/') {
            if (pathf(out, n, "%s", name) < 0)
                return -ENAMETOOLONG;
        } else {
            char cwd[TPAR_INTERP_PATH];
            if (!getcwd(cwd, sizeof cwd))
                return -errno;
            if (pathf(out, n, "%s/%s", cwd, name) < 0)
                return -ENAMETOOLONG;
        }
        return access(out, X_OK) == 0 ? 0 : -errno;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        int r = len == 0 ? pathf(out, n, "./%s", name)
                         : pathf(out, n, "%.*s/%s", (int)len, path, name);
        struct stat st;
        if (r == 0 && access(out, X_OK) == 0 && stat(out, &st) == 0 && S_ISREG(st.st_mode))
            return 0;
        path += len + (end ? 1 : 0);
    }
    return -ENOENT;
}

static int is_elf(const char *path)
{
    char m[4];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, m, 4);
    close(fd);
    return r == 4 && memcmp(m, "\177ELF", 4) == 0;
}

/* Identity of a file, "-" when absent. */
static void ident(const char *path, char *out, size_t n)
{
    struct stat st;
    if (stat(path, &st) < 0)
        pathf(out, n, "-");
    else
        pathf(out, n, "%ju.%ju.%jd.%jd.%ld", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino,
                 (intmax_t)st.st_size, (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

/* The cache key: the path, what it resolves to, and the venv files that
 * change what getpath makes of it. */
static void cache_key(const char *abs, char *key, size_t n)
{
    char dir[TPAR_INTERP_PATH], a[96], b[96], c[96], cfg[TPAR_INTERP_PATH + 16];
    pathf(dir, sizeof dir, "%s", abs);
    char *slash = strrchr(dir, '/');
    *slash = 0;
    ident(abs, a, sizeof a);
    pathf(cfg, sizeof cfg, "%s/pyvenv.cfg", dir);
    ident(cfg, b, sizeof b);
    slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    pathf(cfg, sizeof cfg, "%s/pyvenv.cfg", dir);
    ident(cfg, c, sizeof c);
    if (pathf(key, n, "%s\n%s\n%s\n%s", abs, a, b, c) < 0)
        key[0] = 0; /* never matches a cache file */
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3u;
    return h;
}

static int cache_dir(char *out, size_t n)
{
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && x[0] == '/')
        return pathf(out, n, "%s/tpar", x);
    const char *home = getenv("HOME");
    if (!home || home[0] != '/')
        return -ENOENT;
    return pathf(out, n, "%s/.cache/tpar", home);
}

/* Splits the probe's NUL-separated fields into ip.  0 or -EINVAL. */
static int parse_fields(const char *buf, size_t len, struct tpar_interp *ip)
{
    const char *f[NFIELDS];
    size_t nf = 0, i = 0;
    while (nf < NFIELDS && i < len) {
        f[nf++] = buf + i;
        const char *z = memchr(buf + i, 0, len - i);
        if (!z)
            return -EINVAL;
        i = (size_t)(z - buf) + 1;
    }
    if (nf != NFIELDS || strcmp(f[0], PROBE_MAGIC) != 0 || !f[1][0] || !f[3][0])
        return -EINVAL;
    struct { char *dst; size_t n; } to[] = {
        {ip->exe, sizeof ip->exe}, {ip->version, sizeof ip->version},
        {ip->ext_suffix, sizeof ip->ext_suffix}, {ip->libpython, sizeof ip->libpython},
        {ip->platlib, sizeof ip->platlib}, {ip->purelib, sizeof ip->purelib},
        {ip->prefix, sizeof ip->prefix}};
    for (size_t k = 0; k < NFIELDS - 1; k++)
        if (pathf(to[k].dst, to[k].n, "%s", f[k + 1]) < 0)
            return -EINVAL;
    return 0;
}

/* Reads at most cap bytes of fd; returns the count, or -errno. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* buf: scratch of size cap. */
static int cache_read(const char *file, const char *key, struct tpar_interp *ip, char *buf,
                      size_t cap)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t len = read_all(fd, buf, cap);
    close(fd);
    size_t hl = strlen(CACHE_MAGIC) + 1 + strlen(key) + 1;
    if (len < (ssize_t)hl || memcmp(buf, CACHE_MAGIC "\n", strlen(CACHE_MAGIC) + 1) != 0 ||
        memcmp(buf + strlen(CACHE_MAGIC) + 1, key, strlen(key)) != 0 || buf[hl - 1] != 0)
        return -ESTALE;
    if (parse_fields(buf + hl, (size_t)len - hl, ip) < 0)
        return -ESTALE;
    if (ip->libpython[0] && access(ip->libpython, R_OK) != 0)
        return -ESTALE; /* the shared library was removed */
    return 0;
}

/* Best effort: a cache that cannot be written only costs the next probe. */
static void cache_write(const char *file, const char *key, const char *out, size_t len)
{
    char dir[TPAR_INTERP_PATH], tmp[TPAR_INTERP_PATH + 32];
    pathf(dir, sizeof dir, "%s", file);
    *strrchr(dir, '/') = 0;
    char *p = dir;
    while ((p = strchr(p + 1, '/'))) { /* mkdir -p */
        *p = 0;
        mkdir(dir, 0755);
        *p = '/';
    }
    mkdir(dir, 0755);
    if (pathf(tmp, sizeof tmp, "%s.%ld.tmp", file, (long)getpid()) < 0)
        return;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    int ok = dprintf(fd, "%s\n%s", CACHE_MAGIC, key) > 0 && write(fd, "", 1) == 1 &&
             write(fd, out, len) == (ssize_t)len;
    close(fd);
    if (!ok || rename(tmp, file) < 0)
        unlink(tmp);
}

/* Seconds the probe may take: an "interpreter" that never answers must
 * not hang tpar (TPAR_PROBE_TIMEOUT: for the tests). */
static double probe_timeout(void)
{
    const char *v = getenv("TPAR_PROBE_TIMEOUT");
    double t = v && *v ? atof(v) : 0;
    return t > 0 ? t : 60;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* As read_all, until the writer closes or `deadline` (-ETIMEDOUT). */
static ssize_t read_all_until(int fd, char *buf, size_t cap, double deadline)
{
    size_t got = 0;
    while (got < cap) {
        double left = deadline - mono_now();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            continue;
        ssize_t k = read(fd, buf + got, cap - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

/* Runs the probe under abs.  0, or -errno with err set. */
static int run_probe(const char *abs, const char *shown, char *out, size_t cap, size_t *len,
                     char *err, size_t n)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return say(err, n, "pipe: %s", strerror(errno)), -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    char *argv[] = {(char *)abs, "-I", "-S", "-c", (char *)probe_code, NULL};
    pid_t pid;
    posix_spawnattr_t attr; /* a group of its own: a hung probe is killed whole */
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    int rc = posix_spawn(&pid, abs, &fa, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        say(err, n, "cannot run %s: %s", shown, strerror(rc));
        return -rc;
    }
    double limit = probe_timeout();
    ssize_t got = read_all_until(pfd[0], out, cap, mono_now() + limit);
    close(pfd[0]);
    if (got < 0 || (size_t)got == cap)
        kill(-pid, SIGKILL); /* hung, or says too much: it would not exit */
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (got == -ETIMEDOUT) {
        say(err, n, "%s did not answer tpar's sysconfig probe in %g s", shown, limit);
        return -ETIMEDOUT;
    }
    if (got < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || (size_t)got == cap ||
        (size_t)got < sizeof PROBE_MAGIC || memcmp(out, PROBE_MAGIC, sizeof PROBE_MAGIC) != 0) {
        say(err, n, "%s is not a Python 3 interpreter tpar can use (its sysconfig did not answer)",
            shown);
        return -ENOEXEC;
    }
    *len = (size_t)got;
    return 0;
}

/* The probe's scratch, on the heap: a worker's stack pages stay resident
 * for its whole life, malloc_trim gives these back. */
struct scratch {
    char abs[TPAR_INTERP_PATH], real[PATH_MAX], dir[TPAR_INTERP_PATH];
    char file[TPAR_INTERP_PATH + 32], key[3 * TPAR_INTERP_PATH], out[6 * TPAR_INTERP_PATH];
};

static int probe(const char *python, struct tpar_interp *ip, char *err, size_t n,
                 struct scratch *t)
{
    int r = resolve_path(python, t->abs, sizeof t->abs);
    if (r < 0) {
        say(err, n, "%s: %s", python,
            r == -ENOENT ? "no such interpreter" : strerror(-r));
        return r;
    }
    if (!realpath(t->abs, t->real)) {
        say(err, n, "%s: %s", python, strerror(errno));
        return -errno;
    }
    int cacheable = is_elf(t->real);
    cache_key(t->abs, t->key, sizeof t->key);
    int have_dir = cacheable && t->key[0] && cache_dir(t->dir, sizeof t->dir) == 0;
    if (have_dir) {
        if (pathf(t->file, sizeof t->file, "%s/python-%016jx", t->dir,
                  (uintmax_t)fnv1a(t->key)) < 0)
            have_dir = 0;
        else if (cache_read(t->file, t->key, ip, t->out, sizeof t->out) == 0)
            return 0;
    }
    size_t len = 0;
    r = run_probe(t->abs, python, t->out, sizeof t->out, &len, err, n);
    if (r < 0)
        return r;
    if (parse_fields(t->out, len, ip) < 0) {
        say(err, n, "%s: unexpected answer from its sysconfig", python);
        return -EINVAL;
    }
    if (have_dir)
        cache_write(t->file, t->key, t->out, len);
    return 0;
}

int tpar__interp_probe(const char *python, struct tpar_interp *ip, char *err, size_t n)
{
    struct scratch *t = malloc(sizeof *t);
    if (!t) {
        say(err, n, "out of memory");
        return -ENOMEM;
    }
    int r = probe(python, ip, err, n, t);
    free(t);
    return r;
}

#define CORE_TAG "\ntpar-worker-core "

int tpar__interp_core_version(const char *core, char *out, size_t n)
{
    /* Read in chunks: the tag is in .rodata, ahead of any debug info. */
    enum { CHUNK = 64 << 10, KEEP = 128 };
    int fd = open(core, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = malloc(CHUNK + KEEP + 1);
    size_t have = 0;
    int r = buf ? -EINVAL : -ENOMEM;
    while (buf) {
        ssize_t got = read_all(fd, buf + have, CHUNK);
        if (got <= 0)
            break;
        have += (size_t)got;
        buf[have] = 0;
        const char *t = memmem(buf, have, CORE_TAG, sizeof CORE_TAG - 1);
        const char *e = t ? memchr(t + 1, '\n', (size_t)(buf + have - t - 1)) : NULL;
        if (t && e) {
            t += sizeof CORE_TAG - 1;
            if ((size_t)(e - t) < n) {
                memcpy(out, t, (size_t)(e - t));
                out[e - t] = 0;
                r = 0;
            }
            break;
        }
        if (have > KEEP) { /* keep a tail that may hold the tag's start */
            memmove(buf, buf + have - KEEP, KEEP);
            have = KEEP;
        }
    }
    free(buf);
    close(fd);
    return r;
}

static int try_core(const char *dir, const char *sub, const struct tpar_interp *ip,
                    const char *version, char *out, size_t n)
{
    char v[64];
    if (!dir || !dir[0])
        return -ENOENT;
    if (pathf(out, n, "%s%s/_worker%s", dir, sub, ip->ext_suffix) < 0)
        return -ENAMETOOLONG;
    if (access(out, R_OK) != 0)
        return -ENOENT;
    int r = tpar__interp_core_version(out, v, sizeof v);
    if (r == -ENOMEM) /* not "no core": the caller says out of memory */
        return r;
    if (r < 0 || strcmp(v, version) != 0)
        return -ENOENT;
    return 0;
}

int tpar__interp_find_core(const struct tpar_interp *ip, const char *launcher_dir,
                           const char *version, char *out, size_t n)
{
    static const char *const beside[] = {"", "/../python/tpar", "/../lib/tpar",
                                         "/../lib64/tpar"};
    int r;
    for (size_t i = 0; i < sizeof beside / sizeof *beside; i++)
        if ((r = try_core(launcher_dir, beside[i], ip, version, out, n)) == 0 || r == -ENOMEM)
            return r;
    /* The launcher of a venv or prefix tpar is installed into: that
     * install's core serves any interpreter of the same ABI. */
    int major = 0, minor = 0;
    char sub[64];
    if (sscanf(ip->version, "%d.%d", &major, &minor) == 2 &&
        pathf(sub, sizeof sub, "/../lib/python%d.%d/site-packages/tpar", major, minor) == 0 &&
        ((r = try_core(launcher_dir, sub, ip, version, out, n)) == 0 || r == -ENOMEM))
        return r;
    if ((r = try_core(ip->platlib, "/tpar", ip, version, out, n)) == 0 || r == -ENOMEM ||
        (r = try_core(ip->purelib, "/tpar", ip, version, out, n)) == 0 || r == -ENOMEM)
        return r;
    return -ENOENT;
}
