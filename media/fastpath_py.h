/*
 * media/fastpath_py.h: what _srtp.c (the module) and fastpath_py.c (the Plane
 * type) need from each other.  Both include Python.h first.
 */
#ifndef SIPEDGE_FASTPATH_PY_H
#define SIPEDGE_FASTPATH_PY_H

#include "srtp_core.h"

/* The core of a media._srtp.Context (borrowed: valid while the caller holds a
 * reference to the object); NULL with TypeError for anything else. (_srtp.c) */
SE_HIDDEN se_srtp_ctx *se_py_context_core(PyObject *obj);

/* Adds media._srtp.Plane and its constants to the module; 0 or -1. (fastpath_py.c) */
SE_HIDDEN int se_fastpath_register(PyObject *module);

#endif /* SIPEDGE_FASTPATH_PY_H */
