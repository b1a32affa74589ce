"""SDP (RFC 8866) parsing and serialisation for a media relay.

The model is a mutable tree of small objects that round-trips exactly::

    sd = SessionDescription.parse(body)  # or parse_sdp(body)
    for m in sd.media:
        m.port = 40000
        m.set_connection(Connection.for_address("203.0.113.7"))
        m.remove("candidate", "end-of-candidates", "ice-ufrag", "ice-pwd")
    out = bytes(sd)  # == sd.serialize()

Public API
    ``SessionDescription``  v/o/s/i/u/e/p/c/b/t+r/z/k/a fields and ``media``; ``parse``,
        ``serialize``, ``copy``, effective-value helpers (``connection_for``, ``direction_for``,
        ``is_on_hold``, ``value_for``, ``fingerprints_for``, ``setup_for``), ``groups``,
        ``ice_lite``, ``set_connection_address``.
    ``MediaDescription``    m/i/c/b/k/a; typed views ``rtpmaps``, ``fmtps``, ``rtcp``,
        ``rtcp_mux``, ``crypto``, ``candidates``, ``end_of_candidates``, ``mid``, ``ptime``,
        ``rtcp_fb``; ``set_connection``, ``is_rejected``.
    Both sections: the ``attributes`` list (edit it freely) with ``attribute``, ``has``,
        ``value``, ``values``, ``add``, ``remove``, ``replace``, ``direction``,
        ``set_direction``, ``fingerprints``, ``setup``, ``ice_ufrag``, ``ice_pwd``,
        ``ice_options``.
    Value types (frozen; ``X.parse(text)`` and ``str(x)`` are inverses for well-formed text):
        ``Attribute``, ``Origin``, ``Connection``, ``Bandwidth``, ``Timing``, ``RtpMap``,
        ``Fmtp``, ``Rtcp``, ``RtcpFb``, ``Crypto``, ``CryptoKey``, ``Fingerprint``,
        ``Candidate``, ``Group``; enums ``Direction``, ``Setup``, ``Proto``. The attribute
        values, ``Connection``, ``Direction`` and ``Setup`` are defined in
        :mod:`sip.sdp_attributes` and re-exported here with ``SRTP_KEY_SALT_LENGTHS``.
    ``parse_sdp`` is ``SessionDescription.parse``.

Round trip
    For input whose lines are in RFC 8866 §5 order and end in CRLF, ``bytes(parse(x)) == x``.
    LF-only line ends (and a missing final line end) are accepted and written back as CRLF;
    trailing empty lines are dropped. Lines out of §5 order are accepted and written back in
    §5 order; attributes keep their relative order. Numbers are kept as integers, so a leading
    zero ("m=audio 049170") is not preserved. Attribute values are kept as text and only
    parsed when a typed view asks, so unknown attributes round-trip untouched.

Leniency (an SBC meets every dialect)
    ``t=`` is required (RFC 8866 §5.9): every endpoint we know sends it and a relay must not
    forward an SDP its peer may reject. An empty ``s=`` is accepted. Type letters this module
    does not know (e.g. ``y=``/``f=`` of GB28181 cameras) are kept in ``unknown_lines`` and
    written after the section's attributes rather than rejecting the whole description (RFC
    8866 §5 allows "ignore or reject"); a strict caller can reject when the list is non-empty.

Errors and limits
    Malformed input raises :class:`~sip.errors.SipError` (status_hint 400); exceeding
    ``max_size`` (16 KiB), ``max_lines`` or ``max_media`` raises status_hint 413. Typed views
    raise ``SipError`` when the attribute they parse is malformed. Reasons never quote the
    input, which may carry keys (``a=crypto``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from sip.errors import SipError
from sip.sdp_attributes import (
    _TOKEN,
    _TOKEN_RE,
    SRTP_KEY_SALT_LENGTHS,
    Candidate,
    Connection,
    Crypto,
    CryptoKey,
    Direction,
    Fingerprint,
    Fmtp,
    Group,
    Rtcp,
    RtcpFb,
    RtpMap,
    Setup,
    _check_host,
    _check_net,
    _digits,
    _token,
)

__all__ = [
    "MAX_LINES",
    "MAX_MEDIA",
    "MAX_SIZE",
    "SRTP_KEY_SALT_LENGTHS",
    "Attribute",
    "Bandwidth",
    "Candidate",
    "Connection",
    "Crypto",
    "CryptoKey",
    "Direction",
    "Fingerprint",
    "Fmtp",
    "Group",
    "MediaDescription",
    "Origin",
    "Proto",
    "Rtcp",
    "RtcpFb",
    "RtpMap",
    "SessionDescription",
    "Setup",
    "Timing",
    "parse_sdp",
    "proto_is_avpf",
    "proto_is_dtls",
    "proto_is_srtp",
]

MAX_SIZE: Final = 16 * 1024
MAX_LINES: Final = 1024
MAX_MEDIA: Final = 32

# RFC 8866 §5.14: media-field = %s"m" "=" media SP port ["/" integer] SP proto 1*(SP fmt)
# proto = token *("/" token); an empty fmt list is tolerated for rejected (port 0) streams.
_MEDIA_RE: Final = re.compile(
    rf"({_TOKEN}) ([0-9]{{1,5}})(?:/([0-9]{{1,5}}))? ({_TOKEN}(?:/{_TOKEN})*)((?: {_TOKEN})*)"
)
_NUMBER_RE: Final = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
# Attribute names seen in nearly every SDP; a set lookup spares the token regex per line.
# fmt: off
_COMMON_NAMES: Final = frozenset((
    "rtpmap", "fmtp", "ptime", "maxptime", "sendrecv", "sendonly", "recvonly", "inactive",
    "rtcp", "rtcp-mux", "rtcp-rsize", "rtcp-fb", "crypto", "fingerprint", "setup", "mid",
    "group", "msid", "msid-semantic", "ssrc", "ssrc-group", "extmap", "extmap-allow-mixed",
    "candidate", "end-of-candidates", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite",
    "label", "tool",
))
# fmt: on
_SESSION_LETTERS: Final = frozenset("vosiuepcbtrzka")
_MEDIA_LETTERS: Final = frozenset("icbka")


class Proto(enum.StrEnum):
    """Common m= transport protocols. ``MediaDescription.proto`` is a plain ``str`` since any
    token is legal (``udptl`` for T.38, ``TCP/MSRP``, ...); these members compare equal to it."""

    RTP_AVP = "RTP/AVP"  # RFC 3551
    RTP_SAVP = "RTP/SAVP"  # RFC 3711 §12
    RTP_AVPF = "RTP/AVPF"  # RFC 4585
    RTP_SAVPF = "RTP/SAVPF"  # RFC 5124
    UDP_TLS_RTP_SAVP = "UDP/TLS/RTP/SAVP"  # RFC 5764 §8
    UDP_TLS_RTP_SAVPF = "UDP/TLS/RTP/SAVPF"  # RFC 5764 §8


def proto_is_srtp(proto: str) -> bool:
    """True for the SRTP profiles (SAVP, SAVPF, with or without DTLS)."""
    return proto.endswith(("/SAVP", "/SAVPF"))


def proto_is_dtls(proto: str) -> bool:
    """True when the media runs over DTLS: DTLS-SRTP (RFC 5764 §8, RFC 7850) or DTLS/SCTP
    data channels (RFC 8841); SRTP keys then come from the handshake, not from a=crypto."""
    return proto.startswith(("UDP/TLS/", "UDP/DTLS/", "TCP/DTLS/"))


def proto_is_avpf(proto: str) -> bool:
    """True for the feedback profiles (RFC 4585, RFC 5124) that allow ``a=rtcp-fb``."""
    return proto.endswith(("/AVPF", "/SAVPF"))


class Attribute(NamedTuple):
    """One ``a=`` line: ``a=name`` (value None) or ``a=name:value`` (RFC 8866 §5.13).

    A named tuple rather than a frozen dataclass: it is the one object made per SDP line and a
    tuple is about three times cheaper to build. Like the other value types it is immutable,
    so copies of a description can share it."""

    name: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Attribute:
        """Parse the text after ``a=``."""
        name, sep, value = text.partition(":")
        if name not in _COMMON_NAMES and _TOKEN_RE.fullmatch(name) is None:
            raise SipError("bad attribute name")
        return cls(name, value if sep else None)

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=`` (RFC 8866 §5.2). ``sess_id`` stays text (an identifier); ``sess_version`` is the
    counter RFC 3264 §8 increments on every changed offer."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Origin:
        parts = text.split(" ")
        if len(parts) != 6 or not parts[0]:
            raise SipError("bad o= line")
        user, sess_id, version, nettype, addrtype, address = parts
        _digits(sess_id, "o= sess-id", max_len=64)
        _check_net(nettype, addrtype, "o=")
        if nettype == "IN":
            _check_host(addrtype, address, "o=")
        elif not address:
            raise SipError("bad o= address")
        return cls(user, sess_id, _digits(version, "o= sess-version"), nettype, addrtype, address)

    def next_version(self) -> Origin:
        """The same origin with ``sess_version`` incremented (RFC 3264 §8)."""
        return Origin(
            self.username,
            self.sess_id,
            self.sess_version + 1,
            self.nettype,
            self.addrtype,
            self.address,
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (RFC 8866 §5.8), e.g. AS, CT, TIAS (RFC 3890), RS/RR."""

    bwtype: str
    bandwidth: int

    @classmethod
    def parse(cls, text: str) -> Bandwidth:
        bwtype, sep, value = text.partition(":")
        if not sep:
            raise SipError("bad b= line")
        return cls(_token(bwtype, "b= bwtype"), _digits(value, "b= bandwidth"))

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(frozen=True, slots=True)
class Timing:
    """``t=<start> <stop>`` and the ``r=`` lines that follow it (RFC 8866 §5.9, §5.10).
    Repeat lines are kept as text: no relay reads them."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Timing:
        start, sep, stop = text.partition(" ")
        if not sep:
            raise SipError("bad t= line")
        return cls(_digits(start, "t= start"), _digits(stop, "t= stop"))

    def __str__(self) -> str:
        return f"{self.start} {self.stop}"


_DIRECTIONS: Final = frozenset(d.value for d in Direction)


class _Attributes:
    """Attribute-list helpers shared by session and media sections."""

    __slots__ = ()
    attributes: list[Attribute]

    def attribute(self, name: str) -> Attribute | None:
        """The first attribute called ``name``."""
        for a in self.attributes:
            if a.name == name:
                return a
        return None

    def has(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    def value(self, name: str) -> str | None:
        """The value of the first attribute called ``name`` (None if absent or valueless)."""
        a = self.attribute(name)
        return None if a is None else a.value

    def values(self, name: str) -> list[str]:
        """The values of all attributes called ``name``, in order (valueless ones skipped)."""
        return [a.value for a in self.attributes if a.name == name and a.value is not None]

    def add(self, name: str, value: str | None = None) -> Attribute:
        """Append an attribute at the end of the section."""
        attr = Attribute(_token(name, "attribute name"), value)
        self.attributes.append(attr)
        return attr

    def remove(self, *names: str) -> int:
        """Remove every attribute whose name is in ``names``; return how many went."""
        before = len(self.attributes)
        self.attributes[:] = [a for a in self.attributes if a.name not in names]
        return before - len(self.attributes)

    def replace(self, name: str, value: str | None = None) -> Attribute:
        """Leave exactly one ``name`` attribute, where the first one was (else at the end)."""
        return self._replace((name,), Attribute(_token(name, "attribute name"), value))

    def _replace(self, names: Iterable[str], attr: Attribute) -> Attribute:
        names = frozenset(names)
        kept: list[Attribute] = []
        at = None
        for a in self.attributes:
            if a.name in names:
                if at is None:
                    at = len(kept)
            else:
                kept.append(a)
        kept.insert(len(kept) if at is None else at, attr)
        self.attributes[:] = kept
        return attr

    @property
    def direction(self) -> Direction | None:
        """The direction attribute of this section alone (None if it has none)."""
        found = {a.name for a in self.attributes if a.name in _DIRECTIONS}
        if len(found) > 1:
            raise SipError("conflicting direction attributes")
        return Direction(found.pop()) if found else None

    def set_direction(self, direction: Direction | None) -> None:
        """Replace any direction attribute by ``direction`` (None: remove them)."""
        if direction is None:
            self.remove(*_DIRECTIONS)
        else:
            self._replace(_DIRECTIONS, Attribute(str(direction)))

    def fingerprints(self) -> list[Fingerprint]:
        return [Fingerprint.parse(v) for v in self.values("fingerprint")]

    def setup(self) -> Setup | None:
        value = self.value("setup")
        if value is None:
            return None
        try:
            return Setup(value)
        except ValueError:
            raise SipError("bad setup attribute") from None

    @property
    def ice_ufrag(self) -> str | None:
        return self.value("ice-ufrag")

    @property
    def ice_pwd(self) -> str | None:
        return self.value("ice-pwd")

    def ice_options(self) -> list[str]:
        """Tags of ``a=ice-options`` (RFC 8839 §5.6), e.g. ``["trickle", "ice2"]``."""
        return [t for v in self.values("ice-options") for t in v.split()]


@dataclass(slots=True)
class MediaDescription(_Attributes):
    """One media section (RFC 8866 §5.14 and the i/c/b/k/a lines under it)."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    unknown_lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_rejected(self) -> bool:
        """Port 0: the stream is rejected or disabled (RFC 3264 §6, §8.2)."""
        return self.port == 0

    @property
    def connection(self) -> Connection | None:
        """The first media-level ``c=`` (more than one only occurs for layered multicast)."""
        return self.connections[0] if self.connections else None

    def set_connection(self, connection: Connection | None) -> None:
        """Replace the media-level ``c=`` lines by ``connection`` (None: remove them)."""
        self.connections[:] = [] if connection is None else [connection]

    def rtpmaps(self) -> dict[str, RtpMap]:
        """``a=rtpmap`` by payload type as written in ``formats`` (e.g. ``"111"``)."""
        maps = (RtpMap.parse(v) for v in self.values("rtpmap"))
        return {str(m.payload_type): m for m in maps}

    def fmtps(self) -> dict[str, Fmtp]:
        return {f.fmt: f for f in (Fmtp.parse(v) for v in self.values("fmtp"))}

    def rtcp(self) -> Rtcp | None:
        value = self.value("rtcp")
        return None if value is None else Rtcp.parse(value)

    @property
    def rtcp_mux(self) -> bool:
        """``a=rtcp-mux`` (RFC 5761 §5.1.3)."""
        return self.has("rtcp-mux")

    def crypto(self) -> list[Crypto]:
        return [Crypto.parse(v) for v in self.values("crypto")]

    def candidates(self) -> list[Candidate]:
        return [Candidate.parse(v) for v in self.values("candidate")]

    @property
    def end_of_candidates(self) -> bool:
        """``a=end-of-candidates`` (RFC 8840 §8.2)."""
        return self.has("end-of-candidates")

    @property
    def mid(self) -> str | None:
        """``a=mid`` (RFC 5888 §4)."""
        return self.value("mid")

    def ptime(self) -> float | None:
        """``a=ptime`` in milliseconds (RFC 8866 §6.4; the grammar allows a fraction)."""
        value = self.value("ptime")
        if value is None:
            return None
        if _NUMBER_RE.fullmatch(value) is None or float(value) == 0:
            raise SipError("bad ptime")
        return float(value)

    def rtcp_fb(self) -> list[RtcpFb]:
        return [RtcpFb.parse(v) for v in self.values("rtcp-fb")]

    def _serialize_into(self, out: list[str]) -> None:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out.append(" ".join((f"m={self.media}", port, self.proto, *self.formats)))
        if self.information is not None:
            out.append("i=" + self.information)
        out += ["c=" + str(c) for c in self.connections]
        out += ["b=" + str(b) for b in self.bandwidths]
        if self.key is not None:
            out.append("k=" + self.key)
        out += ["a=" + str(a) for a in self.attributes]
        out += [f"{letter}={value}" for letter, value in self.unknown_lines]

    @classmethod
    def _parse_m(cls, value: str) -> MediaDescription:
        match = _MEDIA_RE.fullmatch(value)
        if match is None:
            raise SipError("bad m= line")
        media, port, count, proto, fmts = match.groups()
        formats = fmts.split(" ")[1:]
        port_n = _digits(port, "m= port", 65535)
        if not formats and port_n != 0:
            raise SipError("m= line without formats")
        port_count = None if count is None else _digits(count, "m= port count", 65535)
        if port_count == 0:
            raise SipError("bad m= port count")
        return cls(media, port_n, proto, formats, port_count)


@dataclass(slots=True)
class SessionDescription(_Attributes):
    """A whole SDP body (RFC 8866 §5). ``v=0`` is implied; ``times`` holds ``t=``/``r=``."""

    origin: Origin
    name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    times: list[Timing] = field(default_factory=lambda: [Timing()])
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    unknown_lines: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(
        cls,
        data: bytes | str,
        *,
        max_size: int = MAX_SIZE,
        max_lines: int = MAX_LINES,
        max_media: int = MAX_MEDIA,
    ) -> SessionDescription:
        """Parse an SDP body; see the module docstring for what is accepted."""
        if isinstance(data, str):
            try:
                data = data.encode("utf-8")
            except UnicodeEncodeError:
                raise SipError("SDP is not valid UTF-8") from None
        if len(data) > max_size:
            raise SipError("SDP too large", 413)
        if b"\x00" in data:
            raise SipError("NUL in SDP")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SipError("SDP is not valid UTF-8") from None
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if "\r" in text:
                raise SipError("bare CR in SDP")
        lines = text.split("\n")
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) > max_lines:
            raise SipError("too many SDP lines", 413)
        if not lines or lines[0] != "v=0":
            raise SipError("SDP must start with v=0")
        return _Parser(max_media).run(lines)

    def serialize(self) -> bytes:
        out = ["v=0", f"o={self.origin}", f"s={self.name}"]
        if self.information is not None:
            out.append("i=" + self.information)
        if self.uri is not None:
            out.append("u=" + self.uri)
        out += ["e=" + e for e in self.emails]
        out += ["p=" + p for p in self.phones]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += ["b=" + str(b) for b in self.bandwidths]
        for t in self.times:
            out.append(f"t={t.start} {t.stop}")
            out += ["r=" + r for r in t.repeats]
        if self.zone is not None:
            out.append("z=" + self.zone)
        if self.key is not None:
            out.append("k=" + self.key)
        out += ["a=" + str(a) for a in self.attributes]
        out += [f"{letter}={value}" for letter, value in self.unknown_lines]
        for m in self.media:
            m._serialize_into(out)
        out.append("")
        text = "\r\n".join(out)
        # A value edited to hold a line break would smuggle extra lines to the peer.
        n = len(out) - 1
        if text.count("\n") != n or text.count("\r") != n or "\x00" in text:
            raise SipError("line break or NUL in an SDP value", 500)
        return text.encode("utf-8")

    __bytes__ = serialize

    def copy(self) -> SessionDescription:
        """A copy whose lists can be edited independently (the values are immutable)."""
        media = [
            MediaDescription(
                m.media,
                m.port,
                m.proto,
                list(m.formats),
                m.port_count,
                m.information,
                list(m.connections),
                list(m.bandwidths),
                m.key,
                list(m.attributes),
                list(m.unknown_lines),
            )
            for m in self.media
        ]
        return SessionDescription(
            self.origin,
            self.name,
            self.information,
            self.uri,
            list(self.emails),
            list(self.phones),
            self.connection,
            list(self.bandwidths),
            list(self.times),
            self.zone,
            self.key,
            list(self.attributes),
            list(self.unknown_lines),
            media,
        )

    # Effective values: media level overrides session level (RFC 8866 §5).

    def connection_for(self, media: MediaDescription) -> Connection | None:
        return media.connection or self.connection

    def direction_for(self, media: MediaDescription) -> Direction:
        """Media-level direction, else session-level, else sendrecv (RFC 8866 §6.7)."""
        return media.direction or self.direction or Direction.SENDRECV

    def is_on_hold(self, media: MediaDescription) -> bool:
        """Whether the author of this SDP puts ``media`` on hold: sendonly or inactive
        (RFC 3264 §8.4), or the RFC 2543 style ``c=0.0.0.0``. The latter is not hold when
        ICE is in use: trickle ICE (RFC 8840) offers 0.0.0.0 as a placeholder."""
        if self.direction_for(media) in (Direction.SENDONLY, Direction.INACTIVE):
            return True
        conn = self.connection_for(media)
        ice = media.ice_ufrag is not None or self.ice_ufrag is not None
        return conn is not None and conn.is_unspecified and not ice

    def value_for(self, media: MediaDescription, name: str) -> str | None:
        """The value of attribute ``name`` at media level, else at session level (for
        attributes allowed at both, e.g. ice-ufrag, ice-pwd, setup)."""
        value = media.value(name)
        return self.value(name) if value is None else value

    def fingerprints_for(self, media: MediaDescription) -> list[Fingerprint]:
        """Media-level fingerprints, else session-level ones (RFC 8122 §5)."""
        return media.fingerprints() or self.fingerprints()

    def setup_for(self, media: MediaDescription) -> Setup | None:
        return media.setup() or self.setup()

    def groups(self) -> list[Group]:
        return [Group.parse(v) for v in self.values("group")]

    @property
    def ice_lite(self) -> bool:
        """``a=ice-lite`` (RFC 8839 §5.3, session level)."""
        return self.has("ice-lite")

    def set_connection_address(self, address: str, media: MediaDescription | None = None) -> None:
        """Point ``media`` (or, without it, the session ``c=`` and every media-level ``c=``
        there is) at ``address``; IP4 or IP6 follows from the literal."""
        conn = Connection.for_address(address)
        if media is not None:
            media.set_connection(conn)
            return
        self.connection = conn
        for m in self.media:
            if m.connections:
                m.set_connection(conn)


class _Parser:
    """One pass over the lines; lines may come out of §5 order (see module docstring)."""

    __slots__ = ("fields", "max_media", "media", "session_attrs", "session_unknown")

    def __init__(self, max_media: int) -> None:
        self.max_media = max_media
        self.fields: dict[str, str] = {}
        self.media: list[MediaDescription] = []
        self.session_attrs: list[Attribute] = []
        self.session_unknown: list[tuple[str, str]] = []

    def run(self, lines: list[str]) -> SessionDescription:
        emails: list[str] = []
        phones: list[str] = []
        bandwidths: list[Bandwidth] = []
        times: list[Timing] = []
        attrs = self.session_attrs
        unknown = self.session_unknown
        fields = self.fields
        m: MediaDescription | None = None
        # Locals for the per-line hot path (a= lines are four in five of a WebRTC offer).
        new_tuple, attr_cls, common, token_match = (
            tuple.__new__,
            Attribute,
            _COMMON_NAMES,
            _TOKEN_RE.fullmatch,
        )
        for n, line in enumerate(lines[1:], 2):
            if line[:2] == "a=":
                name, sep, attr_value = line[2:].partition(":")
                if name not in common and token_match(name) is None:
                    raise SipError(f"bad attribute name in SDP line {n}")
                # tuple.__new__ is what Attribute(name, value) does, minus a Python call frame.
                attrs.append(new_tuple(attr_cls, (name, attr_value if sep else None)))
                continue
            if line[1:2] != "=":
                raise SipError(f"malformed SDP line {n}")
            letter = line[0]
            value = line[2:]
            if letter == "m":
                if len(self.media) >= self.max_media:
                    raise SipError("too many SDP media sections", 413)
                m = MediaDescription._parse_m(value)
                self.media.append(m)
                attrs = m.attributes
                unknown = m.unknown_lines
            elif not "a" <= letter <= "z":
                raise SipError(f"malformed SDP line {n}")
            elif m is not None:
                if letter == "c":
                    m.connections.append(Connection.parse(value))
                elif letter == "b":
                    m.bandwidths.append(Bandwidth.parse(value))
                elif letter in _SESSION_LETTERS and letter not in _MEDIA_LETTERS:
                    raise SipError(f"{letter}= line in a media section")
                elif letter == "i":
                    if m.information is not None:
                        raise SipError("repeated i= line")
                    m.information = value
                elif letter == "k":
                    if m.key is not None:
                        raise SipError("repeated k= line")
                    m.key = value
                else:
                    unknown.append((letter, value))
            elif letter == "b":
                bandwidths.append(Bandwidth.parse(value))
            elif letter == "t":
                times.append(Timing.parse(value))
            elif letter == "r":
                if not times:
                    raise SipError("r= line before t=")
                t = times[-1]
                times[-1] = Timing(t.start, t.stop, (*t.repeats, value))
            elif letter == "v":
                raise SipError("repeated v= line")
            elif letter == "e":
                emails.append(value)
            elif letter == "p":
                phones.append(value)
            elif letter in _SESSION_LETTERS:  # o s i u c z k (and a second v)
                if letter in fields:
                    raise SipError(f"repeated {letter}= line")
                fields[letter] = value
            else:
                unknown.append((letter, value))
        if "o" not in fields or "s" not in fields:
            raise SipError("SDP without o= or s= line")
        if not times:
            raise SipError("SDP without t= line")
        conn = fields.get("c")
        sd = SessionDescription(
            origin=Origin.parse(fields["o"]),
            name=fields["s"],
            information=fields.get("i"),
            uri=fields.get("u"),
            emails=emails,
            phones=phones,
            connection=None if conn is None else Connection.parse(conn),
            bandwidths=bandwidths,
            times=times,
            zone=fields.get("z"),
            key=fields.get("k"),
            attributes=self.session_attrs,
            unknown_lines=self.session_unknown,
            media=self.media,
        )
        if sd.connection is None:
            # RFC 8866 §5.7: a c= at session level or in every media section. Rejected
            # streams (port 0) carry no address worth checking.
            for media in sd.media:
                if not media.connections and media.port != 0:
                    raise SipError("media section without c= line")
        return sd


parse_sdp = SessionDescription.parse
