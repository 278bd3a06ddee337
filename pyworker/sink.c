/* The pickle sink (sink.h). */
#include "sink.h"

#include <errno.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    tpar_lane *lane; /* or NULL: no lane */
    int finished;
    int in_lane;     /* the lane is claimed and holds the payload */
    tpar_buf buf;    /* the payload while it is not in the lane */
    size_t len;      /* payload bytes, prefix included */
} Sink;

PyObject *tpar_sink_new(PyTypeObject *tp, tpar_lane *lane, size_t prefix)
{
    Sink *s = (Sink *)tp->tp_alloc(tp, 0);
    if (!s)
        return NULL;
    s->lane = lane;
    if (tpar_buf_reserve(&s->buf, prefix + 256) < 0) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    memset(s->buf.data, 0, prefix);
    s->buf.len = s->len = prefix;
    return (PyObject *)s;
}

int tpar_sink_payload(PyObject *sink, uint8_t **data, size_t *len)
{
    Sink *s = (Sink *)sink;
    *len = s->len;
    if (s->in_lane)
        return tpar_lane_reserve(s->lane, s->len, data) < 0 ? 0 : 1;
    *data = s->buf.data;
    return 0;
}

void tpar_sink_finish(PyObject *sink, int publish)
{
    Sink *s = (Sink *)sink;
    if (s->in_lane) {
        if (publish)
            tpar_lane_publish(s->lane);
        else
            tpar_lane_abort(s->lane);
    }
    s->in_lane = 0;
    s->finished = 1;
}

/* Moves the payload into the lane when it is about to pass the threshold
 * and the lane is free: 0, or -1 with an exception set. */
static int maybe_to_lane(Sink *s, size_t more)
{
    if (s->in_lane || !s->lane || s->len + more < TPAR_LANE_MIN)
        return 0;
    int rc = tpar_lane_claim(s->lane);
    if (rc <= 0)
        return 0; /* held (or failing): the pipe carries it, as always */
    uint8_t *dst;
    if (tpar_lane_reserve(s->lane, s->len + more, &dst) < 0) {
        tpar_lane_abort(s->lane);
        return 0;
    }
    memcpy(dst, s->buf.data, s->len);
    tpar_buf_free(&s->buf);
    s->in_lane = 1;
    return 0;
}

static PyObject *Sink_write(Sink *s, PyObject *arg)
{
    if (s->finished) {
        PyErr_SetString(PyExc_ValueError, "write to a finished sink");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t n = (size_t)v.len;
    int err = 0;
    if (n > TPAR_FRAME_MAX_DEFAULT - s->len) {
        PyErr_Format(PyExc_OverflowError,
                     "the pickle is over the %zu-byte frame limit",
                     (size_t)TPAR_FRAME_MAX_DEFAULT);
        err = 1;
    } else if (maybe_to_lane(s, n) < 0) {
        err = 1;
    } else if (s->in_lane) {
        uint8_t *dst;
        int rc = tpar_lane_reserve(s->lane, s->len + n, &dst);
        if (rc < 0) {
            errno = -rc;
            PyErr_SetFromErrno(PyExc_OSError);
            err = 1;
        } else {
            memcpy(dst + s->len, v.buf, n);
        }
    } else if (tpar_buf_append(&s->buf, v.buf, n) < 0) {
        PyErr_NoMemory();
        err = 1;
    }
    if (!err)
        s->len += n;
    PyBuffer_Release(&v);
    return err ? NULL : PyLong_FromSize_t(n);
}

static void Sink_dealloc(Sink *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    tpar_sink_finish((PyObject *)s, 0);
    tpar_buf_free(&s->buf);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static PyMethodDef Sink_methods[] = {
    {"write", (PyCFunction)Sink_write, METH_O, "write(b) -> int"},
    {NULL, NULL, 0, NULL}};

/* PyType_Slot stores functions as void *, which ISO C does not allow. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
static PyType_Slot Sink_slots[] = {
    {Py_tp_dealloc, Sink_dealloc},
    {Py_tp_methods, Sink_methods},
    {Py_tp_doc, "Where pickle.dump writes a frame payload (tpar internal)."},
    {0, NULL}};
#pragma GCC diagnostic pop

PyType_Spec tpar_sink_spec = {
    .name = "tpar._core.Sink",
    .basicsize = sizeof(Sink),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Sink_slots,
};
