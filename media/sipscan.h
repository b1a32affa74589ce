/*
 * media/sipscan.h: what _srtp.c (the module) needs from sipscan.c (the SIP
 * tokenizer, media._srtp.SipScanner).  Include Python.h first.
 */
#ifndef SIPEDGE_SIPSCAN_H
#define SIPEDGE_SIPSCAN_H

#include "srtp_core.h" /* SE_HIDDEN */

/* Adds media._srtp.SipScanner and sip_join to the module; 0 or -1. (sipscan.c) */
SE_HIDDEN int se_sipscan_register(PyObject *module);

#endif /* SIPEDGE_SIPSCAN_H */
