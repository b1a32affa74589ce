"""media/fastpath: the C data plane against the Python reference path (media.relay.route)
on the same traffic, with libsrtp (pylibsrtp) as the reference for what comes out.

Cast: the relay's sockets on 127.0.0.1, the caller on 127.0.0.2 (the "offer" leg), the
callee on 127.0.0.3 (the "answer" leg), a stranger on 127.0.0.4.  Plain blocking
sockets with timeouts: every wait is bounded, nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from media import _srtp
from media.fastpath import FastPath, Mode, Punted, default_loops
from media.latching import DropReason
from media.relay import MediaRelay, route
from media.rtp import PacketKind

pytestmark = pytest.mark.timeout(60)

RELAY = "127.0.0.1"
CALLER = "127.0.0.2"
CALLEE = "127.0.0.3"
STRANGER = "127.0.0.4"
SUITE = "AES_CM_128_HMAC_SHA1_80"
WAIT = 2.0


def rtp(seq: int, ssrc: int = 0x11111111, size: int = 160) -> bytes:
    body = bytes([seq & 0xFF]) * size
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + body


def rtcp_sr(ssrc: int = 0x11111111, tag: int = 0) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + struct.pack("!I", tag) + bytes(16)


STUN_REQUEST = bytes.fromhex("000100002112a442") + bytes(12)


def udp(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(WAIT)
    return s


def addr(s: socket.socket) -> tuple[str, int]:
    host, port = s.getsockname()[:2]
    return host, port


def recv_all(s: socket.socket, n: int) -> list[bytes]:
    return [s.recvfrom(4096)[0] for _ in range(n)]


def nothing_waiting(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recvfrom(4096)
    except BlockingIOError:
        return True
    finally:
        s.settimeout(WAIT)
    return False


def until(condition: Callable[[], bool], what: str = "condition") -> None:
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def ctx(key: bytes, direction: str) -> _srtp.Context:
    return _srtp.Context(key[:16], key[16:], SUITE, direction=direction)  # type: ignore[arg-type]


def libsrtp(key: bytes, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(policy=Policy(key=key, ssrc_type=kind))


def balanced(c: object) -> bool:
    from media.fastpath import PlaneCounters

    assert isinstance(c, PlaneCounters)
    return c.received == c.packets_in + c.dropped


def threads() -> set[str]:
    """Thread ids of this process (C threads too, which threading cannot see)."""
    return set(os.listdir("/proc/self/task"))


def fds() -> set[tuple[str, str]]:
    """Open descriptors with what they point at.  Compared as sets, so that another
    test's socket closed meanwhile by the garbage collector does not count."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        # The listing's own descriptor is gone by the time it is read.
        with contextlib.suppress(OSError):
            out.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return out


@pytest.fixture(params=[(0, 0), (200, 0), (200, 1)], ids=["sleeping", "polling", "adaptive"])
def fast(request: pytest.FixtureRequest) -> Iterator[FastPath]:
    # Every test on all three: loops that sleep in epoll at once, loops that poll
    # 200 us after each batch ([media] fastpath_poll_us), and loops that poll only
    # while they are busy (fastpath_poll_busy_pct; 1%, so that they switch often)
    # must relay the same.
    poll_us, busy_pct = request.param
    fp = FastPath(loops=2, poll_us=poll_us, poll_busy_pct=busy_pct)
    fp.start()
    yield fp
    fp.close()


# ================================================================ the same traffic, both paths


@dataclass
class Keys:
    """SDES-style keys: the caller's (offer leg inbound), the relay's towards the
    callee (answer leg outbound), and back."""

    caller: bytes
    to_callee: bytes
    callee: bytes
    to_caller: bytes

    @classmethod
    def fresh(cls) -> Keys:
        return cls(*(random.randbytes(30) for _ in range(4)))


MODES = {
    # name: (offer leg decrypts, answer leg encrypts)
    "rtp->rtp": (False, False),
    "rtp->srtp": (False, True),
    "srtp->rtp": (True, False),
    "srtp->srtp": (True, True),
}


def caller_traffic(srtp_in: bool, keys: Keys) -> list[tuple[str, bytes]]:
    """What the caller sends on its RTP socket ("rtp") and RTCP socket ("rtcp"):
    media, then the bad: a replay, a bad tag, garbage, a truncated header, a
    malformed extension, then media again."""
    tx = libsrtp(keys.caller, outbound=True) if srtp_in else None

    def protect(p: bytes) -> bytes:
        return tx.protect(p) if tx is not None else p

    out = [("rtp", protect(rtp(seq))) for seq in range(1, 21)]
    first = out[4][1]
    if srtp_in:
        bad = bytearray(protect(rtp(21)))
        bad[-1] ^= 1
        out += [("rtp", first), ("rtp", bytes(bad))]  # replay, bad tag
    out += [
        ("rtp", b"\xff" * 40),  # not RTP by its first byte
        ("rtp", b"\x80\x00\x00"),  # too short
        ("rtp", b"\x90" + bytes(11) + b"\x00\x00\x00\x09"),  # extension past the end
        ("rtcp", tx.protect_rtcp(rtcp_sr(tag=7)) if tx else rtcp_sr(tag=7)),
    ]
    out += [("rtp", protect(rtp(seq))) for seq in range(22, 31)]
    return out


async def python_reference(
    traffic: list[tuple[str, bytes]], srtp_in: bool, srtp_out: bool, keys: Keys
) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    """The Python path (route()) on the traffic: what it sends to the callee on RTP
    and RTCP, and the offer leg's drops."""
    relay = MediaRelay(RELAY, port_range=(27000, 27999), quarantine=0.0)
    session = await relay.create_session("reference")
    offer = await session.add_leg("offer")
    answer = await session.add_leg("answer")
    offer.set_remote(CALLER, 4000)
    answer.set_remote(CALLEE, 6000)
    offer.set_crypto(ctx(keys.caller, "inbound") if srtp_in else None, None)
    answer.set_crypto(None, ctx(keys.to_callee, "outbound") if srtp_out else None)
    sent_rtp: list[bytes] = []
    sent_rtcp: list[bytes] = []
    for i, (sock, data) in enumerate(traffic):
        out = route(offer, sock == "rtcp", data, (CALLER, 4000 + (sock == "rtcp")), 10.0 + i)
        if out is not None:
            (sent_rtcp if out[2] == (CALLEE, 6001) else sent_rtp).append(out[1])
    drops = {str(reason): n for reason, n in offer.counters.drops.items() if n}
    await relay.close()
    return sent_rtp, sent_rtcp, drops


@pytest.mark.parametrize("mode", list(MODES))
def test_c_plane_matches_the_python_path_and_libsrtp(fast: FastPath, mode: str) -> None:
    srtp_in, srtp_out = MODES[mode]
    keys = Keys.fresh()
    traffic = caller_traffic(srtp_in, keys)
    ref_rtp, ref_rtcp, ref_drops = asyncio.run(python_reference(traffic, srtp_in, srtp_out, keys))

    caller_rtp, caller_rtcp = udp(CALLER), udp(CALLER)
    callee_rtp, callee_rtcp = udp(CALLEE), udp(CALLEE)
    relay = [udp(RELAY) for _ in range(4)]  # offer rtp, rtcp; answer rtp, rtcp
    offer = fast.add_leg(relay[0], relay[1])
    answer = fast.add_leg(relay[2], relay[3])
    fast.pair(offer, answer)
    fast.set_crypto(offer, ctx(keys.caller, "inbound") if srtp_in else None, None)
    fast.set_crypto(answer, None, ctx(keys.to_callee, "outbound") if srtp_out else None)
    fast.set_addresses(
        offer, rtp_source=addr(caller_rtp), rtcp_source=addr(caller_rtcp)
    )  # latched, as Python would after the first packet
    fast.set_addresses(answer, rtp_destination=addr(callee_rtp), rtcp_destination=addr(callee_rtcp))
    for n, (sock, data) in enumerate(traffic, 1):
        if sock == "rtp":
            caller_rtp.sendto(data, addr(relay[0]))
        else:
            caller_rtcp.sendto(data, addr(relay[1]))
        # One at a time: the reference saw them in this order.
        until(lambda: fast.counters(offer).received == n, f"packet {n}")  # noqa: B023
    got_rtp = recv_all(callee_rtp, len(ref_rtp))
    got_rtcp = recv_all(callee_rtcp, len(ref_rtcp))
    assert nothing_waiting(callee_rtp) and nothing_waiting(callee_rtcp)

    # Byte for byte what the Python path sends (SRTP is deterministic per key and index).
    assert got_rtp == ref_rtp and got_rtcp == ref_rtcp
    assert len(got_rtp) == 29 and len(got_rtcp) == 1
    # libsrtp, the reference, reads what comes out.
    rx = libsrtp(keys.to_callee, outbound=False) if srtp_out else None
    plain = [rx.unprotect(p) if rx else p for p in got_rtp]
    assert plain == [rtp(seq) for seq in [*range(1, 21), *range(22, 31)]]
    assert (rx.unprotect_rtcp(got_rtcp[0]) if rx else got_rtcp[0]) == rtcp_sr(tag=7)

    c = fast.counters(offer)
    assert {k: v for k, v in c.drops.items() if v} == ref_drops
    assert c.packets_in == 30 and c.rtcp_in == 1 and c.to_python == 0 and balanced(c)
    if srtp_in:
        assert c.replays == 1 and c.auth_failures == 1
    out = fast.counters(answer)
    assert out.packets_out == 30 and out.rtcp_out == 1
    assert out.bytes_out == sum(map(len, got_rtp)) + len(got_rtcp[0])
    for s in (caller_rtp, caller_rtcp, callee_rtp, callee_rtcp, *relay):
        s.close()


def test_srtp_to_srtp_rekeys_both_ways(fast: FastPath) -> None:
    """SRTP in under the caller's key, out under the relay's; and back."""
    keys = Keys.fresh()
    caller, callee, r_offer, r_answer = udp(CALLER), udp(CALLEE), udp(RELAY), udp(RELAY)
    offer, answer = fast.add_leg(r_offer, mux=True), fast.add_leg(r_answer, mux=True)
    fast.pair(offer, answer)
    fast.set_crypto(offer, ctx(keys.caller, "inbound"), ctx(keys.to_caller, "outbound"))
    fast.set_crypto(answer, ctx(keys.callee, "inbound"), ctx(keys.to_callee, "outbound"))
    fast.latch(offer, addr(caller))
    fast.latch(answer, addr(callee))
    caller_tx, callee_rx = libsrtp(keys.caller, True), libsrtp(keys.to_callee, False)
    callee_tx, caller_rx = libsrtp(keys.callee, True), libsrtp(keys.to_caller, False)
    for seq in range(1, 50):
        caller.sendto(caller_tx.protect(rtp(seq)), addr(r_offer))
        assert callee_rx.unprotect(callee.recvfrom(4096)[0]) == rtp(seq)
        callee.sendto(callee_tx.protect(rtp(seq, ssrc=0x22)), addr(r_answer))
        assert caller_rx.unprotect(caller.recvfrom(4096)[0]) == rtp(seq, ssrc=0x22)
    # RTCP multiplexed on the RTP port (RFC 5761), SRTCP both sides.
    caller.sendto(caller_tx.protect_rtcp(rtcp_sr(tag=3)), addr(r_offer))
    assert callee_rx.unprotect_rtcp(callee.recvfrom(4096)[0]) == rtcp_sr(tag=3)
    assert fast.counters(offer).rtcp_in == 1 and fast.counters(answer).rtcp_out == 1


# ================================================================ punting


def test_stun_dtls_and_strangers_are_punted_and_python_can_forward_and_latch(
    fast: FastPath,
) -> None:
    caller, callee, stranger = udp(CALLER), udp(CALLEE), udp(STRANGER)
    r_offer, r_answer = udp(RELAY), udp(RELAY)
    offer, answer = fast.add_leg(r_offer, mux=True), fast.add_leg(r_answer, mux=True)
    fast.pair(offer, answer)
    fast.latch(answer, addr(callee))
    # Not latched yet: the first packets go to Python, with STUN, DTLS and a stranger.
    caller.sendto(rtp(1), addr(r_offer))
    caller.sendto(STUN_REQUEST, addr(r_offer))
    caller.sendto(b"\x16\xfe\xfd" + bytes(20), addr(r_offer))  # a DTLS record
    stranger.sendto(rtp(99), addr(r_offer))
    until(lambda: fast.counters(offer).to_python == 4)
    punted = fast.drain()
    assert [(p.leg, p.kind, p.source) for p in punted] == [
        (offer, PacketKind.RTP, addr(caller)),
        (offer, PacketKind.STUN, addr(caller)),
        (offer, PacketKind.DTLS, addr(caller)),
        (offer, PacketKind.RTP, addr(stranger)),
    ]
    assert punted[0].data == rtp(1) and not punted[0].on_rtcp_socket
    assert fast.drain() == []
    # Python accepts the first one (say, from the signalled host): forward, then latch.
    result = fast.forward(offer, False, punted[0].data)
    assert result.forwarded and result.authenticated and result.sent == len(rtp(1))
    assert callee.recvfrom(4096)[0] == rtp(1)
    fast.latch(offer, addr(caller))
    caller.sendto(rtp(2), addr(r_offer))
    assert callee.recvfrom(4096)[0] == rtp(2)
    stranger.sendto(rtp(100), addr(r_offer))  # still Python's to judge
    until(lambda: fast.counters(offer).to_python == 5)
    c = fast.counters(offer)
    assert c.packets_in == 1 and c.received == 1 and balanced(c)
    assert [p.source for p in fast.drain()] == [addr(stranger)]


def test_a_latch_never_reorders_the_stream(fast: FastPath) -> None:
    """Python latches a source while more of its packets still wait in the ring: the
    next ones queue behind them instead of overtaking them in C, and go back to C once
    Python has handled them (its next drain says so).  A stranger's punts hold nothing
    back."""
    caller, callee, stranger = udp(CALLER), udp(CALLEE), udp(STRANGER)
    r_offer, r_answer = udp(RELAY), udp(RELAY)
    offer, answer = fast.add_leg(r_offer, mux=True), fast.add_leg(r_answer, mux=True)
    fast.pair(offer, answer)
    fast.latch(answer, addr(callee))
    fast.set_addresses(offer, rtp_destination=addr(caller))  # signalled, not latched
    for seq in (1, 2, 3):
        caller.sendto(rtp(seq), addr(r_offer))
    until(lambda: fast.counters(offer).to_python == 3, "three punts")
    first = fast.drain(1)  # Python takes the first, forwards it and latches...
    assert [p.data for p in first] == [rtp(1)]
    assert fast.forward(offer, False, first[0].data).forwarded
    fast.latch(offer, addr(caller))
    caller.sendto(rtp(4), addr(r_offer))  # ...while 2 and 3 still wait
    until(lambda: fast.counters(offer).to_python == 4, "4 punted behind 2 and 3")
    assert fast.counters(offer).packets_in == 0
    rest = fast.drain()
    assert [p.data for p in rest] == [rtp(2), rtp(3), rtp(4)]
    for p in rest:
        assert fast.forward(offer, False, p.data).forwarded
    assert fast.drain() == []  # handled: C forwards the source again
    stranger.sendto(rtp(99), addr(r_offer))
    until(lambda: fast.counters(offer).to_python == 5, "the stranger punted")
    caller.sendto(rtp(5), addr(r_offer))  # not held back by the stranger's punt
    assert recv_all(callee, 5) == [rtp(seq) for seq in range(1, 6)]
    c = fast.counters(offer)
    assert c.to_python == 5 and c.packets_in == 1 and balanced(c)
    assert [p.source for p in fast.drain()] == [addr(stranger)]


def test_forward_reports_a_failed_proof_and_dtls_pending() -> None:
    keys = Keys.fresh()
    with FastPath(loops=1) as fp:
        r_offer, r_answer, callee = udp(RELAY), udp(RELAY), udp(CALLEE)
        offer = fp.add_leg(r_offer, mux=True)
        answer = fp.add_leg(r_answer, mux=True, webrtc=True)
        fp.pair(offer, answer)
        fp.set_crypto(offer, ctx(keys.caller, "inbound"), None)
        fp.latch(answer, addr(callee))
        wrong = libsrtp(keys.callee, outbound=True).protect(rtp(1))
        assert fp.forward(offer, False, wrong).verdict == "auth_failed"
        assert not fp.forward(offer, False, wrong).authenticated
        good = libsrtp(keys.caller, outbound=True).protect(rtp(1))
        result = fp.forward(offer, False, good)
        # Proved, but the dtls-srtp peer has no keys yet: never plain RTP to it.
        assert result.authenticated and result.verdict == "dtls_pending"
        assert fp.forward(offer, False, good).verdict == "replay"
        for s in (r_offer, r_answer, callee):
            s.close()


def test_a_full_punt_queue_drops_and_counts(fast: FastPath) -> None:
    """Two legs of one loop, each within its punt budget (400 at once), together past
    the loop's ring (512): the ring overflows, and nothing is punt_limited."""
    stranger, r1, r2 = udp(STRANGER), udp(RELAY), udp(RELAY)
    legs = [fast.add_leg(r, mux=True, loop=0) for r in (r1, r2)]
    for r in (r1, r2):
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    n = 350
    for seq in range(n):
        stranger.sendto(rtp(seq), addr(r1))
        stranger.sendto(rtp(seq), addr(r2))

    def seen() -> int:
        return sum(fast.counters(h).to_python + fast.counters(h).received for h in legs)

    # Every datagram taken, one way or the other, before anything is counted: with
    # a few still in flight the ring refills while it is drained (it gave 530).
    until(lambda: seen() == 2 * n, "every datagram received or punted")
    cs = [fast.counters(h) for h in legs]
    assert sum(c.to_python for c in cs) == 512
    assert all(c.drops["punt_overflow"] == c.received for c in cs)
    assert sum(c.received for c in cs) > 0
    assert all(c.drops["punt_limited"] == 0 for c in cs)
    assert len(fast.drain(2000)) == 512


def test_attach_hands_punted_datagrams_to_the_asyncio_loop(fast: FastPath) -> None:
    caller, r = udp(CALLER), udp(RELAY)
    leg = fast.add_leg(r, mux=True)

    async def scenario() -> list[Punted]:
        got: list[Punted] = []
        done = asyncio.Event()

        def handler(batch: list[Punted]) -> None:
            got.extend(batch)
            if len(got) >= 3:
                done.set()

        fast.attach(asyncio.get_running_loop(), handler)
        for _ in range(3):
            caller.sendto(STUN_REQUEST, addr(r))
        await asyncio.wait_for(done.wait(), WAIT)
        fast.detach()
        return got

    got = asyncio.run(scenario())
    assert [(p.leg, p.kind) for p in got] == [(leg, PacketKind.STUN)] * 3


# ================================================================ legs


def test_echo_leg_reflects_to_its_sender_reencrypted(fast: FastPath) -> None:
    keys = Keys.fresh()
    phone, r = udp(CALLER), udp(RELAY)
    leg = fast.add_leg(r, mux=True)
    fast.echo(leg)
    fast.set_crypto(leg, ctx(keys.caller, "inbound"), ctx(keys.to_caller, "outbound"))
    fast.latch(leg, addr(phone))
    tx, rx = libsrtp(keys.caller, True), libsrtp(keys.to_caller, False)
    for seq in range(1, 20):
        phone.sendto(tx.protect(rtp(seq)), addr(r))
        data, source = phone.recvfrom(4096)
        assert source == addr(r) and rx.unprotect(data) == rtp(seq)
    c = fast.counters(leg)
    assert c.packets_in == c.packets_out == 19 and c.last_ssrc == 0x11111111
    assert c.last_rx is not None and c.last_rx <= time.monotonic()
    assert FastPath.mode(None, None) is Mode.RTP


def test_rtcp_flood_no_destination_and_dtls_pending_in_c() -> None:
    # A rate that refills nothing within any uptime: a new leg's burst must be there
    # from the start.  (The bucket once started empty, its tokens then refilled from
    # a stamp of 0: uptime * rate, under 5 here in a machine's first 83 minutes.)
    with FastPath(loops=1, rtcp_burst=5, rtcp_rate=1e-9) as fp:
        caller, callee, r1, r2 = udp(CALLER), udp(CALLEE), udp(RELAY), udp(RELAY)
        a, b = fp.add_leg(r1, mux=True), fp.add_leg(r2, mux=True)
        fp.latch(a, addr(caller))
        caller.sendto(rtp(1), addr(r1))  # no peer yet
        until(lambda: fp.counters(a).drops["no_destination"] == 1)
        fp.pair(a, b)
        caller.sendto(rtp(2), addr(r1))  # peer without a destination
        until(lambda: fp.counters(a).drops["no_destination"] == 2)
        fp.latch(b, addr(callee))
        for tag in range(8):
            caller.sendto(rtcp_sr(tag=tag), addr(r1))
        assert recv_all(callee, 5) == [rtcp_sr(tag=t) for t in range(5)]
        until(lambda: fp.counters(a).drops["rtcp_flood"] == 3)
        fp.set_flags(b, mux=True, webrtc=True)  # dtls-srtp peer, no keys: nothing goes
        caller.sendto(rtp(3), addr(r1))
        until(lambda: fp.counters(a).drops["dtls_pending"] == 1)
        assert nothing_waiting(callee) and balanced(fp.counters(a))


def test_many_legs_on_every_loop(fast: FastPath) -> None:
    pairs = 150
    caller = udp(CALLER)
    callee = udp(CALLEE)
    callee.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    socks = [(udp(RELAY), udp(RELAY)) for _ in range(pairs)]
    handles = []
    for r1, r2 in socks:
        a, b = fast.add_leg(r1, mux=True), fast.add_leg(r2, mux=True)
        fast.pair(a, b)
        fast.latch(a, addr(caller))
        fast.latch(b, addr(callee))
        handles.append((a, b))
    assert all(s["legs"] == pairs for s in fast.loop_stats())  # spread evenly
    for i, (r1, _) in enumerate(socks):
        caller.sendto(rtp(i), addr(r1))
    got = sorted(recv_all(callee, pairs))
    assert got == sorted(rtp(i) for i in range(pairs))
    for a, b in handles:
        assert fast.counters(a).packets_in == 1 and fast.counters(b).packets_out == 1
        fast.remove_leg(a)
        fast.remove_leg(b)
    assert fast.legs == frozenset() and all(s["legs"] == 0 for s in fast.loop_stats())
    for r1, r2 in socks:
        r1.close()
        r2.close()


def test_a_loop_polls_only_while_its_batches_keep_it_busy() -> None:
    """[media] fastpath_poll_busy_pct: the loop starts out sleeping, polls once a
    flood makes its batches take that share of its time, sleeps again when the
    flood ends, and a lone packet after a quiet spell longer than the 20 ms the
    share is measured over finds it out of poll mode; ``busy_ns`` counts the
    batches' time.  Waits are bounded, never timed: a loaded machine may run the
    loop's thread late, and the decision (``poll_mode``) is read, not guessed from
    the gauge a few milliseconds later."""

    def stats() -> dict[str, Any]:
        (only,) = fp.loop_stats()
        return only

    with FastPath(loops=1, poll_us=1000, poll_busy_pct=5) as fp:
        caller, callee, r1, r2 = udp(CALLER), udp(CALLEE), udp(RELAY), udp(RELAY)
        a, b = fp.add_leg(r1, mux=True), fp.add_leg(r2, mux=True)
        fp.pair(a, b)
        fp.latch(a, addr(caller))
        fp.latch(b, addr(callee))
        caller.sendto(rtp(0), addr(r1))
        assert callee.recvfrom(4096)[0] == rtp(0)
        assert not stats()["poll_mode"] and stats()["busy_ns"] > 0
        deadline = time.monotonic() + WAIT
        seq = 1
        while not stats()["poll_mode"]:  # the callee's buffer may overflow: no matter
            assert time.monotonic() < deadline, f"no polling after {seq} packets"
            for _ in range(200):
                caller.sendto(rtp(seq), addr(r1))
                seq += 1
        until(lambda: not stats()["polling"], "the loop to sleep after the flood")
        time.sleep(0.05)  # longer than the 20 ms the share is measured over
        callee.settimeout(0.01)
        with contextlib.suppress(TimeoutError):
            while True:
                callee.recvfrom(4096)
        callee.settimeout(WAIT)
        before = stats()["busy_ns"]
        caller.sendto(rtp(seq), addr(r1))
        assert callee.recvfrom(4096)[0] == rtp(seq)
        # Nothing else arrives, so only this packet's batch could change the mode:
        # a loop left in poll mode stays in it, and this wait fails.
        until(lambda: stats()["busy_ns"] > before and not stats()["poll_mode"], "sleep mode")
        for s in (caller, callee):
            s.close()
    with FastPath(loops=1, poll_us=1000, poll_busy_pct=0) as fp:
        # Always in poll mode without a busy threshold (set as its thread begins).
        until(lambda: stats()["poll_mode"], "the loop to start in poll mode")
        # Polls only after a batch: with nothing come, it sleeps (one spinning
        # from the start would keep the gauge up, and this wait fails).
        until(lambda: not stats()["polling"], "the loop to sleep")


def test_table_changes_while_traffic_flows_then_a_clean_stop() -> None:
    """Add, re-key, re-latch and remove legs while a sender floods them: no crash,
    counters balanced, and after close() no thread and no fd left behind."""
    before_threads, before_fds = threads(), fds()
    fp = FastPath(loops=2)
    fp.start()
    assert len(threads() - before_threads) == 2
    callee = udp(CALLEE)
    callee.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sender = udp(CALLER)
    relay_socks = [udp(RELAY) for _ in range(16)]
    targets = [addr(s) for s in relay_socks]
    stop = threading.Event()
    sent = [0]

    def flood() -> None:  # bounded in count and in time
        deadline = time.monotonic() + 5.0
        while not stop.is_set() and sent[0] < 200_000 and time.monotonic() < deadline:
            for t in targets:
                sender.sendto(rtp(sent[0]), t)
                sent[0] += 1

    thread = threading.Thread(target=flood)
    thread.start()
    removed = []
    try:
        for round_ in range(30):
            legs = [fp.add_leg(s, mux=True) for s in relay_socks]
            for a, b in zip(legs[::2], legs[1::2], strict=True):
                fp.pair(a, b)
                fp.latch(a, addr(sender))
                fp.latch(b, addr(callee))
                key = random.randbytes(30)
                fp.set_crypto(b, None, ctx(key, "outbound"))
            time.sleep(0.005)
            if round_ % 2:
                for a in legs[::2]:
                    fp.set_crypto(a, None, None)
                    fp.latch(a, (STRANGER, 9))  # everything punted now
                    fp.drain()
            removed += [fp.remove_leg(h) for h in legs]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert sent[0] > 0 and all(balanced(c) for c in removed)
    assert sum(c.packets_in for c in removed) > 0
    fp.close()
    for s in (callee, sender, *relay_socks):
        s.close()
    # No loop thread left.  Joined threads can linger in /proc/self/task a moment
    # after pthread_join returns (the kernel reaps them after clearing their tid);
    # on a loaded machine this listed one: wait, bounded, for them to go.
    until(lambda: threads() - before_threads == set(), "the loop threads to be gone")
    assert fds() - before_fds == set()  # no descriptor leaked


def test_plane_misuse_is_refused() -> None:
    fp = FastPath(loops=1, max_legs=2)
    r = [udp(RELAY) for _ in range(3)]
    a, b = fp.add_leg(r[0]), fp.add_leg(r[1])
    with pytest.raises(OSError):
        fp.add_leg(r[2])  # the table is full
    with pytest.raises(KeyError):
        fp.counters(7)
    with pytest.raises(ValueError):
        fp.set_crypto(a, ctx(bytes(30), "outbound"), None)  # an inbound slot
    with pytest.raises(TypeError):
        fp.set_crypto(a, "key", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fp.set_addresses(a, rtp_source=("example.com", 5))
    fp.remove_leg(a)
    with pytest.raises(KeyError):
        fp.remove_leg(a)
    assert fp.add_leg(r[2]) == a  # the handle is reused
    fp.close()
    fp.close()
    for poll_us in (-1, 1001):
        with pytest.raises(ValueError, match="poll_us"):
            FastPath(loops=1, poll_us=poll_us)
    for pct in (-1, 101):
        with pytest.raises(ValueError, match="poll_busy_pct"):
            FastPath(loops=1, poll_us=200, poll_busy_pct=pct)
    with pytest.raises(RuntimeError):
        fp.counters(b)
    for s in r:
        s.close()
    assert default_loops() >= 1
    assert DropReason.AUTH_FAILED in {DropReason(n) for n in _srtp.PLANE_DROPS[:9]}
