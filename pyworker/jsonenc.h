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

/* CPython (3.11; 3.10.7 on) refuses int <-> decimal text conversions of
 * more than sys.get_int_max_str_digits() digits (4300 by default), a guard
 * against quadratic time on untrusted text.  Job values travel exact, so
 * the worker's own conversions lift the limit for the one conversion that
 * hit it and put it back; a job's own code keeps the limit python3 would
 * give it.  lift: the old limit (> 0), or -1 when there is none to lift
 * (then nothing changed).  restore(old) puts it back, keeping any pending
 * exception; -1 is a no-op. */
long tpar__int_digits_lift(void);
void tpar__int_digits_restore(long old);

#endif
