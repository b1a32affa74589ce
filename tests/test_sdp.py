"""Tests for sip/sdp.py: real-world round trips, RFC vectors, typed views, rewrites, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import textwrap
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SipError
from sip.sdp import (
    MAX_SIZE,
    Attribute,
    Bandwidth,
    Candidate,
    Connection,
    Crypto,
    CryptoKey,
    Direction,
    Fingerprint,
    Fmtp,
    Group,
    MediaDescription,
    Origin,
    Proto,
    Rtcp,
    RtcpFb,
    RtpMap,
    SessionDescription,
    Setup,
    parse_sdp,
    proto_is_avpf,
    proto_is_dtls,
    proto_is_srtp,
)


def crlf(text: str) -> bytes:
    """A dedented multi-line literal as an SDP body with CRLF line ends."""
    return textwrap.dedent(text).lstrip("\n").replace("\n", "\r\n").encode()


FP_CHROME = (
    "93:90:EF:32:AD:DF:32:BF:DE:A7:86:BC:1E:20:67:95:"
    "92:49:80:68:BC:BF:CD:35:7E:A1:0A:B6:4E:A3:5E:47"
)
FP_FIREFOX = (
    "16:E5:F6:0F:20:7A:1A:00:73:45:1C:35:A9:D3:15:D1:"
    "7F:DC:17:D7:FA:B6:64:49:B0:0C:DF:AA:DC:8B:24:9E"
)
CANDIDATES_CHROME = """\
a=candidate:2999745851 1 udp 2122260223 192.168.1.34 54321 typ host generation 0 network-id 1 network-cost 10
a=candidate:1606961068 1 udp 1686052607 198.51.100.23 54321 typ srflx raddr 192.168.1.34 rport 54321 generation 0 network-id 1 network-cost 10
a=candidate:4233069003 1 tcp 1518280447 192.168.1.34 9 typ host tcptype active generation 0 network-id 1 network-cost 10
"""  # noqa: E501

# Chrome (M120-era) offer after ICE gathering: BUNDLE, ICE, DTLS, rtcp-fb, extmap, ssrc lines.
CHROME_OFFER = crlf(
    f"""
    v=0
    o=- 8135622487335624133 2 IN IP4 127.0.0.1
    s=-
    t=0 0
    a=group:BUNDLE 0 1
    a=extmap-allow-mixed
    a=msid-semantic: WMS 5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f
    m=audio 54321 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
    c=IN IP4 198.51.100.23
    a=rtcp:9 IN IP4 0.0.0.0
    {CANDIDATES_CHROME.replace(chr(10), chr(10) + "    ")}a=ice-ufrag:EsAw
    a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
    a=ice-options:trickle
    a=fingerprint:sha-256 {FP_CHROME}
    a=setup:actpass
    a=mid:0
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
    a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
    a=sendrecv
    a=msid:5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f 0b6d2f4e-8a1c-4e3b-9d5f-1a2b3c4d5e6f
    a=rtcp-mux
    a=rtcp-rsize
    a=rtpmap:111 opus/48000/2
    a=rtcp-fb:111 transport-cc
    a=fmtp:111 minptime=10;useinbandfec=1
    a=rtpmap:63 red/48000/2
    a=fmtp:63 111/111
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:13 CN/8000
    a=rtpmap:110 telephone-event/48000
    a=rtpmap:126 telephone-event/8000
    a=ssrc:2748326081 cname:Qy3Tg8d1nV5vKx2J
    a=ssrc:2748326081 msid:5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f 0b6d2f4e-8a1c-4e3b-9d5f-1a2b3c4d5e6f
    m=video 54321 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46
    c=IN IP4 198.51.100.23
    a=rtcp:9 IN IP4 0.0.0.0
    {CANDIDATES_CHROME.replace(chr(10), chr(10) + "    ")}a=ice-ufrag:EsAw
    a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
    a=ice-options:trickle
    a=fingerprint:sha-256 {FP_CHROME}
    a=setup:actpass
    a=mid:1
    a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
    a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
    a=extmap:13 urn:3gpp:video-orientation
    a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
    a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
    a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
    a=sendrecv
    a=msid:5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f 7c3e5a1b-2d4f-4b6a-8c9e-0f1a2b3c4d5e
    a=rtcp-mux
    a=rtcp-rsize
    a=rtpmap:96 VP8/90000
    a=rtcp-fb:96 goog-remb
    a=rtcp-fb:96 transport-cc
    a=rtcp-fb:96 ccm fir
    a=rtcp-fb:96 nack
    a=rtcp-fb:96 nack pli
    a=rtpmap:97 rtx/90000
    a=fmtp:97 apt=96
    a=rtpmap:102 H264/90000
    a=rtcp-fb:102 goog-remb
    a=rtcp-fb:102 transport-cc
    a=rtcp-fb:102 ccm fir
    a=rtcp-fb:102 nack
    a=rtcp-fb:102 nack pli
    a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
    a=rtpmap:103 rtx/90000
    a=fmtp:103 apt=102
    a=rtpmap:45 AV1/90000
    a=rtcp-fb:45 goog-remb
    a=rtcp-fb:45 transport-cc
    a=rtcp-fb:45 ccm fir
    a=rtcp-fb:45 nack
    a=rtcp-fb:45 nack pli
    a=fmtp:45 level-idx=5;profile=0;tier=0
    a=rtpmap:46 rtx/90000
    a=fmtp:46 apt=45
    a=ssrc-group:FID 1138251429 3504381203
    a=ssrc:1138251429 cname:Qy3Tg8d1nV5vKx2J
    a=ssrc:1138251429 msid:5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f 7c3e5a1b-2d4f-4b6a-8c9e-0f1a2b3c4d5e
    a=ssrc:3504381203 cname:Qy3Tg8d1nV5vKx2J
    a=ssrc:3504381203 msid:5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f 7c3e5a1b-2d4f-4b6a-8c9e-0f1a2b3c4d5e
    """
)

# Chrome audio-only offer, about 1.2 KB: the size the per-call parse budget is stated for.
CHROME_AUDIO_OFFER = CHROME_OFFER.split(b"m=video")[0].replace(b"BUNDLE 0 1", b"BUNDLE 0")

# Firefox (SDPARTA) audio offer: session-level fingerprint, braces in msid, end-of-candidates.
FIREFOX_OFFER = crlf(
    f"""
    v=0
    o=mozilla...THIS_IS_SDPARTA-115.0 6702463539468063018 0 IN IP4 0.0.0.0
    s=-
    t=0 0
    a=fingerprint:sha-256 {FP_FIREFOX}
    a=group:BUNDLE 0
    a=ice-options:trickle
    a=msid-semantic:WMS *
    m=audio 49603 UDP/TLS/RTP/SAVPF 109 9 0 8 101
    c=IN IP4 203.0.113.77
    a=candidate:0 1 UDP 2122252543 192.168.1.34 49603 typ host
    a=candidate:2 1 TCP 2105524479 192.168.1.34 9 typ host tcptype active
    a=candidate:1 1 UDP 1686052863 203.0.113.77 49603 typ srflx raddr 192.168.1.34 rport 49603
    a=sendrecv
    a=end-of-candidates
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level
    a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
    a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1
    a=fmtp:101 0-15
    a=ice-pwd:5c2b1a8e9f3d4c6b7a0e1f2d3c4b5a69
    a=ice-ufrag:9d8e7f6a
    a=mid:0
    a=msid:{{4f5e6d7c-8b9a-4012-a3b4-c5d6e7f80912}} {{0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}}
    a=rtcp-mux
    a=rtpmap:109 opus/48000/2
    a=rtpmap:9 G722/8000/1
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=setup:actpass
    a=ssrc:3086412719 cname:{{7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928}}
    """
)

# baresip offering SDES-SRTP: RTP/SAVP with three crypto suites, one of them AES-256.
BARESIP_KEY_80 = "9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j"
BARESIP_KEY_32 = "EHLfMSxGNDSSJ+JjID1UUWH9KtTtAgzrlB2j0bA4"
BARESIP_KEY_256 = "jD+Vy+qiBSeoZXfeI7fRlRh8SL1FfirRs5hoOIvoHACwEF6pPwsORP2d8RAXsQ=="
BARESIP_OFFER = crlf(
    f"""
    v=0
    o=- 1918268350 2042386513 IN IP4 192.0.2.10
    s=-
    c=IN IP4 192.0.2.10
    t=0 0
    m=audio 10770 RTP/SAVP 96 9 0 8 101
    b=AS:128
    a=rtpmap:96 opus/48000/2
    a=fmtp:96 stereo=1;sprop-stereo=1
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=sendrecv
    a=label:1
    a=rtcp-rsize
    a=ssrc:3211254137 cname:sip:alice@example.com
    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}
    a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{BARESIP_KEY_32}
    a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{BARESIP_KEY_256}
    a=ptime:20
    """
)

# Asterisk towards a carrier: plain RTP/AVP, PCMU/PCMA/G729/telephone-event.
ASTERISK_OFFER = crlf(
    """
    v=0
    o=- 1523987291 1523987291 IN IP4 203.0.113.50
    s=Asterisk
    c=IN IP4 203.0.113.50
    t=0 0
    m=audio 17238 RTP/AVP 0 8 18 101
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:18 G729/8000
    a=fmtp:18 annexb=no
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-16
    a=ptime:20
    a=maxptime:150
    a=sendrecv
    """
)

# A carrier SBC's offer, one session-level c= and no direction attribute (sendrecv implied).
CARRIER_OFFER = crlf(
    """
    v=0
    o=Sonus_UAC 192837 273645 IN IP4 198.51.100.77
    s=SIP Media Capabilities
    c=IN IP4 198.51.100.77
    t=0 0
    m=audio 28976 RTP/AVP 0 8 101
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=maxptime:20
    """
)

# Re-INVITE putting the call on hold the RFC 3264 §8.4 way: a=sendonly, version bumped.
HOLD_SENDONLY = ASTERISK_OFFER.replace(b"1523987291 IN", b"1523987292 IN").replace(
    b"a=sendrecv", b"a=sendonly"
)

# Re-INVITE putting the call on hold the RFC 2543 way: c=0.0.0.0 (still common on old gear).
HOLD_NULL_ADDRESS = crlf(
    """
    v=0
    o=CiscoSystemsSIP-GW-UserAgent 4561 7891 IN IP4 192.0.2.44
    s=SIP Call
    c=IN IP4 0.0.0.0
    t=0 0
    m=audio 18564 RTP/AVP 0 101
    c=IN IP4 0.0.0.0
    a=rtpmap:0 PCMU/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=ptime:20
    """
)

IPV6_OFFER = crlf(
    """
    v=0
    o=- 3822105423 3822105424 IN IP6 2001:db8::10
    s=-
    c=IN IP6 2001:db8::10
    t=0 0
    m=audio 40002 RTP/AVP 9 8 0 101
    a=rtcp:40003 IN IP6 2001:db8::10
    a=rtpmap:9 G722/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-16
    a=sendrecv
    """
)

# RFC 8866 §5's example.
RFC8866_EXAMPLE = crlf(
    """
    v=0
    o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1
    s=Call to John Smith
    i=SDP Offer #1
    u=http://www.jdoe.example.com/home.html
    e=Jane Doe <jane@jdoe.example.com>
    p=+1 617 555-6011
    c=IN IP4 198.51.100.1
    t=0 0
    m=audio 49170 RTP/AVP 0
    m=audio 49180 RTP/AVP 0
    m=video 51372 RTP/AVP 99
    c=IN IP6 2001:db8::2
    a=rtpmap:99 h263-1998/90000
    """
)

# RFC 4566 §5's example: multicast with TTL, session-level direction, bounded t=.
RFC4566_EXAMPLE = crlf(
    """
    v=0
    o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
    s=SDP Seminar
    i=A Seminar on the session description protocol
    u=http://www.example.com/seminars/sdp.pdf
    e=j.doe@example.com (Jane Doe)
    c=IN IP4 224.2.17.12/127
    t=2873397496 2873404696
    a=recvonly
    m=audio 49170 RTP/AVP 0
    m=video 51372 RTP/AVP 99
    a=rtpmap:99 h263-1998/90000
    """
)

# RFC 8839's example SDP with ICE attributes (its candidate line folded there, joined here).
RFC8839_EXAMPLE = crlf(
    """
    v=0
    o=jdoe 2890844526 2890842807 IN IP4 203.0.113.141
    s=
    c=IN IP4 192.0.2.3
    t=0 0
    a=ice-options:ice2
    a=ice-pacing:50
    a=ice-pwd:asd88fgpdd777uzjYhagZg
    a=ice-ufrag:8hhY
    m=audio 45664 RTP/AVP 0
    b=RS:0
    b=RR:0
    a=rtpmap:0 PCMU/8000
    a=candidate:1 1 UDP 2130706431 203.0.113.141 8998 typ host
    a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 203.0.113.141 rport 8998
    """
)

# A GB28181 camera: y= and f= lines after the attributes, T.38-style oddities aside.
GB28181_OFFER = crlf(
    """
    v=0
    o=34020000001320000001 0 0 IN IP4 192.0.2.64
    s=Play
    c=IN IP4 192.0.2.64
    t=0 0
    m=video 15060 RTP/AVP 96
    a=recvonly
    a=rtpmap:96 PS/90000
    y=0100000001
    f=
    """
)

# A T.38 fax re-offer: m=image with udptl and T38 attributes.
T38_OFFER = crlf(
    """
    v=0
    o=- 1523987291 1523987293 IN IP4 203.0.113.50
    s=Asterisk
    c=IN IP4 203.0.113.50
    t=0 0
    m=image 4402 udptl t38
    a=T38FaxVersion:0
    a=T38MaxBitRate:14400
    a=T38FaxRateManagement:transferredTCF
    a=T38FaxMaxDatagram:400
    a=T38FaxUdpEC:t38UDPRedundancy
    """
)

SAMPLES = {
    "chrome": CHROME_OFFER,
    "chrome-audio": CHROME_AUDIO_OFFER,
    "firefox": FIREFOX_OFFER,
    "baresip": BARESIP_OFFER,
    "asterisk": ASTERISK_OFFER,
    "carrier": CARRIER_OFFER,
    "hold-sendonly": HOLD_SENDONLY,
    "hold-null": HOLD_NULL_ADDRESS,
    "ipv6": IPV6_OFFER,
    "rfc8866": RFC8866_EXAMPLE,
    "rfc4566": RFC4566_EXAMPLE,
    "rfc8839": RFC8839_EXAMPLE,
    "gb28181": GB28181_OFFER,
    "t38": T38_OFFER,
}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_world_sdp_round_trips_byte_exact(name: str) -> None:
    data = SAMPLES[name]
    sd = SessionDescription.parse(data)
    assert bytes(sd) == data
    assert sd.serialize() == data
    assert SessionDescription.parse(data.decode()) == sd


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_lf_only_input_is_accepted_and_written_back_with_crlf(name: str) -> None:
    data = SAMPLES[name]
    sd = parse_sdp(data.replace(b"\r\n", b"\n"))
    assert sd == parse_sdp(data)
    assert bytes(sd) == data


def test_missing_final_line_end_and_trailing_blank_lines_are_tolerated() -> None:
    assert bytes(parse_sdp(ASTERISK_OFFER[:-2])) == ASTERISK_OFFER
    assert bytes(parse_sdp(ASTERISK_OFFER + b"\r\n\r\n")) == ASTERISK_OFFER


def test_out_of_order_lines_are_accepted_and_written_in_rfc_order() -> None:
    # RFC 8866 §5 order puts c= and b= before a=; some gear does not. Attributes keep order.
    messy = crlf(
        """
        v=0
        o=- 1 1 IN IP4 192.0.2.1
        s=-
        a=tool:x
        t=0 0
        c=IN IP4 192.0.2.1
        m=audio 5004 RTP/AVP 0
        a=rtpmap:0 PCMU/8000
        c=IN IP4 192.0.2.2
        b=AS:64
        a=sendrecv
        """
    )
    sd = parse_sdp(messy)
    assert sd.media[0].connection == Connection("IN", "IP4", "192.0.2.2")
    assert [str(a) for a in sd.media[0].attributes] == ["rtpmap:0 PCMU/8000", "sendrecv"]
    out = bytes(sd)
    assert out.index(b"c=IN IP4 192.0.2.1") < out.index(b"t=0 0") < out.index(b"a=tool:x")
    assert out.index(b"b=AS:64") < out.index(b"a=rtpmap")
    assert parse_sdp(out) == sd
    assert bytes(parse_sdp(out)) == out


# ---------------------------------------------------------------- what the relay reads


def test_chrome_offer_typed_views() -> None:
    sd = parse_sdp(CHROME_OFFER)
    assert sd.origin == Origin("-", "8135622487335624133", 2, "IN", "IP4", "127.0.0.1")
    assert sd.groups() == [Group("BUNDLE", ("0", "1"))]
    assert sd.value("msid-semantic") == " WMS 5f1c0d7e-2a8b-4c3d-9e6f-7a8b9c0d1e2f"
    assert sd.has("extmap-allow-mixed") and sd.value("extmap-allow-mixed") is None
    audio, video = sd.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 54321, Proto.UDP_TLS_RTP_SAVPF)
    assert audio.formats == ["111", "63", "9", "0", "8", "13", "110", "126"]
    assert sd.connection_for(audio) == Connection("IN", "IP4", "198.51.100.23")
    assert audio.mid == "0" and video.mid == "1"
    assert audio.rtcp_mux and audio.rtcp() == Rtcp(9, Connection("IN", "IP4", "0.0.0.0"))
    assert audio.ice_ufrag == "EsAw" and audio.ice_pwd == "bP+XJMM09aR8AiX1jdukzR6Y"
    assert audio.ice_options() == ["trickle"]
    assert audio.setup() is Setup.ACTPASS
    [fp] = audio.fingerprints()
    assert fp.hash_func == "sha-256" and fp.digest() == bytes.fromhex(FP_CHROME.replace(":", ""))
    maps = audio.rtpmaps()
    assert maps["111"] == RtpMap(111, "opus", 48000, 2)
    assert maps["0"] == RtpMap(0, "PCMU", 8000) and maps["0"].channels is None
    assert audio.fmtps()["111"].parameters() == {"minptime": "10", "useinbandfec": "1"}
    assert audio.rtcp_fb() == [RtcpFb("111", "transport-cc")]
    assert RtcpFb("96", "nack", "pli") in video.rtcp_fb()
    assert RtcpFb("96", "ccm", "fir") in video.rtcp_fb()
    assert video.fmtps()["97"].parameters() == {"apt": "96"}
    host, srflx, tcp = audio.candidates()
    assert host == Candidate(
        "2999745851",
        1,
        "udp",
        2122260223,
        "192.168.1.34",
        54321,
        "host",
        extensions=(("generation", "0"), ("network-id", "1"), ("network-cost", "10")),
    )
    assert (srflx.type, srflx.related_address, srflx.related_port) == (
        "srflx",
        "192.168.1.34",
        54321,
    )
    assert tcp.transport == "tcp" and ("tcptype", "active") in tcp.extensions
    assert sd.direction_for(audio) is Direction.SENDRECV and not sd.is_on_hold(audio)
    assert proto_is_srtp(audio.proto) and proto_is_dtls(audio.proto) and proto_is_avpf(audio.proto)
    assert len(video.values("extmap")) == 8 and len(video.values("ssrc")) == 4


def test_firefox_offer_session_level_fingerprint_and_end_of_candidates() -> None:
    sd = parse_sdp(FIREFOX_OFFER)
    [audio] = sd.media
    assert audio.fingerprints() == []
    assert sd.fingerprints_for(audio) == [Fingerprint("sha-256", FP_FIREFOX)]
    assert sd.value_for(audio, "ice-ufrag") == "9d8e7f6a"
    assert sd.value_for(audio, "ice-options") == "trickle"  # session level only
    assert sd.setup_for(audio) is Setup.ACTPASS
    assert audio.end_of_candidates
    assert [c.type for c in audio.candidates()] == ["host", "host", "srflx"]
    assert audio.rtpmaps()["9"] == RtpMap(9, "G722", 8000, 1)
    assert sd.origin.username == "mozilla...THIS_IS_SDPARTA-115.0"


def test_baresip_sdes_offer_crypto() -> None:
    sd = parse_sdp(BARESIP_OFFER)
    [audio] = sd.media
    assert audio.proto == Proto.RTP_SAVP and proto_is_srtp(audio.proto)
    assert not proto_is_dtls(audio.proto) and not proto_is_avpf(audio.proto)
    c80, c32, c256 = audio.crypto()
    assert (c80.tag, c80.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    key, salt = c80.key_and_salt()
    assert key + salt == base64.b64decode(BARESIP_KEY_80) and (len(key), len(salt)) == (16, 14)
    assert c32.keys[0].decode() == base64.b64decode(BARESIP_KEY_32)
    key, salt = c256.key_and_salt()  # RFC 6188 §7.1: 256-bit key, 112-bit salt
    assert (len(key), len(salt)) == (32, 14)
    assert audio.ptime() == 20.0
    assert audio.bandwidths == [Bandwidth("AS", 128)]
    assert sd.connection_for(audio) == Connection("IN", "IP4", "192.0.2.10")


def test_asterisk_and_carrier_offers() -> None:
    sd = parse_sdp(ASTERISK_OFFER)
    [audio] = sd.media
    assert sorted(audio.rtpmaps()) == ["0", "101", "18", "8"]
    assert audio.fmtps()["101"].parameters() == {"0-16": ""}
    assert audio.fmtps()["18"] == Fmtp("18", "annexb=no")
    assert audio.direction is Direction.SENDRECV and not sd.is_on_hold(audio)
    assert audio.rtcp() is None and not audio.rtcp_mux and audio.crypto() == []
    carrier = parse_sdp(CARRIER_OFFER)
    assert carrier.media[0].connections == []
    assert carrier.connection_for(carrier.media[0]) == Connection("IN", "IP4", "198.51.100.77")
    assert carrier.direction_for(carrier.media[0]) is Direction.SENDRECV  # RFC 8866 §6.7.2
    assert carrier.media[0].ptime() is None


def test_hold_is_recognised_both_ways() -> None:
    # RFC 3264 §8.4: sendonly (or inactive) is hold; c=0.0.0.0 is the RFC 2543 form.
    sd = parse_sdp(HOLD_SENDONLY)
    assert sd.direction_for(sd.media[0]) is Direction.SENDONLY and sd.is_on_hold(sd.media[0])
    assert sd.origin.sess_version == 1523987292
    sd = parse_sdp(HOLD_NULL_ADDRESS)
    assert sd.connection_for(sd.media[0]).is_unspecified  # type: ignore[union-attr]
    assert sd.direction_for(sd.media[0]) is Direction.SENDRECV and sd.is_on_hold(sd.media[0])
    # An inactive stream is on hold too; recvonly is not (the author still receives).
    for direction, held in ((Direction.INACTIVE, True), (Direction.RECVONLY, False)):
        sd = parse_sdp(ASTERISK_OFFER)
        sd.media[0].set_direction(direction)
        assert sd.is_on_hold(sd.media[0]) is held


def test_trickle_ice_placeholder_address_is_not_hold() -> None:
    # RFC 8840 offers may carry c=IN IP4 0.0.0.0 and port 9 before any candidate is known.
    data = CHROME_AUDIO_OFFER.replace(b"c=IN IP4 198.51.100.23", b"c=IN IP4 0.0.0.0")
    sd = parse_sdp(data)
    assert not sd.is_on_hold(sd.media[0])
    sd.media[0].remove("ice-ufrag")
    assert sd.is_on_hold(sd.media[0])


def test_ipv6_offer() -> None:
    sd = parse_sdp(IPV6_OFFER)
    assert sd.origin.addrtype == "IP6" and sd.origin.address == "2001:db8::10"
    assert sd.connection == Connection("IN", "IP6", "2001:db8::10")
    assert sd.media[0].rtcp() == Rtcp(40003, Connection("IN", "IP6", "2001:db8::10"))


def test_media_level_direction_overrides_session_level() -> None:
    # RFC 8866 §6.7: a session-level direction is the default for media without one.
    sd = parse_sdp(RFC4566_EXAMPLE.replace(b"a=rtpmap:99", b"a=sendrecv\r\na=rtpmap:99"))
    audio, video = sd.media
    assert sd.direction is Direction.RECVONLY and video.direction is Direction.SENDRECV
    assert (sd.direction_for(audio), sd.direction_for(video)) == (
        Direction.RECVONLY,
        Direction.SENDRECV,
    )
    sd.set_direction(Direction.SENDONLY)
    assert sd.is_on_hold(audio) and not sd.is_on_hold(video)


def test_rfc_examples() -> None:
    sd = parse_sdp(RFC4566_EXAMPLE)
    assert sd.connection is not None and sd.connection.host == "224.2.17.12"
    assert sd.times[0].start == 2873397496 and sd.emails == ["j.doe@example.com (Jane Doe)"]
    assert [sd.direction_for(m) for m in sd.media] == [Direction.RECVONLY] * 2
    assert sd.media[0].direction is None
    sd = parse_sdp(RFC8866_EXAMPLE)
    assert sd.phones == ["+1 617 555-6011"] and sd.information == "SDP Offer #1"
    assert sd.uri == "http://www.jdoe.example.com/home.html"
    assert [sd.connection_for(m).addrtype for m in sd.media] == ["IP4", "IP4", "IP6"]  # type: ignore[union-attr]
    assert sd.media[2].rtpmaps()["99"] == RtpMap(99, "h263-1998", 90000)
    sd = parse_sdp(RFC8839_EXAMPLE)
    assert sd.name == "" and sd.ice_options() == ["ice2"] and sd.ice_ufrag == "8hhY"
    assert sd.value_for(sd.media[0], "ice-pwd") == "asd88fgpdd777uzjYhagZg"
    assert sd.media[0].bandwidths == [Bandwidth("RS", 0), Bandwidth("RR", 0)]


def test_unknown_type_letters_are_kept_after_the_attributes() -> None:
    sd = parse_sdp(GB28181_OFFER)
    assert sd.media[0].unknown_lines == [("y", "0100000001"), ("f", "")]
    assert sd.media[0].direction is Direction.RECVONLY


def test_t38_image_stream() -> None:
    sd = parse_sdp(T38_OFFER)
    assert (sd.media[0].media, sd.media[0].proto, sd.media[0].formats) == (
        "image",
        "udptl",
        ["t38"],
    )
    assert sd.media[0].value("T38MaxBitRate") == "14400"
    assert not proto_is_srtp("udptl") and sd.media[0].rtpmaps() == {}


@pytest.mark.parametrize(
    ("proto", "srtp", "dtls", "avpf"),
    [
        (Proto.RTP_AVP, False, False, False),
        (Proto.RTP_SAVP, True, False, False),
        (Proto.RTP_AVPF, False, False, True),
        (Proto.RTP_SAVPF, True, False, True),
        (Proto.UDP_TLS_RTP_SAVP, True, True, False),
        (Proto.UDP_TLS_RTP_SAVPF, True, True, True),
        ("TCP/DTLS/RTP/SAVPF", True, True, True),  # RFC 7850
        ("UDP/DTLS/SCTP", False, True, False),  # RFC 8841 data channel
        ("udptl", False, False, False),
    ],
)
def test_proto_predicates(proto: str, srtp: bool, dtls: bool, avpf: bool) -> None:
    assert (proto_is_srtp(proto), proto_is_dtls(proto), proto_is_avpf(proto)) == (srtp, dtls, avpf)
    assert f"m=audio 9 {Proto.UDP_TLS_RTP_SAVPF} 0" == "m=audio 9 UDP/TLS/RTP/SAVPF 0"


# ---------------------------------------------------------------- typed values: RFC vectors


RFC4568_CRYPTO = [
    # RFC 4568 §4: lifetime, MKI 1 of length 4, a session parameter.
    "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4 "
    "FEC_ORDER=FEC_SRTP",
    # RFC 4568 §4: two keys in one key-params list.
    "2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm|2^20|1:4;"
    "inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4 FEC_ORDER=FEC_SRTP",
    # RFC 4568 §9.2: lifetime omitted, MKI present.
    "1 AES_CM_128_HMAC_SHA1_32 inline:YUJDZGVmZ2hpSktMbW9QUXJzVHVWd3l6MTIzNDU2|1066:4",
    # RFC 4568 §7.1.2 / §9.1 style offer line.
    "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
]


@pytest.mark.parametrize("text", RFC4568_CRYPTO)
def test_rfc4568_crypto_examples_round_trip(text: str) -> None:
    crypto = Crypto.parse(text)
    assert str(crypto) == text
    assert all(len(k.decode()) == 30 for k in crypto.keys)


def test_rfc4568_crypto_fields() -> None:
    c = Crypto.parse(RFC4568_CRYPTO[0])
    assert (c.tag, c.suite, c.session_params) == (
        1,
        "AES_CM_128_HMAC_SHA1_80",
        ("FEC_ORDER=FEC_SRTP",),
    )
    [k] = c.keys
    assert (k.lifetime, k.mki, k.mki_length) == ("2^20", 1, 4)
    key, salt = c.key_and_salt()
    assert key == b"YS___semctl () {" and salt == b"\t220;}\n}\nunles"
    c = Crypto.parse(RFC4568_CRYPTO[1])
    assert [(k.mki, k.mki_length) for k in c.keys] == [(1, 4), (2, 4)]
    assert c.key_and_salt(1) == (b"ABcdef123456789A", b"BCDE0123456789")
    k = Crypto.parse(RFC4568_CRYPTO[2]).keys[0]
    assert (k.lifetime, k.mki, k.mki_length) == (None, 1066, 4)
    # RFC 4568 §9.1 separates fields by 1*WSP; str() writes single spaces.
    assert Crypto.parse(RFC4568_CRYPTO[0].replace(" ", " \t ")) == Crypto.parse(RFC4568_CRYPTO[0])


def test_crypto_make_and_key_material_stays_out_of_repr() -> None:
    c = Crypto.make(7, "AES_CM_128_HMAC_SHA1_80", bytes(range(16)), bytes(range(16, 30)))
    assert str(c) == "7 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
    assert Crypto.parse(str(c)) == c
    assert c.key_and_salt() == (bytes(range(16)), bytes(range(16, 30)))
    assert "AAECAw" not in repr(c)
    gcm = Crypto.make(1, "AEAD_AES_256_GCM", bytes(32), bytes(12), "2^31")
    assert Crypto.parse(str(gcm)).key_and_salt() == (bytes(32), bytes(12))
    with pytest.raises(SipError):
        Crypto.make(1, "AES_CM_128_HMAC_SHA1_80", bytes(16), bytes(12))


def test_crypto_unpadded_aes256_key_is_accepted() -> None:
    c = Crypto.parse(f"3 AES_256_CM_HMAC_SHA1_80 inline:{BARESIP_KEY_256.rstrip('=')}")
    assert c.keys[0].decode() == base64.b64decode(BARESIP_KEY_256)


def test_crypto_unknown_suite_parses_but_has_no_key_split() -> None:
    c = Crypto.parse("1 NEW_SUITE_FROM_THE_FUTURE inline:AAAA")
    assert c.keys[0].decode() == bytes(3)
    with pytest.raises(SipError):
        c.key_and_salt()


@pytest.mark.parametrize(
    "text",
    [
        "1 AES_CM_128_HMAC_SHA1_80",  # no key-params
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!",
        "1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==",  # 28 bytes
        "1 AES_256_CM_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j",  # 30 bytes
        "1 AES_CM_128_HMAC_SHA1_80 uri:sip:keys.example.com",  # not inline
        "1 AES_CM_128_HMAC_SHA1_80 inline:",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}|2^20|1:0",  # MKI length 1..128
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}|2^20|1:129",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}|1:4|2^20",  # MKI before lifetime
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}|2^x",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}|2^20|1:4|5",
        f"x AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}",
        f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY_80}",  # tag is 1*9DIGIT
    ],
)
def test_bad_crypto_raises_sip_error_without_quoting_the_key(text: str) -> None:
    with pytest.raises(SipError) as info:
        Crypto.parse(text)
    assert info.value.status_hint == 400
    assert BARESIP_KEY_80 not in info.value.reason and "AAECAw" not in info.value.reason


RFC8839_CANDIDATES = [
    "1 1 UDP 2130706431 203.0.113.141 8998 typ host",
    "2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 203.0.113.141 rport 8998",
]


@pytest.mark.parametrize(
    "text",
    [
        *RFC8839_CANDIDATES,
        *(line.removeprefix("a=candidate:") for line in CANDIDATES_CHROME.splitlines()),
        "3 1 udp 2122262783 2001:db8::34 50001 typ host generation 0",
        "1467250027 1 udp 2122260223 4b7c9e2a-1f3d-4e5b-8a6c-0d9e8f7a6b5c.local 56143 typ host",
        "5 1 udp 41885439 203.0.113.9 3478 typ relay raddr 198.51.100.23 rport 54321",
    ],
)
def test_candidate_lines_round_trip(text: str) -> None:
    assert str(Candidate.parse(text)) == text


def test_rfc8839_candidate_fields() -> None:
    c = Candidate.parse(RFC8839_CANDIDATES[1])
    assert (c.foundation, c.component, c.transport, c.priority) == ("2", 1, "UDP", 1694498815)
    assert (c.address, c.port, c.type) == ("192.0.2.3", 45664, "srflx")
    assert (c.related_address, c.related_port, c.extensions) == ("203.0.113.141", 8998, ())


@pytest.mark.parametrize(
    "text",
    [
        "1 1 UDP 2130706431 203.0.113.141 8998 host",  # no "typ"
        "1 1 UDP 2130706431 203.0.113.141 8998 typ",
        "1 1 UDP 2130706431 203.0.113.141 8998 typ host generation",  # odd extension
        "1 0x1 UDP 2130706431 203.0.113.141 8998 typ host",
        "1 1 UDP 99999999999 203.0.113.141 8998 typ host",
        "1 1 UDP 2130706431 203.0.113.141 65536 typ host",
        "1 1 UDP 2130706431 203.0.113.300 8998 typ host",
        "fo*o 1 UDP 2130706431 203.0.113.141 8998 typ host",
        "1 1 UDP 2130706431 203.0.113.141 8998 typ srflx raddr 1.2.3.4 rport x",
        "",
    ],
)
def test_bad_candidates(text: str) -> None:
    with pytest.raises(SipError):
        Candidate.parse(text)


def test_rfc3605_rtcp_attribute() -> None:
    # RFC 3605 §2.1: a=rtcp:53020 and a=rtcp:53020 IN IP4 126.16.64.4
    assert Rtcp.parse("53020") == Rtcp(53020)
    rtcp = Rtcp.parse("53020 IN IP4 126.16.64.4")
    assert rtcp == Rtcp(53020, Connection("IN", "IP4", "126.16.64.4"))
    assert str(rtcp) == "53020 IN IP4 126.16.64.4" and str(Rtcp(53020)) == "53020"
    assert Rtcp.parse("53020 IN IP6 2001:2345:6789:ABCD:EF01:2345:6789:ABCD").connection is not None
    for bad in ("", "70000", "53020 IN IP4", "53020 IN IP4 ::1", "port"):
        with pytest.raises(SipError):
            Rtcp.parse(bad)


def test_fingerprint() -> None:
    # RFC 8122 §5 example form.
    fp = Fingerprint.parse(f"sha-256 {FP_CHROME}")
    assert str(fp) == f"sha-256 {FP_CHROME}"
    assert Fingerprint.from_digest("sha-256", fp.digest()) == fp
    assert Fingerprint.parse("SHA-1 " + ":".join(["4A"] * 20)).digest() == b"J" * 20
    assert Fingerprint.parse("sha-3000 AB:CD").digest() == b"\xab\xcd"  # unknown hash: no size
    for bad in ("sha-256", f"sha-256 {FP_CHROME[:-3]}", "sha-256 AB:CD:", "sha-256 ABCD", "x"):
        with pytest.raises(SipError):
            Fingerprint.parse(bad)


def test_setup_and_direction_parsing() -> None:
    m = MediaDescription("audio", 9, "RTP/AVP", ["0"])
    assert m.setup() is None and m.direction is None
    for value in ("active", "passive", "actpass", "holdconn"):
        m.replace("setup", value)
        assert m.setup() is Setup(value)
    m.replace("setup", "sometimes")
    with pytest.raises(SipError):
        m.setup()
    m.add("sendonly")
    m.add("sendonly")
    assert m.direction is Direction.SENDONLY  # repeated but not contradictory
    m.add("recvonly")
    with pytest.raises(SipError):
        _ = m.direction


def test_small_value_types_round_trip() -> None:
    parsers: tuple[tuple[Callable[[str], object], str], ...] = (
        (RtpMap.parse, "111 opus/48000/2"),
        (RtpMap.parse, "0 PCMU/8000"),
        (Fmtp.parse, "111 minptime=10;useinbandfec=1"),
        (RtcpFb.parse, "* trr-int 100"),
        (RtcpFb.parse, "96 nack pli"),
        (Group.parse, "BUNDLE 0 1 2"),
        (Group.parse, "LS"),
        (Origin.parse, "- 0 0 IN IP4 host.example.com"),
        (Connection.parse, "IN IP4 224.2.1.1/127/3"),
        (Connection.parse, "IN IP6 ff15::101/3"),
        (Connection.parse, "IN IP4 media.example.com"),
        (Origin.parse, "alice 1 1 IN IP4 ALICE_PC"),
        (Bandwidth.parse, "TIAS:64000"),
        (Attribute.parse, "rtpmap:0 PCMU/8000"),
        (Attribute.parse, "recvonly"),
        (Attribute.parse, "x-empty:"),
    )
    for parse, text in parsers:
        assert str(parse(text)) == text, text
    assert Attribute.parse("x-empty:").value == "" and Attribute.parse("recvonly").value is None


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (RtpMap.parse, "128 foo/8000"),
        (RtpMap.parse, "96 foo"),
        (RtpMap.parse, "96 foo/8000/2/1"),
        (RtpMap.parse, "x PCMU/8000"),
        (RtcpFb.parse, "96"),
        (Origin.parse, "- 1 1 IN IP4"),
        (Origin.parse, "- x 1 IN IP4 192.0.2.1"),
        (Origin.parse, "- 1 1 IN IP9 192.0.2.1"),
        (Connection.parse, "IN IP4 224.2.1.1/127/3/4"),
        (Connection.parse, "IN IP6 ff15::101/3/4"),
        (Connection.parse, "IN IP4 1.2.3.4/x"),
        (Connection.parse, "IN IP4"),
        (Connection.parse, "IN IP4 bad..host"),
        (Connection.parse, "IN IP4 -bad.host"),
        (Fmtp.parse, "101"),
        (Bandwidth.parse, "AS"),
        (Bandwidth.parse, "AS:-1"),
        (Attribute.parse, ""),
        (Attribute.parse, "bad name:1"),
    ],
)
def test_small_value_types_reject_malformed(parse: Callable[[str], object], text: str) -> None:
    with pytest.raises(SipError):
        parse(text)


def test_ptime() -> None:
    m = MediaDescription("audio", 9, "RTP/AVP", ["0"])
    m.add("ptime", "20")
    assert m.ptime() == 20.0
    m.replace("ptime", "2.5")
    assert m.ptime() == 2.5
    for bad in ("0", "1e3", "nan", "", "20 ms", "1_0"):
        m.replace("ptime", bad)
        with pytest.raises(SipError):
            m.ptime()


def test_non_internet_network_types_are_carried_opaquely() -> None:
    # RFC 8866 §5.7 defines only IN; other nettypes (RFC 3108 ATM, ...) are not checked.
    data = crlf(
        """
        v=0
        o=- 1 1 ATM NSAP 47.0091.8100.0000.0060.3e64.fd01.0060.3e64.fd01.00
        s=-
        c=TN RFC2543 +1-202-555-0100
        t=0 0
        y=session-level-unknown
        m=audio 5004 RTP/AVP 0
        k=prompt
        """
    )
    sd = parse_sdp(data)
    assert bytes(sd) == data
    assert sd.connection == Connection("TN", "RFC2543", "+1-202-555-0100")
    assert sd.unknown_lines == [("y", "session-level-unknown")] and sd.media[0].key == "prompt"
    assert not sd.connection.is_unspecified
    with pytest.raises(SipError):
        parse_sdp(data + b"k=prompt\r\n")  # a second k= in one media section
    with pytest.raises(SipError):
        parse_sdp(data.replace(b"c=TN RFC2543 +1-202-555-0100", b"c=TN RFC2543 "))
    with pytest.raises(SipError):
        parse_sdp(
            data.replace(
                b"ATM NSAP 47.0091.8100.0000.0060.3e64.fd01.0060.3e64.fd01.00", b"ATM NSAP "
            )
        )


def test_ice_lite_and_timing_text() -> None:
    sd = parse_sdp(RFC8839_EXAMPLE)
    assert not sd.ice_lite
    sd.add("ice-lite")
    assert sd.ice_lite
    assert str(sd.times[0]) == "0 0"


def test_crypto_key_split_guards() -> None:
    c = Crypto.parse(RFC4568_CRYPTO[0])
    with pytest.raises(SipError):
        c.key_and_salt(1)
    # Built by hand (not parsed), so the suite check has not run yet.
    short = Crypto(1, "AES_CM_128_HMAC_SHA1_80", (CryptoKey("AAAA"),))
    with pytest.raises(SipError):
        short.key_and_salt()


def test_fmtp_parameters_tolerate_stray_separators() -> None:
    assert Fmtp.parse("96 profile-level-id=42e01f; packetization-mode=1;").parameters() == {
        "profile-level-id": "42e01f",
        "packetization-mode": "1",
    }


# ---------------------------------------------------------------- errors and limits


def _replace_line(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


BAD_SDPS = {
    "empty": b"",
    "no v": ASTERISK_OFFER.removeprefix(b"v=0\r\n"),
    "v=1": _replace_line(ASTERISK_OFFER, b"v=0", b"v=1"),
    "two v": _replace_line(ASTERISK_OFFER, b"s=", b"v=0\r\ns="),
    "no o": _replace_line(
        ASTERISK_OFFER, b"o=- 1523987291 1523987291 IN IP4 203.0.113.50\r\n", b""
    ),
    "no s": _replace_line(ASTERISK_OFFER, b"s=Asterisk\r\n", b""),
    "no t": _replace_line(ASTERISK_OFFER, b"t=0 0\r\n", b""),
    "two o": _replace_line(ASTERISK_OFFER, b"s=", b"o=- 1 1 IN IP4 192.0.2.1\r\ns="),
    "two s": _replace_line(ASTERISK_OFFER, b"t=", b"s=again\r\nt="),
    "two session c": _replace_line(ASTERISK_OFFER, b"t=", b"c=IN IP4 192.0.2.1\r\nt="),
    "port too big": _replace_line(ASTERISK_OFFER, b"17238", b"65536"),
    "port not a number": _replace_line(ASTERISK_OFFER, b"17238", b"x7238"),
    "negative port": _replace_line(ASTERISK_OFFER, b"17238", b"-1"),
    "port count 0": _replace_line(ASTERISK_OFFER, b"17238", b"17238/0"),
    "m= no formats": _replace_line(ASTERISK_OFFER, b" 0 8 18 101", b""),
    "m= double space": _replace_line(ASTERISK_OFFER, b"RTP/AVP 0", b"RTP/AVP  0"),
    "m= trailing space": _replace_line(ASTERISK_OFFER, b"18 101", b"18 101 "),
    "c= bad addrtype": _replace_line(ASTERISK_OFFER, b"c=IN IP4", b"c=IN IP5"),
    "c= v6 in IP4": _replace_line(ASTERISK_OFFER, b"c=IN IP4 203.0.113.50", b"c=IN IP4 ::1"),
    "c= v4 in IP6": _replace_line(ASTERISK_OFFER, b"c=IN IP4", b"c=IN IP6"),
    "c= bad v4": _replace_line(ASTERISK_OFFER, b"c=IN IP4 203.0.113.50", b"c=IN IP4 203.0.113.500"),
    "c= missing part": _replace_line(ASTERISK_OFFER, b"c=IN IP4 203.0.113.50", b"c=IN IP4"),
    "o= bad address": _replace_line(
        ASTERISK_OFFER, b"IN IP4 203.0.113.50\r\ns", b"IN IP4 x..y\r\ns"
    ),
    "no c anywhere": _replace_line(ASTERISK_OFFER, b"c=IN IP4 203.0.113.50\r\n", b""),
    "NUL": _replace_line(ASTERISK_OFFER, b"Asterisk", b"Aster\x00isk"),
    "bare CR": _replace_line(ASTERISK_OFFER, b"Asterisk", b"Aster\risk"),
    "bad UTF-8": _replace_line(ASTERISK_OFFER, b"Asterisk", b"Aster\xffisk"),
    "overlong UTF-8": _replace_line(ASTERISK_OFFER, b"Asterisk", b"Aster\xc0\xafisk"),
    "no equals": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"a ptime:20"),
    "two-letter type": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"ab=ptime:20"),
    "upper-case type": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"A=ptime:20"),
    "blank line inside": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"\r\na=ptime:20"),
    "empty attribute": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"a="),
    "attribute name with space": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"a=p time:20"),
    "r= before t=": _replace_line(ASTERISK_OFFER, b"t=0 0", b"r=7d 1h 0 25h\r\nt=0 0"),
    "t= one value": _replace_line(ASTERISK_OFFER, b"t=0 0", b"t=0"),
    "o= in media": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"o=- 1 1 IN IP4 192.0.2.1"),
    "t= in media": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"t=0 0"),
    "two i= in media": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"i=a\r\ni=b"),
    "b= malformed": _replace_line(ASTERISK_OFFER, b"a=ptime:20", b"b=AS64"),
    "huge number": _replace_line(ASTERISK_OFFER, b"1523987291 IN", b"9" * 5000 + b" IN"),
}


@pytest.mark.parametrize("name", sorted(BAD_SDPS))
def test_malformed_sdp_raises_sip_error_400(name: str) -> None:
    with pytest.raises(SipError) as info:
        parse_sdp(BAD_SDPS[name])
    assert info.value.status_hint == 400


def test_limits_raise_413() -> None:
    big = ASTERISK_OFFER + b"a=x-pad:" + b"x" * MAX_SIZE + b"\r\n"
    with pytest.raises(SipError) as info:
        parse_sdp(big)
    assert info.value.status_hint == 413
    assert parse_sdp(big, max_size=2 * MAX_SIZE).media[0].value("x-pad") == "x" * MAX_SIZE
    with pytest.raises(SipError) as info:
        parse_sdp("é" * (MAX_SIZE // 2 + 1))  # the limit counts UTF-8 bytes of str input too
    assert info.value.status_hint == 413
    with pytest.raises(SipError) as info:
        parse_sdp("v=0\r\n\ud800")  # a lone surrogate has no UTF-8 form
    assert info.value.status_hint == 400
    with pytest.raises(SipError) as info:
        parse_sdp(ASTERISK_OFFER, max_lines=10)
    assert info.value.status_hint == 413
    many = ASTERISK_OFFER + b"m=audio 0 RTP/AVP 0\r\n" * 31
    assert len(parse_sdp(many).media) == 32
    with pytest.raises(SipError) as info:
        parse_sdp(many + b"m=audio 0 RTP/AVP 0\r\n")
    assert info.value.status_hint == 413


def test_lenient_on_what_real_endpoints_send() -> None:
    # Empty s= (RFC 8866 §5.3 wants a space; many send nothing), rejected m= without formats,
    # a media section without c= when port is 0, unknown attribute text of any shape.
    data = crlf(
        """
        v=0
        o=- 1 1 IN IP4 192.0.2.1
        s=
        t=0 0
        m=audio 5004 RTP/AVP 0
        c=IN IP4 192.0.2.1
        a=X-weird:  spaces  kept \t
        m=video 0 RTP/AVP
        """
    )
    sd = parse_sdp(data)
    assert bytes(sd) == data
    assert sd.media[0].value("X-weird") == "  spaces  kept \t"
    assert sd.media[1].is_rejected and sd.media[1].formats == []


# ---------------------------------------------------------------- mutation


def test_attribute_editing_keeps_positions() -> None:
    sd = parse_sdp(ASTERISK_OFFER)
    m = sd.media[0]
    assert m.remove("fmtp") == 2 and not m.has("fmtp")
    m.replace("ptime", "30")  # stays where the old one was
    names = [a.name for a in m.attributes]
    assert names == ["rtpmap"] * 4 + ["ptime", "maxptime", "sendrecv"]
    assert m.value("ptime") == "30"
    m.set_direction(Direction.RECVONLY)  # in place of sendrecv
    assert m.attributes[-1] == Attribute("recvonly")
    m.set_direction(None)
    assert m.direction is None
    m.add("sendonly")
    m.add("inactive")  # contradictory; set_direction settles it at the first one's place
    m.set_direction(Direction.SENDRECV)
    assert m.values("sendrecv") == [] and m.has("sendrecv") and m.direction is Direction.SENDRECV
    m.set_direction(None)
    m.add("rtcp-mux")
    assert m.attributes[-1] == Attribute("rtcp-mux") and m.rtcp_mux
    m.replace("label", "1")  # absent: goes to the end
    assert m.attributes[-1] == Attribute("label", "1")
    assert m.remove("nothing-like-this") == 0
    for bad in ("", "two words", "colon:"):
        with pytest.raises(SipError):
            m.add(bad)
        with pytest.raises(SipError):
            m.replace(bad, "x")


def test_set_connection_address() -> None:
    sd = parse_sdp(RFC8866_EXAMPLE)
    sd.set_connection_address("203.0.113.9")
    assert sd.connection == Connection("IN", "IP4", "203.0.113.9")
    assert [m.connections for m in sd.media] == [[], [], [Connection("IN", "IP4", "203.0.113.9")]]
    sd.set_connection_address("2001:db8::9", sd.media[0])
    assert sd.connection_for(sd.media[0]) == Connection("IN", "IP6", "2001:db8::9")
    assert sd.connection_for(sd.media[1]) == Connection("IN", "IP4", "203.0.113.9")
    sd.media[0].set_connection(None)
    assert sd.media[0].connections == []
    for bad in ("", "999.1.1.1", "::g", "a b", "bad..host", "1.2.3"):
        with pytest.raises(SipError):
            sd.set_connection_address(bad)


def test_origin_next_version_and_copy_independence() -> None:
    sd = parse_sdp(CHROME_OFFER)
    dup = sd.copy()
    assert dup == sd and dup is not sd
    dup.origin = dup.origin.next_version()
    dup.media[0].remove("candidate")
    dup.media[1].formats.remove("45")
    dup.remove("group")
    assert dup.origin.sess_version == 3 and sd.origin.sess_version == 2
    assert len(sd.media[0].candidates()) == 3 and "45" in sd.media[1].formats and sd.groups()
    assert bytes(sd) == CHROME_OFFER


def test_serialize_refuses_injected_line_breaks() -> None:
    sd = parse_sdp(ASTERISK_OFFER)
    sd.media[0].add("label", "x\r\nc=IN IP4 6.6.6.6")
    with pytest.raises(SipError) as info:
        bytes(sd)
    assert info.value.status_hint == 500
    sd = parse_sdp(ASTERISK_OFFER)
    sd.name = "a\nb"
    with pytest.raises(SipError):
        sd.serialize()


def test_building_an_sdp_from_scratch() -> None:
    sd = SessionDescription(Origin("sipedge", "42", 1, "IN", "IP4", "203.0.113.1"))
    sd.connection = Connection.for_address("203.0.113.1")
    m = MediaDescription("audio", 30000, Proto.RTP_AVP, ["0", "101"])
    m.add("rtpmap", str(RtpMap(0, "PCMU", 8000)))
    m.add("rtpmap", str(RtpMap(101, "telephone-event", 8000)))
    m.add("fmtp", "101 0-16")
    m.set_direction(Direction.SENDRECV)
    sd.media.append(m)
    assert bytes(sd) == crlf(
        """
        v=0
        o=sipedge 42 1 IN IP4 203.0.113.1
        s=-
        c=IN IP4 203.0.113.1
        t=0 0
        m=audio 30000 RTP/AVP 0 101
        a=rtpmap:0 PCMU/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-16
        a=sendrecv
        """
    )
    assert parse_sdp(bytes(sd)) == sd


# ---------------------------------------------------------------- golden rewrites

ICE_DTLS_ATTRIBUTES = (
    "candidate",
    "end-of-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "fingerprint",
    "setup",
    "rtcp-mux",
)


def test_golden_rewrite_webrtc_offer_to_sdes_for_the_pbx() -> None:
    # What the relay does with a browser's offer before it goes to a SIP PBX: its own address
    # and port, SDES keys of its own instead of DTLS, no ICE, RTP/SAVP, explicit a=rtcp.
    sd = parse_sdp(FIREFOX_OFFER)
    out = sd.copy()
    out.origin = dataclasses.replace(out.origin, username="sipedge", address="203.0.113.1")
    out.origin = out.origin.next_version()
    out.remove("fingerprint", "ice-options", "group", "msid-semantic")
    out.set_connection_address("203.0.113.1")
    for port, m in zip((40000,), out.media, strict=True):
        m.port = port
        m.proto = Proto.RTP_SAVP
        m.remove(*ICE_DTLS_ATTRIBUTES, "crypto", "mid", "extmap")
        m.replace("rtcp", str(Rtcp(port + 1)))
        key = Crypto.make(1, "AES_CM_128_HMAC_SHA1_80", bytes(range(16)), bytes(range(16, 30)))
        m.add("crypto", str(key))
    assert bytes(out) == crlf(
        """
        v=0
        o=sipedge 6702463539468063018 1 IN IP4 203.0.113.1
        s=-
        c=IN IP4 203.0.113.1
        t=0 0
        m=audio 40000 RTP/SAVP 109 9 0 8 101
        c=IN IP4 203.0.113.1
        a=sendrecv
        a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1
        a=fmtp:101 0-15
        a=msid:{4f5e6d7c-8b9a-4012-a3b4-c5d6e7f80912} {0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}
        a=rtpmap:109 opus/48000/2
        a=rtpmap:9 G722/8000/1
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:101 telephone-event/8000
        a=ssrc:3086412719 cname:{7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928}
        a=rtcp:40001
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd
        """
    )
    assert bytes(sd) == FIREFOX_OFFER  # the original is untouched


def test_golden_rewrite_sdes_offer_to_plain_rtp_for_the_carrier() -> None:
    # baresip's SRTP offer relayed to a carrier that only does RTP/AVP: keys and the
    # crypto lines go, the relay's address and port come in, ptime stays.
    out = parse_sdp(BARESIP_OFFER)
    out.set_connection_address("198.51.100.200")
    m = out.media[0]
    m.port, m.proto = 50000, Proto.RTP_AVP
    assert m.remove("crypto") == 3
    assert bytes(out) == crlf(
        """
        v=0
        o=- 1918268350 2042386513 IN IP4 192.0.2.10
        s=-
        c=IN IP4 198.51.100.200
        t=0 0
        m=audio 50000 RTP/AVP 96 9 0 8 101
        b=AS:128
        a=rtpmap:96 opus/48000/2
        a=fmtp:96 stereo=1;sprop-stereo=1
        a=rtpmap:9 G722/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-15
        a=sendrecv
        a=label:1
        a=rtcp-rsize
        a=ssrc:3211254137 cname:sip:alice@example.com
        a=ptime:20
        """
    )


# ---------------------------------------------------------------- property tests

_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!#$%&'*+^_`{|}~"
tokens = st.text(_TOKEN_ALPHABET, min_size=1, max_size=12)
# Text values: anything but NUL, CR, LF (RFC 8866 §9 byte-string) and lone surrogates.
# A fixed alphabet keeps generation cheap; it holds spaces, tabs, colons and multi-byte UTF-8.
texts = st.text(" \taz:;/=AZ09-_.é€😀\x7f", max_size=16)
numbers = st.integers(min_value=0, max_value=2**32)
unicast = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"IN IP4 {a}"),
    st.ip_addresses(v=6).map(lambda a: f"IN IP6 {a}"),
    st.just("IN IP4 media.example.com"),
)
# c= may also carry multicast TTL / count suffixes (RFC 8866 §5.7).
addresses = unicast | st.sampled_from(["IN IP4 224.2.1.1/127/3", "IN IP6 ff15::101/3"])
attributes = st.lists(
    st.builds(lambda n, v: n if v is None else f"{n}:{v}", tokens, st.none() | texts).map(
        lambda a: "a=" + a
    ),
    max_size=5,
)


@st.composite
def media_sections(draw: st.DrawFn) -> list[str]:
    port = draw(st.integers(0, 65535))
    count = draw(st.none() | st.integers(1, 8))
    proto = "/".join(draw(st.lists(tokens, min_size=1, max_size=4)))
    fmts = draw(st.lists(tokens, min_size=1, max_size=5))
    port_text = str(port) if count is None else f"{port}/{count}"
    lines = [f"m={draw(tokens)} {port_text} {proto} {' '.join(fmts)}"]
    if draw(st.booleans()):
        lines.append("i=" + draw(texts))
    lines += ["c=" + a for a in draw(st.lists(addresses, min_size=1, max_size=2))]
    lines += [f"b={t}:{n}" for t, n in draw(st.lists(st.tuples(tokens, numbers), max_size=2))]
    if draw(st.booleans()):
        lines.append("k=" + draw(texts))
    return lines + draw(attributes)


@st.composite
def sdp_texts(draw: st.DrawFn) -> bytes:
    lines = [
        "v=0",
        f"o={draw(tokens)} {draw(numbers)} {draw(numbers)} {draw(unicast)}",
        "s=" + draw(texts),
    ]
    for letter in "iu":
        if draw(st.booleans()):
            lines.append(f"{letter}=" + draw(texts))
    lines += ["e=" + t for t in draw(st.lists(texts, max_size=2))]
    lines += ["p=" + t for t in draw(st.lists(texts, max_size=2))]
    if draw(st.booleans()):
        lines.append("c=" + draw(addresses))
    lines += [f"b={t}:{n}" for t, n in draw(st.lists(st.tuples(tokens, numbers), max_size=2))]
    for _ in range(draw(st.integers(1, 2))):
        lines.append(f"t={draw(numbers)} {draw(numbers)}")
        lines += ["r=" + t for t in draw(st.lists(texts, max_size=2))]
    for letter in "zk":
        if draw(st.booleans()):
            lines.append(f"{letter}=" + draw(texts))
    lines += draw(attributes)
    for section in draw(st.lists(media_sections(), max_size=4)):
        lines += section
    return ("\r\n".join(lines) + "\r\n").encode()


# Generating a whole SDP takes ~100 draws; a quarter of the profile's examples keeps this file
# fast while HYPOTHESIS_PROFILE=thorough still scales it up.
_GENERATED = settings(max_examples=max(25, (settings.default or settings()).max_examples // 4))


@_GENERATED
@given(sdp_texts(), st.lists(st.integers(0, 3), max_size=3))
def test_generated_sdp_round_trips_byte_exact_and_stays_stable_after_edits(
    data: bytes, ops: list[int]
) -> None:
    sd = parse_sdp(data)
    assert bytes(sd) == data
    assert parse_sdp(data.replace(b"\r\n", b"\n")) == sd
    assert sd.copy() == sd
    for op in ops:
        if op == 0:
            sd.set_connection_address("192.0.2.99")
        elif op == 1 and sd.media:
            sd.media[0].port = 7078
            sd.media[0].proto = Proto.RTP_SAVPF
        elif op == 2:
            sd.add("sendonly")
        else:
            for m in sd.media:
                m.remove("candidate")
                m.set_direction(Direction.INACTIVE)
    out = bytes(sd)
    assert parse_sdp(out) == sd
    assert bytes(parse_sdp(out)) == out


def _exercise(sd: SessionDescription) -> None:
    """Every typed view; each may raise SipError on a malformed value, nothing else."""
    views: list[Callable[[], object]] = [
        sd.groups,
        lambda: sd.direction,
        sd.fingerprints,
        sd.setup,
        sd.ice_options,
    ]
    for m in sd.media:
        views += [
            m.rtpmaps,
            m.fmtps,
            m.rtcp,
            m.crypto,
            m.candidates,
            m.ptime,
            m.rtcp_fb,
            m.fingerprints,
            m.setup,
            functools.partial(sd.direction_for, m),
            functools.partial(sd.is_on_hold, m),
            functools.partial(sd.fingerprints_for, m),
            functools.partial(_split_keys, m),
        ]
    for view in views:
        with contextlib.suppress(SipError):
            view()


def _split_keys(m: MediaDescription) -> None:
    for crypto in m.crypto():
        crypto.key_and_salt()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(["flip", "insert", "delete"]),
            st.binary(min_size=1, max_size=1),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_sdp_raises_nothing_but_sip_error(
    name: str, edits: list[tuple[int, str, bytes]]
) -> None:
    data = bytearray(SAMPLES[name])
    for pos, op, byte in edits:
        pos %= len(data) + 1
        if op == "insert":
            data[pos:pos] = byte
        elif pos < len(data):
            if op == "flip":
                data[pos] = byte[0]
            else:
                del data[pos]
    try:
        sd = parse_sdp(bytes(data))
    except SipError as exc:
        assert exc.status_hint in (400, 413)
        return
    _exercise(sd)
    # Whatever was accepted serialises to a stable form.
    out = bytes(sd)
    assert parse_sdp(out) == sd
    assert bytes(parse_sdp(out)) == out


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_but_sip_error(data: bytes) -> None:
    with contextlib.suppress(SipError):
        parse_sdp(b"v=0\r\n" + data)


@given(st.text(max_size=200))
def test_typed_parsers_raise_nothing_but_sip_error(text: str) -> None:
    parsers: tuple[Callable[[str], object], ...] = (
        Crypto.parse,
        CryptoKey.parse,
        Candidate.parse,
        Fingerprint.parse,
        Rtcp.parse,
        RtcpFb.parse,
        RtpMap.parse,
        Fmtp.parse,
        Group.parse,
        Origin.parse,
        Connection.parse,
        Bandwidth.parse,
        Attribute.parse,
        Connection.for_address,
    )
    for parse in parsers:
        with contextlib.suppress(SipError):
            str(parse(text))


# ---------------------------------------------------------------- speed


def test_parse_is_fast_enough_for_call_setup() -> None:
    # Target: a ~1 KB Chrome audio offer in well under 100 µs on a developer machine. The
    # bound asserted here is five times looser so a slow CI runner does not flake, yet still
    # catches an accidental quadratic or eager-parsing regression.
    assert 1000 <= len(CHROME_AUDIO_OFFER) <= 2000
    parse_sdp(CHROME_AUDIO_OFFER)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            parse_sdp(CHROME_AUDIO_OFFER)
        best = min(best, (time.perf_counter() - start) / 100)
    assert best < 500e-6, f"{best * 1e6:.0f} µs per parse"
