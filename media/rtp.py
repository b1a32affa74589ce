"""RTP and RTCP fixed headers (RFC 3550) and the first-byte demultiplexer (RFC 7983).

Only what a relay needs to route a packet: the fixed header fields, the header
length (where the payload, and for SRTP the encrypted part, begins) and the
packet's kind.  Nothing here looks at payloads, so every function works the same
on RTP and on SRTP, whose headers are sent in the clear (RFC 3711 §3.1).

Errors: one exception type, :class:`RtpError`, whose ``reason`` names the drop
counter the relay bumps (``too_short``, ``not_rtp``, ``malformed``).

The kinds of datagram that share a media port (RFC 7983 §7, first byte B)::

    0   <= B <=   3  STUN             (RFC 5389)
    16  <= B <=  19  ZRTP             (RFC 6189; not spoken here)
    20  <= B <=  63  DTLS             (RFC 6347)
    64  <= B <=  79  TURN channel     (RFC 5766; not spoken here)
    128 <= B <= 191  RTP or RTCP      (RFC 3550: version 2 in the top two bits)

RTP and RTCP on one port (``a=rtcp-mux``) are told apart by the second byte
(RFC 5761 §4): RTCP packet types 192-223 would be RTP payload types 64-95 with
the marker bit set, a range RFC 5761 forbids for RTP, so a second byte in
192-223 means RTCP.  That covers SR/RR/SDES/BYE/APP (200-204) and the feedback
and XR types (205-207) that a check for 200-204 alone would pass as RTP.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

RTP_VERSION: Final = 2
RTP_HEADER_MIN: Final = 12  # RFC 3550 §5.1: V..SSRC
RTCP_HEADER_MIN: Final = 8  # RFC 3550 §6.4.1: V/P/RC, PT, length, SSRC

# RFC 5761 §4: second byte 192..223 is RTCP when RTP and RTCP share a port.
RTCP_PT_MIN: Final = 192
RTCP_PT_MAX: Final = 223

# RTCP packet types, RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2.
RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
RTCP_APP: Final = 204
RTCP_RTPFB: Final = 205
RTCP_PSFB: Final = 206
RTCP_XR: Final = 207

_FIXED = struct.Struct("!BBHII")
_RTCP_FIXED = struct.Struct("!BBHI")
_EXTENSION = struct.Struct("!HH")


class RtpError(ValueError):
    """A datagram that is not a usable RTP or RTCP packet.

    ``reason`` is the relay's drop counter for it: ``too_short`` (shorter than the
    fixed header), ``not_rtp`` (not version 2) or ``malformed`` (CSRC list or header
    extension running past the end of the datagram).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PacketKind(enum.IntEnum):
    """What a datagram on a media port is, by RFC 7983 §7 and RFC 5761 §4."""

    RTP = 0
    RTCP = 1
    STUN = 2
    DTLS = 3
    OTHER = 4  # empty, ZRTP, TURN channel data, or garbage


# One lookup per datagram: the first byte decides all but RTP versus RTCP.
def _first_byte_kind(b: int) -> PacketKind:
    if b <= 3:
        return PacketKind.STUN
    if 20 <= b <= 63:
        return PacketKind.DTLS
    if 128 <= b <= 191:
        return PacketKind.RTP
    return PacketKind.OTHER


_FIRST_BYTE: Final = tuple(_first_byte_kind(b) for b in range(256))


def classify(data: bytes) -> PacketKind:
    """The kind of a datagram received on a media port (RFC 7983 §7, RFC 5761 §4).

    A one-byte datagram with an RTP first byte is RTP here; the RTP or RTCP parser
    then refuses it as too short.
    """
    if not data:
        return PacketKind.OTHER
    kind = _FIRST_BYTE[data[0]]
    if kind is PacketKind.RTP and len(data) > 1 and RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX:
        return PacketKind.RTCP
    return kind


def is_rtcp(data: bytes) -> bool:
    """True when an RTP/RTCP datagram is RTCP (RFC 5761 §4)."""
    return len(data) > 1 and RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fixed RTP header (RFC 3550 §5.1), with the CSRC list and the extension.

    ::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        |V=2|P|X|  CC   |M|     PT      |       sequence number         |
        |                           timestamp                           |
        |           synchronization source (SSRC) identifier            |
        |            contributing source (CSRC) identifiers ...         |
        |      defined by profile       |           length              |  (X=1, §5.3.1)
        |                        header extension ...                   |

    ``header_length`` is where the payload begins.  Padding (P) is not checked: in
    SRTP the padding count sits in the encrypted payload (RFC 3711 §3.1).
    """

    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None
    header_length: int

    @classmethod
    def parse(cls, data: bytes) -> RtpHeader:
        """Parse the header at the start of ``data``; raise :class:`RtpError`."""
        if len(data) < RTP_HEADER_MIN:
            raise RtpError("too_short", f"RTP packet of {len(data)} bytes")
        b0, b1, sequence, timestamp, ssrc = _FIXED.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError("not_rtp", f"RTP version {version}")
        csrc_count = b0 & 0x0F
        length = RTP_HEADER_MIN + 4 * csrc_count
        if len(data) < length:
            raise RtpError("malformed", f"{csrc_count} CSRCs past the end of the packet")
        csrcs = struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_MIN) if csrc_count else ()
        extension = bool(b0 & 0x10)
        profile: int | None = None
        if extension:
            # RFC 3550 §5.3.1: a 4-byte header, then `length` 32-bit words.
            if len(data) < length + 4:
                raise RtpError("malformed", "header extension past the end of the packet")
            profile, words = _EXTENSION.unpack_from(data, length)
            length += 4 + 4 * words
            if len(data) < length:
                raise RtpError("malformed", "header extension past the end of the packet")
        return cls(
            version=version,
            padding=bool(b0 & 0x20),
            extension=extension,
            csrc_count=csrc_count,
            marker=bool(b1 & 0x80),
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            csrcs=tuple(csrcs),
            extension_profile=profile,
            header_length=length,
        )


@dataclass(frozen=True, slots=True)
class RtcpHeader:
    """The header of the first packet of an RTCP compound packet (RFC 3550 §6.4.1).

    ::

        |V=2|P|    RC   |   PT=SR=200   |             length            |
        |                         SSRC of sender                        |

    ``length`` is in 32-bit words minus one, as on the wire; ``packet_length`` is
    the first packet's size in bytes.  In SRTCP the first 8 bytes stay in the clear
    (RFC 3711 §3.4), so this parses SRTCP as well; the length is not checked against
    the datagram because SRTCP appends its index and tag.
    """

    version: int
    padding: bool
    count: int
    packet_type: int
    length: int
    ssrc: int

    @property
    def packet_length(self) -> int:
        return 4 * (self.length + 1)

    @classmethod
    def parse(cls, data: bytes) -> RtcpHeader:
        """Parse the first RTCP header of ``data``; raise :class:`RtpError`."""
        if len(data) < RTCP_HEADER_MIN:
            raise RtpError("too_short", f"RTCP packet of {len(data)} bytes")
        b0, packet_type, length, ssrc = _RTCP_FIXED.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError("not_rtp", f"RTCP version {version}")
        if not RTCP_PT_MIN <= packet_type <= RTCP_PT_MAX:
            raise RtpError("not_rtp", f"RTCP packet type {packet_type}")
        return cls(
            version=version,
            padding=bool(b0 & 0x20),
            count=b0 & 0x1F,
            packet_type=packet_type,
            length=length,
            ssrc=ssrc,
        )


def rtp_header_length(data: bytes) -> int:
    """Validate an RTP header as :meth:`RtpHeader.parse` does and return its length,
    without building the object (the relay's per-packet check)."""
    size = len(data)
    if size < RTP_HEADER_MIN:
        raise RtpError("too_short", f"RTP packet of {size} bytes")
    b0 = data[0]
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("not_rtp", f"RTP version {b0 >> 6}")
    length = RTP_HEADER_MIN + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if size < length + 4:
            raise RtpError("malformed", "header extension past the end of the packet")
        length += 4 + 4 * ((data[length + 2] << 8) | data[length + 3])
    if size < length:
        raise RtpError("malformed", "CSRC list or header extension past the end of the packet")
    return length


def rtp_ssrc(data: bytes) -> int:
    """The SSRC of a valid RTP header; raise :class:`RtpError` as the parser does."""
    rtp_header_length(data)
    return int.from_bytes(data[8:12], "big")


def rtcp_ssrc(data: bytes) -> int:
    """The sender SSRC of a valid RTCP header; raise :class:`RtpError` as the parser
    does."""
    if len(data) < RTCP_HEADER_MIN:
        raise RtpError("too_short", f"RTCP packet of {len(data)} bytes")
    if data[0] >> 6 != RTP_VERSION:
        raise RtpError("not_rtp", f"RTCP version {data[0] >> 6}")
    if not RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX:
        raise RtpError("not_rtp", f"RTCP packet type {data[1]}")
    return int.from_bytes(data[4:8], "big")
