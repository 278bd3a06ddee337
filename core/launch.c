/* Launchers of remote workers: the command line split into words, and the
 * launcher started with the run's secret (core/tpar.h, "remote workers"). */
#include "internal.h"
#include "tpar.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define ADDR_TOKEN "{addr}"

/* Splits cmd into words, written NUL-terminated one after another into out
 * (room for strlen(cmd) + 1 bytes is enough: quoting only shrinks).
 * Returns the number of words, or -1 with *errmsg set. */
static int split(const char *cmd, char *out, const char **errmsg)
{
    int words = 0;
    const char *p = cmd;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            return words;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') {
            if (*p == '\'') {
                const char *end = strchr(p + 1, '\'');
                if (!end) {
                    *errmsg = "unbalanced single quote";
                    return -1;
                }
                memcpy(out, p + 1, (size_t)(end - p - 1));
                out += end - p - 1;
                p = end + 1;
            } else if (*p == '"') {
                for (p++; *p != '"'; p++) {
                    if (!*p) {
                        *errmsg = "unbalanced double quote";
                        return -1;
                    }
                    if (*p == '\\' && strchr("\"\\$`", p[1]) && p[1])
                        p++;
                    *out++ = *p;
                }
                p++;
            } else if (*p == '\\') {
                if (!p[1]) {
                    *errmsg = "a backslash at the end";
                    return -1;
                }
                *out++ = p[1];
                p += 2;
            } else {
                *out++ = *p++;
            }
        }
        *out++ = '\0';
        words++;
    }
}

static size_t count_tokens(const char *s)
{
    size_t n = 0;
    for (const char *t = s; (t = strstr(t, ADDR_TOKEN)); t += sizeof ADDR_TOKEN - 1)
        n++;
    return n;
}

int tpar_launcher_argv(const char *cmd, const char *addr, char ***argv,
                       const char **errmsg)
{
    size_t len = strlen(cmd), alen = strlen(addr);
    size_t tokens = count_tokens(cmd);
    *errmsg = NULL;
    if (!tokens) {
        *errmsg = "the command must contain {addr}, where the worker is to connect";
        return -EINVAL;
    }
    char *words = malloc(len + 1);
    if (!words)
        return -ENOMEM;
    int n = split(cmd, words, errmsg);
    if (n <= 0) {
        if (!*errmsg)
            *errmsg = "an empty command";
        free(words);
        return -EINVAL;
    }
    /* One block: the pointers, then the words with {addr} replaced. */
    size_t room = (size_t)(n + 1) * sizeof(char *) + len + 1 + tokens * alen;
    char **v = malloc(room);
    if (!v) {
        free(words);
        return -ENOMEM;
    }
    char *dst = (char *)(v + n + 1);
    const char *src = words;
    for (int i = 0; i < n; i++) {
        v[i] = dst;
        for (const char *t; (t = strstr(src, ADDR_TOKEN));) {
            memcpy(dst, src, (size_t)(t - src));
            dst += t - src;
            memcpy(dst, addr, alen);
            dst += alen;
            src = t + sizeof ADDR_TOKEN - 1;
        }
        size_t rest = strlen(src) + 1;
        memcpy(dst, src, rest);
        dst += rest;
        src += rest;
    }
    v[n] = NULL;
    free(words);
    *argv = v;
    return 0;
}

/* environ plus NAME=hex (any earlier NAME dropped): one allocation. */
static char **env_with_secret(const char hex[TPAR_SECRET_HEX + 1], char *var)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = malloc((n + 2) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0, nl = strlen(TPAR_SECRET_ENV);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], TPAR_SECRET_ENV, nl) != 0 || environ[i][nl] != '=')
            env[k++] = environ[i];
    memcpy(var, TPAR_SECRET_ENV "=", nl + 1);
    memcpy(var + nl + 1, hex, TPAR_SECRET_HEX + 1);
    env[k++] = var;
    env[k] = NULL;
    return env;
}

int tpar_launcher_spawn(tpar_proc *p, char *const argv[],
                        const char hex[TPAR_SECRET_HEX + 1])
{
    char var[sizeof TPAR_SECRET_ENV + TPAR_SECRET_HEX + 1];
    char line[TPAR_SECRET_HEX + 1];
    int in[2] = {-1, -1}, rc;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    char **env = env_with_secret(hex, var);
    if (!env)
        return -ENOMEM;
    if ((rc = tpar__pipe(in)) < 0) {
        free(env);
        return rc;
    }
    /* Written before the launcher starts (65 bytes fit in any pipe), so
     * that a launcher quick to exit cannot make this write raise SIGPIPE. */
    memcpy(line, hex, TPAR_SECRET_HEX);
    line[TPAR_SECRET_HEX] = '\n';
    ssize_t w = write(in[1], line, sizeof line);
    explicit_bzero(line, sizeof line);
    if (w != (ssize_t)sizeof line) {
        rc = w < 0 ? -errno : -EIO;
        goto out_pipe;
    }
    if (in[0] <= STDERR_FILENO) { /* a dup2 onto itself would keep O_CLOEXEC */
        int fd = fcntl(in[0], F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
        if (fd < 0) {
            rc = -errno;
            goto out_pipe;
        }
        close(in[0]);
        in[0] = fd;
    }
    if ((rc = tpar__spawn_attrs(&attr)) < 0)
        goto out_pipe;
    if ((rc = -posix_spawn_file_actions_init(&fa)) < 0)
        goto out_attr;
    if ((rc = -posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO)) < 0 ||
        (rc = -posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO)) < 0 ||
        (rc = -posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1)) < 0)
        goto out_fa;
    pid_t pid;
    rc = -posix_spawnp(&pid, argv[0], &fa, &attr, argv, env);
    if (rc == 0) {
        memset(p, 0, sizeof *p);
        p->pid = pid;
        p->to_fd = p->from_fd = -1;
        p->down = p->up = (tpar_lane)TPAR_LANE_NONE;
    }
out_fa:
    posix_spawn_file_actions_destroy(&fa);
out_attr:
    posix_spawnattr_destroy(&attr);
out_pipe:
    close(in[0]);
    close(in[1]);
    explicit_bzero(var, sizeof var);
    free(env);
    return rc;
}
