"""The built-in echo endpoint: a small UAS that answers every call and plays its RTP back.

It is the default upstream of a fresh install (``upstream.echo = true``), so that
``make run`` answers a real call, and it runs on its own as well::

    endpoint = EchoEndpoint(EchoConfig(HostPort("127.0.0.1", 5099)))
    await endpoint.start()
    ...
    await endpoint.close()

Rules of this file:
- UDP only, for SIP and media.  Requests go through the server transactions of
  :mod:`sip.transaction` (retransmissions absorbed, final responses retransmitted);
  the UAS core here retransmits its 2xx itself until the ACK (RFC 3261 §13.3.1.4,
  RFC 6026 §8.7) and, after 64*T1 without one, ends the call with a BYE.
- Responses go where RFC 3261 §18.2.2 and RFC 3581 §4 say: to the source address,
  with the source port when the Via asks for ``rport``, else the Via port.
- Media: one RTP socket per call on ``rtp_address``.  Without ``a=rtcp-mux`` in the
  offer the RTP port is even and port+1 is bound too (RFC 3550 §11), so that the
  caller's RTCP lands on a socket of this call and is absorbed there, never on
  another call's RTP socket.  With ``a=rtcp-mux`` (RFC 5761) one socket is enough.
  RTCP is never reflected: the peer would read its own reports as a loop.  Each RTP
  packet is sent back to the address it came from (the echo), unless the negotiated
  direction says we must not send (hold: RFC 3264 §6.1, §8.4).
- Media on the C data plane (:mod:`media.fastpath`, the default where it runs; issue
  7), so that a packet generator can load-test ``make run``: each call's RTP socket
  is an echo leg of the endpoint's own plane.  The first packet from a source is
  punted to Python, which echoes it and makes that source the leg's: the plane then
  reflects its packets (RTCP from it is dropped there: no destination); a packet from
  another source is punted and moves the echo to it.  ``fast_path=False``: asyncio
  reads every packet (the reference path).
- Offer/answer (RFC 3264): the first audio stream over RTP/AVP or RTP/AVPF is
  accepted with every offered format in the offered order (an echo plays back any
  codec, telephone-event included); every other stream is rejected with port 0.  An
  INVITE without SDP gets our offer in the 200 and its answer is taken from the ACK
  (late offer, RFC 3261 §13.2.1).  A re-INVITE keeps the same RTP socket.
- Bounded: at most ``max_calls`` calls (then 503), each at most ``max_duration``
  seconds (then a BYE), at most ``max_transactions`` server transactions (then
  requests are answered statelessly).
- Nothing a peer sends may stop the endpoint: every message is handled inside a
  ``try`` that logs and goes on.

Limitation: no DNS (RFC 3263) for in-dialog requests we send (the BYE): the next hop
is the first Route or the Contact when it is an IP literal, else the address the
INVITE came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from edge.config import EchoConfig
from media import relay_plane
from media.fastpath import FastPath, Punted
from media.rtp import PacketKind
from sip.errors import SipError
from sip.headers import NameAddr
from sip.message import (
    HeaderValue,
    Request,
    Response,
    make_response,
    parse_message,
    salvage_response,
)
from sip.sdp import (
    Connection,
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
)
from sip.transaction import (
    CancelTimer,
    DeliverToTU,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    StartTimer,
    Terminated,
    TimerConfig,
    TransactionKey,
    cancel_target_key,
    client_key,
    new_branch,
    server_key,
    server_transaction,
)
from sip.uri import URI, format_host

__all__ = ["ALLOW", "MAX_CALLS", "MAX_DURATION", "EchoEndpoint"]

MAX_CALLS: Final = 1000
MAX_DURATION: Final = 2 * 3600.0
MAX_TRANSACTIONS: Final = 10_000
ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS"
SERVER: Final = "sipedge-echo"

_RTP_PROFILES: Final = frozenset({"RTP/AVP", "RTP/AVPF"})
# The direction we answer for the one offered (RFC 3264 §6.1).
_REFLECT: Final = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_BIND_ATTEMPTS: Final = 64

_Addr = tuple[str, int]
_ServerTx = InviteServerTransaction | NonInviteServerTransaction
_Tx = _ServerTx | NonInviteClientTransaction

# Call states: no final response yet / 2xx sent (its ACK may be outstanding) / over.
_EARLY, _ANSWERED, _ENDED = "early", "answered", "ended"


# ------------------------------------------------------------------------- media


class _RtpEcho(asyncio.DatagramProtocol):
    """Sends every RTP packet back to its source."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.send = True  # False while our direction is recvonly or inactive
        self.packets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # RFC 3550 §5.1: version 2 and a 12-byte fixed header.  RFC 5761 §4: a second
        # byte of 192-223 is an RTCP packet type (multiplexed RTCP): not reflected.
        if len(data) < 12 or data[0] & 0xC0 != 0x80 or 192 <= data[1] <= 223:
            return
        if self.send and self.transport is not None:
            self.transport.sendto(data, addr)
            self.packets += 1

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a caller that went away: nothing to do


class _PlaneEcho:
    """One call's RTP echo as a leg of the C data plane (see the module docstring):
    the same ``send`` and ``packets`` as :class:`_RtpEcho`, and ``close``."""

    def __init__(self, plane: FastPath, sock: socket.socket, legs: dict[int, _PlaneEcho]) -> None:
        self.plane = plane
        self.sock = sock
        self.legs = legs
        # The mux flag: a second byte of 192-223 on the RTP port is RTCP, never echoed.
        self.handle: int | None = plane.add_leg(sock, mux=True)
        plane.echo(self.handle)
        legs[self.handle] = self
        self.source: _Addr | None = None
        self._send = True
        self._packets = 0  # echoed by Python (each source's first packet)
        self._plane_packets = 0  # echoed by the plane, once the leg is removed

    @property
    def send(self) -> bool:
        return self._send

    @send.setter
    def send(self, value: bool) -> None:
        self._send = value
        self._write()

    @property
    def packets(self) -> int:
        if self.handle is None:
            return self._packets + self._plane_packets
        return self._packets + self.plane.counters(self.handle).packets_out

    def punted(self, punted: Punted) -> None:
        """RTP from a new source (the plane checked version and header): echo it and
        make the source the leg's; anything else punted (RTCP, STUN, DTLS) is ignored."""
        if punted.kind is not PacketKind.RTP or punted.on_rtcp_socket:
            return
        self.source = punted.source
        self._write()
        if self._send:
            with contextlib.suppress(OSError):
                self.sock.sendto(punted.data, punted.source)
                self._packets += 1

    def _write(self) -> None:
        if self.handle is not None:
            source = self.source
            self.plane.set_addresses(
                self.handle,
                rtp_source=source,
                rtcp_source=source,
                rtp_destination=source if self._send else None,
            )

    def close(self) -> None:
        if self.handle is not None:
            final = self.plane.remove_leg(self.handle)
            self._plane_packets = final.packets_out
            del self.legs[self.handle]
            self.handle = None
            # Datagrams punted for the handle go before another call gets it.
            while batch := self.plane.drain():
                for punted in batch:
                    leg = self.legs.get(punted.leg)
                    if leg is not None:
                        leg.punted(punted)
        self.sock.close()


class _Sink(asyncio.DatagramProtocol):
    """The RTCP port: bound so that RTCP has somewhere to go, and ignored."""


class _Media:
    __slots__ = ("port", "rtp", "echo", "rtcp")

    def __init__(
        self,
        port: int,
        rtp: asyncio.DatagramTransport | _PlaneEcho,
        echo: _RtpEcho | _PlaneEcho,
        rtcp: asyncio.DatagramTransport | None,
    ) -> None:
        self.port = port
        self.rtp = rtp
        self.echo = echo
        self.rtcp = rtcp

    def close(self) -> None:
        self.rtp.close()
        if self.rtcp is not None:
            self.rtcp.close()


def _bind_rtp(host: str, pair: bool) -> tuple[socket.socket, socket.socket | None]:
    """An RTP socket on ``host`` (ephemeral port); with ``pair``, an even port and its
    odd neighbour for RTCP (RFC 3550 §11)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(_BIND_ATTEMPTS):
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, 0))
            port = rtp.getsockname()[1]
            rtcp: socket.socket | None = None
            if pair:
                if port % 2 or port == 65534:
                    rtp.close()
                    continue
                rtcp = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    rtcp.bind((host, port + 1))
                except OSError:
                    rtcp.close()
                    rtp.close()
                    continue
                rtcp.setblocking(False)
            rtp.setblocking(False)
            return rtp, rtcp
        except OSError:
            rtp.close()
            raise
    raise OSError(f"no free even/odd RTP port pair on {host}")


# ---------------------------------------------------------------------------- SDP


def _pick_audio(offer: SessionDescription) -> int | None:
    """Index of the stream we accept: the first audio over plain RTP (RFC 3264 §6)."""
    for i, m in enumerate(offer.media):
        if m.media == "audio" and m.port != 0 and m.proto in _RTP_PROFILES and m.formats:
            return i
    return None


def _answer_sdp(
    offer: SessionDescription, index: int, origin: Origin, port: int, mux: bool
) -> tuple[SessionDescription, Direction]:
    """The answer (RFC 3264 §6): as many m-lines as offered, all but ``index`` rejected."""
    media: list[MediaDescription] = []
    direction = Direction.SENDRECV
    for i, m in enumerate(offer.media):
        if i != index:
            # §6: a rejected stream keeps its media type, proto and formats, port 0.
            media.append(MediaDescription(m.media, 0, m.proto, list(m.formats)))
            continue
        answer = MediaDescription("audio", port, m.proto, list(m.formats))
        formats = set(m.formats)
        for attr in m.attributes:
            if attr.name in ("rtpmap", "fmtp") and attr.value is not None:
                if attr.value.split(" ", 1)[0] in formats:
                    answer.attributes.append(attr)
            elif attr.name in ("ptime", "maxptime"):
                answer.attributes.append(attr)
        if mux and m.rtcp_mux:
            answer.add("rtcp-mux")  # RFC 5761 §5.1.1
        direction = _REFLECT[offer.direction_for(m)]
        answer.set_direction(direction)
        media.append(answer)
    return _session(origin, media), direction


def _offer_sdp(origin: Origin, port: int) -> SessionDescription:
    """Our offer when the INVITE had none: G.711 both laws and telephone-event."""
    m = MediaDescription("audio", port, "RTP/AVP", ["0", "8", "101"])
    m.add("rtpmap", "0 PCMU/8000")
    m.add("rtpmap", "8 PCMA/8000")
    m.add("rtpmap", "101 telephone-event/8000")
    m.add("fmtp", "101 0-16")  # RFC 4733 §7.1.1
    m.add("ptime", "20")
    m.set_direction(Direction.SENDRECV)
    return _session(origin, [m])


def _session(origin: Origin, media: list[MediaDescription]) -> SessionDescription:
    return SessionDescription(
        origin=origin,
        name="sipedge echo",
        connection=Connection.for_address(origin.address),
        media=media,
    )


def _reoffer(previous: SessionDescription, index: int) -> SessionDescription:
    """A new offer for a re-INVITE without SDP: the same streams, version + 1, and the
    accepted one back to sendrecv (RFC 3264 §8: never fewer m-lines than before)."""
    sd = previous.copy()
    sd.origin = previous.origin.next_version()
    sd.media[index].set_direction(Direction.SENDRECV)
    return sd


def _sdp_body(message: Request | Response) -> SessionDescription | None:
    """The SDP a message carries, or None without a body.  Raises SipError: 415 for a
    body that is not plain SDP, 400 for SDP that does not parse."""
    if not message.body:
        return None
    ctype = message.content_type
    if ctype is None or ctype.mime.lower() != "application/sdp":
        raise SipError("body is not application/sdp", 415, (("Accept", "application/sdp"),))
    encoding = message.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() != "identity":
        raise SipError("encoded body", 415, (("Accept-Encoding", "identity"),))
    return SessionDescription.parse(message.body)


# ------------------------------------------------------------------ transactions


class _Entry:
    """A transaction and what its adapter keeps: where to send, its timers, its call."""

    __slots__ = ("tx", "addr", "timers", "call")

    def __init__(self, tx: _Tx, addr: _Addr) -> None:
        self.tx = tx
        self.addr = addr
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.call: _Call | None = None

    def cancel_timers(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()


@dataclass(slots=True, eq=False)
class _Call:
    """One dialog (RFC 3261 §12) of the endpoint, from the INVITE to its end."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str  # the INVITE's To with our tag: From of what we send
    remote_party: str  # the INVITE's From: To of what we send
    remote_target: URI | None
    route_set: list[str]  # §12.1.1: for a UAS, the Record-Route list in order
    source: _Addr
    remote_cseq: int
    local_cseq: int = 0
    state: str = _EARLY
    media: _Media | None = None
    sdp: SessionDescription | None = None  # the last SDP we sent
    audio_index: int = 0
    offer_pending: bool = False  # our offer went in a 2xx: the answer comes in the ACK
    invite: _Entry | None = None  # the INVITE transaction awaiting its final or ACK
    ok: Response | None = None  # the 2xx retransmitted until its ACK
    ok_since: float = 0.0
    ok_interval: float = 0.0
    retransmit: asyncio.TimerHandle | None = None
    answer_timer: asyncio.TimerHandle | None = None
    deadline: asyncio.TimerHandle | None = None
    packets_before: int = 0  # echoed by media already closed

    @classmethod
    def from_invite(cls, invite: Request, local_tag: str, source: _Addr) -> _Call:
        contacts = invite.contact if "contact" in invite.headers else []
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_party=str(invite.to.with_tag(local_tag)),
            remote_party=invite.headers.get("From") or "",
            remote_target=contacts[0].uri if contacts else None,
            route_set=invite.headers.get_all("Record-Route"),
            source=source,
            remote_cseq=invite.cseq.number,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def packets(self) -> int:
        return self.packets_before + (self.media.echo.packets if self.media else 0)


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: EchoEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.endpoint._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for UDP sends: the transactions' timers cover the loss


# ----------------------------------------------------------------------- endpoint


class EchoEndpoint:
    """A UAS on UDP that answers every call and echoes its RTP (see module docstring)."""

    def __init__(
        self,
        config: EchoConfig,
        *,
        log: Callable[..., None] | None = None,
        timers: TimerConfig | None = None,
        max_calls: int = MAX_CALLS,
        max_duration: float = MAX_DURATION,
        max_transactions: int = MAX_TRANSACTIONS,
        fast_path: bool | FastPath | None = None,
    ) -> None:
        """``fast_path``: the calls' RTP echo on a data plane of the endpoint's own
        (``True``; ``None``: where the plane can run, else asyncio), on the given one
        (shared: not closed here), or in asyncio (``False``)."""
        self._config = config
        self._fast_path = fast_path
        self._plane: FastPath | None = None
        self._owns_plane = False
        self._plane_legs: dict[int, _PlaneEcho] = {}
        self._log_fn = log
        self._timers = timers or TimerConfig()
        self._max_calls = max_calls
        self._max_duration = max_duration
        self._max_transactions = max_transactions
        self._transport: asyncio.DatagramTransport | None = None
        self._address: _Addr | None = None
        self._server: dict[TransactionKey, _Entry] = {}
        self._client: dict[TransactionKey, _Entry] = {}
        self._calls: dict[tuple[str, str, str], _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._echoed = 0  # packets echoed by calls that have ended
        self._bad = 0

    # ------------------------------------------------------------------ public

    async def start(self) -> None:
        """Bind the UDP SIP socket (``config.address``; port 0 picks a free one)."""
        if self._transport is not None:
            raise RuntimeError("echo endpoint already started")
        loop = asyncio.get_running_loop()
        address = self._config.address
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(address.host, address.port)
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self._address = (sockname[0], sockname[1])
        fast = self._fast_path
        if isinstance(fast, FastPath):
            self._plane = fast
        elif fast is not False:
            self._plane = relay_plane.make_fast_path(True)
            self._owns_plane = self._plane is not None
            if self._plane is None and fast is True:
                self._emit("warning", "echo_fast_path_unavailable", problem=relay_plane.UNAVAILABLE)
        if self._plane is not None:
            self._plane.start()
            self._plane.attach(loop, self._on_punted)
        self._emit(
            "info",
            "echo_ready",
            address=f"{format_host(sockname[0])}:{sockname[1]}",
            fast_path=self._plane is not None,
        )

    async def close(self) -> None:
        """End every call (BYE, or 503 before the answer), close every socket."""
        self._closing = True
        for call in list(self._calls.values()):
            with contextlib.suppress(Exception):
                if call.state == _EARLY:
                    self._final(call, 503)
                    self._end(call, "shutdown")
                else:
                    self._hangup(call, "shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in (*self._server.values(), *self._client.values()):
            entry.cancel_timers()
        self._server.clear()
        self._client.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._plane is not None:
            if self._owns_plane:
                self._plane.close()
            else:
                self._plane.detach()
            self._plane = None

    @property
    def sip_address(self) -> tuple[str, int]:
        """The bound SIP address (host, port)."""
        if self._address is None:
            raise RuntimeError("echo endpoint not started")
        return self._address

    @property
    def calls(self) -> int:
        """Live calls (answered or not yet), each holding its RTP socket."""
        return len(self._calls)

    @property
    def packets_echoed(self) -> int:
        """RTP packets sent back so far, over all calls."""
        return self._echoed + sum(call.packets for call in self._calls.values())

    # ---------------------------------------------------------------- receive

    def _on_punted(self, batch: list[Punted]) -> None:
        for punted in batch:
            leg = self._plane_legs.get(punted.leg)
            if leg is not None:
                try:
                    leg.punted(punted)
                except Exception as exc:  # a bug: logged, the endpoint goes on
                    self._emit("error", "echo_error", error=repr(exc))

    def _datagram(self, data: bytes, addr: _Addr) -> None:
        if not data.strip(b"\r\n"):
            return  # CRLF keep-alive (RFC 5626 §3.5.1)
        try:
            try:
                message = parse_message(data)
            except SipError as error:
                self._bad_message(error.reason, addr)
                answer = salvage_response(data, error)
                if answer is not None:
                    self._sendto(answer, addr)
                return
            if isinstance(message, Response):
                self._on_response(message)
            else:
                self._on_request(message, addr)
        except Exception as exc:  # a bug must not stop the endpoint
            self._emit("error", "echo_error", error=repr(exc))

    def _on_response(self, response: Response) -> None:
        try:
            entry = self._client.get(client_key(response))
        except SipError:
            return
        if entry is not None and isinstance(entry.tx, NonInviteClientTransaction):
            self._run(entry, entry.tx.receive_response(response, self._now()))

    def _on_request(self, request: Request, addr: _Addr) -> None:
        dest = self._stamp_via(request, addr)
        if request.method == "ACK":
            entry = self._server.get(server_key(request))
            if entry is not None:
                # The ACK of a 3xx-6xx (absorbed), or of a 2xx matching by RFC 2543
                # rules (delivered to _on_ack through the transaction, RFC 6026 §8.7).
                self._receive(entry, request)
            else:
                self._on_ack(request)
            return
        key = server_key(request)
        entry = self._server.get(key)
        if entry is not None:
            self._receive(entry, request)
            return
        if len(self._server) >= self._max_transactions:
            # Overloaded: answer without keeping state (a retransmission gets the same).
            self._emit("warning", "echo_overload", transactions=len(self._server))
            self._sendto(bytes(self._response(request, 503)), dest)
            return
        tx = server_transaction(request, reliable=False, config=self._timers)
        entry = _Entry(tx, dest)
        self._server[key] = entry
        self._run(entry, tx.receive_request(request, self._now()))

    def _receive(self, entry: _Entry, request: Request) -> None:
        tx = entry.tx
        assert not isinstance(tx, NonInviteClientTransaction)  # server table only
        self._run(entry, tx.receive_request(request, self._now()))

    def _stamp_via(self, request: Request, addr: _Addr) -> _Addr:
        """Add received/rport to the top Via (RFC 3261 §18.2.1, RFC 3581 §4) and return
        where responses go (§18.2.2 with RFC 3581: the source, with its port for rport)."""
        via = request.top_via
        stamped = via
        if via.wants_rport:
            stamped = stamped.with_param("received", addr[0]).with_param("rport", str(addr[1]))
        elif via.host.lower() != addr[0]:
            stamped = stamped.with_param("received", addr[0])
        if stamped is not via:
            request.headers.remove_first("Via")
            request.headers.prepend("Via", str(stamped))
        return (addr[0], addr[1] if via.wants_rport else (via.port or 5060))

    # ----------------------------------------------------------------- requests

    def _on_tu_request(self, entry: _Entry, request: Request) -> None:
        """A new request from its server transaction (RFC 3261 §8.2 checks first)."""
        method = request.method
        if method == "ACK":
            self._on_ack(request)
            return
        if method == "CANCEL":
            self._on_cancel(entry, request)
            return
        if method not in ("INVITE", "BYE", "OPTIONS"):
            self._reply(entry, 405, headers=[("Allow", ALLOW)])
            return
        if request.uri.scheme not in ("sip", "sips", "tel"):
            self._reply(entry, 416)  # §8.2.2.1
            return
        if "require" in request.headers and request.require:
            # §8.2.2.3: we support no extension, so every Require is unsupported.
            self._reply(entry, 420, headers=[("Unsupported", ", ".join(request.require))])
            return
        to_tag = request.to.tag
        if to_tag is None:
            if method == "INVITE":
                self._on_invite(entry, request)
            elif method == "OPTIONS":
                self._reply(entry, 200, to_tag=secrets.token_hex(6), headers=self._options())
            else:
                self._reply(entry, 481)  # a BYE outside any dialog
            return
        call = self._calls.get((request.call_id, to_tag, request.from_.tag or ""))
        if call is None:
            self._reply(entry, 481)  # §12.2.2
            return
        if request.cseq.number < call.remote_cseq:
            self._reply(entry, 500, reason="CSeq Out Of Order")  # §12.2.2
            return
        call.remote_cseq = request.cseq.number
        if method == "INVITE" and "contact" in request.headers and request.contact:
            # §12.2.2: a re-INVITE is a target refresh request.
            call.remote_target = request.contact[0].uri or call.remote_target
        if method == "BYE":
            self._on_bye(entry, call)
        elif method == "INVITE":
            self._on_reinvite(entry, call, request)
        else:
            self._reply(entry, 200, headers=self._options())

    def _on_invite(self, entry: _Entry, request: Request) -> None:
        if self._closing:
            self._reply(entry, 503)
            return
        if len(self._calls) >= self._max_calls:
            self._emit("warning", "echo_full", calls=len(self._calls))
            self._reply(entry, 503)
            return
        try:
            offer = _sdp_body(request)
        except SipError as error:
            self._reply(entry, error.status_hint, headers=error.headers)
            return
        index = 0
        if offer is not None:
            found = _pick_audio(offer)
            if found is None:
                self._reply(entry, 488, headers=[_warning(304, "no RTP audio stream offered")])
                return
            index = found
        call = _Call.from_invite(request, secrets.token_hex(8), entry.addr)
        call.audio_index = index
        call.invite = entry
        entry.call = call
        self._calls[call.key] = call
        call.deadline = self._loop().call_later(self._max_duration, self._expire, call)
        self._emit("info", "echo_call_start", call_id=call.call_id, late_offer=offer is None)
        mux = offer is not None and offer.media[index].rtcp_mux
        task = self._loop().create_task(self._answer(call, request, offer, mux))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, call: _Call, request: Request, offer: SessionDescription | None, mux: bool
    ) -> None:
        try:
            await self._answer_steps(call, request, offer, mux)
        except Exception as exc:  # a bug: the caller gets a 500, the endpoint goes on
            self._emit("error", "echo_error", call_id=call.call_id, error=repr(exc))
            if call.state == _EARLY:
                self._final(call, 500)
                self._end(call, "error")

    async def _answer_steps(
        self, call: _Call, request: Request, offer: SessionDescription | None, mux: bool
    ) -> None:
        try:
            media = await self._open_media(mux)
        except OSError as exc:
            self._emit("error", "echo_no_media_port", call_id=call.call_id, error=str(exc))
            if call.state == _EARLY:
                self._final(call, 503)
                self._end(call, "no_media_port")
            return
        if call.state != _EARLY:  # cancelled or ended while the sockets were bound
            media.close()
            return
        call.media = media
        origin = Origin(
            "sipedge",
            str(secrets.randbelow(10**12)),
            1,
            "IN",
            "IP6" if ":" in self._config.rtp_address else "IP4",
            self._config.rtp_address,
        )
        if offer is not None:
            call.sdp, direction = _answer_sdp(offer, call.audio_index, origin, media.port, mux)
            media.echo.send = direction in (Direction.SENDRECV, Direction.SENDONLY)
        else:
            call.sdp = _offer_sdp(origin, media.port)
            call.offer_pending = True
        delay = self._config.answer_delay
        if delay > 0 and call.invite is not None:
            ringing = make_response(
                request, 180, to_tag=call.local_tag, headers=self._dialog_headers(request)
            )
            self._send_response(call.invite, ringing)
            call.answer_timer = self._loop().call_later(delay, self._send_ok, call, request)
        else:
            self._send_ok(call, request)

    async def _open_media(self, mux: bool) -> _Media:
        rtp_sock, rtcp_sock = _bind_rtp(self._config.rtp_address, pair=not mux)
        loop = self._loop()
        if self._plane is not None:
            sink: asyncio.DatagramTransport | None = None
            try:
                plane_echo = _PlaneEcho(self._plane, rtp_sock, self._plane_legs)
            except BaseException:
                rtp_sock.close()
                if rtcp_sock is not None:
                    rtcp_sock.close()
                raise
            if rtcp_sock is not None:
                try:
                    sink, _ = await loop.create_datagram_endpoint(_Sink, sock=rtcp_sock)
                except BaseException:
                    rtcp_sock.close()
                    plane_echo.close()
                    raise
            return _Media(rtp_sock.getsockname()[1], plane_echo, plane_echo, sink)
        echo = _RtpEcho()
        try:
            rtp, _ = await loop.create_datagram_endpoint(lambda: echo, sock=rtp_sock)
        except BaseException:
            rtp_sock.close()
            if rtcp_sock is not None:
                rtcp_sock.close()
            raise
        rtcp: asyncio.DatagramTransport | None = None
        if rtcp_sock is not None:
            try:
                rtcp, _ = await loop.create_datagram_endpoint(_Sink, sock=rtcp_sock)
            except BaseException:
                rtcp_sock.close()
                rtp.close()
                raise
        return _Media(rtp_sock.getsockname()[1], rtp, echo, rtcp)

    def _send_ok(self, call: _Call, request: Request) -> None:
        call.answer_timer = None
        entry = call.invite
        if call.state != _EARLY or entry is None or call.sdp is None:
            return
        headers = [*self._dialog_headers(request), ("Content-Type", "application/sdp")]
        ok = make_response(
            request, 200, to_tag=call.local_tag, headers=headers, body=bytes(call.sdp)
        )
        call.state = _ANSWERED
        self._send_2xx(call, entry, ok)

    def _send_2xx(self, call: _Call, entry: _Entry, ok: Response) -> None:
        """Send a 2xx and retransmit it until its ACK (RFC 3261 §13.3.1.4): T1, doubling
        up to T2, for at most 64*T1."""
        call.invite = entry
        entry.call = call
        call.ok = ok
        call.ok_since = self._now()
        call.ok_interval = self._timers.t1
        self._send_response(entry, ok)
        call.retransmit = self._loop().call_later(call.ok_interval, self._retransmit_ok, call)

    def _retransmit_ok(self, call: _Call) -> None:
        call.retransmit = None
        entry = call.invite
        if call.ok is None or entry is None:
            return
        if self._now() - call.ok_since >= 64 * self._timers.t1:
            # §13.3.1.4: "the dialog is confirmed, but the session SHOULD be terminated".
            call.ok = None
            self._hangup(call, "no_ack")
            return
        if self._server.get(entry.tx.key) is entry:
            self._send_response(entry, call.ok)  # Accepted: the transaction sends it
        else:
            self._sendto(bytes(call.ok), entry.addr)  # Timer L ended the transaction
        call.ok_interval = min(2 * call.ok_interval, self._timers.t2)
        call.retransmit = self._loop().call_later(call.ok_interval, self._retransmit_ok, call)

    def _on_ack(self, ack: Request) -> None:
        call = self._calls.get((ack.call_id, ack.to.tag or "", ack.from_.tag or ""))
        if call is None or call.ok is None or ack.cseq.number != call.ok.cseq.number:
            return  # a stray or retransmitted ACK: no response to ACK, ever (§17.2.3)
        call.ok = None
        call.invite = None
        if call.retransmit is not None:
            call.retransmit.cancel()
            call.retransmit = None
        if not call.offer_pending:
            return
        call.offer_pending = False
        # Late offer: the ACK carries the answer (RFC 3261 §13.2.1, RFC 3264 §6).
        try:
            answer = _sdp_body(ack)
        except SipError:
            answer = None
        offer = call.sdp
        ok = (
            answer is not None
            and offer is not None
            and len(answer.media) == len(offer.media)
            and answer.media[call.audio_index].port != 0
        )
        if not ok or answer is None or call.media is None:
            self._hangup(call, "bad_answer")  # §13.3.1.4: an unacceptable answer ends it
            return
        theirs = answer.direction_for(answer.media[call.audio_index])
        call.media.echo.send = theirs in (Direction.SENDRECV, Direction.RECVONLY)

    def _on_cancel(self, entry: _Entry, cancel: Request) -> None:
        target = self._server.get(cancel_target_key(cancel))
        if target is None or not isinstance(target.tx, InviteServerTransaction):
            self._reply(entry, 481)  # §9.2
            return
        call = target.call
        self._reply(entry, 200, to_tag=call.local_tag if call is not None else None)
        if call is not None and call.state == _EARLY and call.invite is target:
            self._final(call, 487)  # §9.2: the INVITE ends with 487
            self._end(call, "cancelled")

    def _on_bye(self, entry: _Entry, call: _Call) -> None:
        self._reply(entry, 200)
        if call.state == _EARLY:
            self._final(call, 487)  # §15.1.2: BYE on an early dialog ends the INVITE
        self._end(call, "bye")

    def _on_reinvite(self, entry: _Entry, call: _Call, request: Request) -> None:
        if call.state != _ANSWERED or call.ok is not None or call.media is None:
            # §14.2: an INVITE is still in progress on this dialog.
            retry = str(random.randint(0, 10))
            self._reply(entry, 500, headers=[("Retry-After", retry)])
            return
        try:
            offer = _sdp_body(request)
        except SipError as error:
            self._reply(entry, error.status_hint, headers=error.headers)
            return
        previous = call.sdp
        assert previous is not None
        if offer is None:
            call.sdp = _reoffer(previous, call.audio_index)
            call.offer_pending = True
        else:
            index = _pick_audio(offer)
            if index is None:
                # §14.2: a refused re-INVITE leaves the session as it was.
                self._reply(entry, 488, headers=[_warning(304, "no RTP audio stream offered")])
                return
            mux = call.media.rtcp is None
            origin = previous.origin.next_version()
            call.sdp, direction = _answer_sdp(offer, index, origin, call.media.port, mux)
            call.audio_index = index
            call.offer_pending = False
            call.media.echo.send = direction in (Direction.SENDRECV, Direction.SENDONLY)
        headers = [
            ("Contact", self._contact()),
            ("Allow", ALLOW),
            ("Content-Type", "application/sdp"),
        ]
        ok = make_response(request, 200, headers=headers, body=bytes(call.sdp))
        self._send_2xx(call, entry, ok)

    # ------------------------------------------------------------- call ends

    def _expire(self, call: _Call) -> None:
        call.deadline = None
        if call.state == _EARLY:
            self._final(call, 480)
            self._end(call, "max_duration")
        else:
            self._hangup(call, "max_duration")

    def _hangup(self, call: _Call, reason: str) -> None:
        """End an answered call from our side with a BYE (RFC 3261 §15.1.1)."""
        if call.state == _ENDED:
            return
        call.local_cseq += 1
        headers: list[tuple[str, HeaderValue]] = [
            ("Via", f"SIP/2.0/UDP {self._hostport()};branch={new_branch()};rport"),
            *(("Route", route) for route in call.route_set),
            ("Max-Forwards", "70"),
            ("From", call.local_party),
            ("To", call.remote_party),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.local_cseq} BYE"),
            ("Content-Length", "0"),
        ]
        target = call.remote_target or URI.parse(f"sip:{format_host(call.source[0])}")
        bye = Request("BYE", target, headers)
        tx = NonInviteClientTransaction(bye, reliable=False, config=self._timers)
        entry = _Entry(tx, self._next_hop(call))
        self._client[tx.key] = entry
        self._run(entry, tx.start(self._now()))
        self._end(call, reason)

    def _next_hop(self, call: _Call) -> _Addr:
        """First Route, else the remote target, when it is an IP literal (§8.1.2, no
        RFC 3263 lookups here); else the address the INVITE came from."""
        uri = call.remote_target
        if call.route_set:
            try:
                uri = NameAddr.parse(call.route_set[0]).uri
            except SipError:
                uri = None
        if uri is not None and uri.is_sip:
            host = uri.maddr or uri.host
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(host)
                return (host, uri.port or 5060)
        return call.source

    def _final(self, call: _Call, status: int) -> None:
        """A final non-2xx to the call's INVITE, if it has not had its final yet."""
        entry = call.invite
        if entry is not None and call.state == _EARLY:
            assert isinstance(entry.tx, InviteServerTransaction)
            self._send_response(entry, self._response(entry.tx.request, status, call.local_tag))
            call.invite = None

    def _end(self, call: _Call, reason: str) -> None:
        if call.state == _ENDED:
            return
        call.state = _ENDED
        call.ok = None
        for handle in (call.retransmit, call.answer_timer, call.deadline):
            if handle is not None:
                handle.cancel()
        call.retransmit = call.answer_timer = call.deadline = None
        packets = call.packets
        self._echoed += packets
        if call.media is not None:
            call.media.close()
            call.media = None
            call.packets_before = packets
        self._calls.pop(call.key, None)
        self._emit("info", "echo_call_end", call_id=call.call_id, reason=reason, packets=packets)

    # --------------------------------------------------------------- sending

    def _reply(
        self,
        entry: _Entry,
        status: int,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, HeaderValue]] = (),
    ) -> None:
        request = entry.tx.request
        response = self._response(request, status, to_tag, headers, reason)
        self._send_response(entry, response)

    def _response(
        self,
        request: Request,
        status: int,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, HeaderValue]] = (),
        reason: str | None = None,
    ) -> Response:
        if to_tag is None and status > 100 and request.to.tag is None:
            to_tag = secrets.token_hex(6)  # §8.2.6.2: a response gets a To tag
        extra = [("Server", SERVER), *headers]
        return make_response(request, status, reason, to_tag=to_tag, headers=extra)

    def _send_response(self, entry: _Entry, response: Response) -> None:
        tx = entry.tx
        assert not isinstance(tx, NonInviteClientTransaction)
        self._run(entry, tx.send_response(response, self._now()))

    def _dialog_headers(self, request: Request) -> list[tuple[str, HeaderValue]]:
        """Headers of a dialog-creating response: Contact, and the Record-Route copied
        in order (§12.1.1)."""
        headers: list[tuple[str, HeaderValue]] = [("Contact", self._contact())]
        headers += [("Record-Route", rr) for rr in request.headers.get_all("Record-Route")]
        headers += [("Allow", ALLOW), ("Server", SERVER)]
        return headers

    def _options(self) -> list[tuple[str, HeaderValue]]:
        """§11.2: what an OPTIONS answer says about us."""
        return [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en")]

    def _contact(self) -> str:
        return f"<sip:echo@{self._hostport()}>"

    def _hostport(self) -> str:
        host, port = self.sip_address
        if host in ("0.0.0.0", "::"):
            host = self._config.rtp_address
        return f"{format_host(host)}:{port}"

    def _sendto(self, data: bytes, addr: _Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    # -------------------------------------------------------- transaction glue

    def _run(self, entry: _Entry, actions: list[Any]) -> None:
        """Carry out a transaction's actions, in order."""
        for action in actions:
            if isinstance(action, Send):
                self._sendto(bytes(action.message), entry.addr)
            elif isinstance(action, StartTimer):
                old = entry.timers.pop(action.name, None)
                if old is not None:
                    old.cancel()
                entry.timers[action.name] = self._loop().call_later(
                    action.delay, self._fire, entry, action.name
                )
            elif isinstance(action, CancelTimer):
                handle = entry.timers.pop(action.name, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(action, DeliverToTU):
                if isinstance(action.message, Request):
                    self._on_tu_request(entry, action.message)
                # Responses to our BYE need nothing: the call is already over.
            elif isinstance(action, Terminated):
                entry.cancel_timers()
                table = (
                    self._client
                    if isinstance(entry.tx, NonInviteClientTransaction)
                    else self._server
                )
                if table.get(entry.tx.key) is entry:
                    del table[entry.tx.key]
            # TimeoutToTU, TransportErrorToTU: nothing to undo on UDP (§17.2.4).

    def _fire(self, entry: _Entry, name: Any) -> None:
        entry.timers.pop(name, None)
        try:
            self._run(entry, entry.tx.timer_fired(name, self._now()))
        except Exception as exc:
            self._emit("error", "echo_error", error=repr(exc))

    # ------------------------------------------------------------------ misc

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _now(self) -> float:
        return self._loop().time()

    def _bad_message(self, reason: str, addr: _Addr) -> None:
        # A peer can send garbage at will: log the 1st, 2nd, 4th, 8th ... only.
        self._bad += 1
        if self._bad & (self._bad - 1) == 0:
            self._emit(
                "warning", "echo_bad_message", reason=reason, source=addr[0], count=self._bad
            )

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        if self._log_fn is not None:
            self._log_fn(level, event, **fields)


def _warning(code: int, text: str) -> tuple[str, str]:
    """A Warning header (RFC 3261 §20.43), e.g. 304 "Media type not available"."""
    return ("Warning", f'{code} sipedge-echo "{text}"')
