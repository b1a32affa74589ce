"""media/fastpath: the per-leg punt budget (media/fastpath.h, SE_FP_PUNT_RATE).

What the plane cannot decide (STUN, DTLS, media from a source not latched) goes to
Python through one ring per loop.  A stranger spraying one relay port must not fill
that ring for every other call of the loop: each leg punts within a token bucket on
the plane's clock, the rest is dropped in C as ``punt_limited``.  Nor must it starve
that leg's own endpoint: a second bucket per leg serves the host media for the
endpoint goes to (its signalled address, then the latched one).

Cast as tests/test_fastpath.py: the relay's sockets on 127.0.0.1, the caller on
127.0.0.2, the callee on 127.0.0.3, the stranger on 127.0.0.4, the attacker on
127.0.0.5.  Every loop is bounded in count and in time.  No skip: without the C
extension this file fails to import.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time
import tomllib
from collections.abc import Callable

import pytest

from edge import config
from edge.media import MediaController
from media import _srtp
from media.fastpath import PUNT_BURST, PUNT_RATE, FastPath, Punted
from media.latching import PLANE_DROP_REASONS, DropReason
from media.rtp import PacketKind
from tests.test_fastpath import (
    CALLEE,
    CALLER,
    RELAY,
    STRANGER,
    STUN_REQUEST,
    WAIT,
    addr,
    balanced,
    rtp,
    udp,
    until,
)

pytestmark = pytest.mark.timeout(60)

ATTACKER = "127.0.0.5"
FLOOD = 20_000


def test_the_budget_and_its_names() -> None:
    assert hasattr(_srtp, "Plane"), "media._srtp was built without the data plane"
    assert (PUNT_RATE, PUNT_BURST) == (250.0, 400.0)
    # [media] punt_rate and punt_burst default to the plane's own budget.
    assert (config.MediaConfig().punt_rate, config.MediaConfig().punt_burst) == (
        PUNT_RATE,
        PUNT_BURST,
    )
    assert PUNT_BURST < 512  # one leg's burst leaves room in its loop's ring
    names = set(_srtp.PLANE_DROPS)
    assert set(PLANE_DROP_REASONS) <= names
    assert names - set(PLANE_DROP_REASONS) <= {str(r) for r in DropReason}
    assert _srtp.PLANE_DROPS[-1] == "punt_limited"
    with pytest.raises(ValueError):
        FastPath(loops=1, punt_rate=-1.0)


def test_a_leg_punts_its_burst_then_its_rate_on_the_planes_clock() -> None:
    """The clock stands still: exactly the burst goes up, the rest is limited; half a
    second later, exactly half a second's worth more."""
    with FastPath(loops=1) as fp:
        fp.set_clock(1000.0)
        stranger, r = udp(STRANGER), udp(RELAY)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        leg = fp.add_leg(r, mux=True)
        seen = functools.partial(decided, fp, leg)
        for seq in range(450):
            stranger.sendto(rtp(seq), addr(r))
        until(lambda: seen() == 450, "450 datagrams decided")
        c = fp.counters(leg)
        assert c.to_python == 400 and c.drops["punt_limited"] == 50
        assert len(fp.drain(1000)) == 400
        fp.set_clock(1000.5)  # + 0.5 s * 250/s = 125 tokens
        for seq in range(200):
            stranger.sendto(STUN_REQUEST if seq % 2 else rtp(seq), addr(r))  # STUN too
        until(lambda: seen() == 650, "650 datagrams decided")
        c = fp.counters(leg)
        assert c.to_python == 525 and c.drops["punt_limited"] == 125
        assert c.drops["punt_overflow"] == 0 and balanced(c)
        assert fp.drop_sources(leg)["punt_limited"] == addr(stranger)
        assert len(fp.drain(1000)) == 125
        stranger.close()
        r.close()


async def test_the_configured_budget_reaches_the_relays_plane() -> None:
    """[media] punt_rate and punt_burst go into the plane the media controller makes:
    with a budget of 5 at once and 10 a second, a stranger's 30 datagrams punt 5; 0.5 s
    later on the plane's clock, 5 more."""
    cfg = config.parse(
        tomllib.loads(
            f'[upstream]\necho = true\n[media]\naddress = "{RELAY}"\n'
            'port_range = "40000-40099"\npunt_rate = 10\npunt_burst = 5\n'
        ),
        check_files=False,
    )
    controller = MediaController(cfg)
    fp = controller.fast_path
    assert fp is not None, "the media controller made no data plane"
    stranger, r = udp(STRANGER), udp(RELAY)
    try:
        fp.set_clock(1000.0)
        fp.start()
        leg = fp.add_leg(r, mux=True)
        seen = functools.partial(decided, fp, leg)
        for seq in range(30):
            stranger.sendto(rtp(seq), addr(r))
        until(lambda: seen() == 30, "30 datagrams decided")
        c = fp.counters(leg)
        assert c.to_python == 5 and c.drops["punt_limited"] == 25
        fp.set_clock(1000.5)  # + 0.5 s * 10/s = 5 tokens
        for seq in range(10):
            stranger.sendto(rtp(30 + seq), addr(r))
        until(lambda: seen() == 40, "40 datagrams decided")
        c = fp.counters(leg)
        assert c.to_python == 10 and c.drops["punt_limited"] == 30 and balanced(c)
        assert len(fp.drain(100)) == 10
    finally:
        await controller.close()
        stranger.close()
        r.close()


def test_a_leg_punting_audio_and_ice_checks_is_never_limited() -> None:
    """A leg that never latches in C punts its whole stream: 50 RTP packets a second
    and an ICE check every 50 ms (RFC 8445 section 14.2), for 20 seconds of the plane's
    clock (past the burst, so the rate is what is tested), each second's packets at
    once.  Nothing is limited."""
    with FastPath(loops=1) as fp:
        fp.set_clock(1000.0)
        caller, r = udp(CALLER), udp(RELAY)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        leg = fp.add_leg(r, mux=True)

        def punted(n: int) -> bool:
            return fp.counters(leg).to_python == n

        sent = 0
        for second in range(20):
            fp.set_clock(1000.0 + second + 1)
            for i in range(70):
                caller.sendto(rtp(sent) if i < 50 else STUN_REQUEST, addr(r))
                sent += 1
            until(functools.partial(punted, sent), f"{sent} punts")
            assert len(fp.drain(1000)) == 70
        c = fp.counters(leg)
        assert c.to_python == sent == 1400 and c.received == 0
        assert c.drops["punt_limited"] == 0 and c.drops["punt_overflow"] == 0
        caller.close()
        r.close()


def test_a_sprayed_leg_does_not_starve_the_other_calls_of_its_loop() -> None:
    """An attacker sprays 20,000 junk RTP datagrams at one relay port from an address
    nobody latched, as fast as it can; meanwhile, on the same loop, another call's
    caller sends an ICE check and its first RTP packets.  Python gets every one of
    that call's punts and latches it (its media then flows in C); the sprayed leg
    punts at most its burst plus its rate, the rest is dropped in C, and the ring
    does not overflow.

    The spray starts while Python is busy elsewhere (it drains nothing): without the
    budget the junk alone fills the ring and the ICE check is lost (punt_overflow)."""
    fp = FastPath(loops=1)
    attacker, caller, callee = udp(ATTACKER), udp(CALLER), udp(CALLEE)
    r_target, r_offer, r_answer = udp(RELAY), udp(RELAY), udp(RELAY)
    r_target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    t0 = time.monotonic()
    fp.start()
    target = fp.add_leg(r_target, mux=True, loop=0)
    offer = fp.add_leg(r_offer, mux=True, loop=0)
    answer = fp.add_leg(r_answer, mux=True, loop=0)
    fp.pair(offer, answer)
    fp.latch(answer, addr(callee))
    punted: dict[int, list[Punted]] = {target: [], offer: [], answer: []}
    sent = [0, 0]  # junk, the caller's RTP
    junk = rtp(0, ssrc=0xBADBAD, size=100)

    def handler(batch: list[Punted]) -> None:
        """The relay's part: latch the caller on its first RTP packet."""
        for p in batch:
            punted[p.leg].append(p)
            if p.leg == offer and p.kind is PacketKind.RTP and fp.addresses(offer)[0] is None:
                fp.latch(offer, p.source)

    def caller_sends() -> None:
        sent[1] += 1
        caller.sendto(rtp(sent[1]), addr(r_offer))

    flood = functools.partial(bounded_flood, sent, attacker, junk, addr(r_target), caller_sends)

    def settled() -> bool:
        c = fp.counters(target)
        return c.to_python + c.received >= sent[0]

    try:
        # Python busy: the first 1,000 of the spray, then the other call's ICE check.
        for _ in range(1000):
            attacker.sendto(junk, addr(r_target))
            sent[0] += 1
        until(lambda: sum(fp.counters(target).drops.values()) > 0, "the spray limited")
        caller.sendto(STUN_REQUEST, addr(r_offer))
        until(lambda: fp.counters(offer).to_python + fp.counters(offer).received == 1)
        assert fp.counters(offer).to_python == 1, "the ICE check was lost"
        spray(fp, handler, flood, settled, t0)
        elapsed = time.monotonic() - t0
        attacked, o = fp.counters(target), fp.counters(offer)
        # The other call: its ICE check and first RTP reached Python, it latched, and
        # once latched its media stayed in C, to the callee.
        kinds = [p.kind for p in punted[offer]]
        assert PacketKind.STUN in kinds and PacketKind.RTP in kinds
        assert fp.addresses(offer)[0] == addr(caller)
        assert o.drops["punt_limited"] == 0 and o.drops["punt_overflow"] == 0
        assert o.to_python + o.packets_in == sent[1] + 1  # every RTP packet and the check
        during = [callee.recvfrom(4096)[0] for _ in range(o.packets_in)]  # in C, meanwhile
        assert during == [rtp(seq) for seq in range(sent[1] - o.packets_in + 1, sent[1] + 1)]
        caller.sendto(rtp(1000), addr(r_offer))
        assert callee.recvfrom(4096)[0] == rtp(1000)  # forwarded in C
        assert fp.counters(offer).packets_in == o.packets_in + 1
        # The sprayed leg: at most its burst and its rate punted, the rest dropped in C.
        assert sent[0] == FLOOD
        decided = attacked.to_python + attacked.received
        assert decided > FLOOD // 2  # the kernel may drop some, not most
        assert attacked.to_python <= PUNT_BURST + PUNT_RATE * elapsed + 1
        assert attacked.to_python == len(punted[target])
        assert attacked.drops["punt_limited"] >= decided - attacked.to_python - 50
        assert attacked.drops["punt_limited"] > 10_000
        assert attacked.drops["punt_overflow"] <= 10
        assert balanced(attacked) and balanced(o)
    finally:
        fp.close()
        for s in (attacker, caller, callee, r_target, r_offer, r_answer):
            s.close()


def bounded_flood(
    sent: list[int],
    attacker: socket.socket,
    junk: bytes,
    target: tuple[str, int],
    now_and_then: Callable[[], None],
) -> None:
    """``junk`` to ``target`` until FLOOD datagrams are sent (``sent[0]`` counts) or
    20 s pass, calling ``now_and_then`` (the caller's traffic) every 500."""
    deadline = time.monotonic() + 20.0
    for i in range(sent[0], FLOOD):
        if time.monotonic() > deadline:
            break
        attacker.sendto(junk, target)
        sent[0] += 1
        if i % 500 == 250:
            now_and_then()


def spray(
    fp: FastPath,
    handler: Callable[[list[Punted]], None],
    flood: Callable[[], None],
    settled: Callable[[], bool],
    t0: float,
) -> None:
    """Run ``flood`` (bounded) in a thread while Python drains the punts into
    ``handler`` on an event loop; then wait, bounded, until ``settled()`` says the
    plane has decided what the kernel still held, and hand ``handler`` the rest."""

    async def scenario() -> None:
        fp.attach(asyncio.get_running_loop(), handler)
        thread = threading.Thread(target=flood)
        thread.start()
        try:
            while thread.is_alive() and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.005)
        finally:
            thread.join(30)
        assert not thread.is_alive()
        for _ in range(int(WAIT / 0.005)):
            if settled() and not fp.drain(0):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        fp.detach()
        while batch := fp.drain():
            handler(batch)

    asyncio.run(scenario())


def decided(fp: FastPath, leg: int) -> int:
    """Datagrams of ``leg`` the plane has decided: punted, forwarded or dropped in C."""
    c = fp.counters(leg)
    return c.to_python + c.received


def limited_of(fp: FastPath, leg: int) -> int:
    return fp.counters(leg).drops["punt_limited"]


def spend_the_strangers_burst(
    fp: FastPath, leg: int, stranger: socket.socket, r: socket.socket, n: int
) -> None:
    """``n`` (> the burst) RTP datagrams from a stranger on a still clock: the
    default burst punted (and drained), the rest limited."""
    for seq in range(n):
        stranger.sendto(rtp(seq), addr(r))
    until(lambda: decided(fp, leg) == n, f"the stranger's {n} decided")
    assert fp.counters(leg).to_python == PUNT_BURST and limited_of(fp, leg) == n - PUNT_BURST
    assert len(fp.drain(1000)) == PUNT_BURST


def kernel_drops(sock: socket.socket) -> int:
    """What the kernel dropped on ``sock`` for want of buffer (/proc/net/udp, its
    ``drops`` column): datagrams the plane never read, whoever sent them."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[-1])
    raise AssertionError("the socket is not in /proc/net/udp")


def test_the_endpoints_own_punts_draw_on_a_bucket_of_their_own() -> None:
    """Two buckets per leg (fastpath.h): datagrams from the host media for the endpoint
    goes to (the leg's destination: its signalled address until Python latches) punt
    within the leg's own, any other source within the strangers'.  The clock stands
    still: a stranger spends its burst; the endpoint still punts a whole burst, from
    its signalled port and from another port of its host; past that it is limited
    too.  Half a second later, without a destination the plane cannot tell the
    endpoint from a stranger; with it again, the endpoint has its own tokens."""
    with FastPath(loops=1) as fp:
        fp.set_clock(1000.0)
        caller, caller_other, stranger = udp(CALLER), udp(CALLER), udp(STRANGER)
        r = udp(RELAY)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        leg = fp.add_leg(r, mux=True)
        signalled = {"rtp_destination": addr(caller), "rtcp_destination": addr(caller)}
        fp.set_addresses(leg, **signalled)  # nothing latched yet

        seen = functools.partial(decided, fp, leg)
        limited = functools.partial(limited_of, fp, leg)
        spend_the_strangers_burst(fp, leg, stranger, r, 450)
        caller.sendto(STUN_REQUEST, addr(r))  # its ICE check and media, all still punted
        for seq in range(399):
            (caller if seq % 2 else caller_other).sendto(rtp(seq), addr(r))
        until(lambda: seen() == 850, "the endpoint's 400 decided")
        assert fp.counters(leg).to_python == 800 and limited() == 50
        punted = fp.drain(1000)
        assert {p.source[0] for p in punted} == {CALLER} and len(punted) == 400
        assert punted[0].kind is PacketKind.STUN
        caller.sendto(rtp(400), addr(r))  # past its own burst: limited as well
        until(lambda: limited() == 51, "the endpoint limited")
        assert fp.drop_sources(leg)["punt_limited"] == addr(caller)
        stranger.sendto(rtp(450), addr(r))
        until(lambda: limited() == 52, "the stranger limited")
        assert fp.drop_sources(leg)["punt_limited"] == addr(stranger)
        fp.set_clock(1000.5)  # + 125 tokens in each bucket
        fp.set_addresses(leg)  # no destination: the endpoint is one more stranger
        for seq in range(130):
            caller.sendto(rtp(500 + seq), addr(r))
        until(lambda: seen() == 982, "130 more decided")
        assert fp.counters(leg).to_python == 925 and limited() == 57
        fp.set_addresses(leg, **signalled)
        for seq in range(10):
            caller.sendto(rtp(700 + seq), addr(r))
        until(lambda: seen() == 992, "10 more decided")
        c = fp.counters(leg)
        assert c.to_python == 935 and limited() == 57
        assert c.drops["punt_overflow"] == 0 and balanced(c)
        assert len(fp.drain(1000)) == 135
        for s in (caller, caller_other, stranger, r):
            s.close()


def test_a_natted_endpoints_sip_source_draws_on_its_own_bucket() -> None:
    """A phone behind a NAT signals its private address (here 127.0.0.9, which sends
    nothing) but its media comes from the NAT's public IP, where its SIP came from:
    with that IP set as the leg's endpoint host, its punts draw on the own bucket
    while a stranger has spent the strangers'.  Without it, the phone is one more
    stranger and is limited at once."""
    with FastPath(loops=1) as fp:
        fp.set_clock(2000.0)
        phone, stranger = udp(CALLER), udp(STRANGER)
        r = udp(RELAY)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        leg = fp.add_leg(r, mux=True)
        private = ("127.0.0.9", 4000)
        fp.set_addresses(leg, rtp_destination=private, rtcp_destination=private)
        fp.set_endpoint_host(leg, CALLER)

        seen = functools.partial(decided, fp, leg)
        limited = functools.partial(limited_of, fp, leg)
        spend_the_strangers_burst(fp, leg, stranger, r, 410)
        phone.sendto(STUN_REQUEST, addr(r))
        for seq in range(20):
            phone.sendto(rtp(1000 + seq), addr(r))
        until(lambda: seen() == 431, "the phone's 21 decided")
        punted = fp.drain(1000)
        assert len(punted) == 21 and {p.source[0] for p in punted} == {CALLER}
        assert punted[0].kind is PacketKind.STUN and limited() == 10
        fp.set_endpoint_host(leg, None)  # unknown: the phone shares the spent bucket
        for seq in range(5):
            phone.sendto(rtp(2000 + seq), addr(r))
        until(lambda: seen() == 436, "5 more decided")
        assert limited() == 15 and fp.drain(1000) == []
        with pytest.raises(ValueError):
            fp.set_endpoint_host(leg, "not an ip")
        for s in (phone, stranger, r):
            s.close()


def test_a_sprayed_legs_own_endpoint_still_gets_its_check_and_first_rtp_through() -> None:
    """An attacker sprays 20,000 junk RTP datagrams at one leg's port, as fast as it
    can, while that leg's endpoint (the caller, whose signalled address the leg holds
    as its destination) sends its ICE check and its first RTP packets to the same
    port.  The spray spends the strangers' bucket, the caller's punts draw on the
    leg's own: Python answers the check and latches the caller on its first RTP
    packet while the spray goes on, every datagram the caller sent was punted or,
    once latched, forwarded in C, and the attacker still punts at most a burst and
    its rate.  With one bucket per leg the caller's punts are limited with the
    attacker's (almost every one: a token is free only for the moment before the
    next junk datagram takes it)."""
    fp = FastPath(loops=1)
    attacker, caller, callee = udp(ATTACKER), udp(CALLER), udp(CALLEE)
    r_offer, r_answer = udp(RELAY), udp(RELAY)
    r_offer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    callee.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    t0 = time.monotonic()
    fp.start()
    offer = fp.add_leg(r_offer, mux=True, loop=0)
    answer = fp.add_leg(r_answer, mux=True, loop=0)
    fp.pair(offer, answer)
    fp.latch(answer, addr(callee))
    # As media.relay_plane writes a leg before its first packet: no source, and
    # media for the caller goes to the address its SDP signalled.
    fp.set_addresses(offer, rtp_destination=addr(caller), rtcp_destination=addr(caller))
    from_caller: list[Punted] = []
    from_others = [0]
    latched_at: list[int] = []  # junk datagrams sent when Python latched the caller
    sent = [0, 0]  # junk, the caller's datagrams
    junk = rtp(0, ssrc=0xBADBAD, size=100)
    answer_stub = b"\x01\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)

    def handler(batch: list[Punted]) -> None:
        """The relay's part: answer the check, latch the caller on its first RTP."""
        for p in batch:
            if p.source[0] != CALLER:
                from_others[0] += 1
                continue
            from_caller.append(p)
            if p.kind is PacketKind.STUN:
                r_offer.sendto(answer_stub, p.source)
            elif p.kind is PacketKind.RTP and not latched_at:
                fp.latch(offer, p.source)
                latched_at.append(sent[0])

    def caller_sends() -> None:
        caller.sendto(STUN_REQUEST if sent[1] == 0 else rtp(sent[1]), addr(r_offer))
        sent[1] += 1

    flood = functools.partial(bounded_flood, sent, attacker, junk, addr(r_offer), caller_sends)

    def settled() -> bool:
        c = fp.counters(offer)
        return c.to_python + c.received >= sum(sent) - kernel_drops(r_offer)

    try:
        # The spray is on before the caller's first datagram: the first 1,000 of it,
        # past the strangers' burst.
        for _ in range(1000):
            attacker.sendto(junk, addr(r_offer))
            sent[0] += 1
        until(lambda: fp.counters(offer).drops["punt_limited"] > 0, "the spray limited")
        spray(fp, handler, flood, settled, t0)
        elapsed = time.monotonic() - t0
        o, lost = fp.counters(offer), kernel_drops(r_offer)
        assert sent == [FLOOD, 38]  # one check, then 37 RTP packets
        # The caller: latched while the spray was still going, and none of its
        # datagrams limited: each reached Python or, once latched, was forwarded in C
        # to the callee.  Exactly so unless the kernel dropped some of the spray on the
        # relay's socket for want of buffer (lost: the caller's among them, perhaps).
        assert latched_at and latched_at[0] < FLOOD, "latched only after the spray"
        assert fp.addresses(offer)[0] == addr(caller)
        assert len(from_caller) + o.packets_in >= sent[1] - lost
        forwarded = [callee.recvfrom(4096)[0] for _ in range(o.packets_in)]
        assert o.packets_in >= 1 and set(forwarded) <= {rtp(seq) for seq in range(1, sent[1])}
        if lost == 0:
            # Its ICE check reached Python (and was answered), then its first RTP
            # packet, which latched it; the rest of its stream flowed in C.
            assert [p.kind for p in from_caller[:2]] == [PacketKind.STUN, PacketKind.RTP]
            assert from_caller[1].data == rtp(1)
            assert caller.recvfrom(4096)[0] == answer_stub
            assert len(from_caller) + o.packets_in == sent[1]
            assert forwarded == [rtp(seq) for seq in range(sent[1] - o.packets_in, sent[1])]
        caller.sendto(rtp(1000), addr(r_offer))
        assert callee.recvfrom(4096)[0] == rtp(1000)  # forwarded in C
        # The attacker: its own bucket only, the rest dropped in C.
        assert from_others[0] <= PUNT_BURST + PUNT_RATE * elapsed + 1
        assert o.drops["punt_limited"] > 10_000
        assert fp.drop_sources(offer)["punt_limited"] == addr(attacker)
        assert o.drops["punt_overflow"] <= 10
        assert lost < FLOOD // 2  # the kernel may drop some, not most
        assert balanced(fp.counters(offer))
    finally:
        fp.close()
        for s in (attacker, caller, callee, r_offer, r_answer):
            s.close()
