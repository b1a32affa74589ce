"""The "dtls-srtp" profile of one relay leg: ICE-lite and DTLS-SRTP together, sans-I/O.

    w = WebRtcLeg()                                  # our ufrag/pwd, our fingerprint
    w.configure(setup="actpass")                     # we offer: DTLS role follows the answer
    w.set_remote(ice=("ufrag", "pwd"), fingerprints=[...], setup=Setup.ACTIVE,
                 address=("192.0.2.1", 9))           # from the peer's SDP
    out = w.receive(PacketKind.STUN, data, source, now)    # [(datagram, destination)]
    out = w.handle_timer(now)
    while (event := w.next_event()) is not None: ...        # Nominated / HandshakeDone / DtlsFailed

:class:`media.relay.Leg` owns one of these when its profile is "dtls-srtp"; the relay
hands it the STUN and DTLS datagrams of the leg (RFC 7983 demultiplexing), sends what it
returns from the leg's socket, latches the leg on :class:`Nominated` and installs the SRTP
contexts on :class:`~media.dtls.HandshakeDone`.

Rules of this file:

- DTLS roles (RFC 5763 §5, RFC 8842 §5.3): when the edge offers it writes
  ``a=setup:actpass`` and is DTLS **server** until the answer says ``passive`` (then it
  is client).  A browser answers ``active`` and, having our candidates, may start its
  handshake before its answer reaches us through SIP, so the server endpoint exists from
  the offer on.  When the peer offers ``actpass`` the edge answers ``active`` (RFC 5763
  §5 recommends it: the handshake then runs alongside the answer) and is **client**; as
  client we offer ECDSA and RSA suites, so an RSA-certificate server (baresip 1.0) works.
  An offered ``active`` makes us ``passive`` (server), ``passive`` makes us ``active``.
- Who may speak DTLS: with ICE, only a source whose Binding request verified
  (:attr:`media.stun.IceLite.verified`); without ICE on the peer's side (baresip), a
  source on the IP its SDP named.  Anything else is dropped and counted
  (``dtls_unknown_source``).  A client sends its ClientHello as soon as it knows where:
  the first verified source (ICE), else the SDP's address.
- DTLS datagrams go back to where the peer last spoke DTLS from, else the ICE selection,
  else the SDP address.
- A re-offer with the same remote fingerprint keeps the association (its SRTP keys go
  on); a new fingerprint starts a new association (RFC 8842 §5.2).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from media.dtls import DtlsEndpoint, DtlsEvent, DtlsFailed, HandshakeDone, LocalCertificate
from media.dtls import Role as DtlsRole
from media.rtp import PacketKind
from media.stun import Address, IceLite
from sip.sdp_attributes import Fingerprint, Setup

Outgoing = list[tuple[bytes, Address]]
OurSetup = Literal["actpass", "active", "passive"]

COUNTERS: Final = ("dtls_unknown_source", "dtls_before_setup", "stun_replies")


@dataclass(frozen=True, slots=True)
class Nominated:
    """The peer's ICE agent nominated ``address`` (the leg latches there)."""

    address: Address


WebRtcEvent = Nominated | HandshakeDone | DtlsFailed


def answer_setup(offered: Setup | None) -> OurSetup:
    """Our ``a=setup`` in an answer (RFC 4145 §4.1, RFC 5763 §5): passive to an offered
    active, else active.  An offer without ``a=setup`` is read as actpass, which RFC 5763
    §5 requires of a DTLS-SRTP offerer."""
    if offered is Setup.ACTIVE:
        return "passive"
    return "active"


def role_for(ours: OurSetup, theirs: Setup | None) -> DtlsRole:
    """The DTLS role from our setup and the peer's: active is the client."""
    if ours == "active":
        return "client"
    if ours == "passive":
        return "server"
    # We offered actpass: the answer decides; until it comes, a peer that talks first is
    # a client, so we are server.
    return "client" if theirs is Setup.PASSIVE else "server"


class WebRtcLeg:
    """ICE-lite + DTLS-SRTP state of one relay leg (see the module docstring)."""

    def __init__(self, certificate: LocalCertificate | None = None) -> None:
        self.ice = IceLite()
        self.certificate = certificate
        self.setup: OurSetup = "actpass"
        self.remote_setup: Setup | None = None
        self.remote_uses_ice = True
        self.remote_address: Address | None = None
        self.remote_fingerprints: list[Fingerprint] = []
        self.dtls = DtlsEndpoint("server", certificate)
        self.dtls_peer: Address | None = None  # where DTLS last came from
        self.associations = 1
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._events: deque[WebRtcEvent] = deque()

    @property
    def fingerprint(self) -> Fingerprint:
        return self.dtls.certificate.fingerprint

    @property
    def connected(self) -> bool:
        return self.dtls.state == "connected"

    # ---------------------------------------------------------------- control

    def configure(self, setup: OurSetup, now: float = 0.0) -> Outgoing:
        """Our ``a=setup`` in the SDP we send this side (offer: actpass; answer: what
        :func:`answer_setup` chose)."""
        self.setup = setup
        return self._fit_role(now)

    def set_remote(
        self,
        *,
        ice: tuple[str, str] | None,
        fingerprints: Sequence[Fingerprint],
        setup: Setup | None,
        address: Address | None,
        now: float = 0.0,
    ) -> Outgoing:
        """What the peer's latest SDP says.  Returns datagrams to send (a client that
        can now start)."""
        fingerprints = list(fingerprints)
        if self.remote_fingerprints and fingerprints != self.remote_fingerprints:
            self._new_association()
        self.remote_fingerprints = fingerprints
        self.remote_setup = setup
        self.remote_uses_ice = ice is not None
        if ice is not None:
            self.ice.set_remote(*ice)
        self.remote_address = address
        self.dtls.set_remote_fingerprints(fingerprints)
        self._collect_dtls_events()
        return self._fit_role(now)

    def close(self) -> Outgoing:
        self.dtls.close()
        return self._drain()

    # ---------------------------------------------------------------- per packet

    def receive(self, kind: PacketKind, data: bytes, source: Address, now: float) -> Outgoing:
        """A STUN or DTLS datagram from ``source``."""
        source = (source[0], source[1])
        if kind is PacketKind.STUN:
            result = self.ice.receive(data, source, now)
            out: Outgoing = []
            if result.reply is not None:
                self.counters["stun_replies"] += 1
                out.append((result.reply, source))
            if result.nominated:
                self._events.append(Nominated(source))
            if result.verdict == "answered":
                out += self._maybe_start(now)
            return out
        if not self._may_speak_dtls(source):
            self.counters["dtls_unknown_source"] += 1
            return []
        if self.dtls.role == "client" and self.dtls.state == "new":
            self.counters["dtls_before_setup"] += 1
            return []
        self.dtls_peer = source
        self.dtls.receive(data, now)
        self._collect_dtls_events()
        return self._drain()

    def handle_timer(self, now: float) -> Outgoing:
        self.dtls.handle_timer(now)
        self._collect_dtls_events()
        return self._drain()

    def next_event(self) -> WebRtcEvent | None:
        return self._events.popleft() if self._events else None

    # ---------------------------------------------------------------- internals

    def _may_speak_dtls(self, source: Address) -> bool:
        if self.remote_uses_ice:
            return self.ice.is_verified(source)
        if self.remote_address is None:
            return False
        return source[0] == self.remote_address[0] or source == self.dtls_peer

    def _destination(self) -> Address | None:
        if self.dtls_peer is not None:
            return self.dtls_peer
        if self.remote_uses_ice:
            return self.ice.selected
        return self.remote_address

    def _fit_role(self, now: float) -> Outgoing:
        role = role_for(self.setup, self.remote_setup)
        if role != self.dtls.role:
            if self.dtls.state not in ("new", "connecting") or self.dtls.counters["received"]:
                # The peer already spoke in the other role: keep what it started.
                return self._maybe_start(now)
            self.dtls = DtlsEndpoint(role, self.certificate)
            self.dtls.set_remote_fingerprints(self.remote_fingerprints)
        return self._maybe_start(now)

    def _maybe_start(self, now: float) -> Outgoing:
        if self.dtls.role == "client" and self.dtls.state == "new":
            if not self.remote_fingerprints and self.setup == "actpass":
                return []  # the answer (passive) is not applied yet
            if self._destination() is None:
                return []
            self.dtls.start(now)
        return self._drain()

    def _new_association(self) -> None:
        self.dtls.close()
        self._drain()
        self.dtls = DtlsEndpoint(role_for(self.setup, self.remote_setup), self.certificate)
        self.dtls_peer = None
        self.associations += 1

    def _collect_dtls_events(self) -> None:
        while (event := self.dtls.next_event()) is not None:
            self._events.append(event)

    def _drain(self) -> Outgoing:
        datagrams = self.dtls.datagrams_to_send()
        if not datagrams:
            return []
        destination = self._destination()
        if destination is None:
            return []
        return [(d, destination) for d in datagrams]


__all__ = [
    "DtlsEvent",
    "DtlsFailed",
    "HandshakeDone",
    "Nominated",
    "WebRtcEvent",
    "WebRtcLeg",
    "answer_setup",
    "role_for",
]
