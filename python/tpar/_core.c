/* tpar._core: the Trio package's view of one worker process.
 *
 * A Worker owns a tpar_proc (core/proc.c) and drives its channel, a
 * tpar_link (core/link.c: frames, lanes, events): the non-blocking reads
 * and writes are here, in C.  It never waits on its
 * own: send() and recv() say "not yet" and the Python side waits with
 * trio.lowlevel.wait_writable / wait_readable on the fds.  recv() may spin
 * for a few microseconds first, holding the GIL, because a worker that
 * answers within that time costs far less than a trip through epoll.
 *
 * Multi-phase init, module state, a heap type; not linked to libpython. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "loop.h" /* tpar_worker_fork: WorkerType.FORK */
#include "sink.h" /* pickling straight into a lane */
#include "tpar.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_CHUNK 65536

typedef struct {
    PyTypeObject *worker_type;
    PyTypeObject *zygote_type;
    PyTypeObject *sink_type;
    PyTypeObject *listener_type;
} core_state;

/* A forkserver (core/zygote.c).  Its workers keep it alive; every use of
 * the control socket (fork, or reaping one of its workers) holds `lock`,
 * taken with the GIL released, so threads never interleave on it. */
typedef struct {
    PyObject_HEAD
    tpar_zygote z;
    pthread_mutex_t lock;
    pid_t owner;
    int stopped;      /* stop() was called: fork() starts no new one */
    char **argv;      /* what it was started with: it restarts with it */
    PyObject *keep;   /* the bytes argv points into */
} ZygoteObject;

typedef struct {
    PyObject_HEAD
    tpar_proc proc;
    pid_t owner;     /* the process that spawned it: a forked child must
                        neither kill nor reap its parent's workers */
    tpar_link link;  /* frames out, events in (core/link.c) */
    tpar_buf in;     /* bytes read but not yet decoded */
    int eof;         /* from_fd reached end of file */
    ZygoteObject *zygote; /* the forkserver it came from (owned), or NULL */
    int remote;      /* a connection from tpar-worker --connect: no process
                        of ours (pid 0: never signalled nor waited for) */
    uint32_t rpid;   /* remote: its pid on its node, from READY */
} WorkerObject;

/* PyLong_AsInt is 3.13+. */
static int as_int(PyObject *o)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of int range");
        return -1;
    }
    return (int)v;
}

static core_state *get_state(PyObject *module)
{
    return (core_state *)PyModule_GetState(module);
}

static PyObject *set_errno(int err)
{
    if (err == -ENOMEM)
        return PyErr_NoMemory();
    errno = -err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static int check_open(WorkerObject *w)
{
    if (w->proc.to_fd < 0 || w->proc.from_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "worker is closed");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ write */

/* Writes what the pipe takes of iov; returns bytes written (0 when it is
 * full) or -errno. */
static ssize_t write_some(int fd, struct iovec *iov, int n)
{
    for (;;) {
        ssize_t r = writev(fd, iov, n);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -errno;
    }
}

static int flush_out(WorkerObject *w)
{
    struct iovec iov[2];
    int n = tpar_link_pending_iov(&w->link, iov);
    if (n == 0)
        return 0;
    ssize_t r = write_some(w->proc.to_fd, iov, n);
    if (r < 0)
        return (int)r;
    tpar_link_written(&w->link, (size_t)r);
    return 0;
}

/* Signals w's process group (no-op in a forked child, or once reaped).  A
 * forkserver worker's kill first reads the exits its zygote reported, on
 * the zygote's socket: under the zygote's lock, as reap does, or it could
 * take the reply that a fork in another thread waits for (which would then
 * wait forever). */
static void kill_worker(WorkerObject *w, int sig)
{
    if (w->owner != getpid())
        return;
    if (w->remote) { /* its supervisor kills it when the connection drops */
        if (w->proc.from_fd >= 0)
            shutdown(w->proc.from_fd, SHUT_RDWR);
        return;
    }
    if (!w->zygote) {
        tpar_proc_kill(&w->proc, sig);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->zygote->lock);
    tpar_proc_kill(&w->proc, sig);
    pthread_mutex_unlock(&w->zygote->lock);
    Py_END_ALLOW_THREADS
}

/* Queues a frame on the link (a large payload through the down lane when
 * it is free: the link decides) and writes what the pipe takes now.  An
 * inline payload is lent to the link, header and payload go out in one
 * writev, and only what the pipe did not take is copied (p is the
 * caller's, gone after this).  On failure nothing was queued. */
static int send_frame(WorkerObject *w, int kind, const uint8_t *p, size_t n)
{
    int rc = tpar_link_send_lent(&w->link, (uint8_t)kind, 0, p, n, NULL);
    if (rc < 0)
        return rc;
    rc = flush_out(w);
    tpar_link_keep(&w->link);
    return rc;
}

/* The header of a payload published in the down lane (the link gives the
 * lane back when it cannot be queued). */
static int send_lane_header(WorkerObject *w, int kind, size_t n)
{
    int rc = tpar_link_send_in_lane(&w->link, (uint8_t)kind, 0, n, NULL);
    return rc < 0 ? rc : flush_out(w);
}

/* What send() and send_pickled() return: the bytes still pending, or the
 * error of the send (rc, -errno). */
static PyObject *sent(WorkerObject *w, int rc)
{
    if (rc < 0)
        return set_errno(rc);
    return PyLong_FromSize_t(tpar_link_pending_bytes(&w->link));
}

PyDoc_STRVAR(send_doc,
"send(kind, payload) -> int\n\n"
"Queues one frame and writes what the pipe takes now.  Returns the number\n"
"of bytes still pending (wait_writable(to_fd), then flush()).  Raises\n"
"BrokenPipeError when the worker is gone, OverflowError for a payload\n"
"over the frame limit.");

/* The arguments of send() and send_pickled(): their count, the kind, an
 * open worker.  0, or -1 with an exception set. */
static int send_args(WorkerObject *w, PyObject *const *args, Py_ssize_t nargs,
                     Py_ssize_t want, const char *usage, int *kind)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *kind = as_int(args[0]);
    if (*kind == -1 && PyErr_Occurred())
        return -1;
    return check_open(w);
}

static PyObject *Worker_send(WorkerObject *self, PyObject *const *args,
                             Py_ssize_t nargs)
{
    int kind;
    if (send_args(self, args, nargs, 2, "send(kind, payload)", &kind) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = 0;
    if ((size_t)view.len > TPAR_FRAME_MAX_DEFAULT) {
        PyErr_Format(PyExc_OverflowError,
                     "payload of %zd bytes is over the %zu-byte frame limit",
                     view.len, (size_t)TPAR_FRAME_MAX_DEFAULT);
        rc = 1;
    } else {
        rc = send_frame(self, kind, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    if (rc == 1)
        return NULL;
    return sent(self, rc);
}

PyDoc_STRVAR(send_pickled_doc,
"send_pickled(kind, dump, obj) -> int\n\n"
"Calls dump(obj, file, 5) (pickle.dump or cloudpickle.dump) with a file that\n"
"writes the frame's payload: a large one straight into the worker's down\n"
"lane (shared memory), with no bytes object in between.  Then as send().");

static PyObject *Worker_send_pickled(WorkerObject *self, PyObject *const *args,
                                     Py_ssize_t nargs)
{
    int kind;
    if (send_args(self, args, nargs, 3, "send_pickled(kind, dump, obj)", &kind) < 0)
        return NULL;
    core_state *st = PyType_GetModuleState(Py_TYPE(self));
    if (!st)
        return NULL;
    PyObject *sink = tpar_sink_new(st->sink_type, &self->proc.down, 0);
    if (!sink)
        return NULL;
    PyObject *five = PyLong_FromLong(5);
    PyObject *r = five ? PyObject_CallFunctionObjArgs(args[1], args[2], sink, five, NULL)
                       : NULL;
    Py_XDECREF(five);
    int rc = 0;
    if (r) {
        uint8_t *data;
        size_t len;
        int in_lane = tpar_sink_payload(sink, &data, &len);
        tpar_sink_finish(sink, in_lane); /* published before its header goes */
        rc = in_lane ? send_lane_header(self, kind, len)
                     : send_frame(self, kind, data, len);
        Py_DECREF(r);
    }
    tpar_sink_finish(sink, 0); /* a failed dump gives the lane back */
    Py_DECREF(sink);
    if (!r)
        return NULL;
    return sent(self, rc);
}

PyDoc_STRVAR(lane_done_doc,
"lane_done()\n\nThe last result's body (a memoryview of the up lane, already\n"
"released) is no longer needed: the worker may fill the lane again.");

static PyObject *Worker_lane_done(WorkerObject *self, PyObject *unused)
{
    tpar_link_lane_done(&self->link);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(flush_doc,
"flush() -> int\n\nWrites pending bytes; returns how many are still pending.");

static PyObject *Worker_flush(WorkerObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    int rc = flush_out(self);
    if (rc < 0)
        return set_errno(rc);
    return PyLong_FromSize_t(tpar_link_pending_bytes(&self->link));
}

/* ------------------------------------------------------------------- read */

/* The link failed (rc < 0): a RuntimeError saying why; -1. */
static int link_error(WorkerObject *w, int rc)
{
    PyErr_Format(PyExc_RuntimeError, "worker %d: %s", (int)w->proc.pid,
                 rc == TPAR_EPROTO ? w->link.error : tpar_strerror(rc));
    return -1;
}

/* An event came: 1 with *out set for a RESULT, 0 for one consumed here
 * (READY), -1 with an exception set.  A body in the up lane becomes a
 * view, which the caller releases before lane_done(). */
static int on_event(WorkerObject *w, const tpar_link_event *ev, PyObject **out)
{
    if (ev->type == TPAR_LINK_READY && w->remote)
        w->rpid = ev->pid; /* its pid, on its node */
    if (ev->type != TPAR_LINK_RESULT)
        return 0;
    int status = ev->status | (ev->retiring ? TPAR_RESULT_RETIRING : 0);
    if (ev->in_lane) {
        PyObject *view = PyMemoryView_FromMemory((char *)ev->body, (Py_ssize_t)ev->len,
                                                 PyBUF_READ);
        *out = view ? Py_BuildValue("(idN)", status, ev->duration, view) : NULL;
    } else {
        *out = Py_BuildValue("(idy#)", status, ev->duration, (const char *)ev->body,
                             (Py_ssize_t)ev->len);
    }
    return *out ? 1 : -1;
}

/* Decodes from the bytes held in w->in: 1 with *out for a result, 0 when
 * they ran out, -1 with an exception set. */
static int decode_held(WorkerObject *w, PyObject **out)
{
    while (w->in.len) {
        tpar_link_event ev;
        ptrdiff_t used = tpar_link_feed(&w->link, w->in.data, w->in.len, &ev);
        if (used < 0)
            return link_error(w, (int)used);
        int rc = on_event(w, &ev, out); /* ev.body may point into in */
        tpar_buf_consume(&w->in, (size_t)used);
        if (rc)
            return rc;
    }
    return 0;
}

/* One non-blocking read into w->in: bytes read, 0 at EOF, -EAGAIN, -errno. */
static ssize_t read_some(WorkerObject *w)
{
    if (tpar_buf_reserve(&w->in, READ_CHUNK) < 0)
        return -ENOMEM;
    for (;;) {
        ssize_t r = read(w->proc.from_fd, w->in.data + w->in.len, READ_CHUNK);
        if (r > 0)
            w->in.len += (size_t)r;
        else if (r == 0)
            w->eof = 1;
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return -errno;
    }
}

/* The rest of a large frame goes from the pipe straight into the decoder's
 * buffer (no copy through w->in): bytes read, 0 at EOF, -EAGAIN, -errno. */
static ssize_t read_direct(WorkerObject *w, uint8_t *dst, size_t room)
{
    for (;;) {
        ssize_t r = read(w->proc.from_fd, dst, room);
        if (r == 0)
            w->eof = 1;
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return -errno;
    }
}

PyDoc_STRVAR(recv_doc,
"recv(spin_us) -> (status, duration, body) | None | False\n\n"
"Reads and decodes without blocking, retrying for up to spin_us\n"
"microseconds while nothing is there.  Returns the next RESULT frame,\n"
"None when it has not come yet (wait_readable(from_fd), then recv again),\n"
"or False at end of file (the worker is gone).");

static PyObject *Worker_recv(WorkerObject *self, PyObject *arg)
{
    double spin = PyFloat_AsDouble(arg), deadline = 0;
    if (spin == -1.0 && PyErr_Occurred())
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    for (;;) {
        PyObject *res = NULL;
        int rc = decode_held(self, &res);
        if (rc)
            return rc > 0 ? res : NULL;
        if (self->eof)
            Py_RETURN_FALSE;
        uint8_t *dst;
        size_t room = self->in.len ? 0 : tpar_link_room(&self->link, &dst);
        ssize_t r;
        if (room >= READ_CHUNK) {
            r = read_direct(self, dst, room);
            tpar_link_event ev;
            if (r > 0) {
                int c = tpar_link_commit(&self->link, (size_t)r, &ev);
                rc = c < 0 ? link_error(self, c) : on_event(self, &ev, &res);
                if (rc)
                    return rc > 0 ? res : NULL;
            }
        } else {
            r = read_some(self);
        }
        if (r >= 0)
            continue;
        if (r != -EAGAIN)
            return set_errno((int)r);
        if (spin <= 0)
            Py_RETURN_NONE;
        double now = tpar_now();
        if (deadline == 0)
            deadline = now + spin * 1e-6;
        else if (now >= deadline)
            Py_RETURN_NONE;
        /* When the worker shares our CPU, this is what lets it answer;
         * on another CPU it returns at once. */
        sched_yield();
    }
}

PyDoc_STRVAR(alive_doc,
"alive() -> bool\n\nFalse when the worker's pipe is at end of file (it died\n"
"or exited while idle).  Never blocks.");

static PyObject *Worker_alive(WorkerObject *self, PyObject *unused)
{
    if (self->eof || self->proc.from_fd < 0 || self->proc.reaped)
        Py_RETURN_FALSE;
    ssize_t r = read_some(self);
    return PyBool_FromLong(r != 0 && (r > 0 || r == -EAGAIN));
}

/* --------------------------------------------------------------- process */

PyDoc_STRVAR(kill_doc,
"kill(sig=SIGKILL)\n\nSignals the worker's process group.  No-op once reaped.");

static PyObject *Worker_kill(WorkerObject *self, PyObject *const *args,
                             Py_ssize_t nargs)
{
    int sig = SIGKILL;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "kill(sig=SIGKILL)");
        return NULL;
    }
    if (nargs == 1 && (sig = as_int(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    kill_worker(self, sig);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(reap_doc,
"reap(block) -> int | None\n\nCollects the worker's wait status; None when\n"
"block is false and it still runs.");

static PyObject *Worker_reap(WorkerObject *self, PyObject *arg)
{
    int block = PyObject_IsTrue(arg), rc;
    if (block < 0)
        return NULL;
    if (self->owner != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "worker belongs to another process");
        return NULL;
    }
    if (self->remote) /* nothing to wait for here */
        return PyLong_FromLong(0);
    if (self->zygote) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->zygote->lock);
        rc = tpar_proc_reap(&self->proc, block);
        pthread_mutex_unlock(&self->zygote->lock);
        Py_END_ALLOW_THREADS
    } else if (block) {
        Py_BEGIN_ALLOW_THREADS
        rc = tpar_proc_reap(&self->proc, 1);
        Py_END_ALLOW_THREADS
    } else {
        rc = tpar_proc_reap(&self->proc, 0);
    }
    if (rc == -EAGAIN)
        Py_RETURN_NONE;
    if (rc < 0)
        return set_errno(rc);
    return PyLong_FromLong(self->proc.status);
}

PyDoc_STRVAR(close_doc, "close()\n\nCloses both pipes (idempotent).");

static PyObject *Worker_close(WorkerObject *self, PyObject *unused)
{
    tpar_proc_close(&self->proc);
    tpar_link_free(&self->link);
    Py_RETURN_NONE;
}

static PyObject *Worker_get_pid(WorkerObject *self, void *c)
{
    return PyLong_FromLong(self->remote ? (long)self->rpid : (long)self->proc.pid);
}

static PyObject *Worker_get_to_fd(WorkerObject *self, void *c)
{
    return PyLong_FromLong(self->proc.to_fd);
}

static PyObject *Worker_get_from_fd(WorkerObject *self, void *c)
{
    return PyLong_FromLong(self->proc.from_fd);
}

static PyObject *Worker_get_status(WorkerObject *self, void *c)
{
    if (!self->proc.reaped)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->proc.status);
}

static PyObject *Worker_get_pending(WorkerObject *self, void *c)
{
    return PyLong_FromSize_t(tpar_link_pending_bytes(&self->link));
}

static PyObject *Worker_get_ready(WorkerObject *self, void *c)
{
    return PyBool_FromLong(self->link.ready);
}

static PyObject *Worker_repr(WorkerObject *self)
{
    return PyUnicode_FromFormat("<tpar worker pid=%d%s>", (int)self->proc.pid,
                                self->proc.reaped ? " reaped" : "");
}

/* ------------------------------------------------------------- lifecycle */

/* A worker object that goes away takes its process with it: no zombie, no
 * orphan, whatever path dropped the last reference. */
static void Worker_dealloc(WorkerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->owner == getpid() && self->proc.pid > 0 && !self->proc.reaped) {
        Py_BEGIN_ALLOW_THREADS
        if (self->zygote) /* see kill_worker */
            pthread_mutex_lock(&self->zygote->lock);
        tpar_proc_kill(&self->proc, SIGKILL);
        (void)tpar_proc_reap(&self->proc, 1);
        if (self->zygote)
            pthread_mutex_unlock(&self->zygote->lock);
        Py_END_ALLOW_THREADS
    }
    tpar_proc_close(&self->proc);
    Py_CLEAR(self->zygote);
    tpar_link_free(&self->link);
    tpar_buf_free(&self->in);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int Worker_traverse(WorkerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->zygote);
    return 0;
}

static PyMethodDef Worker_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Worker_send, METH_FASTCALL, send_doc},
    {"send_pickled", (PyCFunction)(void (*)(void))Worker_send_pickled, METH_FASTCALL,
     send_pickled_doc},
    {"lane_done", (PyCFunction)Worker_lane_done, METH_NOARGS, lane_done_doc},
    {"flush", (PyCFunction)Worker_flush, METH_NOARGS, flush_doc},
    {"recv", (PyCFunction)Worker_recv, METH_O, recv_doc},
    {"alive", (PyCFunction)Worker_alive, METH_NOARGS, alive_doc},
    {"kill", (PyCFunction)(void (*)(void))Worker_kill, METH_FASTCALL, kill_doc},
    {"reap", (PyCFunction)Worker_reap, METH_O, reap_doc},
    {"close", (PyCFunction)Worker_close, METH_NOARGS, close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Worker_getset[] = {
    {"pid", (getter)Worker_get_pid, NULL, "process id", NULL},
    {"to_fd", (getter)Worker_get_to_fd, NULL, "fd the parent writes frames to", NULL},
    {"from_fd", (getter)Worker_get_from_fd, NULL, "fd the parent reads frames from", NULL},
    {"status", (getter)Worker_get_status, NULL, "wait status once reaped, else None", NULL},
    {"ready", (getter)Worker_get_ready, NULL, "the READY frame came", NULL},
    {"pending", (getter)Worker_get_pending, NULL, "bytes queued, not yet written", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* CPython's slot tables hold functions in void * fields; ISO C has no
 * conversion for that, every C compiler does it. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
static PyType_Slot Worker_slots[] = {
    {Py_tp_doc, "A tpar-worker process and its two pipes (made by spawn())."},
    {Py_tp_dealloc, Worker_dealloc},
    {Py_tp_traverse, Worker_traverse},
    {Py_tp_repr, Worker_repr},
    {Py_tp_methods, Worker_methods},
    {Py_tp_getset, Worker_getset},
    {0, NULL},
};
#pragma GCC diagnostic pop

static PyType_Spec Worker_spec = {
    .name = "tpar._core.Worker",
    .basicsize = sizeof(WorkerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Worker_slots,
};

/* ----------------------------------------------------------------- remote
 *
 * Remote workers (tpar-worker --connect): a Listener authenticates their
 * connections (core/net.c) and hands each out as a Worker whose frames go
 * over the socket, inline; kill() drops the connection, which makes the
 * worker's supervisor kill it. */
typedef struct {
    PyObject_HEAD
    tpar_listener *l;
    char hex[TPAR_SECRET_HEX + 1]; /* the run's secret, for the launcher */
} ListenerObject;

static WorkerObject *new_worker(core_state *st);

static PyObject *Listener_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *names[] = {"host", "port", "auth_timeout", NULL};
    const char *host = "";
    unsigned port = 0;
    double timeout = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|sId", names, &host, &port, &timeout))
        return NULL;
    ListenerObject *self = (ListenerObject *)tp->tp_alloc(tp, 0);
    if (!self)
        return NULL;
    uint8_t key[TPAR_SECRET_LEN];
    tpar_listen_opts o = {.auth_timeout = timeout};
    int rc = tpar_secret_new(key, self->hex);
    if (rc == 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = tpar_listener_open(&self->l, host, port, key, &o);
        Py_END_ALLOW_THREADS
    }
    explicit_bzero(key, sizeof key);
    if (rc < 0) {
        Py_DECREF(self);
        return set_errno(rc);
    }
    return (PyObject *)self;
}

static int listener_open(ListenerObject *self)
{
    if (!self->l) {
        PyErr_SetString(PyExc_ValueError, "listener is closed");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(lnext_doc,
"next() -> tuple | None\n\nAccepts, reads and answers what is ready without\n"
"blocking: (\"worker\", Worker, peer) for an authenticated connection,\n"
"(\"refused\", peer, reason) for a peer dropped, (\"error\", reason, errno);\n"
"None when there is nothing more now (wait for fileno() or deadline()).");

static PyObject *Listener_next(ListenerObject *self, PyObject *unused)
{
    tpar_listen_event ev;
    if (listener_open(self) < 0)
        return NULL;
    int rc = tpar_listener_next(self->l, &ev);
    if (rc < 0)
        return set_errno(rc);
    if (rc == 0)
        Py_RETURN_NONE;
    if (ev.kind == TPAR_LISTEN_REFUSED)
        return Py_BuildValue("(sss)", "refused", ev.peer, ev.reason);
    if (ev.kind == TPAR_LISTEN_ERROR)
        return Py_BuildValue("(ssi)", "error", ev.reason, -ev.err);
    core_state *st = get_state(PyType_GetModule(Py_TYPE(self)));
    WorkerObject *w = new_worker(st);
    int wfd = w ? fcntl(ev.fd, F_DUPFD_CLOEXEC, 3) : -1;
    if (wfd < 0) {
        close(ev.fd);
        Py_XDECREF(w);
        return w ? set_errno(-errno) : NULL;
    }
    /* One socket, two fds: Trio waits on each for one direction. */
    w->remote = 1;
    w->proc.pid = 0;
    w->proc.from_fd = ev.fd;
    w->proc.to_fd = wfd;
    return Py_BuildValue("(sNs)", "worker", (PyObject *)w, ev.peer);
}

static PyObject *Listener_fileno(ListenerObject *self, PyObject *unused)
{
    if (listener_open(self) < 0)
        return NULL;
    return PyLong_FromLong(tpar_listener_fd(self->l));
}

PyDoc_STRVAR(ldeadline_doc,
"deadline() -> float\n\nWhen (time.monotonic()) the next waiting connection\n"
"times out; 0.0 when none waits.");

static PyObject *Listener_deadline(ListenerObject *self, PyObject *unused)
{
    if (listener_open(self) < 0)
        return NULL;
    return PyFloat_FromDouble(tpar_listener_deadline(self->l));
}

static PyObject *Listener_close(ListenerObject *self, PyObject *unused)
{
    tpar_listener_free(self->l);
    self->l = NULL;
    Py_RETURN_NONE;
}

static PyObject *Listener_get_port(ListenerObject *self, void *c)
{
    if (listener_open(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(tpar_listener_port(self->l));
}

static PyObject *Listener_get_secret(ListenerObject *self, void *c)
{
    return PyUnicode_FromString(self->hex);
}

static void Listener_dealloc(ListenerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tpar_listener_free(self->l);
    explicit_bzero(self->hex, sizeof self->hex);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef Listener_methods[] = {
    {"next", (PyCFunction)Listener_next, METH_NOARGS, lnext_doc},
    {"fileno", (PyCFunction)Listener_fileno, METH_NOARGS, "The fd to wait on (readable)."},
    {"deadline", (PyCFunction)Listener_deadline, METH_NOARGS, ldeadline_doc},
    {"close", (PyCFunction)Listener_close, METH_NOARGS, "Closes it (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Listener_getset[] = {
    {"port", (getter)Listener_get_port, NULL, "the port bound", NULL},
    {"secret", (getter)Listener_get_secret, NULL, "the run's secret, 64 hex digits", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic" /* function in a void * slot */
static PyType_Slot Listener_slots[] = {
    {Py_tp_new, Listener_new},
    {Py_tp_dealloc, Listener_dealloc},
    {Py_tp_methods, Listener_methods},
    {Py_tp_getset, Listener_getset},
    {Py_tp_doc, "Listener(host='', port=0, auth_timeout=0.0): remote workers' "
                "connections, authenticated with a fresh secret."},
    {0, NULL},
};
#pragma GCC diagnostic pop

static PyType_Spec Listener_spec = {
    .name = "tpar._core.Listener",
    .basicsize = sizeof(ListenerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Listener_slots,
};

/* ----------------------------------------------------------------- zygote */

static WorkerObject *new_worker(core_state *st)
{
    WorkerObject *w = (WorkerObject *)st->worker_type->tp_alloc(st->worker_type, 0);
    if (!w)
        return NULL;
    w->proc.pid = -1;
    w->proc.to_fd = w->proc.from_fd = -1;
    w->proc.down = w->proc.up = (tpar_lane)TPAR_LANE_NONE;
    w->owner = getpid();
    tpar_link_init(&w->link, NULL, NULL);
    return w;
}

/* Its process is there: the link takes its lanes. */
static void attached(WorkerObject *w)
{
    tpar_link_init(&w->link, &w->proc.down, &w->proc.up);
}

PyDoc_STRVAR(zfork_doc,
"fork() -> Worker\n\nAsks the forkserver for a ready worker (it blocks until\n"
"the zygote answers).  A zygote found dead is started again, once\n"
"(tpar_zygote_spawn).  BrokenPipeError: it was stopped, or died again.");

static PyObject *Zygote_fork(ZygoteObject *self, PyObject *unused)
{
    PyObject *module = PyType_GetModule(Py_TYPE(self));
    if (!module)
        return NULL;
    if (self->owner != getpid() || self->stopped) { /* found dead: restarted below */
        errno = EPIPE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    WorkerObject *w = new_worker(get_state(module));
    if (!w)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    rc = tpar_zygote_spawn(&self->z, self->argv, NULL, &w->proc);
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        w->proc.pid = -1;
        Py_DECREF(w);
        return set_errno(rc);
    }
    attached(w);
    Py_INCREF(self);
    w->zygote = self;
    return (PyObject *)w;
}

static void zygote_stop(ZygoteObject *self)
{
    self->stopped = 1;
    if (self->owner != getpid()) { /* a forked child: drop our copy only */
        if (self->z.fd >= 0)
            close(self->z.fd);
        self->z.fd = -1;
        self->z.pid = 0;
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    tpar_zygote_stop(&self->z);
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
}

PyDoc_STRVAR(zstop_doc,
"stop()\n\nEnds the zygote (its workers die with it) and reaps it.  Idempotent.");

static PyObject *Zygote_stop(ZygoteObject *self, PyObject *unused)
{
    zygote_stop(self);
    Py_RETURN_NONE;
}

static PyObject *Zygote_get_pid(ZygoteObject *self, void *c)
{
    return PyLong_FromLong(self->z.pid);
}

static void Zygote_dealloc(ZygoteObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    zygote_stop(self);
    pthread_mutex_destroy(&self->lock);
    PyMem_Free(self->argv);
    Py_CLEAR(self->keep);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int Zygote_traverse(ZygoteObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static PyMethodDef Zygote_methods[] = {
    {"fork", (PyCFunction)Zygote_fork, METH_NOARGS, zfork_doc},
    {"stop", (PyCFunction)Zygote_stop, METH_NOARGS, zstop_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Zygote_getset[] = {
    {"pid", (getter)Zygote_get_pid, NULL, "the zygote's pid, 0 when stopped", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic" /* functions in void * slots */
static PyType_Slot Zygote_slots[] = {
    {Py_tp_doc, "A forkserver: a tpar-worker --zygote (made by zygote_start())."},
    {Py_tp_dealloc, Zygote_dealloc},
    {Py_tp_traverse, Zygote_traverse},
    {Py_tp_methods, Zygote_methods},
    {Py_tp_getset, Zygote_getset},
    {0, NULL},
};
#pragma GCC diagnostic pop

static PyType_Spec Zygote_spec = {
    .name = "tpar._core.Zygote",
    .basicsize = sizeof(ZygoteObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Zygote_slots,
};

/* ---------------------------------------------------------------- module */

/* Converts a sequence of str/bytes into a NULL-terminated argv whose
 * strings live in *keep (a list of bytes). */
static char **make_argv(PyObject *seq, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(seq, "argv must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **argv = n > 0 ? PyMem_Calloc((size_t)n + 1, sizeof(char *)) : NULL;
    *keep = PyList_New(0);
    if (n == 0)
        PyErr_SetString(PyExc_ValueError, "argv is empty");
    for (Py_ssize_t i = 0; argv && *keep && i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &b) ||
            PyList_Append(*keep, b) < 0) {
            Py_XDECREF(b);
            goto fail;
        }
        argv[i] = PyBytes_AS_STRING(b);
        Py_DECREF(b);
    }
    if (argv && *keep) {
        Py_DECREF(fast);
        return argv;
    }
fail:
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    PyMem_Free(argv);
    Py_CLEAR(*keep);
    Py_DECREF(fast);
    return NULL;
}

PyDoc_STRVAR(spawn_doc,
"spawn(argv) -> Worker\n\nStarts argv[0] (a path) as a worker with the job\n"
"pipes on fds 3 and 4 (tpar_proc_spawn).  Raises OSError on failure.");

static PyObject *core_spawn(PyObject *module, PyObject *arg)
{
    core_state *st = get_state(module);
    PyObject *keep = NULL;
    char **argv = make_argv(arg, &keep);
    if (!argv)
        return NULL;
    WorkerObject *w = new_worker(st);
    if (!w)
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tpar_proc_spawn(&w->proc, argv, NULL);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, argv[0]);
        Py_CLEAR(w);
    } else {
        attached(w);
    }
done:
    PyMem_Free(argv);
    Py_DECREF(keep);
    return (PyObject *)w;
}

PyDoc_STRVAR(zstart_doc,
"zygote_start(argv) -> Zygote\n\nStarts a forkserver: argv[0] is tpar-worker and\n"
"argv holds --zygote.  Raises OSError on failure.");

static PyObject *core_zygote_start(PyObject *module, PyObject *arg)
{
    core_state *st = get_state(module);
    PyObject *keep = NULL;
    char **argv = make_argv(arg, &keep);
    if (!argv)
        return NULL;
    ZygoteObject *zo = (ZygoteObject *)st->zygote_type->tp_alloc(st->zygote_type, 0);
    if (zo) {
        pthread_mutex_init(&zo->lock, NULL);
        zo->owner = getpid();
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = tpar_zygote_start(&zo->z, argv, NULL);
        Py_END_ALLOW_THREADS
        zo->argv = argv; /* freed with zo */
        zo->keep = keep;
        if (rc < 0) {
            errno = -rc;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, argv[0]);
            Py_CLEAR(zo);
        }
        return (PyObject *)zo;
    }
    PyMem_Free(argv);
    Py_DECREF(keep);
    return NULL;
}

PyDoc_STRVAR(fork_doc,
"fork_worker(pdeathsig, idle_timeout) -> Worker\n\nForks this process; the child\n"
"runs tpar-worker's job loop on fresh pipes (WorkerType.FORK).");

static PyObject *core_fork_worker(PyObject *module, PyObject *args)
{
    int pdeathsig;
    double idle_timeout;
    if (!PyArg_ParseTuple(args, "pd:fork_worker", &pdeathsig, &idle_timeout))
        return NULL;
    struct tpar_worker_opts o;
    memset(&o, 0, sizeof o);
    o.pdeathsig = pdeathsig;
    o.keep_stdout = 1; /* a job's print() goes to our stdout, as trio-parallel's */
    o.spin_us = -1;
    o.idle_timeout = idle_timeout;
    WorkerObject *w = new_worker(get_state(module));
    if (!w)
        return NULL;
    int rc = tpar_worker_fork(&w->proc, &o); /* with the GIL, as it asks */
    if (rc < 0) {
        w->proc.pid = -1;
        Py_DECREF(w);
        return PyErr_Occurred() ? NULL : set_errno(rc);
    }
    attached(w);
    return (PyObject *)w;
}

PyDoc_STRVAR(describe_doc,
"describe_status(status) -> str\n\n'killed by signal 9 (SIGKILL)', 'exited with code 3'.");

static PyObject *core_describe_status(PyObject *module, PyObject *arg)
{
    int status = as_int(arg);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    char buf[128];
    tpar_describe_status(status, buf, sizeof buf);
    return PyUnicode_FromString(buf);
}

static PyObject *core_cpu_count(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong(tpar_cpu_count());
}

PyDoc_STRVAR(oversub_doc,
"cpus_oversubscribed([now]) -> bool\n\nMore tasks runnable on this machine than CPUs online\n"
"(core/util.c, tpar_cpus_oversubscribed: /proc/loadavg read at most every\n"
"5 ms of `now`, time.monotonic()'s clock, default the current time).");

static PyObject *core_cpus_oversubscribed(PyObject *mod, PyObject *args)
{
    double now = -1;
    if (!PyArg_ParseTuple(args, "|d", &now))
        return NULL;
    return PyBool_FromLong(tpar_cpus_oversubscribed(now < 0 ? tpar_now() : now, 0));
}

static PyMethodDef core_methods[] = {
    {"spawn", core_spawn, METH_O, spawn_doc},
    {"zygote_start", core_zygote_start, METH_O, zstart_doc},
    {"fork_worker", core_fork_worker, METH_VARARGS, fork_doc},
    {"describe_status", core_describe_status, METH_O, describe_doc},
    {"cpu_count", core_cpu_count, METH_NOARGS, "CPUs this process may run on."},
    {"cpus_oversubscribed", core_cpus_oversubscribed, METH_VARARGS, oversub_doc},
    {NULL, NULL, 0, NULL},
};

static int add_constants(PyObject *m)
{
    return PyModule_AddIntConstant(m, "FRAME_JOB_PICKLE", TPAR_FRAME_JOB_PICKLE) ||
           PyModule_AddIntConstant(m, "FRAME_CONFIG", TPAR_FRAME_CONFIG) ||
           PyModule_AddIntConstant(m, "FRAME_SHUTDOWN", TPAR_FRAME_SHUTDOWN) ||
           PyModule_AddStringConstant(m, "SECRET_ENV", TPAR_SECRET_ENV) ||
           PyModule_AddIntConstant(m, "RESULT_OK", TPAR_RESULT_OK) ||
           PyModule_AddIntConstant(m, "RESULT_ERROR", TPAR_RESULT_ERROR) ||
           PyModule_AddIntConstant(m, "RESULT_RETIRING", TPAR_RESULT_RETIRING) ||
           PyModule_AddIntConstant(m, "RESULT_RETIRED", TPAR_RESULT_RETIRED) ||
           PyModule_AddIntConstant(m, "RESULT_STATUS_MASK", TPAR_RESULT_STATUS_MASK) ||
           PyModule_AddIntConstant(m, "FRAME_MAX", (long)TPAR_FRAME_MAX_DEFAULT) ||
           PyModule_AddStringConstant(m, "VERSION", TPAR_VERSION) ||
           PyModule_AddObject(m, "LOST_YIELD_S", PyFloat_FromDouble(TPAR_LOST_YIELD_S))
               ? -1 : 0;
}

static int core_exec(PyObject *m)
{
    core_state *st = get_state(m);
    st->worker_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &Worker_spec, NULL);
    if (!st->worker_type || PyModule_AddType(m, st->worker_type) < 0)
        return -1;
    st->zygote_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &Zygote_spec, NULL);
    if (!st->zygote_type || PyModule_AddType(m, st->zygote_type) < 0)
        return -1;
    st->sink_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tpar_sink_spec, NULL);
    if (!st->sink_type)
        return -1;
    st->listener_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &Listener_spec, NULL);
    if (!st->listener_type || PyModule_AddType(m, st->listener_type) < 0)
        return -1;
    return add_constants(m);
}

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    Py_VISIT(get_state(m)->worker_type);
    Py_VISIT(get_state(m)->zygote_type);
    Py_VISIT(get_state(m)->sink_type);
    Py_VISIT(get_state(m)->listener_type);
    return 0;
}

static int core_clear(PyObject *m)
{
    Py_CLEAR(get_state(m)->worker_type);
    Py_CLEAR(get_state(m)->zygote_type);
    Py_CLEAR(get_state(m)->sink_type);
    Py_CLEAR(get_state(m)->listener_type);
    return 0;
}

static void core_free(void *m)
{
    core_clear((PyObject *)m);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic" /* function in a void * slot */
static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};
#pragma GCC diagnostic pop

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tpar._core",
    .m_doc = "The C half of the tpar Trio package: worker processes over libtpar.",
    .m_size = sizeof(core_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void);

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
