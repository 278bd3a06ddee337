/* Finding the Python interpreter a worker serves, and what the worker
 * needs to embed it: its shared libpython and a worker core built for its
 * ABI.  Nothing here is linked to libpython, and nothing names a path of
 * the machine tpar was built on: every path is found at run time.
 *
 * An interpreter is described by running it once (`PY -I -S -c ...`,
 * ~13 ms) and cached in ${XDG_CACHE_HOME:-~/.cache}/tpar/, keyed by the
 * path given and the identity (device, inode, size, mtime) of the file it
 * resolves to and of the venv's pyvenv.cfg.  An interpreter that is a
 * script (a pyenv shim) is run every time: what it execs depends on more
 * than its own file. */
#ifndef TPAR_INTERP_H
#define TPAR_INTERP_H

#include <limits.h>
#include <stddef.h>

#define TPAR_INTERP_PATH 4096

struct tpar_interp {
    char exe[TPAR_INTERP_PATH];       /* sys.executable (a venv's bin/python) */
    char version[32];                 /* "3.11.7" */
    char ext_suffix[64];              /* ".cpython-311-x86_64-linux-gnu.so" */
    char libpython[TPAR_INTERP_PATH]; /* its shared libpython; "" when none */
    char platlib[TPAR_INTERP_PATH];   /* site-packages, of the venv if one */
    char purelib[TPAR_INTERP_PATH];
    char prefix[TPAR_INTERP_PATH];    /* sys.prefix */
};

/* The interpreter to use when none is named: $TPAR_PYTHON, else the active
 * venv's ($VIRTUAL_ENV/bin/python), else the python3 in self_dir (the bin
 * directory tpar is installed in, as in a venv; may be NULL), else
 * "python3" (looked up in PATH).  Returns a string that lives as long as
 * the environment, or buf; *why (if why) says which rule chose it. */
const char *tpar__interp_default(char *buf, size_t n, const char *self_dir, const char **why);

/* Describes the interpreter `python` (a path, or a bare name looked up in
 * PATH), from the cache when it is still valid.  Returns 0, or -errno
 * with a one-line reason in err (size n). */
int tpar__interp_probe(const char *python, struct tpar_interp *ip, char *err, size_t n);

/* Finds the worker core (tpar/_worker<EXT_SUFFIX>) for ip whose version
 * is `version`: beside the launcher (launcher_dir, the build tree's
 * pyworker/), the build tree's python/tpar/, <prefix>/lib/tpar/ (a source
 * install's extra cores), the site-packages of the venv or prefix the
 * launcher is installed in (a wheel's core serves every build of its
 * Python version), then the interpreter's own site-packages (tpar
 * installed into it).  launcher_dir may be NULL.  Returns 0 with the
 * path in out, -ENOENT, or -ENOMEM (reading a candidate core). */
int tpar__interp_find_core(const struct tpar_interp *ip, const char *launcher_dir,
                           const char *version, char *out, size_t n);

/* The version string a core exports as tpar_worker_core_version: a core
 * is used only by a launcher of the same version (the protocol may have
 * changed between them). */
#define TPAR_CORE_VERSION_SYM "tpar_worker_core_version"

/* Reads the version a core file carries without loading it (it is a
 * string in its .rodata: "tpar-worker-core VERSION").  0 or -errno. */
int tpar__interp_core_version(const char *core, char *out, size_t n);

#endif
