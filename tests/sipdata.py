"""Typical messages for tests and benchmarks (shapes taken from real captures)."""

from __future__ import annotations


def build(*lines: str, body: bytes = b"") -> bytes:
    """A message from header lines (CRLF added) and an optional body."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

# An INVITE of about 900 bytes, as a softphone sends it.
INVITE = build(
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "To: <sip:bob@biloxi.example.com>",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@192.0.2.101:5060;transport=tcp>"
    ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, REFER, UPDATE, PRACK",
    "Supported: replaces, timer",
    "User-Agent: baresip v1.0.0 (x86_64/linux)",
    "Subject: call",
    "Session-Expires: 1800",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP_OFFER)}",
    body=SDP_OFFER,
)

OK_200 = build(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds"
    ";rport=5060;received=192.0.2.101",
    "Record-Route: <sip:proxy2.example.com;lr>, <sip:proxy1.example.com;lr>",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "To: <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:bob@192.0.2.4>",
    "Content-Length: 0",
)
