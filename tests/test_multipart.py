"""sip/multipart.py: multipart bodies (RFC 2046 §5.1, RFC 5621) and the SDP in them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipError
from sip.headers import ContentType
from sip.multipart import MAX_PARTS, Multipart, boundary_of, find_sdp

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)
ISUP = bytes.fromhex("0100490000030200070410003363214300000306")

# RFC 3204 §4 (SDP and ISUP in one INVITE), with CRLF line ends.
RFC3204 = (
    b"--unique-boundary-1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"\r\n" + SDP + b"\r\n"
    b"--unique-boundary-1\r\n"
    b"Content-Type: application/isup;version=itu-t92+\r\n"
    b"Content-Disposition: signal;handling=optional\r\n"
    b"\r\n" + ISUP + b"\r\n"
    b"--unique-boundary-1--\r\n"
)
MIXED = ContentType.parse('multipart/mixed;boundary="unique-boundary-1"')


def ct(text: str) -> ContentType:
    return ContentType.parse(text)


def test_rfc3204_body_parses_and_round_trips() -> None:
    mp = Multipart.parse(RFC3204, MIXED)
    assert mp.boundary == "unique-boundary-1"
    assert [p.body for p in mp.parts] == [SDP, ISUP]
    sdp_type, isup_type = (p.content_type for p in mp.parts)
    assert sdp_type is not None and sdp_type.mime == "application/sdp"
    assert isup_type is not None and isup_type.mime == "application/isup"
    assert mp.parts[1].get("Content-Disposition") == "signal;handling=optional"
    assert bytes(mp) == RFC3204


def test_preamble_epilogue_padding_bare_lf_and_folding_are_kept() -> None:
    body = (
        b"This is the preamble.\r\n"
        b"--b  \t\r\n"  # transport padding after the delimiter
        b"Content-Type:\r\n application/sdp\n\n"  # folded header, bare LF
        b"v=0\n"
        b"\n--b\r\n"
        b"\r\n"  # no headers: text/plain
        b"plain\r\n"
        b"--b-- \r\nthe epilogue\r\n"
    )
    mp = Multipart.parse(body, ct("multipart/mixed; boundary=b"))
    assert mp.preamble == b"This is the preamble."
    assert mp.parts[0].get("content-type") == "application/sdp"
    assert mp.parts[0].body == b"v=0\n"
    assert mp.parts[1].content_type is None and mp.parts[1].body == b"plain"
    assert mp.epilogue == b"\r\nthe epilogue\r\n"
    assert bytes(mp) == body


def test_a_line_that_only_starts_like_the_boundary_is_body() -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--bx not a delimiter\r\n--b--"
    mp = Multipart.parse(body, ct("multipart/mixed;boundary=b"))
    assert mp.parts[0].body == b"x\r\n--bx not a delimiter"


@pytest.mark.parametrize(
    ("body", "ctype", "problem"),
    [
        (RFC3204, "multipart/mixed", "without a boundary"),
        (RFC3204, "application/sdp;boundary=x", "not multipart"),
        (RFC3204, "multipart/mixed;boundary=other", "opening delimiter"),
        (RFC3204[:-25], 'multipart/mixed;boundary="unique-boundary-1"', "closing"),
        (b"--b\r\nno blank line--b--", "multipart/mixed;boundary=b", "closing"),
        (
            b"--b\r\nContent-Type text/plain\r\n\r\nx\r\n--b--",
            "multipart/mixed;boundary=b",
            "header",
        ),
        (b"--b\r\nno blank line\r\n--b--", "multipart/mixed;boundary=b", "blank line"),
        (b"--b--\r\n", "multipart/mixed;boundary=b", "without a part"),
        (b"", 'multipart/mixed;boundary="a b "', "boundary"),  # ends in a space
    ],
)
def test_malformed_bodies_raise_400(body: bytes, ctype: str, problem: str) -> None:
    with pytest.raises(SipError) as info:
        Multipart.parse(body, ct(ctype))
    assert info.value.status_hint == 400 and problem in info.value.reason


def test_part_count_is_bounded() -> None:
    body = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(MAX_PARTS + 1)) + b"--b--"
    with pytest.raises(SipError, match="too many"):
        Multipart.parse(body, ct("multipart/mixed;boundary=b"))


def test_boundary_of_unquotes() -> None:
    assert boundary_of(MIXED) == "unique-boundary-1"
    assert boundary_of(ct("multipart/mixed;boundary=simple")) == "simple"


# ---------------------------------------------------------------- SDP in a body


def test_find_sdp_in_application_sdp_and_in_multipart() -> None:
    plain = find_sdp(SDP, ct("application/sdp"))
    assert plain is not None and plain.sdp == SDP and plain.put(b"new") == b"new"
    found = find_sdp(RFC3204, MIXED)
    assert found is not None and found.sdp == SDP
    assert found.put(SDP) == RFC3204  # unchanged SDP: the same bytes
    new = found.put(b"v=0\r\n")
    mp = Multipart.parse(new, MIXED)
    assert [p.body for p in mp.parts] == [b"v=0\r\n", ISUP]
    gone = Multipart.parse(found.put(None), MIXED)
    assert [p.body for p in gone.parts] == [ISUP]
    assert bytes(gone).startswith(b"--unique-boundary-1\r\nContent-Type: application/isup")


def test_find_sdp_none_without_sdp_or_when_malformed() -> None:
    assert find_sdp(ISUP, ct("application/isup")) is None
    assert find_sdp(SDP, None) is None
    no_sdp = b"--b\r\nContent-Type: application/isup\r\n\r\n" + ISUP + b"\r\n--b--"
    assert find_sdp(no_sdp, ct("multipart/mixed;boundary=b")) is None
    assert find_sdp(RFC3204[:-10], MIXED) is None


def test_nested_multipart_and_extra_sdp_parts() -> None:
    inner = (
        b"--in\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n"
        b"--in\r\nContent-Type: application/sdp\r\n\r\nv=0 alternative\r\n--in--"
    )
    outer = (
        b"--out\r\nContent-Type: multipart/alternative;boundary=in\r\n\r\n" + inner + b"\r\n"
        b"--out\r\nContent-Type: application/isup\r\n\r\n" + ISUP + b"\r\n--out--\r\n"
    )
    found = find_sdp(outer, ct("multipart/mixed;boundary=out"))
    assert found is not None and found.sdp == SDP
    out = found.put(b"v=0 relayed\r\n")
    assert b"alternative\r\n" not in out  # the unrelayed alternative is gone
    mp = Multipart.parse(out, ct("multipart/mixed;boundary=out"))
    assert mp.parts[1].body == ISUP
    nested_type = mp.parts[0].content_type
    assert nested_type is not None
    nested = Multipart.parse(mp.parts[0].body, nested_type)
    assert [p.body for p in nested.parts] == [b"v=0 relayed\r\n"]
    # Without the SDP nothing is left of the nested part: it goes whole.
    left = Multipart.parse(found.put(None), ct("multipart/mixed;boundary=out"))
    assert [p.body for p in left.parts] == [ISUP]
    only_sdp = find_sdp(
        b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b--",
        ct("multipart/mixed;boundary=b"),
    )
    assert only_sdp is not None and only_sdp.put(None) == b""


def test_part_content_length_follows_the_new_body() -> None:
    body = b"--b\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n\r\n--b--"
    found = find_sdp(body, ct("multipart/mixed;boundary=b"))
    assert found is not None and found.sdp == b"v=0\r\n"
    assert b"Content-Length: 10\r\n\r\nv=0\r\nx=1\r\n" in found.put(b"v=0\r\nx=1\r\n")


# ---------------------------------------------------------------- properties

_text = st.binary(max_size=40).filter(lambda b: b"--bnd" not in b and not b.endswith(b"\r"))
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
)


@st.composite
def multiparts(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        headers = b"".join(
            b"X-H" + str(i).encode() + b": " + draw(_header_value).encode() + eol
            for i in range(draw(st.integers(0, 3)))
        )
        parts.append(headers + eol + draw(_text))
    preamble = draw(st.sampled_from([b"", b"preamble" + eol]))
    pad = draw(st.sampled_from([b"", b" ", b"\t "]))
    body = preamble + b"--bnd" + pad + eol
    body += (eol + b"--bnd" + pad + eol).join(parts)
    return body + eol + b"--bnd--" + draw(st.sampled_from([b"", eol, eol + b"epilogue"]))


@given(multiparts())
def test_round_trip_is_byte_exact(body: bytes) -> None:
    mp = Multipart.parse(body, ct("multipart/mixed;boundary=bnd"))
    assert bytes(mp) == body
    assert bytes(mp.replace(0, mp.parts[0].with_body(mp.parts[0].body))) == body


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    """Invariant: parse raises SipError or returns something that round-trips."""
    try:
        mp = Multipart.parse(body, ct("multipart/mixed;boundary=b"))
    except SipError:
        return
    assert bytes(mp) == body
