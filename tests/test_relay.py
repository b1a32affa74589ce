"""media/latching and media/relay: source latching rules (pure, fake clock) and the relay
end to end over real UDP on loopback.

Cast: the relay on 127.0.0.1 (ports from a small range in 20000-29999), the caller on
127.0.0.2 (the "offer" leg), the callee on 127.0.0.3 (the "answer" leg), a stranger on
127.0.0.4.  SRTP comes from pylibsrtp (libsrtp) as the reference, and from a fake XOR
transform where only the relay's logic is under test.  Waits are bounded; nothing
asserts on time.

Every relay test runs on both paths (``make_relay`` is parametrized): the Python path
(:func:`media.relay.route` per packet) and the C data plane (:mod:`media.fastpath`),
whose clock follows the test's fake clock when there is one.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from media.fastpath import FastPath
from media.latching import DropReason, Latch, LatchMode, Verdict
from media.ports import PortsExhausted
from media.relay import Leg, MediaRelay, MediaSession, crypto_drop_reason, route
from media.rtp import PacketKind, RtpHeader
from tests.peers_media import Logs, SettableClock

pytestmark = pytest.mark.timeout(30)

RELAY = "127.0.0.1"
CALLER = "127.0.0.2"
CALLEE = "127.0.0.3"
STRANGER = "127.0.0.4"
ELSEWHERE = "127.0.0.5"
WAIT = 2.0


# ================================================================ latching (pure)


def test_strict_accepts_only_the_signalled_address_and_port() -> None:
    latch = Latch(LatchMode.STRICT)
    assert latch.check(CALLER, 4000, 1, secure=False) is Verdict.DROP  # nothing signalled
    latch.set_signalled(CALLER, 4000)
    assert latch.destination == (CALLER, 4000)
    assert latch.check(CALLER, 4000, 1, secure=False) is Verdict.ACCEPT
    assert latch.check(CALLER, 4001, 1, secure=False) is Verdict.DROP
    assert latch.check(STRANGER, 4000, 1, secure=False) is Verdict.DROP
    # Even a packet that would authenticate is not a reason to move in strict mode.
    assert latch.check(ELSEWHERE, 4000, 1, secure=True) is Verdict.DROP
    latch.confirm(ELSEWHERE, 4000, 1, now=5.0)
    assert latch.destination == (CALLER, 4000)


def test_nat_plain_latches_first_packet_from_signalled_host_any_port() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled(CALLER, 4000)
    assert latch.destination == (CALLER, 4000)  # before latching: send to the SDP address
    assert latch.check(STRANGER, 4000, 7, secure=False) is Verdict.DROP  # wrong host
    assert latch.check(CALLER, 31000, 7, secure=False) is Verdict.CANDIDATE  # NATed port
    latch.confirm(CALLER, 31000, 7, now=10.0)
    assert (latch.latched, latch.ssrc, latch.latched_at) == ((CALLER, 31000), 7, 10.0)
    assert latch.destination == (CALLER, 31000)
    assert latch.check(CALLER, 31000, 7, secure=False) is Verdict.ACCEPT
    # The signalled port itself is now a different source, without the SSRC a stranger.
    assert latch.check(CALLER, 4000, 8, secure=False) is Verdict.DROP
    assert latch.check(STRANGER, 31000, 7, secure=False) is Verdict.DROP


def test_nat_plain_relatches_only_from_signalled_host_with_latched_ssrc() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled(CALLER, 4000)
    latch.confirm(CALLER, 31000, 0xAAAA, now=1.0)
    assert latch.check(CALLER, 32000, 0xBBBB, secure=False) is Verdict.DROP
    assert latch.check(STRANGER, 32000, 0xAAAA, secure=False) is Verdict.DROP
    assert latch.check(CALLER, 32000, 0xAAAA, secure=False) is Verdict.CANDIDATE
    latch.confirm(CALLER, 32000, 0xAAAA, now=2.0)
    assert latch.latched == (CALLER, 32000) and latch.relatches == 1
    assert latch.check(CALLER, 31000, 0xAAAA, secure=False) is Verdict.CANDIDATE


def test_nat_latched_ssrc_follows_the_latched_source() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled(CALLER, 4000)
    latch.confirm(CALLER, 4000, 1, now=1.0)
    assert latch.check(CALLER, 4000, 2, secure=False) is Verdict.ACCEPT  # stream restarted
    assert latch.ssrc == 1  # check() is a question: only an accepted packet moves it
    latch.follow(2)
    assert latch.ssrc == 2
    assert latch.check(CALLER, 5000, 1, secure=False) is Verdict.DROP
    assert latch.check(CALLER, 5000, 2, secure=False) is Verdict.CANDIDATE


def test_nat_srtp_candidates_come_from_anywhere_and_latch_only_on_confirm() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled(CALLEE, 6000)
    # SRTP: the proof is the tag, so any address is a candidate until it authenticates.
    assert latch.check(ELSEWHERE, 40000, 5, secure=True) is Verdict.CANDIDATE
    assert latch.latched is None  # check() alone never latches
    latch.confirm(ELSEWHERE, 40000, 5, now=3.0)
    assert latch.check(ELSEWHERE, 40000, 5, secure=True) is Verdict.ACCEPT
    assert latch.check(STRANGER, 40000, 5, secure=True) is Verdict.CANDIDATE
    latch.confirm(STRANGER, 40001, 5, now=4.0)
    assert latch.relatches == 1 and latch.latched == (STRANGER, 40001)


def test_sip_source_is_a_trusted_host_for_plain_rtp() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled("192.168.1.20", 4000, extra_hosts=[CALLER])
    assert latch.check(CALLER, 31000, 9, secure=False) is Verdict.CANDIDATE
    assert latch.check(STRANGER, 31000, 9, secure=False) is Verdict.DROP


def test_new_signalled_address_unlatches_the_same_one_does_not() -> None:
    latch = Latch(LatchMode.NAT)
    latch.set_signalled(CALLER, 4000)
    latch.confirm(CALLER, 31000, 1, now=1.0)
    latch.set_signalled(CALLER, 4000)  # re-INVITE with the same address
    assert latch.latched == (CALLER, 31000)
    latch.set_signalled(ELSEWHERE, 4100)  # the phone moved
    assert latch.latched is None and latch.ssrc is None
    assert latch.destination == (ELSEWHERE, 4100)
    assert latch.check(CALLER, 31000, 1, secure=False) is Verdict.DROP
    latch.clear()
    assert latch.destination is None
    assert latch.check(ELSEWHERE, 4100, 1, secure=False) is Verdict.DROP


def test_signalled_ip_is_normalized_and_must_be_literal() -> None:
    latch = Latch(LatchMode.STRICT)
    latch.set_signalled("0:0::1", 4000)
    assert latch.check("::1", 4000, 1, secure=False) is Verdict.ACCEPT
    with pytest.raises(ValueError):
        latch.set_signalled("phone.example.com", 4000)


def test_crypto_errors_map_to_replay_or_auth_failed() -> None:
    class ReplayError(Exception):
        pass

    assert crypto_drop_reason(ReplayError("x")) is DropReason.REPLAY
    assert crypto_drop_reason(Exception("replay check failed (bad index)")) is DropReason.REPLAY
    assert crypto_drop_reason(Exception("authentication failure")) is DropReason.AUTH_FAILED
    assert crypto_drop_reason(ValueError("short")) is DropReason.AUTH_FAILED

    class SrtpError(Exception):  # media.srtp's shape: a reason attribute
        def __init__(self, reason: str) -> None:
            super().__init__(reason)
            self.reason = reason

    assert crypto_drop_reason(SrtpError("replay")) is DropReason.REPLAY
    assert crypto_drop_reason(SrtpError("auth")) is DropReason.AUTH_FAILED
    assert crypto_drop_reason(SrtpError("short")) is DropReason.TOO_SHORT
    assert crypto_drop_reason(SrtpError("format")) is DropReason.MALFORMED
    assert crypto_drop_reason(SrtpError("ssrc_limit")) is DropReason.AUTH_FAILED


# ================================================================ helpers


def rtp(seq: int, ssrc: int = 0x11111111, payload: bytes | None = None, pt: int = 0) -> bytes:
    body = payload if payload is not None else bytes([seq & 0xFF]) * 160
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + body


def rtcp_sr(ssrc: int = 0x11111111, tag: int = 0) -> bytes:
    """An RTCP sender report (RFC 3550 §6.4.1, 28 bytes); ``tag`` marks it."""
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + struct.pack("!I", tag) + bytes(16)


class Endpoint(asyncio.DatagramProtocol):
    """A UDP socket on a loopback address playing one side of a call."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        data, addr = await asyncio.wait_for(self.queue.get(), WAIT)
        return data, (addr[0], addr[1])

    def pending(self) -> list[bytes]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait()[0])
        return out


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Wait (bounded) for a counter to reach a value."""
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def small_range(pairs: int = 32) -> tuple[int, int]:
    start = random.randrange(20000, 29999 - 2 * pairs, 2)
    return start, start + 2 * pairs - 1


class Phone:
    """An RTP socket and an RTCP socket on one host."""

    def __init__(self, rtp: Endpoint, rtcp: Endpoint) -> None:
        self.rtp = rtp
        self.rtcp = rtcp

    @property
    def host(self) -> str:
        return self.rtp.address[0]

    def signal(self, leg: Leg, **kw: Any) -> None:
        """What the proxy does with this phone's SDP."""
        leg.set_remote(self.host, self.rtp.address[1], self.rtcp.address[1], **kw)


class Harness:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    async def endpoint(self, host: str) -> Endpoint:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(Endpoint, local_addr=(host, 0))
        self.endpoints.append(proto)
        return proto

    async def phone(self, host: str) -> Phone:
        return Phone(await self.endpoint(host), await self.endpoint(host))

    def close(self) -> None:
        for e in self.endpoints:
            if e.transport is not None:
                e.transport.close()


class FakeClock(SettableClock):
    def __init__(self) -> None:
        super().__init__(100.0)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    h.close()


@pytest.fixture
def logs() -> Logs:
    return Logs()


def fast_path_for(clock: Any = None, **kw: Any) -> FastPath:
    """A plane for a relay made with these arguments: its RTCP limits, its clock."""
    fast = FastPath(
        2,
        rtcp_rate=float(kw.get("rtcp_rate", 100.0)),
        rtcp_burst=float(kw.get("rtcp_burst", 200)),
    )
    fast.start()
    if isinstance(clock, FakeClock):
        clock.planes.append(fast)
        fast.set_clock(clock.now)
    return fast


@pytest.fixture(params=["python", "fast"])
def path(request: pytest.FixtureRequest) -> str:
    """Which path forwards the media: Python's route() or the C data plane."""
    return str(request.param)


@pytest.fixture
async def make_relay(logs: Logs, path: str) -> AsyncIterator[Callable[..., MediaRelay]]:
    relays: list[MediaRelay] = []
    planes: list[FastPath] = []

    def make(**kw: Any) -> MediaRelay:
        kw.setdefault("port_range", small_range())
        kw.setdefault("quarantine", 0.0)
        kw.setdefault("log", logs)
        if path == "fast":
            planes.append(fast_path_for(**kw))
            kw["fast_path"] = planes[-1]
        relay = MediaRelay(RELAY, **kw)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()
    for plane in planes:
        plane.close()


async def call(
    relay: MediaRelay,
    harness: Harness,
    *,
    mux: bool = False,
    latch: LatchMode = LatchMode.NAT,
) -> tuple[MediaSession, Leg, Leg, Phone, Phone]:
    """A session with both legs signalled: caller on .2 (offer), callee on .3 (answer)."""
    session = await relay.create_session(f"call-{random.getrandbits(32):08x}")
    offer = await session.add_leg("offer", rtcp_mux=mux, latch=latch)
    answer = await session.add_leg("answer", rtcp_mux=mux, latch=latch)
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    if mux:
        offer.set_remote(CALLER, caller.rtp.address[1])
        answer.set_remote(CALLEE, callee.rtp.address[1])
    else:
        caller.signal(offer)
        callee.signal(answer)
    return session, offer, answer, caller, callee


def to_rtp(leg: Leg) -> tuple[str, int]:
    return (leg.local_host, leg.local_rtp_port)


def to_rtcp(leg: Leg) -> tuple[str, int]:
    return (leg.local_host, leg.local_rtcp_port)


def balanced(leg: Leg) -> bool:
    """Every datagram a leg received was forwarded, punted or dropped, exactly once."""
    c = leg.counters
    return c.received == c.packets_in + c.punted + sum(c.drops.values())


# ---------------------------------------------------------------- transforms


class LibSrtp:
    """pylibsrtp as one direction of a leg's SRTP (AES_CM_128_HMAC_SHA1_80)."""

    def __init__(self, key: bytes, outbound: bool) -> None:
        kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
        self.session = Session(policy=Policy(key=key, ssrc_type=kind))

    def protect_rtp(self, packet: bytes) -> bytes:
        return self.session.protect(packet)

    def unprotect_rtp(self, packet: bytes) -> bytes:
        return self.session.unprotect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self.session.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self.session.unprotect_rtcp(packet)


class FakeSrtp:
    """XOR the payload with a key byte and append a 4-byte CRC tag over key and packet;
    RTP replays are caught by sequence number.  Only for the relay's logic."""

    class AuthError(Exception):
        pass

    class ReplayError(Exception):
        pass

    def __init__(self, key: int) -> None:
        self.key = key
        self.seen: set[int] = set()
        self.rtcp_index = 0

    def _tag(self, body: bytes) -> bytes:
        return struct.pack("!I", zlib.crc32(bytes([self.key]) + body))

    def _xor(self, data: bytes) -> bytes:
        return bytes(b ^ self.key for b in data)

    def protect_rtp(self, packet: bytes) -> bytes:
        n = RtpHeader.parse(packet).header_length
        body = packet[:n] + self._xor(packet[n:])
        return body + self._tag(body)

    def unprotect_rtp(self, packet: bytes) -> bytes:
        body, tag = packet[:-4], packet[-4:]
        if len(packet) < 16 or tag != self._tag(body):
            raise FakeSrtp.AuthError("bad tag")
        header = RtpHeader.parse(body)
        if header.sequence in self.seen:
            raise FakeSrtp.ReplayError("seen")
        self.seen.add(header.sequence)
        return body[: header.header_length] + self._xor(body[header.header_length :])

    def protect_rtcp(self, packet: bytes) -> bytes:
        self.rtcp_index += 1
        body = packet[:8] + self._xor(packet[8:]) + struct.pack("!I", self.rtcp_index)
        return body + self._tag(body)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        body, tag = packet[:-4], packet[-4:]
        if len(packet) < 16 or tag != self._tag(body):
            raise FakeSrtp.AuthError("bad tag")
        return body[:8] + self._xor(body[8:-4])


# ================================================================ relay: plain RTP


async def test_plain_rtp_both_ways(make_relay: Callable[..., MediaRelay], harness: Harness) -> None:
    relay = make_relay()
    session, offer, answer, caller, callee = await call(relay, harness)
    assert offer.local_rtp_port % 2 == 0 and offer.local_rtcp_port == offer.local_rtp_port + 1
    for seq in range(1, 6):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        data, source = await callee.rtp.recv()
        assert data == rtp(seq)
        assert source == to_rtp(answer)  # the callee only ever sees the relay
        back = rtp(seq, ssrc=0x22222222)
        callee.rtp.send(back, to_rtp(answer))
        data, source = await caller.rtp.recv()
        assert data == back and source == to_rtp(offer)
    assert offer.counters.packets_in == 5 and answer.counters.packets_out == 5
    assert answer.counters.packets_in == 5 and offer.counters.packets_out == 5
    assert offer.counters.bytes_in == 5 * 172 and offer.counters.bytes_out == 5 * 172
    assert offer.rtp_latch.latched == caller.rtp.address
    assert answer.rtp_latch.latched == callee.rtp.address
    assert balanced(offer) and balanced(answer)
    assert offer.last_packet is not None and session.last_packet is not None
    stats = relay.stats()
    assert stats["sessions"] == 1 and stats["legs"] == 2 and stats["packets_in"] == 10
    assert stats["ports_in_use"] == 4
    assert [f["component"] for f in make_relay_logs(relay).events("media_latched")] == [
        "rtp",
        "rtp",
    ]


def make_relay_logs(relay: MediaRelay) -> Logs:
    assert isinstance(relay.log, Logs)
    return relay.log


async def test_rtp_bleed_stranger_is_dropped_while_media_flows(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    stranger = await harness.endpoint(STRANGER)
    # Before the caller has sent anything: a stranger cannot latch the leg.
    stranger.send(rtp(1, ssrc=0x66666666), to_rtp(offer))
    await until(lambda: offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 1)
    assert offer.rtp_latch.latched is None
    for seq in range(1, 21):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        stranger.send(rtp(seq, ssrc=0x11111111), to_rtp(offer))  # even with the SSRC
        stranger.send(rtp(seq, ssrc=0x66666666), to_rtp(answer))  # and on the other leg
        callee.rtp.send(rtp(seq, ssrc=0x22222222), to_rtp(answer))
    got_callee = [(await callee.rtp.recv())[0] for _ in range(20)]
    got_caller = [(await caller.rtp.recv())[0] for _ in range(20)]
    assert got_callee == [rtp(s) for s in range(1, 21)]
    assert got_caller == [rtp(s, ssrc=0x22222222) for s in range(1, 21)]
    await until(lambda: answer.counters.drops[DropReason.UNKNOWN_SOURCE] == 20)
    assert offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 21
    # Whatever the stranger sent went nowhere: the callee saw only the caller's media.
    await asyncio.sleep(0.05)
    assert callee.rtp.pending() == [] and caller.rtp.pending() == []
    assert stranger.pending() == []
    assert offer.rtp_latch.latched == caller.rtp.address
    assert balanced(offer) and balanced(answer)
    drops = make_relay_logs(relay).events("media_drop")
    assert drops and drops[0]["reason"] == "unknown_source"
    assert len(drops) < 5  # rate-limited: one line per reason per second


async def test_garbage_and_truncated_packets_are_dropped_and_counted(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    punted: list[tuple[str, PacketKind, bytes]] = []
    relay = make_relay(
        on_control=lambda leg, kind, data, src: punted.append((leg.name, kind, data))
    )
    _, offer, _answer, caller, callee = await call(relay, harness)
    bad = [
        (b"", DropReason.TOO_SHORT),
        (b"hello world", DropReason.NOT_RTP),  # first byte 104: nobody's
        (b"\x40" + rtp(1)[1:], DropReason.NOT_RTP),  # TURN channel range / version 1
        (b"\x80\x00\x00", DropReason.TOO_SHORT),  # truncated RTP
        (rtp(1)[:11], DropReason.TOO_SHORT),
        (b"\x8f" + rtp(1)[1:12], DropReason.MALFORMED),  # 15 CSRCs that are not there
        (b"\x90" + rtp(1)[1:12] + b"\xbe\xde\x00\x09", DropReason.MALFORMED),
        (b"\x80\x00" + bytes(30), DropReason.TOO_SHORT),  # on the RTCP port, below
    ]
    for data, _ in bad[1:-1]:
        caller.rtp.send(data, to_rtp(offer))
    # asyncio does not send empty datagrams: a plain socket does.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind((CALLER, 0))
        raw.sendto(b"", to_rtp(offer))
    caller.rtcp.send(b"\x80\xc8\x00", to_rtcp(offer))  # truncated RTCP
    caller.rtcp.send(rtp(1), to_rtcp(offer))  # RTP on the RTCP port: not RTCP
    stun = bytes.fromhex("000100002112a442") + bytes(12)
    caller.rtp.send(stun, to_rtp(offer))
    caller.rtp.send(rtp(7), to_rtp(offer))
    data, _ = await callee.rtp.recv()
    assert data == rtp(7)
    drops = offer.counters.drops
    await until(lambda: offer.counters.received == 11)
    assert drops[DropReason.TOO_SHORT] == 4
    assert drops[DropReason.NOT_RTP] == 3
    assert drops[DropReason.MALFORMED] == 2
    assert offer.counters.punted == 1 and punted == [("offer", PacketKind.STUN, stun)]
    assert balanced(offer)


async def test_plain_nat_latching_and_strict_mode(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    # The caller's NAT maps it to another port on the same host.
    natted = await harness.endpoint(CALLER)
    natted.send(rtp(1), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(1)
    callee.rtp.send(rtp(1, ssrc=0x22), to_rtp(answer))
    assert (await natted.recv())[0] == rtp(1, ssrc=0x22)  # replies follow the latch
    # Same host, another port, another SSRC: not a relatch.
    squatter = await harness.endpoint(CALLER)
    squatter.send(rtp(2, ssrc=0x99), to_rtp(offer))
    await until(lambda: offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 1)
    # Same host with the latched SSRC: the NAT rebound, relatch.
    caller.rtp.send(rtp(3), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(3)
    callee.rtp.send(rtp(2, ssrc=0x22), to_rtp(answer))
    assert (await caller.rtp.recv())[0] == rtp(2, ssrc=0x22)
    assert offer.rtp_latch.relatches == 1
    assert len(make_relay_logs(relay).events("media_relatched")) == 1

    # Strict mode: only the signalled port.
    _, s_offer, _, s_caller, s_callee = await call(relay, harness, latch=LatchMode.STRICT)
    natted.send(rtp(1), to_rtp(s_offer))
    await until(lambda: s_offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 1)
    s_caller.rtp.send(rtp(2), to_rtp(s_offer))
    assert (await s_callee.rtp.recv())[0] == rtp(2)
    assert callee.rtp.pending() == [] and s_callee.rtp.pending() == []


async def test_latched_ssrc_follows_accepted_packets_only(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    answer.set_crypto(inbound=FakeSrtp(0x5A), outbound=None)
    callee_tx = FakeSrtp(0x5A)
    # Plain: the caller restarts its stream with a new SSRC; a later NAT rebinding
    # proves itself with the new one.
    caller.rtp.send(rtp(1), to_rtp(offer))
    caller.rtp.send(rtp(2, ssrc=0x33), to_rtp(offer))
    assert [(await callee.rtp.recv())[0] for _ in range(2)] == [rtp(1), rtp(2, ssrc=0x33)]
    assert offer.rtp_latch.ssrc == 0x33
    rebound = await harness.endpoint(CALLER)
    rebound.send(rtp(3, ssrc=0x33), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(3, ssrc=0x33)
    assert offer.rtp_latch.latched == rebound.address
    # SRTP: a packet spoofing the latched source with a bad tag changes nothing.
    callee.rtp.send(callee_tx.protect_rtp(rtp(1, ssrc=0x22)), to_rtp(answer))
    assert (await rebound.recv())[0] == rtp(1, ssrc=0x22)
    forged = FakeSrtp(0x77).protect_rtp(rtp(2, ssrc=0x99))
    callee.rtp.send(forged, to_rtp(answer))
    await until(lambda: answer.counters.auth_failures == 1)
    assert answer.rtp_latch.ssrc == 0x22


async def test_sip_source_lets_a_natted_phone_prove_itself(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, _, caller, callee = await call(relay, harness)
    # The SDP names a private address; the SIP came from 127.0.0.2.
    offer.set_remote("192.168.1.20", 4000, sip_source=CALLER)
    caller.rtp.send(rtp(1), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(1)
    assert offer.rtp_latch.latched == caller.rtp.address


async def test_rtcp_relayed_both_ways_on_separate_ports(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    caller.rtcp.send(rtcp_sr(tag=1), to_rtcp(offer))
    data, source = await callee.rtcp.recv()
    assert data == rtcp_sr(tag=1) and source == to_rtcp(answer)
    callee.rtcp.send(rtcp_sr(ssrc=0x22, tag=2), to_rtcp(answer))
    data, source = await caller.rtcp.recv()
    assert data == rtcp_sr(ssrc=0x22, tag=2) and source == to_rtcp(offer)
    # An RTCP-looking RTP packet (PT 72 with marker = second byte 200) on the RTP port
    # of a non-mux leg is RTP: payload types 64-95 are legal without rtcp-mux.
    odd = rtp(5, pt=0xC8 - 0x80)
    odd = odd[:1] + b"\xc8" + odd[2:]
    caller.rtp.send(odd, to_rtp(offer))
    data, _ = await callee.rtp.recv()
    assert data == odd
    assert offer.counters.rtcp_in == 1 and offer.counters.rtcp_out == 1
    assert caller.rtp.pending() == [] and callee.rtcp.pending() == []


async def test_rtcp_mux_legs_demux_rtp_and_rtcp_on_one_port(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness, mux=True)
    assert offer.local_rtcp_port == offer.local_rtp_port
    assert offer.rtcp_transport is offer.rtp_transport
    caller.rtp.send(rtp(1), to_rtp(offer))
    caller.rtp.send(rtcp_sr(tag=9), to_rtp(offer))
    got = {(await callee.rtp.recv())[0] for _ in range(2)}
    assert got == {rtp(1), rtcp_sr(tag=9)}
    callee.rtp.send(rtcp_sr(ssrc=0x22, tag=3), to_rtp(answer))
    assert (await caller.rtp.recv())[0] == rtcp_sr(ssrc=0x22, tag=3)
    assert offer.counters.rtcp_in == 1 and answer.counters.rtcp_in == 1
    assert relay.stats()["ports_in_use"] == 4  # a mux leg keeps its odd port reserved


async def test_rtcp_flood_is_dropped_and_rtp_keeps_flowing(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    clock = FakeClock()  # frozen: the bucket does not refill during the test
    relay = make_relay(clock=clock, rtcp_rate=1.0, rtcp_burst=5)
    _, offer, _, caller, callee = await call(relay, harness)
    for n in range(50):
        caller.rtcp.send(rtcp_sr(tag=n), to_rtcp(offer))
    caller.rtp.send(rtp(1), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(1)
    await until(lambda: offer.counters.received == 51)
    assert offer.counters.drops[DropReason.RTCP_FLOOD] == 45
    assert [await callee.rtcp.recv() for _ in range(5)]
    assert callee.rtcp.pending() == []
    clock.now += 2.0  # two seconds at one per second
    for n in range(5):
        caller.rtcp.send(rtcp_sr(tag=100 + n), to_rtcp(offer))
    await until(lambda: offer.counters.received == 56)
    assert offer.counters.drops[DropReason.RTCP_FLOOD] == 48
    assert balanced(offer)


# ================================================================ relay: SRTP


async def test_rtp_to_srtp_with_libsrtp_as_reference(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    """Caller speaks RTP; the callee's leg is SDES-SRTP.  The relay encrypts towards the
    callee with a key of its own (which the callee decrypts with libsrtp) and decrypts
    the callee's SRTP with the callee's key."""
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    relay_key, callee_key = random.randbytes(30), random.randbytes(30)
    answer.set_crypto(inbound=LibSrtp(callee_key, False), outbound=LibSrtp(relay_key, True))
    callee_rx = LibSrtp(relay_key, outbound=False)  # the callee's side, from a=crypto
    callee_tx = LibSrtp(callee_key, outbound=True)
    for seq in range(1, 11):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        srtp, _ = await callee.rtp.recv()
        assert len(srtp) == 172 + 10 and srtp[:12] == rtp(seq)[:12] and srtp != rtp(seq)[:182]
        assert callee_rx.unprotect_rtp(srtp) == rtp(seq)
        callee.rtp.send(callee_tx.protect_rtp(rtp(seq, ssrc=0x22)), to_rtp(answer))
        plain, _ = await caller.rtp.recv()
        assert plain == rtp(seq, ssrc=0x22)
    # RTCP <-> SRTCP.
    caller.rtcp.send(rtcp_sr(tag=1), to_rtcp(offer))
    srtcp, _ = await callee.rtcp.recv()
    assert srtcp != rtcp_sr(tag=1) and callee_rx.unprotect_rtcp(srtcp) == rtcp_sr(tag=1)
    callee.rtcp.send(callee_tx.protect_rtcp(rtcp_sr(ssrc=0x22, tag=2)), to_rtcp(answer))
    assert (await caller.rtcp.recv())[0] == rtcp_sr(ssrc=0x22, tag=2)
    assert answer.counters.auth_failures == 0 and answer.counters.replays == 0
    assert balanced(offer) and balanced(answer)


async def test_rtp_to_srtp_with_sipedge_srtp_core_against_libsrtp(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    """The same call with sipedge's own SRTP core (media.srtp) inside the relay and
    libsrtp at the callee: what the relay sends decrypts with libsrtp, and back."""
    import media.srtp as srtp

    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    relay_key, callee_key = random.randbytes(30), random.randbytes(30)
    suite = "AES_CM_128_HMAC_SHA1_80"
    answer.set_crypto(
        inbound=srtp.Context(callee_key[:16], callee_key[16:], suite, direction="inbound"),
        outbound=srtp.Context(relay_key[:16], relay_key[16:], suite, direction="outbound"),
    )
    callee_rx, callee_tx = LibSrtp(relay_key, outbound=False), LibSrtp(callee_key, True)
    for seq in range(1, 11):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        assert callee_rx.unprotect_rtp((await callee.rtp.recv())[0]) == rtp(seq)
        callee.rtp.send(callee_tx.protect_rtp(rtp(seq, ssrc=0x22)), to_rtp(answer))
        assert (await caller.rtp.recv())[0] == rtp(seq, ssrc=0x22)
    caller.rtcp.send(rtcp_sr(tag=1), to_rtcp(offer))
    assert callee_rx.unprotect_rtcp((await callee.rtcp.recv())[0]) == rtcp_sr(tag=1)
    srtcp = callee_tx.protect_rtcp(rtcp_sr(ssrc=0x22, tag=2))
    callee.rtcp.send(srtcp, to_rtcp(answer))
    assert (await caller.rtcp.recv())[0] == rtcp_sr(ssrc=0x22, tag=2)
    replayed = callee_tx.protect_rtp(rtp(11, ssrc=0x22))
    callee.rtp.send(replayed, to_rtp(answer))
    callee.rtp.send(replayed, to_rtp(answer))
    fresh = callee_tx.protect_rtcp(rtcp_sr(ssrc=0x22, tag=3))
    callee.rtcp.send(fresh[:-1] + bytes([fresh[-1] ^ 1]), to_rtcp(answer))  # bad tag
    assert (await caller.rtp.recv())[0] == rtp(11, ssrc=0x22)
    await until(lambda: answer.counters.received == 14)
    assert answer.counters.replays == 1 and answer.counters.auth_failures == 1
    assert balanced(answer) and caller.rtp.pending() == []


async def test_replayed_and_tampered_srtp_are_dropped_and_counted(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, _offer, answer, caller, callee = await call(relay, harness)
    relay_key, callee_key = random.randbytes(30), random.randbytes(30)
    answer.set_crypto(inbound=LibSrtp(callee_key, False), outbound=LibSrtp(relay_key, True))
    tx = LibSrtp(callee_key, outbound=True)
    first = tx.protect_rtp(rtp(1, ssrc=0x22))
    callee.rtp.send(first, to_rtp(answer))
    assert (await caller.rtp.recv())[0] == rtp(1, ssrc=0x22)
    callee.rtp.send(first, to_rtp(answer))  # replay
    second = tx.protect_rtp(rtp(2, ssrc=0x22))
    callee.rtp.send(second[:-1] + bytes([second[-1] ^ 1]), to_rtp(answer))  # bad tag
    callee.rtp.send(second[:20], to_rtp(answer))  # truncated SRTP
    srtcp = tx.protect_rtcp(rtcp_sr(ssrc=0x22))
    callee.rtcp.send(srtcp[:-1] + bytes([srtcp[-1] ^ 1]), to_rtcp(answer))  # bad SRTCP tag
    callee.rtcp.send(srtcp, to_rtcp(answer))
    callee.rtcp.send(srtcp, to_rtcp(answer))  # SRTCP replay
    callee.rtp.send(second, to_rtp(answer))  # the genuine one still passes
    assert (await caller.rtp.recv())[0] == rtp(2, ssrc=0x22)
    assert (await caller.rtcp.recv())[0] == rtcp_sr(ssrc=0x22)
    await until(lambda: answer.counters.received == 8)
    assert answer.counters.replays == 2
    assert answer.counters.auth_failures == 3
    assert caller.rtp.pending() == [] and caller.rtcp.pending() == []
    assert balanced(answer)
    assert relay.stats()["drops"]["replay"] == 2


async def test_srtp_latches_to_the_first_authenticating_source_and_relatches_on_proof(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    answer.set_crypto(inbound=FakeSrtp(0x5A), outbound=FakeSrtp(0xA5))
    callee_tx, callee_rx = FakeSrtp(0x5A), FakeSrtp(0xA5)
    # The callee signalled 127.0.0.3 but its packets come from elsewhere (NAT).
    natted = await harness.endpoint(ELSEWHERE)
    stranger = await harness.endpoint(STRANGER)
    stranger.send(FakeSrtp(0x11).protect_rtp(rtp(1, ssrc=0x22)), to_rtp(answer))  # wrong key
    await until(lambda: answer.counters.drops[DropReason.AUTH_FAILED] == 1)
    assert answer.rtp_latch.latched is None
    natted.send(callee_tx.protect_rtp(rtp(1, ssrc=0x22)), to_rtp(answer))
    assert (await caller.rtp.recv())[0] == rtp(1, ssrc=0x22)
    assert answer.rtp_latch.latched == natted.address
    caller.rtp.send(rtp(1), to_rtp(offer))
    assert callee_rx.unprotect_rtp((await natted.recv())[0]) == rtp(1)
    # A stranger without the key, once latched: unknown source, no relatch.
    stranger.send(FakeSrtp(0x11).protect_rtp(rtp(2, ssrc=0x22)), to_rtp(answer))
    stranger.send(rtp(3, ssrc=0x22), to_rtp(answer))  # or in plain
    await until(lambda: answer.counters.drops[DropReason.UNKNOWN_SOURCE] == 2)
    assert answer.rtp_latch.latched == natted.address
    # The callee's NAT moves it: the first authenticating packet relatches.
    moved = await harness.endpoint(ELSEWHERE)
    moved.send(callee_tx.protect_rtp(rtp(4, ssrc=0x22)), to_rtp(answer))
    assert (await caller.rtp.recv())[0] == rtp(4, ssrc=0x22)
    assert answer.rtp_latch.latched == moved.address and answer.rtp_latch.relatches == 1
    caller.rtp.send(rtp(2), to_rtp(offer))
    assert callee_rx.unprotect_rtp((await moved.recv())[0]) == rtp(2)
    assert callee.rtp.pending() == [] and natted.pending() == [] and stranger.pending() == []
    assert balanced(answer)


async def test_protect_failure_and_handler_crash_are_counted_not_raised(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    class Broken(FakeSrtp):
        def protect_rtp(self, packet: bytes) -> bytes:
            raise RuntimeError("no key")

    def explode(*_: Any) -> None:
        raise RuntimeError("handler bug")

    relay = make_relay(on_control=explode)
    _, offer, answer, caller, callee = await call(relay, harness)
    answer.set_crypto(None, Broken(1))
    caller.rtp.send(rtp(1), to_rtp(offer))
    caller.rtp.send(bytes.fromhex("16fefd") + bytes(20), to_rtp(offer))  # DTLS: punted
    await until(lambda: offer.counters.received == 2)
    assert offer.counters.drops[DropReason.PROTECT_FAILED] == 1
    assert offer.counters.drops[DropReason.INTERNAL_ERROR] == 1
    assert balanced(offer)
    assert make_relay_logs(relay).events("media_internal_error")
    # The relay still works.
    answer.set_crypto(None, None)
    caller.rtp.send(rtp(2), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(2)


async def test_no_destination_until_the_answer(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    session = await relay.create_session("early")
    offer = await session.add_leg("offer")
    caller = await harness.phone(CALLER)
    caller.signal(offer)
    caller.rtp.send(rtp(1), to_rtp(offer))  # early media before the answer leg exists
    await until(lambda: offer.counters.drops[DropReason.NO_DESTINATION] == 1)
    answer = await session.add_leg("answer")
    caller.rtp.send(rtp(2), to_rtp(offer))  # answer leg without a remote yet
    await until(lambda: offer.counters.drops[DropReason.NO_DESTINATION] == 2)
    callee = await harness.phone(CALLEE)
    callee.signal(answer)
    caller.rtp.send(rtp(3), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(3)
    # A disabled stream (port 0 in a re-offer) has no destination again.
    answer.set_remote(CALLEE, 0)
    caller.rtp.send(rtp(4), to_rtp(offer))
    await until(lambda: offer.counters.drops[DropReason.NO_DESTINATION] == 3)


async def test_reinvite_moves_the_remote(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    caller.rtp.send(rtp(1), to_rtp(offer))
    await callee.rtp.recv()
    moved = await harness.phone(ELSEWHERE)
    moved.signal(answer)  # re-INVITE: the callee now receives on 127.0.0.5
    caller.rtp.send(rtp(2), to_rtp(offer))
    assert (await moved.rtp.recv())[0] == rtp(2)
    callee.rtp.send(rtp(1, ssrc=0x22), to_rtp(answer))  # the old address is a stranger
    await until(lambda: answer.counters.drops[DropReason.UNKNOWN_SOURCE] == 1)
    assert callee.rtp.pending() == []


# ================================================================ session lifecycle


async def test_media_timeout_with_hold_exclusion(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    clock = FakeClock()
    relay = make_relay(clock=clock)
    session, offer, _, caller, callee = await call(relay, harness)
    start = clock.now
    assert not session.media_timeout(start + 59, 60)
    assert session.media_timeout(start + 60, 60)  # never any media at all
    clock.now = start + 10
    caller.rtp.send(rtp(1), to_rtp(offer))
    await callee.rtp.recv()
    assert offer.last_packet == start + 10
    assert not session.media_timeout(start + 69, 60)
    assert session.media_timeout(start + 70, 60)
    assert relay.timed_out(start + 70, 60) == [session.call_id]
    clock.now = start + 20
    session.on_hold = True
    assert not session.media_timeout(start + 1000, 60)
    assert relay.timed_out(start + 1000, 60) == []
    clock.now = start + 1000
    session.on_hold = False  # off hold: the timeout counts from here
    assert not session.media_timeout(start + 1059, 60)
    assert session.media_timeout(start + 1060, 60)


async def test_delete_session_quarantines_its_ports(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    clock = FakeClock()
    relay = make_relay(clock=clock, quarantine=30.0)
    session, offer, answer, caller, callee = await call(relay, harness)
    caller.rtp.send(rtp(1), to_rtp(offer))
    await callee.rtp.recv()
    ports = [offer.local_rtp_port, offer.local_rtcp_port, answer.local_rtp_port]
    assert relay.stats()["ports_in_use"] == 4
    assert await relay.delete_session(session.call_id)
    assert not await relay.delete_session(session.call_id)
    stats = relay.stats()
    assert stats["sessions"] == 0 and stats["ports_in_use"] == 0
    assert stats["ports_quarantined"] == 4
    assert stats["packets_in"] == 1  # totals survive the session
    assert relay.session(session.call_id) is None
    # The sockets are closed: the ports can be bound by anyone again.
    for port in ports:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((RELAY, port))
        probe.close()
    clock.now += 30
    assert relay.stats()["ports_quarantined"] == 0


async def test_set_remote_refuses_bad_addresses(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    session = await relay.create_session("bad")
    leg = await session.add_leg("offer")
    for args in [("::1", 4000), ("phone.example.com", 4000), (CALLER, 70000), (CALLER, -1)]:
        with pytest.raises(ValueError):
            leg.set_remote(*args)
    with pytest.raises(ValueError):
        leg.set_remote(CALLER, 4000, 0)
    leg.set_remote(CALLER, 4000, 4001)
    assert leg.rtp_destination == (CALLER, 4000) and leg.rtcp_destination == (CALLER, 4001)


async def test_exhaustion_and_bad_legs(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay(port_range=small_range(1))
    session = await relay.create_session("one")
    await session.add_leg("offer")
    with pytest.raises(PortsExhausted):
        await session.add_leg("answer")
    with pytest.raises(ValueError):
        await session.add_leg("offer")
    with pytest.raises(ValueError):
        await session.add_leg("third")
    with pytest.raises(ValueError):
        await relay.create_session("one")


def test_route_without_sockets() -> None:
    """The loop body is usable without asyncio: what the C data plane will mirror."""

    async def scenario() -> None:
        relay = MediaRelay(RELAY, port_range=small_range(), quarantine=0.0)
        session = await relay.create_session("pure")
        offer = await session.add_leg("offer")
        answer = await session.add_leg("answer")
        offer.set_remote(CALLER, 4000)
        answer.set_remote(CALLEE, 6000)
        out = route(offer, False, rtp(1), (CALLER, 4000), 5.0)
        assert out is not None
        transport, payload, destination = out
        assert transport is answer.rtp_transport
        assert payload == rtp(1) and destination == (CALLEE, 6000)
        assert route(offer, False, rtp(2), (STRANGER, 4000), 6.0) is None
        assert offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 1
        await relay.close()

    asyncio.run(scenario())


def test_plain_call_under_uvloop(path: str) -> None:
    """sipedge runs on uvloop: the same relay, both ways, on that loop."""
    import uvloop

    async def scenario() -> None:
        fast = fast_path_for() if path == "fast" else None
        relay = MediaRelay(RELAY, port_range=small_range(), quarantine=0.0, fast_path=fast)
        harness = Harness()
        try:
            _, offer, answer, caller, callee = await call(relay, harness)
            stranger = await harness.endpoint(STRANGER)
            for seq in range(1, 11):
                caller.rtp.send(rtp(seq), to_rtp(offer))
                stranger.send(rtp(seq), to_rtp(offer))
                assert (await callee.rtp.recv())[0] == rtp(seq)
                callee.rtp.send(rtp(seq, ssrc=2), to_rtp(answer))
                assert (await caller.rtp.recv())[0] == rtp(seq, ssrc=2)
            await until(lambda: offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 10)
        finally:
            harness.close()
            await relay.close()
            if fast is not None:
                fast.close()

    uvloop.run(scenario())


# ---------------------------------------------------------------- dtls-srtp legs


def ice_check(ufrag: str, pwd: str, nominate: bool) -> bytes:
    """A controlling full agent's Binding request (aioice.stun encodes it)."""
    from aioice import stun

    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes.update({"USERNAME": f"{ufrag}:brws", "PRIORITY": 1, "ICE-CONTROLLING": 1})
    if nominate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(pwd.encode())
    return bytes(request)


async def test_dtls_srtp_leg_needs_rtcp_mux(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    relay = make_relay()
    _, offer, _, _, _ = await call(relay, harness)
    with pytest.raises(ValueError):
        offer.enable_webrtc()
    assert offer.webrtc is None and offer.profile == "rtp"


async def test_dtls_srtp_leg_answers_ice_latches_on_nomination_and_keeps_it(
    make_relay: Callable[..., MediaRelay], harness: Harness
) -> None:
    """The browser checks as soon as it has our offer; its answer (set_remote) arrives
    later and must not unlatch what the nomination proved.  RTP before the handshake is
    dropped as dtls_pending both ways (never plain RTP to a WebRTC side)."""
    relay = make_relay()
    _, offer, answer, _, callee = await call(relay, harness, mux=True)
    webrtc = offer.enable_webrtc()
    assert offer.profile == "dtls-srtp"
    browser = await harness.endpoint(CALLER)
    ice = webrtc.ice
    browser.send(ice_check(ice.local_ufrag, "wrong-password-wrong-pw", True), to_rtp(offer))
    browser.send(ice_check(ice.local_ufrag, ice.local_pwd, False), to_rtp(offer))
    browser.send(ice_check(ice.local_ufrag, ice.local_pwd, True), to_rtp(offer))
    await until(lambda: ice.counters["nominations"] == 1, "the nomination")
    replies = [await browser.recv() for _ in range(3)]
    assert sorted(data[1] >> 4 for data, _ in replies) == [0, 0, 1]  # 2 successes, 1 error
    assert offer.rtp_latch.latched == browser.address
    offer.set_remote(CALLER, 9)  # the browser's answer: the default candidate
    assert offer.rtp_latch.latched == browser.address
    assert offer.counters.punted == 3
    browser.send(rtp(1), to_rtp(offer))
    callee.rtp.send(rtp(2, ssrc=0x2222), to_rtp(answer))
    await until(lambda: offer.counters.drops[DropReason.DTLS_PENDING] == 1, "browser drop")
    await until(lambda: answer.counters.drops[DropReason.DTLS_PENDING] == 1, "callee drop")
    assert answer.counters.packets_in == 0 and offer.counters.packets_out == 0
    stats = offer.stats()["webrtc"]
    assert stats["ice"]["unauthorized"] == 1 and stats["dtls_state"] == "new"
    # Unknown sources may not start DTLS with the leg.
    stranger = await harness.endpoint(CALLEE)
    stranger.send(b"\x16\xfe\xfd" + bytes(30), to_rtp(offer))
    await until(lambda: webrtc.counters["dtls_unknown_source"] == 1, "the stranger's DTLS")
