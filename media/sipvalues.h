/*
 * media/sipvalues.h: what _srtp.c (the module) needs from sipvalues.c (the fast
 * paths of the typed SIP header values, media._srtp.SipValueParser).  Include
 * Python.h first.
 */
#ifndef SIPEDGE_SIPVALUES_H
#define SIPEDGE_SIPVALUES_H

#include "srtp_core.h" /* SE_HIDDEN */

/* Adds media._srtp.SipValueParser to the module; 0 or -1. (sipvalues.c) */
SE_HIDDEN int se_sipvalues_register(PyObject *module);

#endif /* SIPEDGE_SIPVALUES_H */
