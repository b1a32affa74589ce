/*
 * bench/relay_load.c: the packet benchmark's load generator and raw reflector
 * (bench/bench_relay.py builds it on the fly with media/srtp_core.c and -lcrypto).
 *
 *   relay_load gen TX_IP TX_PORT RX_IP RX_PORT KEYHEX|- SIZE TARGETS_FILE
 *       One UDP socket sends (TX_IP:TX_PORT), one receives (RX_IP:RX_PORT).
 *       TARGETS_FILE: one "ip port" per call.  Prints {"tx_port": P} and then obeys
 *       stdin lines "run RATE SECONDS": RATE packets/s in total, round robin over the
 *       calls (call i has SSRC 0x10000000+i and its own sequence numbers), sendmmsg in
 *       batches of up to 32; SRTP-protected with KEYHEX (30 bytes, one outbound
 *       context per call) unless "-".  The RTP timestamp carries a global packet
 *       number, so the receiver counts what belongs to this run (late packets of an
 *       earlier run are not).  Sending comes first; the receiver (a 1 GiB socket
 *       buffer) reads when no send is due, and after SECONDS until 200 ms pass
 *       without a packet (at most 10 s).  Then it prints {"sent", "received",
 *       "late", "send_fail", "send_seconds", "tail" (seconds from the last send to the
 *       last arrival, by kernel timestamps), "elapsed", "cpu", "lat_p50_us", "lat_p99_us",
 *       "lat_p999_us", "lat_max_us"} (cpu: this process's seconds, all of the run
 *       including the reading after it; lat_*: per packet of this run, its arrival at
 *       the receiving socket by the kernel's SO_TIMESTAMPNS minus the time just before
 *       the sendmmsg that sent it (CLOCK_REALTIME, the timestamps' clock), looked up
 *       by its packet number: the time through the system under test plus two
 *       loopback hops; -1 if nothing arrived).
 *   relay_load reflect N RX_IP RX_PORT MODE KEYHEX|-
 *       The raw loop: N sockets on 127.0.0.1 (prints {"ports": [...]}), one thread,
 *       epoll + recvmmsg + sendmmsg (batches of 32) to RX_IP:RX_PORT, with MODE
 *       rtp (nothing), srtp-in (unprotect with KEYHEX) or srtp-out (protect with a
 *       fixed key) through the same OpenSSL-based SRTP core, one context per socket.
 *       Ends when stdin closes.
 *
 * Bounded: every run ends after SECONDS + 0.2 s; loopback only (the caller's IPs).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srtp_core.h"

#define BATCH 32
#define ROOM 256

static double
now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double
wall_s(void) /* the clock of SO_TIMESTAMPNS */
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double
cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + (double)r.ru_utime.tv_usec / 1e6
           + (double)r.ru_stime.tv_sec + (double)r.ru_stime.tv_usec / 1e6;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of n sorted values, in microseconds; -1 if none. */
static double
quantile_us(const double *v, uint64_t n, double q)
{
    uint64_t i;
    if (n == 0)
        return -1.0;
    i = (uint64_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1] * 1e6;
}

static int
udp_socket(const char *ip, int port, struct sockaddr_in *bound, int size)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    socklen_t len = sizeof a;
    if (fd < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1
        || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("bind");
        exit(2);
    }
    /* root may exceed rmem_max; others get what the sysctl allows */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    getsockname(fd, (struct sockaddr *)&a, &len);
    if (bound)
        *bound = a;
    return fd;
}

static int
parse_key(const char *hex, uint8_t key[30])
{
    if (strcmp(hex, "-") == 0)
        return 0;
    if (strlen(hex) != 60)
        return -1;
    for (int i = 0; i < 30; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        key[i] = (uint8_t)v;
    }
    return 1;
}

static se_srtp_ctx *
new_ctx(const uint8_t key[30], int direction)
{
    se_srtp_params params = {10, 10};
    se_srtp_ctx *c = se_srtp_new(&params, key, key + 16, direction, 4);
    if (c == NULL) {
        fprintf(stderr, "se_srtp_new failed\n");
        exit(2);
    }
    return c;
}

/* ---------------------------------------------------------------- gen */

static int
gen(int argc, char **argv)
{
    const char *tx_ip = argv[2], *rx_ip = argv[4];
    int tx_port = atoi(argv[3]), rx_port = atoi(argv[5]), size = atoi(argv[7]), has_key, tx, rx;
    uint8_t key[30];
    FILE *f = fopen(argv[8], "r");
    struct sockaddr_in *dst = NULL, txa;
    se_srtp_ctx **ctx = NULL;
    uint16_t *seq;
    unsigned n = 0, cap = 0;
    char ip[64], line[256];
    int port;
    uint32_t packet_no = 1; /* the global packet number, in the RTP timestamp */
    static uint8_t sbuf[BATCH][ROOM], rbuf[BATCH][ROOM];
    static union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(struct timespec))];
    } ctl[BATCH];
    int on = 1;
    struct mmsghdr smsg[BATCH], rmsg[BATCH];
    struct iovec siov[BATCH], riov[BATCH];

    (void)argc;
    if ((has_key = parse_key(argv[6], key)) < 0 || f == NULL || size < 12 || size > 200) {
        fprintf(stderr, "bad key, targets or size\n");
        return 2;
    }
    while (fscanf(f, "%63s %d", ip, &port) == 2) {
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            dst = realloc(dst, cap * sizeof *dst);
        }
        memset(&dst[n], 0, sizeof dst[n]);
        dst[n].sin_family = AF_INET;
        dst[n].sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, ip, &dst[n].sin_addr);
        n++;
    }
    fclose(f);
    if (n == 0)
        return 2;
    seq = calloc(n, sizeof *seq);
    if (has_key) {
        ctx = calloc(n, sizeof *ctx);
        for (unsigned i = 0; i < n; i++)
            ctx[i] = new_ctx(key, SE_SRTP_OUTBOUND);
    }
    tx = udp_socket(tx_ip, tx_port, &txa, 32 << 20);
    /* Room for a whole run: the receiver reads when no send is due, so at the
     * highest rates it catches up after the run instead of taking the sender's
     * time (the kernel counts what does not fit as drops: lost). */
    rx = udp_socket(rx_ip, rx_port, NULL, 1 << 30);
    /* Arrival times from the kernel: a run passes only if its packets arrived in
     * time, whatever the socket buffers on the way could hold (see "tail"). */
    setsockopt(rx, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    printf("{\"tx_port\": %d}\n", ntohs(txa.sin_port));
    fflush(stdout);
    for (int i = 0; i < BATCH; i++) {
        siov[i].iov_base = sbuf[i];
        smsg[i].msg_hdr = (struct msghdr){.msg_iov = &siov[i], .msg_iovlen = 1,
                                          .msg_namelen = sizeof(struct sockaddr_in)};
        riov[i] = (struct iovec){.iov_base = rbuf[i], .iov_len = ROOM};
        rmsg[i].msg_hdr = (struct msghdr){.msg_iov = &riov[i], .msg_iovlen = 1};
    }
    while (fgets(line, sizeof line, stdin) != NULL) {
        double rate, secs, t0, c0, end, elapsed, quiet = 0, last_send = 0, last_arrival = 0,
               wall0 = wall_s();
        uint64_t sent = 0, received = 0, late = 0, send_fail = 0, n_lat = 0, room;
        uint32_t first = packet_no;
        unsigned call = 0;
        double *sent_at, *lat; /* by packet number - first: send time; latencies */
        if (sscanf(line, "run %lf %lf", &rate, &secs) != 2 || rate <= 0 || secs <= 0 || secs > 60)
            continue;
        room = (uint64_t)(rate * secs) + 2 * BATCH;
        sent_at = calloc(room, sizeof *sent_at);
        lat = calloc(room, sizeof *lat);
        if (sent_at == NULL || lat == NULL) {
            fprintf(stderr, "out of memory for %llu packets\n", (unsigned long long)room);
            return 2;
        }
        t0 = now_s();
        c0 = cpu_s();
        end = t0 + secs;
        for (;;) {
            double t = now_s();
            uint64_t due;
            int got, k = 0;
            if (t >= end && t >= (quiet > end ? quiet : end) + 0.2)
                break; /* 200 ms without a packet after the run */
            if (t >= end + 10.0)
                break;
            due = t < end ? (uint64_t)(rate * (t - t0)) + 1 : sent;
            if (due > room)
                due = room;
            if (due > sent) {
                unsigned want = due - sent > BATCH ? BATCH : (unsigned)(due - sent);
                double stamp = wall_s();
                for (unsigned m = 0; m < want; m++) {
                    uint8_t *p = sbuf[m];
                    size_t len = (size_t)size;
                    p[0] = 0x80;
                    p[1] = 0;
                    p[2] = (uint8_t)(seq[call] >> 8);
                    p[3] = (uint8_t)seq[call];
                    p[4] = (uint8_t)(packet_no >> 24);
                    p[5] = (uint8_t)(packet_no >> 16);
                    p[6] = (uint8_t)(packet_no >> 8);
                    p[7] = (uint8_t)packet_no;
                    p[8] = 0x10;
                    p[9] = (uint8_t)(call >> 16);
                    p[10] = (uint8_t)(call >> 8);
                    p[11] = (uint8_t)call;
                    memset(p + 12, 0xd5, (size_t)size - 12);
                    if (has_key
                        && se_srtp_protect_rtp(ctx[call], p, len, p, ROOM, &len) != SE_SRTP_OK) {
                        fprintf(stderr, "protect failed\n");
                        return 2;
                    }
                    siov[m].iov_len = len;
                    smsg[m].msg_hdr.msg_name = &dst[call];
                    sent_at[packet_no - first] = stamp;
                    seq[call]++;
                    packet_no++;
                    call = (call + 1) % n;
                }
                while (k < (int)want) {
                    int r = sendmmsg(tx, smsg + k, want - (unsigned)k, 0);
                    if (r <= 0) { /* a full buffer: that datagram is lost (counted) */
                        send_fail++;
                        k++;
                    } else {
                        k += r;
                    }
                }
                sent += want;
                last_send = now_s();
                if (t < end && (uint64_t)(rate * (now_s() - t0)) + 1 > sent)
                    continue; /* behind: sending first, reading when idle */
            }
            for (int i = 0; i < BATCH; i++) {
                rmsg[i].msg_hdr.msg_flags = 0;
                rmsg[i].msg_hdr.msg_control = &ctl[i];
                rmsg[i].msg_hdr.msg_controllen = sizeof ctl[i];
            }
            got = recvmmsg(rx, rmsg, BATCH, MSG_DONTWAIT, NULL);
            if (got > 0)
                quiet = now_s();
            for (int i = 0; i < got; i++) {
                const uint8_t *p = rbuf[i];
                uint32_t no;
                if (rmsg[i].msg_len < 12)
                    continue;
                no = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
                if (no >= first && no - first < room) {
                    struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg[i].msg_hdr);
                    received++;
                    if (c != NULL && c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        double at;
                        memcpy(&ts, CMSG_DATA(c), sizeof ts);
                        at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
                        if (at > last_arrival)
                            last_arrival = at;
                        if (sent_at[no - first] > 0 && n_lat < room)
                            lat[n_lat++] = at - sent_at[no - first];
                    }
                } else {
                    late++;
                }
            }
            if (got < BATCH) {
                /* nothing more waiting: sleep until the next send is due (or data) */
                double next = t < end ? t0 + (double)(sent + 1) / rate : quiet + 0.2;
                double wait = next - now_s();
                if (wait > 20e-6) {
                    struct pollfd pfd = {.fd = rx, .events = POLLIN};
                    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(wait * 1e9)};
                    if (wait > 0.05)
                        ts.tv_nsec = 50000000;
                    ppoll(&pfd, 1, &ts, NULL);
                }
            }
        }
        elapsed = now_s() - t0;
        qsort(lat, n_lat, sizeof *lat, cmp_double);
        printf("{\"sent\": %llu, \"received\": %llu, \"late\": %llu, \"send_fail\": %llu, "
               "\"send_seconds\": %.4f, \"tail\": %.4f, \"elapsed\": %.4f, \"cpu\": %.4f, "
               "\"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, \"lat_p999_us\": %.1f, "
               "\"lat_max_us\": %.1f}\n",
               (unsigned long long)sent, (unsigned long long)received, (unsigned long long)late,
               (unsigned long long)send_fail, last_send - t0,
               last_arrival > 0 ? last_arrival - wall0 - (last_send - t0) : 0.0, elapsed,
               cpu_s() - c0, quantile_us(lat, n_lat, 0.50), quantile_us(lat, n_lat, 0.99),
               quantile_us(lat, n_lat, 0.999), quantile_us(lat, n_lat, 1.0));
        fflush(stdout);
        free(sent_at);
        free(lat);
    }
    return 0;
}

/* ---------------------------------------------------------------- reflect */

static int
reflect(int argc, char **argv)
{
    int n = atoi(argv[2]), rx_port = atoi(argv[4]), mode, has_key, ep;
    const char *mode_s = argv[5];
    uint8_t key[30];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rx_port)};
    int *fds;
    se_srtp_ctx **ctx;
    static uint8_t buf[BATCH][ROOM];
    struct mmsghdr msg[BATCH], out[BATCH];
    struct iovec iov[BATCH], oiov[BATCH];
    struct epoll_event ev = {.events = EPOLLIN}, evs[64];

    (void)argc;
    mode = strcmp(mode_s, "srtp-in") == 0 ? 1 : strcmp(mode_s, "srtp-out") == 0 ? 2 : 0;
    has_key = parse_key(argv[6], key);
    if (n < 1 || has_key < 0 || inet_pton(AF_INET, argv[3], &to.sin_addr) != 1)
        return 2;
    if (mode == 2 && !has_key)
        memset(key, 0x42, sizeof key);
    if (mode == 1 && !has_key)
        return 2;
    fds = calloc((size_t)n, sizeof *fds);
    ctx = calloc((size_t)n, sizeof *ctx);
    ep = epoll_create1(0);
    printf("{\"ports\": [");
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a;
        fds[i] = udp_socket("127.0.0.1", 0, &a, 4 << 20);
        if (mode)
            ctx[i] = new_ctx(key, mode == 1 ? SE_SRTP_INBOUND : SE_SRTP_OUTBOUND);
        ev.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        printf("%s%d", i ? ", " : "", ntohs(a.sin_port));
    }
    printf("]}\n");
    fflush(stdout);
    ev.data.u32 = UINT32_MAX;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = ROOM - 32};
        msg[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
        oiov[i].iov_base = buf[i];
        out[i].msg_hdr = (struct msghdr){.msg_iov = &oiov[i], .msg_iovlen = 1, .msg_name = &to,
                                         .msg_namelen = sizeof to};
    }
    for (;;) {
        int ne = epoll_wait(ep, evs, 64, -1);
        if (ne < 0 && errno != EINTR)
            return 2;
        for (int e = 0; e < ne; e++) {
            uint32_t i = evs[e].data.u32;
            int got, k = 0;
            if (i == UINT32_MAX)
                return 0; /* stdin readable: closed by the bench */
            got = recvmmsg(fds[i], msg, BATCH, MSG_DONTWAIT, NULL);
            for (int m = 0; m < got; m++) {
                size_t len = msg[m].msg_len;
                int rc = SE_SRTP_OK;
                if (mode == 1)
                    rc = se_srtp_unprotect_rtp(ctx[i], buf[m], len, buf[m], ROOM, &len);
                else if (mode == 2)
                    rc = se_srtp_protect_rtp(ctx[i], buf[m], len, buf[m], ROOM, &len);
                if (rc != SE_SRTP_OK)
                    continue;
                oiov[k].iov_base = buf[m];
                oiov[k].iov_len = len;
                k++;
            }
            for (int s = 0; s < k;) {
                int r = sendmmsg(fds[i], out + s, (unsigned)(k - s), MSG_DONTWAIT);
                s += r > 0 ? r : 1;
            }
        }
    }
}

int
main(int argc, char **argv)
{
    if (argc == 9 && strcmp(argv[1], "gen") == 0)
        return gen(argc, argv);
    if (argc == 7 && strcmp(argv[1], "reflect") == 0)
        return reflect(argc, argv);
    fprintf(stderr, "usage: relay_load gen TX_IP TX_PORT RX_IP RX_PORT KEYHEX|- SIZE TARGETS\n"
                    "       relay_load reflect N RX_IP RX_PORT rtp|srtp-in|srtp-out KEYHEX|-\n");
    return 2;
}
