/*
 * media._srtp: the Python binding of the C SRTP core (srtp_core.h / srtp_core.c),
 * compiled into one extension module with it.
 *
 *   - media._srtp.Plane is the relay's C data plane (fastpath.c, bound in
 *     fastpath_py.c; media/fastpath.py is its API).
 *   - media._srtp.Context has the same API as the pure Python twin
 *     (media/_srtp_py.py); media/srtp.py picks one of the two.
 *   - media._srtp.SipScanner is the C twin of the tokenizing half of
 *     sip.message.parse_message (sipscan.c); sip/message.py uses it when it imports.
 *   - media._srtp.SipValueParser holds the C fast paths of the typed header values
 *     (Via, URI, NameAddr, Contact, CSeq) that sip.message tries first (sipvalues.c).
 *   - media._srtp.SipHeaderChecker is the C twin of sip.message._check_headers, the
 *     header checks and typed values after tokenizing (sipcheck.c).
 *   - The C API capsule media._srtp._C_API (se_srtp_capi) lets C code outside this
 *     module run the core without the GIL; the fast path, compiled into this
 *     module, calls the core directly.
 *
 * Rules of this file: module state via multi-phase init (PEP 489); no warnings
 * under -Wall -Wextra -Werror.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "srtp_core.h"
#include "fastpath_py.h"
#include "sipscan.h"
#include "sipvalues.h"
#include "sipcheck.h"


/*
 * The table a C loop (the fast path of issue 7) uses to run this core without
 * Python: get it once with PyCapsule_Import("media._srtp._C_API", 0), check
 * version, take the se_srtp_ctx of each media._srtp.Context the control plane
 * hands over (context_core(), with the GIL), keep a reference to that Context
 * object for as long as the pointer is used, and then call the per-packet
 * functions without the GIL.  A context is not thread-safe: one thread uses it
 * at a time (the loop that owns the leg); Python must not call the same
 * Context meanwhile.  Counters are plain uint64_t, read without a lock.
 *
 * The per-packet functions take the packet in src[0:len] and write the result
 * to dst[0:*out_len], dst == src for in place, cap = bytes available at dst.
 * They return SE_SRTP_OK or an se_srtp_status; on any error neither dst nor
 * the context changed (except the counters).
 */
#define SE_SRTP_CAPI_VERSION 1
typedef int (*se_srtp_transform_fn)(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst,
                                    size_t cap, size_t *out_len);
typedef struct {
    unsigned int version;
    se_srtp_ctx *(*context_core)(PyObject *context); /* NULL + TypeError if not a Context */
    se_srtp_transform_fn protect_rtp;
    se_srtp_transform_fn unprotect_rtp;
    se_srtp_transform_fn protect_rtcp;
    se_srtp_transform_fn unprotect_rtcp;
    const se_srtp_counters *(*counters)(const se_srtp_ctx *c);
} se_srtp_capi;

/* ======================================================================
 * Part 2: the Python binding
 * ====================================================================== */

typedef struct {
    PyTypeObject *context_type;
    PyObject *srtp_error; /* media.suites.SrtpError */
    PyObject *get_suite;  /* media.suites.get_suite */
    PyObject *reasons[SE_SRTP_N_REASONS]; /* "short", ... by status code */
    se_srtp_capi capi;
} module_state;

static const char *const reason_names[SE_SRTP_N_REASONS] = {
    NULL, "short", "format", "auth", "replay", "ssrc_limit",
};

typedef struct {
    PyObject_HEAD
    se_srtp_ctx *ctx;
    PyObject *suite;     /* the media.suites.SrtpSuite */
    PyObject *suite_name;
    PyObject *weakreflist;
} ContextObject;

static inline module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

static module_state *
state_of_type(PyTypeObject *tp)
{
    return (module_state *)PyType_GetModuleState(tp);
}

/* Turn a non-OK status into a Python exception; returns NULL. */
static PyObject *
raise_status(module_state *st, int rc)
{
    switch (rc) {
    case SE_SRTP_ERR_SHORT:
    case SE_SRTP_ERR_FORMAT:
    case SE_SRTP_ERR_AUTH:
    case SE_SRTP_ERR_REPLAY:
    case SE_SRTP_ERR_SSRC_LIMIT: {
        PyObject *exc = PyObject_CallOneArg(st->srtp_error, st->reasons[rc]);
        if (exc != NULL) {
            PyErr_SetObject(st->srtp_error, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    case SE_SRTP_ERR_SPACE:
        PyErr_SetString(PyExc_ValueError, "buffer too small for the result");
        return NULL;
    case SE_SRTP_ERR_DIRECTION:
        PyErr_SetString(PyExc_ValueError,
                        "wrong direction: protect needs an outbound context, unprotect an "
                        "inbound one");
        return NULL;
    default:
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed during an SRTP transform");
        return NULL;
    }
}

static long
get_int_attr(PyObject *obj, const char *name)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    long r;
    if (v == NULL)
        return -1;
    r = PyLong_AsLong(v);
    Py_DECREF(v);
    return r;
}

static int
attr_equals(PyObject *obj, const char *name, const char *expected)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    int r;
    if (v == NULL)
        return -1;
    r = PyUnicode_Check(v) && PyUnicode_CompareWithASCIIString(v, expected) == 0;
    Py_DECREF(v);
    return r;
}

static int
Context_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"master_key", "master_salt", "suite", "direction", "max_ssrcs",
                             NULL};
    ContextObject *self = (ContextObject *)op;
    module_state *st = state_of_type(Py_TYPE(op));
    Py_buffer key = {0}, salt = {0};
    PyObject *suite_arg, *suite = NULL;
    const char *direction = NULL;
    int max_ssrcs = 16, dir, rc = -1;
    long key_len, salt_len, rtp_tag, rtcp_tag;
    se_srtp_params params;
    se_srtp_ctx *ctx;

    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Context is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*O|$si:Context", kwlist, &key, &salt,
                                     &suite_arg, &direction, &max_ssrcs))
        return -1;
    if (direction == NULL) {
        PyErr_SetString(PyExc_TypeError, "Context() needs direction='inbound' or 'outbound'");
        goto done;
    }
    if (strcmp(direction, "outbound") == 0) {
        dir = SE_SRTP_OUTBOUND;
    } else if (strcmp(direction, "inbound") == 0) {
        dir = SE_SRTP_INBOUND;
    } else {
        PyErr_Format(PyExc_ValueError, "direction must be 'inbound' or 'outbound', not '%s'",
                     direction);
        goto done;
    }
    if (max_ssrcs < 1 || max_ssrcs > SE_SRTP_MAX_SSRCS) {
        PyErr_Format(PyExc_ValueError, "max_ssrcs must be in 1..%d", SE_SRTP_MAX_SSRCS);
        goto done;
    }
    suite = PyObject_CallOneArg(st->get_suite, suite_arg);
    if (suite == NULL)
        goto done;
    {
        int cipher_ok = attr_equals(suite, "cipher", "AES_CM_128");
        int auth_ok = attr_equals(suite, "auth", "HMAC_SHA1");
        if (cipher_ok < 0 || auth_ok < 0)
            goto done;
        key_len = get_int_attr(suite, "master_key_len");
        salt_len = get_int_attr(suite, "master_salt_len");
        rtp_tag = get_int_attr(suite, "rtp_tag_len");
        rtcp_tag = get_int_attr(suite, "rtcp_tag_len");
        if (PyErr_Occurred())
            goto done;
        if (!cipher_ok || !auth_ok || key_len != SE_SRTP_KEY_LEN || salt_len != SE_SRTP_SALT_LEN
            || rtp_tag < 1 || rtp_tag > SE_SRTP_MAX_TAG || rtcp_tag < 1
            || rtcp_tag > SE_SRTP_MAX_TAG) {
            PyErr_Format(PyExc_ValueError, "the C SRTP core does not implement suite %R", suite);
            goto done;
        }
    }
    if (key.len != key_len) {
        PyErr_Format(PyExc_ValueError, "master key must be %ld bytes, got %zd", key_len, key.len);
        goto done;
    }
    if (salt.len != salt_len) {
        PyErr_Format(PyExc_ValueError, "master salt must be %ld bytes, got %zd", salt_len,
                     salt.len);
        goto done;
    }
    params.rtp_tag_len = (unsigned)rtp_tag;
    params.rtcp_tag_len = (unsigned)rtcp_tag;
    ctx = se_srtp_new(&params, key.buf, salt.buf, dir, (unsigned)max_ssrcs);
    if (ctx == NULL) {
        PyErr_SetString(PyExc_MemoryError, "cannot create the SRTP context (libcrypto)");
        goto done;
    }
    self->suite_name = PyObject_GetAttrString(suite, "name");
    if (self->suite_name == NULL) {
        se_srtp_free(ctx);
        goto done;
    }
    self->ctx = ctx;
    self->suite = suite;
    suite = NULL;
    rc = 0;
done:
    Py_XDECREF(suite);
    if (key.obj != NULL)
        PyBuffer_Release(&key);
    if (salt.obj != NULL)
        PyBuffer_Release(&salt);
    return rc;
}

static int
Context_traverse(PyObject *op, visitproc visit, void *arg)
{
    ContextObject *self = (ContextObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->suite);
    return 0;
}

static int
Context_clear(PyObject *op)
{
    ContextObject *self = (ContextObject *)op;
    Py_CLEAR(self->suite);
    return 0;
}

static void
Context_dealloc(PyObject *op)
{
    ContextObject *self = (ContextObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs(op);
    se_srtp_free(self->ctx);
    self->ctx = NULL;
    Py_CLEAR(self->suite);
    Py_CLEAR(self->suite_name);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static se_srtp_ctx *
context_ctx(ContextObject *self)
{
    if (self->ctx == NULL)
        PyErr_SetString(PyExc_RuntimeError, "Context was not initialised");
    return self->ctx;
}

/* The four transforms, as the Python methods see them. */
enum { T_PROTECT_RTP, T_UNPROTECT_RTP, T_PROTECT_RTCP, T_UNPROTECT_RTCP };
static const struct {
    se_srtp_transform_fn fn;
    int grows; /* protect adds the trailer, unprotect removes it */
    int rtcp;  /* trailer: tag (RTP) or E|index + tag (RTCP) */
} transforms[] = {
    [T_PROTECT_RTP] = {se_srtp_protect_rtp, 1, 0},
    [T_UNPROTECT_RTP] = {se_srtp_unprotect_rtp, 0, 0},
    [T_PROTECT_RTCP] = {se_srtp_protect_rtcp, 1, 1},
    [T_UNPROTECT_RTCP] = {se_srtp_unprotect_rtcp, 0, 1},
};

/* transform(packet) -> bytes: the result in a new bytes object of its exact
 * size (the trailer length is fixed per context). */
static PyObject *
transform_to_bytes(PyObject *op, PyObject *arg, int kind)
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    Py_buffer in;
    PyObject *out;
    Py_ssize_t out_size, trailer;
    size_t out_len = 0;
    int rc;

    if (ctx == NULL)
        return NULL;
    trailer = transforms[kind].rtcp ? SE_SRTP_SRTCP_INDEX + ctx->params.rtcp_tag_len
                                    : ctx->params.rtp_tag_len;
    if (PyBytes_CheckExact(arg)) { /* the common case, without the buffer protocol */
        in.obj = NULL;
        in.buf = PyBytes_AS_STRING(arg);
        in.len = PyBytes_GET_SIZE(arg);
    } else if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (transforms[kind].grows)
        out_size = in.len + trailer;
    else
        out_size = in.len > trailer ? in.len - trailer : 0;
    out = PyBytes_FromStringAndSize(NULL, out_size);
    if (out == NULL) {
        if (in.obj != NULL)
            PyBuffer_Release(&in);
        return NULL;
    }
    rc = transforms[kind].fn(ctx, (const uint8_t *)in.buf, (size_t)in.len,
                             (uint8_t *)PyBytes_AS_STRING(out), (size_t)out_size, &out_len);
    if (in.obj != NULL)
        PyBuffer_Release(&in);
    if (rc != SE_SRTP_OK) {
        Py_DECREF(out);
        return raise_status(state_of_type(Py_TYPE(op)), rc);
    }
    return out;
}

/* transform_into(buffer, length) -> int: in place on a writable buffer. */
static PyObject *
transform_into(PyObject *op, PyObject *const *args, Py_ssize_t nargs, int kind)
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    Py_buffer buf;
    Py_ssize_t length;
    size_t out_len = 0;
    int rc;

    if (ctx == NULL)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (buffer, length)");
        return NULL;
    }
    length = PyLong_AsSsize_t(args[1]);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (length < 0 || length > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "length must be within the buffer");
        return NULL;
    }
    rc = transforms[kind].fn(ctx, (const uint8_t *)buf.buf, (size_t)length, (uint8_t *)buf.buf,
                             (size_t)buf.len, &out_len);
    PyBuffer_Release(&buf);
    if (rc != SE_SRTP_OK)
        return raise_status(state_of_type(Py_TYPE(op)), rc);
    return PyLong_FromSize_t(out_len);
}

#define TRANSFORM_METHODS(name, kind)                                                          \
    static PyObject *Context_##name(PyObject *op, PyObject *arg)                               \
    {                                                                                          \
        return transform_to_bytes(op, arg, kind);                                              \
    }                                                                                          \
    static PyObject *Context_##name##_into(PyObject *op, PyObject *const *args,                \
                                           Py_ssize_t nargs)                                   \
    {                                                                                          \
        return transform_into(op, args, nargs, kind);                                          \
    }

TRANSFORM_METHODS(protect_rtp, T_PROTECT_RTP)
TRANSFORM_METHODS(unprotect_rtp, T_UNPROTECT_RTP)
TRANSFORM_METHODS(protect_rtcp, T_PROTECT_RTCP)
TRANSFORM_METHODS(unprotect_rtcp, T_UNPROTECT_RTCP)

static PyObject *
Context_counters(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    const se_srtp_counters *k;
    if (ctx == NULL)
        return NULL;
    k = &ctx->counters;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsK}", "rtp_packets", (unsigned long long)k->rtp_packets, "rtcp_packets",
        (unsigned long long)k->rtcp_packets, "auth_failures",
        (unsigned long long)k->refused[SE_SRTP_ERR_AUTH], "replays",
        (unsigned long long)k->refused[SE_SRTP_ERR_REPLAY], "short",
        (unsigned long long)k->refused[SE_SRTP_ERR_SHORT], "format",
        (unsigned long long)k->refused[SE_SRTP_ERR_FORMAT], "ssrc_limit",
        (unsigned long long)k->refused[SE_SRTP_ERR_SSRC_LIMIT]);
}

static PyObject *
Context_roc(PyObject *op, PyObject *arg)
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    long long ssrc;
    se_stream *s;
    if (ctx == NULL)
        return NULL;
    ssrc = PyLong_AsLongLong(arg);
    if (ssrc == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
    }
    if (ssrc < 0 || ssrc > 0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "SSRC must fit in 32 bits");
        return NULL;
    }
    s = se_stream_find(ctx, (uint32_t)ssrc);
    if (s == NULL || !s->rtp.seen)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong((unsigned long)(s->rtp.top >> 16));
}

static PyObject *
Context_ssrcs(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    PyObject *list;
    if (ctx == NULL)
        return NULL;
    list = PyList_New((Py_ssize_t)ctx->n_streams);
    if (list == NULL)
        return NULL;
    for (unsigned i = 0; i < ctx->n_streams; i++) {
        PyObject *v = PyLong_FromUnsignedLong(ctx->streams[i].ssrc);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

static PyObject *
Context_get_suite(PyObject *op, void *Py_UNUSED(closure))
{
    ContextObject *self = (ContextObject *)op;
    if (context_ctx(self) == NULL)
        return NULL;
    return Py_NewRef(self->suite_name);
}

static PyObject *
Context_get_direction(PyObject *op, void *Py_UNUSED(closure))
{
    se_srtp_ctx *ctx = context_ctx((ContextObject *)op);
    if (ctx == NULL)
        return NULL;
    return PyUnicode_FromString(ctx->direction == SE_SRTP_OUTBOUND ? "outbound" : "inbound");
}

static PyObject *
Context_repr(PyObject *op)
{
    ContextObject *self = (ContextObject *)op;
    if (self->ctx == NULL)
        return PyUnicode_FromString("<media._srtp.Context (uninitialised)>");
    return PyUnicode_FromFormat("<media._srtp.Context %U %s, %u SSRCs>", self->suite_name,
                                self->ctx->direction == SE_SRTP_OUTBOUND ? "outbound"
                                                                         : "inbound",
                                self->ctx->n_streams);
}

static PyMethodDef Context_methods[] = {
    {"protect_rtp", Context_protect_rtp, METH_O,
     "protect_rtp(packet) -> bytes: RTP in, SRTP out (outbound contexts)."},
    {"unprotect_rtp", Context_unprotect_rtp, METH_O,
     "unprotect_rtp(packet) -> bytes: SRTP in, RTP out (inbound contexts)."},
    {"protect_rtcp", Context_protect_rtcp, METH_O,
     "protect_rtcp(packet) -> bytes: RTCP in, SRTCP out (outbound contexts)."},
    {"unprotect_rtcp", Context_unprotect_rtcp, METH_O,
     "unprotect_rtcp(packet) -> bytes: SRTCP in, RTCP out (inbound contexts)."},
    {"protect_rtp_into", (PyCFunction)(void (*)(void))(Context_protect_rtp_into), METH_FASTCALL,
     "protect_rtp_into(buffer, length) -> int: in place; the buffer needs room for the tag."},
    {"unprotect_rtp_into", (PyCFunction)(void (*)(void))(Context_unprotect_rtp_into), METH_FASTCALL,
     "unprotect_rtp_into(buffer, length) -> int: in place; returns the RTP length."},
    {"protect_rtcp_into", (PyCFunction)(void (*)(void))(Context_protect_rtcp_into), METH_FASTCALL,
     "protect_rtcp_into(buffer, length) -> int: in place; room for index and tag needed."},
    {"unprotect_rtcp_into", (PyCFunction)(void (*)(void))(Context_unprotect_rtcp_into), METH_FASTCALL,
     "unprotect_rtcp_into(buffer, length) -> int: in place; returns the RTCP length."},
    {"counters", Context_counters, METH_NOARGS,
     "counters() -> dict: packets transformed and packets refused, by reason."},
    {"roc", Context_roc, METH_O,
     "roc(ssrc) -> int | None: roll-over counter of the highest SRTP index of that SSRC."},
    {"ssrcs", Context_ssrcs, METH_NOARGS, "ssrcs() -> list[int]: the SSRCs this context tracks."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Context_getset[] = {
    {"suite", Context_get_suite, NULL, "RFC 4568 name of the suite.", NULL},
    {"direction", Context_get_direction, NULL, "'inbound' or 'outbound'.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Context_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ContextObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(Context_doc,
             "Context(master_key, master_salt, suite, *, direction, max_ssrcs=16)\n\n"
             "One direction of SRTP and SRTCP under one master key (RFC 3711), for up to\n"
             "max_ssrcs SSRCs.  'outbound' contexts protect, 'inbound' ones unprotect.\n"
             "A refused packet raises media.suites.SrtpError with its reason.");

static PyType_Slot Context_slots[] = {
    {Py_tp_doc, (void *)Context_doc},
    {Py_tp_init, Context_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Context_dealloc},
    {Py_tp_traverse, Context_traverse},
    {Py_tp_clear, Context_clear},
    {Py_tp_repr, Context_repr},
    {Py_tp_methods, Context_methods},
    {Py_tp_getset, Context_getset},
    {Py_tp_members, Context_members},
    {0, NULL},
};

static PyType_Spec Context_spec = {
    .name = "media._srtp.Context",
    .basicsize = sizeof(ContextObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Context_slots,
};

/* ---------------------------------------------------------------- C API glue */

static struct PyModuleDef srtp_module;

/* The core of a media._srtp.Context (borrowed: valid while the caller holds a
 * reference to the object).  NULL with TypeError for anything else. */
static se_srtp_ctx *
capi_context_core(PyObject *obj)
{
    PyObject *mod = PyType_GetModuleByDef(Py_TYPE(obj), &srtp_module);
    module_state *st;
    if (mod == NULL)
        return NULL;
    st = get_state(mod);
    if (!PyObject_TypeCheck(obj, st->context_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a media._srtp.Context");
        return NULL;
    }
    return context_ctx((ContextObject *)obj);
}

se_srtp_ctx *
se_py_context_core(PyObject *obj)
{
    return capi_context_core(obj);
}

/* ---------------------------------------------------------------- module functions */

PyDoc_STRVAR(openssl_version_doc,
             "openssl_version() -> str\n\n"
             "Version string of the libcrypto this module runs against\n"
             "(OpenSSL_version(OPENSSL_VERSION)), e.g. 'OpenSSL 3.0.19 27 Jan 2026'.");

static PyObject *
srtp_openssl_version(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

PyDoc_STRVAR(openssl_version_number_doc,
             "openssl_version_number() -> int\n\n"
             "OpenSSL_version_num() of the libcrypto loaded at run time.");

static PyObject *
srtp_openssl_version_number(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    return PyLong_FromUnsignedLong(OpenSSL_version_num());
}

PyDoc_STRVAR(backend_doc,
             "backend() -> str\n\n"
             "Which implementation this is: 'c' here, 'python' for the pure twin.");

static PyObject *
srtp_backend(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    return PyUnicode_FromString("c");
}

/* ---------------------------------------------------------------- helpers for tests */

PyDoc_STRVAR(kdf_doc,
             "_kdf(master_key, master_salt, label, length) -> bytes\n\n"
             "RFC 3711 section 4.3.1 key derivation (key derivation rate 0): the first\n"
             "length bytes of the AES-CM PRF output for label (0..5).  For the\n"
             "Appendix B.3 vectors.");

static PyObject *
srtp_kdf(PyObject *module, PyObject *args)
{
    Py_buffer key = {0}, salt = {0};
    int label;
    Py_ssize_t n;
    PyObject *out = NULL;
    EVP_CIPHER_CTX *master = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*in:_kdf", &key, &salt, &label, &n))
        return NULL;
    if (key.len != SE_SRTP_KEY_LEN || salt.len != SE_SRTP_SALT_LEN || label < 0 || label > 255
        || n < 0 || n > 4096) {
        PyErr_SetString(PyExc_ValueError, "need a 16-byte key, a 14-byte salt, label 0..255, "
                                          "length 0..4096");
        goto done;
    }
    if ((master = se_aes_ecb_new(key.buf)) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
        goto done;
    }
    if ((out = PyBytes_FromStringAndSize(NULL, n)) == NULL)
        goto done;
    if (se_kdf(master, salt.buf, (uint8_t)label, (uint8_t *)PyBytes_AS_STRING(out), (size_t)n)
        != SE_SRTP_OK) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
    }
done:
    EVP_CIPHER_CTX_free(master);
    PyBuffer_Release(&key);
    PyBuffer_Release(&salt);
    return out;
}

PyDoc_STRVAR(keystream_doc,
             "_keystream(session_key, iv, length) -> bytes\n\n"
             "length bytes of AES-CM keystream (RFC 3711 section 4.1.1) from a 16-byte IV\n"
             "whose last two bytes are zero (the block counter).  For the Appendix B.2\n"
             "vectors.");

static PyObject *
srtp_keystream(PyObject *module, PyObject *args)
{
    Py_buffer key = {0}, iv = {0};
    Py_ssize_t n;
    PyObject *out = NULL;
    EVP_CIPHER_CTX *aes = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*n:_keystream", &key, &iv, &n))
        return NULL;
    if (key.len != SE_SRTP_KEY_LEN || iv.len != 16 || n < 0 || n > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "need a 16-byte key, a 16-byte IV, length 0..2^20");
        goto done;
    }
    if ((aes = se_aes_ecb_new(key.buf)) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
        goto done;
    }
    if ((out = PyBytes_FromStringAndSize(NULL, n)) == NULL)
        goto done;
    memset(PyBytes_AS_STRING(out), 0, (size_t)n);
    if (se_aes_cm_xor(aes, iv.buf, (uint8_t *)PyBytes_AS_STRING(out),
                   (uint8_t *)PyBytes_AS_STRING(out), (size_t)n) != SE_SRTP_OK) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
    }
done:
    EVP_CIPHER_CTX_free(aes);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return out;
}

/* ---------------------------------------------------------------- helpers for bench/ */

static double
thread_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

#define BENCH_ROUNDS 5

PyDoc_STRVAR(bench_raw_doc,
             "_bench_raw(n) -> dict[str, float]\n\n"
             "Thread CPU nanoseconds per operation (best of 5 rounds of n) of the bare\n"
             "OpenSSL work an SRTP packet of 172 bytes needs, with no SRTP logic:\n"
             "'aes_ctr_160': AES-128-CTR over 160 bytes, the IV set per packet\n"
             "(EVP_EncryptInit_ex with a new IV, then EVP_EncryptUpdate);\n"
             "'aes_ecb_keystream_160': the same keystream from AES-128-ECB over counter\n"
             "blocks, as the core makes it, XORed onto 160 bytes;\n"
             "'hmac_sha1_182': HMAC-SHA1 over 182 bytes from precomputed inner/outer\n"
             "states (one EVP_MD_CTX_copy_ex each);\n"
             "'hmac_sha1_182_evp_mac': the same through EVP_MAC, re-initialised per packet;\n"
             "'raw_ctr_hmac': aes_ctr_160 then hmac_sha1_182 in one loop (the reference\n"
             "'raw OpenSSL cost' of one protect).");

static PyObject *
srtp_bench_raw(PyObject *module, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    uint8_t key[16], iv[16], buf[256], auth[20], tag[SE_SRTP_MAX_TAG];
    double best[5] = {1e30, 1e30, 1e30, 1e30, 1e30};
    EVP_CIPHER_CTX *ctr = NULL, *ecb = NULL;
    EVP_MD_CTX *scratch = NULL;
    EVP_MAC *mac = NULL;
    EVP_MAC_CTX *macctx = NULL;
    se_session s;
    int outl = 0, ok = 0;
    size_t maclen = 0;
    volatile uint8_t sink = 0;

    (void)module;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be positive");
        return NULL;
    }
    memset(&s, 0, sizeof s);
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)i;
    memset(iv, 0x5a, sizeof iv);
    iv[14] = iv[15] = 0;
    memset(auth, 0x3c, sizeof auth);

    ctr = EVP_CIPHER_CTX_new();
    ecb = se_aes_ecb_new(key);
    scratch = EVP_MD_CTX_new();
    if (ctr == NULL || ecb == NULL || scratch == NULL
        || EVP_EncryptInit_ex(ctr, EVP_aes_128_ctr(), NULL, key, iv) != 1)
        goto fail;
    {
        /* a session with the inner/outer states, as session_init makes them */
        uint8_t pad[64];
        s.inner = EVP_MD_CTX_new();
        s.outer = EVP_MD_CTX_new();
        if (s.inner == NULL || s.outer == NULL)
            goto fail;
        memset(pad, 0x36, sizeof pad);
        for (size_t i = 0; i < sizeof auth; i++)
            pad[i] ^= auth[i];
        if (EVP_DigestInit_ex(s.inner, EVP_sha1(), NULL) != 1
            || EVP_DigestUpdate(s.inner, pad, sizeof pad) != 1)
            goto fail;
        memset(pad, 0x5c, sizeof pad);
        for (size_t i = 0; i < sizeof auth; i++)
            pad[i] ^= auth[i];
        if (EVP_DigestInit_ex(s.outer, EVP_sha1(), NULL) != 1
            || EVP_DigestUpdate(s.outer, pad, sizeof pad) != 1)
            goto fail;
    }
    {
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA1", 0);
        params[1] = OSSL_PARAM_construct_end();
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (mac == NULL || (macctx = EVP_MAC_CTX_new(mac)) == NULL
            || EVP_MAC_init(macctx, auth, sizeof auth, params) != 1)
            goto fail;
    }

    Py_BEGIN_ALLOW_THREADS
    for (int r = 0; r < BENCH_ROUNDS; r++) {
        double t0, t1;
        t0 = thread_ns();
        for (long i = 0; i < n; i++) {
            iv[13] = (uint8_t)i;
            if (EVP_EncryptInit_ex(ctr, NULL, NULL, NULL, iv) != 1
                || EVP_EncryptUpdate(ctr, buf + 12, &outl, buf + 12, 160) != 1)
                goto fail_nogil;
        }
        t1 = thread_ns();
        if ((t1 - t0) / (double)n < best[0])
            best[0] = (t1 - t0) / (double)n;

        t0 = thread_ns();
        for (long i = 0; i < n; i++) {
            iv[13] = (uint8_t)i;
            if (se_aes_cm_xor(ecb, iv, buf + 12, buf + 12, 160) != SE_SRTP_OK)
                goto fail_nogil;
        }
        t1 = thread_ns();
        if ((t1 - t0) / (double)n < best[1])
            best[1] = (t1 - t0) / (double)n;

        t0 = thread_ns();
        for (long i = 0; i < n; i++) {
            if (se_hmac_sha1(&s, scratch, buf, 182, NULL, 0, tag) != SE_SRTP_OK)
                goto fail_nogil;
            buf[0] ^= tag[0];
        }
        t1 = thread_ns();
        if ((t1 - t0) / (double)n < best[2])
            best[2] = (t1 - t0) / (double)n;

        t0 = thread_ns();
        for (long i = 0; i < n; i++) {
            if (EVP_MAC_init(macctx, NULL, 0, NULL) != 1 || EVP_MAC_update(macctx, buf, 182) != 1
                || EVP_MAC_final(macctx, tag, &maclen, sizeof tag) != 1)
                goto fail_nogil;
            buf[0] ^= tag[0];
        }
        t1 = thread_ns();
        if ((t1 - t0) / (double)n < best[3])
            best[3] = (t1 - t0) / (double)n;

        t0 = thread_ns();
        for (long i = 0; i < n; i++) {
            iv[13] = (uint8_t)i;
            if (EVP_EncryptInit_ex(ctr, NULL, NULL, NULL, iv) != 1
                || EVP_EncryptUpdate(ctr, buf + 12, &outl, buf + 12, 160) != 1
                || se_hmac_sha1(&s, scratch, buf, 182, NULL, 0, tag) != SE_SRTP_OK)
                goto fail_nogil;
            buf[0] ^= tag[0];
        }
        t1 = thread_ns();
        if ((t1 - t0) / (double)n < best[4])
            best[4] = (t1 - t0) / (double)n;
    }
    ok = 1;
fail_nogil:
    Py_END_ALLOW_THREADS
fail:
    sink = buf[0];
    (void)sink;
    EVP_CIPHER_CTX_free(ctr);
    EVP_CIPHER_CTX_free(ecb);
    EVP_MD_CTX_free(scratch);
    EVP_MD_CTX_free(s.inner);
    EVP_MD_CTX_free(s.outer);
    EVP_MAC_CTX_free(macctx);
    EVP_MAC_free(mac);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed in _bench_raw");
        return NULL;
    }
    return Py_BuildValue("{sdsdsdsdsd}", "aes_ctr_160", best[0], "aes_ecb_keystream_160",
                         best[1], "hmac_sha1_182", best[2], "hmac_sha1_182_evp_mac", best[3],
                         "raw_ctr_hmac", best[4]);
}

#define BENCH_BATCH 1024

PyDoc_STRVAR(bench_core_doc,
             "_bench_core(outbound, inbound, packet, n) -> tuple[float, float]\n\n"
             "Thread CPU nanoseconds per protect and per unprotect of the RTP packet\n"
             "(best of 5 rounds of n), called from a C loop with no Python in between,\n"
             "as the fast path will: batches of 1024 packets with rising sequence\n"
             "numbers are protected in place, then unprotected in place.  The two\n"
             "contexts must be fresh, of one key, outbound and inbound.");

static PyObject *
srtp_bench_core(PyObject *module, PyObject *args)
{
    module_state *st = get_state(module);
    PyObject *out_obj, *in_obj;
    Py_buffer pkt;
    long n;
    se_srtp_ctx *tx, *rx;
    uint8_t *bufs = NULL;
    size_t stride, *lens = NULL;
    double best_p = 1e30, best_u = 1e30;
    uint32_t seq = 0;
    int rc = SE_SRTP_OK;

    if (!PyArg_ParseTuple(args, "O!O!y*l:_bench_core", st->context_type, &out_obj,
                          st->context_type, &in_obj, &pkt, &n))
        return NULL;
    tx = ((ContextObject *)out_obj)->ctx;
    rx = ((ContextObject *)in_obj)->ctx;
    if (tx == NULL || rx == NULL || n < BENCH_BATCH || pkt.len < SE_SRTP_RTP_HEADER
        || pkt.len > 1400) {
        PyBuffer_Release(&pkt);
        PyErr_SetString(PyExc_ValueError, "need initialised contexts, n >= 1024 and a packet of "
                                          "12..1400 bytes");
        return NULL;
    }
    stride = (size_t)pkt.len + SE_SRTP_MAX_TAG + 16;
    bufs = malloc(stride * BENCH_BATCH);
    lens = malloc(sizeof(size_t) * BENCH_BATCH);
    if (bufs == NULL || lens == NULL) {
        free(bufs);
        free(lens);
        PyBuffer_Release(&pkt);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (int r = 0; r < BENCH_ROUNDS && rc == SE_SRTP_OK; r++) {
        double tp = 0, tu = 0;
        long done = 0;
        while (done < n && rc == SE_SRTP_OK) {
            double t0, t1, t2;
            for (int b = 0; b < BENCH_BATCH; b++, seq++) {
                uint8_t *p = bufs + (size_t)b * stride;
                memcpy(p, pkt.buf, (size_t)pkt.len);
                p[2] = (uint8_t)(seq >> 8);
                p[3] = (uint8_t)seq;
            }
            t0 = thread_ns();
            for (int b = 0; b < BENCH_BATCH && rc == SE_SRTP_OK; b++)
                rc = se_srtp_protect_rtp(tx, bufs + (size_t)b * stride, (size_t)pkt.len,
                                         bufs + (size_t)b * stride, stride, &lens[b]);
            t1 = thread_ns();
            for (int b = 0; b < BENCH_BATCH && rc == SE_SRTP_OK; b++)
                rc = se_srtp_unprotect_rtp(rx, bufs + (size_t)b * stride, lens[b],
                                           bufs + (size_t)b * stride, stride, &lens[b]);
            t2 = thread_ns();
            tp += t1 - t0;
            tu += t2 - t1;
            done += BENCH_BATCH;
        }
        if (tp / (double)done < best_p)
            best_p = tp / (double)done;
        if (tu / (double)done < best_u)
            best_u = tu / (double)done;
    }
    Py_END_ALLOW_THREADS
    free(bufs);
    free(lens);
    PyBuffer_Release(&pkt);
    if (rc != SE_SRTP_OK)
        return raise_status(st, rc);
    return Py_BuildValue("(dd)", best_p, best_u);
}

/* ---------------------------------------------------------------- module */

static PyMethodDef srtp_methods[] = {
    {"openssl_version", srtp_openssl_version, METH_NOARGS, openssl_version_doc},
    {"openssl_version_number", srtp_openssl_version_number, METH_NOARGS,
     openssl_version_number_doc},
    {"backend", srtp_backend, METH_NOARGS, backend_doc},
    {"_kdf", srtp_kdf, METH_VARARGS, kdf_doc},
    {"_keystream", srtp_keystream, METH_VARARGS, keystream_doc},
    {"_bench_raw", srtp_bench_raw, METH_O, bench_raw_doc},
    {"_bench_core", srtp_bench_core, METH_VARARGS, bench_core_doc},
    {NULL, NULL, 0, NULL},
};

static int
srtp_exec(PyObject *module)
{
    module_state *st = get_state(module);
    PyObject *suites, *capsule;

    st->context_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Context_spec, NULL);
    if (st->context_type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "Context", (PyObject *)st->context_type) < 0)
        return -1;

    /* The error class and the suite table are shared with the Python twin. */
    suites = PyImport_ImportModule("media.suites");
    if (suites == NULL)
        return -1;
    st->srtp_error = PyObject_GetAttrString(suites, "SrtpError");
    st->get_suite = PyObject_GetAttrString(suites, "get_suite");
    Py_DECREF(suites);
    if (st->srtp_error == NULL || st->get_suite == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "SrtpError", st->srtp_error) < 0)
        return -1;
    for (int i = 1; i < SE_SRTP_N_REASONS; i++) {
        st->reasons[i] = PyUnicode_InternFromString(reason_names[i]);
        if (st->reasons[i] == NULL)
            return -1;
    }

    st->capi.version = SE_SRTP_CAPI_VERSION;
    st->capi.context_core = capi_context_core;
    st->capi.protect_rtp = se_srtp_protect_rtp;
    st->capi.unprotect_rtp = se_srtp_unprotect_rtp;
    st->capi.protect_rtcp = se_srtp_protect_rtcp;
    st->capi.unprotect_rtcp = se_srtp_unprotect_rtcp;
    st->capi.counters = se_srtp_get_counters;
    capsule = PyCapsule_New(&st->capi, "media._srtp._C_API", NULL);
    if (capsule == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "_C_API", capsule) < 0) {
        Py_DECREF(capsule);
        return -1;
    }
    Py_DECREF(capsule);
    if (se_fastpath_register(module) < 0 || se_sipscan_register(module) < 0
        || se_sipvalues_register(module) < 0 || se_sipcheck_register(module) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "REPLAY_WINDOW", SE_SRTP_WINDOW) < 0
        || PyModule_AddIntConstant(module, "MAX_SSRCS", SE_SRTP_MAX_SSRCS) < 0)
        return -1;
    return 0;
}

static int
srtp_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = get_state(module);
    Py_VISIT(st->context_type);
    Py_VISIT(st->srtp_error);
    Py_VISIT(st->get_suite);
    return 0;
}

static int
srtp_clear(PyObject *module)
{
    module_state *st = get_state(module);
    Py_CLEAR(st->context_type);
    Py_CLEAR(st->srtp_error);
    Py_CLEAR(st->get_suite);
    for (int i = 0; i < SE_SRTP_N_REASONS; i++)
        Py_CLEAR(st->reasons[i]);
    return 0;
}

static void
srtp_free(void *module)
{
    srtp_clear((PyObject *)module);
}

static PyModuleDef_Slot srtp_slots[] = {
    {Py_mod_exec, srtp_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "C SRTP core of the sipedge media data plane (RFC 3711 on OpenSSL libcrypto).\n\n"
             "Context is the per-direction SRTP/SRTCP context; media.srtp chooses between\n"
             "it and the pure-Python twin in media._srtp_py.  _C_API is a capsule for C\n"
             "loops that run the core without Python (see se_srtp_capi in _srtp.c).");

static struct PyModuleDef srtp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._srtp",
    .m_doc = module_doc,
    .m_size = sizeof(module_state),
    .m_methods = srtp_methods,
    .m_slots = srtp_slots,
    .m_traverse = srtp_traverse,
    .m_clear = srtp_clear,
    .m_free = srtp_free,
};

PyMODINIT_FUNC
PyInit__srtp(void)
{
    return PyModuleDef_Init(&srtp_module);
}
