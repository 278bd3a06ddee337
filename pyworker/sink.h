/* A file-like object that pickle.dump() writes a frame payload into: into
 * a buffer while the payload is small, into a lane (core/tpar.h) once it
 * grows past TPAR_LANE_MIN, so a large pickle is written once, straight
 * into shared memory, instead of being built as a bytes object and copied
 * again.  Shared by the worker (results) and the Trio extension (jobs). */
#ifndef TPAR_SINK_H
#define TPAR_SINK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tpar.h"

/* For PyType_FromSpec, once per interpreter (a heap type). */
extern PyType_Spec tpar_sink_spec;

/* A sink whose payload starts with `prefix` bytes the caller fills in
 * later (a RESULT's duration), writing to `lane` (may be NULL or have no
 * memfd: then always to the buffer). */
PyObject *tpar_sink_new(PyTypeObject *tp, tpar_lane *lane, size_t prefix);

/* The payload written so far: *data and *len; returns 1 when it is in the
 * lane (claimed, not yet published), 0 when in the sink's buffer. */
int tpar_sink_payload(PyObject *sink, uint8_t **data, size_t *len);

/* Ends the sink's use of its lane: publish (1) or give it back unused (0).
 * Later writes raise ValueError.  Idempotent. */
void tpar_sink_finish(PyObject *sink, int publish);

#endif
