"""media/rtp: RTP/RTCP fixed headers (RFC 3550) and first-byte demux (RFC 7983, RFC 5761)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import (
    RTCP_RR,
    RTCP_SR,
    PacketKind,
    RtcpHeader,
    RtpError,
    RtpHeader,
    classify,
    is_rtcp,
    rtcp_ssrc,
    rtp_header_length,
    rtp_ssrc,
)

# A G.711 µ-law packet as a phone sends it: V=2, PT 0, seq 1, ts 160, SSRC 0xdeadbeef,
# 160 bytes of silence (0xff).  RFC 3550 §5.1 layout.
PCMU = bytes.fromhex("80000001000000a0deadbeef") + b"\xff" * 160

# Marker set, PT 101 (telephone-event, RFC 4733), two CSRCs, a one-byte-header
# extension (RFC 8285 §4.2: profile 0xBEDE, one word: id 1, len 0, value 0x20, pad).
RICH = (
    bytes.fromhex("b2e5 1234 00000fa0 11223344".replace(" ", ""))
    + bytes.fromhex("aaaaaaaa bbbbbbbb".replace(" ", ""))
    + bytes.fromhex("bede0001 10200000".replace(" ", ""))
    + bytes.fromhex("0a800190")  # RFC 4733 event 10, end bit, volume 0, duration 400
)

# An RTCP sender report (RFC 3550 §6.4.1): V=2, RC 0, PT 200, length 6 (28 bytes).
SR = bytes.fromhex("80c80006deadbeef") + bytes(20)
# A receiver report with one report block (RC 1, PT 201, length 7: 32 bytes).
RR = bytes.fromhex("81c90007cafebabe") + bytes(24)

# RFC 5769 §2.1 sample STUN request: the first bytes (type 0x0001, length 0x0058, cookie).
STUN = bytes.fromhex("000100582112a442") + bytes(12)
# A DTLS 1.2 ClientHello record header (RFC 6347 §4.1: content type 22, version fefd).
DTLS = bytes.fromhex("16fefd0000000000000000") + bytes(10)


def test_parse_g711_packet() -> None:
    h = RtpHeader.parse(PCMU)
    assert (h.version, h.padding, h.extension, h.csrc_count, h.marker) == (
        2,
        False,
        False,
        0,
        False,
    )
    assert (h.payload_type, h.sequence, h.timestamp, h.ssrc) == (0, 1, 160, 0xDEADBEEF)
    assert h.csrcs == () and h.extension_profile is None
    assert h.header_length == 12


def test_parse_marker_csrcs_extension_padding() -> None:
    h = RtpHeader.parse(RICH)
    assert h.padding and h.extension and h.marker
    assert h.csrc_count == 2 and h.csrcs == (0xAAAAAAAA, 0xBBBBBBBB)
    assert (h.payload_type, h.sequence, h.timestamp, h.ssrc) == (101, 0x1234, 4000, 0x11223344)
    assert h.extension_profile == 0xBEDE
    assert h.header_length == 12 + 8 + 8
    assert RICH[h.header_length :] == bytes.fromhex("0a800190")


def test_rtp_header_is_a_frozen_slotted_value() -> None:
    h = RtpHeader.parse(PCMU)
    with pytest.raises(AttributeError):
        h.ssrc = 1  # type: ignore[misc]
    assert not hasattr(h, "__dict__")
    assert h == RtpHeader.parse(PCMU)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (PCMU[:11], "too_short"),
        (b"\x40" + PCMU[1:], "not_rtp"),  # version 1
        (b"\x00" + PCMU[1:], "not_rtp"),  # version 0
        (b"\x8f" + PCMU[1:12], "malformed"),  # 15 CSRCs announced, none present
        (b"\x82" + PCMU[1:12] + b"\x00" * 4, "malformed"),  # 2 announced, 1 present
        (b"\x90" + PCMU[1:12], "malformed"),  # extension flag, no extension header
        (b"\x90" + PCMU[1:12] + bytes.fromhex("bede0002") + b"\x00" * 4, "malformed"),
    ],
)
def test_bad_rtp_raises_rtp_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError) as info:
        RtpHeader.parse(data)
    assert info.value.reason == reason


def test_parse_rtcp_sender_and_receiver_reports() -> None:
    sr = RtcpHeader.parse(SR)
    assert (sr.version, sr.padding, sr.count, sr.packet_type) == (2, False, 0, RTCP_SR)
    assert (sr.length, sr.packet_length, sr.ssrc) == (6, 28, 0xDEADBEEF)
    rr = RtcpHeader.parse(RR)
    assert (rr.count, rr.packet_type, rr.packet_length, rr.ssrc) == (1, RTCP_RR, 32, 0xCAFEBABE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (SR[:7], "too_short"),
        (b"\x40" + SR[1:], "not_rtp"),
        (b"\x80\x60" + SR[2:], "not_rtp"),  # packet type 96: RTP, not RTCP
    ],
)
def test_bad_rtcp(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError) as info:
        RtcpHeader.parse(data)
    assert info.value.reason == reason


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


# ---------------------------------------------------------------- demux


def _expected_first_byte_kind(b: int) -> PacketKind:
    """RFC 7983 §7, written out from the RFC's figure, independent of the table."""
    if 0 <= b <= 3:
        return PacketKind.STUN
    if 20 <= b <= 63:
        return PacketKind.DTLS
    if 128 <= b <= 191:
        return PacketKind.RTP
    return PacketKind.OTHER  # ZRTP 16-19, TURN channels 64-79, and the unassigned


@pytest.mark.parametrize("first", range(256))
def test_rfc7983_first_byte(first: int) -> None:
    # Second byte 0: never RTCP, so RTP-range first bytes classify as RTP.
    assert classify(bytes([first, 0]) + bytes(10)) is _expected_first_byte_kind(first)


def test_demux_real_packets() -> None:
    assert classify(PCMU) is PacketKind.RTP
    assert classify(RICH) is PacketKind.RTP
    assert classify(SR) is PacketKind.RTCP
    assert classify(RR) is PacketKind.RTCP
    assert classify(STUN) is PacketKind.STUN
    assert classify(DTLS) is PacketKind.DTLS
    assert classify(b"") is PacketKind.OTHER
    assert classify(b"\x80") is PacketKind.RTP  # the parser then says too_short
    assert classify(b"GET / HTTP/1.1\r\n") is PacketKind.OTHER


@pytest.mark.parametrize("second", range(256))
def test_rfc5761_rtp_rtcp_demux(second: int) -> None:
    """RFC 5761 §4: second byte 192-223 is RTCP (SR..XR 200-207 included), the rest
    RTP, marker bit or not (PT 96 with marker is 224: RTP)."""
    data = bytes([0x80, second]) + bytes(10)
    expected = PacketKind.RTCP if 192 <= second <= 223 else PacketKind.RTP
    assert classify(data) is expected
    assert is_rtcp(data) is (expected is PacketKind.RTCP)


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 205, 206, 207])
def test_every_common_rtcp_type_demuxes_as_rtcp(packet_type: int) -> None:
    assert classify(struct.pack("!BBHI", 0x81, packet_type, 1, 7)) is PacketKind.RTCP


@given(st.binary(max_size=64))
def test_parsers_raise_only_rtp_error(data: bytes) -> None:
    """Invariant: any datagram classifies, and the parsers either parse or raise
    RtpError, whose header never claims more bytes than the datagram holds."""
    assert isinstance(classify(data), PacketKind)
    try:
        h = RtpHeader.parse(data)
    except RtpError as exc:
        assert exc.reason in {"too_short", "not_rtp", "malformed"}
    else:
        assert 12 <= h.header_length <= len(data)
    try:
        RtcpHeader.parse(data)
    except RtpError as exc:
        assert exc.reason in {"too_short", "not_rtp"}


def _outcome(parse: Callable[[bytes], object], data: bytes) -> object:
    try:
        return parse(data)
    except RtpError as exc:
        return exc.reason


rtp_like = st.one_of(
    st.binary(max_size=48),
    # Version 2 with random flags, CSRC counts and extension lengths: the edge cases.
    st.tuples(st.integers(0x80, 0xBF), st.binary(min_size=0, max_size=60)).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
)


@given(rtp_like)
def test_fast_rtp_check_agrees_with_the_parser(data: bytes) -> None:
    """The relay's per-packet check (no object built) and the parser are one
    definition: same SSRC, same header length, same refusal reason."""
    parsed = _outcome(RtpHeader.parse, data)
    if isinstance(parsed, RtpHeader):
        assert rtp_ssrc(data) == parsed.ssrc
        assert rtp_header_length(data) == parsed.header_length
    else:
        assert _outcome(rtp_ssrc, data) == parsed


@given(rtp_like)
def test_fast_rtcp_check_agrees_with_the_parser(data: bytes) -> None:
    parsed = _outcome(RtcpHeader.parse, data)
    if isinstance(parsed, RtcpHeader):
        assert rtcp_ssrc(data) == parsed.ssrc
    else:
        assert _outcome(rtcp_ssrc, data) == parsed


def test_fast_checks_on_the_vectors() -> None:
    assert rtp_ssrc(PCMU) == 0xDEADBEEF and rtp_header_length(RICH) == 28
    assert rtcp_ssrc(SR) == 0xDEADBEEF and rtcp_ssrc(RR) == 0xCAFEBABE
