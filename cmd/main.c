/* tpar: run Python function calls from JSON lines on a cache of worker
 * processes.  See man/tpar.1 and docs/cli.md. */
#include <stdlib.h>

#include "cli.h"

int main(int argc, char **argv)
{
    struct opts o;
    opts_parse(&o, argc, argv);
    if (!o.dry_run) /* no worker starts */
        python_choose(&o);
    int rc = stream_main(&o);
    free(o.paths);
    free(o.args_buf);
    return rc;
}
