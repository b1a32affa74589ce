"""edge/echo: the built-in echo endpoint, driven by real peers.

- sipp (Debian ``sip-tester``) calls the endpoint directly: a call with RTP from a pcap,
  twenty calls at 10 per second, a CANCEL before the answer, a late offer.
- A small Python UAC over real UDP sockets checks what sipp cannot report: that the RTP
  comes back byte for byte, the SDP answer, hold, the 2xx retransmission until ACK (and the
  BYE when no ACK comes), limits, and garbage.

The endpoint runs in the test's event loop; sipp runs as a child process whose blocking
wait happens in a thread, so that the loop keeps serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from edge.config import EchoConfig, HostPort
from edge.echo import ALLOW, EchoEndpoint
from sip.message import Request, Response, parse_message
from sip.sdp import SessionDescription
from sip.transaction import TimerConfig, new_branch
from tests.peers import Sipp, SippResult, require_binary
from tests.peers_media import Logs

PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCAP_PACKETS = 236  # RTP packets in Debian's g711a.pcap (shared/peers/README.md)
FAST = TimerConfig(t1=0.02, t2=0.08)  # a 2xx is given up after 64*T1 = 1.28 s

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- endpoint


@pytest.fixture(params=[True, False], ids=["fast", "asyncio"])
async def make_endpoint(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Endpoints whose RTP echo runs on the C data plane, or in asyncio."""
    started: list[EchoEndpoint] = []

    async def make(answer_delay: float = 0.0, **kw: Any) -> EchoEndpoint:
        config = EchoConfig(HostPort("127.0.0.1", 0), "127.0.0.1", answer_delay)
        kw.setdefault("fast_path", request.param)
        endpoint = EchoEndpoint(config, log=Logs(), **kw)
        await endpoint.start()
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        await endpoint.close()


def logs_of(endpoint: EchoEndpoint) -> Logs:
    log = endpoint._log_fn
    assert isinstance(log, Logs)
    return log


# -------------------------------------------------------------------- sipp


def sipp(scenario: str, endpoint: EchoEndpoint, tmp_path: Path, **kw: Any) -> Sipp:
    require_binary("sipp", "sip-tester")
    return Sipp(
        scenario,
        workdir=tmp_path,
        name=scenario,
        local_ip="127.0.0.1",
        remote=endpoint.sip_address,
        timeout=25.0,
        **kw,
    )


async def run_sipp(uac: Sipp) -> SippResult:
    return await asyncio.to_thread(uac.run)


async def test_sipp_call_with_rtp_from_a_pcap_is_echoed(
    make_endpoint: Callable[..., Any], tmp_path: Path
) -> None:
    assert PCAP.is_file(), f"{PCAP} missing: install Debian package sip-tester"
    endpoint = await make_endpoint()
    uac = sipp(
        "echo_uac_pcap",
        endpoint,
        tmp_path,
        hold_ms=7500,
        keys={"pcap": str(PCAP)},
    )
    result = await run_sipp(uac)
    assert result.returncode == 0, result.describe()
    assert (result.successful, result.failed) == (1, 0), result.describe()
    # Every packet sipp played was sent back to it.
    assert endpoint.packets_echoed == PCAP_PACKETS
    assert endpoint.calls == 0
    ends = [f for _, event, f in logs_of(endpoint).lines if event == "echo_call_end"]
    assert [(f["reason"], f["packets"]) for f in ends] == [("bye", PCAP_PACKETS)]


async def test_sipp_twenty_calls_none_fails(
    make_endpoint: Callable[..., Any], tmp_path: Path
) -> None:
    endpoint = await make_endpoint()
    uac = sipp("echo_uac", endpoint, tmp_path, calls=20, rate=10, hold_ms=300)
    result = await run_sipp(uac)
    assert result.returncode == 0, result.describe()
    assert (result.successful, result.failed) == (20, 0), result.describe()
    assert endpoint.calls == 0


async def test_sipp_cancel_before_answer_gets_487(
    make_endpoint: Callable[..., Any], tmp_path: Path
) -> None:
    endpoint = await make_endpoint(answer_delay=5.0)
    result = await run_sipp(sipp("echo_uac_cancel", endpoint, tmp_path))
    assert result.returncode == 0, result.describe()
    assert (result.successful, result.failed) == (1, 0), result.describe()
    assert endpoint.calls == 0


async def test_sipp_late_offer(make_endpoint: Callable[..., Any], tmp_path: Path) -> None:
    endpoint = await make_endpoint()
    result = await run_sipp(sipp("echo_uac_late_offer", endpoint, tmp_path, hold_ms=300))
    assert result.returncode == 0, result.describe()
    assert (result.successful, result.failed) == (1, 0), result.describe()
    ends = [f["reason"] for _, event, f in logs_of(endpoint).lines if event == "echo_call_end"]
    assert ends == ["bye"]  # the answer in the ACK was accepted


# --------------------------------------------------------- a Python UAC


class Peer(asyncio.DatagramProtocol):
    """A UDP socket with a queue of what arrives on it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def send(self, data: bytes | Request | Response, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(data), addr)

    async def recv_raw(self, timeout: float = 5.0) -> bytes:
        data, _ = await asyncio.wait_for(self.queue.get(), timeout)
        return data

    async def recv(self, timeout: float = 5.0) -> Request | Response:
        return parse_message(await self.recv_raw(timeout))

    async def response(self, status: int | None = None, timeout: float = 5.0) -> Response:
        """The next final response (or the next one with ``status``), skipping 1xx."""
        while True:
            msg = await self.recv(timeout)
            if not isinstance(msg, Response):
                continue
            if (status is None and msg.status >= 200) or msg.status == status:
                return msg

    async def request(self, method: str, timeout: float = 5.0) -> Request:
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Request) and msg.method == method:
                return msg

    def drain(self) -> list[bytes]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait()[0])
        return out


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[], Any]]:
    opened: list[Peer] = []

    async def open_peer() -> Peer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        if peer.transport is not None:
            peer.transport.close()


def offer_sdp(
    rtp_port: int,
    formats: str = "8 0 101",
    direction: str = "sendrecv",
    extra_media: str = "",
    mux: bool = False,
) -> bytes:
    lines = [
        "v=0",
        "o=test 1 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {rtp_port} RTP/AVP {formats}",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        f"a={direction}",
    ]
    if mux:
        lines.append("a=rtcp-mux")
    if extra_media:
        lines.append(extra_media)
    return ("\r\n".join(lines) + "\r\n").encode()


class Dialog:
    """The UAC side of one call, written by hand (what sipp does, but inspectable)."""

    def __init__(self, peer: Peer, echo: tuple[str, int], call_id: str = "") -> None:
        self.peer = peer
        self.echo = echo
        self.call_id = call_id or new_branch()[7:]
        self.from_tag = new_branch()[7:19]
        self.to_tag: str | None = None
        self.cseq = 0
        self.last_invite: Request | None = None

    def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        branch: str | None = None,
        cseq: int | None = None,
        via_port: int | None = None,
        rport: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
        to_tag: str | None = None,
    ) -> Request:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        host, port = self.peer.address
        tag = to_tag if to_tag is not None else self.to_tag
        to = f"<sip:echo@{self.echo[0]}:{self.echo[1]}>" + (f";tag={tag}" if tag else "")
        headers: list[tuple[str, Any]] = [
            (
                "Via",
                f"SIP/2.0/UDP {host}:{via_port or port};branch={branch or new_branch()}"
                + (";rport" if rport else ""),
            ),
            ("From", f"<sip:test@{host}:{port}>;tag={self.from_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:test@{host}:{port}>"),
            ("Max-Forwards", "70"),
            *extra,
        ]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return Request(method, f"sip:echo@{self.echo[0]}:{self.echo[1]}", headers, body)

    def invite(self, body: bytes = b"", **kw: Any) -> Request:
        invite = self.request("INVITE", body=body, **kw)
        self.last_invite = invite
        self.peer.send(invite, self.echo)
        return invite

    def ack(self, body: bytes = b"") -> None:
        assert self.last_invite is not None
        self.peer.send(self.request("ACK", body=body, cseq=self.last_invite.cseq.number), self.echo)

    async def call(self, body: bytes) -> tuple[Response, SessionDescription]:
        """INVITE, 200, ACK: the answer."""
        self.invite(body)
        ok = await self.peer.response(200)
        self.to_tag = ok.to.tag
        self.ack()
        return ok, SessionDescription.parse(ok.body)

    async def bye(self) -> Response:
        self.peer.send(self.request("BYE"), self.echo)
        return await self.peer.response()


def rtp_packet(seq: int, pt: int = 8, payload: bytes = b"\xd5" * 160) -> bytes:
    # RFC 3550 §5.1: V=2, no padding/extension/CSRC, marker 0.
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, 0x1234ABCD) + payload


async def rtp_socket() -> tuple[Peer, int]:
    loop = asyncio.get_running_loop()
    _, rtp = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return rtp, rtp.address[1]


async def echoed(rtp: Peer, dest: tuple[str, int], packets: list[bytes]) -> list[bytes]:
    """Send ``packets`` one at a time; collect what comes back (bounded waits)."""
    back: list[bytes] = []
    for packet in packets:
        rtp.send(packet, dest)
        with contextlib.suppress(TimeoutError):
            back.append(await rtp.recv_raw(timeout=1.0))
    return back


async def nothing_back(rtp: Peer, dest: tuple[str, int], packet: bytes) -> bool:
    """Send ``packet`` then a good one; True when only the good one comes back (the
    endpoint handles datagrams in order, so the first reply settles it)."""
    rtp.send(packet, dest)
    probe = rtp_packet(60000)
    rtp.send(probe, dest)
    return await rtp.recv_raw(timeout=2.0) == probe


# ------------------------------------------------------------------- media


async def test_rtp_comes_back_byte_for_byte_and_stops_after_bye(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    rtp, port = await rtp_socket()
    try:
        dialog = Dialog(peer, endpoint.sip_address)
        _, answer = await dialog.call(offer_sdp(port))
        assert endpoint.calls == 1
        dest = ("127.0.0.1", answer.media[0].port)
        packets = [rtp_packet(i) for i in range(50)]
        assert await echoed(rtp, dest, packets) == packets
        # Not RTP, or RTCP (RFC 5761 §4 packet types): never reflected.
        rtcp_rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234ABCD)
        assert await nothing_back(rtp, dest, rtcp_rr)
        assert await nothing_back(rtp, dest, b"\x00\x01 not rtp at all")
        assert endpoint.packets_echoed == 52
        bye = await dialog.bye()
        assert bye.status == 200
        assert endpoint.calls == 0
        assert await echoed(rtp, dest, [rtp_packet(99)]) == []
    finally:
        assert rtp.transport is not None
        rtp.transport.close()


async def test_answer_keeps_the_offered_formats_and_rejects_other_streams(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    dialog = Dialog(await peers(), endpoint.sip_address)
    video = "m=video 40000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000"
    ok, answer = await dialog.call(offer_sdp(40002, formats="0 8 101", extra_media=video))
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ok.contact[0].uri is not None and ok.contact[0].uri.port == endpoint.sip_address[1]
    audio, rejected = answer.media
    assert (audio.media, audio.proto, audio.formats) == ("audio", "RTP/AVP", ["0", "8", "101"])
    assert audio.values("rtpmap") == ["8 PCMA/8000", "0 PCMU/8000", "101 telephone-event/8000"]
    assert audio.values("fmtp") == ["101 0-15"]
    assert audio.value("ptime") == "20"
    assert audio.direction == "sendrecv"
    assert not audio.rtcp_mux
    assert (rejected.media, rejected.port) == ("video", 0)  # RFC 3264 §6
    assert answer.connection is not None and answer.connection.host == "127.0.0.1"
    # RTP on an even port, its RTCP neighbour bound as well (RFC 3550 §11).
    assert audio.port % 2 == 0
    for port in (audio.port, audio.port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", port))
    assert (await dialog.bye()).status == 200


async def test_rtcp_mux_is_accepted(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    dialog = Dialog(await peers(), endpoint.sip_address)
    _, answer = await dialog.call(offer_sdp(40002, mux=True))
    assert answer.media[0].rtcp_mux
    assert (await dialog.bye()).status == 200


async def test_hold_is_reflected_and_stops_the_echo(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    rtp, port = await rtp_socket()
    try:
        dialog = Dialog(peer, endpoint.sip_address)
        _, answer = await dialog.call(offer_sdp(port))
        dest = ("127.0.0.1", answer.media[0].port)
        versions = [answer.origin.sess_version]
        for offered, expected, echoes in (
            ("sendonly", "recvonly", False),  # RFC 3264 §8.4: we are put on hold
            ("inactive", "inactive", False),
            ("sendrecv", "sendrecv", True),
        ):
            _, reanswer = await dialog.call(offer_sdp(port, direction=offered))
            assert reanswer.media[0].direction == expected
            assert reanswer.media[0].port == dest[1]  # the same RTP socket
            versions.append(reanswer.origin.sess_version)
            back = await echoed(rtp, dest, [rtp_packet(7)])
            assert (back == [rtp_packet(7)]) is echoes
        assert versions == [1, 2, 3, 4]  # RFC 3264 §8: o= version + 1 per change
        assert (await dialog.bye()).status == 200
    finally:
        assert rtp.transport is not None
        rtp.transport.close()


async def test_late_offer_answer_in_the_ack(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    rtp, port = await rtp_socket()
    try:
        dialog = Dialog(peer, endpoint.sip_address)
        dialog.invite()
        ok = await peer.response(200)
        dialog.to_tag = ok.to.tag
        offer = SessionDescription.parse(ok.body)
        assert offer.media[0].formats == ["0", "8", "101"]
        dialog.ack(offer_sdp(port, formats="0"))
        dest = ("127.0.0.1", offer.media[0].port)
        assert await echoed(rtp, dest, [rtp_packet(1, pt=0)]) == [rtp_packet(1, pt=0)]
        assert (await dialog.bye()).status == 200
    finally:
        assert rtp.transport is not None
        rtp.transport.close()


async def test_late_offer_without_an_answer_ends_with_bye(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    dialog.invite()
    ok = await peer.response(200)
    dialog.to_tag = ok.to.tag
    dialog.ack()  # no SDP: the offer in the 200 went unanswered
    bye = await peer.request("BYE")
    assert bye.call_id == dialog.call_id
    assert bye.to.tag == dialog.from_tag and bye.from_.tag == dialog.to_tag
    assert endpoint.calls == 0


async def test_no_audio_stream_is_488(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    sdp = b"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    sdp += b"m=video 40000 RTP/AVP 96\r\n"
    dialog = Dialog(peer, endpoint.sip_address)
    dialog.invite(sdp)
    response = await peer.response()
    assert response.status == 488
    assert "warning" in response.headers
    dialog.to_tag = response.to.tag
    dialog.ack()
    assert endpoint.calls == 0
    # Not SDP at all: 415 with Accept (RFC 3261 §21.4.13).
    invite = Dialog(peer, endpoint.sip_address).request("INVITE", body=b"hello")
    invite.headers.set("Content-Type", "text/plain")
    peer.send(invite, endpoint.sip_address)
    response = await peer.response()
    assert response.status == 415
    assert response.headers.get("Accept") == "application/sdp"


# ---------------------------------------------------------------- signalling


async def test_options_bye_unknown_and_other_methods(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    peer.send(dialog.request("OPTIONS"), endpoint.sip_address)
    options = await peer.response()
    assert options.status == 200
    assert options.headers.get("Allow") == ALLOW
    assert options.headers.get("Accept") == "application/sdp"
    assert options.to.tag

    peer.send(dialog.request("BYE", to_tag="nosuchtag"), endpoint.sip_address)
    assert (await peer.response()).status == 481
    peer.send(dialog.request("BYE"), endpoint.sip_address)  # no To tag at all
    assert (await peer.response()).status == 481

    peer.send(dialog.request("MESSAGE"), endpoint.sip_address)
    refused = await peer.response()
    assert refused.status == 405
    assert refused.headers.get("Allow") == ALLOW

    invite = dialog.request("INVITE", body=offer_sdp(40000), extra=(("Require", "100rel"),))
    peer.send(invite, endpoint.sip_address)
    refused = await peer.response()
    assert refused.status == 420  # RFC 3261 §8.2.2.3
    assert refused.headers.get("Unsupported") == "100rel"


async def test_cancel_gets_200_and_the_invite_487(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(answer_delay=5.0)
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    branch = new_branch()
    dialog.invite(offer_sdp(40000), branch=branch)
    ringing = await peer.response(180)
    assert endpoint.calls == 1
    cancel = dialog.request("CANCEL", branch=branch, cseq=1)
    peer.send(cancel, endpoint.sip_address)
    responses = [await peer.response(), await peer.response()]
    by_method = {r.cseq.method: r for r in responses}
    assert by_method["CANCEL"].status == 200
    assert by_method["INVITE"].status == 487
    assert by_method["INVITE"].to.tag == ringing.to.tag
    assert endpoint.calls == 0
    # A CANCEL that matches nothing (RFC 3261 §9.2).
    stray = Dialog(peer, endpoint.sip_address).request("CANCEL", cseq=1)
    peer.send(stray, endpoint.sip_address)
    assert (await peer.response()).status == 481


async def test_retransmitted_invite_makes_one_call(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(answer_delay=0.2)
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    invite = dialog.invite(offer_sdp(40000))
    for _ in range(3):
        peer.send(invite, endpoint.sip_address)
    ok = await peer.response(200)
    assert endpoint.calls == 1
    dialog.to_tag = ok.to.tag
    dialog.ack()
    assert (await dialog.bye()).status == 200
    assert endpoint.calls == 0
    starts = [e for _, e, _ in logs_of(endpoint).lines if e == "echo_call_start"]
    assert len(starts) == 1


async def test_2xx_is_retransmitted_until_ack(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(timers=FAST)
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    dialog.invite(offer_sdp(40000))
    oks = [await peer.response(200) for _ in range(3)]  # the first and two retransmissions
    assert len({bytes(ok) for ok in oks}) == 1
    dialog.to_tag = oks[0].to.tag
    dialog.ack()
    # After the ACK (give the in-flight retransmission time to land), no more 200s:
    # several retransmission intervals pass in silence.
    await asyncio.sleep(0.1)
    peer.drain()
    await asyncio.sleep(0.5)
    assert peer.drain() == []
    assert endpoint.calls == 1
    assert (await dialog.bye()).status == 200


async def test_no_ack_ends_the_call_with_bye(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(timers=FAST)
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    dialog.invite(offer_sdp(40000))
    # RFC 3261 §13.3.1.4: 2xx retransmitted for 64*T1, then the session ends with a BYE.
    bye = await peer.request("BYE", timeout=10.0)
    assert bye.uri.port == peer.address[1]  # our Contact is the remote target
    assert bye.call_id == dialog.call_id
    assert endpoint.calls == 0
    # The BYE's client transaction takes our 200.
    response = Response(200, "OK", [(k, v) for k, v in bye.headers if k.lower() != "max-forwards"])
    peer.send(response, endpoint.sip_address)


async def test_rport_answers_to_the_source_port(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    # The Via names a port nobody listens on; rport (RFC 3581) sends the answer to the
    # port the request came from anyway.
    peer.send(dialog.request("OPTIONS", via_port=9, rport=True), endpoint.sip_address)
    response = await peer.response()
    via = response.top_via
    assert (via.rport, via.received) == (peer.address[1], "127.0.0.1")


async def test_garbage_does_not_stop_the_endpoint(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    host, port = peer.address
    for junk in (
        b"\x00\x01\x00\x00garbage",
        b"\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\n\r\n",
        "INVITE sip:x@y SIP/2.0\r\nVia: \xff\r\n\r\n".encode("latin-1"),
        b"OPTIONS sip:echo SIP/2.0\r\nVia: SIP/2.0/UDP "
        + f"{host}:{port}".encode()
        + b";branch=z9hG4bKjunk\r\nCSeq: 1 OPTIONS\r\n\r\n",  # no From/To/Call-ID
    ):
        peer.send(junk, endpoint.sip_address)
    # Only the last one has a Via to answer to: 400 (RFC 3261 §8.2.2 via salvage_response),
    # with what could be copied (it lacks From, To and Call-ID, so our parser refuses it).
    answer = await peer.recv_raw()
    assert answer.startswith(b"SIP/2.0 400 ")
    assert b"branch=z9hG4bKjunk" in answer
    dialog = Dialog(peer, endpoint.sip_address)
    peer.send(dialog.request("OPTIONS"), endpoint.sip_address)
    assert (await peer.response()).status == 200
    assert any(e == "echo_bad_message" for _, e, _ in logs_of(endpoint).lines)


# ----------------------------------------------------------------- limits


async def test_call_limit_gives_503(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(max_calls=1)
    peer = await peers()
    first = Dialog(peer, endpoint.sip_address)
    await first.call(offer_sdp(40000))
    second = Dialog(peer, endpoint.sip_address)
    second.invite(offer_sdp(40002))
    assert (await peer.response()).status == 503
    assert endpoint.calls == 1
    assert (await first.bye()).status == 200


async def test_max_duration_ends_the_call_with_bye(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint(max_duration=0.3)
    peer = await peers()
    dialog = Dialog(peer, endpoint.sip_address)
    await dialog.call(offer_sdp(40000))
    bye = await peer.request("BYE")
    assert bye.cseq.number == 1
    assert endpoint.calls == 0
    ends = [f["reason"] for _, e, f in logs_of(endpoint).lines if e == "echo_call_end"]
    assert ends == ["max_duration"]


async def test_close_ends_every_call(
    make_endpoint: Callable[..., Any], peers: Callable[[], Any]
) -> None:
    endpoint = await make_endpoint()
    peer = await peers()
    answered = Dialog(peer, endpoint.sip_address)
    await answered.call(offer_sdp(40000))
    await endpoint.close()
    bye = await peer.request("BYE")
    assert bye.call_id == answered.call_id
    assert endpoint.calls == 0


def test_call_and_echo_under_uvloop() -> None:
    """sipedge runs on uvloop (``make run``): the same call and echo on that loop."""
    import uvloop

    async def scenario() -> None:
        config = EchoConfig(HostPort("127.0.0.1", 0), "127.0.0.1", 0.0)
        endpoint = EchoEndpoint(config)
        await endpoint.start()
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        rtp, port = await rtp_socket()
        try:
            dialog = Dialog(peer, endpoint.sip_address)
            _, answer = await dialog.call(offer_sdp(port))
            packets = [rtp_packet(i) for i in range(20)]
            assert await echoed(rtp, ("127.0.0.1", answer.media[0].port), packets) == packets
            assert (await dialog.bye()).status == 200
            assert endpoint.calls == 0
        finally:
            for p in (peer, rtp):
                if p.transport is not None:
                    p.transport.close()
            await endpoint.close()

    uvloop.run(scenario())
