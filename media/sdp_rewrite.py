"""SDP rewriting for the media relay, and the SDES-SRTP offer/answer around it (sans-I/O).

Everything here takes parsed SDP (:mod:`sip.sdp`) and gives back SDP; nothing opens a
socket or reads a clock.  :mod:`edge.media` allocates the relay legs and applies what
the :class:`Negotiation` decided (remote addresses, SRTP keys) to them.

Rules of this file:

- Each side of a call sees only the relay: ``c=`` (session and media level), the
  ``m=`` port, ``a=rtcp`` (RFC 3605) and the ``o=`` address point at the relay leg
  that faces that side.  ``a=rtcp`` is always written; ``a=rtcp-mux`` only where that
  leg multiplexes RTCP (RFC 5761), with ``a=rtcp`` naming the RTP port then.
- ICE (RFC 8839/8840) and DTLS (RFC 8122, RFC 4145 ``a=setup``) lines are removed, and
  ``a=group:BUNDLE``: the relay terminates the media and gives every stream its own
  ports.  Towards a "dtls-srtp" side (below) the relay writes its own.  ``a=crypto``
  lines are replaced by the relay's own (or removed for plain RTP); ``k=`` lines go.
  Every other line, unknown attributes included, is kept in its order.
- The ``m=`` profile follows each side's policy: RTP/AVP <-> RTP/SAVP, the feedback
  profiles AVPF <-> SAVPF; ``a=rtcp-fb`` is kept only in an AVPF/SAVPF section.
- Hold is preserved: direction attributes are untouched, and a ``c=0.0.0.0`` (RFC 2543
  hold, outside ICE) stays unspecified.  Port 0 (a rejected or disabled stream, RFC
  3264 §6 and §8.2) stays port 0, with its crypto, ICE and RTCP lines removed.
- ``o=`` towards each side keeps the username and sess-id of the first SDP that side
  received from us, takes the relay's address, and its version goes up by one exactly
  when what that side receives changes (RFC 3264 §8): a re-offer with new keys, ports
  or direction shows as a new version, a repeated answer does not.
- Policies per side (:data:`POLICIES`, ``passthrough`` being the controller's): an
  offering side is answered in its own profile (RFC 3264 §6.1 keeps the answer's
  profile); ``rtp`` declines SRTP streams, ``srtp`` declines streams without a usable
  ``a=crypto`` (``RTP/AVP`` with ``a=crypto`` is best-effort SRTP and accepted),
  ``as-offered`` takes what it gets.  The side being offered gets RTP/AVP (``rtp``),
  RTP/SAVP (``srtp``) or what the offerer speaks (``as-offered``).
- "dtls-srtp" (WebRTC, RFC 8827/8829; RFC 5763/5764 for non-browser DTLS-SRTP peers such
  as baresip): a side offering ``UDP/TLS/RTP/SAVPF`` (or ``UDP/TLS/RTP/SAVP``) with a
  ``sha-256`` fingerprint and ``a=rtcp-mux`` is one, under "dtls-srtp" or "as-offered";
  a side whose policy is "dtls-srtp" is offered so.  Towards it the section is
  ``UDP/TLS/RTP/SAVPF`` with ``a=ice-lite`` (session), ``a=ice-ufrag``/``a=ice-pwd``,
  ``a=fingerprint:sha-256`` and ``a=setup`` of the relay leg (:class:`WebRtcSpec`),
  ``a=rtcp-mux``, one host ``a=candidate`` (the relay address and port) and
  ``a=end-of-candidates``; its ``a=mid`` (the offer's; ``0`` when we offer and the
  offerer had none), and ``a=group:BUNDLE`` of that mid when the browser sent a BUNDLE
  group (always in our offers: ``max-bundle`` browsers insist).  Our setup: ``actpass``
  when offering, ``active`` when answering ``actpass`` (:mod:`media.webrtc`).  From it,
  the other side gets RTP/AVP or SDES RTP/SAVP (no feedback profile, so its
  ``a=rtcp-fb`` lines go; they stay for the browser).
- Video and everything but the first audio section of a "dtls-srtp" side are declined
  (port 0): browsers bundle all sections on one port (RFC 8843), and the relay has one
  leg pair per section; relaying them would need demultiplexing by SSRC or MID, which
  the relay does not do.  Declined, never half-handled.
- SDES (RFC 4568): AES_CM_128_HMAC_SHA1_80 and _32 (:data:`media.suites.SUITES`) are
  offered and accepted.  Crypto lines with another suite, a lifetime other than the
  default, an MKI, several keys or session parameters are declined; the first usable
  line of an offer is taken (the offerer's preference, §7.1.1).  A stream left with
  nothing usable is declined with port 0; an offer with no usable stream left raises
  ``SipError`` 488.
- Keys: a fresh 30-byte master key+salt from :mod:`secrets` for each side, stream and
  suite the relay sends with; never shared between sides, streams or calls.  A
  re-offer keeps a side's key while its suite stays (its SRTP context must then go on,
  or the keystream would repeat); the far end's key is whatever its latest SDP says.
- Nothing here logs or raises with key material: :class:`SdesKey` keeps its bytes out
  of ``repr`` and reasons never quote ``a=crypto`` values.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from media.suites import SUITES
from media.webrtc import answer_setup
from sip.errors import SipError
from sip.sdp import (
    Attribute,
    Connection,
    Crypto,
    MediaDescription,
    Origin,
    SessionDescription,
    proto_is_avpf,
    proto_is_srtp,
)
from sip.sdp_attributes import Fingerprint, Setup

__all__ = [
    "ACCEPTED_SUITES",
    "POLICIES",
    "SIDES",
    "LegPorts",
    "LegSpec",
    "Negotiation",
    "Offer",
    "OriginKeeper",
    "Remote",
    "SdesKey",
    "Side",
    "SideState",
    "Stream",
    "StreamOffer",
    "choose_crypto",
    "crypto_problem",
    "other_side",
    "rewrite",
    "translate_proto",
]

Side = Literal["caller", "callee"]
SIDES: Final[tuple[Side, Side]] = ("caller", "callee")
POLICIES: Final = ("as-offered", "rtp", "srtp", "dtls-srtp", "passthrough")
ACCEPTED_SUITES: Final = tuple(SUITES)  # in order of preference

RTP_PROTOS: Final = frozenset(("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"))
DTLS_PROTOS: Final = frozenset(("UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"))
WEBRTC_PROTO: Final = "UDP/TLS/RTP/SAVPF"
# RFC 8445 §5.1.2.1 with type preference 126 (host), local preference 65535, component 1.
HOST_PRIORITY: Final = (126 << 24) | (65535 << 8) | (256 - 1)
ICE_ATTRIBUTES: Final = frozenset(
    (
        "ice-ufrag",
        "ice-pwd",
        "ice-lite",
        "ice-options",
        "ice-pacing",
        "ice-mismatch",
        "candidate",
        "end-of-candidates",
        "remote-candidates",
    )
)
DTLS_ATTRIBUTES: Final = frozenset(("fingerprint", "setup", "tls-id"))
_DROPPED: Final = ICE_ATTRIBUTES | DTLS_ATTRIBUTES
_RTCP_ATTRIBUTES: Final = frozenset(("rtcp", "rtcp-mux", "rtcp-mux-only"))
# RFC 4568 §6.2.1: the default (and largest) SRTP key lifetime is 2^48 packets.
_DEFAULT_LIFETIMES: Final = frozenset(("2^48", str(2**48)))


def other_side(side: Side) -> Side:
    return "callee" if side == "caller" else "caller"


def translate_proto(proto: str, srtp: bool) -> str:
    """The RTP profile ``proto`` with or without SRTP, keeping feedback (AVPF) as is."""
    feedback = proto_is_avpf(proto)
    if srtp:
        return "RTP/SAVPF" if feedback else "RTP/SAVP"
    return "RTP/AVPF" if feedback else "RTP/AVP"


# ---------------------------------------------------------------- SDES keys


@dataclass(frozen=True, slots=True)
class SdesKey:
    """One SDES master key and salt with the tag and suite of its ``a=crypto`` line.

    Build the SRTP contexts from it as
    ``media.srtp.Context(k.key, k.salt, k.suite, direction=...)``."""

    tag: int
    suite: str
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)

    @classmethod
    def generate(
        cls, tag: int, suite: str, token_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> SdesKey:
        """A fresh key and salt for ``suite`` (30 bytes for the AES_CM_128 suites)."""
        s = SUITES[suite]
        raw = token_bytes(s.key_salt_len)
        if len(raw) != s.key_salt_len:
            raise ValueError("token_bytes returned the wrong length")
        return cls(tag, suite, raw[: s.master_key_len], raw[s.master_key_len :])

    @classmethod
    def from_crypto(cls, crypto: Crypto) -> SdesKey:
        key, salt = crypto.key_and_salt()
        return cls(crypto.tag, crypto.suite, key, salt)

    def with_tag(self, tag: int) -> SdesKey:
        return SdesKey(tag, self.suite, self.key, self.salt)

    def same_key(self, other: SdesKey | None) -> bool:
        """Same suite, key and salt (the tag aside): the same SRTP context."""
        return other is not None and (self.suite, self.key, self.salt) == (
            other.suite,
            other.key,
            other.salt,
        )

    def crypto(self) -> Crypto:
        return Crypto.make(self.tag, self.suite, self.key, self.salt)


def crypto_problem(value: str) -> tuple[Crypto | None, str | None]:
    """Parse one ``a=crypto`` value; the reason it is declined, or None if usable."""
    try:
        crypto = Crypto.parse(value)
    except SipError:
        return None, "malformed crypto attribute"
    if crypto.suite not in SUITES:
        return crypto, f"unsupported crypto suite {crypto.suite}"
    if len(crypto.keys) != 1:
        return crypto, "several keys in one crypto attribute"
    key = crypto.keys[0]
    if key.lifetime is not None and key.lifetime not in _DEFAULT_LIFETIMES:
        return crypto, "crypto key lifetime other than the default"
    if key.mki is not None:
        return crypto, "crypto MKI"
    if crypto.session_params:
        return crypto, "crypto session parameters"
    return crypto, None


def choose_crypto(media: MediaDescription) -> tuple[Crypto | None, list[str]]:
    """The first usable ``a=crypto`` of an offered section, and why the others before
    it were declined."""
    declined: list[str] = []
    for value in media.values("crypto"):
        crypto, problem = crypto_problem(value)
        if problem is None:
            return crypto, declined
        declined.append(problem)
    return None, declined


# ---------------------------------------------------------------- writing SDP


@dataclass(frozen=True, slots=True)
class WebRtcLocal:
    """The ICE credentials and DTLS fingerprint of a relay leg (its
    :class:`media.webrtc.WebRtcLeg`)."""

    ufrag: str
    pwd: str = field(repr=False)
    fingerprint: Fingerprint


@dataclass(frozen=True, slots=True)
class WebRtcSpec:
    """The ICE-lite and DTLS lines of one section towards a "dtls-srtp" side."""

    local: WebRtcLocal
    setup: str  # actpass / active / passive
    mid: str | None = None
    bundle: bool = False  # name the mid in a=group:BUNDLE


@dataclass(frozen=True, slots=True)
class DtlsRemote:
    """What a "dtls-srtp" side's SDP says about its ICE and DTLS for one section."""

    fingerprints: tuple[Fingerprint, ...]
    setup: Setup | None
    ice: tuple[str, str] | None  # (ufrag, pwd); None: no ICE (baresip)
    mid: str | None
    bundle: bool  # the section's mid is in an a=group:BUNDLE

    @classmethod
    def from_sdp(cls, sd: SessionDescription, m: MediaDescription) -> DtlsRemote:
        """Raise SipError for unparsable fingerprint or setup lines."""
        ufrag, pwd = sd.value_for(m, "ice-ufrag"), sd.value_for(m, "ice-pwd")
        mid = m.mid
        bundle = mid is not None and any(
            g.semantics == "BUNDLE" and mid in g.mids for g in sd.groups()
        )
        return cls(
            tuple(sd.fingerprints_for(m)),
            sd.setup_for(m),
            (ufrag, pwd) if ufrag and pwd else None,
            mid,
            bundle,
        )


def dtls_problem(sd: SessionDescription, m: MediaDescription) -> str | None:
    """Why a DTLS-SRTP section cannot be relayed, or None."""
    try:
        remote = DtlsRemote.from_sdp(sd, m)
    except SipError as exc:
        return exc.reason
    if not any(f.hash_func.lower() == "sha-256" for f in remote.fingerprints):
        return "no sha-256 fingerprint"
    if not m.rtcp_mux:
        return "DTLS-SRTP without rtcp-mux"
    if remote.setup is Setup.HOLDCONN:
        return "DTLS setup holdconn"
    return None


@dataclass(frozen=True, slots=True)
class LegSpec:
    """What to write into one media section: the relay leg's ports, the profile and
    the crypto lines.  ``rtp_port`` 0 rejects the stream (``proto`` may still set the
    profile a rejected line must mirror)."""

    rtp_port: int
    rtcp_port: int | None = None  # None: the RTP port with rtcp-mux, else the next one
    rtcp_mux: bool = False
    proto: str | None = None  # None: keep the section's
    crypto: tuple[Crypto, ...] = ()
    webrtc: WebRtcSpec | None = None
    mid: str | None = None  # a=mid to write (RFC 5888 §9.1: an answer repeats the offer's)

    @classmethod
    def rejected(cls, proto: str | None = None, mid: str | None = None) -> LegSpec:
        return cls(0, proto=proto, mid=mid)


def _has_ice(sd: SessionDescription, m: MediaDescription | None = None) -> bool:
    if sd.ice_ufrag is not None:
        return True
    media = sd.media if m is None else [m]
    return any(x.ice_ufrag is not None for x in media)


def rewrite(
    sd: SessionDescription,
    specs: Sequence[LegSpec],
    *,
    address: str,
    origin: Origin | None = None,
) -> SessionDescription:
    """A copy of ``sd`` pointing at the relay (``address``, the ports of ``specs``, one
    per media section), per the rules in the module docstring.  ``origin`` replaces
    ``o=`` when given."""
    if len(specs) != len(sd.media):
        raise ValueError(f"{len(specs)} leg specs for {len(sd.media)} media sections")
    out = sd.copy()
    if origin is not None:
        out.origin = origin
    relay = Connection.for_address(address)
    unspecified = Connection("IN", relay.addrtype, "::" if relay.addrtype == "IP6" else "0.0.0.0")

    def connection(c: Connection, ice: bool) -> Connection:
        # Trickle ICE offers 0.0.0.0 as a placeholder (RFC 8840 §4.1.1): not hold.
        return unspecified if c.is_unspecified and not ice else relay

    if out.connection is not None:
        out.connection = connection(out.connection, _has_ice(sd))
    out.key = None
    out.attributes[:] = [
        a
        for a in out.attributes
        if a.name not in _DROPPED
        and a.name != "crypto"
        and not (a.name == "group" and (a.value or "").split(" ")[0] == "BUNDLE")
    ]
    for m, original, spec in zip(out.media, sd.media, specs, strict=True):
        ice = _has_ice(sd, original)
        m.key = None
        m.port_count = None
        if spec.proto is not None:
            m.proto = spec.proto
        m.connections[:] = [connection(c, ice) for c in m.connections]
        mid = spec.webrtc.mid if spec.webrtc is not None else None
        mid = mid or spec.mid
        if mid is not None and m.mid != mid:
            m.attributes[:] = [Attribute("mid", mid)] + [a for a in m.attributes if a.name != "mid"]
        if spec.rtp_port == 0:
            m.port = 0
            m.attributes[:] = [
                a
                for a in m.attributes
                if a.name not in _DROPPED and a.name not in _RTCP_ATTRIBUTES and a.name != "crypto"
            ]
            continue
        m.port = spec.rtp_port
        webrtc = spec.webrtc
        rtcp_port = spec.rtcp_port
        if rtcp_port is None:
            rtcp_port = spec.rtp_port if spec.rtcp_mux else spec.rtp_port + 1
        rtcp = [Attribute("rtcp", str(rtcp_port))]
        if spec.rtcp_mux:
            rtcp.append(Attribute("rtcp-mux"))
        crypto = [Attribute("crypto", str(c)) for c in spec.crypto]
        feedback = proto_is_avpf(m.proto)
        attrs: list[Attribute] = []
        for a in m.attributes:
            if a.name in _RTCP_ATTRIBUTES:
                attrs += rtcp  # where the first RTCP line was
                rtcp = []
            elif a.name == "crypto":
                attrs += crypto
                crypto = []
            elif a.name not in _DROPPED and (feedback or a.name != "rtcp-fb"):
                attrs.append(a)
        m.attributes[:] = attrs + rtcp + crypto
        if webrtc is not None:
            m.attributes += _webrtc_lines(webrtc, address, spec.rtp_port)
    session: list[Attribute] = []
    mids = [
        s.webrtc.mid
        for s in specs
        if s.webrtc is not None and s.webrtc.bundle and s.webrtc.mid is not None and s.rtp_port
    ]
    if mids:
        session.append(Attribute("group", "BUNDLE " + " ".join(mids)))
    if any(s.webrtc is not None and s.rtp_port for s in specs):
        session.append(Attribute("ice-lite"))
    out.attributes[:0] = session
    return out


def _webrtc_lines(spec: WebRtcSpec, address: str, port: int) -> list[Attribute]:
    """ICE-lite (RFC 8839 §5) and DTLS (RFC 8122 §5, RFC 4145 §4) lines of a section."""
    candidate = f"1 1 udp {HOST_PRIORITY} {address} {port} typ host"
    return [
        Attribute("ice-ufrag", spec.local.ufrag),
        Attribute("ice-pwd", spec.local.pwd),
        Attribute("fingerprint", str(spec.local.fingerprint)),
        Attribute("setup", spec.setup),
        Attribute("candidate", candidate),
        Attribute("end-of-candidates"),
    ]


class OriginKeeper:
    """The ``o=`` line of the SDP sent to one side (see the module docstring)."""

    __slots__ = ("last", "origin")

    def __init__(self) -> None:
        self.origin: Origin | None = None
        self.last: bytes | None = None

    def stamp(self, sd: SessionDescription, source: Origin, address: str) -> None:
        """Set ``sd.origin`` for sending ``sd`` (built from an SDP with ``source``)."""
        if self.origin is None:
            addrtype = Connection.for_address(address).addrtype
            self.origin = Origin(
                source.username, source.sess_id, source.sess_version, "IN", addrtype, address
            )
            sd.origin = self.origin
            self.last = bytes(sd)
            return
        sd.origin = self.origin
        body = bytes(sd)
        if body != self.last:
            self.origin = self.origin.next_version()
            sd.origin = self.origin
            body = bytes(sd)
        self.last = body


# ---------------------------------------------------------------- negotiation state


@dataclass(frozen=True, slots=True)
class LegPorts:
    """Where the relay leg facing one side listens."""

    rtp_port: int
    rtcp_port: int
    rtcp_mux: bool = False
    webrtc: WebRtcLocal | None = None  # set on a "dtls-srtp" leg


@dataclass(frozen=True, slots=True)
class Remote:
    """A side's media address from its SDP; ``rtp_port`` 0: the stream is disabled."""

    ip: str
    rtp_port: int
    rtcp_port: int | None = None


DISABLED: Final = Remote("", 0)


@dataclass(slots=True)
class SideState:
    """One side of one stream: what it speaks, where it is, and the SRTP keys.

    ``inbound`` is the far end's key (from its ``a=crypto``: unprotects what it sends);
    ``outbound`` the relay's own, written into the SDP sent to it (protects what the
    relay sends it).  ``None`` for both: plain RTP."""

    ports: LegPorts | None = None
    proto: str = ""
    srtp: bool = False
    remote: Remote | None = None
    inbound: SdesKey | None = None
    outbound: SdesKey | None = None
    offered: tuple[SdesKey, ...] = ()  # our keys in an offer to this side, until answered
    hold: bool = False
    # "dtls-srtp": the side's ICE/DTLS parameters (None until its SDP came) and the
    # a=setup we write to it; its SRTP keys come from the handshake, not from here.
    dtls: bool = False
    dtls_remote: DtlsRemote | None = None
    setup: str | None = None
    # The relay's keys towards this side by suite: the same key while the suite stays,
    # so that a repeated offer repeats its SDP and a chosen key keeps its SRTP context.
    keys: dict[str, SdesKey] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Stream:
    """One media section (``m=`` line) of the call, relayed by one pair of legs."""

    index: int
    media: str
    sides: dict[Side, SideState] = field(
        default_factory=lambda: {"caller": SideState(), "callee": SideState()}
    )
    active: bool = False  # relayed both ways after the last answer

    @property
    def on_hold(self) -> bool:
        return any(s.hold for s in self.sides.values())


Action = Literal["relay", "declined", "rejected"]


@dataclass(frozen=True, slots=True)
class StreamOffer:
    """The decision for one media section of an offer."""

    index: int
    action: Action  # relay; declined by the relay (port 0 forwarded); rejected by the offerer
    reason: str = ""
    from_srtp: bool = False
    to_srtp: bool = False
    to_proto: str = ""
    rtcp_mux: bool = False  # the offerer asked for rtcp-mux
    chosen: Crypto | None = None  # the offerer's crypto line we accept
    from_dtls: bool = False  # the offerer is a "dtls-srtp" side
    to_dtls: bool = False  # the other side is offered DTLS-SRTP

    def dtls_for(self, offerer: bool) -> bool:
        """Whether the leg facing the offerer (or the other side) is "dtls-srtp"."""
        return self.from_dtls if offerer else self.to_dtls

    def mux_for(self, offerer: bool) -> bool:
        """Whether the leg facing the offerer (or the other side) multiplexes RTCP from
        the start: the offerer's when it asked, a "dtls-srtp" side's always."""
        return self.rtcp_mux if offerer else self.to_dtls


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer from ``side``, decided but not yet written (:meth:`Negotiation.plan_offer`)."""

    side: Side
    sd: SessionDescription
    streams: tuple[StreamOffer, ...]

    @property
    def relayed(self) -> list[StreamOffer]:
        return [s for s in self.streams if s.action == "relay"]


class Negotiation:
    """The SDP offer/answer of one call through the relay, sans-I/O.

    1. ``offer = n.plan_offer(sd, side, from_policy, to_policy)`` decides per stream
       (raises ``SipError`` 488 when nothing usable remains); nothing changes yet.
    2. The caller allocates a relay leg per side for each of ``offer.relayed`` (the
       offerer's with rtcp-mux when ``rtcp_mux`` asks for it) and passes their ports
       to ``n.write_offer(offer, ports)``, which records the offer and returns the SDP
       for the other side.  The offerer's :class:`SideState` is now complete.
    3. ``n.answer(sd, side)`` (repeatable: 183 then 200) completes the answerer's side
       and returns the SDP for the offerer.

    ``streams`` holds the state the controller applies to the legs.
    """

    def __init__(
        self, address: str, *, token_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        self.address = str(ipaddress.ip_address(address))
        self._family = ipaddress.ip_address(address).version
        self._token_bytes = token_bytes
        self.streams: dict[int, Stream] = {}
        self.pending: Offer | None = None
        self.origins: dict[Side, OriginKeeper] = {
            "caller": OriginKeeper(),
            "callee": OriginKeeper(),
        }

    # ------------------------------------------------------------ offer

    def plan_offer(
        self, sd: SessionDescription, side: Side, from_policy: str, to_policy: str
    ) -> Offer:
        for policy in (from_policy, to_policy):
            if policy not in POLICIES or policy == "passthrough":
                raise ValueError(f"media policy {policy!r} is not one the relay negotiates")
        decisions: list[StreamOffer] = []
        reasons: list[str] = []
        for i, m in enumerate(sd.media):
            if m.port == 0:
                decisions.append(StreamOffer(i, "rejected", "rejected by the offerer"))
                continue
            decision = self._plan_stream(sd, i, m, from_policy, to_policy)
            webrtc = decision.from_dtls or decision.to_dtls
            if webrtc and any(d.from_dtls or d.to_dtls for d in decisions):
                decision = StreamOffer(
                    i, "declined", "one audio stream per DTLS-SRTP side (no BUNDLE demux)"
                )
            if decision.action == "declined":
                reasons.append(f"{m.media}: {decision.reason}")
            decisions.append(decision)
        if reasons and not any(d.action == "relay" for d in decisions):
            raise SipError("no usable media stream (" + "; ".join(reasons) + ")", 488)
        return Offer(side, sd, tuple(decisions))

    def _plan_stream(
        self, sd: SessionDescription, i: int, m: MediaDescription, from_policy: str, to_policy: str
    ) -> StreamOffer:
        dtls_offered = m.proto in DTLS_PROTOS
        if m.proto not in RTP_PROTOS and not dtls_offered:
            return StreamOffer(i, "declined", f"transport {m.proto} is not relayed")
        problem = self._address_problem(sd, m, ice=dtls_offered)
        if problem is not None:
            return StreamOffer(i, "declined", problem)
        sd.is_on_hold(m)  # conflicting direction attributes raise here, before any port is taken
        to_dtls = to_policy == "dtls-srtp" or (to_policy == "as-offered" and dtls_offered)
        if (dtls_offered or to_dtls) and m.media != "audio":
            return StreamOffer(i, "declined", f"{m.media} is not relayed to or from WebRTC")
        if from_policy == "dtls-srtp" and not dtls_offered:
            return StreamOffer(i, "declined", f"{m.proto} offered by a DTLS-SRTP side")
        if dtls_offered:
            if from_policy in ("rtp", "srtp"):
                return StreamOffer(i, "declined", f"DTLS-SRTP offered by an {from_policy} side")
            problem = dtls_problem(sd, m)
            if problem is not None:
                return StreamOffer(i, "declined", problem)
            to_srtp = to_dtls or to_policy == "srtp"
            # No feedback profile towards a SIP side: it may not take RTP/AVPF.
            to_proto = WEBRTC_PROTO if to_dtls else "RTP/SAVP" if to_srtp else "RTP/AVP"
            return StreamOffer(
                i,
                "relay",
                from_srtp=True,
                to_srtp=to_srtp,
                to_proto=to_proto,
                rtcp_mux=True,
                from_dtls=True,
                to_dtls=to_dtls,
            )
        srtp_offered = proto_is_srtp(m.proto)
        chosen, declined = choose_crypto(m)
        why = "; ".join(declined) or "no crypto attribute"
        if from_policy == "rtp":
            if srtp_offered:
                return StreamOffer(i, "declined", "SRTP offered by a plain-RTP side")
            from_srtp = False
        elif from_policy == "srtp":
            if chosen is None:
                return StreamOffer(i, "declined", f"no usable SDES crypto ({why})")
            from_srtp = True
        else:  # as-offered; best-effort SRTP (RTP/AVP with a=crypto) is taken as plain
            if srtp_offered and chosen is None:
                return StreamOffer(i, "declined", f"no usable SDES crypto ({why})")
            from_srtp = srtp_offered
        to_srtp = to_dtls or {"rtp": False, "srtp": True}.get(to_policy, from_srtp)
        return StreamOffer(
            i,
            "relay",
            from_srtp=from_srtp,
            to_srtp=to_srtp,
            to_proto=WEBRTC_PROTO if to_dtls else translate_proto(m.proto, to_srtp),
            rtcp_mux=m.rtcp_mux,
            chosen=chosen if from_srtp else None,
            to_dtls=to_dtls,
        )

    def _address_problem(
        self, sd: SessionDescription, m: MediaDescription, *, ice: bool = False
    ) -> str | None:
        """Why the section's ``c=`` cannot be relayed to, or None.  With ICE (a DTLS-SRTP
        section with credentials) ``c=`` is only the default candidate: the relay latches
        where the ICE agent nominates, so another family or a name is no problem there."""
        if ice and _has_ice(sd, m):
            return None
        conn = sd.connection_for(m)
        if conn is None or conn.nettype != "IN":
            return "no IN connection address"
        if conn.is_unspecified:
            return None  # hold: the address stays what it was
        try:
            ip = ipaddress.ip_address(conn.host)
        except ValueError:
            return "connection address is not an IP address"
        if ip.is_multicast:
            return "multicast connection address"
        if ip.version != self._family:
            return f"the relay has no IPv{ip.version} address"
        return None

    def write_offer(
        self, offer: Offer, ports: Mapping[int, Mapping[Side, LegPorts]]
    ) -> SessionDescription:
        """Record ``offer`` and return the SDP for the other side; ``ports`` has the two
        legs of every relayed stream."""
        frm, to = offer.side, other_side(offer.side)
        specs: list[LegSpec] = []
        # A WebRTC answerer matches sections by mid (JSEP): every section gets one.
        to_webrtc = any(d.to_dtls for d in offer.streams)
        for d in offer.streams:
            m = offer.sd.media[d.index]
            stream = self.streams.get(d.index)
            if d.action != "relay":
                if stream is not None:
                    stream.active = False
                    stream.sides[frm].remote = DISABLED
                mid = (m.mid or str(d.index)) if to_webrtc else None
                specs.append(LegSpec.rejected(mid=mid))
                continue
            if stream is None:
                stream = self.streams[d.index] = Stream(d.index, m.media)
            stream.media = m.media  # a rejected m= line may be reused (RFC 3264 §8.3)
            mine, theirs = stream.sides[frm], stream.sides[to]
            mine.ports, theirs.ports = ports[d.index][frm], ports[d.index][to]
            mine.proto, mine.srtp = m.proto, d.from_srtp
            mine.dtls = d.from_dtls
            if d.from_dtls:
                mine.dtls_remote = DtlsRemote.from_sdp(offer.sd, m)
                mine.setup = answer_setup(mine.dtls_remote.setup)
            if d.chosen is not None:
                mine.inbound = SdesKey.from_crypto(d.chosen)
                mine.outbound = self._our_key(mine, d.chosen.tag, d.chosen.suite)
            else:
                mine.inbound = mine.outbound = None
            mine.remote = _remote(offer.sd, m, mine.remote, self._family)
            mine.hold = offer.sd.is_on_hold(m)
            theirs.offered = ()
            webrtc = None
            if d.to_dtls:
                theirs.dtls, theirs.setup = True, "actpass"
                local = theirs.ports.webrtc
                if local is None:
                    raise ValueError(f"stream {d.index}: the dtls-srtp leg has no WebRtcLocal")
                mid = m.mid if m.mid is not None else str(d.index)
                webrtc = WebRtcSpec(local, "actpass", mid, bundle=True)
            elif d.to_srtp:
                first = d.chosen.suite if d.chosen is not None else ACCEPTED_SUITES[0]
                suites = [first, *(s for s in ACCEPTED_SUITES if s != first)]
                theirs.offered = tuple(
                    self._our_key(theirs, tag, suite) for tag, suite in enumerate(suites, 1)
                )
            leg = theirs.ports
            assert leg is not None
            specs.append(
                LegSpec(
                    leg.rtp_port,
                    leg.rtcp_port,
                    leg.rtcp_mux,
                    d.to_proto,
                    tuple(k.crypto() for k in theirs.offered),
                    webrtc,
                )
            )
        self.pending = offer
        out = rewrite(offer.sd, specs, address=self.address)
        self.origins[to].stamp(out, offer.sd.origin, self.address)
        return out

    def _our_key(self, side: SideState, tag: int, suite: str) -> SdesKey:
        """The relay's key for ``suite`` towards a side, made on first use."""
        key = side.keys.get(suite)
        if key is None:
            key = side.keys[suite] = SdesKey.generate(tag, suite, self._token_bytes)
        return key.with_tag(tag)

    # ------------------------------------------------------------ answer

    def answer(self, sd: SessionDescription, side: Side) -> SessionDescription:
        """Complete the pending offer with the answer from ``side``; the SDP for the
        offerer.  ``SipError`` 488 when none of the relayed streams is usable."""
        offer = self.pending
        if offer is None or side != other_side(offer.side):
            raise SipError(f"an answer from the {side} without an offer to it", 500)
        frm, to = offer.side, side
        base = sd.copy()
        # RFC 3264 §6: as many m= lines as the offer; a short answer rejects the rest.
        del base.media[len(offer.sd.media) :]
        for om in offer.sd.media[len(base.media) :]:
            base.media.append(MediaDescription(om.media, 0, om.proto, list(om.formats)))
        specs: list[LegSpec] = []
        relayed = 0
        reasons: list[str] = []
        for d in offer.streams:
            om, am = offer.sd.media[d.index], base.media[d.index]
            if om.mid is None:  # RFC 5888 §9.2: no mid in an answer to an offer without
                am.remove("mid")  # (the mid we gave a WebRTC answerer stays on its side)
            if d.action != "relay":
                old = self.streams.get(d.index)
                if old is not None:
                    old.sides[to].remote = DISABLED
                specs.append(LegSpec.rejected(om.proto, om.mid))
                continue
            stream = self.streams[d.index]
            mine, theirs = stream.sides[frm], stream.sides[to]
            problem = "rejected by the answerer" if am.port == 0 else self._answer_problem(d, am)
            if problem is None:
                problem = self._address_problem(base, am, ice=d.to_dtls)
            keys = None
            if problem is None and d.to_dtls:
                problem = dtls_problem(base, am)
            elif problem is None and d.to_srtp:
                keys = self._answer_keys(theirs, am)
                if keys is None:
                    problem = "no acceptable crypto attribute in the answer"
            if problem is not None:
                stream.active = False
                theirs.remote = DISABLED
                if am.port != 0:
                    reasons.append(f"{am.media}: {problem}")
                specs.append(LegSpec.rejected(om.proto, om.mid))
                continue
            theirs.proto, theirs.srtp = am.proto, d.to_srtp
            theirs.inbound, theirs.outbound = keys if keys is not None else (None, None)
            if d.to_dtls:
                theirs.dtls_remote = DtlsRemote.from_sdp(base, am)
            theirs.remote = _remote(base, am, theirs.remote, self._family)
            theirs.hold = base.is_on_hold(am)
            stream.active = True
            relayed += 1
            leg = mine.ports
            assert leg is not None
            crypto = (mine.outbound.crypto(),) if mine.outbound is not None else ()
            mux = leg.rtcp_mux and om.rtcp_mux
            webrtc = None
            if d.from_dtls:
                assert leg.webrtc is not None and mine.setup is not None
                remote = mine.dtls_remote
                mid = remote.mid if remote is not None else None
                bundle = remote is not None and remote.bundle
                webrtc = WebRtcSpec(leg.webrtc, mine.setup, mid, bundle)
            specs.append(
                LegSpec(leg.rtp_port, leg.rtcp_port, mux, om.proto, crypto, webrtc, om.mid)
            )
        if reasons and relayed == 0:
            raise SipError("no usable media stream in the answer (" + "; ".join(reasons) + ")", 488)
        out = rewrite(base, specs, address=self.address)
        self.origins[frm].stamp(out, sd.origin, self.address)
        return out

    def _answer_problem(self, d: StreamOffer, am: MediaDescription) -> str | None:
        if d.to_dtls != (am.proto in DTLS_PROTOS):
            return f"answered with transport {am.proto} to an offer of {d.to_proto}"
        if d.to_dtls:
            return None
        if am.proto not in RTP_PROTOS or proto_is_srtp(am.proto) != d.to_srtp:
            return f"answered with transport {am.proto} to an offer of {d.to_proto}"
        return None

    @staticmethod
    def _answer_keys(theirs: SideState, am: MediaDescription) -> tuple[SdesKey, SdesKey] | None:
        """(their key, ours) from the answer's crypto line for one of the offered tags."""
        offered = {k.tag: k for k in theirs.offered}
        for value in am.values("crypto"):
            crypto, problem = crypto_problem(value)
            if problem is None and crypto is not None:
                ours = offered.get(crypto.tag)
                if ours is not None and ours.suite == crypto.suite:
                    inbound = SdesKey.from_crypto(crypto)
                    if not inbound.same_key(ours):  # a reflected key is no key of its own
                        return inbound, ours
        return None


def _remote(
    sd: SessionDescription, m: MediaDescription, previous: Remote | None, family: int
) -> Remote:
    """A side's media address from its SDP; an unspecified ``c=`` keeps the previous, and
    so does an ICE default candidate the relay cannot reach (another family, a name)."""
    conn = sd.connection_for(m)
    if conn is None or conn.is_unspecified:
        return previous if previous is not None else DISABLED
    try:
        reachable = ipaddress.ip_address(conn.host).version == family
    except ValueError:
        reachable = False
    if not reachable:
        return previous if previous is not None else DISABLED
    # Explicit, so that a leg whose multiplexing differs from the endpoint's (see
    # media.relay.Leg.set_rtcp_mux) still sends RTCP where the endpoint wants it.
    rtcp_port = m.port if m.rtcp_mux else m.port + 1
    if not m.rtcp_mux:
        try:
            rtcp = m.rtcp()
        except SipError:
            rtcp = None
        if rtcp is not None and rtcp.port:
            rtcp_port = rtcp.port
    return Remote(str(ipaddress.ip_address(conn.host)), m.port, rtcp_port)
