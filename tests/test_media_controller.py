"""edge/media: the proxy's media controller over real UDP on loopback, and the [media]
configuration it reads.

Cast: the relay on 127.0.0.1 (ports from a small random range inside 20000-29999, so
that nothing collides with other tests), the caller's phone on 127.0.0.2, the callee's
on 127.0.0.3, each an RTP and an RTCP socket.  SRTP on a phone's side is pylibsrtp
(libsrtp), the reference: it encrypts with the phone's own key and decrypts with the
key from the relay's a=crypto line.  Waits are bounded; nothing asserts on time.

Every controller test runs on both media paths (``make`` is parametrized): the C
data plane (``[media] fast_path = true``, the default) and Python's route().
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import socket
import struct
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from edge import config
from edge.media import MediaController
from media.fastpath import FastPath
from media.relay import MediaRelay
from sip.errors import SipError
from sip.sdp import SessionDescription, parse_sdp
from tests.peers_media import Logs, SettableClock

pytestmark = pytest.mark.timeout(30)

RELAY = "127.0.0.1"
CALLER = "127.0.0.2"
CALLEE = "127.0.0.3"
WAIT = 2.0
ROOT = Path(__file__).resolve().parent.parent
CALLER_KEY = bytes(range(30))  # the caller's own SRTP key+salt
CALLEE_KEY = bytes(range(100, 130))


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


def rtp(seq: int, ssrc: int = 0x11111111, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes([seq & 0xFF]) * 160
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + body


def rtcp_rr(ssrc: int = 0x11111111) -> bytes:
    """An empty RTCP receiver report (RFC 3550 §6.4.2)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ---------------------------------------------------------------- phones


class Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), WAIT)


class Phone:
    """An endpoint with an RTP and an RTCP socket, and what it learnt from the relay."""

    def __init__(self, host: str, rtp_sock: Socket, rtcp_sock: Socket) -> None:
        self.host = host
        self.rtp = rtp_sock
        self.rtcp = rtcp_sock
        self.relay: tuple[str, int] | None = None  # where the relay wants our RTP
        self.relay_rtcp: tuple[str, int] | None = None

    def sdp(
        self,
        proto: str = "RTP/AVP",
        extra: str = "",
        version: int = 1,
        direction: str = "sendrecv",
        media: str = "",
    ) -> bytes:
        return crlf(
            f"""
v=0
o=- 4711 {version} IN IP4 {self.host}
s=-
c=IN IP4 {self.host}
t=0 0
m=audio {self.rtp.port} {proto} 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=rtcp:{self.rtcp.port}
a={direction}
{extra}{media}"""
        )

    def learn(self, body: bytes) -> SessionDescription:
        """Take the relay's address and ports from the SDP it sent us."""
        sd = parse_sdp(body)
        m = sd.media[0]
        conn = sd.connection_for(m)
        assert conn is not None
        assert conn.host == RELAY
        self.relay = (conn.host, m.port)
        rtcp = m.rtcp()
        assert rtcp is not None
        self.relay_rtcp = (conn.host, rtcp.port)
        return sd


class Harness:
    def __init__(self) -> None:
        self.sockets: list[Socket] = []

    async def socket(self, host: str) -> Socket:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(Socket, local_addr=(host, 0))
        self.sockets.append(proto)
        return proto

    async def phone(self, host: str) -> Phone:
        return Phone(host, await self.socket(host), await self.socket(host))

    def close(self) -> None:
        for s in self.sockets:
            if s.transport is not None:
                s.transport.close()


class FakeClock(SettableClock):
    def __init__(self) -> None:
        super().__init__(1000.0)


def small_range(pairs: int = 16) -> tuple[int, int]:
    start = random.randrange(20000, 29999 - 2 * pairs, 2)
    return start, start + 2 * pairs - 1


def media_config(**kw: Any) -> config.Config:
    kw.setdefault("address", RELAY)
    kw.setdefault("port_range", small_range())
    kw.setdefault("quarantine", 0.0)
    return config.Config(media=config.MediaConfig(**kw))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    h.close()


@pytest.fixture
def logs() -> Logs:
    return Logs()


@pytest.fixture(params=["fast", "python"])
def path(request: pytest.FixtureRequest) -> str:
    """Which path forwards the media: the C data plane or Python's route()."""
    return str(request.param)


@pytest.fixture
async def make(path: str) -> AsyncIterator[Callable[..., MediaController]]:
    """A controller on its own relay (made from the config unless given), on ``path``."""
    made: list[MediaController] = []

    def build(
        cfg: config.Config | None = None, relay: MediaRelay | None = None, log: Any = None
    ) -> MediaController:
        cfg = cfg or media_config()
        cfg = dataclasses.replace(
            cfg, media=dataclasses.replace(cfg.media, fast_path=path == "fast")
        )
        controller = MediaController(cfg, relay=relay, log=log)
        if controller.relay is not None:
            assert (controller.relay.fast_path is not None) == (path == "fast")
        made.append(controller)
        return controller

    yield build
    for controller in made:
        await controller.close()
        if controller.relay is not None:
            await controller.relay.close()


@pytest.fixture
async def make_relay(path: str) -> AsyncIterator[Callable[..., MediaRelay]]:
    """A relay of one's own (a fake clock, say) on ``path``."""
    planes: list[FastPath] = []
    relays: list[MediaRelay] = []

    def build(port_range: tuple[int, int], clock: FakeClock) -> MediaRelay:
        fast = None
        if path == "fast":
            fast = FastPath(2)
            fast.set_clock(clock.now)
            clock.planes.append(fast)
            planes.append(fast)
        relays.append(MediaRelay(RELAY, port_range, 0.0, clock=clock, fast_path=fast))
        return relays[-1]

    yield build
    for relay in relays:
        await relay.close()
    for plane in planes:
        plane.close()


async def plain_call(
    media: MediaController, harness: Harness, call: str = "call-1", to_policy: str = "as-offered"
) -> tuple[Phone, Phone]:
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    offer = await media.offer(
        call,
        "caller",
        caller.sdp(),
        from_policy="as-offered",
        to_policy=to_policy,
        source_ip=CALLER,
    )
    callee.learn(offer)
    caller.learn(await media.answer(call, "callee", callee.sdp()))
    return caller, callee


async def exchange(src: Phone, dst: Phone, packet: bytes) -> bytes:
    """src sends RTP to its relay port; what dst receives (from the relay)."""
    assert src.relay is not None and dst.relay is not None
    src.rtp.send(packet, src.relay)
    data, source = await dst.rtp.recv()
    assert source == dst.relay  # the far end only ever sees the relay
    return data


# ---------------------------------------------------------------- plain RTP


async def test_plain_offer_answer_and_rtp_both_ways(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    media = make(log=logs)
    await media.start()
    assert logs.events("media_ready")[0]["address"] == RELAY
    caller, callee = await plain_call(media, harness)
    assert caller.relay != callee.relay
    for seq in range(1, 4):
        assert await exchange(caller, callee, rtp(seq)) == rtp(seq)
        assert await exchange(callee, caller, rtp(seq, 0x2222)) == rtp(seq, 0x2222)
    # RTCP too, on the odd ports (a=rtcp).
    assert caller.relay_rtcp is not None and callee.relay_rtcp is not None
    caller.rtcp.send(rtcp_rr(), caller.relay_rtcp)
    data, source = await callee.rtcp.recv()
    assert (data, source) == (rtcp_rr(), callee.relay_rtcp)
    (created,) = logs.events("media_session_created")
    assert created["call"] == "call-1"
    info = media.session_info("call-1")
    assert info is not None and info["answered"]
    (stream,) = info["streams"]
    assert stream["legs"]["caller"]["packets_in"] == 4  # RTP and RTCP
    assert stream["legs"]["callee"]["packets_in"] == 3
    assert stream["legs"]["caller"]["proto"] == "RTP/AVP"
    assert stream["legs"]["caller"]["remote"] == f"{CALLER}:{caller.rtp.port}"
    stats = media.stats()
    assert stats["calls"] == 1 and stats["sessions"] == 1 and stats["packets_in"] >= 7
    assert all(isinstance(v, int) for v in stats.values())


async def test_rtp_from_a_stranger_is_not_forwarded(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await plain_call(media, harness)
    stranger = await harness.phone("127.0.0.4")
    assert caller.relay is not None
    stranger.rtp.send(rtp(9, 0x9999), caller.relay)
    assert await exchange(caller, callee, rtp(1)) == rtp(1)  # only the caller's
    assert callee.rtp.queue.empty()
    info = media.session_info("call-1")
    assert info is not None
    assert info["streams"][0]["legs"]["caller"]["drops"]["unknown_source"] == 1


# ---------------------------------------------------------------- SDES caller, plain callee


class LibSrtp:
    def __init__(
        self, key: bytes, outbound: bool, profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    ):
        kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
        self.session = Session(policy=Policy(key=key, ssrc_type=kind, srtp_profile=profile))


async def test_sdes_caller_and_plain_callee_with_libsrtp(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(CALLER_KEY)}\n"
    offer = await media.offer(
        "srtp-call",
        "caller",
        caller.sdp("RTP/SAVP", crypto),
        from_policy="as-offered",
        to_policy="rtp",
        source_ip=CALLER,
    )
    to_callee = callee.learn(offer)
    assert to_callee.media[0].proto == "RTP/AVP" and not to_callee.media[0].has("crypto")
    answer = caller.learn(await media.answer("srtp-call", "callee", callee.sdp()))
    assert answer.media[0].proto == "RTP/SAVP"
    (line,) = answer.media[0].crypto()
    assert (line.tag, line.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    relay_key = b"".join(line.key_and_salt())
    assert relay_key != CALLER_KEY

    tx = LibSrtp(CALLER_KEY, outbound=True).session  # the caller's own key
    rx = LibSrtp(relay_key, outbound=False).session  # the relay's key, from its a=crypto
    for seq in range(1, 6):
        # Caller -> relay: SRTP; the callee gets the plain packet.
        assert await exchange(caller, callee, tx.protect(rtp(seq))) == rtp(seq)
        # Callee -> relay: plain; the caller gets SRTP that libsrtp decrypts.
        srtp = await exchange(callee, caller, rtp(seq, 0x2222))
        assert srtp != rtp(seq, 0x2222)
        assert rx.unprotect(srtp) == rtp(seq, 0x2222)
    # SRTCP both ways as well.
    assert caller.relay_rtcp is not None and callee.relay_rtcp is not None
    caller.rtcp.send(tx.protect_rtcp(rtcp_rr()), caller.relay_rtcp)
    assert (await callee.rtcp.recv())[0] == rtcp_rr()
    callee.rtcp.send(rtcp_rr(0x2222), callee.relay_rtcp)
    assert rx.unprotect_rtcp((await caller.rtcp.recv())[0]) == rtcp_rr(0x2222)

    # An identical re-offer (a session refresh) keeps keys and SRTP contexts going.
    assert media.relay is not None
    session = media.relay.session("srtp-call")
    assert session is not None
    leg = session.leg("offer")
    assert leg is not None
    inbound, outbound = leg.inbound, leg.outbound
    again = await media.offer(
        "srtp-call",
        "caller",
        caller.sdp("RTP/SAVP", crypto),
        from_policy="as-offered",
        to_policy="rtp",
        source_ip=CALLER,
    )
    assert again == offer  # same SDP, same o= version
    again_answer = await media.answer("srtp-call", "callee", callee.sdp())
    assert parse_sdp(again_answer).media[0].crypto() == [line]
    assert (leg.inbound, leg.outbound) == (inbound, outbound)
    assert await exchange(caller, callee, tx.protect(rtp(6))) == rtp(6)
    assert rx.unprotect(await exchange(callee, caller, rtp(6, 0x2222))) == rtp(6, 0x2222)
    info = media.session_info("srtp-call")
    assert info is not None
    legs = info["streams"][0]["legs"]
    assert legs["caller"]["srtp"] and legs["caller"]["suite"] == "AES_CM_128_HMAC_SHA1_80"
    assert not legs["callee"]["srtp"]
    for secret in (b64(CALLER_KEY), b64(relay_key)):
        assert secret not in repr(info) and secret not in repr(media.stats())


async def test_plain_caller_to_srtp_callee_with_libsrtp_on_the_callee_side(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    offer = await media.offer(
        "c", "caller", caller.sdp(), from_policy="as-offered", to_policy="srtp", source_ip=CALLER
    )
    to_callee = callee.learn(offer)
    lines = to_callee.media[0].crypto()
    assert to_callee.media[0].proto == "RTP/SAVP"
    assert [c.suite for c in lines] == ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
    # The callee picks _32 (tag 2) and answers with its own key.
    crypto = f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{b64(CALLEE_KEY)}\n"
    answer = caller.learn(await media.answer("c", "callee", callee.sdp("RTP/SAVP", crypto)))
    assert answer.media[0].proto == "RTP/AVP" and not answer.media[0].has("crypto")
    profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_32
    tx = LibSrtp(CALLEE_KEY, True, profile).session
    rx = LibSrtp(b"".join(lines[1].key_and_salt()), False, profile).session
    assert await exchange(callee, caller, tx.protect(rtp(1, 0x2222))) == rtp(1, 0x2222)
    assert rx.unprotect(await exchange(caller, callee, rtp(1))) == rtp(1)


async def test_sdes_on_both_sides_uses_separate_keys(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(CALLER_KEY)}\n"
    offer = parse_sdp(
        await media.offer(
            "c",
            "caller",
            caller.sdp("RTP/SAVP", crypto),
            from_policy="as-offered",
            to_policy="as-offered",
            source_ip=CALLER,
        )
    )
    callee.learn(bytes(offer))
    to_callee = b"".join(offer.media[0].crypto()[0].key_and_salt())
    answer_crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(CALLEE_KEY)}\n"
    answer = caller.learn(await media.answer("c", "callee", callee.sdp("RTP/SAVP", answer_crypto)))
    to_caller = b"".join(answer.media[0].crypto()[0].key_and_salt())
    assert len({to_callee, to_caller, CALLER_KEY, CALLEE_KEY}) == 4
    caller_tx, callee_rx = LibSrtp(CALLER_KEY, True).session, LibSrtp(to_callee, False).session
    srtp = await exchange(caller, callee, caller_tx.protect(rtp(1)))
    assert callee_rx.unprotect(srtp) == rtp(1)  # decrypted and encrypted again


# ---------------------------------------------------------------- refusals


async def test_port_exhaustion_is_503_and_leaves_nothing_behind(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    media = make(media_config(port_range=small_range(1)), log=logs)  # one pair: one leg
    caller = await harness.phone(CALLER)
    with pytest.raises(SipError) as info:
        await media.offer(
            "c", "caller", caller.sdp(), from_policy="rtp", to_policy="rtp", source_ip=CALLER
        )
    assert info.value.status_hint == 503
    (line,) = logs.events("media_ports_exhausted")
    assert line["call"] == "c"
    assert media.relay is not None and media.relay.sessions == {}
    assert media.relay.pool.stats().in_use == 0
    assert media.session_info("c") is None
    assert media.stats()["ports_exhausted"] == 1


async def test_passthrough_leaves_the_body_untouched_and_allocates_nothing(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    body = caller.sdp("RTP/SAVP", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:bad\n")
    for from_policy, to_policy in (("passthrough", "rtp"), ("srtp", "passthrough")):
        key = f"p-{from_policy}"
        out = await media.offer(
            key, "caller", body, from_policy=from_policy, to_policy=to_policy, source_ip=CALLER
        )
        assert out is body
        assert await media.answer(key, "callee", b"not even SDP") == b"not even SDP"
        # A re-offer stays passthrough, even if a policy changed meanwhile.
        again = await media.offer(
            key, "callee", b"x", from_policy="rtp", to_policy="rtp", source_ip=CALLEE
        )
        assert again == b"x"
        assert media.session_info(key) == {"call": key, "passthrough": True, "streams": []}
    assert media.relay is not None and media.relay.sessions == {}
    await media.end("p-passthrough", "bye")
    assert media.session_info("p-passthrough") is None
    del callee


async def test_media_disabled_is_passthrough_without_a_relay(
    make: Callable[..., MediaController], logs: Logs
) -> None:
    media = make(media_config(enabled=False), log=logs)
    await media.start()
    assert media.relay is None and logs.events("media_disabled")
    out = await media.offer(
        "c", "caller", b"v=0", from_policy="rtp", to_policy="rtp", source_ip=CALLER
    )
    assert out == b"v=0"
    assert await media.answer("c", "callee", b"v=0") == b"v=0"
    assert media.timed_out(1e9) == [] and media.stats()["calls"] == 0


async def test_bad_sdp_is_400_unusable_media_488_answer_without_offer_500(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    media = make(log=logs)
    caller = await harness.phone(CALLER)
    with pytest.raises(SipError) as info:
        await media.offer(
            "c", "caller", b"v=0\r\nbogus\r\n", from_policy="rtp", to_policy="rtp", source_ip=CALLER
        )
    assert info.value.status_hint == 400
    bad_crypto = "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:" + b64(bytes(46)) + "\n"
    with pytest.raises(SipError) as info:
        await media.offer(
            "c",
            "caller",
            caller.sdp("RTP/SAVP", bad_crypto),
            from_policy="as-offered",
            to_policy="rtp",
            source_ip=CALLER,
        )
    assert info.value.status_hint == 488
    assert logs.events("media_offer_refused")[0]["status"] == 488
    with pytest.raises(SipError) as info:
        await media.answer("unknown", "callee", caller.sdp())
    assert info.value.status_hint == 500
    assert media.relay is not None and media.relay.sessions == {}
    assert media.session_info("c") is None
    with pytest.raises(ValueError):
        await media.offer("c", "upstream", b"", from_policy="rtp", to_policy="rtp", source_ip="")
    with pytest.raises(ValueError):
        await media.offer("c", "caller", b"", from_policy="zrtp", to_policy="rtp", source_ip="")


# ---------------------------------------------------------------- end, hold, timeout


async def test_end_frees_the_ports_and_is_idempotent(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    media = make(log=logs)
    caller, callee = await plain_call(media, harness)
    relay = media.relay
    assert relay is not None and relay.pool.stats().in_use == 4
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    await media.end("call-1", "bye")
    assert relay.sessions == {} and relay.pool.stats().in_use == 0
    assert media.session_info("call-1") is None
    (ended,) = logs.events("media_ended")
    assert ended["reason"] == "bye" and ended["packets_in"] == 1
    await media.end("call-1", "bye")  # again: nothing
    assert len(logs.events("media_ended")) == 1
    # The relay ports are closed: nothing reaches the callee any more.
    assert caller.relay is not None
    caller.rtp.send(rtp(2), caller.relay)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(callee.rtp.recv(), 0.2)
    # The freed ports (quarantine 0 here) serve the next call.
    await plain_call(media, harness, "call-2")
    assert relay.pool.stats().in_use == 4


async def test_re_offer_with_hold_and_resume(
    make: Callable[..., MediaController],
    make_relay: Callable[..., MediaRelay],
    harness: Harness,
) -> None:
    clock = FakeClock()
    cfg = media_config(timeout=30.0)
    relay = make_relay(cfg.media.port_range, clock)
    media = make(cfg, relay=relay)
    caller, callee = await plain_call(media, harness)
    ports = (caller.relay, callee.relay)
    session = relay.session("call-1")
    assert session is not None and not session.on_hold
    # Hold: a=sendonly from the caller; the callee answers recvonly.
    hold = await media.offer(
        "call-1",
        "caller",
        caller.sdp(version=2, direction="sendonly"),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLER,
    )
    sd = callee.learn(hold)
    assert sd.media[0].has("sendonly") and sd.origin.sess_version == 2
    caller.learn(
        await media.answer("call-1", "callee", callee.sdp(version=2, direction="recvonly"))
    )
    assert (caller.relay, callee.relay) == ports  # the same legs
    assert session.on_hold
    clock.now += 3600
    assert media.timed_out(clock.now) == []  # hold is exempt
    info = media.session_info("call-1")
    assert info is not None and info["streams"][0]["on_hold"]
    # Resume: sendrecv both ways, new o= versions; the timeout counts from there.
    resume = await media.offer(
        "call-1",
        "caller",
        caller.sdp(version=3),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLER,
    )
    assert callee.learn(resume).origin.sess_version == 3
    caller.learn(await media.answer("call-1", "callee", callee.sdp(version=3)))
    assert not session.on_hold
    assert media.timed_out(clock.now + 29) == []
    assert media.timed_out(clock.now + 30) == ["call-1"]
    # Media flows again, and keeps the call alive.
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    clock.now += 29
    assert await exchange(callee, caller, rtp(1, 0x2222)) == rtp(1, 0x2222)
    assert media.timed_out(clock.now + 29) == []
    assert media.timed_out(clock.now + 30) == ["call-1"]


async def test_re_offer_from_the_callee(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await plain_call(media, harness)
    ports = (caller.relay, callee.relay)
    # The callee re-INVITEs (e.g. a PBX moving its media to another port).
    moved = await harness.phone(CALLEE)
    out = await media.offer(
        "call-1",
        "callee",
        moved.sdp(version=2),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLEE,
    )
    caller.learn(out)
    moved.learn(await media.answer("call-1", "caller", caller.sdp(version=2)))
    assert (caller.relay, moved.relay) == ports
    assert await exchange(caller, moved, rtp(5)) == rtp(5)
    assert await exchange(moved, caller, rtp(5, 0x2222)) == rtp(5, 0x2222)


async def test_media_timeout_needs_an_answer_and_can_be_off(
    make: Callable[..., MediaController],
    make_relay: Callable[..., MediaRelay],
    harness: Harness,
) -> None:
    clock = FakeClock()
    for timeout, expected in ((10.0, ["c"]), (0.0, [])):
        cfg = media_config(timeout=timeout)
        media = make(cfg, relay=make_relay(cfg.media.port_range, clock))
        caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
        await media.offer(
            "c", "caller", caller.sdp(), from_policy="rtp", to_policy="rtp", source_ip=CALLER
        )
        assert media.timed_out(clock.now + 100) == []  # ringing: no answer yet
        await media.answer("c", "callee", callee.sdp())
        assert media.timed_out(clock.now + 100) == expected


async def test_two_streams_get_two_sessions(
    make: Callable[..., MediaController], harness: Harness
) -> None:
    media = make()
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    video_caller, video_callee = await harness.phone(CALLER), await harness.phone(CALLEE)

    def video(phone: Phone) -> str:
        return (
            f"m=video {phone.rtp.port} RTP/AVP 96\na=rtpmap:96 H264/90000\n"
            f"a=rtcp:{phone.rtcp.port}\n"
        )

    offer = parse_sdp(
        await media.offer(
            "av",
            "caller",
            caller.sdp(media=video(video_caller)),
            from_policy="as-offered",
            to_policy="as-offered",
            source_ip=CALLER,
        )
    )
    assert [m.port != 0 for m in offer.media] == [True, True]
    callee.learn(bytes(offer))
    video_callee.relay = (RELAY, offer.media[1].port)
    answer = parse_sdp(await media.answer("av", "callee", callee.sdp(media=video(video_callee))))
    caller.learn(bytes(answer))
    video_caller.relay = (RELAY, answer.media[1].port)
    assert media.relay is not None
    assert set(media.relay.sessions) == {"av", "av#1"}
    assert await exchange(video_caller, video_callee, rtp(1, 0x5555)) == rtp(1, 0x5555)
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    await media.end("av", "bye")
    assert media.relay.sessions == {}


async def test_controller_makes_its_relay_from_the_config(
    make: Callable[..., MediaController],
) -> None:
    low, high = small_range(4)
    cfg = config.parse(
        tomllib.loads(
            f'[upstream]\necho = true\n[listen]\nudp = ["127.0.0.1:15060"]\n'
            f'[media]\nport_range = "{low}-{high}"\nquarantine = 0\n'
        ),
        check_files=False,
    )
    media = make(cfg)
    assert media.relay is not None and media.relay.host == "127.0.0.1"
    assert media.relay.pool.port_range == (low, high)
    await media.start()
    bad = make(media_config(address="192.0.2.1"))  # TEST-NET-1: not on this host
    with pytest.raises(config.ConfigError) as info:
        await bad.start()
    assert info.value.key == "media.address"


# ---------------------------------------------------------------- configuration


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads("[upstream]\necho = true\n" + text), check_files=False)


def test_media_config_defaults() -> None:
    cfg = parse("")
    assert cfg.media == config.MediaConfig(
        enabled=True,
        address="",
        port_range=(10000, 60000),
        quarantine=30.0,
        timeout=60.0,
        caller="as-offered",
    )
    assert cfg.media.resolved_address(cfg.listen) == "127.0.0.1"
    assert cfg.media_policy_of_set("echo") == "rtp"
    assert config.to_dict(cfg)["media"]["port_range"] == "10000-60000"


def test_media_config_full_and_policies() -> None:
    cfg = parse(
        '[media]\nenabled = false\naddress = "::1"\nport_range = "20000-20099"\n'
        'quarantine = 0\ntimeout = 0\ncaller = "srtp"\n'
        '[echo]\nmedia = "as-offered"\n'
        '[[upstream.sets]]\nname = "pbx"\nmedia = "srtp"\n'
        '[[upstream.sets.targets]]\nuri = "sip:10.0.0.1"\n'
        '[[upstream.sets]]\nname = "other"\n[[upstream.sets.targets]]\nuri = "sip:10.0.0.2"\n'
        '[[trunks]]\nname = "carrier"\nallow = ["192.0.2.0/24"]\n'
        '[[trunks]]\nname = "trusted"\nallow = ["10.0.0.0/8"]\nmedia = "passthrough"\n'
    )
    assert cfg.media == config.MediaConfig(False, "::1", (20000, 20099), 0.0, 0.0, "srtp")
    assert cfg.media_policy_of_set("echo") == "as-offered"
    assert cfg.media_policy_of_set("pbx") == "srtp"
    assert cfg.media_policy_of_set("other") == "as-offered"
    assert cfg.media_policy_of_trunk("carrier") == "rtp"
    assert cfg.media_policy_of_trunk("trusted") == "passthrough"
    with pytest.raises(KeyError):
        cfg.media_policy_of_set("nope")
    with pytest.raises(KeyError):
        cfg.media_policy_of_trunk("nope")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            '[[upstream.sets]]\nname = "s"\nmedia = "zrtp"\n'
            '[[upstream.sets.targets]]\nuri = "sip:10.0.0.1"\n',
            "upstream.sets[0].media",
            "is not one of",
        ),
        ('[echo]\nmedia = "srtp-dtls"\n', "echo.media", "is not one of"),
        ('[media]\naddress = "relay.example.com"\n', "media.address", "not an IP"),
        ('[media]\naddress = "0.0.0.0"\n', "media.address", "wildcard"),
        ('[media]\nport_range = "10001-20000"\n', "media.port_range", "even"),
        ('[media]\nport_range = "20000-10000"\n', "media.port_range", "start < end"),
        ('[media]\nport_range = "80-2000"\n', "media.port_range", "1024-65535"),
        ('[media]\nport_range = "10000:20000"\n', "media.port_range", "start-end"),
        ("[media]\nport_range = 10000\n", "media.port_range", "string"),
        ("[media]\ntimeout = -1\n", "media.timeout", ">= 0"),
        ("[media]\nenabled = 1\n", "media.enabled", "boolean"),
        ("[media]\nports = 1\n", "media.ports", "unknown key"),
    ],
)
def test_media_config_errors(text: str, key: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        parse(text)
    assert info.value.key == key
    assert problem in info.value.problem


def test_dtls_srtp_is_a_media_policy() -> None:
    cfg = parse(
        '[media]\ncaller = "dtls-srtp"\n'
        '[[trunks]]\nname = "t"\nallow = ["10.0.0.0/8"]\nmedia = "dtls-srtp"\n'
    )
    assert cfg.media.caller == "dtls-srtp"
    assert cfg.media_policy_of_trunk("t") == "dtls-srtp"


def test_media_address_falls_back_to_advertise_then_refuses() -> None:
    wildcard = '[listen]\nudp = ["0.0.0.0:5060"]\n'
    cfg = parse(wildcard + 'advertise = "203.0.113.7"\n')
    assert cfg.media.resolved_address(cfg.listen) == "203.0.113.7"
    for text in (wildcard + 'advertise = "sbc.example.net"\n', "[listen]\nudp = []\n"):
        cfg = parse(text)
        with pytest.raises(config.ConfigError) as info:
            cfg.media.resolved_address(cfg.listen)
        assert info.value.key == "media.address"
    cfg = parse(wildcard + '[media]\naddress = "10.1.2.3"\n')
    assert cfg.media.resolved_address(cfg.listen) == "10.1.2.3"


def test_dev_config_relays_media_on_loopback() -> None:
    cfg = config.load(ROOT / "configs" / "dev.toml", env={}, check_files=False)
    assert cfg.media.enabled and cfg.media.address == "127.0.0.1"
    assert cfg.media.port_range == (30000, 39999)  # clear of the tests' 20000-29999
    assert cfg.media.caller == "as-offered"
    assert cfg.media_policy_of_set("echo") == "rtp"
    assert cfg.media_policy_of_trunk("loopback") == "as-offered"
    example = config.load(ROOT / "configs" / "sipedge.example.toml", env={}, check_files=False)
    assert dataclasses.replace(example.media) == config.MediaConfig()


# ---------------------------------------------------------------- rtcp-mux on re-offer


async def _re_offer(
    media: MediaController, caller: Phone, callee: Phone, version: int, mux: bool
) -> SessionDescription:
    """The caller re-offers (with or without a=rtcp-mux); the callee answers plainly.
    Returns the relay's answer to the caller."""
    extra = "a=rtcp-mux\n" if mux else ""
    offer = await media.offer(
        "call-1",
        "caller",
        caller.sdp(version=version, extra=extra),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLER,
    )
    callee.learn(offer)
    answer = await media.answer("call-1", "callee", callee.sdp(version=version))
    return caller.learn(answer)


async def _rtcp_both_ways(caller: Phone, callee: Phone, caller_mux: bool) -> None:
    """RTCP from the caller (on its RTP socket when it multiplexes) reaches the callee's
    RTCP socket, and back to the caller's RTP or RTCP socket."""
    assert caller.relay_rtcp is not None and callee.relay_rtcp is not None
    out = caller.rtp if caller_mux else caller.rtcp
    out.send(rtcp_rr(0x1111), caller.relay_rtcp)
    data, source = await callee.rtcp.recv()
    assert (data, source) == (rtcp_rr(0x1111), callee.relay_rtcp)
    callee.rtcp.send(rtcp_rr(0x2222), callee.relay_rtcp)
    data, source = await out.recv()
    assert (data, source) == (rtcp_rr(0x2222), caller.relay_rtcp)


async def test_re_offer_turns_rtcp_mux_on_for_the_same_leg(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    """RFC 5761 §5.1.3 on a re-INVITE: the leg switches in place (same ports), the
    answer grants rtcp-mux, RTCP comes and goes on the RTP port; RTP goes on."""
    media = make(log=logs)
    caller, callee = await plain_call(media, harness)
    before = caller.relay
    assert caller.relay_rtcp is not None and before is not None
    assert caller.relay_rtcp[1] == before[1] + 1
    sd = await _re_offer(media, caller, callee, 2, mux=True)
    assert sd.media[0].rtcp_mux and caller.relay == before
    assert caller.relay_rtcp == before  # a=rtcp names the RTP port
    await _rtcp_both_ways(caller, callee, caller_mux=True)
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    assert await exchange(callee, caller, rtp(2, 0x2222)) == rtp(2, 0x2222)
    (event,) = logs.events("media_rtcp_mux_switched")
    assert event["rtcp_mux"] is True and event["side"] == "caller"


async def test_re_offer_turns_rtcp_mux_off_binding_the_reserved_port(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    """A caller that offered rtcp-mux re-offers without: its leg binds the odd port the
    pool kept reserved, the answer names it in a=rtcp without a=rtcp-mux."""
    media = make(log=logs)
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    offer = await media.offer(
        "call-1",
        "caller",
        caller.sdp(extra="a=rtcp-mux\n"),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLER,
    )
    callee.learn(offer)
    sd = caller.learn(await media.answer("call-1", "callee", callee.sdp()))
    assert sd.media[0].rtcp_mux
    await _rtcp_both_ways(caller, callee, caller_mux=True)
    before = caller.relay
    assert before is not None
    sd = await _re_offer(media, caller, callee, 2, mux=False)
    assert not sd.media[0].rtcp_mux and caller.relay == before
    assert caller.relay_rtcp == (RELAY, before[1] + 1)
    await _rtcp_both_ways(caller, callee, caller_mux=False)
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    # And on again: back to the RTP port.
    sd = await _re_offer(media, caller, callee, 3, mux=True)
    assert sd.media[0].rtcp_mux and caller.relay_rtcp == before
    await _rtcp_both_ways(caller, callee, caller_mux=True)
    assert [e["rtcp_mux"] for e in logs.events("media_rtcp_mux_switched")] == [False, True]


async def test_re_offer_without_rtcp_mux_when_the_odd_port_is_taken(
    make: Callable[..., MediaController], harness: Harness, logs: Logs
) -> None:
    """Something outside the pool holds the reserved odd port: the leg keeps
    multiplexing; the answer has no a=rtcp-mux and names the RTP port in a=rtcp (RFC
    3605); RTCP still flows both ways, to the port the caller's SDP gave."""
    media = make(log=logs)
    caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
    offer = await media.offer(
        "call-1",
        "caller",
        caller.sdp(extra="a=rtcp-mux\n"),
        from_policy="as-offered",
        to_policy="as-offered",
        source_ip=CALLER,
    )
    callee.learn(offer)
    caller.learn(await media.answer("call-1", "callee", callee.sdp()))
    before = caller.relay
    assert before is not None
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        squatter.bind((RELAY, before[1] + 1))
        sd = await _re_offer(media, caller, callee, 2, mux=False)
    finally:
        squatter.close()
    assert not sd.media[0].rtcp_mux and caller.relay == before
    assert caller.relay_rtcp == before
    assert caller.relay_rtcp is not None
    # The caller no longer multiplexes: it sends RTCP from its RTCP socket to the port
    # the relay named (the RTP port) and takes RTCP on its own RTCP port.
    caller.rtcp.send(rtcp_rr(0x1111), caller.relay_rtcp)
    assert (await callee.rtcp.recv())[0] == rtcp_rr(0x1111)
    assert callee.relay_rtcp is not None
    callee.rtcp.send(rtcp_rr(0x2222), callee.relay_rtcp)
    data, source = await caller.rtcp.recv()
    assert (data, source) == (rtcp_rr(0x2222), before)
    assert await exchange(caller, callee, rtp(1)) == rtp(1)
    (event,) = logs.events("media_rtcp_mux_kept")
    assert event["side"] == "caller"


async def test_the_plane_polls_as_configured() -> None:
    """[media] fastpath_poll_us and fastpath_poll_busy_pct reach the plane the
    controller makes."""
    cfg = media_config()
    media = dataclasses.replace(
        cfg.media, fast_path=True, fastpath_poll_us=150, fastpath_poll_busy_pct=25
    )
    controller = MediaController(dataclasses.replace(cfg, media=media), log=None)
    try:
        assert controller.fast_path is not None
        assert controller.fast_path.poll_us == 150
        assert controller.fast_path.poll_busy_pct == 25
    finally:
        await controller.close()
        if controller.relay is not None:
            await controller.relay.close()
