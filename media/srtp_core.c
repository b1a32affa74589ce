/*
 * media/srtp_core.c: the C SRTP core (RFC 3711), declared in srtp_core.h.
 *
 * Crypto comes from OpenSSL's libcrypto only, through EVP interfaces that are
 * not deprecated in OpenSSL 3:
 *   - AES-CM keystream: one AES-128-ECB EVP_CIPHER_CTX per session key, keyed
 *     once; per packet the counter blocks are laid out on the stack and
 *     encrypted in one EVP_EncryptUpdate.  Re-initialising an AES-128-CTR
 *     context with a new IV per packet costs about 70 ns more on OpenSSL 3.0
 *     (provider init); the keystream is the same (RFC 3711 section 4.1.1).
 *   - HMAC-SHA1: the SHA-1 states after the ipad and opad blocks are computed
 *     once per session key; per packet one EVP_MD_CTX_copy_ex of each into a
 *     scratch context.  (OpenSSL 3.0 duplicates the provider context inside
 *     copy_ex, a malloc/free in libcrypto; newer OpenSSL releases copy into
 *     the existing one.  The deprecated SHA1_Init family is not used.)
 *
 * Rules of this file: no Python object and no global mutable state; no
 * per-packet allocation; a refused packet changes neither the caller's buffer
 * nor the context (only the counters); no warnings under -Wall -Wextra -Werror.
 */
#include "srtp_core.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* KDF labels, RFC 3711 section 4.3.2 */
enum { LABEL_RTP_ENC = 0, LABEL_RTP_AUTH = 1, LABEL_RTP_SALT = 2,
       LABEL_RTCP_ENC = 3, LABEL_RTCP_AUTH = 4, LABEL_RTCP_SALT = 5 };

/* ---------------------------------------------------------------- AES-CM */

#define SE_KS_BLOCKS 32 /* keystream blocks per EVP call (512 bytes on the stack) */

EVP_CIPHER_CTX *
se_aes_ecb_new(const uint8_t key[SE_SRTP_KEY_LEN])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        return NULL;
    if (EVP_EncryptInit_ex(c, EVP_aes_128_ecb(), NULL, key, NULL) != 1
        || EVP_CIPHER_CTX_set_padding(c, 0) != 1) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return c;
}

/* dst = src XOR AES-CM keystream (RFC 3711 section 4.1.1): block j of the
 * keystream is AES(k, IV + j), with the IV's last 16 bits zero.  At most 2^16
 * blocks (1 MiB); dst == src is fine. */
int
se_aes_cm_xor(EVP_CIPHER_CTX *aes, const uint8_t iv[16], const uint8_t *src, uint8_t *dst,
           size_t len)
{
    uint8_t ctr[SE_KS_BLOCKS * 16];
    uint8_t ks[SE_KS_BLOCKS * 16];
    uint32_t block = 0;

    if (len > ((size_t)1 << 20)) /* the 16-bit block counter would wrap */
        return SE_SRTP_ERR_CRYPTO;
    while (len > 0) {
        size_t n = len < sizeof ks ? len : sizeof ks;
        size_t nb = (n + 15) / 16;
        int outl = 0;
        for (size_t b = 0; b < nb; b++, block++) {
            uint8_t *c = ctr + 16 * b;
            memcpy(c, iv, 14);
            c[14] = (uint8_t)(block >> 8);
            c[15] = (uint8_t)block;
        }
        if (EVP_EncryptUpdate(aes, ks, &outl, ctr, (int)(nb * 16)) != 1)
            return SE_SRTP_ERR_CRYPTO;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t a, k;
            memcpy(&a, src + i, 8);
            memcpy(&k, ks + i, 8);
            a ^= k;
            memcpy(dst + i, &a, 8);
        }
        for (; i < n; i++)
            dst[i] = src[i] ^ ks[i];
        src += n;
        dst += n;
        len -= n;
    }
    return SE_SRTP_OK;
}

/* ---------------------------------------------------------------- HMAC-SHA1 */

/* mac = HMAC-SHA1(session auth key, d1 || d2), from the precomputed states. */
int
se_hmac_sha1(const se_session *s, EVP_MD_CTX *w, const uint8_t *d1, size_t n1,
          const uint8_t *d2, size_t n2, uint8_t mac[SE_SRTP_MAX_TAG])
{
    uint8_t inner[SE_SRTP_MAX_TAG];
    unsigned int l = 0;

    if (EVP_MD_CTX_copy_ex(w, s->inner) != 1 || EVP_DigestUpdate(w, d1, n1) != 1
        || (n2 > 0 && EVP_DigestUpdate(w, d2, n2) != 1) || EVP_DigestFinal_ex(w, inner, &l) != 1
        || EVP_MD_CTX_copy_ex(w, s->outer) != 1 || EVP_DigestUpdate(w, inner, sizeof inner) != 1
        || EVP_DigestFinal_ex(w, mac, &l) != 1)
        return SE_SRTP_ERR_CRYPTO;
    return SE_SRTP_OK;
}

/* ---------------------------------------------------------------- key derivation */

/* RFC 3711 section 4.3.1 with key_derivation_rate 0 (r = 0):
 * x = (label << 48) XOR master_salt; out = AES-CM(master key, IV = x * 2^16). */
int
se_kdf(EVP_CIPHER_CTX *master, const uint8_t salt[SE_SRTP_SALT_LEN], uint8_t label,
       uint8_t *out, size_t n)
{
    uint8_t iv[16] = {0};
    memcpy(iv, salt, SE_SRTP_SALT_LEN);
    iv[7] ^= label; /* key_id = label || r (48 bits of zero), right-aligned on the salt */
    memset(out, 0, n);
    return se_aes_cm_xor(master, iv, out, out, n);
}

static void
session_clear(se_session *s)
{
    EVP_CIPHER_CTX_free(s->aes);
    EVP_MD_CTX_free(s->inner);
    EVP_MD_CTX_free(s->outer);
    s->aes = NULL;
    s->inner = s->outer = NULL;
    OPENSSL_cleanse(s->salt, sizeof s->salt);
}

static int
session_init(se_session *s, EVP_CIPHER_CTX *master, const uint8_t master_salt[SE_SRTP_SALT_LEN],
             uint8_t label_enc, uint8_t label_auth, uint8_t label_salt)
{
    uint8_t key[SE_SRTP_KEY_LEN], auth[SE_SRTP_AUTH_KEY_LEN], pad[64];
    int rc = SE_SRTP_ERR_CRYPTO;

    if (se_kdf(master, master_salt, label_enc, key, sizeof key) != SE_SRTP_OK
        || se_kdf(master, master_salt, label_auth, auth, sizeof auth) != SE_SRTP_OK
        || se_kdf(master, master_salt, label_salt, s->salt, sizeof s->salt) != SE_SRTP_OK)
        goto done;
    if ((s->aes = se_aes_ecb_new(key)) == NULL)
        goto done;
    s->inner = EVP_MD_CTX_new();
    s->outer = EVP_MD_CTX_new();
    if (s->inner == NULL || s->outer == NULL)
        goto done;
    /* RFC 2104: H(K ^ opad, H(K ^ ipad, text)); the 20-byte key is padded to 64. */
    memset(pad, 0x36, sizeof pad);
    for (size_t i = 0; i < sizeof auth; i++)
        pad[i] ^= auth[i];
    if (EVP_DigestInit_ex(s->inner, EVP_sha1(), NULL) != 1
        || EVP_DigestUpdate(s->inner, pad, sizeof pad) != 1)
        goto done;
    memset(pad, 0x5c, sizeof pad);
    for (size_t i = 0; i < sizeof auth; i++)
        pad[i] ^= auth[i];
    if (EVP_DigestInit_ex(s->outer, EVP_sha1(), NULL) != 1
        || EVP_DigestUpdate(s->outer, pad, sizeof pad) != 1)
        goto done;
    rc = SE_SRTP_OK;
done:
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(auth, sizeof auth);
    OPENSSL_cleanse(pad, sizeof pad);
    return rc;
}

void
se_srtp_free(se_srtp_ctx *c)
{
    if (c == NULL)
        return;
    session_clear(&c->rtp);
    session_clear(&c->rtcp);
    EVP_MD_CTX_free(c->scratch);
    OPENSSL_cleanse(c, sizeof *c + c->max_streams * sizeof(se_stream));
    free(c);
}

/* A context for one direction of one master key, tracking up to max_streams
 * SSRCs.  key is 16 bytes, salt 14 bytes.  NULL on allocation or libcrypto
 * failure. */
se_srtp_ctx *
se_srtp_new(const se_srtp_params *params, const uint8_t key[SE_SRTP_KEY_LEN],
            const uint8_t salt[SE_SRTP_SALT_LEN], int direction, unsigned max_streams)
{
    se_srtp_ctx *c;
    EVP_CIPHER_CTX *master;

    if (max_streams < 1 || max_streams > SE_SRTP_MAX_SSRCS || params->rtp_tag_len < 1
        || params->rtp_tag_len > SE_SRTP_MAX_TAG || params->rtcp_tag_len < 1
        || params->rtcp_tag_len > SE_SRTP_MAX_TAG)
        return NULL;
    c = calloc(1, sizeof *c + (size_t)max_streams * sizeof(se_stream));
    if (c == NULL)
        return NULL;
    c->params = *params;
    c->direction = direction;
    c->max_streams = max_streams;
    if ((master = se_aes_ecb_new(key)) == NULL)
        goto fail;
    if (session_init(&c->rtp, master, salt, LABEL_RTP_ENC, LABEL_RTP_AUTH, LABEL_RTP_SALT)
            != SE_SRTP_OK
        || session_init(&c->rtcp, master, salt, LABEL_RTCP_ENC, LABEL_RTCP_AUTH,
                        LABEL_RTCP_SALT) != SE_SRTP_OK) {
        EVP_CIPHER_CTX_free(master);
        goto fail;
    }
    EVP_CIPHER_CTX_free(master);
    if ((c->scratch = EVP_MD_CTX_new()) == NULL
        || EVP_MD_CTX_copy_ex(c->scratch, c->rtp.inner) != 1)
        goto fail;
    return c;
fail:
    se_srtp_free(c);
    return NULL;
}

/* ---------------------------------------------------------------- replay window */

static int
window_check(const se_window *w, uint64_t idx)
{
    uint64_t d;
    if (!w->seen || idx > w->top)
        return SE_SRTP_OK;
    d = w->top - idx;
    if (d >= SE_SRTP_WINDOW)
        return SE_SRTP_ERR_REPLAY; /* older than the window */
    if ((w->bits[d >> 6] >> (d & 63)) & 1)
        return SE_SRTP_ERR_REPLAY; /* seen */
    return SE_SRTP_OK;
}

static void
window_add(se_window *w, uint64_t idx)
{
    if (!w->seen) {
        w->seen = 1;
        w->top = idx;
        w->bits[0] = 1;
        w->bits[1] = 0;
    } else if (idx > w->top) {
        uint64_t s = idx - w->top;
        if (s >= 128) {
            w->bits[0] = w->bits[1] = 0;
        } else if (s >= 64) {
            w->bits[1] = w->bits[0] << (s - 64);
            w->bits[0] = 0;
        } else {
            w->bits[1] = (w->bits[1] << s) | (w->bits[0] >> (64 - s));
            w->bits[0] <<= s;
        }
        w->bits[0] |= 1;
        w->top = idx;
    } else {
        uint64_t d = w->top - idx; /* < 128: window_check passed */
        w->bits[d >> 6] |= UINT64_C(1) << (d & 63);
    }
}

/* RFC 3711 section 3.3.1 and Appendix A: the 48-bit index of sequence number
 * seq, guessed from the highest index seen so far.  As libsrtp does, a stream
 * whose highest index is at most 2^15 has ROC 0: Appendix A would guess
 * ROC - 1 = 2^32 - 1 for a late packet there. */
static uint64_t
estimate_index(const se_window *w, uint16_t seq)
{
    uint64_t roc, guess;
    int ls;

    if (!w->seen || w->top <= 0x8000)
        return seq;
    roc = w->top >> 16;
    ls = (int)(w->top & 0xffff);
    if (ls < 0x8000)
        guess = ((int)seq - ls > 0x8000) ? roc - 1 : roc;
    else
        guess = (ls - 0x8000 > (int)seq) ? roc + 1 : roc;
    return (guess << 16) | seq;
}

/* ---------------------------------------------------------------- streams */

se_stream *
se_stream_find(se_srtp_ctx *c, uint32_t ssrc)
{
    if (c->n_streams > 0 && c->streams[c->last].ssrc == ssrc)
        return &c->streams[c->last];
    for (unsigned i = 0; i < c->n_streams; i++) {
        if (c->streams[i].ssrc == ssrc) {
            c->last = i;
            return &c->streams[i];
        }
    }
    return NULL;
}

static se_stream *
stream_add(se_srtp_ctx *c, uint32_t ssrc)
{
    se_stream *s;
    if (c->n_streams >= c->max_streams)
        return NULL;
    c->last = c->n_streams++;
    s = &c->streams[c->last];
    memset(s, 0, sizeof *s);
    s->ssrc = ssrc;
    return s;
}

static inline int
refuse(se_srtp_ctx *c, int rc)
{
    if (rc >= 1 && rc < SE_SRTP_N_REASONS)
        c->counters.refused[rc]++;
    return rc;
}

/* Length of the RTP header (fixed part, CSRCs, extension), or -1 if it does
 * not fit in len bytes or the version is not 2.  RFC 3550 section 5.1, 5.3.1. */
static long
rtp_header_len(const uint8_t *p, size_t len)
{
    size_t h;
    if ((p[0] >> 6) != 2)
        return -1;
    h = SE_SRTP_RTP_HEADER + 4 * (size_t)(p[0] & 0x0f);
    if (p[0] & 0x10) {
        if (h + 4 > len)
            return -1;
        h += 4 + 4 * (size_t)get16(p + h + 2);
    }
    return h > len ? -1 : (long)h;
}

/* ---------------------------------------------------------------- SRTP */

/* RTP packet src[0:len] -> SRTP packet dst[0:*out_len] (len + tag), dst may be
 * src if its capacity cap leaves room for the tag. */
int
se_srtp_protect_rtp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                    size_t *out_len)
{
    const unsigned tag_len = c->params.rtp_tag_len;
    uint8_t iv[16], mac[SE_SRTP_MAX_TAG], roc_be[4];
    uint64_t idx;
    uint32_t ssrc;
    se_stream *s;
    long h;
    int rc;

    if (c->direction != SE_SRTP_OUTBOUND)
        return SE_SRTP_ERR_DIRECTION;
    if (len > SE_SRTP_MAX_PACKET)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (len < SE_SRTP_RTP_HEADER)
        return refuse(c, SE_SRTP_ERR_SHORT);
    if ((h = rtp_header_len(src, len)) < 0)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (cap < len + tag_len)
        return SE_SRTP_ERR_SPACE;
    ssrc = get32(src + 8);
    s = se_stream_find(c, ssrc);
    if (s == NULL && (s = stream_add(c, ssrc)) == NULL)
        return refuse(c, SE_SRTP_ERR_SSRC_LIMIT);
    /* The sender estimates its index like a receiver (as libsrtp does), so a
     * relay forwarding reordered RTP gets the right ROC, and never encrypts
     * two packets under one index. */
    idx = estimate_index(&s->rtp, get16(src + 2));
    if (idx > SE_SRTP_MAX_INDEX || window_check(&s->rtp, idx) != SE_SRTP_OK)
        return refuse(c, SE_SRTP_ERR_REPLAY);

    /* IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16), section 4.1.1 */
    memcpy(iv, c->rtp.salt, SE_SRTP_SALT_LEN);
    iv[14] = iv[15] = 0;
    for (int i = 0; i < 4; i++)
        iv[4 + i] ^= src[8 + i];
    for (int i = 0; i < 6; i++)
        iv[8 + i] ^= (uint8_t)(idx >> (40 - 8 * i));
    if (dst != src)
        memcpy(dst, src, (size_t)h);
    if ((rc = se_aes_cm_xor(c->rtp.aes, iv, src + h, dst + h, len - (size_t)h)) != SE_SRTP_OK)
        return rc;
    /* tag = HMAC(k_a, header || encrypted payload || ROC), section 4.2 */
    put32(roc_be, (uint32_t)(idx >> 16));
    if ((rc = se_hmac_sha1(&c->rtp, c->scratch, dst, len, roc_be, 4, mac)) != SE_SRTP_OK)
        return rc;
    memcpy(dst + len, mac, tag_len);
    window_add(&s->rtp, idx);
    c->counters.rtp_packets++;
    *out_len = len + tag_len;
    return SE_SRTP_OK;
}

/* SRTP packet src[0:len] -> RTP packet dst[0:*out_len] (len - tag). */
int
se_srtp_unprotect_rtp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                      size_t *out_len)
{
    const unsigned tag_len = c->params.rtp_tag_len;
    uint8_t iv[16], mac[SE_SRTP_MAX_TAG], roc_be[4];
    se_window fresh = {0, {0, 0}, 0};
    const se_window *w;
    uint64_t idx;
    uint32_t ssrc;
    se_stream *s;
    size_t body;
    long h;
    int rc;

    if (c->direction != SE_SRTP_INBOUND)
        return SE_SRTP_ERR_DIRECTION;
    if (len > SE_SRTP_MAX_PACKET)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (len < SE_SRTP_RTP_HEADER + tag_len)
        return refuse(c, SE_SRTP_ERR_SHORT);
    body = len - tag_len;
    if ((h = rtp_header_len(src, body)) < 0)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (cap < body)
        return SE_SRTP_ERR_SPACE;
    ssrc = get32(src + 8);
    s = se_stream_find(c, ssrc);
    if (s == NULL && c->n_streams >= c->max_streams)
        return refuse(c, SE_SRTP_ERR_SSRC_LIMIT);
    w = s != NULL ? &s->rtp : &fresh;
    idx = estimate_index(w, get16(src + 2));
    if (idx > SE_SRTP_MAX_INDEX || window_check(w, idx) != SE_SRTP_OK)
        return refuse(c, SE_SRTP_ERR_REPLAY);
    put32(roc_be, (uint32_t)(idx >> 16));
    if ((rc = se_hmac_sha1(&c->rtp, c->scratch, src, body, roc_be, 4, mac)) != SE_SRTP_OK)
        return rc;
    if (CRYPTO_memcmp(mac, src + body, tag_len) != 0)
        return refuse(c, SE_SRTP_ERR_AUTH);

    memcpy(iv, c->rtp.salt, SE_SRTP_SALT_LEN);
    iv[14] = iv[15] = 0;
    for (int i = 0; i < 4; i++)
        iv[4 + i] ^= src[8 + i];
    for (int i = 0; i < 6; i++)
        iv[8 + i] ^= (uint8_t)(idx >> (40 - 8 * i));
    if (dst != src)
        memcpy(dst, src, (size_t)h);
    if ((rc = se_aes_cm_xor(c->rtp.aes, iv, src + h, dst + h, body - (size_t)h)) != SE_SRTP_OK)
        return rc;
    if (s == NULL)
        s = stream_add(c, ssrc); /* authenticated: now it may take a slot */
    window_add(&s->rtp, idx);
    c->counters.rtp_packets++;
    *out_len = body;
    return SE_SRTP_OK;
}

/* ---------------------------------------------------------------- SRTCP */

static void
rtcp_iv(const se_srtp_ctx *c, const uint8_t *pkt, uint32_t index, uint8_t iv[16])
{
    memcpy(iv, c->rtcp.salt, SE_SRTP_SALT_LEN);
    iv[14] = iv[15] = 0;
    for (int i = 0; i < 4; i++)
        iv[4 + i] ^= pkt[4 + i];
    for (int i = 0; i < 4; i++)
        iv[10 + i] ^= (uint8_t)(index >> (24 - 8 * i));
}

/* RTCP packet (compound or not) src[0:len] -> SRTCP packet dst[0:*out_len]:
 * encrypted from byte 8, then E=1 and the 31-bit SRTCP index, then the tag
 * over everything before it (RFC 3711 section 3.4).  The first index of an
 * SSRC is 0 (section 3.4: "MUST be set to zero before the first SRTCP packet
 * is sent"). */
int
se_srtp_protect_rtcp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                     size_t *out_len)
{
    const unsigned tag_len = c->params.rtcp_tag_len;
    uint8_t iv[16], mac[SE_SRTP_MAX_TAG];
    uint32_t ssrc, index;
    se_stream *s;
    int rc;

    if (c->direction != SE_SRTP_OUTBOUND)
        return SE_SRTP_ERR_DIRECTION;
    if (len > SE_SRTP_MAX_PACKET)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (len < SE_SRTP_RTCP_HEADER)
        return refuse(c, SE_SRTP_ERR_SHORT);
    if ((src[0] >> 6) != 2)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (cap < len + SE_SRTP_SRTCP_INDEX + tag_len)
        return SE_SRTP_ERR_SPACE;
    ssrc = get32(src + 4);
    s = se_stream_find(c, ssrc);
    if (s == NULL && (s = stream_add(c, ssrc)) == NULL)
        return refuse(c, SE_SRTP_ERR_SSRC_LIMIT);
    index = s->rtcp_next;
    if (index > SE_SRTCP_MAX_INDEX)
        return refuse(c, SE_SRTP_ERR_REPLAY); /* 2^31 packets: the key is spent */

    rtcp_iv(c, src, index, iv);
    if (dst != src)
        memcpy(dst, src, SE_SRTP_RTCP_HEADER);
    if ((rc = se_aes_cm_xor(c->rtcp.aes, iv, src + SE_SRTP_RTCP_HEADER, dst + SE_SRTP_RTCP_HEADER,
                         len - SE_SRTP_RTCP_HEADER)) != SE_SRTP_OK)
        return rc;
    put32(dst + len, index | UINT32_C(0x80000000));
    if ((rc = se_hmac_sha1(&c->rtcp, c->scratch, dst, len + SE_SRTP_SRTCP_INDEX, NULL, 0, mac))
        != SE_SRTP_OK)
        return rc;
    memcpy(dst + len + SE_SRTP_SRTCP_INDEX, mac, tag_len);
    s->rtcp_next = index + 1;
    c->counters.rtcp_packets++;
    *out_len = len + SE_SRTP_SRTCP_INDEX + tag_len;
    return SE_SRTP_OK;
}

/* SRTCP packet src[0:len] -> RTCP packet dst[0:*out_len]; a packet with E=0
 * is authenticated but was not encrypted, and is passed through. */
int
se_srtp_unprotect_rtcp(se_srtp_ctx *c, const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                       size_t *out_len)
{
    const unsigned tag_len = c->params.rtcp_tag_len;
    uint8_t iv[16], mac[SE_SRTP_MAX_TAG];
    se_window fresh = {0, {0, 0}, 0};
    const se_window *w;
    uint32_t ssrc, e_index, index;
    se_stream *s;
    size_t body, rtcp_len;
    int rc;

    if (c->direction != SE_SRTP_INBOUND)
        return SE_SRTP_ERR_DIRECTION;
    if (len > SE_SRTP_MAX_PACKET)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    if (len < SE_SRTP_RTCP_HEADER + SE_SRTP_SRTCP_INDEX + tag_len)
        return refuse(c, SE_SRTP_ERR_SHORT);
    if ((src[0] >> 6) != 2)
        return refuse(c, SE_SRTP_ERR_FORMAT);
    body = len - tag_len;
    rtcp_len = body - SE_SRTP_SRTCP_INDEX;
    if (cap < rtcp_len)
        return SE_SRTP_ERR_SPACE;
    ssrc = get32(src + 4);
    s = se_stream_find(c, ssrc);
    if (s == NULL && c->n_streams >= c->max_streams)
        return refuse(c, SE_SRTP_ERR_SSRC_LIMIT);
    e_index = get32(src + rtcp_len);
    index = e_index & SE_SRTCP_MAX_INDEX;
    w = s != NULL ? &s->rtcp : &fresh;
    if (window_check(w, index) != SE_SRTP_OK)
        return refuse(c, SE_SRTP_ERR_REPLAY);
    if ((rc = se_hmac_sha1(&c->rtcp, c->scratch, src, body, NULL, 0, mac)) != SE_SRTP_OK)
        return rc;
    if (CRYPTO_memcmp(mac, src + body, tag_len) != 0)
        return refuse(c, SE_SRTP_ERR_AUTH);

    if (dst != src)
        memcpy(dst, src, SE_SRTP_RTCP_HEADER);
    if (e_index & UINT32_C(0x80000000)) {
        rtcp_iv(c, src, index, iv);
        if ((rc = se_aes_cm_xor(c->rtcp.aes, iv, src + SE_SRTP_RTCP_HEADER,
                             dst + SE_SRTP_RTCP_HEADER, rtcp_len - SE_SRTP_RTCP_HEADER))
            != SE_SRTP_OK)
            return rc;
    } else if (dst != src) {
        memcpy(dst + SE_SRTP_RTCP_HEADER, src + SE_SRTP_RTCP_HEADER,
               rtcp_len - SE_SRTP_RTCP_HEADER);
    }
    if (s == NULL)
        s = stream_add(c, ssrc);
    window_add(&s->rtcp, index);
    c->counters.rtcp_packets++;
    *out_len = rtcp_len;
    return SE_SRTP_OK;
}

const se_srtp_counters *
se_srtp_get_counters(const se_srtp_ctx *c)
{
    return &c->counters;
}

