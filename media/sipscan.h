/*
 * media/sipscan.h: what _srtp.c (the module) needs from sipscan.c (the SIP
 * tokenizer, media._srtp.SipScanner).  Include Python.h first.
 */
#ifndef SIPEDGE_SIPSCAN_H
#define SIPEDGE_SIPSCAN_H

#include "srtp_core.h" /* SE_HIDDEN */

/* Adds media._srtp.SipScanner and sip_join to the module; 0 or -1. (sipscan.c) */
SE_HIDDEN int se_sipscan_register(PyObject *module);

/* Two header keys (str) are equal: most often the same cached object, else the
 * same text.  (sipscan.c; sipcheck.c groups keys with it too.) */
SE_HIDDEN int se_same_key(PyObject *a, PyObject *b);

#endif /* SIPEDGE_SIPSCAN_H */
