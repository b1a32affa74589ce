/*
 * media/fastpath.h: the relay's C data plane (issue 7), compiled into media._srtp.
 *
 * Python decides, C moves packets.  The plane is a forwarding table of legs that
 * Python writes (media/fastpath.py through the binding in fastpath_py.c) and that
 * loop threads read: per leg its sockets, the source it accepts media from (the
 * latched address), where media for its endpoint goes, the peer leg, the SRTP
 * contexts of the C core (srtp_core.h) for each direction, and its counters.
 *
 * Threads.  N loop threads (fastpath.c), each with its own epoll set over the
 * sockets of the legs it owns, its own wake eventfd and its own mutex.  A loop
 * waits in epoll_wait without its mutex, then takes it once for the whole batch
 * of ready sockets: recvmmsg up to SE_FP_BATCH datagrams per socket, the per-packet
 * steps in place, sendmmsg per destination socket.  Python's table changes take
 * every loop's mutex (in index order), so a loop sees a leg either before or after
 * a change, never half-way; they wait at most one batch.
 *
 * Who writes what.  Everything in a leg that Python sets is written under all
 * loop mutexes.  Counters are written by one thread each (relaxed atomic stores:
 * no lost updates, since there is one writer) and read by Python without a lock:
 * a leg's "in" counters by the loop that owns the leg; its "out" counters (what
 * was sent to its endpoint) by the loop of its peer, which is also the only user
 * of its outbound SRTP context; its inbound context by its own loop.
 *
 * Punting.  What the table cannot decide (STUN, DTLS, RTP or RTCP from any
 * source but the accepted one, hence every first packet of a leg before Python
 * latched it) goes to Python whole: a single-producer single-consumer ring per
 * loop, and one eventfd for the plane that the asyncio side watches.  Each leg
 * punts within a budget of its own (token buckets, SE_FP_PUNT_RATE: one for its
 * endpoint's host, one for everyone else): past it the datagram is dropped and
 * counted (punt_limited), so that one leg sprayed by a stranger cannot fill the ring
 * its loop's other legs share, nor starve that leg's own endpoint.  A full ring drops and
 * counts (punt_overflow).  Python forwards what it accepts through
 * se_fp_forward(), the same steps under the owning loop's mutex.
 *
 * Order.  Python latches a source after the first packets of it were punted, and
 * more of them may be in the ring, or in Python's hands, by then: forwarded in C
 * at once, the next packets would overtake them (a stream reordered at every
 * latch).  So a leg remembers where its newest media punt from its endpoint's host
 * went in the ring (punt_mark), Python says how far it has handled the ring
 * (ring_done: its next drain begins by saying that the last one is handled), and
 * media from the accepted source is punted too while the leg's mark is ahead: it
 * queues behind the packets it would overtake, and Python forwards them all in
 * order.  A stranger's punts (another host) set no mark, so a spray cannot keep a
 * leg's media out of C.
 *
 * Rules of this file and of fastpath.c: no Python object; no allocation per
 * packet; every datagram a loop reads ends forwarded, punted or dropped with a
 * counted reason, so received == packets_in + to_python + sum(drops) per leg.
 */
#ifndef SIPEDGE_FASTPATH_H
#define SIPEDGE_FASTPATH_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "srtp_core.h"

#define SE_FP_BATCH 32     /* datagrams per recvmmsg/sendmmsg */
#define SE_FP_EVENTS 64    /* ready sockets per epoll_wait */
#define SE_FP_ROUNDS 4     /* recvmmsg calls per ready socket per wake-up (fairness) */
#define SE_FP_MAX_DATAGRAM 2048 /* larger datagrams are dropped as too_long */
#define SE_FP_ROOM (SE_FP_MAX_DATAGRAM + SE_SRTP_SRTCP_INDEX + SE_SRTP_MAX_TAG + 4)
#define SE_FP_RING 512     /* punted datagrams waiting for Python, per loop */

/* The punt budget: token buckets per leg (two: see below), so that no one leg can
 * fill the ring that every leg of its loop shares (a stranger spraying one relay port
 * would otherwise starve the other calls' latching, ICE checks and DTLS handshakes).
 * What a leg legitimately punts:
 *   - latching (media/latching.py) needs one packet (plain RTP from a signalled host,
 *     or the first SRTP packet that authenticates), but every packet of that source
 *     is punted until Python has written the latch into the table: a few of a 50 pps
 *     audio stream; a video stream's first keyframe, which arrives in one burst
 *     (~100 KB / 1200 B: about 100 packets, up to ~150);
 *   - a leg that never latches in C (STRICT mode with an endpoint behind NAT, a
 *     plain-RTP stranger Python drops) punts all its media: 50 pps of audio and its
 *     RTCP must never be limited;
 *   - ICE-lite: the browser paces its checks at Ta = 50 ms (RFC 8445 section 14.2),
 *     20/s with retransmissions over a few candidate pairs, then a consent check
 *     every ~5 s (RFC 7675);
 *   - DTLS: a flight is a handful of datagrams (a certificate chain in fragments),
 *     retransmitted after 1 s, 2 s, ... (RFC 6347 section 4.2.4).
 * So R = 250/s is five times a 50 pps audio stream and leaves room for a ~200 pps
 * video stream's first moments plus checks and flights at once; B = 400 holds a
 * keyframe burst, a DTLS flight and a round of checks twice over, and stays under
 * the ring (512): one leg's whole burst at once still leaves the others room.  Past
 * the budget a datagram is dropped in C (punt_limited): Python never sees it.  These
 * are the defaults; an operator sets others with [media] punt_rate and punt_burst
 * (edge/config.py), passed to se_fp_new.
 *
 * Two buckets per leg, each of R and B.  With one, a stranger spraying a leg's port
 * spends the whole budget, and for as long as the spray lasts the leg's own endpoint
 * loses what it must punt: its first RTP (no latch: the call has no media), its ICE
 * checks (the browser gives up), its DTLS flights (no keys).  So a datagram whose
 * source IP is the IP media for the endpoint goes to (rtp_dst or rtcp_dst: the
 * address signalled in SDP until Python latches, then the latched one) draws on the
 * leg's own bucket (own_tokens); any other source on the strangers' (punt_tokens).
 * An endpoint behind a NAT signals its private address, but its packets come from
 * the NAT's public IP, which is where its SIP came from too: that IP (sig_host, the
 * relay's sip_source) draws on the own bucket as well, so a NATed phone's first RTP
 * and checks get through a spray before it is latched.
 * The cost per punt is up to three address compares, no allocation.  Limits: an
 * endpoint whose media leaves from an IP other than both its signalled address and
 * its SIP source (a separate media gateway behind a trunk) shares the strangers'
 * bucket until Python latches it, so a spray can still hold off its first latch;
 * and so does a leg the plane knows no addresses for; a spoofer who forges the
 * endpoint's IP can still starve it, which is no worse than one bucket.  A leg may
 * punt 2 B at once (its endpoint and a stranger together), more than the ring holds;
 * any two sprayed legs of a loop could already: the budget bounds each leg, the ring
 * drops the rest. */
#define SE_FP_PUNT_RATE 250.0  /* punts per second per bucket */
#define SE_FP_PUNT_BURST 400.0 /* bucket size */
#define SE_FP_MAX_LOOPS 256
/* The longest poll after a batch ([media] fastpath_poll_us): a millisecond. */
#define SE_FP_MAX_POLL_US 1000
/* How a loop decides whether to poll ([media] fastpath_poll_busy_pct): its busy
 * share over windows of this length.  It stops polling when the share falls below
 * 3/4 of the threshold, so a load near the threshold does not flip it every window. */
#define SE_FP_BUSY_WINDOW_NS 20000000u

/* Drop reasons, named as media.latching.DropReason where one exists. */
enum se_fp_drop {
    SE_FP_TOO_SHORT = 0,
    SE_FP_NOT_RTP,
    SE_FP_MALFORMED,
    SE_FP_AUTH_FAILED,
    SE_FP_REPLAY,
    SE_FP_RTCP_FLOOD,
    SE_FP_NO_DESTINATION,
    SE_FP_PROTECT_FAILED,
    SE_FP_DTLS_PENDING,
    SE_FP_TOO_LONG,      /* over SE_FP_MAX_DATAGRAM: truncated by recvmmsg */
    SE_FP_PUNT_OVERFLOW, /* Python's ring was full */
    SE_FP_PUNT_LIMITED,  /* past the leg's punt budget (SE_FP_PUNT_RATE, _BURST) */
    SE_FP_N_DROPS
};
extern const char *const se_fp_drop_names[SE_FP_N_DROPS];

/* What a punted datagram is (media.rtp.PacketKind values) and why it went up. */
enum se_fp_kind { SE_FP_RTP = 0, SE_FP_RTCP = 1, SE_FP_STUN = 2, SE_FP_DTLS = 3 };

/* Leg flags */
#define SE_FP_MUX 1u  /* RTCP arrives on the RTP socket (rtcp-mux): told apart by PT */
#define SE_FP_WEBRTC 2u /* a dtls-srtp leg: no media in or out before its keys */

#define SE_FP_SSRC_SEEN (1ull << 32) /* in rtp_ssrc / rtcp_ssrc: an SSRC is there */

typedef struct {
    socklen_t len; /* 0: no address */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } u;
} se_fp_addr;

typedef struct {
    /* written by the leg's own loop; what every forwarded packet writes first, on
     * the struct's first line (one line per packet, not two) */
    uint64_t received; /* datagrams decided in C (not counting those punted) */
    uint64_t packets_in, bytes_in, rtcp_in;
    uint64_t to_python;  /* punted */
    uint64_t last_rx_ns; /* CLOCK_MONOTONIC of the last packet accepted */
    uint64_t last_ssrc;  /* SSRC of that packet */
    /* SSRC_SEEN | SSRC of the last RTP (RTCP) packet that passed the inbound step
     * from the accepted source; 0 since that source was set.  Python's latch
     * follows it (media.latching.Latch.follow). */
    uint64_t rtp_ssrc, rtcp_ssrc;
    uint64_t drops[SE_FP_N_DROPS];
    /* written by the peer's loop, on a line of their own (one line: an _Alignas on
     * a list of declarators aligns each of them, which put these on four) */
    _Alignas(64) uint64_t packets_out;
    uint64_t bytes_out, rtcp_out, send_errors;
} se_fp_counters;

/* Laid out for the packet path (measured: these structs are cold when a wake-up
 * reaches them, each line a miss): a forwarded RTP packet reads its leg's lines 0
 * and 1 (ids, pointers; rtp_src) and the first line of its counters, and its peer's
 * lines 0 and 1 (outbound, fd; rtp_dst) and out-counter line; fastpath.c
 * prefetches them all before the recvmmsg that precedes their use. */
typedef struct se_fp_leg {
    /* line 0 */
    uint32_t handle, gen; /* slot in the table; generation of the slot */
    int loop;             /* owning loop */
    int fd, rtcp_fd;      /* the plane's own dup()s; rtcp_fd -1: RTCP on fd */
    unsigned flags;
    struct se_fp_leg *peer; /* may be the leg itself: an echo leg */
    se_srtp_ctx *inbound;   /* unprotects what the endpoint sends; NULL: plain */
    se_srtp_ctx *outbound;  /* protects what goes to the endpoint; NULL: plain */
    /* written by its loop: the ring position after its newest media punt from its
     * endpoint's host (0: none); while Python has not handled up to there (the
     * loop's ring_done), media from the accepted source is punted behind it */
    uint64_t punt_mark;
    /* line 1: the RTP source accepted (latched; none: punt all) and where RTP for
     * the endpoint goes */
    _Alignas(64) se_fp_addr rtp_src;
    se_fp_addr rtp_dst;
    se_fp_addr rtcp_src, rtcp_dst; /* the same for RTCP */
    se_fp_addr sig_host; /* the IP its SIP came from (port 0); none: unknown */
    double rtcp_tokens, rtcp_stamp; /* RTCP token bucket (RFC 3550 section 6.2) */
    /* the punt budget, written by the leg's loop only: strangers' bucket, endpoint's */
    double punt_tokens, punt_stamp;
    double own_tokens, own_stamp;
    se_fp_addr drop_src[SE_FP_N_DROPS]; /* the source of the last drop, by reason */
    _Alignas(64) se_fp_counters c;
} se_fp_leg;

typedef struct {
    uint32_t handle;
    uint8_t kind, on_rtcp_socket;
    uint16_t len;
    se_fp_addr src;
    uint8_t data[SE_FP_MAX_DATAGRAM];
} se_fp_punt;

typedef struct {
    uint64_t wakeups, recv_calls, send_calls, packets, sent;
    uint64_t busy_ns;   /* time spent on batches (not in epoll_wait, not polling) */
    uint64_t polling;   /* 1 while the loop polls after its batches, else 0 */
    uint64_t poll_mode; /* 1 while it is in poll mode (polls after each batch), even
                         * while asleep after a poll that found nothing; else 0 */
} se_fp_loop_stats;

struct se_fp_plane;

typedef struct se_fp_loop {
    struct se_fp_plane *plane;
    int index, epfd, wakefd, running;
    int cpu; /* -1: not pinned */
    pthread_t thread;
    pthread_mutex_t mu;
    unsigned n_legs;
    se_fp_loop_stats stats; /* written by the loop, read relaxed */
    /* the punt ring: head written by the loop; tail (popped) and done (handled: the
     * tail when Python's next drain began) written by Python */
    uint64_t ring_head, ring_tail, ring_done;
    se_fp_punt *ring;
    /* per-batch scratch, owned by the thread */
    struct mmsghdr rmsg[SE_FP_BATCH], smsg[SE_FP_BATCH];
    struct iovec riov[SE_FP_BATCH], siov[SE_FP_BATCH];
    se_fp_addr rsrc[SE_FP_BATCH], sdst[SE_FP_BATCH];
    int sfd[SE_FP_BATCH];
    se_fp_leg *sleg[SE_FP_BATCH];
    uint8_t (*buf)[SE_FP_ROOM];
} se_fp_loop;

typedef struct se_fp_plane {
    unsigned n_loops;
    uint32_t max_legs;
    int punt_fd; /* eventfd: punted datagrams wait in the rings */
    int stopping, started;
    uint64_t clock_ns; /* 0: CLOCK_MONOTONIC; else a time Python set (tests' clocks) */
    double rtcp_rate, rtcp_burst;
    double punt_rate, punt_burst; /* each punt bucket of a leg (SE_FP_PUNT_RATE, _BURST) */
    uint64_t poll_ns; /* after a batch, poll this long before sleeping (0: sleep at once) */
    unsigned poll_busy_pct; /* ...but only while the loop is this busy (0: always) */
    se_fp_leg **slots; /* handle -> leg */
    uint32_t *gens;    /* handle -> generation, bumped on removal */
    uint32_t *free_list, n_free;
    se_fp_loop *loops;
} se_fp_plane;

/* ---------------------------------------------------------------- the plane (fastpath.c) */

/* Lifecycle.  new: NULL with errno set.  start: 0 or -errno.  stop joins. */
SE_HIDDEN se_fp_plane *se_fp_new(unsigned n_loops, uint32_t max_legs, double rtcp_rate,
                                 double rtcp_burst, double punt_rate, double punt_burst,
                                 const int *cpus);
SE_HIDDEN int se_fp_start(se_fp_plane *p);
SE_HIDDEN void se_fp_stop(se_fp_plane *p);
SE_HIDDEN void se_fp_free(se_fp_plane *p); /* stops, closes the legs' fds */

/* Table changes: call with every loop locked (se_fp_lock_all), except add and
 * remove, which lock themselves.  add: the handle, or -errno. */
SE_HIDDEN void se_fp_lock_all(se_fp_plane *p);
SE_HIDDEN void se_fp_unlock_all(se_fp_plane *p);
SE_HIDDEN long se_fp_add(se_fp_plane *p, int fd, int rtcp_fd, unsigned flags, int loop);
SE_HIDDEN int se_fp_remove(se_fp_plane *p, uint32_t handle, se_fp_counters *final);
SE_HIDDEN se_fp_leg *se_fp_leg_of(se_fp_plane *p, uint32_t handle); /* NULL if none */
SE_HIDDEN void se_fp_pair(se_fp_leg *a, se_fp_leg *b); /* b NULL: unpair; a == b: echo */

/* The plane's clock: CLOCK_MONOTONIC in ns, or the time Python set. */
SE_HIDDEN uint64_t se_fp_now(const se_fp_plane *p);

/* Python's forwarding of a punted datagram it accepted: the per-packet steps from
 * the RTCP rate on (4-8 of fastpath.c: the leg's one RTCP bucket is shared with the
 * loop), under the loop mutexes, then one sendto.
 * rtcp: Python's RTP/RTCP decision.  The datagram is changed in place (room bytes
 * at data: SE_SRTP_SRTCP_INDEX + SE_SRTP_MAX_TAG more than len).  Returns
 * SE_FP_FORWARDED, SE_FP_SEND_ERROR or the se_fp_drop reason; *authenticated: the
 * inbound step passed (latching needs that proof), and then the leg's rtp_ssrc or
 * rtcp_ssrc is that packet's.  Counts nothing else: the caller does, as for any
 * packet it handled. */
#define SE_FP_FORWARDED (-1)
#define SE_FP_SEND_ERROR (-3)
SE_HIDDEN int se_fp_forward(se_fp_plane *p, uint32_t handle, int rtcp, uint8_t *data, size_t len,
                            size_t room, int *authenticated, size_t *sent_len);

/* Punted datagrams of one loop, oldest first, for the one consumer (Python, which
 * serialises its drains): the front entry or NULL, then pop it once used.  handled:
 * everything popped so far is handled (forwarded or dropped), so the loop may
 * forward the accepted sources of the legs that punted it in C again (Order). */
SE_HIDDEN const se_fp_punt *se_fp_ring_front(se_fp_loop *lp);
SE_HIDDEN void se_fp_ring_pop(se_fp_loop *lp);
SE_HIDDEN void se_fp_ring_handled(se_fp_loop *lp);

static inline uint64_t
se_fp_read(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

#endif /* SIPEDGE_FASTPATH_H */
