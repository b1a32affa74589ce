/*
 * media._srtp: the C core of the media data plane.
 *
 * For now this module only proves the build path: setuptools compiles it in
 * editable installs and wheels, it links OpenSSL's libcrypto (the SRTP
 * ciphers will come from there: AES-CM and HMAC-SHA1, RFC 3711 section 4),
 * and Python can import it.  The per-packet SRTP work lands with the media
 * relay issue, together with its pure-Python twin and the tests that run
 * every vector on both backends.
 *
 * Rules of this file: no Python objects in the per-packet path, no global
 * mutable state (multi-phase init, PEP 489), no warnings under -Wall -Wextra.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/crypto.h>

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

static PyMethodDef srtp_methods[] = {
    {"openssl_version", srtp_openssl_version, METH_NOARGS, openssl_version_doc},
    {"openssl_version_number", srtp_openssl_version_number, METH_NOARGS,
     openssl_version_number_doc},
    {"backend", srtp_backend, METH_NOARGS, backend_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot srtp_slots[] = {
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "C core of the sipedge media data plane (SRTP). A stub until the\n"
             "media relay lands: it reports its backend and the OpenSSL it links.");

static struct PyModuleDef srtp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._srtp",
    .m_doc = module_doc,
    .m_size = 0,
    .m_methods = srtp_methods,
    .m_slots = srtp_slots,
};

PyMODINIT_FUNC
PyInit__srtp(void)
{
    return PyModuleDef_Init(&srtp_module);
}
