/* tpar: run Python function calls from JSON lines on a cache of worker
 * processes.  See man/tpar.1 and docs/cli.md. */
#include "cli.h"

int main(int argc, char **argv)
{
    struct opts o;
    opts_parse(&o, argc, argv);
    return stream_main(&o);
}
