/* libFuzzer target: the worker's JSON encoder (pyworker/jsonenc.c), with
 * CPython embedded.
 *
 * The input is a little program that builds a Python value (None, bools,
 * ints of any size, floats with NaN and infinities, str with any code
 * point, lists, tuples, dicts with keys of every type, sets, int
 * subclasses).  Reference check: json.dumps(v, allow_nan=False,
 * ensure_ascii=False, separators=(",", ":")), with CPython's digit limit
 * lifted for it, must give the very text tpar__json_encode gives, or both
 * must fail with the same exception type (a text json.dumps makes that is
 * not UTF-8, from a lone surrogate, is a failure for us; ours fails at the
 * first lone surrogate, where json.dumps may fail later for another
 * reason).  Each text must
 * then round-trip: json.loads(text) == json.loads(reference text). */
#include <Python.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "jsonenc.h"

static PyObject *dumps, *loads, *intenum_cls;

struct gen {
    const uint8_t *p, *end;
    int depth;
};

static int byte(struct gen *g)
{
    return g->p < g->end ? *g->p++ : 0;
}

static PyObject *make(struct gen *g);

static PyObject *make_int(struct gen *g)
{
    int kind = byte(g) % 4;
    if (kind == 0)
        return PyLong_FromLong((long)(int8_t)byte(g));
    if (kind == 1) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | (uint64_t)byte(g);
        return PyLong_FromLongLong((long long)v);
    }
    /* big: a few bytes repeated into many digits (past 4,300 sometimes) */
    int nbytes = kind == 2 ? 1 + byte(g) % 32 : 1 + byte(g) * 8;
    unsigned char *buf = malloc((size_t)nbytes);
    for (int i = 0; i < nbytes; i++)
        buf[i] = (unsigned char)(byte(g) ^ (i * 131));
    PyObject *v = _PyLong_FromByteArray(buf, (size_t)nbytes, 1, 1);
    free(buf);
    return v;
}

static PyObject *make_float(struct gen *g)
{
    int kind = byte(g) % 6;
    if (kind == 0)
        return PyFloat_FromDouble(Py_NAN);
    if (kind == 1)
        return PyFloat_FromDouble(byte(g) & 1 ? Py_HUGE_VAL : -Py_HUGE_VAL);
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = u << 8 | (uint64_t)byte(g);
    double d;
    memcpy(&d, &u, sizeof d);
    if (kind == 2)
        d = (double)(int8_t)u / 8.0;
    return PyFloat_FromDouble(d);
}

static PyObject *make_str(struct gen *g)
{
    int n = byte(g) % 24;
    Py_UCS4 buf[24];
    for (int i = 0; i < n; i++) {
        int k = byte(g);
        switch (k % 5) {
        case 0: buf[i] = (Py_UCS4)(k % 0x20); break;      /* control */
        case 1: buf[i] = (Py_UCS4)("\"\\/az\x7f"[k % 6]); break;
        case 2: buf[i] = (Py_UCS4)(0x80 + byte(g) * 7); break;
        case 3: buf[i] = (Py_UCS4)(0xD7F0 + byte(g) % 48); break; /* around surrogates */
        default: buf[i] = (Py_UCS4)(0x10000 + (byte(g) << 8 | byte(g)) * 16) % 0x110000; break;
        }
    }
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, buf, n);
}

static PyObject *make_container(struct gen *g, int kind)
{
    int n = byte(g) % 6;
    PyObject *items = PyList_New(0);
    for (int i = 0; i < n; i++) {
        PyObject *v = make(g);
        if (!v) {
            Py_DECREF(items);
            return NULL;
        }
        PyList_Append(items, v);
        Py_DECREF(v);
    }
    if (kind == 0)
        return items;
    PyObject *r = kind == 1 ? PyList_AsTuple(items) : PySet_New(items);
    if (!r) { /* an unhashable item in a set */
        PyErr_Clear();
        r = PyList_AsTuple(items);
    }
    Py_DECREF(items);
    return r;
}

static PyObject *make_key(struct gen *g)
{
    switch (byte(g) % 7) {
    case 0: return make_int(g);
    case 1: return make_float(g);
    case 2: Py_RETURN_TRUE;
    case 3: Py_RETURN_NONE;
    case 4: return PyTuple_New(0); /* not a valid key */
    default: return make_str(g);
    }
}

static PyObject *make_dict(struct gen *g)
{
    int n = byte(g) % 5;
    PyObject *d = PyDict_New();
    for (int i = 0; i < n; i++) {
        PyObject *k = make_key(g), *v = make(g);
        if (k && v)
            PyDict_SetItem(d, k, v);
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (PyErr_Occurred()) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *make(struct gen *g)
{
    int k = byte(g);
    if (g->depth > 40 || g->p >= g->end)
        k %= 5;
    g->depth++;
    PyObject *r;
    switch (k % 12) {
    case 0: r = Py_NewRef(Py_None); break;
    case 1: r = Py_NewRef(k & 16 ? Py_True : Py_False); break;
    case 2: r = make_int(g); break;
    case 3: r = make_float(g); break;
    case 4: r = make_str(g); break;
    case 5: case 6: r = make_container(g, 0); break;
    case 7: r = make_container(g, 1); break;
    case 8: r = make_container(g, 2); break; /* a set: TypeError */
    case 9: case 10: r = make_dict(g); break;
    default: r = PyObject_CallFunction(intenum_cls, "i", byte(g) % 3); break;
    }
    g->depth--;
    return r;
}

static PyObject *reference(PyObject *v)
{
    PyObject *sys = PyImport_ImportModule("sys");
    PyObject *old = PyObject_CallMethod(sys, "get_int_max_str_digits", NULL);
    PyObject *r = PyObject_CallMethod(sys, "set_int_max_str_digits", "i", 0);
    Py_XDECREF(r);
    PyObject *text = PyObject_CallOneArg(dumps, v);
    PyObject *t, *e, *tb;
    PyErr_Fetch(&t, &e, &tb);
    r = PyObject_CallMethod(sys, "set_int_max_str_digits", "O", old);
    Py_XDECREF(r);
    Py_DECREF(old);
    Py_DECREF(sys);
    PyErr_Restore(t, e, tb);
    return text;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    Py_InitializeEx(0);
    PyObject *json = PyImport_ImportModule("json");
    PyObject *functools = PyImport_ImportModule("functools");
    assert(json && functools);
    PyObject *kw = Py_BuildValue("{s:O,s:O,s:(ss)}", "allow_nan", Py_False, "ensure_ascii",
                                 Py_False, "separators", ",", ":");
    PyObject *partial = PyObject_GetAttrString(functools, "partial");
    PyObject *fn = PyObject_GetAttrString(json, "dumps");
    PyObject *args = PyTuple_Pack(1, fn);
    dumps = PyObject_Call(partial, args, kw);
    loads = PyObject_GetAttrString(json, "loads");
    PyObject *ns = PyDict_New();
    PyObject *r = PyRun_String("import enum\nclass E(enum.IntEnum):\n    A = 0\n    B = 1\n"
                               "    C = 2\n", Py_file_input, ns, ns);
    intenum_cls = PyDict_GetItemString(ns, "E");
    assert(dumps && loads && r && intenum_cls);
    Py_INCREF(intenum_cls);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gen g = {data, data + size, 0};
    PyObject *v = make(&g);
    if (!v) {
        PyErr_Clear();
        return 0;
    }
    tpar_buf b = {0};
    int rc = tpar__json_encode(&b, v);
    PyObject *ours_exc = NULL;
    if (rc < 0) {
        assert(PyErr_Occurred());
        PyObject *t, *e, *tb;
        PyErr_Fetch(&t, &e, &tb);
        ours_exc = t;
        Py_XDECREF(e);
        Py_XDECREF(tb);
    } else {
        assert(!PyErr_Occurred());
    }
    PyObject *ref = reference(v);
    PyObject *ref_exc = NULL;
    PyObject *ref_bytes = NULL;
    if (!ref) {
        PyObject *e, *tb;
        PyErr_Fetch(&ref_exc, &e, &tb);
        Py_XDECREF(e);
        Py_XDECREF(tb);
    } else {
        ref_bytes = PyUnicode_AsUTF8String(ref);
        if (!ref_bytes) { /* a lone surrogate: not UTF-8, so not JSON text for us */
            PyErr_Clear();
            ref_exc = Py_NewRef(PyExc_UnicodeEncodeError);
        }
    }
    if ((rc == 0) != (ref_exc == NULL)) {
        fprintf(stderr, "ours: %s, json.dumps: %s\n", rc == 0 ? "ok" : "failed",
                ref_exc ? ((PyTypeObject *)ref_exc)->tp_name : "ok");
        if (rc == 0)
            fprintf(stderr, "ours: %.*s\n", (int)(b.len < 400 ? b.len : 400), b.data);
        abort();
    }
    if (rc == 0) {
        Py_ssize_t n = PyBytes_GET_SIZE(ref_bytes);
        if ((size_t)n != b.len || memcmp(PyBytes_AS_STRING(ref_bytes), b.data, b.len)) {
            fprintf(stderr, "ours:      %.*s\njson.dumps: %.*s\n", (int)b.len, b.data, (int)n,
                    PyBytes_AS_STRING(ref_bytes));
            abort();
        }
        /* round trip (digit limit lifted: ints of any size come back) */
        PyObject *sys = PyImport_ImportModule("sys");
        PyObject *r = PyObject_CallMethod(sys, "set_int_max_str_digits", "i", 0);
        Py_XDECREF(r);
        PyObject *a = PyObject_CallOneArg(loads, ref);
        PyObject *text = PyUnicode_DecodeUTF8((const char *)b.data, (Py_ssize_t)b.len, "strict");
        PyObject *c = text ? PyObject_CallOneArg(loads, text) : NULL;
        /* NaN never equals itself, and json.dumps refused it: no NaN here */
        assert(a && c && PyObject_RichCompareBool(a, c, Py_EQ) == 1);
        r = PyObject_CallMethod(sys, "set_int_max_str_digits", "i", 4300);
        Py_XDECREF(r);
        Py_XDECREF(a);
        Py_XDECREF(c);
        Py_XDECREF(text);
        Py_DECREF(sys);
    } else if (ours_exc != ref_exc && ours_exc != PyExc_UnicodeEncodeError &&
               !(PyType_IsSubtype((PyTypeObject *)ours_exc, (PyTypeObject *)ref_exc) ||
                 PyType_IsSubtype((PyTypeObject *)ref_exc, (PyTypeObject *)ours_exc))) {
        fprintf(stderr, "ours raised %s, json.dumps %s\n", ((PyTypeObject *)ours_exc)->tp_name,
                ((PyTypeObject *)ref_exc)->tp_name);
        abort();
    }
    /* the digit limit is back where it was */
    PyObject *sys = PyImport_ImportModule("sys");
    PyObject *lim = PyObject_CallMethod(sys, "get_int_max_str_digits", NULL);
    assert(lim && PyLong_AsLong(lim) == 4300);
    Py_DECREF(lim);
    Py_DECREF(sys);
    Py_XDECREF(ours_exc);
    Py_XDECREF(ref_exc);
    Py_XDECREF(ref_bytes);
    Py_XDECREF(ref);
    Py_DECREF(v);
    tpar_buf_free(&b);
    return 0;
}
