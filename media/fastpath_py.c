/*
 * media/fastpath_py.c: media._srtp.Plane, the Python binding of the C data plane
 * (fastpath.h, fastpath.c); media/fastpath.py is the typed API over it.
 *
 * Every method runs with the GIL held, and the loops never take it: a table change
 * waits (GIL held) for the loops' mutexes, at most one batch of theirs.  Because
 * removal also runs under the GIL, counters() may read a leg without a mutex (the
 * counters themselves are relaxed atomics with one writer each).
 *
 * The Plane keeps a reference to the media._srtp.Context objects it was given, so
 * their C cores live as long as a loop may use them.  A Context handed to a Plane
 * belongs to it: Python must not call it while it is attached (the loops call it
 * without the GIL); the relay reaches it through Plane.forward() instead.
 *
 * Rules of this file: Python objects here only; the data plane is fastpath.c's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "fastpath.h"
#include "fastpath_py.h"

typedef struct {
    PyObject_HEAD
    se_fp_plane *plane;
    PyObject **contexts; /* 2 per handle: inbound, outbound (owned references) */
    int draining;
} PlaneObject;

static int
plane_ok(PlaneObject *self)
{
    if (self->plane == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the plane is closed");
        return 0;
    }
    return 1;
}

static se_fp_leg *
leg_of(PlaneObject *self, long handle)
{
    se_fp_leg *leg;
    if (!plane_ok(self))
        return NULL;
    leg = handle >= 0 && handle <= 0x7fffffff ? se_fp_leg_of(self->plane, (uint32_t)handle) : NULL;
    if (leg == NULL)
        PyErr_Format(PyExc_KeyError, "no leg %ld in the plane", handle);
    return leg;
}

/* (host, port) or None -> se_fp_addr; 0, or -1 with an exception. */
static int
addr_from_py(PyObject *obj, se_fp_addr *out)
{
    const char *host;
    int port;

    memset(out, 0, sizeof *out);
    if (obj == Py_None)
        return 0;
    if (!PyArg_ParseTuple(obj, "si", &host, &port)) {
        PyErr_SetString(PyExc_TypeError, "an address is (host, port) or None");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (inet_pton(AF_INET, host, &out->u.in4.sin_addr) == 1) {
        out->u.in4.sin_family = AF_INET;
        out->u.in4.sin_port = htons((uint16_t)port);
        out->len = sizeof out->u.in4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) == 1) {
        out->u.in6.sin6_family = AF_INET6;
        out->u.in6.sin6_port = htons((uint16_t)port);
        out->len = sizeof out->u.in6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

static PyObject *
addr_to_py(const se_fp_addr *a)
{
    char text[INET6_ADDRSTRLEN];
    if (a->len == 0)
        Py_RETURN_NONE;
    if (a->u.sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->u.in4.sin_addr, text, sizeof text);
        return Py_BuildValue("(si)", text, (int)ntohs(a->u.in4.sin_port));
    }
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, text, sizeof text);
    return Py_BuildValue("(si)", text, (int)ntohs(a->u.in6.sin6_port));
}

static PyObject *
counters_to_py(const se_fp_counters *c)
{
    PyObject *drops = PyDict_New(), *out = NULL, *last_rx;
    uint64_t rx;
    if (drops == NULL)
        return NULL;
    for (int i = 0; i < SE_FP_N_DROPS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(se_fp_read(&c->drops[i]));
        if (v == NULL || PyDict_SetItemString(drops, se_fp_drop_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(drops);
            return NULL;
        }
        Py_DECREF(v);
    }
    rx = se_fp_read(&c->last_rx_ns);
    last_rx = rx ? PyFloat_FromDouble((double)rx / 1e9) : Py_NewRef(Py_None);
    if (last_rx == NULL) {
        Py_DECREF(drops);
        return NULL;
    }
    out = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsNsKsN}", "received", (unsigned long long)se_fp_read(&c->received),
        "packets_in", (unsigned long long)se_fp_read(&c->packets_in), "bytes_in",
        (unsigned long long)se_fp_read(&c->bytes_in), "rtcp_in",
        (unsigned long long)se_fp_read(&c->rtcp_in), "to_python",
        (unsigned long long)se_fp_read(&c->to_python), "packets_out",
        (unsigned long long)se_fp_read(&c->packets_out), "bytes_out",
        (unsigned long long)se_fp_read(&c->bytes_out), "rtcp_out",
        (unsigned long long)se_fp_read(&c->rtcp_out), "send_errors",
        (unsigned long long)se_fp_read(&c->send_errors), "last_rx", last_rx, "last_ssrc",
        (unsigned long long)se_fp_read(&c->last_ssrc), "drops", drops);
    return out;
}

/* ---------------------------------------------------------------- the type */

static int
Plane_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loops",      "max_legs",   "rtcp_rate", "rtcp_burst",
                             "punt_rate", "punt_burst", "cpus",      "poll_us",
                             "poll_busy_pct", NULL};
    PlaneObject *self = (PlaneObject *)op;
    int loops = 1;
    long max_legs = 65536;
    double rtcp_rate = 100.0, rtcp_burst = 200.0;
    double punt_rate = SE_FP_PUNT_RATE, punt_burst = SE_FP_PUNT_BURST;
    PyObject *cpus_obj = Py_None;
    int *cpus = NULL;
    int poll_us = 0, poll_busy_pct = 0;

    if (self->plane != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Plane is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|$lddddOii:Plane", kwlist, &loops, &max_legs,
                                     &rtcp_rate, &rtcp_burst, &punt_rate, &punt_burst,
                                     &cpus_obj, &poll_us, &poll_busy_pct))
        return -1;
    if (poll_busy_pct < 0 || poll_busy_pct > 100) {
        PyErr_SetString(PyExc_ValueError, "poll_busy_pct must be 0..100");
        return -1;
    }
    if (poll_us < 0 || poll_us > SE_FP_MAX_POLL_US) {
        PyErr_Format(PyExc_ValueError, "poll_us must be 0..%d", SE_FP_MAX_POLL_US);
        return -1;
    }
    if (!(punt_rate >= 0.0 && punt_burst >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "punt_rate and punt_burst must be >= 0");
        return -1;
    }
    if (loops < 1 || loops > SE_FP_MAX_LOOPS || max_legs < 1 || max_legs > (1L << 24)) {
        PyErr_Format(PyExc_ValueError, "need 1..%d loops and 1..2^24 legs", SE_FP_MAX_LOOPS);
        return -1;
    }
    if (cpus_obj != Py_None) {
        PyObject *seq = PySequence_Fast(cpus_obj, "cpus must be a sequence of CPU numbers");
        if (seq == NULL)
            return -1;
        if (PySequence_Fast_GET_SIZE(seq) != loops) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "cpus needs one CPU per loop");
            return -1;
        }
        cpus = PyMem_Calloc((size_t)loops, sizeof *cpus);
        if (cpus == NULL) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        for (int i = 0; i < loops; i++) {
            long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                PyMem_Free(cpus);
                return -1;
            }
            cpus[i] = (int)v;
        }
        Py_DECREF(seq);
    }
    self->contexts = PyMem_Calloc((size_t)max_legs * 2, sizeof(PyObject *));
    if (self->contexts == NULL) {
        PyMem_Free(cpus);
        PyErr_NoMemory();
        return -1;
    }
    self->plane = se_fp_new((unsigned)loops, (uint32_t)max_legs, rtcp_rate, rtcp_burst,
                            punt_rate, punt_burst, cpus);
    PyMem_Free(cpus);
    if (self->plane == NULL) {
        PyMem_Free(self->contexts);
        self->contexts = NULL;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* read by the loops once they start */
    self->plane->poll_ns = (uint64_t)poll_us * 1000u;
    self->plane->poll_busy_pct = (unsigned)poll_busy_pct;
    return 0;
}

static void
release_contexts(PlaneObject *self, uint32_t handle)
{
    Py_CLEAR(self->contexts[2 * handle]);
    Py_CLEAR(self->contexts[2 * handle + 1]);
}

static void
plane_close(PlaneObject *self)
{
    uint32_t max_legs;
    if (self->plane == NULL)
        return;
    max_legs = self->plane->max_legs;
    Py_BEGIN_ALLOW_THREADS
    se_fp_free(self->plane); /* joins the loops, closes the legs' fds */
    Py_END_ALLOW_THREADS
    self->plane = NULL;
    for (uint32_t i = 0; i < max_legs; i++)
        release_contexts(self, i);
    PyMem_Free(self->contexts);
    self->contexts = NULL;
}

static void
Plane_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    plane_close((PlaneObject *)op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
Plane_start(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PlaneObject *self = (PlaneObject *)op;
    int rc;
    if (!plane_ok(self))
        return NULL;
    if ((rc = se_fp_start(self->plane)) < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
Plane_stop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PlaneObject *self = (PlaneObject *)op;
    if (self->plane != NULL) {
        Py_BEGIN_ALLOW_THREADS
        se_fp_stop(self->plane);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *
Plane_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    plane_close((PlaneObject *)op);
    Py_RETURN_NONE;
}

static PyObject *
Plane_add_leg(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "rtcp_fd", "mux", "webrtc", "loop", NULL};
    PlaneObject *self = (PlaneObject *)op;
    int fd, rtcp_fd = -1, mux = 0, webrtc = 0, loop = -1;
    long handle;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|i$ppi:add_leg", kwlist, &fd, &rtcp_fd, &mux,
                                     &webrtc, &loop))
        return NULL;
    if (!plane_ok(self))
        return NULL;
    handle = se_fp_add(self->plane, fd, rtcp_fd,
                       (mux ? SE_FP_MUX : 0u) | (webrtc ? SE_FP_WEBRTC : 0u), loop);
    if (handle < 0) {
        errno = (int)-handle;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(handle);
}

static PyObject *
Plane_remove_leg(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle = PyLong_AsLong(arg);
    se_fp_counters final;
    if (handle == -1 && PyErr_Occurred())
        return NULL;
    if (leg_of(self, handle) == NULL)
        return NULL;
    se_fp_remove(self->plane, (uint32_t)handle, &final);
    release_contexts(self, (uint32_t)handle);
    return counters_to_py(&final);
}

static PyObject *
Plane_pair(PyObject *op, PyObject *args)
{
    PlaneObject *self = (PlaneObject *)op;
    long a, b = -1;
    PyObject *b_obj;
    se_fp_leg *la, *lb = NULL;

    if (!PyArg_ParseTuple(args, "lO:pair", &a, &b_obj))
        return NULL;
    if ((la = leg_of(self, a)) == NULL)
        return NULL;
    if (b_obj != Py_None) {
        b = PyLong_AsLong(b_obj);
        if ((b == -1 && PyErr_Occurred()) || (lb = leg_of(self, b)) == NULL)
            return NULL;
    }
    se_fp_lock_all(self->plane);
    se_fp_pair(la, lb);
    se_fp_unlock_all(self->plane);
    Py_RETURN_NONE;
}

static PyObject *
Plane_set_flags(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "mux", "webrtc", NULL};
    PlaneObject *self = (PlaneObject *)op;
    long handle;
    int mux, webrtc;
    se_fp_leg *leg;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "l$pp:set_flags", kwlist, &handle, &mux,
                                     &webrtc))
        return NULL;
    if ((leg = leg_of(self, handle)) == NULL)
        return NULL;
    se_fp_lock_all(self->plane);
    leg->flags = (mux ? SE_FP_MUX : 0u) | (webrtc ? SE_FP_WEBRTC : 0u);
    se_fp_unlock_all(self->plane);
    Py_RETURN_NONE;
}

static int
core_of(PyObject *obj, int direction, se_srtp_ctx **out)
{
    if (obj == Py_None) {
        *out = NULL;
        return 0;
    }
    if ((*out = se_py_context_core(obj)) == NULL)
        return -1;
    if ((*out)->direction != direction) {
        PyErr_SetString(PyExc_ValueError, direction == SE_SRTP_INBOUND
                                              ? "inbound needs an inbound Context"
                                              : "outbound needs an outbound Context");
        return -1;
    }
    return 0;
}

static PyObject *
Plane_set_crypto(PyObject *op, PyObject *args)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle;
    PyObject *in_obj, *out_obj, *old_in, *old_out;
    se_srtp_ctx *in, *out;
    se_fp_leg *leg;

    if (!PyArg_ParseTuple(args, "lOO:set_crypto", &handle, &in_obj, &out_obj))
        return NULL;
    if ((leg = leg_of(self, handle)) == NULL || core_of(in_obj, SE_SRTP_INBOUND, &in) < 0
        || core_of(out_obj, SE_SRTP_OUTBOUND, &out) < 0)
        return NULL;
    se_fp_lock_all(self->plane);
    leg->inbound = in;
    leg->outbound = out;
    se_fp_unlock_all(self->plane);
    old_in = self->contexts[2 * handle];
    old_out = self->contexts[2 * handle + 1];
    self->contexts[2 * handle] = in_obj == Py_None ? NULL : Py_NewRef(in_obj);
    self->contexts[2 * handle + 1] = out_obj == Py_None ? NULL : Py_NewRef(out_obj);
    Py_XDECREF(old_in); /* no loop uses them any more */
    Py_XDECREF(old_out);
    Py_RETURN_NONE;
}

static PyObject *
Plane_set_addresses(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "rtp_source", "rtcp_source", "rtp_destination",
                             "rtcp_destination", NULL};
    PlaneObject *self = (PlaneObject *)op;
    long handle;
    PyObject *objs[4];
    se_fp_addr addrs[4];
    se_fp_leg *leg;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "lOOOO:set_addresses", kwlist, &handle,
                                     &objs[0], &objs[1], &objs[2], &objs[3]))
        return NULL;
    if ((leg = leg_of(self, handle)) == NULL)
        return NULL;
    for (int i = 0; i < 4; i++)
        if (addr_from_py(objs[i], &addrs[i]) < 0)
            return NULL;
    se_fp_lock_all(self->plane);
    /* A new accepted source: the SSRC the latch follows is that source's to learn
     * (the loop is parked: writing its counter here races with nothing). */
    if (memcmp(&leg->rtp_src, &addrs[0], sizeof addrs[0]) != 0)
        __atomic_store_n(&leg->c.rtp_ssrc, 0, __ATOMIC_RELAXED);
    if (memcmp(&leg->rtcp_src, &addrs[1], sizeof addrs[1]) != 0)
        __atomic_store_n(&leg->c.rtcp_ssrc, 0, __ATOMIC_RELAXED);
    leg->rtp_src = addrs[0];
    leg->rtcp_src = addrs[1];
    leg->rtp_dst = addrs[2];
    leg->rtcp_dst = addrs[3];
    se_fp_unlock_all(self->plane);
    Py_RETURN_NONE;
}

static PyObject *
Plane_set_endpoint_host(PyObject *op, PyObject *args)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle;
    PyObject *host;
    se_fp_addr addr;
    se_fp_leg *leg;

    if (!PyArg_ParseTuple(args, "lO:set_endpoint_host", &handle, &host))
        return NULL;
    if ((leg = leg_of(self, handle)) == NULL)
        return NULL;
    if (host == Py_None) {
        memset(&addr, 0, sizeof addr);
    } else {
        PyObject *pair = Py_BuildValue("(Oi)", host, 0);
        int bad = pair == NULL || addr_from_py(pair, &addr) < 0;
        Py_XDECREF(pair);
        if (bad)
            return NULL;
    }
    se_fp_lock_all(self->plane);
    leg->sig_host = addr;
    se_fp_unlock_all(self->plane);
    Py_RETURN_NONE;
}

static PyObject *
Plane_addresses(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle = PyLong_AsLong(arg);
    se_fp_leg *leg;
    se_fp_addr a[4];
    if ((handle == -1 && PyErr_Occurred()) || (leg = leg_of(self, handle)) == NULL)
        return NULL;
    se_fp_lock_all(self->plane);
    a[0] = leg->rtp_src;
    a[1] = leg->rtcp_src;
    a[2] = leg->rtp_dst;
    a[3] = leg->rtcp_dst;
    se_fp_unlock_all(self->plane);
    return Py_BuildValue("(NNNN)", addr_to_py(&a[0]), addr_to_py(&a[1]), addr_to_py(&a[2]),
                         addr_to_py(&a[3]));
}

static PyObject *
Plane_counters(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle = PyLong_AsLong(arg);
    se_fp_leg *leg;
    if ((handle == -1 && PyErr_Occurred()) || (leg = leg_of(self, handle)) == NULL)
        return NULL;
    return counters_to_py(&leg->c);
}

static PyObject *
ssrc_to_py(uint64_t v)
{
    if (!(v & SE_FP_SSRC_SEEN))
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong((unsigned long)(v & 0xffffffffu));
}

static PyObject *
Plane_ssrcs(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle = PyLong_AsLong(arg);
    se_fp_leg *leg;
    if ((handle == -1 && PyErr_Occurred()) || (leg = leg_of(self, handle)) == NULL)
        return NULL;
    return Py_BuildValue("(NN)", ssrc_to_py(se_fp_read(&leg->c.rtp_ssrc)),
                         ssrc_to_py(se_fp_read(&leg->c.rtcp_ssrc)));
}

static PyObject *
Plane_drop_sources(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle = PyLong_AsLong(arg);
    se_fp_leg *leg;
    se_fp_addr src[SE_FP_N_DROPS];
    PyObject *out;
    if ((handle == -1 && PyErr_Occurred()) || (leg = leg_of(self, handle)) == NULL)
        return NULL;
    se_fp_lock_all(self->plane);
    memcpy(src, leg->drop_src, sizeof src);
    se_fp_unlock_all(self->plane);
    if ((out = PyDict_New()) == NULL)
        return NULL;
    for (int i = 0; i < SE_FP_N_DROPS; i++) {
        PyObject *a;
        if (src[i].len == 0)
            continue;
        if ((a = addr_to_py(&src[i])) == NULL
            || PyDict_SetItemString(out, se_fp_drop_names[i], a) < 0) {
            Py_XDECREF(a);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(a);
    }
    return out;
}

static PyObject *
Plane_set_clock(PyObject *op, PyObject *arg)
{
    PlaneObject *self = (PlaneObject *)op;
    uint64_t ns = 0;
    if (!plane_ok(self))
        return NULL;
    if (arg != Py_None) {
        double seconds = PyFloat_AsDouble(arg);
        if (seconds == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(seconds > 0.0 && seconds < 1e9)) {
            PyErr_SetString(PyExc_ValueError, "the clock must be in (0, 1e9) seconds");
            return NULL;
        }
        ns = (uint64_t)(seconds * 1e9);
    }
    __atomic_store_n(&self->plane->clock_ns, ns, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *
verdict_to_py(int v)
{
    if (v == SE_FP_FORWARDED)
        return PyUnicode_FromString("forwarded");
    if (v == SE_FP_SEND_ERROR)
        return PyUnicode_FromString("send_error");
    return PyUnicode_FromString(se_fp_drop_names[v]);
}

static PyObject *
Plane_forward(PyObject *op, PyObject *args)
{
    PlaneObject *self = (PlaneObject *)op;
    long handle;
    int rtcp, authenticated = 0, v;
    Py_buffer in;
    uint8_t buf[SE_FP_ROOM];
    size_t sent = 0;
    PyObject *verdict;

    if (!PyArg_ParseTuple(args, "lpy*:forward", &handle, &rtcp, &in))
        return NULL;
    if (leg_of(self, handle) == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    if (in.len > SE_FP_MAX_DATAGRAM) {
        PyBuffer_Release(&in);
        return Py_BuildValue("(sOn)", "too_long", Py_False, (Py_ssize_t)0);
    }
    memcpy(buf, in.buf, (size_t)in.len);
    v = se_fp_forward(self->plane, (uint32_t)handle, rtcp, buf, (size_t)in.len, sizeof buf,
                      &authenticated, &sent);
    PyBuffer_Release(&in);
    if ((verdict = verdict_to_py(v)) == NULL)
        return NULL;
    return Py_BuildValue("(NOn)", verdict, authenticated ? Py_True : Py_False,
                         (Py_ssize_t)sent);
}

static PyObject *
Plane_drain(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    PlaneObject *self = (PlaneObject *)op;
    Py_ssize_t max = 1024;
    PyObject *list;
    uint64_t x;

    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "drain([max])");
        return NULL;
    }
    if (nargs == 1 && (max = PyLong_AsSsize_t(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (!plane_ok(self))
        return NULL;
    if ((list = PyList_New(0)) == NULL)
        return NULL;
    if (self->draining) /* re-entered from a finalizer: the outer drain goes on */
        return list;
    self->draining = 1;
    if (read(self->plane->punt_fd, &x, sizeof x) < 0) { /* EAGAIN: nothing signalled */
    }
    /* Python handles a drain's datagrams before it drains again (FastPath.drain) */
    for (unsigned i = 0; i < self->plane->n_loops; i++)
        se_fp_ring_handled(&self->plane->loops[i]);
    for (unsigned i = 0; i < self->plane->n_loops && PyList_GET_SIZE(list) < max; i++) {
        se_fp_loop *lp = &self->plane->loops[i];
        const se_fp_punt *e;
        while (PyList_GET_SIZE(list) < max && (e = se_fp_ring_front(lp)) != NULL) {
            PyObject *item = Py_BuildValue("(IiOy#N)", e->handle, (int)e->kind,
                                           e->on_rtcp_socket ? Py_True : Py_False,
                                           (const char *)e->data, (Py_ssize_t)e->len,
                                           addr_to_py(&e->src));
            se_fp_ring_pop(lp);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                self->draining = 0;
                return NULL;
            }
            Py_DECREF(item);
        }
    }
    self->draining = 0;
    return list;
}

static PyObject *
Plane_loop_stats(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PlaneObject *self = (PlaneObject *)op;
    PyObject *list;
    if (!plane_ok(self))
        return NULL;
    if ((list = PyList_New((Py_ssize_t)self->plane->n_loops)) == NULL)
        return NULL;
    for (unsigned i = 0; i < self->plane->n_loops; i++) {
        se_fp_loop *lp = &self->plane->loops[i];
        PyObject *d = Py_BuildValue(
            "{sKsKsKsKsKsKsOsOsIsO}", "wakeups", (unsigned long long)se_fp_read(&lp->stats.wakeups),
            "recv_calls", (unsigned long long)se_fp_read(&lp->stats.recv_calls), "send_calls",
            (unsigned long long)se_fp_read(&lp->stats.send_calls), "packets",
            (unsigned long long)se_fp_read(&lp->stats.packets), "sent",
            (unsigned long long)se_fp_read(&lp->stats.sent), "busy_ns",
            (unsigned long long)se_fp_read(&lp->stats.busy_ns), "polling",
            se_fp_read(&lp->stats.polling) ? Py_True : Py_False, "poll_mode",
            se_fp_read(&lp->stats.poll_mode) ? Py_True : Py_False, "legs", lp->n_legs, "running",
            lp->running ? Py_True : Py_False);
        if (d == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    return list;
}

static PyObject *
Plane_get_punt_fd(PyObject *op, void *Py_UNUSED(closure))
{
    PlaneObject *self = (PlaneObject *)op;
    return plane_ok(self) ? PyLong_FromLong(self->plane->punt_fd) : NULL;
}

static PyObject *
Plane_get_loops(PyObject *op, void *Py_UNUSED(closure))
{
    PlaneObject *self = (PlaneObject *)op;
    return plane_ok(self) ? PyLong_FromUnsignedLong(self->plane->n_loops) : NULL;
}

static PyObject *
Plane_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((PlaneObject *)op)->plane == NULL);
}

static PyMethodDef Plane_methods[] = {
    {"start", Plane_start, METH_NOARGS, "start(): run the loop threads."},
    {"stop", Plane_stop, METH_NOARGS, "stop(): stop and join the loop threads (idempotent)."},
    {"close", Plane_close, METH_NOARGS, "close(): stop, close every leg's fds, free the table."},
    {"add_leg", (PyCFunction)(void (*)(void))Plane_add_leg, METH_VARARGS | METH_KEYWORDS,
     "add_leg(fd, rtcp_fd=-1, *, mux=False, webrtc=False, loop=-1) -> handle"},
    {"remove_leg", Plane_remove_leg, METH_O, "remove_leg(handle) -> final counters"},
    {"pair", Plane_pair, METH_VARARGS, "pair(a, b | None): peers (a == b: an echo leg)"},
    {"set_flags", (PyCFunction)(void (*)(void))Plane_set_flags, METH_VARARGS | METH_KEYWORDS,
     "set_flags(handle, *, mux, webrtc)"},
    {"set_crypto", Plane_set_crypto, METH_VARARGS,
     "set_crypto(handle, inbound, outbound): Contexts or None"},
    {"set_addresses", (PyCFunction)(void (*)(void))Plane_set_addresses,
     METH_VARARGS | METH_KEYWORDS,
     "set_addresses(handle, rtp_source, rtcp_source, rtp_destination, rtcp_destination)"},
    {"set_endpoint_host", Plane_set_endpoint_host, METH_VARARGS,
     "set_endpoint_host(handle, ip | None): the IP the endpoint's SIP came from"},
    {"addresses", Plane_addresses, METH_O, "addresses(handle) -> the four addresses"},
    {"counters", Plane_counters, METH_O, "counters(handle) -> dict"},
    {"ssrcs", Plane_ssrcs, METH_O,
     "ssrcs(handle) -> (rtp, rtcp): SSRCs last accepted from the source, None: none yet"},
    {"drop_sources", Plane_drop_sources, METH_O,
     "drop_sources(handle) -> {reason: the source of the last datagram dropped for it}"},
    {"set_clock", Plane_set_clock, METH_O,
     "set_clock(seconds | None): the loops' clock (None: CLOCK_MONOTONIC)"},
    {"forward", Plane_forward, METH_VARARGS,
     "forward(handle, rtcp, datagram) -> (verdict, authenticated, bytes sent)"},
    {"drain", (PyCFunction)(void (*)(void))Plane_drain, METH_FASTCALL,
     "drain(max=1024) -> [(handle, kind, on_rtcp_socket, datagram, source)]"},
    {"loop_stats", Plane_loop_stats, METH_NOARGS, "loop_stats() -> one dict per loop"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Plane_getset[] = {
    {"punt_fd", Plane_get_punt_fd, NULL, "eventfd readable when punted datagrams wait", NULL},
    {"loops", Plane_get_loops, NULL, "number of loop threads", NULL},
    {"closed", Plane_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Plane_slots[] = {
    {Py_tp_doc, (void *)"Plane(loops, *, max_legs=65536, rtcp_rate=100.0, rtcp_burst=200.0, "
                        "punt_rate=PLANE_PUNT_RATE, punt_burst=PLANE_PUNT_BURST, cpus=None): "
                        "the relay's C data plane (see media/fastpath.py)."},
    {Py_tp_init, Plane_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Plane_dealloc},
    {Py_tp_methods, Plane_methods},
    {Py_tp_getset, Plane_getset},
    {0, NULL},
};

static PyType_Spec Plane_spec = {
    .name = "media._srtp.Plane",
    .basicsize = sizeof(PlaneObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Plane_slots,
};

static int
add_float(PyObject *module, const char *name, double value)
{
    PyObject *v = PyFloat_FromDouble(value);
    int rc = v == NULL ? -1 : PyModule_AddObjectRef(module, name, v);
    Py_XDECREF(v);
    return rc;
}

int
se_fastpath_register(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &Plane_spec, NULL);
    PyObject *names;
    if (type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "Plane", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    Py_DECREF(type);
    names = PyTuple_New(SE_FP_N_DROPS);
    if (names == NULL)
        return -1;
    for (int i = 0; i < SE_FP_N_DROPS; i++) {
        PyObject *s = PyUnicode_FromString(se_fp_drop_names[i]);
        if (s == NULL) {
            Py_DECREF(names);
            return -1;
        }
        PyTuple_SET_ITEM(names, i, s);
    }
    if (PyModule_AddObjectRef(module, "PLANE_DROPS", names) < 0) {
        Py_DECREF(names);
        return -1;
    }
    Py_DECREF(names);
    if (add_float(module, "PLANE_PUNT_RATE", SE_FP_PUNT_RATE) < 0
        || add_float(module, "PLANE_PUNT_BURST", SE_FP_PUNT_BURST) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "PLANE_MAX_DATAGRAM", SE_FP_MAX_DATAGRAM);
}
