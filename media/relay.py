"""The media relay's Python path: sessions, legs, and the per-packet forwarding loop.

A :class:`MediaSession` per call holds two :class:`Leg` objects, ``"offer"`` (the
offerer's side) and ``"answer"``.  Each leg owns local sockets from the
:class:`~media.ports.PortPool` and is also the forwarding-table entry the C data
plane will read (issue 7): per leg, the sockets, the peer leg, the source latches
(what is accepted, and where to send), the crypto transforms, the counters and the
time of the last packet.  Python writes these fields on offer, answer, re-INVITE,
latching and delete; :func:`route` is the loop body that reads them.

The packet path (:func:`route`), one step per line, every failure a counted drop:

1. demultiplex by the first byte (RFC 7983 §7): STUN and DTLS are punted (to the
   leg's :class:`media.webrtc.WebRtcLeg` on a "dtls-srtp" leg, else to the
   ``on_control`` callback), anything else that is not RTP is dropped;
   RTP versus RTCP by the second byte when the leg multiplexes (RFC 5761 §4);
2. parse the fixed header (RTP or RTCP, :mod:`media.rtp`); a "dtls-srtp" leg whose
   handshake has not given it keys drops here (``dtls_pending``);
3. check the source against the leg's latch (:mod:`media.latching`);
4. RTCP only: the leg's RTCP token bucket (an RTCP flood is dropped);
5. unprotect with the leg's inbound transform (SRTP/SRTCP → RTP/RTCP);
6. latch to a new source that has just proved itself;
7. look up the peer leg's destination (its latched, else signalled, address);
8. protect with the peer's outbound transform (RTP/RTCP → SRTP/SRTCP); nothing goes
   to a "dtls-srtp" peer before its keys (``dtls_pending``: never plain RTP to it);
9. count, and send from the peer leg's socket.

Crypto transforms are duck-typed (:class:`CryptoTransform`), one per leg and
direction; ``None`` is plain RTP.  An exception from ``unprotect_*`` is an
authentication failure, or a replay when its ``reason`` (media.srtp), type or text
says "replay" (:func:`crypto_drop_reason`).

A "dtls-srtp" leg (:meth:`Leg.enable_webrtc`) multiplexes RTCP, answers ICE-lite checks,
latches where the peer's ICE agent nominated, and gets its SRTP transforms from the DTLS
handshake (:meth:`MediaRelay.webrtc_datagram`); :meth:`MediaRelay.handle_timers`, run
every 100 ms by a task while such legs exist, retransmits lost handshake flights.  Its
events (nominated, handshake done, failed) go to ``on_webrtc_event``; a failed handshake
leaves the leg without keys, so its media is dropped and the call's media timeout ends it.

Nothing the network sends raises into the event loop: every datagram ends as
forwarded, punted or dropped with a reason, so ``received == packets_in + punted +
sum(drops)`` per leg.  Drops are logged at most once per reason per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from media import relay_plane
from media.dtls import DtlsFailed, HandshakeDone
from media.fastpath import FastPath, Punted
from media.latching import Address, DropReason, Latch, LatchMode, Verdict
from media.ports import PortAllocation, PortPool
from media.rtp import PacketKind, RtpError, classify, rtcp_ssrc, rtp_ssrc
from media.srtp import Context
from media.webrtc import Nominated, Outgoing, WebRtcEvent, WebRtcLeg

try:
    from media import _srtp as _c_srtp
except ImportError:  # pragma: no cover - a build without the C extension
    _c_srtp = None  # type: ignore[assignment]

LEG_NAMES: Final = ("offer", "answer")
_PEER: Final = {"offer": "answer", "answer": "offer"}


class CryptoTransform(Protocol):
    """One direction of one leg's SRTP: raises on a bad tag or a replay."""

    def protect_rtp(self, packet: bytes) -> bytes: ...
    def unprotect_rtp(self, packet: bytes) -> bytes: ...
    def protect_rtcp(self, packet: bytes) -> bytes: ...
    def unprotect_rtcp(self, packet: bytes) -> bytes: ...


class LogFn(Protocol):
    def __call__(self, level: str, event: str, /, **fields: Any) -> None: ...


class Sender(Protocol):
    """Where a leg sends from: its asyncio transport, or on the fast path its socket
    (:class:`media.relay_plane.SocketSender`)."""

    def sendto(self, data: bytes, addr: Any, /) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...


# (leg, kind, datagram, source): STUN and DTLS, for the ICE and DTLS layers.
ControlHandler = Callable[["Leg", PacketKind, bytes, Address], None]
# What route() hands the socket glue: send `payload` to `destination` from `transport`.
Forwarded = tuple[Sender, bytes, Address]
# (leg, event): ICE nomination, DTLS handshake done or failed, for the controller's log.
WebRtcEventHandler = Callable[["Leg", WebRtcEvent], None]
WEBRTC_TICK: Final = 0.1  # seconds between DTLS retransmission timer checks
PLANE_LOG_TICK: Final = 1.0  # seconds between looks at the fast path's drop counters


# ``reason`` of media.srtp.SrtpError; other transforms (pylibsrtp) are read by text.
_CRYPTO_REASONS: Final = {
    "replay": DropReason.REPLAY,
    "short": DropReason.TOO_SHORT,
    "format": DropReason.MALFORMED,
}


def crypto_drop_reason(exc: BaseException) -> DropReason:
    """The drop reason for an exception of an ``unprotect_*`` call: its ``reason``
    attribute when it has one, else replay when its type or text says so, else
    auth_failed."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return _CRYPTO_REASONS.get(reason, DropReason.AUTH_FAILED)
    text = f"{type(exc).__name__} {exc}".lower()
    return DropReason.REPLAY if "replay" in text else DropReason.AUTH_FAILED


class LegCounters:
    """Per-leg counters.  ``*_in``: accepted from this leg's endpoint and forwarded;
    ``*_out``: sent to this leg's endpoint; ``drops``: packets received on this leg
    and dropped, by reason."""

    __slots__ = (
        "received",
        "packets_in",
        "bytes_in",
        "packets_out",
        "bytes_out",
        "rtcp_in",
        "rtcp_out",
        "punted",
        "send_errors",
        "drops",
    )

    def __init__(self) -> None:
        self.received = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.punted = 0
        self.send_errors = 0
        # By DropReason; the data plane adds its own (latching.PLANE_DROP_REASONS).
        self.drops: dict[str, int] = dict.fromkeys(DropReason, 0)

    @property
    def auth_failures(self) -> int:
        return self.drops[DropReason.AUTH_FAILED]

    @property
    def replays(self) -> int:
        return self.drops[DropReason.REPLAY]

    def as_dict(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "drops"}
        fields["drops"] = {str(reason): n for reason, n in self.drops.items()}
        return fields

    def add(self, other: LegCounters) -> None:
        for name in self.__slots__:
            if name != "drops":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n


class Leg:
    """One side of a call: local sockets, the endpoint's address, latches, crypto.

    ``inbound`` unprotects what this leg's endpoint sends; ``outbound`` protects
    what the relay sends to it.  ``last_packet`` is the relay clock's time of the
    last packet accepted from the endpoint (``None`` before the first).

    On the fast path the leg is also an entry of the C plane (``handle``): its
    ``counters``, ``last_packet`` and latched SSRCs are Python's and the plane's
    together (:mod:`media.relay_plane`).
    """

    __slots__ = (
        "name",
        "session",
        "ports",
        "rtcp_mux",
        "remote_mux",
        "_rtp_latch",
        "_rtcp_latch",
        "inbound",
        "outbound",
        "peer",
        "own_counters",
        "_last_packet",
        "handle",
        "offloaded",
        "sip_source",
        "rtp_transport",
        "rtcp_transport",
        "rtcp_tokens",
        "rtcp_stamp",
        "webrtc",
        "_closed",
    )

    def __init__(
        self, name: str, session: MediaSession, ports: PortAllocation, latch: LatchMode
    ) -> None:
        self.name = name
        self.session = session
        self.ports = ports
        self.rtcp_mux = ports.rtcp_mux  # RTCP is received on the RTP port
        self.remote_mux = ports.rtcp_mux  # the endpoint takes RTCP on its RTP port
        self._rtp_latch = Latch(latch)
        self._rtcp_latch = Latch(latch)
        self.inbound: CryptoTransform | None = None
        self.outbound: CryptoTransform | None = None
        self.peer: Leg | None = None
        self.own_counters = LegCounters()  # what Python counted (all, on its path)
        self._last_packet: float | None = None
        self.handle: int | None = None  # the fast path's table entry
        self.offloaded = False  # the plane forwards this leg's media (relay_plane)
        self.sip_source: str | None = None  # the IP the endpoint's SIP came from
        # Set once the asyncio endpoints exist; with rtcp-mux both are the RTP one.
        self.rtp_transport: Sender | None = None
        self.rtcp_transport: Sender | None = None
        self.rtcp_tokens = float(session.relay.rtcp_burst)
        self.rtcp_stamp = 0.0
        self.webrtc: WebRtcLeg | None = None  # the "dtls-srtp" profile
        self._closed: list[asyncio.Future[None]] = []

    # ---------------------------------------------------------------- state

    @property
    def counters(self) -> LegCounters:
        """The leg's counters: Python's, plus the plane's on the fast path."""
        fast, handle = self.session.relay.fast_path, self.handle
        if fast is None or handle is None:
            return self.own_counters
        total = LegCounters()
        total.add(self.own_counters)
        relay_plane.add_plane_counters(total, fast.counters(handle))
        return total

    @property
    def last_packet(self) -> float | None:
        last = self._last_packet
        fast, handle = self.session.relay.fast_path, self.handle
        if fast is not None and handle is not None:
            plane = fast.counters(handle).last_rx
            if plane is not None and (last is None or plane > last):
                return plane
        return last

    @last_packet.setter
    def last_packet(self, value: float | None) -> None:
        self._last_packet = value

    @property
    def rtp_latch(self) -> Latch:
        """The RTP source latch; on the fast path its SSRC follows what C accepted."""
        if self.offloaded:
            self.pull_ssrcs()
        return self._rtp_latch

    @property
    def rtcp_latch(self) -> Latch:
        if self.offloaded:
            self.pull_ssrcs()
        return self._rtcp_latch

    @property
    def latches(self) -> tuple[Latch, Latch]:
        """(RTP, RTCP) latches as Python last wrote them."""
        return self._rtp_latch, self._rtcp_latch

    def pull_ssrcs(self) -> None:
        """The SSRCs the plane accepted from the latched sources, into the latches
        (:meth:`Latch.follow`: the plain-RTP relatch proof follows a restarted stream)."""
        fast, handle = self.session.relay.fast_path, self.handle
        if fast is None or handle is None:
            return
        rtp, rtcp = fast.ssrcs(handle)
        if rtp is not None and rtp != self._rtp_latch.ssrc:
            self._rtp_latch.follow(rtp)
        if rtcp is not None and rtcp != self._rtcp_latch.ssrc:
            self._rtcp_latch.follow(rtcp)

    # ---------------------------------------------------------------- control

    @property
    def profile(self) -> str:
        """The leg's media profile: "dtls-srtp", "srtp" (SDES keys set) or "rtp"."""
        if self.webrtc is not None:
            return "dtls-srtp"
        return "srtp" if self.inbound is not None or self.outbound is not None else "rtp"

    def enable_webrtc(self, webrtc: WebRtcLeg | None = None) -> WebRtcLeg:
        """Make this a "dtls-srtp" leg (idempotent): ICE-lite and DTLS on its port, SRTP
        from the handshake.  rtcp-mux is required (RFC 8842 §5.1, RFC 8843): the leg
        must have been allocated with it."""
        if self.webrtc is None:
            if not self.rtcp_mux:
                raise ValueError("a dtls-srtp leg needs rtcp-mux")
            self.webrtc = webrtc or WebRtcLeg()
            self.inbound = self.outbound = None
            self.session.relay.track_webrtc(self)
            relay_plane.sync(self)
        return self.webrtc

    @property
    def local_host(self) -> str:
        return self.ports.host

    @property
    def local_rtp_port(self) -> int:
        return self.ports.rtp_port

    @property
    def local_rtcp_port(self) -> int:
        """The port RTCP arrives on: the RTP port with rtcp-mux, else the next one."""
        return self.ports.rtp_port if self.rtcp_mux else self.ports.rtcp_port

    def set_remote(
        self, ip: str, rtp_port: int, rtcp_port: int | None = None, *, sip_source: str | None = None
    ) -> None:
        """The endpoint's address from SDP (c= and m=, a=rtcp), again on re-INVITE.

        ``rtcp_port`` defaults to ``rtp_port + 1`` (RFC 3550 §11), or ``rtp_port``
        when this leg multiplexes; an explicit one wins (an endpoint that stopped
        multiplexing while this leg could not, see :meth:`set_rtcp_mux`).
        ``sip_source``: the IP the endpoint's SIP came from, also trusted as proof
        for plain RTP (a NATed phone names its private address).  A changed address
        unlatches; port 0 (a disabled stream) clears the remote.  Raise ValueError
        for anything but an IP literal of the relay's family, or a port outside
        1-65535.
        """
        if rtp_port == 0:
            self.clear_remote()
            return
        if ipaddress.ip_address(ip).version != ipaddress.ip_address(self.local_host).version:
            raise ValueError(f"remote {ip} is not of the relay address family ({self.local_host})")
        for port in (rtp_port, rtcp_port):
            if port is not None and not 0 < port <= 65535:
                raise ValueError(f"port {port} out of range")
        extra = (sip_source,) if sip_source else ()
        self.sip_source = sip_source or None
        self.rtp_latch.set_signalled(ip, rtp_port, extra)
        if rtcp_port is None:
            rtcp_port = rtp_port if self.rtcp_mux else rtp_port + 1
        self.remote_mux = rtcp_port == rtp_port
        self.rtcp_latch.set_signalled(ip, rtcp_port, extra)
        self._keep_nomination()
        relay_plane.sync(self)

    def clear_remote(self) -> None:
        self.sip_source = None
        self.rtp_latch.clear()
        self.rtcp_latch.clear()
        self._keep_nomination()
        relay_plane.sync(self)

    def _keep_nomination(self) -> None:
        # An answer applied after the browser's ICE agent nominated (it checks as soon
        # as it has our offer) must not unlatch what the nomination proved.
        webrtc = self.webrtc
        if webrtc is not None and webrtc.ice.nominated is not None:
            host, port = webrtc.ice.nominated
            self.rtp_latch.nominate(host, port, self.session.relay.clock())

    def set_crypto(self, inbound: CryptoTransform | None, outbound: CryptoTransform | None) -> None:
        """The SRTP transforms of this leg (``None``: plain RTP that way).  On the fast
        path a :class:`media._srtp.Context` given here belongs to the plane until it is
        replaced: nothing else may call it (:mod:`media.relay_plane`)."""
        self.inbound = inbound
        self.outbound = outbound
        relay_plane.sync(self)

    @property
    def rtp_destination(self) -> Address | None:
        return self._rtp_latch.destination

    @property
    def rtcp_destination(self) -> Address | None:
        """Latched RTCP source; with rtcp-mux, else the latched RTP source (an
        endpoint that sends no RTCP is still behind the NAT its RTP proved); else
        the signalled RTCP address."""
        latch = self._rtcp_latch
        if latch.latched is not None:
            return latch.latched
        if self.remote_mux and self._rtp_latch.latched is not None:
            return self._rtp_latch.latched
        return latch.signalled

    async def set_rtcp_mux(self, mux: bool) -> bool:
        """Switch RTCP multiplexing (RFC 5761) for a re-offer that turned it on or off;
        False when it stays on because the RTCP port cannot be bound.

        On: RTCP comes and goes on the RTP port; the RTCP socket is closed, its port
        stays reserved with the pair (:mod:`media.ports`).  Off: that reserved odd port
        is bound again.  Should something outside the pool hold it, the leg keeps
        multiplexing: its SDP then names the RTP port in ``a=rtcp`` without
        ``a=rtcp-mux`` (RFC 3605), the endpoint's RTCP arrives there and is told from
        RTP by its packet type (RFC 5761 §4), and RTCP to the endpoint goes to the port
        its SDP gave (:meth:`set_remote` with an explicit ``rtcp_port``).
        """
        if mux == self.rtcp_mux:
            return True
        if mux:
            old = self.rtcp_transport
            self.rtcp_mux = True
            self.rtcp_transport = self.rtp_transport
            self._replug()  # the plane lets go of the RTCP socket before it closes
            if old is not None and old is not self.rtp_transport:
                old.close()
            return True
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR, as in the pool: a port another socket holds must fail.
            sock.bind((self.local_host, self.ports.rtcp_port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return False
        if self.handle is not None:
            self.rtcp_transport = relay_plane.SocketSender(sock)
            self.rtcp_mux = False
            self._replug()
            return True
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _LegSocket(self, True), sock=sock
        )
        self.rtcp_transport = transport
        self.rtcp_mux = False
        return True

    def send(self, data: bytes, destination: Address, rtcp: bool = False) -> None:
        """Send from this leg's RTP (or RTCP) socket: for STUN answers and the like."""
        transport = self.rtcp_transport if rtcp else self.rtp_transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, destination)

    def stats(self) -> dict[str, Any]:
        webrtc = self.webrtc
        extra: dict[str, Any] = {}
        if webrtc is not None:
            extra["webrtc"] = {
                "dtls_state": webrtc.dtls.state,
                "dtls_role": webrtc.dtls.role,
                "ice_nominated": webrtc.ice.nominated,
                "handshake_seconds": webrtc.dtls.handshake_seconds,
                "ice": dict(webrtc.ice.counters),
                "dtls": dict(webrtc.dtls.counters),
                **webrtc.counters,
            }
        return {
            "profile": self.profile,
            "local_rtp_port": self.local_rtp_port,
            "local_rtcp_port": self.local_rtcp_port,
            "rtcp_mux": self.rtcp_mux,
            "srtp_in": self.inbound is not None,
            "srtp_out": self.outbound is not None,
            "rtp": self.rtp_latch.snapshot(),
            "rtcp": self.rtcp_latch.snapshot(),
            "last_packet": self.last_packet,
            **self.counters.as_dict(),
            **extra,
        }

    # ---------------------------------------------------------------- per packet

    def drop(self, reason: str, source: Address) -> None:
        """Count and log (rate-limited) a drop: a :class:`DropReason`, or a reason of
        the data plane's."""
        drops = self.own_counters.drops
        drops[reason] = drops.get(reason, 0) + 1
        self.session.relay.log_drop(self, reason, source)

    def take_rtcp_token(self, now: float) -> bool:
        relay = self.session.relay
        tokens = self.rtcp_tokens + (now - self.rtcp_stamp) * relay.rtcp_rate
        self.rtcp_stamp = now
        if tokens > relay.rtcp_burst:
            tokens = float(relay.rtcp_burst)
        if tokens < 1.0:
            self.rtcp_tokens = tokens
            return False
        self.rtcp_tokens = tokens - 1.0
        return True

    # ---------------------------------------------------------------- sockets

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        relay = self.session.relay
        if relay.fast_path is not None:
            # The plane reads the sockets (it keeps a dup() of each); Python sends on them.
            self.rtp_transport = relay_plane.SocketSender(self.ports.rtp_socket)
            self.rtcp_transport = self.rtp_transport
            if self.ports.rtcp_socket is not None:
                self.rtcp_transport = relay_plane.SocketSender(self.ports.rtcp_socket)
            relay.attach(loop)
            self._plug()
            return
        rtp_sock = self.ports.rtp_socket
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _LegSocket(self, False), sock=rtp_sock
        )
        self.rtp_transport = transport
        self.rtcp_transport = self.rtp_transport
        if self.ports.rtcp_socket is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _LegSocket(self, True), sock=self.ports.rtcp_socket
            )
            self.rtcp_transport = transport

    def _plug(self) -> None:
        """Into the plane's table, with the current sockets, then written (sync)."""
        relay = self.session.relay
        assert relay.fast_path is not None and isinstance(
            self.rtp_transport, relay_plane.SocketSender
        )
        rtcp = self.rtcp_transport
        rtcp_sock = None
        if not self.rtcp_mux and isinstance(rtcp, relay_plane.SocketSender):
            rtcp_sock = rtcp.sock
        self.handle = relay.fast_path.add_leg(self.rtp_transport.sock, rtcp_sock, mux=self.rtcp_mux)
        relay.legs_by_handle[self.handle] = self
        relay_plane.sync(self)

    def _unplug(self) -> None:
        """Out of the plane's table; its final counters and clock into Python's."""
        relay = self.session.relay
        handle = self.handle
        if relay.fast_path is None or handle is None:
            return
        self.pull_ssrcs()
        relay.log_plane_drops(self)  # the last of them, while the sources are readable
        relay.plane_drops_logged.pop(handle, None)
        final = relay.fast_path.remove_leg(handle)
        self.handle = None
        self.offloaded = False
        relay_plane.add_plane_counters(self.own_counters, final)
        if final.last_rx is not None and (self._last_packet or 0.0) < final.last_rx:
            self._last_packet = final.last_rx
        del relay.legs_by_handle[handle]
        relay.drain_punted()  # before the handle can be another leg's

    def _replug(self) -> None:
        """New sockets (rtcp-mux switched): out of the plane and in again."""
        if self.handle is not None:
            self._unplug()
            self._plug()

    async def _close(self) -> None:
        self._unplug()
        for transport in {self.rtp_transport, self.rtcp_transport}:
            if transport is not None:
                transport.close()
        if self._closed:
            # The sockets close on a later loop turn; wait so that the ports are
            # really free when they leave quarantine.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._closed), 1.0)


def route(
    leg: Leg, on_rtcp_port: bool, data: bytes, source: Address, now: float
) -> Forwarded | None:
    """The per-packet path: a datagram from ``source`` on one of ``leg``'s sockets.

    Returns what to send, or ``None`` when the packet was punted or dropped (counted
    either way).  This is the loop body the C data plane replaces (issue 7).
    """
    counters = leg.own_counters
    counters.received += 1
    host, port = source[0], source[1]

    # 1. Demultiplex: RFC 7983 §7 by the first byte, RFC 5761 §4 by the second.
    kind = classify(data)
    if kind is PacketKind.STUN or kind is PacketKind.DTLS:
        counters.punted += 1
        leg.session.relay.punt(leg, kind, data, (host, port))
        return None
    if kind is PacketKind.OTHER:
        leg.drop(DropReason.NOT_RTP if data else DropReason.TOO_SHORT, source)
        return None
    # Without rtcp-mux every RTP-range datagram on the RTP port is RTP (payload
    # types 64-95 are legal there), and everything on the RTCP port is RTCP.
    rtcp = on_rtcp_port or (leg.rtcp_mux and kind is PacketKind.RTCP)

    # 2. Parse the fixed header; its SSRC is the latch's plain-RTP proof.
    try:
        ssrc = rtcp_ssrc(data) if rtcp else rtp_ssrc(data)
    except RtpError as exc:
        leg.drop(DropReason(exc.reason), source)
        return None

    inbound = leg.inbound
    if inbound is None and leg.webrtc is not None:
        leg.drop(DropReason.DTLS_PENDING, source)
        return None

    # 3. Source check.
    latch = leg.latches[1] if rtcp else leg.latches[0]
    verdict = latch.check(host, port, ssrc, inbound is not None)
    if verdict is Verdict.DROP:
        leg.drop(DropReason.UNKNOWN_SOURCE, source)
        return None

    # 4. RTCP rate (RFC 3550 §6.2 keeps RTCP to a few percent of the session).
    if rtcp and not leg.take_rtcp_token(now):
        leg.drop(DropReason.RTCP_FLOOD, source)
        return None

    # 5. Decrypt.
    size = len(data)
    if inbound is not None:
        try:
            data = inbound.unprotect_rtcp(data) if rtcp else inbound.unprotect_rtp(data)
        except Exception as exc:
            # A stranger that fails to prove itself to a latched leg is just that.
            if verdict is Verdict.CANDIDATE and latch.latched is not None:
                leg.drop(DropReason.UNKNOWN_SOURCE, source)
            else:
                leg.drop(crypto_drop_reason(exc), source)
            return None

    # 6. Latch to a source that has proved itself.
    if verdict is Verdict.CANDIDATE:
        relatch = latch.latched is not None
        latch.confirm(host, port, ssrc, now)
        leg.session.relay.log_latch(leg, rtcp, relatch, source, ssrc)
    elif ssrc != latch.ssrc:
        latch.follow(ssrc)
    leg.last_packet = now

    # 7. Destination: the peer leg's latched, else signalled, address.
    peer = leg.peer
    destination = None
    if peer is not None:
        destination = peer.rtcp_destination if rtcp else peer.rtp_destination
    if peer is None or destination is None:
        leg.drop(DropReason.NO_DESTINATION, source)
        return None
    transport = peer.rtcp_transport if rtcp else peer.rtp_transport
    if transport is None:
        leg.drop(DropReason.NO_DESTINATION, source)
        return None

    # 8. Encrypt for the peer.
    outbound = peer.outbound
    if outbound is None and peer.webrtc is not None:
        leg.drop(DropReason.DTLS_PENDING, source)
        return None
    if outbound is not None:
        try:
            data = outbound.protect_rtcp(data) if rtcp else outbound.protect_rtp(data)
        except Exception:
            leg.drop(DropReason.PROTECT_FAILED, source)
            return None

    # 9. Count; the caller sends.
    counters.packets_in += 1
    counters.bytes_in += size
    out = peer.own_counters
    out.packets_out += 1
    out.bytes_out += len(data)
    if rtcp:
        counters.rtcp_in += 1
        out.rtcp_out += 1
    return transport, data, destination


class _LegSocket(asyncio.DatagramProtocol):
    """The asyncio glue of one leg socket: hands each datagram to :func:`route`."""

    def __init__(self, leg: Leg, rtcp: bool) -> None:
        self.leg = leg
        self.rtcp = rtcp
        self.clock = leg.session.relay.clock
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        leg._closed.append(self.closed)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            forwarded = route(self.leg, self.rtcp, data, addr, self.clock())
        except Exception as exc:  # a bug, not the network's fault: never into the loop
            self.leg.own_counters.drops[DropReason.INTERNAL_ERROR] += 1
            with contextlib.suppress(Exception):
                self.leg.session.relay.log_error(self.leg, exc)
            return
        if forwarded is not None:
            transport, payload, destination = forwarded
            try:
                transport.sendto(payload, destination)
            except (OSError, ValueError, RuntimeError):
                self.leg.own_counters.send_errors += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for an earlier send: the endpoint is not there yet.
        self.leg.own_counters.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class MediaSession:
    """The media of one call: an ``"offer"`` leg and an ``"answer"`` leg.

    ``on_hold`` (set by the proxy from the SDP direction attributes) excludes the
    call from the media timeout; leaving hold restarts the timeout's clock.
    """

    def __init__(self, relay: MediaRelay, call_id: str) -> None:
        self.relay = relay
        self.call_id = call_id
        self.legs: dict[str, Leg] = {}
        self.created_at = relay.clock()
        self._on_hold = False
        self._hold_changed_at = self.created_at
        self.closed = False

    async def add_leg(
        self, name: str, rtcp_mux: bool = False, latch: LatchMode = LatchMode.NAT
    ) -> Leg:
        """Allocate and bind the leg's ports; raise PortsExhausted when none are
        free.  The two legs are each other's peer."""
        if name not in LEG_NAMES:
            raise ValueError(f"leg name must be one of {LEG_NAMES}, not {name!r}")
        if name in self.legs:
            raise ValueError(f"session {self.call_id!r} already has an {name!r} leg")
        if self.closed:
            raise RuntimeError(f"session {self.call_id!r} is deleted")
        allocation = self.relay.pool.allocate(rtcp_mux=rtcp_mux)
        leg = Leg(name, self, allocation, latch)
        try:
            await leg._open(asyncio.get_running_loop())
        except BaseException:
            await leg._close()
            allocation.close()
            self.relay.pool.release(allocation)
            raise
        self.legs[name] = leg
        peer = self.legs.get(_PEER[name])
        if peer is not None:
            leg.peer, peer.peer = peer, leg
            relay_plane.sync(leg)
        return leg

    def leg(self, name: str) -> Leg | None:
        return self.legs.get(name)

    @property
    def on_hold(self) -> bool:
        return self._on_hold

    @on_hold.setter
    def on_hold(self, value: bool) -> None:
        if value != self._on_hold:
            self._on_hold = value
            self._hold_changed_at = self.relay.clock()

    @property
    def last_packet(self) -> float | None:
        times = [leg.last_packet for leg in self.legs.values() if leg.last_packet is not None]
        return max(times) if times else None

    def media_timeout(self, now: float, timeout: float) -> bool:
        """True when no packet came from either side for ``timeout`` seconds (since
        the session began or left hold, if later); never while on hold.  ``now``
        is on the relay's clock."""
        if self._on_hold or self.closed:
            return False
        last = max(self.created_at, self._hold_changed_at, self.last_packet or 0.0)
        return now - last >= timeout

    def stats(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "on_hold": self._on_hold,
            "legs": {name: leg.stats() for name, leg in self.legs.items()},
        }

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for leg in self.legs.values():
            if leg.webrtc is not None:
                self.relay.untrack_webrtc(leg)
                for data, destination in leg.webrtc.close():  # close_notify
                    leg.send(data, destination)
            await leg._close()
            self.relay.pool.release(leg.ports)
            self.relay.retire(leg.own_counters)  # the plane's folded in by _close


class MediaRelay:
    """The relay: a port pool on ``host`` and the media sessions by call id.

    ``on_control(leg, kind, data, source)`` receives STUN and DTLS datagrams;
    without it they are counted as punted and discarded.  ``rtcp_rate`` and
    ``rtcp_burst`` bound RTCP per leg (packets per second, bucket size).
    ``clock`` is the monotonic clock the packet path stamps with; pass its time as
    ``now`` to :meth:`MediaSession.media_timeout`.

    ``fast_path``: the C data plane (:mod:`media.fastpath`, started by whoever made
    it, who also closes it after the relay) forwards the media of the legs, and
    punts to this relay what Python decides (:mod:`media.relay_plane`); its clock and
    RTCP limits must be the relay's.  ``None``: every packet goes through
    :func:`route` here, the reference path.
    """

    def __init__(
        self,
        host: str,
        port_range: tuple[int, int] = (10000, 60000),
        quarantine: float = 30.0,
        log: LogFn | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_control: ControlHandler | None = None,
        rtcp_rate: float = 100.0,
        rtcp_burst: int = 200,
        pool: PortPool | None = None,
        on_webrtc_event: WebRtcEventHandler | None = None,
        fast_path: FastPath | None = None,
    ) -> None:
        self.host = host
        self.clock = clock
        self.pool = pool or PortPool(host, port_range, quarantine, clock=clock)
        self.log = log
        self.on_control = on_control
        self.rtcp_rate = rtcp_rate
        self.rtcp_burst = rtcp_burst
        self.sessions: dict[str, MediaSession] = {}
        self.on_webrtc_event = on_webrtc_event
        self._webrtc_legs: set[Leg] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._retired = LegCounters()  # counters of deleted sessions, for totals
        self._log_window: dict[str, tuple[float, int]] = {}  # key -> (window start, suppressed)
        self.fast_path = fast_path
        self.legs_by_handle: dict[int, Leg] = {}  # the fast path's table entries
        self.plane_drops_logged: dict[int, dict[str, int]] = {}  # handle -> drops seen
        self._attached: asyncio.AbstractEventLoop | None = None
        self._plane_logger: asyncio.Task[None] | None = None

    async def create_session(self, call_id: str) -> MediaSession:
        if call_id in self.sessions:
            raise ValueError(f"media session {call_id!r} exists")
        session = MediaSession(self, call_id)
        self.sessions[call_id] = session
        return session

    def session(self, call_id: str) -> MediaSession | None:
        return self.sessions.get(call_id)

    async def delete_session(self, call_id: str) -> bool:
        """Close the call's sockets and quarantine its ports; False if unknown."""
        session = self.sessions.pop(call_id, None)
        if session is None:
            return False
        await session.close()
        return True

    async def close(self) -> None:
        for call_id in list(self.sessions):
            await self.delete_session(call_id)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._plane_logger is not None:
            self._plane_logger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._plane_logger
            self._plane_logger = None
        if self.fast_path is not None and self._attached is not None:
            self.fast_path.detach()
            self._attached = None

    def srtp_context(self, key: bytes, salt: bytes, suite: str, direction: str) -> CryptoTransform:
        """A new SRTP context for one of this relay's legs: the C core's on the fast
        path (the plane runs it), else :class:`media.srtp.Context` (either backend)."""
        if self.fast_path is not None and _c_srtp is not None:
            return _c_srtp.Context(key, salt, suite, direction=direction)  # type: ignore[arg-type]
        return Context(key, salt, suite, direction=direction)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- fast path

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the plane's punted datagrams on ``loop`` (once; the plane starts)."""
        fast = self.fast_path
        if fast is None or self._attached is loop:
            return
        fast.start()
        fast.attach(loop, self.on_punted)
        self._attached = loop
        if self._plane_logger is not None:
            self._plane_logger.cancel()
        self._plane_logger = loop.create_task(self._log_plane())

    async def _log_plane(self) -> None:
        """The plane counts its drops; their log lines (rate-limited) come from here."""
        while True:
            await asyncio.sleep(PLANE_LOG_TICK)
            for leg in list(self.legs_by_handle.values()):
                try:
                    self.log_plane_drops(leg)
                except Exception as exc:  # a bug: logged, the logger goes on
                    self.log_error(leg, exc)

    def log_plane_drops(self, leg: Leg) -> None:
        """A ``media_drop`` line (rate-limited) per reason the plane dropped more
        datagrams for since the last look, with the source of the last of them."""
        fast, handle = self.fast_path, leg.handle
        if fast is None or handle is None or self.log is None:
            return
        drops = fast.counters(handle).drops
        seen = self.plane_drops_logged.setdefault(handle, {})
        new = [reason for reason, n in drops.items() if n > seen.get(reason, 0)]
        if new:
            sources = fast.drop_sources(handle)
            for reason in new:
                self.log_drop(leg, reason, sources.get(reason, ("?", 0)))
            seen.update(drops)

    def drain_punted(self) -> None:
        """Handle what the plane punted so far, now (a leg leaves the table)."""
        if self.fast_path is not None:
            while batch := self.fast_path.drain():
                self.on_punted(batch)

    def on_punted(self, batch: list[Punted]) -> None:
        """Datagrams the plane punted: :func:`relay_plane.route_punted` for an
        offloaded leg, :func:`route` (and a send from the peer's socket) otherwise."""
        now = self.clock()
        for punted in batch:
            leg = self.legs_by_handle.get(punted.leg)
            if leg is None:
                continue  # its leg left the table while the datagram waited
            try:
                if leg.offloaded:
                    relay_plane.route_punted(
                        leg, punted.on_rtcp_socket, punted.data, punted.source, now
                    )
                    continue
                out = route(leg, punted.on_rtcp_socket, punted.data, punted.source, now)
            except Exception as exc:  # a bug, not the network's fault: never into the loop
                leg.own_counters.drops[DropReason.INTERNAL_ERROR] += 1
                with contextlib.suppress(Exception):
                    self.log_error(leg, exc)
                continue
            if out is not None:
                sender, payload, destination = out
                try:
                    sender.sendto(payload, destination)
                except (OSError, ValueError, RuntimeError):
                    leg.own_counters.send_errors += 1

    def timed_out(self, now: float, timeout: float) -> list[str]:
        """Call ids whose media timed out (see :meth:`MediaSession.media_timeout`)."""
        return [cid for cid, s in self.sessions.items() if s.media_timeout(now, timeout)]

    def retire(self, counters: LegCounters) -> None:
        self._retired.add(counters)

    def stats(self) -> dict[str, Any]:
        """Totals since start (deleted sessions included), sessions and ports."""
        totals = LegCounters()
        totals.add(self._retired)
        legs = 0
        for session in self.sessions.values():
            for leg in session.legs.values():
                totals.add(leg.counters)
                legs += 1
        ports = self.pool.stats()
        return {
            "sessions": len(self.sessions),
            "legs": legs,
            "ports_in_use": ports.in_use,
            "ports_free": ports.free,
            "ports_quarantined": ports.quarantined,
            "port_bind_failures": ports.bind_failures,
            **totals.as_dict(),
        }

    # ---------------------------------------------------------------- callbacks

    def punt(self, leg: Leg, kind: PacketKind, data: bytes, source: Address) -> None:
        if leg.webrtc is not None:
            try:
                self.webrtc_datagram(leg, kind, data, source)
            except Exception as exc:
                leg.own_counters.punted -= 1
                leg.own_counters.drops[DropReason.INTERNAL_ERROR] += 1
                self.log_error(leg, exc)
            return
        if self.on_control is not None:
            try:
                self.on_control(leg, kind, data, source)
            except Exception as exc:
                # Counted as an internal error instead of as punted.
                leg.own_counters.punted -= 1
                leg.own_counters.drops[DropReason.INTERNAL_ERROR] += 1
                self.log_error(leg, exc)

    # ---------------------------------------------------------------- dtls-srtp legs

    def webrtc_datagram(self, leg: Leg, kind: PacketKind, data: bytes, source: Address) -> None:
        """A STUN or DTLS datagram on a "dtls-srtp" leg: answer, handshake, apply."""
        assert leg.webrtc is not None
        self.webrtc_output(leg, leg.webrtc.receive(kind, data, source, self.clock()))

    def webrtc_output(self, leg: Leg, out: Outgoing) -> None:
        """Send what the leg's ICE/DTLS produced and act on its events."""
        for payload, destination in out:
            try:
                leg.send(payload, destination)
            except (OSError, ValueError, RuntimeError):
                leg.own_counters.send_errors += 1
        webrtc = leg.webrtc
        if webrtc is None:
            return
        while (event := webrtc.next_event()) is not None:
            if isinstance(event, Nominated):
                host, port = event.address
                leg.rtp_latch.nominate(host, port, self.clock())
                relay_plane.sync(leg)
            elif isinstance(event, HandshakeDone):
                # Fresh contexts per handshake: the plane owns what it is given.
                keys = event.keys
                suite = keys.suite.name
                leg.set_crypto(
                    self.srtp_context(keys.remote_key, keys.remote_salt, suite, "inbound"),
                    self.srtp_context(keys.local_key, keys.local_salt, suite, "outbound"),
                )
            elif isinstance(event, DtlsFailed):
                leg.set_crypto(None, None)
            if self.on_webrtc_event is not None:
                try:
                    self.on_webrtc_event(leg, event)
                except Exception as exc:
                    self.log_error(leg, exc)

    def handle_timers(self, now: float) -> None:
        """DTLS retransmissions and handshake deadlines of every "dtls-srtp" leg."""
        for leg in list(self._webrtc_legs):
            if leg.webrtc is not None:
                self.webrtc_output(leg, leg.webrtc.handle_timer(now))

    def track_webrtc(self, leg: Leg) -> None:
        self._webrtc_legs.add(leg)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def untrack_webrtc(self, leg: Leg) -> None:
        self._webrtc_legs.discard(leg)

    async def _tick(self) -> None:
        while self._webrtc_legs:
            await asyncio.sleep(WEBRTC_TICK)
            try:
                self.handle_timers(self.clock())
            except Exception as exc:  # a bug: logged, the ticker goes on
                for leg in list(self._webrtc_legs)[:1]:
                    self.log_error(leg, exc)

    # ---------------------------------------------------------------- logging

    def log_limited(self, key: str, level: str, event: str, leg: Leg, **fields: Any) -> None:
        """At most one line per ``key`` per second; the next one that passes says how
        many were suppressed.  Peers trigger these at will: never a line per packet."""
        if self.log is None:
            return
        now = self.clock()
        start, suppressed = self._log_window.get(key, (-1.0, 0))
        if start >= 0 and now - start < 1.0:
            self._log_window[key] = (start, suppressed + 1)
            return
        if len(self._log_window) > 1024:
            self._log_window.clear()
        self._log_window[key] = (now, 0)
        call_id, name = leg.session.call_id, leg.name
        self.log(level, event, call_id=call_id, leg=name, suppressed=suppressed, **fields)

    def log_drop(self, leg: Leg, reason: str, source: Address) -> None:
        source_text = f"{source[0]}:{source[1]}"
        self.log_limited(
            f"drop:{reason}", "info", "media_drop", leg, reason=str(reason), source=source_text
        )

    def log_latch(self, leg: Leg, rtcp: bool, relatch: bool, source: Address, ssrc: int) -> None:
        component = "rtcp" if rtcp else "rtp"
        self.log_limited(
            f"latch:{leg.session.call_id}:{leg.name}:{component}:{relatch}",
            "info",
            "media_relatched" if relatch else "media_latched",
            leg,
            component=component,
            source=f"{source[0]}:{source[1]}",
            ssrc=f"{ssrc:08x}",
        )

    def log_error(self, leg: Leg, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.log_limited("error", "error", "media_internal_error", leg, error=error)
