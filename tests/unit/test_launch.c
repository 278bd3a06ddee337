/* Launchers: the command split into words with a shell's quoting and no
 * shell, {addr} replaced inside words; the launcher started with the
 * secret in its environment and on its stdin, its stdout on our stderr. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "tpar.h"

/* Splits cmd with addr "h:1"; checks the words (a NULL-terminated list). */
static void expect_words(const char *cmd, const char *const *want)
{
    char **v = NULL;
    const char *err = NULL;
    int rc = tpar_launcher_argv(cmd, "h:1", &v, &err);
    CHECK_EQ(rc, 0);
    if (rc)
        return;
    int i = 0;
    for (; want[i]; i++) {
        CHECK(v[i] != NULL);
        if (!v[i])
            break;
        if (strcmp(v[i], want[i]) != 0) {
            fprintf(stderr, "word %d: [%s], want [%s]\n", i, v[i], want[i]);
            check_failures++;
        }
    }
    CHECK(v[i] == NULL);
    free(v);
}

static void test_words(void)
{
    expect_words("srun tpar-worker --connect {addr}",
                 (const char *[]){"srun", "tpar-worker", "--connect", "h:1", NULL});
    expect_words("  ssh  node7\t'tpar-worker --connect {addr}' ",
                 (const char *[]){"ssh", "node7", "tpar-worker --connect h:1", NULL});
    expect_words("a\" b \\\" \\$x \\n\"c {addr}{addr}",
                 (const char *[]){"a b \" $x \\nc", "h:1h:1", NULL});
    expect_words("x\\ y '' {addr}", (const char *[]){"x y", "", "h:1", NULL});
    expect_words("echo $HOME;rm {addr}", (const char *[]){"echo", "$HOME;rm", "h:1", NULL});
}

static void expect_error(const char *cmd, const char *msg_part)
{
    char **v = (char **)&v;
    const char *err = NULL;
    CHECK_EQ(tpar_launcher_argv(cmd, "h:1", &v, &err), -EINVAL);
    CHECK(v == (char **)&v);
    CHECK(err && strstr(err, msg_part));
}

static void test_bad_commands(void)
{
    expect_error("srun tpar-worker", "{addr}");
    expect_error("ssh 'x {addr}", "single quote");
    expect_error("ssh \"x {addr}", "double quote");
    expect_error("ssh {addr} \\", "backslash");
    expect_error("{addr", "{addr}");
}

/* The launcher sees the secret on stdin and in TPAR_SECRET; what it
 * writes on stdout lands on our stderr. */
static void test_spawn(void)
{
    uint8_t key[TPAR_SECRET_LEN];
    char hex[TPAR_SECRET_HEX + 1];
    CHECK_EQ(tpar_secret_new(key, hex), 0);
    char **v;
    const char *err;
    CHECK_EQ(tpar_launcher_argv("sh -c 'read s; echo \"out:$0\"; "
                                "[ \"$s\" = \"$TPAR_SECRET\" ] && [ ${#s} = 64 ] && exit 7' {addr}",
                                "node:9", &v, &err), 0);
    char path[] = "/tmp/tpar-test-launch-XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    tpar_proc p;
    int rc = tpar_launcher_spawn(&p, v, hex);
    dup2(saved, STDERR_FILENO);
    close(saved);
    CHECK_EQ(rc, 0);
    CHECK_EQ(p.to_fd, -1);
    CHECK_EQ(tpar_proc_reap(&p, 1), 0);
    CHECK(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 7);
    char buf[64] = {0};
    CHECK(pread(fd, buf, sizeof buf - 1, 0) > 0);
    CHECK(strcmp(buf, "out:node:9\n") == 0);
    close(fd);
    unlink(path);
    free(v);
    char *missing[] = {"no-such-launcher-tpar", NULL};
    CHECK_EQ(tpar_launcher_spawn(&p, missing, hex), -ENOENT);
}

int main(void)
{
    RUN(test_words);
    RUN(test_bad_commands);
    RUN(test_spawn);
    return CHECK_DONE();
}
