/* A JSON encoder for the values a job returns.  It follows json.dumps
 * (allow_nan=False, ensure_ascii=False, compact separators): ints of any
 * size are exact, dict keys that are int/float/bool/None become strings,
 * and anything else is the TypeError json.dumps would raise. */
#include "jsonenc.h"

#include <string.h>

#define PUT(b, s, n)                                                           \
    do {                                                                       \
        if (tpar_buf_append((b), (s), (n)) < 0) {                              \
            PyErr_NoMemory();                                                  \
            return -1;                                                         \
        }                                                                      \
    } while (0)

static int put_str(tpar_buf *b, PyObject *s)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p)
        return -1;
    /* Worst case every byte becomes \u00XX. */
    if (tpar_buf_reserve(b, (size_t)n * 6 + 2) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    uint8_t *o = b->data + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = (uint8_t)hex[c >> 4]; *o++ = (uint8_t)hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

static int put_repr(tpar_buf *b, PyObject *obj, reprfunc repr)
{
    PyObject *r = repr(obj); /* the base type's repr: an IntEnum prints as 3 */
    if (!r)
        return -1;
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(r, &n);
    int rc = p ? tpar_buf_append(b, p, (size_t)n) : -1;
    Py_DECREF(r);
    if (p && rc < 0)
        PyErr_NoMemory();
    return p && rc == 0 ? 0 : -1;
}

long tpar__int_digits_lift(void)
{
    PyObject *get = PySys_GetObject("get_int_max_str_digits"); /* borrowed */
    PyObject *set = PySys_GetObject("set_int_max_str_digits");
    if (!get || !set)
        return -1; /* a Python without the limit */
    PyObject *old = PyObject_CallNoArgs(get);
    long n = old ? PyLong_AsLong(old) : -1;
    Py_XDECREF(old);
    PyObject *r = n > 0 ? PyObject_CallFunction(set, "i", 0) : NULL;
    Py_XDECREF(r);
    PyErr_Clear();
    return r ? n : -1;
}

void tpar__int_digits_restore(long old)
{
    PyObject *set = PySys_GetObject("set_int_max_str_digits");
    if (old < 0 || !set)
        return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb); /* keep a pending error */
    PyObject *r = PyObject_CallFunction(set, "l", old);
    Py_XDECREF(r);
    PyErr_Clear();
    PyErr_Restore(t, v, tb);
}

/* Only for an int too long for the limit: the retry is the cold path. */
static int put_long_unlimited(tpar_buf *b, PyObject *obj)
{
    if (!PyErr_ExceptionMatches(PyExc_ValueError))
        return -1;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    long old = tpar__int_digits_lift();
    if (old < 0) {
        PyErr_Restore(t, v, tb);
        return -1;
    }
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    int rc = put_repr(b, obj, PyLong_Type.tp_repr);
    tpar__int_digits_restore(old);
    return rc;
}

static int put_long(tpar_buf *b, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        size_t len = b->len;
        if (put_repr(b, obj, PyLong_Type.tp_repr) == 0)
            return 0;
        b->len = len;
        return put_long_unlimited(b, obj);
    }
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%lld", v);
    PUT(b, tmp, (size_t)n);
    return 0;
}

static int put_float(tpar_buf *b, PyObject *obj)
{
    double d = PyFloat_AS_DOUBLE(obj);
    if (!isfinite(d)) {
        PyObject *r = PyFloat_Type.tp_repr(obj);
        PyErr_Format(PyExc_ValueError,
                     "Out of range float values are not JSON compliant: %S", r);
        Py_XDECREF(r);
        return -1;
    }
    return put_repr(b, obj, PyFloat_Type.tp_repr);
}

/* A dict key as json.dumps turns it into a string. */
static int put_key(tpar_buf *b, PyObject *k)
{
    if (PyUnicode_Check(k))
        return put_str(b, k);
    if (k == Py_True || k == Py_False || k == Py_None) {
        const char *s = k == Py_True ? "\"true\"" : k == Py_False ? "\"false\"" : "\"null\"";
        PUT(b, s, strlen(s));
        return 0;
    }
    if (PyLong_Check(k) || PyFloat_Check(k)) {
        PUT(b, "\"", 1);
        if ((PyLong_Check(k) ? put_long(b, k) : put_float(b, k)) < 0)
            return -1;
        PUT(b, "\"", 1);
        return 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "keys must be str, int, float, bool or None, not %.100s",
                 Py_TYPE(k)->tp_name);
    return -1;
}

static int put_seq(tpar_buf *b, PyObject *obj)
{
    PyObject **items = PySequence_Fast_ITEMS(obj);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    PUT(b, "[", 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i)
            PUT(b, ",", 1);
        if (tpar__json_encode(b, items[i]) < 0)
            return -1;
    }
    PUT(b, "]", 1);
    return 0;
}

static int put_dict(tpar_buf *b, PyObject *obj)
{
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    int first = 1;
    PUT(b, "{", 1);
    while (PyDict_Next(obj, &pos, &k, &v)) {
        if (!first)
            PUT(b, ",", 1);
        first = 0;
        if (put_key(b, k) < 0)
            return -1;
        PUT(b, ":", 1);
        if (tpar__json_encode(b, v) < 0)
            return -1;
    }
    PUT(b, "}", 1);
    return 0;
}

int tpar__json_encode(tpar_buf *b, PyObject *obj)
{
    if (obj == Py_None) { PUT(b, "null", 4); return 0; }
    if (obj == Py_True) { PUT(b, "true", 4); return 0; }
    if (obj == Py_False) { PUT(b, "false", 5); return 0; }
    if (PyUnicode_Check(obj))
        return put_str(b, obj);
    if (PyLong_Check(obj))
        return put_long(b, obj);
    if (PyFloat_Check(obj))
        return put_float(b, obj);
    if (!PyList_Check(obj) && !PyTuple_Check(obj) && !PyDict_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "Object of type %.100s is not JSON serializable",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (Py_EnterRecursiveCall(" while encoding a JSON object"))
        return -1;
    int rc = PyDict_Check(obj) ? put_dict(b, obj) : put_seq(b, obj);
    Py_LeaveRecursiveCall();
    return rc;
}
