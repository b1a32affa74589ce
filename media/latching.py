"""Strict source latching: which source a relay leg accepts media from (sans-I/O).

The defence against RTP bleed and injection: a relay port that forwards whatever
reaches it lets anyone who guesses the port listen to a call or speak into it.
So each leg accepts packets from one source only, and this file decides which.

Rules of this file (one :class:`Latch` per leg and socket: RTP, and RTCP unless
multiplexed):

- ``STRICT`` mode: only the address and port the SDP signalled.  Never latches.
- ``NAT`` mode: until a source has proved itself, nothing is latched; the first
  source that proves itself is latched, and afterwards only the latched source is
  accepted.  Proof is:

  - SRTP: a packet that authenticates (the relay checks with the leg's inbound key;
    only a holder of the key signalled for this leg can produce one), from any
    address: an endpoint behind NAT signals an address it does not send from.
  - plain RTP: a packet from the signalled host IP (any port: NAT rebinds ports,
    rarely hosts), whose SSRC the latch keeps.  ``hosts`` may also hold the SIP
    signalling source of the endpoint, for a phone whose SDP names its private
    address.

- Relatching (the endpoint's NAT binding changed) needs proof too: an SRTP packet
  that authenticates from the new address; for plain RTP a packet from a signalled
  host IP that carries the latched SSRC.  A stranger never relatches a leg.
- The latched SSRC follows the latched source: an accepted packet (one that passed
  the inbound transform) from the latched address with another SSRC (a restarted
  stream) updates it, through :meth:`Latch.follow`.
- A new signalled address (re-INVITE) unlatches: the next proof latches afresh.
- Time is passed in (``now``) and only recorded; nothing here reads a clock.

:meth:`Latch.check` is the per-packet question; :meth:`Latch.confirm` is called once
the packet has passed the inbound transform (for plain RTP there is none, so a
candidate is confirmed at once).  Drop reasons for every step of the relay's
packet path are the :class:`DropReason` enum.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Final

Address = tuple[str, int]


class DropReason(enum.StrEnum):
    """Why the relay dropped a packet: one counter each, per leg."""

    TOO_SHORT = "too_short"  # shorter than an RTP/RTCP header
    NOT_RTP = "not_rtp"  # not STUN/DTLS/RTP/RTCP by its first byte, or not version 2
    MALFORMED = "malformed"  # CSRC list or extension past the end
    UNKNOWN_SOURCE = "unknown_source"  # not the latched / signalled source
    AUTH_FAILED = "auth_failed"  # SRTP/SRTCP tag did not verify
    REPLAY = "replay"  # SRTP/SRTCP index seen before or too old
    RTCP_FLOOD = "rtcp_flood"  # RTCP above the leg's rate
    NO_DESTINATION = "no_destination"  # peer leg without a remote address yet
    PROTECT_FAILED = "protect_failed"  # outbound transform refused the packet
    DTLS_PENDING = "dtls_pending"  # a dtls-srtp leg without SRTP keys (yet, or any more)
    INTERNAL_ERROR = "internal_error"  # a bug: counted, logged, never raised


#: Drop reasons only the C data plane has (media/fastpath.h), counted with the
#: DropReasons in a leg's ``drops``: a datagram over 2048 bytes; a punt the loop's full
#: ring refused; a punt past the leg's punt budget (a stranger spraying the port).
PLANE_DROP_REASONS: Final[tuple[str, ...]] = ("too_long", "punt_overflow", "punt_limited")


class LatchMode(enum.StrEnum):
    STRICT = "strict"
    NAT = "nat"


class Verdict(enum.IntEnum):
    """The answer of :meth:`Latch.check` for one packet."""

    ACCEPT = 0  # from the latched source (STRICT: the signalled one)
    CANDIDATE = 1  # a new source: accept and confirm() if it proves itself
    DROP = 2  # a stranger: drop as unknown_source


def normalize_ip(ip: str) -> str:
    """The textual form the socket layer reports for ``ip`` (``::1``, not
    ``0:0::1``); raise ValueError for anything but an IP literal."""
    return str(ipaddress.ip_address(ip))


class Latch:
    """The source latch of one leg's socket (RTP or RTCP).

    ``signalled`` is the address from SDP (``None`` until known); ``hosts`` the IPs a
    plain-RTP source may prove itself from (the signalled IP, plus the SIP source if
    given).  ``latched`` is the accepted source, also where the relay sends to.
    """

    __slots__ = (
        "mode",
        "signalled",
        "hosts",
        "latched",
        "ssrc",
        "latched_at",
        "relatches",
    )

    def __init__(self, mode: LatchMode = LatchMode.NAT) -> None:
        self.mode = mode
        self.signalled: Address | None = None
        self.hosts: frozenset[str] = frozenset()
        self.latched: Address | None = None
        self.ssrc: int | None = None
        self.latched_at: float | None = None
        self.relatches = 0

    # ---------------------------------------------------------------- control

    def set_signalled(self, ip: str, port: int, extra_hosts: Iterable[str] = ()) -> None:
        """The address from SDP (offer, answer or re-INVITE).  A change unlatches."""
        address = (normalize_ip(ip), port)
        hosts = frozenset({address[0], *(normalize_ip(h) for h in extra_hosts)})
        if address != self.signalled or hosts != self.hosts:
            self.signalled = address
            self.hosts = hosts
            self.unlatch()
        if self.mode is LatchMode.STRICT:
            self.latched = address

    def clear(self) -> None:
        """No signalled address any more (the stream was disabled with port 0)."""
        self.signalled = None
        self.hosts = frozenset()
        self.latched = None
        self.ssrc = None
        self.latched_at = None

    def unlatch(self) -> None:
        self.latched = self.signalled if self.mode is LatchMode.STRICT else None
        self.ssrc = None
        self.latched_at = None

    @property
    def destination(self) -> Address | None:
        """Where packets for this endpoint go: the latched source, else the
        signalled address."""
        return self.latched or self.signalled

    # ---------------------------------------------------------------- per packet

    def check(self, host: str, port: int, ssrc: int, secure: bool) -> Verdict:
        """Whether a packet from ``(host, port)`` with ``ssrc`` may pass (a question:
        nothing changes).

        ``secure`` says the leg decrypts inbound (SRTP): a CANDIDATE must then
        authenticate before :meth:`confirm`.
        """
        latched = self.latched
        if latched is not None and host == latched[0] and port == latched[1]:
            return Verdict.ACCEPT
        if self.mode is LatchMode.STRICT:
            return Verdict.DROP
        if secure:
            return Verdict.CANDIDATE  # proof is the SRTP tag, from any address
        if host not in self.hosts:
            return Verdict.DROP
        if latched is None or ssrc == self.ssrc:
            return Verdict.CANDIDATE
        return Verdict.DROP

    def follow(self, ssrc: int) -> None:
        """An accepted packet from the latched source (after its inbound transform)
        with another SSRC: a restarted stream; the plain-RTP relatch proof follows."""
        if self.mode is LatchMode.NAT:
            self.ssrc = ssrc

    def confirm(self, host: str, port: int, ssrc: int, now: float) -> None:
        """Latch (or relatch) to a CANDIDATE that proved itself."""
        if self.mode is LatchMode.STRICT:
            return
        if self.latched is not None:
            self.relatches += 1
        self.latched = (host, port)
        self.ssrc = ssrc
        self.latched_at = now

    def nominate(self, host: str, port: int, now: float) -> None:
        """Latch to the address an ICE agent nominated (its check proved it knows the
        leg's ICE password); the SSRC is learnt from the media."""
        if self.mode is LatchMode.STRICT:
            return
        if self.latched is not None and self.latched != (host, port):
            self.relatches += 1
        self.latched = (host, port)
        self.ssrc = None
        self.latched_at = now

    def snapshot(self) -> dict[str, object]:
        """State for stats and logs."""
        return {
            "mode": str(self.mode),
            "signalled": self.signalled,
            "latched": self.latched,
            "ssrc": self.ssrc,
            "relatches": self.relatches,
        }
