"""The relay's legs on the C data plane (issue 7): what Python writes into the plane's
forwarding table, and the path of the datagrams the plane punts back.

:class:`media.relay.MediaRelay` with a :class:`media.fastpath.FastPath` gives each
leg's sockets to the plane instead of asyncio.  Python keeps every decision; C moves
the packets Python has decided about.

Rules of this file:

- :func:`sync` writes one pair of legs into the table after any change of what the
  plane reads: remotes and latches, crypto, the dtls-srtp profile, rtcp-mux, the
  pairing.  Per leg: its flags, its SRTP contexts, the sources it accepts media from
  (the latched ones, :mod:`media.latching`) and where media for its endpoint goes
  (:attr:`media.relay.Leg.rtp_destination`, ``rtcp_destination``).  Anything from
  another source is punted to Python, hence every first packet and every proof.  The
  destination's host also tells the plane which punts are the endpoint's own: they
  have a budget of their own that a stranger's spray cannot spend (fastpath.h).
- A pair is *offloaded* when the crypto of both its legs is the C core's
  (:class:`media._srtp.Context`, or none).  A context handed to the plane belongs to
  it: Python reaches it only through :meth:`FastPath.forward`, never directly.  Any
  other transform (another SRTP library, the pure-Python twin, a test's fake) keeps
  the pair in Python: its legs stay in the table with no source, no keys and no
  dtls-srtp flag, so every datagram is punted and :func:`media.relay.route` routes
  it whole, as on the Python path, sending from the leg's socket.  Such a pair is
  bound by the plane's punt budget like any leg (``punt_limited`` past ``[media]
  punt_rate`` datagrams a second after a burst of ``punt_burst``, by default 250 and
  400, media/fastpath.h): enough for audio, not for video; and with no destination in
  the table, its endpoint's punts share the strangers' budget.  On the relay's own
  fast path no pair stays in Python (:meth:`MediaRelay.srtp_context` gives C
  contexts).
- :func:`route_punted` is :func:`media.relay.route` for an offloaded leg: the same
  steps 1-3 (demultiplex, header, source check against the latch), then the plane's
  steps 4-8 through :meth:`FastPath.forward` (the RTCP bucket, decrypt, destination,
  encrypt, send), whose ``authenticated`` is the proof SRTP latching needs; then the
  latch, and :func:`sync` so that the next packets of that source stay in C.
- Counters and the time of the last packet are Python's and the plane's together
  (:func:`add_plane_counters`); a removed leg's final plane counters are folded into
  Python's.  The plane's clock is the relay's (``time.monotonic``, i.e.
  ``CLOCK_MONOTONIC``; a test on a fake clock sets it with :meth:`FastPath.set_clock`).
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Any, Final

from media.fastpath import FastPath, PlaneCounters
from media.latching import Address, DropReason, Verdict
from media.rtp import PacketKind, RtpError, classify, rtcp_ssrc, rtp_ssrc

if TYPE_CHECKING:
    from media.relay import Leg, LegCounters

try:
    from media import _srtp as _c_srtp
except ImportError:  # pragma: no cover - a build without the C extension
    _c_srtp = None  # type: ignore[assignment]

#: Why the fast path cannot run here, or ``None`` when it can.
UNAVAILABLE: Final[str | None] = (
    "the C extension media._srtp cannot be imported"
    if _c_srtp is None
    else "media._srtp was built without the data plane"
    if not hasattr(_c_srtp, "Plane")
    else f"the data plane needs Linux (epoll, recvmmsg), not {sys.platform}"
    if not sys.platform.startswith("linux")
    else None
)


def available() -> bool:
    """True when the C data plane can run in this process."""
    return UNAVAILABLE is None


def make_fast_path(enabled: bool, **kwargs: Any) -> FastPath | None:
    """A :class:`FastPath` (not started yet) when ``enabled`` and it can run here, else
    ``None``: the caller logs :data:`UNAVAILABLE` when it was asked for."""
    if not enabled or UNAVAILABLE is not None:
        return None
    return FastPath(**kwargs)


def c_context(transform: object) -> bool:
    """A transform the plane can run: none, or a context of the C core."""
    return transform is None or (_c_srtp is not None and isinstance(transform, _c_srtp.Context))


class SocketSender:
    """A leg socket the plane reads, as the relay sends on it (STUN answers, DTLS,
    packets Python routes): non-blocking ``sendto``, errors raised as OSError."""

    __slots__ = ("sock", "_closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._closing = False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sock.sendto(data, addr)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self.sock.close()


# ---------------------------------------------------------------- the table


def offloadable(leg: Leg) -> bool:
    """Whether the pair of ``leg`` can be forwarded in C (see the module rules)."""
    peer = leg.peer
    legs = (leg,) if peer is None else (leg, peer)
    return all(c_context(x.inbound) and c_context(x.outbound) for x in legs)


def sync(leg: Leg) -> None:
    """Write ``leg`` and its peer into the plane (no-op on the Python path)."""
    fast = leg.session.relay.fast_path
    if fast is None or leg.handle is None:
        return
    offload = offloadable(leg)
    peer = leg.peer
    _write(fast, leg, offload)
    if peer is not None and peer.handle is not None:
        _write(fast, peer, offload)
        fast.pair(leg.handle, peer.handle)
    else:
        fast.pair(leg.handle, None)


def _write(fast: FastPath, leg: Leg, offload: bool) -> None:
    handle = leg.handle
    assert handle is not None
    if leg.offloaded and not offload:
        leg.pull_ssrcs()  # the last SSRCs C saw, before the plane forgets the sources
    leg.offloaded = offload
    fast.set_flags(handle, mux=leg.rtcp_mux, webrtc=offload and leg.webrtc is not None)
    # Punts from the endpoint's SIP source use the leg's own budget (a NATed phone).
    fast.set_endpoint_host(handle, leg.sip_source)
    if not offload:
        fast.set_crypto(handle, None, None)
        fast.set_addresses(handle)
        return
    fast.set_crypto(handle, leg.inbound, leg.outbound)  # type: ignore[arg-type]
    rtp, rtcp = leg.latches
    fast.set_addresses(
        handle,
        rtp_source=rtp.latched,
        rtcp_source=rtcp.latched,
        rtp_destination=leg.rtp_destination,
        rtcp_destination=leg.rtcp_destination,
    )


def add_plane_counters(counters: LegCounters, plane: PlaneCounters) -> None:
    """Add a leg's plane counters into Python's (``to_python`` is not added: those
    datagrams are counted by the Python step that handled them)."""
    counters.received += plane.received
    counters.packets_in += plane.packets_in
    counters.bytes_in += plane.bytes_in
    counters.rtcp_in += plane.rtcp_in
    counters.packets_out += plane.packets_out
    counters.bytes_out += plane.bytes_out
    counters.rtcp_out += plane.rtcp_out
    counters.send_errors += plane.send_errors
    drops = counters.drops
    for reason, n in plane.drops.items():
        drops[reason] = drops.get(reason, 0) + n


# ---------------------------------------------------------------- punted datagrams


def route_punted(leg: Leg, on_rtcp_port: bool, data: bytes, source: Address, now: float) -> None:
    """A datagram the plane punted from an offloaded leg: :func:`media.relay.route`'s
    steps 1-3 here, 4-8 in C (:meth:`FastPath.forward`), then latching and counting."""
    relay = leg.session.relay
    fast = relay.fast_path
    handle = leg.handle
    assert fast is not None and handle is not None
    counters = leg.own_counters
    counters.received += 1
    host, port = source[0], source[1]

    # 1. Demultiplex (the plane punts STUN and DTLS, and RTP/RTCP from other sources).
    kind = classify(data)
    if kind is PacketKind.STUN or kind is PacketKind.DTLS:
        counters.punted += 1
        relay.punt(leg, kind, data, (host, port))
        return
    if kind is PacketKind.OTHER:
        leg.drop(DropReason.NOT_RTP if data else DropReason.TOO_SHORT, source)
        return
    rtcp = on_rtcp_port or (leg.rtcp_mux and kind is PacketKind.RTCP)

    # 2. The fixed header; its SSRC is the latch's plain-RTP proof.
    try:
        ssrc = rtcp_ssrc(data) if rtcp else rtp_ssrc(data)
    except RtpError as exc:
        leg.drop(DropReason(exc.reason), source)
        return
    secure = leg.inbound is not None
    if not secure and leg.webrtc is not None:
        leg.drop(DropReason.DTLS_PENDING, source)
        return

    # 3. Source check (the latch follows the SSRCs C accepted meanwhile).
    latch = leg.rtcp_latch if rtcp else leg.rtp_latch
    verdict = latch.check(host, port, ssrc, secure)
    if verdict is Verdict.DROP:
        leg.drop(DropReason.UNKNOWN_SOURCE, source)
        return

    # 4-8. RTCP rate, decrypt, destination, encrypt, send: the plane's steps.
    result = fast.forward(handle, rtcp, data)
    if not result.authenticated:
        reason: str = result.verdict
        crypto = reason not in ("rtcp_flood", "too_long")
        if crypto and verdict is Verdict.CANDIDATE and latch.latched is not None:
            reason = DropReason.UNKNOWN_SOURCE  # a stranger failing to prove itself
        leg.drop(reason, source)
        return

    # Latch to a source that has just proved itself.
    if verdict is Verdict.CANDIDATE:
        relatch = latch.latched is not None
        latch.confirm(host, port, ssrc, now)
        relay.log_latch(leg, rtcp, relatch, source, ssrc)
        sync(leg)
    elif ssrc != latch.ssrc:
        latch.follow(ssrc)
    leg.last_packet = now

    # 9. Count.
    if not (result.forwarded or result.verdict == "send_error"):
        leg.drop(result.verdict, source)
        return
    counters.packets_in += 1
    counters.bytes_in += len(data)
    peer = leg.peer
    if peer is not None:
        out = peer.own_counters
        out.packets_out += 1
        out.bytes_out += result.sent
        if rtcp:
            out.rtcp_out += 1
    if rtcp:
        counters.rtcp_in += 1
    if result.verdict == "send_error":
        counters.send_errors += 1
