/*
 * media/fastpath.c: the relay's C data plane (issue 7); the design is in fastpath.h.
 *
 * The packet path of a loop, one step per line, as media/relay.py route() reads
 * (every failure a counted drop, every unusual datagram punted to Python):
 *
 *   1. demultiplex by the first byte (RFC 7983 section 7): STUN and DTLS are
 *      punted, anything else that is not RTP/RTCP is dropped; RTP versus RTCP by
 *      the socket, or by the second byte on an rtcp-mux leg (RFC 5761 section 4);
 *   2. check the fixed header (RTP: CSRCs and extension inside the datagram);
 *      a dtls-srtp leg without keys drops here (dtls_pending);
 *   3. the source must be the leg's accepted (latched) one, else punt: latching
 *      and its proofs are Python's (media/latching.py); every punt (STUN and DTLS
 *      of step 1 too) within the leg's budget (a token bucket on the plane's clock,
 *      SE_FP_PUNT_RATE in fastpath.h; one for the endpoint's own host, one for any
 *      other source), past it dropped (punt_limited);
 *   4. RTCP only: the leg's token bucket (an RTCP flood is dropped), on the
 *      plane's clock (se_fp_now: CLOCK_MONOTONIC, as Python's time.monotonic);
 *   5. unprotect in place with the leg's inbound SRTP context;
 *   6. the peer leg's destination (Python keeps it: latched, else signalled);
 *   7. protect in place with the peer's outbound context (never plain RTP to a
 *      dtls-srtp peer without keys);
 *   8. count, and queue for sendmmsg from the peer leg's socket.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

const char *const se_fp_drop_names[SE_FP_N_DROPS] = {
    [SE_FP_TOO_SHORT] = "too_short",
    [SE_FP_NOT_RTP] = "not_rtp",
    [SE_FP_MALFORMED] = "malformed",
    [SE_FP_AUTH_FAILED] = "auth_failed",
    [SE_FP_REPLAY] = "replay",
    [SE_FP_RTCP_FLOOD] = "rtcp_flood",
    [SE_FP_NO_DESTINATION] = "no_destination",
    [SE_FP_PROTECT_FAILED] = "protect_failed",
    [SE_FP_DTLS_PENDING] = "dtls_pending",
    [SE_FP_TOO_LONG] = "too_long",
    [SE_FP_PUNT_OVERFLOW] = "punt_overflow",
    [SE_FP_PUNT_LIMITED] = "punt_limited",
};

#define V_FORWARD SE_FP_FORWARDED
#define V_PUNT (-2)
#define WAKE_TAG UINT64_MAX

/* One writer per counter: a relaxed load and store, no lock prefix, no lost update. */
#define ADD(field, n) __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

static inline uint16_t
rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The plane's time given the real time ``real`` (a loop has just read it). */
static uint64_t
plane_time(const se_fp_plane *p, uint64_t real)
{
    uint64_t fixed = __atomic_load_n(&p->clock_ns, __ATOMIC_RELAXED);
    return fixed ? fixed : real;
}

uint64_t
se_fp_now(const se_fp_plane *p)
{
    uint64_t fixed = plane_time(p, 0);
    return fixed ? fixed : now_ns();
}

static int
addr_eq(const se_fp_addr *a, const se_fp_addr *b)
{
    if (a->len == 0 || b->len == 0 || a->u.sa.sa_family != b->u.sa.sa_family)
        return 0;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_port == b->u.in4.sin_port
               && a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
    if (a->u.sa.sa_family == AF_INET6)
        return a->u.in6.sin6_port == b->u.in6.sin6_port
               && memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
    return 0;
}

/* The same host, ports aside: a source against the endpoint's address (the punt
 * budget's test, fastpath.h).  Only the IP: an endpoint's checks, RTCP and first
 * packets may come from ports other than the one it signalled. */
static int
host_eq(const se_fp_addr *a, const se_fp_addr *b)
{
    if (a->len == 0 || b->len == 0 || a->u.sa.sa_family != b->u.sa.sa_family)
        return 0;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
    if (a->u.sa.sa_family == AF_INET6)
        return memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
    return 0;
}

/* ---------------------------------------------------------------- per packet */

/* Steps 1-2: V_FORWARD with *rtcp and *ssrc, V_PUNT with *kind, or a drop reason. */
static int
demux(unsigned flags, int on_rtcp_socket, const uint8_t *d, size_t n, int *kind, int *rtcp,
      uint32_t *ssrc)
{
    uint8_t b;
    size_t h;

    if (n == 0)
        return SE_FP_TOO_SHORT;
    b = d[0];
    if (b <= 3) {
        *kind = SE_FP_STUN;
        return V_PUNT;
    }
    if (b >= 20 && b <= 63) {
        *kind = SE_FP_DTLS;
        return V_PUNT;
    }
    if (b < 128 || b > 191)
        return SE_FP_NOT_RTP;
    *kind = (n > 1 && d[1] >= 192 && d[1] <= 223) ? SE_FP_RTCP : SE_FP_RTP;
    *rtcp = on_rtcp_socket || ((flags & SE_FP_MUX) && *kind == SE_FP_RTCP);
    if (*rtcp) {
        if (n < 8)
            return SE_FP_TOO_SHORT;
        if (*kind != SE_FP_RTCP)
            return SE_FP_NOT_RTP; /* an RTP payload type on the RTCP port */
        *ssrc = rd32(d + 4);
        return V_FORWARD;
    }
    if (n < 12)
        return SE_FP_TOO_SHORT;
    h = 12 + 4 * (size_t)(b & 0x0f);
    if (b & 0x10) {
        if (n < h + 4)
            return SE_FP_MALFORMED;
        h += 4 + 4 * (size_t)rd16(d + h + 2);
    }
    if (n < h)
        return SE_FP_MALFORMED;
    *ssrc = rd32(d + 8);
    return V_FORWARD;
}

static int
crypto_reason(int rc)
{
    switch (rc) {
    case SE_SRTP_ERR_SHORT:
        return SE_FP_TOO_SHORT;
    case SE_SRTP_ERR_FORMAT:
        return SE_FP_MALFORMED;
    case SE_SRTP_ERR_REPLAY:
        return SE_FP_REPLAY;
    default: /* auth, an SSRC over the table's limit, libcrypto: as relay.py */
        return SE_FP_AUTH_FAILED;
    }
}

/* Steps 5-7 on d[0:n] in place (room bytes there): V_FORWARD with the result's
 * length, the peer, the socket to send from and the destination; else a drop
 * reason.  *authenticated: step 5 passed (for Python's latching). */
static int
transform(se_fp_leg *leg, int rtcp, uint8_t *d, size_t n, size_t room, size_t *out_len,
          se_fp_leg **peer_out, int *out_fd, const se_fp_addr **dst, int *authenticated)
{
    se_fp_leg *peer;
    size_t len = n;
    int rc;

    if (leg->inbound != NULL) {
        rc = rtcp ? se_srtp_unprotect_rtcp(leg->inbound, d, n, d, room, &len)
                  : se_srtp_unprotect_rtp(leg->inbound, d, n, d, room, &len);
        if (rc != SE_SRTP_OK)
            return crypto_reason(rc);
    }
    *authenticated = 1;
    peer = leg->peer;
    if (peer == NULL)
        return SE_FP_NO_DESTINATION;
    *dst = rtcp ? &peer->rtcp_dst : &peer->rtp_dst;
    if ((*dst)->len == 0)
        return SE_FP_NO_DESTINATION;
    if (peer->outbound == NULL && (peer->flags & SE_FP_WEBRTC))
        return SE_FP_DTLS_PENDING;
    if (peer->outbound != NULL) {
        rc = rtcp ? se_srtp_protect_rtcp(peer->outbound, d, len, d, room, &len)
                  : se_srtp_protect_rtp(peer->outbound, d, len, d, room, &len);
        if (rc != SE_SRTP_OK)
            return SE_FP_PROTECT_FAILED;
    }
    *out_len = len;
    *peer_out = peer;
    *out_fd = (rtcp && peer->rtcp_fd >= 0) ? peer->rtcp_fd : peer->fd;
    return V_FORWARD;
}

/* A token bucket (the RTCP rate, the punt budget) brought to now: its tokens.  A
 * clock Python set back in time (set_clock) adds nothing and takes nothing. */
static double
refill(double *tokens, double *stamp, double rate, double burst, double now)
{
    double t = *tokens;
    if (now > *stamp)
        t += (now - *stamp) * rate;
    *stamp = now;
    if (t > burst)
        t = burst;
    *tokens = t;
    return t;
}

static int
take_rtcp_token(const se_fp_plane *p, se_fp_leg *leg, double now)
{
    if (refill(&leg->rtcp_tokens, &leg->rtcp_stamp, p->rtcp_rate, p->rtcp_burst, now) < 1.0)
        return 0;
    leg->rtcp_tokens -= 1.0;
    return 1;
}

static void
drop(se_fp_leg *leg, int reason, const se_fp_addr *src)
{
    ADD(leg->c.received, 1);
    ADD(leg->c.drops[reason], 1);
    leg->drop_src[reason] = *src; /* read by Python under the loop mutexes */
}

/* Into this loop's ring for Python, within the leg's punt budget; 1 if queued.  The
 * budget is one of two buckets: the endpoint's own, for a source on the host media
 * for the endpoint goes to, or the strangers' for any other (fastpath.h).  A token
 * is spent only on a datagram queued: a full ring costs the leg nothing. */
static int
punt(se_fp_loop *lp, se_fp_leg *leg, int kind, int on_rtcp_socket, const uint8_t *d, size_t n,
     const se_fp_addr *src, double now)
{
    const se_fp_plane *p = lp->plane;
    uint64_t head = lp->ring_head;
    uint64_t tail = __atomic_load_n(&lp->ring_tail, __ATOMIC_ACQUIRE);
    int own = host_eq(src, &leg->rtp_dst) || host_eq(src, &leg->rtcp_dst)
              || host_eq(src, &leg->sig_host);
    double *tokens = own ? &leg->own_tokens : &leg->punt_tokens;
    double *stamp = own ? &leg->own_stamp : &leg->punt_stamp;
    se_fp_punt *e;

    if (refill(tokens, stamp, p->punt_rate, p->punt_burst, now) < 1.0) {
        drop(leg, SE_FP_PUNT_LIMITED, src);
        return 0;
    }
    if (head - tail >= SE_FP_RING) {
        drop(leg, SE_FP_PUNT_OVERFLOW, src);
        return 0;
    }
    *tokens -= 1.0;
    if (own && (kind == SE_FP_RTP || kind == SE_FP_RTCP))
        leg->punt_mark = head + 1; /* what the accepted source must not overtake */
    e = &lp->ring[head % SE_FP_RING];
    e->handle = leg->handle;
    e->kind = (uint8_t)kind;
    e->on_rtcp_socket = (uint8_t)on_rtcp_socket;
    e->len = (uint16_t)n;
    e->src = *src;
    memcpy(e->data, d, n);
    __atomic_store_n(&lp->ring_head, head + 1, __ATOMIC_RELEASE);
    ADD(leg->c.to_python, 1);
    return 1;
}

/* One datagram of a loop; queues it in smsg[*ns] when forwarded; 1 if punted. */
static int
step(se_fp_loop *lp, se_fp_leg *leg, int on_rtcp_socket, unsigned i, double now, uint64_t ns_now,
     unsigned *ns)
{
    uint8_t *d = lp->buf[i];
    size_t n = lp->rmsg[i].msg_len, out_len = 0;
    const se_fp_addr *src = &lp->rsrc[i], *dst = NULL;
    se_fp_leg *peer = NULL;
    int kind = 0, rtcp = 0, fd = -1, authenticated = 0, v;
    uint32_t ssrc = 0;

    if (lp->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) {
        drop(leg, SE_FP_TOO_LONG, src);
        return 0;
    }
    v = demux(leg->flags, on_rtcp_socket, d, n, &kind, &rtcp, &ssrc);
    if (v == V_PUNT)
        return punt(lp, leg, kind, on_rtcp_socket, d, n, src, now);
    if (v != V_FORWARD) {
        drop(leg, v, src);
        return 0;
    }
    if (leg->inbound == NULL && (leg->flags & SE_FP_WEBRTC)) {
        drop(leg, SE_FP_DTLS_PENDING, src);
        return 0;
    }
    if (!addr_eq(rtcp ? &leg->rtcp_src : &leg->rtp_src, src))
        return punt(lp, leg, kind, on_rtcp_socket, d, n, src, now);
    if (leg->punt_mark > __atomic_load_n(&lp->ring_done, __ATOMIC_ACQUIRE)) {
        /* Python has not handled the leg's punts yet: this one goes behind them */
        if (!punt(lp, leg, kind, on_rtcp_socket, d, n, src, now))
            return 0;
        leg->punt_mark = lp->ring_head;
        return 1;
    }
    if (rtcp && !take_rtcp_token(lp->plane, leg, now)) {
        drop(leg, SE_FP_RTCP_FLOOD, src);
        return 0;
    }
    v = transform(leg, rtcp, d, n, SE_FP_ROOM, &out_len, &peer, &fd, &dst, &authenticated);
    if (authenticated) {
        SET(leg->c.last_rx_ns, ns_now);
        SET(leg->c.last_ssrc, ssrc);
        if (rtcp)
            SET(leg->c.rtcp_ssrc, SE_FP_SSRC_SEEN | ssrc);
        else
            SET(leg->c.rtp_ssrc, SE_FP_SSRC_SEEN | ssrc);
    }
    if (v != V_FORWARD) {
        drop(leg, v, src);
        return 0;
    }
    ADD(leg->c.received, 1);
    ADD(leg->c.packets_in, 1);
    ADD(leg->c.bytes_in, n);
    ADD(peer->c.packets_out, 1);
    ADD(peer->c.bytes_out, out_len);
    if (rtcp) {
        ADD(leg->c.rtcp_in, 1);
        ADD(peer->c.rtcp_out, 1);
    }
    lp->siov[*ns].iov_base = d;
    lp->siov[*ns].iov_len = out_len;
    lp->sdst[*ns] = *dst;
    lp->smsg[*ns].msg_hdr.msg_name = &lp->sdst[*ns].u;
    lp->smsg[*ns].msg_hdr.msg_namelen = dst->len;
    lp->sfd[*ns] = fd;
    lp->sleg[*ns] = peer;
    (*ns)++;
    return 0;
}

/* sendmmsg the queued datagrams, one call per run of one socket. */
static void
flush(se_fp_loop *lp, unsigned ns)
{
    unsigned i = 0;
    while (i < ns) {
        unsigned j = i + 1, k = i;
        while (j < ns && lp->sfd[j] == lp->sfd[i])
            j++;
        while (k < j) {
            int r = sendmmsg(lp->sfd[i], &lp->smsg[k], j - k, MSG_DONTWAIT);
            ADD(lp->stats.send_calls, 1);
            if (r > 0) {
                ADD(lp->stats.sent, (uint64_t)r);
                k += (unsigned)r;
            } else {
                /* the datagram at k failed (buffer full, ICMP error): counted, skipped */
                ADD(lp->sleg[k]->c.send_errors, 1);
                k++;
            }
        }
        i = j;
    }
}

/* A receive slot as recvmmsg wants it: room for any source address, no flags.  The
 * kernel writes only the slots it fills, so a slot is reset once used, not all 32 per
 * call (each is a line of its own). */
static inline void
rmsg_reset(se_fp_loop *lp, unsigned i)
{
    lp->rmsg[i].msg_hdr.msg_namelen = sizeof lp->rsrc[i].u;
    lp->rmsg[i].msg_hdr.msg_flags = 0;
}

/* The lines that the steps read and write for a datagram on this leg (fastpath.h,
 * se_fp_leg: its line 1 and first counter line; its peer's lines 0 and 1 and
 * out-counter line), asked for before the recvmmsg, which hides their misses: after
 * a sleep in epoll_wait they are cold, and each was a miss of its own in the steps
 * (perf at 20 kpps over 100 calls: most of the loop's own time).  Line 0 of the
 * leg: prefetched by loop_main, loaded by its generation check. */
static inline void
prefetch_path(const se_fp_leg *leg)
{
    const se_fp_leg *peer = leg->peer;

    __builtin_prefetch(&leg->rtp_src);
    __builtin_prefetch(&leg->c, 1);
    if (peer != NULL) {
        __builtin_prefetch(peer);
        __builtin_prefetch(&peer->rtp_dst);
        __builtin_prefetch(&peer->c.packets_out, 1);
    }
}

/* Everything waiting on one socket, up to SE_FP_ROUNDS batches; datagrams punted. */
static int
drain_socket(se_fp_loop *lp, se_fp_leg *leg, int on_rtcp_socket, double now, uint64_t ns_now)
{
    int fd = on_rtcp_socket ? leg->rtcp_fd : leg->fd, punted = 0;

    prefetch_path(leg);
    for (int round = 0; round < SE_FP_ROUNDS; round++) {
        unsigned ns = 0;
        int r = recvmmsg(fd, lp->rmsg, SE_FP_BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0)
            break;
        ADD(lp->stats.recv_calls, 1);
        ADD(lp->stats.packets, (uint64_t)r);
        for (unsigned i = 0; i < (unsigned)r; i++) {
            lp->rsrc[i].len = lp->rmsg[i].msg_hdr.msg_namelen;
            punted += step(lp, leg, on_rtcp_socket, i, now, ns_now, &ns);
            rmsg_reset(lp, i);
        }
        if (ns > 0)
            flush(lp, ns);
        if (r < SE_FP_BATCH)
            break;
    }
    return punted;
}

/* The loop's mode and its gauge change together (the gauge then drops on its own
 * while the loop sleeps, and rises when it wakes in poll mode). */
static void
set_poll_mode(se_fp_loop *lp, int on)
{
    SET(lp->stats.poll_mode, (uint64_t)on);
    SET(lp->stats.polling, (uint64_t)on);
}

static void *
loop_main(void *arg)
{
    se_fp_loop *lp = arg;
    se_fp_plane *p = lp->plane;
    struct epoll_event ev[SE_FP_EVENTS];

    if (lp->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(lp->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set); /* best effort */
    }
    /* [media] fastpath_poll_us: after a batch, poll for that long before sleeping.
     * On a VM, a vCPU that sleeps is slow to wake (milliseconds at p99 here): the
     * wake-up, not the relaying, made the latency tail.  Polling costs CPU, so with
     * fastpath_poll_busy_pct a loop polls only while its batches already take that
     * share of its time: then polling at most multiplies its CPU by 100/pct, and an
     * idle or lightly loaded relay still sleeps.  Real time, not se_fp_now: a test's
     * fixed clock must not keep a loop polling forever. */
    const uint64_t poll_ns = p->poll_ns;
    const uint64_t busy_pct = p->poll_busy_pct;
    const int adaptive = poll_ns != 0 && busy_pct != 0; /* else the mode never changes */
    int polling = poll_ns != 0 && busy_pct == 0;
    uint64_t poll_until = 0, win_start = now_ns(), win_busy = 0, last_end = win_start;
    set_poll_mode(lp, polling);
    for (;;) {
        int timeout = polling && now_ns() < poll_until ? 0 : -1, n, punted = 0;
        uint64_t ns_now, t0, t1;
        if (timeout < 0 && polling)
            SET(lp->stats.polling, 0); /* the gauge: not while it sleeps */
        n = epoll_wait(lp->epfd, ev, SE_FP_EVENTS, timeout);
        if (timeout < 0 && polling)
            SET(lp->stats.polling, 1);
        if (n == 0)
            continue; /* polling, and nothing yet */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE))
            break;
        pthread_mutex_lock(&lp->mu);
        t0 = now_ns();
        ADD(lp->stats.wakeups, 1);
        if (t0 - last_end >= SE_FP_BUSY_WINDOW_NS) {
            /* Idle for a whole window: that window's busy share was nil.  Leave poll
             * mode now, not after this batch on a share that still counts the batches
             * before the quiet spell (a lone packet then would be followed by a poll). */
            if (adaptive && polling) {
                polling = 0;
                set_poll_mode(lp, 0);
            }
            win_start = t0;
            win_busy = 0;
        }
        /* The legs of all ready sockets asked for at once: their misses overlap
         * instead of coming one per socket (the checks below are unchanged; this
         * only reads, under the mutex). */
        for (int i = 0; i < n; i++) {
            uint32_t handle = (uint32_t)((ev[i].data.u64 >> 1) & 0x7fffffff);
            if (ev[i].data.u64 != WAKE_TAG && handle < p->max_legs && p->slots[handle] != NULL)
                __builtin_prefetch(p->slots[handle]);
        }
        ns_now = plane_time(p, t0);
        for (int i = 0; i < n; i++) {
            uint64_t tag = ev[i].data.u64;
            uint32_t handle, gen;
            se_fp_leg *leg;
            if (tag == WAKE_TAG) {
                uint64_t x;
                if (read(lp->wakefd, &x, sizeof x) < 0) { /* nothing to do: EAGAIN */
                }
                continue;
            }
            handle = (uint32_t)((tag >> 1) & 0x7fffffff);
            gen = (uint32_t)(tag >> 32);
            if (handle >= p->max_legs || (leg = p->slots[handle]) == NULL || leg->gen != gen
                || leg->loop != lp->index)
                continue; /* removed since epoll_wait returned */
            punted += drain_socket(lp, leg, (int)(tag & 1), (double)ns_now / 1e9, ns_now);
        }
        pthread_mutex_unlock(&lp->mu);
        if (punted > 0) {
            uint64_t one = 1;
            if (write(p->punt_fd, &one, sizeof one) < 0) { /* the counter is at its max */
            }
        }
        t1 = now_ns();
        ADD(lp->stats.busy_ns, t1 - t0);
        win_busy += t1 - t0;
        if (t1 - win_start >= SE_FP_BUSY_WINDOW_NS) {
            if (adaptive) {
                uint64_t share = win_busy * 100u / (t1 - win_start);
                int now_polling = polling ? share * 4u >= busy_pct * 3u : share >= busy_pct;
                if (now_polling != polling) {
                    polling = now_polling;
                    set_poll_mode(lp, polling);
                }
            }
            win_start = t1;
            win_busy = 0;
        }
        poll_until = t1 + poll_ns;
        last_end = t1;
    }
    return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

se_fp_plane *
se_fp_new(unsigned n_loops, uint32_t max_legs, double rtcp_rate, double rtcp_burst,
          double punt_rate, double punt_burst, const int *cpus)
{
    se_fp_plane *p;

    if (n_loops < 1 || n_loops > SE_FP_MAX_LOOPS || max_legs < 1 || max_legs > 0x7fffffff) {
        errno = EINVAL;
        return NULL;
    }
    if ((p = calloc(1, sizeof *p)) == NULL)
        return NULL;
    p->n_loops = n_loops;
    p->max_legs = max_legs;
    p->rtcp_rate = rtcp_rate;
    p->rtcp_burst = rtcp_burst;
    p->punt_rate = punt_rate;
    p->punt_burst = punt_burst;
    p->punt_fd = -1;
    p->slots = calloc(max_legs, sizeof *p->slots);
    p->gens = calloc(max_legs, sizeof *p->gens);
    p->free_list = calloc(max_legs, sizeof *p->free_list);
    p->loops = calloc(n_loops, sizeof *p->loops);
    if (p->slots == NULL || p->gens == NULL || p->free_list == NULL || p->loops == NULL)
        goto fail;
    for (uint32_t i = 0; i < max_legs; i++)
        p->free_list[i] = max_legs - 1 - i; /* handle 0 first */
    p->n_free = max_legs;
    for (unsigned i = 0; i < n_loops; i++) {
        se_fp_loop *lp = &p->loops[i];
        lp->plane = p;
        lp->index = (int)i;
        lp->epfd = lp->wakefd = -1;
        lp->cpu = cpus != NULL ? cpus[i] : -1;
        pthread_mutex_init(&lp->mu, NULL);
    }
    if ((p->punt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        goto fail;
    for (unsigned i = 0; i < n_loops; i++) {
        se_fp_loop *lp = &p->loops[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
        lp->ring = calloc(SE_FP_RING, sizeof *lp->ring);
        lp->buf = calloc(SE_FP_BATCH, sizeof *lp->buf);
        if (lp->ring == NULL || lp->buf == NULL)
            goto fail;
        if ((lp->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0
            || (lp->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0
            || epoll_ctl(lp->epfd, EPOLL_CTL_ADD, lp->wakefd, &ev) < 0)
            goto fail;
        for (unsigned k = 0; k < SE_FP_BATCH; k++) {
            lp->riov[k].iov_base = lp->buf[k];
            lp->riov[k].iov_len = SE_FP_MAX_DATAGRAM;
            lp->rmsg[k].msg_hdr.msg_iov = &lp->riov[k];
            lp->rmsg[k].msg_hdr.msg_iovlen = 1;
            lp->rmsg[k].msg_hdr.msg_name = &lp->rsrc[k].u;
            rmsg_reset(lp, k);
            lp->smsg[k].msg_hdr.msg_iov = &lp->siov[k];
            lp->smsg[k].msg_hdr.msg_iovlen = 1;
        }
    }
    return p;
fail: {
    int saved = errno ? errno : ENOMEM;
    se_fp_free(p);
    errno = saved;
    return NULL;
}
}

int
se_fp_start(se_fp_plane *p)
{
    sigset_t all, old;
    int rc = 0;

    if (p->started)
        return -EALREADY;
    /* The loops take no signal: Python's handlers stay on its main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < p->n_loops; i++) {
        se_fp_loop *lp = &p->loops[i];
        if ((rc = pthread_create(&lp->thread, NULL, loop_main, lp)) != 0)
            break;
        lp->running = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    p->started = 1;
    if (rc != 0) {
        se_fp_stop(p);
        return -rc;
    }
    return 0;
}

void
se_fp_stop(se_fp_plane *p)
{
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < p->n_loops; i++) {
        se_fp_loop *lp = &p->loops[i];
        uint64_t one = 1;
        if (!lp->running)
            continue;
        if (write(lp->wakefd, &one, sizeof one) < 0) { /* already signalled */
        }
        pthread_join(lp->thread, NULL);
        lp->running = 0;
    }
}

static void
leg_close(se_fp_leg *leg)
{
    if (leg->fd >= 0)
        close(leg->fd);
    if (leg->rtcp_fd >= 0)
        close(leg->rtcp_fd);
    free(leg);
}

void
se_fp_free(se_fp_plane *p)
{
    if (p == NULL)
        return;
    if (p->loops != NULL)
        se_fp_stop(p);
    if (p->slots != NULL)
        for (uint32_t i = 0; i < p->max_legs; i++)
            if (p->slots[i] != NULL)
                leg_close(p->slots[i]);
    if (p->loops != NULL) {
        for (unsigned i = 0; i < p->n_loops; i++) {
            se_fp_loop *lp = &p->loops[i];
            if (lp->epfd >= 0)
                close(lp->epfd);
            if (lp->wakefd >= 0)
                close(lp->wakefd);
            free(lp->ring);
            free(lp->buf);
            pthread_mutex_destroy(&lp->mu);
        }
    }
    if (p->punt_fd >= 0)
        close(p->punt_fd);
    free(p->slots);
    free(p->gens);
    free(p->free_list);
    free(p->loops);
    free(p);
}

/* ---------------------------------------------------------------- the table */

void
se_fp_lock_all(se_fp_plane *p)
{
    for (unsigned i = 0; i < p->n_loops; i++)
        pthread_mutex_lock(&p->loops[i].mu);
}

void
se_fp_unlock_all(se_fp_plane *p)
{
    for (unsigned i = p->n_loops; i-- > 0;)
        pthread_mutex_unlock(&p->loops[i].mu);
}

se_fp_leg *
se_fp_leg_of(se_fp_plane *p, uint32_t handle)
{
    return handle < p->max_legs ? p->slots[handle] : NULL;
}

static uint64_t
tag_of(const se_fp_leg *leg, int rtcp)
{
    return ((uint64_t)leg->gen << 32) | ((uint64_t)leg->handle << 1) | (uint64_t)(rtcp != 0);
}

long
se_fp_add(se_fp_plane *p, int fd, int rtcp_fd, unsigned flags, int loop)
{
    se_fp_leg *leg = NULL;
    struct epoll_event ev = {.events = EPOLLIN};
    se_fp_loop *lp;
    int err;

    if (loop >= (int)p->n_loops)
        return -EINVAL;
    if (posix_memalign((void **)&leg, 64, sizeof *leg) != 0)
        return -ENOMEM;
    memset(leg, 0, sizeof *leg);
    leg->rtcp_fd = -1;
    leg->flags = flags;
    /* a new leg may punt its whole burst at once, from either side, and relay its
     * whole RTCP burst (as media/relay.py's reference does); left at zero, the RTCP
     * bucket would start with (seconds since boot * rate) tokens */
    leg->punt_tokens = leg->own_tokens = p->punt_burst;
    leg->rtcp_tokens = p->rtcp_burst;
    leg->punt_stamp = leg->own_stamp = leg->rtcp_stamp = (double)se_fp_now(p) / 1e9;
    if ((leg->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0
        || (rtcp_fd >= 0 && (leg->rtcp_fd = fcntl(rtcp_fd, F_DUPFD_CLOEXEC, 0)) < 0)) {
        err = errno;
        leg_close(leg);
        return -err;
    }
    se_fp_lock_all(p);
    if (p->n_free == 0) {
        se_fp_unlock_all(p);
        leg_close(leg);
        return -ENOSPC;
    }
    if (loop < 0) { /* the loop with the fewest legs */
        loop = 0;
        for (unsigned i = 1; i < p->n_loops; i++)
            if (p->loops[i].n_legs < p->loops[loop].n_legs)
                loop = (int)i;
    }
    lp = &p->loops[loop];
    leg->handle = p->free_list[p->n_free - 1];
    leg->gen = p->gens[leg->handle];
    leg->loop = loop;
    ev.data.u64 = tag_of(leg, 0);
    if (epoll_ctl(lp->epfd, EPOLL_CTL_ADD, leg->fd, &ev) < 0)
        goto fail;
    if (leg->rtcp_fd >= 0) {
        ev.data.u64 = tag_of(leg, 1);
        if (epoll_ctl(lp->epfd, EPOLL_CTL_ADD, leg->rtcp_fd, &ev) < 0) {
            err = errno;
            epoll_ctl(lp->epfd, EPOLL_CTL_DEL, leg->fd, NULL);
            errno = err;
            goto fail;
        }
    }
    p->n_free--;
    p->slots[leg->handle] = leg;
    lp->n_legs++;
    se_fp_unlock_all(p);
    return (long)leg->handle;
fail:
    err = errno;
    se_fp_unlock_all(p);
    leg_close(leg);
    return -err;
}

void
se_fp_pair(se_fp_leg *a, se_fp_leg *b)
{
    if (a->peer != NULL && a->peer != a && a->peer->peer == a)
        a->peer->peer = NULL;
    if (b != NULL && b != a) {
        if (b->peer != NULL && b->peer != b && b->peer->peer == b)
            b->peer->peer = NULL;
        b->peer = a;
    }
    a->peer = b;
}

int
se_fp_remove(se_fp_plane *p, uint32_t handle, se_fp_counters *final)
{
    se_fp_leg *leg;
    se_fp_loop *lp;

    se_fp_lock_all(p);
    if ((leg = se_fp_leg_of(p, handle)) == NULL) {
        se_fp_unlock_all(p);
        return -ENOENT;
    }
    lp = &p->loops[leg->loop];
    epoll_ctl(lp->epfd, EPOLL_CTL_DEL, leg->fd, NULL);
    if (leg->rtcp_fd >= 0)
        epoll_ctl(lp->epfd, EPOLL_CTL_DEL, leg->rtcp_fd, NULL);
    se_fp_pair(leg, NULL);
    if (final != NULL)
        *final = leg->c;
    p->slots[handle] = NULL;
    p->gens[handle]++;
    p->free_list[p->n_free++] = handle;
    lp->n_legs--;
    se_fp_unlock_all(p);
    leg_close(leg);
    return 0;
}

int
se_fp_forward(se_fp_plane *p, uint32_t handle, int rtcp, uint8_t *data, size_t len,
              size_t room, int *authenticated, size_t *sent_len)
{
    se_fp_leg *leg, *peer = NULL;
    const se_fp_addr *dst = NULL;
    int fd = -1, v;
    size_t out_len = 0;
    uint32_t ssrc = 0;

    *authenticated = 0;
    se_fp_lock_all(p);
    if ((leg = se_fp_leg_of(p, handle)) == NULL) {
        se_fp_unlock_all(p);
        return SE_FP_NO_DESTINATION;
    }
    if (len >= (rtcp ? 8u : 12u)) /* in the clear under SRTP too */
        ssrc = rd32(data + (rtcp ? 4 : 8));
    if (rtcp && !take_rtcp_token(p, leg, (double)se_fp_now(p) / 1e9)) {
        se_fp_unlock_all(p);
        return SE_FP_RTCP_FLOOD;
    }
    v = transform(leg, rtcp, data, len, room, &out_len, &peer, &fd, &dst, authenticated);
    if (*authenticated && len >= (rtcp ? 8u : 12u)) /* the loop's owner is parked: no race */
        SET(*(rtcp ? &leg->c.rtcp_ssrc : &leg->c.rtp_ssrc), SE_FP_SSRC_SEEN | ssrc);
    if (v == V_FORWARD) {
        *sent_len = out_len;
        if (sendto(fd, data, out_len, MSG_DONTWAIT, &dst->u.sa, dst->len) < 0)
            v = SE_FP_SEND_ERROR;
    }
    se_fp_unlock_all(p);
    return v;
}

const se_fp_punt *
se_fp_ring_front(se_fp_loop *lp)
{
    uint64_t head = __atomic_load_n(&lp->ring_head, __ATOMIC_ACQUIRE);
    uint64_t tail = lp->ring_tail;
    return tail < head ? &lp->ring[tail % SE_FP_RING] : NULL;
}

void
se_fp_ring_pop(se_fp_loop *lp)
{
    __atomic_store_n(&lp->ring_tail, lp->ring_tail + 1, __ATOMIC_RELEASE);
}

void
se_fp_ring_handled(se_fp_loop *lp)
{
    __atomic_store_n(&lp->ring_done, lp->ring_tail, __ATOMIC_RELEASE);
}
