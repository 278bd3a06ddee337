/* Python objects to JSON text, in C: the CLI's hot path for results. */
#ifndef TPAR_JSONENC_H
#define TPAR_JSONENC_H

#include <Python.h>

#include "tpar.h"

/* Appends the JSON text of obj to b.  Returns 0, or -1 with a Python
 * exception set (TypeError for a type JSON cannot carry, ValueError for
 * NaN/Infinity, RecursionError, MemoryError); b may then hold a partial
 * value, which the caller truncates. */
int tpar__json_encode(tpar_buf *b, PyObject *obj);

#endif
