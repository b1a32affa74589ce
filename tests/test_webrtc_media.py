"""WebRTC media through the relay: aiortc's RTCPeerConnection as the browser, calling
through the MediaController, the other side a plain RTP socket.

The browser's leg speaks ICE-lite and DTLS-SRTP with the relay (rtcp-mux, BUNDLE of one
audio section); the plain side speaks RTP/AVP.  Asserted: RTP from the browser reaches
the plain socket decrypted, and RTP from the plain socket reaches the browser's track
decoded (it went through our SRTP protect and the browser's libsrtp), in both call
directions.  Negative cases: a browser whose SDP names another certificate, and one that
never does DTLS.

aioice never gathers 127.0.0.1 (shared/peers README §3): it is patched to gather only
that, and ``RTCConfiguration(iceServers=[])`` keeps aiortc off Google's STUN server.
Waits are bounded; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge import config
from edge.media import MediaController
from sip.sdp import parse_sdp
from tests.peers_media import Logs

try:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
except ImportError as exc:  # a missing peer fails, naming what to install
    raise ImportError(
        f"aiortc is needed for the WebRTC media tests: .venv/bin/pip install aiortc==1.16.0 ({exc})"
    ) from exc

pytestmark = pytest.mark.timeout(60)

RELAY = "127.0.0.1"
PHONE = "127.0.0.3"
WAIT = 10.0


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


def pcmu(seq: int, ssrc: int = 0x22222222) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([0xFF]) * 160


class Phone(asyncio.DatagramProtocol):
    """A plain RTP endpoint (PCMU, rtcp-mux off)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def sdp(self) -> bytes:
        return crlf(
            f"""
v=0
o=- 1 1 IN IP4 {PHONE}
s=-
c=IN IP4 {PHONE}
t=0 0
m=audio {self.port} RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv
"""
        )

    async def rtp(self) -> bytes:
        """The next RTP packet (RTCP and anything else skipped)."""
        while True:
            data, _ = await asyncio.wait_for(self.queue.get(), WAIT)
            if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:
                return data


class Receiver:
    """Counts what the browser's remote track decodes."""

    def __init__(self) -> None:
        self.frames = 0
        self.got = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    self.frames += 1
                    if self.frames >= 5:
                        self.got.set()

        self.task = asyncio.ensure_future(run())


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=False: [RELAY]
    )


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


@pytest.fixture(params=[True, False], ids=["fast", "python"])
async def media(request: pytest.FixtureRequest) -> AsyncIterator[tuple[MediaController, Logs]]:
    """The controller, its media on the C data plane or on Python's path."""
    start = random.randrange(30000, 39000, 2)
    cfg = config.Config(
        media=config.MediaConfig(
            address=RELAY,
            port_range=(start, start + 63),
            quarantine=0.0,
            fast_path=request.param,
        )
    )
    logs = Logs()
    controller = MediaController(cfg, log=logs)
    await controller.start()
    yield controller, logs
    await controller.close()


@pytest.fixture
async def phone() -> AsyncIterator[Phone]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Phone, local_addr=(PHONE, 0))
    yield protocol
    transport.close()


@pytest.fixture
async def browser() -> AsyncIterator[tuple[RTCPeerConnection, Receiver]]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = Receiver()
    pc.on("track", receiver.attach)
    pc.addTrack(AudioStreamTrack())
    yield pc, receiver
    await pc.close()
    if receiver.task is not None:
        receiver.task.cancel()


async def flows(pc: RTCPeerConnection, receiver: Receiver, phone: Phone, relay_port: int) -> None:
    """RTP both ways: the browser's reaches the phone, the phone's the browser's track."""
    first = await phone.rtp()  # decrypted by the relay: plain RTP, PCMU as answered
    assert first[1] & 0x7F == 0
    assert phone.transport is not None
    for seq in range(1, 200):
        phone.transport.sendto(pcmu(seq), (RELAY, relay_port))
        if receiver.got.is_set():
            break
        await asyncio.sleep(0.02)
    await asyncio.wait_for(receiver.got.wait(), WAIT)
    assert receiver.frames >= 5


def leg_stats(controller: MediaController, key: str) -> dict[str, Any]:
    info = controller.session_info(key)
    assert info is not None
    legs: dict[str, Any] = info["streams"][0]["legs"]
    return legs


async def test_browser_calls_a_plain_rtp_phone(
    media: tuple[MediaController, Logs],
    phone: Phone,
    browser: tuple[RTCPeerConnection, Receiver],
) -> None:
    controller, logs = media
    pc, receiver = browser
    await pc.setLocalDescription(await pc.createOffer())  # gathers (no trickle)
    offer = pc.localDescription.sdp.encode()
    assert b"UDP/TLS/RTP/SAVPF" in offer and b"a=group:BUNDLE" in offer
    to_phone = await controller.offer(
        "w1;tag", "caller", offer, from_policy="as-offered", to_policy="rtp", source_ip=RELAY
    )
    sd = parse_sdp(to_phone)
    (m,) = [m for m in sd.media if m.port]
    assert m.proto == "RTP/AVP" and not m.rtcp_fb() and m.ice_ufrag is None
    assert b"fingerprint" not in to_phone and b"BUNDLE" not in to_phone
    relay_port = m.port
    answer = await controller.answer("w1;tag", "callee", phone.sdp())
    text = answer.decode()
    for line in ("a=ice-lite", "a=setup:active", "a=rtcp-mux", "typ host", "a=group:BUNDLE 0"):
        assert line in text, line
    assert "UDP/TLS/RTP/SAVPF" in text and re.search(r"a=fingerprint:sha-256 [0-9A-F:]{95}", text)
    await pc.setRemoteDescription(RTCSessionDescription(answer.decode(), "answer"))
    await flows(pc, receiver, phone, relay_port)
    legs = leg_stats(controller, "w1;tag")
    webrtc = legs["caller"]["webrtc"]
    assert legs["caller"]["profile"] == "dtls-srtp"
    assert (webrtc["dtls_state"], webrtc["dtls_role"]) == ("connected", "client")
    assert webrtc["ice_nominated"] is not None and webrtc["ice"]["answered"] >= 1
    (connected,) = logs.events("media_dtls_connected")
    assert connected["side"] == "caller" and connected["handshake_ms"] is not None
    assert logs.events("media_ice_nominated")
    assert controller.stats()["dtls_handshakes"] == 1


async def test_plain_phone_calls_a_browser(
    media: tuple[MediaController, Logs],
    phone: Phone,
    browser: tuple[RTCPeerConnection, Receiver],
) -> None:
    controller, logs = media
    pc, receiver = browser
    to_browser = await controller.offer(
        "w2;tag", "caller", phone.sdp(), from_policy="rtp", to_policy="dtls-srtp", source_ip=PHONE
    )
    text = to_browser.decode()
    for line in ("a=ice-lite", "a=setup:actpass", "a=rtcp-mux", "a=mid:0", "a=group:BUNDLE 0"):
        assert line in text, line
    await pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    back = await controller.answer("w2;tag", "callee", pc.localDescription.sdp.encode())
    sd = parse_sdp(back)
    assert sd.media[0].proto == "RTP/AVP" and b"fingerprint" not in back
    relay_port = sd.media[0].port
    await flows(pc, receiver, phone, relay_port)
    legs = leg_stats(controller, "w2;tag")
    assert legs["callee"]["webrtc"]["dtls_role"] == "server"  # aiortc answered active
    assert legs["callee"]["webrtc"]["dtls_state"] == "connected"
    assert logs.events("media_dtls_connected")[0]["side"] == "callee"


async def test_a_browser_with_another_certificate_is_refused_and_audited(
    media: tuple[MediaController, Logs],
    phone: Phone,
    browser: tuple[RTCPeerConnection, Receiver],
) -> None:
    controller, logs = media
    audit = Audit()
    controller.audit = audit  # type: ignore[assignment]
    pc, _ = browser
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    forged = re.sub(
        r"a=fingerprint:sha-256 [0-9A-F:]+", "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), offer
    )
    forged = re.sub(r"a=fingerprint:sha-(384|512) [0-9A-F:]+\r\n", "", forged)
    await controller.offer(
        "w3;tag", "caller", forged.encode(), from_policy="as-offered", to_policy="rtp",
        source_ip=RELAY,
    )  # fmt: skip
    answer = await controller.answer("w3;tag", "callee", phone.sdp())
    await pc.setRemoteDescription(RTCSessionDescription(answer.decode(), "answer"))
    for _ in range(int(WAIT / 0.05)):
        if logs.events("media_dtls_failed"):
            break
        await asyncio.sleep(0.05)
    (failed,) = logs.events("media_dtls_failed")
    assert failed["reason"] == "fingerprint_mismatch"
    assert [e for e, _ in audit.events] == ["media_dtls_failed"]
    assert audit.events[0][1]["details"]["reason"] == "fingerprint_mismatch"
    assert audit.events[0][1]["source_ip"] == RELAY
    # The browser's SRTP (if it thinks it connected) is never forwarded: no keys.
    legs = leg_stats(controller, "w3;tag")
    assert legs["caller"]["webrtc"]["dtls_state"] == "failed"
    assert legs["caller"]["srtp_in"] is False
    assert legs["caller"]["packets_in"] == 0 and legs["callee"]["packets_out"] == 0


async def test_media_before_the_handshake_is_dropped_and_counted(
    media: tuple[MediaController, Logs], phone: Phone
) -> None:
    """A WebRTC side that never does DTLS: RTP towards it and from it is dropped
    (``dtls_pending``), never sent in the clear."""
    controller, _ = media
    to_browser = await controller.offer(
        "w4;tag", "caller", phone.sdp(), from_policy="rtp", to_policy="dtls-srtp", source_ip=PHONE
    )
    browser_port = parse_sdp(to_browser).media[0].port
    fake = crlf(
        f"""
v=0
o=- 2 1 IN IP4 {RELAY}
s=-
c=IN IP4 {RELAY}
t=0 0
a=group:BUNDLE 0
m=audio 40000 UDP/TLS/RTP/SAVPF 0
a=mid:0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 {":".join(["AB"] * 32)}
a=setup:active
a=rtcp-mux
a=rtpmap:0 PCMU/8000
"""
    )
    back = await controller.answer("w4;tag", "callee", fake)
    relay_port = parse_sdp(back).media[0].port
    assert phone.transport is not None
    for seq in range(5):
        phone.transport.sendto(pcmu(seq), (RELAY, relay_port))
    loop = asyncio.get_running_loop()
    _, stranger = await loop.create_datagram_endpoint(Phone, local_addr=(RELAY, 0))
    assert stranger.transport is not None
    for seq in range(3):
        stranger.transport.sendto(pcmu(seq), (RELAY, browser_port))
    for _ in range(int(WAIT / 0.05)):
        legs = leg_stats(controller, "w4;tag")
        if (
            legs["caller"]["drops"]["dtls_pending"] >= 5
            and legs["callee"]["drops"]["dtls_pending"] >= 3
        ):
            break
        await asyncio.sleep(0.05)
    assert legs["caller"]["drops"]["dtls_pending"] == 5
    assert legs["callee"]["drops"]["dtls_pending"] == 3
    assert legs["callee"]["packets_out"] == 0
    stranger.transport.close()
