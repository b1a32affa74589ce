/*
 * media/sipcheck.h: what _srtp.c (the module) needs from sipcheck.c (the C twin
 * of sip.message._check_headers, media._srtp.SipHeaderChecker).  Include Python.h
 * first.
 */
#ifndef SIPEDGE_SIPCHECK_H
#define SIPEDGE_SIPCHECK_H

#include "srtp_core.h" /* SE_HIDDEN */

/* Adds media._srtp.SipHeaderChecker to the module; 0 or -1. (sipcheck.c) */
SE_HIDDEN int se_sipcheck_register(PyObject *module);

#endif /* SIPEDGE_SIPCHECK_H */
