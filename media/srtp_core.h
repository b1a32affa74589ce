/*
 * media/srtp_core.h: the C SRTP core (RFC 3711) of the media data plane, shared by
 * the translation units of the extension media._srtp: srtp_core.c (the core),
 * _srtp.c (its Python binding) and fastpath*.c (the packet loop of issue 7).
 *
 * The core is plain C with no Python object anywhere: key derivation (RFC 3711
 * section 4.3, key derivation rate 0), SRTP and SRTCP protect/unprotect for
 * AES_CM_128 with HMAC_SHA1 tags (section 4.1.1, 4.2.1), roll-over counter
 * estimation (section 3.3.1, Appendix A), a 128-packet replay window per SSRC for
 * SRTP and SRTCP (section 3.3.2), constant-time tag comparison.  Every transform
 * works in place on the caller's buffer (dst may equal src) and allocates nothing
 * per packet.  A context is not thread-safe: one thread uses it at a time.
 *
 * Rules of this file: declarations only; every symbol starts with se_ (the module
 * is one shared object; hidden visibility keeps them out of its dynamic table).
 */
#ifndef SIPEDGE_SRTP_CORE_H
#define SIPEDGE_SRTP_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#if defined(__GNUC__)
#define SE_HIDDEN __attribute__((visibility("hidden")))
#else
#define SE_HIDDEN
#endif


/* Verdicts.  1..5 are the packet's fault (SrtpError reasons); the rest are the
 * caller's or libcrypto's. */
enum se_srtp_status {
    SE_SRTP_OK = 0,
    SE_SRTP_ERR_SHORT = 1,      /* shorter than header + trailer */
    SE_SRTP_ERR_FORMAT = 2,     /* not version 2, or header overruns the packet */
    SE_SRTP_ERR_AUTH = 3,       /* tag mismatch */
    SE_SRTP_ERR_REPLAY = 4,     /* index seen, too old, or past the key's lifetime */
    SE_SRTP_ERR_SSRC_LIMIT = 5, /* new SSRC and the table is full */
    SE_SRTP_ERR_SPACE = 6,      /* dst too small for the result */
    SE_SRTP_ERR_DIRECTION = 7,  /* protect on an inbound context or the reverse */
    SE_SRTP_ERR_CRYPTO = 8,     /* libcrypto returned an error (not expected) */
};
#define SE_SRTP_N_REASONS 6 /* status codes 1..5 are packet reasons */

enum se_srtp_direction { SE_SRTP_OUTBOUND = 0, SE_SRTP_INBOUND = 1 };

#define SE_SRTP_KEY_LEN 16      /* AES-128 master and session key */
#define SE_SRTP_SALT_LEN 14     /* master and session salt (112 bits) */
#define SE_SRTP_AUTH_KEY_LEN 20 /* HMAC-SHA1 session key (160 bits) */
#define SE_SRTP_MAX_TAG 20      /* an HMAC-SHA1 output */
#define SE_SRTP_RTP_HEADER 12
#define SE_SRTP_RTCP_HEADER 8   /* encryption starts after the first SSRC */
#define SE_SRTP_SRTCP_INDEX 4   /* E flag + 31-bit index */
#define SE_SRTP_WINDOW 128      /* replay window, packets */
#define SE_SRTP_MAX_SSRCS 65536
#define SE_SRTP_MAX_PACKET 65535 /* larger than any UDP payload: refused as "format" */

/* RFC 3711 section 3.3.1: 2^48 SRTP packets, SRTCP indices are 31 bits. */
#define SE_SRTP_MAX_INDEX ((UINT64_C(1) << 48) - 1)
#define SE_SRTCP_MAX_INDEX UINT32_C(0x7fffffff)


typedef struct {
    unsigned rtp_tag_len;  /* 1..20 */
    unsigned rtcp_tag_len; /* 1..20 */
} se_srtp_params;

typedef struct {
    uint64_t rtp_packets;  /* protected or unprotected, by this context */
    uint64_t rtcp_packets;
    uint64_t refused[SE_SRTP_N_REASONS]; /* by status code 1..5 */
} se_srtp_counters;

/* A 128-packet sliding window (RFC 3711 section 3.3.2) over 64-bit indices:
 * bit d of bits[] set means index top - d was accepted. */
typedef struct {
    uint64_t top;
    uint64_t bits[2];
    int seen;
} se_window;

typedef struct {
    uint32_t ssrc;
    uint32_t rtcp_next; /* outbound: SRTCP index of the next packet */
    se_window rtp;      /* top is the highest SRTP index: ROC << 16 | SEQ */
    se_window rtcp;     /* inbound SRTCP indices */
} se_stream;

typedef struct {
    EVP_CIPHER_CTX *aes;  /* AES-128-ECB under the session key */
    EVP_MD_CTX *inner;    /* SHA-1 after the ipad block */
    EVP_MD_CTX *outer;    /* SHA-1 after the opad block */
    uint8_t salt[SE_SRTP_SALT_LEN];
} se_session;

typedef struct se_srtp_ctx {
    se_srtp_params params;
    int direction;
    se_session rtp, rtcp;
    EVP_MD_CTX *scratch; /* per-packet HMAC work */
    se_srtp_counters counters;
    unsigned max_streams, n_streams, last;
    se_stream streams[]; /* max_streams entries, n_streams in use */
} se_srtp_ctx;

static inline uint16_t
get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---------------------------------------------------------------- the core (srtp_core.c) */

/* A context for one direction of one master key, tracking up to max_streams
 * SSRCs.  key is 16 bytes, salt 14 bytes.  NULL on allocation or libcrypto
 * failure. */
SE_HIDDEN se_srtp_ctx *se_srtp_new(const se_srtp_params *params,
                                   const uint8_t key[SE_SRTP_KEY_LEN],
                                   const uint8_t salt[SE_SRTP_SALT_LEN], int direction,
                                   unsigned max_streams);
SE_HIDDEN void se_srtp_free(se_srtp_ctx *c);

/* The per-packet transforms: the packet in src[0:len], the result in
 * dst[0:*out_len] (dst == src for in place), cap = bytes available at dst.
 * SE_SRTP_OK or an se_srtp_status; on any error neither dst nor the context
 * changed (except the counters). */
SE_HIDDEN int se_srtp_protect_rtp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst,
                                  size_t cap, size_t *out_len);
SE_HIDDEN int se_srtp_unprotect_rtp(se_srtp_ctx *c, const uint8_t *src, size_t len,
                                    uint8_t *dst, size_t cap, size_t *out_len);
SE_HIDDEN int se_srtp_protect_rtcp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst,
                                   size_t cap, size_t *out_len);
SE_HIDDEN int se_srtp_unprotect_rtcp(se_srtp_ctx *c, const uint8_t *src, size_t len,
                                     uint8_t *dst, size_t cap, size_t *out_len);
SE_HIDDEN const se_srtp_counters *se_srtp_get_counters(const se_srtp_ctx *c);
SE_HIDDEN se_stream *se_stream_find(se_srtp_ctx *c, uint32_t ssrc);

/* Building blocks, for the binding's test and bench helpers. */
SE_HIDDEN EVP_CIPHER_CTX *se_aes_ecb_new(const uint8_t key[SE_SRTP_KEY_LEN]);
SE_HIDDEN int se_aes_cm_xor(EVP_CIPHER_CTX *aes, const uint8_t iv[16], const uint8_t *src,
                            uint8_t *dst, size_t len);
SE_HIDDEN int se_hmac_sha1(const se_session *s, EVP_MD_CTX *w, const uint8_t *d1, size_t n1,
                           const uint8_t *d2, size_t n2, uint8_t mac[SE_SRTP_MAX_TAG]);
SE_HIDDEN int se_kdf(EVP_CIPHER_CTX *master, const uint8_t salt[SE_SRTP_SALT_LEN],
                     uint8_t label, uint8_t *out, size_t n);


#endif /* SIPEDGE_SRTP_CORE_H */
