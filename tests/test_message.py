"""Messages: typed access, editing, limits, responses (RFC 3261 §7, §8.2.6, §20)."""

from __future__ import annotations

import random

import pytest

from sip._abnf import split_first, split_list
from sip.errors import SipError
from sip.headers import CSeq, NameAddr, Via, set_param
from sip.message import (
    Limits,
    Request,
    Response,
    error_response,
    make_response,
    parse_message,
    salvage_response,
)
from tests.sipdata import INVITE, OK_200, build


def test_invite_typed_headers() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri.user == "bob" and msg.uri.host == "biloxi.example.com"
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.top_via.wants_rport and msg.top_via.rport is None
    assert msg.top_via.sent_by == ("pc33.atlanta.example.com", 5060)
    assert msg.from_.display_name == "Alice" and msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.max_forwards == 70
    assert msg.contact[0].uri is not None and msg.contact[0].uri.transport == "tcp"
    assert msg.content_type is not None and msg.content_type.mime == "application/sdp"
    assert msg.content_length == len(msg.body)
    assert msg.supported == ("replaces", "timer")
    assert msg.user_agent == "baresip v1.0.0 (x86_64/linux)"
    assert bytes(msg) == INVITE


def test_response_typed_headers() -> None:
    msg = parse_message(OK_200)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (200, "OK")
    assert msg.to.tag == "a6c85cf"
    assert [str(r.uri) for r in msg.record_route] == [
        "sip:proxy2.example.com;lr",
        "sip:proxy1.example.com;lr",
    ]
    assert bytes(msg) == OK_200


def test_compact_forms_and_case() -> None:
    msg = parse_message(
        build(
            "OPTIONS sip:a@example.com SIP/2.0",
            "v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
            "f: <sip:b@example.com>;tag=1",
            "t: <sip:a@example.com>",
            "i: cid",
            "CSEQ: 1 OPTIONS",
            "k: path",
            "l: 0",
        )
    )
    assert msg.headers.get("Call-ID") == "cid"
    assert msg.headers.get("SUPPORTED") == "path"
    assert msg.headers.get("i") == "cid"
    assert "content-length" in msg.headers
    assert msg.content_length == 0


def test_empty_supported_is_an_empty_list() -> None:
    """RFC 3261 §25.1: Supported may be empty; baresip 1.0 sends it in every INVITE
    (found by the media e2e test: the edge answered 400)."""
    msg = parse_message(INVITE.replace(b"Supported: replaces, timer", b"Supported:"))
    assert msg.supported == ()
    with pytest.raises(SipError):
        parse_message(INVITE.replace(b"Supported: replaces, timer", b"Supported: a b"))


def test_proxy_edits_keep_other_headers_verbatim() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    via = Via("UDP", "192.0.2.10", 5060, (("branch", "z9hG4bKproxy1"), ("rport", None)))
    msg.headers.prepend("Via", via)
    msg.headers.prepend("Record-Route", "<sip:192.0.2.10;lr>")
    msg.headers.set("Max-Forwards", str((msg.max_forwards or 70) - 1))
    out = bytes(msg)
    assert out.startswith(
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Record-Route: <sip:192.0.2.10;lr>\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKproxy1;rport\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 69\r\n"
    )
    again = parse_message(out)
    assert [v.branch for v in again.via] == ["z9hG4bKproxy1", "z9hG4bK776asdhds"]
    assert again.max_forwards == 69
    # Every header the proxy did not touch is byte-identical.
    for line in INVITE.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        if not line.startswith(b"Max-Forwards"):
            assert line in out


def test_remove_first_takes_one_list_element() -> None:
    msg = parse_message(
        build(
            "BYE sip:a@example.com SIP/2.0",
            "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
            "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
            "From: <sip:b@example.com>;tag=1",
            "To: <sip:a@example.com>;tag=2",
            "Call-ID: cid",
            "CSeq: 2 BYE",
            "Content-Length: 0",
        )
    )
    assert len(msg.route) == 3
    assert msg.headers.remove_first("Route") == "<sip:p1.example.com;lr>"
    assert [r.uri.host for r in msg.route] == ["p2.example.com", "p3.example.com"]
    assert msg.headers.remove_first("route") == "<sip:p2.example.com;lr>"
    assert msg.headers.remove_first("Route") == "<sip:p3.example.com;lr>"
    assert msg.headers.remove_first("Route") is None
    assert msg.route == []


def test_split_first_is_split_lists_first_element_and_its_rest() -> None:
    """remove_first takes the top element with split_first, keeping the rest as
    written: the element and what the rest splits into are split_list's."""
    texts = [
        "",
        "a",
        " a ",
        "a,b",
        "a, b ,c",
        "<sip:p1;lr>,<sip:p2;lr>",
        '"A, B" <sip:a>, <sip:b>',
        "<a,b>,c",
        "<a,b,c",
        '"unterminated, x',
        'a,"b',
        '"a\\",b",c',
        "a,",
        ",a",
    ]
    rng = random.Random(5658)
    for _ in range(20_000):
        texts.append("".join(rng.choice(' ,"<>\\a\t') for _ in range(rng.randint(0, 12))))
    for text in texts:
        parts = split_list(text)
        first, rest = split_first(text)
        assert first == parts[0], text
        if len(parts) == 1:
            assert rest is None, text
        else:
            assert rest is not None and split_list(rest) == parts[1:], text


def _fresh(msg: Request | Response) -> Request | Response:
    return parse_message(bytes(msg))


def test_parsed_views_stay_true_through_proxy_edits() -> None:
    """prepend_parsed and remove_first keep a parsed Via/Route list instead of
    dropping it: after every edit it must equal parsing the message afresh."""
    msg = parse_message(
        build(
            "BYE sip:a@example.com SIP/2.0",
            "Via: SIP/2.0/UDP h1.example.com;branch=z9hG4bK1, SIP/2.0/TCP h2.example.com;branch=z9hG4bK2",  # noqa: E501
            "Via: SIP/2.0/UDP h3.example.com;branch=z9hG4bK3",
            "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Record-Route: <sip:r1.example.com;lr>",
            "From: <sip:b@example.com>;tag=1",
            "To: <sip:a@example.com>;tag=2",
            "Call-ID: cid",
            "CSeq: 2 BYE",
            "Content-Length: 0",
        )
    )
    assert isinstance(msg, Request)
    ours = Via("UDP", "edge.example.com", 5060, (("branch", "z9hG4bKedge"), ("rport", None)))
    assert len(msg.via) == 3  # parsed: the edits below keep this view
    msg.headers.prepend_parsed("Via", str(ours), ours)
    assert msg.top_via is ours
    assert msg.via == _fresh(msg).via
    assert msg.headers.remove_first("Via") == str(ours)
    assert msg.via == _fresh(msg).via and msg.top_via.host == "h1.example.com"
    assert msg.headers.remove_first("Via") is not None  # one element of a two-element line
    assert [v.host for v in msg.via] == ["h2.example.com", "h3.example.com"]
    assert msg.via == _fresh(msg).via
    assert len(msg.route) == 2
    msg.headers.remove_first("Route")
    assert msg.route == _fresh(msg).route
    assert [r.uri.host for r in msg.route] == ["p2.example.com"]
    msg.headers.remove_first("Route")
    assert msg.route == [] and "Route" not in msg.headers
    assert "Route" not in msg.headers  # reading the empty view did not make one up
    # A view nobody parsed yet is left unparsed (nothing to keep true).
    rr = NameAddr.parse("<sip:edge.example.com;lr>")
    msg.headers.prepend_parsed("Record-Route", "<sip:edge.example.com;lr>", rr)
    assert msg.record_route == _fresh(msg).record_route
    assert [r.uri.host for r in msg.record_route] == ["edge.example.com", "r1.example.com"]
    # Copies share the old view; an edit to one never shows in the other.
    copy = Request(msg.method, msg.uri, msg.headers.copy(), msg.body)
    copy.headers.prepend_parsed("Via", str(ours), ours)
    assert len(copy.via) == 3 and len(msg.via) == 2


def test_replace_first_parsed_swaps_the_top_element_where_it_was() -> None:
    """What the proxy does to a request's top Via (received, rport): the element
    is replaced in its place, the rest of a list line stays, and the parsed view
    equals parsing the message afresh."""
    msg = parse_message(
        build(
            "BYE sip:a@example.com SIP/2.0",
            "Max-Forwards: 70",
            "Via: SIP/2.0/UDP h1.example.com;branch=z9hG4bK1, SIP/2.0/TCP h2.example.com;branch=z9hG4bK2",  # noqa: E501
            "From: <sip:b@example.com>;tag=1",
            "Via: SIP/2.0/UDP h3.example.com;branch=z9hG4bK3",
            "To: <sip:a@example.com>;tag=2",
            "Call-ID: cid",
            "CSeq: 2 BYE",
            "Content-Length: 0",
        )
    )
    assert isinstance(msg, Request)
    assert len(msg.via) == 3
    stamped = msg.top_via.with_params((*msg.top_via.params, ("received", "192.0.2.1")))
    msg.headers.replace_first_parsed("Via", str(stamped), stamped)
    assert msg.top_via is stamped
    assert msg.via == _fresh(msg).via
    assert [v.host for v in msg.via] == ["h1.example.com", "h2.example.com", "h3.example.com"]
    assert msg.top_via.received == "192.0.2.1"
    lines = bytes(msg).decode().split("\r\n")
    assert lines[1:4] == [
        "Max-Forwards: 70",
        f"Via: {stamped}",
        "Via: SIP/2.0/TCP h2.example.com;branch=z9hG4bK2",
    ]
    # A one-element line is replaced where it stood, not moved to the next Via.
    msg.headers.remove_first("Via")
    top = msg.top_via.with_params((*msg.top_via.params, ("rport", "5070")))
    msg.headers.replace_first_parsed("Via", str(top), top)
    assert msg.via == _fresh(msg).via and msg.top_via.rport == 5070
    assert bytes(msg).decode().split("\r\n")[1:3] == ["Max-Forwards: 70", f"Via: {top}"]
    # No such header yet: it is added as prepend_parsed would.
    msg.headers.replace_first_parsed("Record-Route", "<sip:edge.example.com;lr>", None)
    assert msg.headers.get_all("Record-Route") == ["<sip:edge.example.com;lr>"]


@pytest.mark.parametrize(
    ("transport", "host", "port"),
    [("UDP", "127.0.0.1", 5060), ("TLS", "edge.example.com", 5061), ("TCP", "2001:db8::1", 5060)],
)
def test_the_proxys_own_via_writes_what_build_and_parse_give(
    transport: str, host: str, port: int
) -> None:
    """Via.ours writes its text in one step: the same text _build writes for the same
    fields, and that text parses back to an equal Via."""
    via = Via.ours(transport, host, port, "z9hG4bK-abc.1")
    assert via.params == (("branch", "z9hG4bK-abc.1"), ("rport", None))
    assert via.text == via._build()
    assert Via.parse(via.text) == via
    assert via.branch == "z9hG4bK-abc.1" and via.wants_rport and via.rport is None


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport",
        "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK-1-1-0",
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;RPort",
        "SIP/2.0/UDP pc.example.com;branch=z9hG4bK-1;received=192.0.2.9;rport",
        "SIP/2.0/UDP pc.example.com;branch=z9hG4bK-1;rport=5070",
        "SIP/2.0/UDP pc.example.com;branch=z9hG4bK-1",
        "SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bK-1;rport",
        "SIP/2.0/UDP pc.example.com ; branch=z9hG4bK-1 ; rport",
    ],
)
@pytest.mark.parametrize("received", [None, "192.0.2.1", "2001:db8::1"])
@pytest.mark.parametrize("rport", [None, "5070"])
def test_a_stamped_via_is_what_set_param_gives_and_its_text_parses_back(
    text: str, received: str | None, rport: str | None
) -> None:
    """Via.stamped (received and rport, RFC 3581) against the general path: the same
    parameters, and a text that parses back to the same Via, whether the quick
    path (the bare rport at the end) or the rebuild wrote it."""
    via = Via.parse(text)
    params = via.params
    if received is not None:
        params = set_param(params, "received", received)
    if rport is not None:
        params = set_param(params, "rport", rport)
    stamped = via.stamped(received, rport)
    assert stamped.params == params
    assert (stamped.transport, stamped.host, stamped.port) == (via.transport, via.host, via.port)
    assert Via.parse(stamped.text) == stamped
    assert stamped.text == str(stamped)


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_injection_is_refused(value: str) -> None:
    msg = parse_message(INVITE)
    with pytest.raises(SipError):
        msg.headers.add("X-Test", value)
    with pytest.raises(SipError):
        msg.headers.set("Subject", value)


def test_bad_header_name_is_refused() -> None:
    msg = parse_message(INVITE)
    with pytest.raises(SipError):
        msg.headers.add("X Bad", "1")
    with pytest.raises(SipError):
        msg.headers.add("", "1")


def test_body_setter_keeps_content_length_true() -> None:
    msg = parse_message(INVITE)
    msg.body = b"v=0\r\n"
    assert msg.content_length == 5
    assert parse_message(bytes(msg)).body == b"v=0\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\n", 400),  # no end of headers
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\nFrom: y\r\n\r\n", 400),  # bare LF
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\rFrom: y\r\n\r\n", 400),  # bare CR
        (b"INVITE sip:a@b SIP/2.0\r\nX: \x00\r\n\r\n", 400),  # raw NUL
        (b"INVITE sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n", 400),  # not UTF-8
        (b"INVITE sip:a@b SIP/2.0\r\n folded: first\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", 400),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"SIP/3.0 200 OK\r\n\r\n", 505),
        (b"SIP/2.0 099 Low\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
    ],
)
def test_malformed_messages(data: bytes, status: int) -> None:
    with pytest.raises(SipError) as info:
        parse_message(data)
    assert info.value.status_hint == status


def test_limits() -> None:
    big = INVITE.replace(b"Subject: ", b"Subject: " + b"x" * 70000)
    with pytest.raises(SipError) as info:
        parse_message(big)
    assert info.value.status_hint == 413
    with pytest.raises(SipError) as info:
        parse_message(INVITE, Limits(max_line_length=40))
    assert info.value.status_hint == 400
    with pytest.raises(SipError) as info:
        parse_message(INVITE, Limits(max_headers=5))
    assert info.value.status_hint == 400
    long_uri = INVITE.replace(b"sip:bob@", b"sip:" + b"b" * 5000 + b"@", 1)
    with pytest.raises(SipError) as info:
        parse_message(long_uri)
    assert info.value.status_hint == 414


def test_content_length_framing_on_datagrams() -> None:
    body = INVITE.partition(b"\r\n\r\n")[2]
    # Extra bytes after the body are dropped (§18.3).
    assert parse_message(INVITE + b"garbage").body == body
    # Fewer bytes than Content-Length: refused.
    with pytest.raises(SipError):
        parse_message(INVITE[:-10])
    # stream=True wants the frame exact.
    with pytest.raises(SipError):
        parse_message(INVITE + b"x", stream=True)


def test_make_response_copies_what_8_2_6_2_says() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    trying = make_response(req, 100, to_tag="should-not-appear")
    assert trying.to.tag is None
    ringing = make_response(req, 180, to_tag="abc")
    assert ringing.to.tag == "abc"
    assert [str(v) for v in ringing.via] == [str(v) for v in req.via]
    assert ringing.from_ == req.from_ and ringing.call_id == req.call_id
    assert ringing.cseq == req.cseq
    parsed = parse_message(bytes(ringing))
    assert isinstance(parsed, Response) and parsed.status == 180 and parsed.reason == "Ringing"
    assert parsed.to.tag == "abc"
    # A request already carrying a To tag (in-dialog) keeps it.
    req.headers.set("To", str(req.to.with_tag("existing")))
    assert make_response(req, 200, to_tag="new").to.tag == "existing"


def test_error_response_carries_extra_headers() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = error_response(req, SipError("x", 420, (("Unsupported", "foo"),)), to_tag="t")
    assert resp.status == 420 and resp.reason == "Bad Extension"
    assert resp.headers.get("Unsupported") == "foo"


def test_salvage_response_for_unparseable_request() -> None:
    bad = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    with pytest.raises(SipError) as info:
        parse_message(bad)
    answer = salvage_response(bad, info.value)
    assert answer is not None
    resp = parse_message(answer)
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.top_via.branch == "z9hG4bK776asdhds"
    # Responses are never answered; neither is anything without a Via.
    assert salvage_response(OK_200, SipError("x")) is None
    assert salvage_response(b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\n\r\n", SipError("x")) is None
    assert salvage_response(b"\xff\xfe", SipError("x")) is None


def test_constructed_request_round_trips() -> None:
    req = Request(
        "OPTIONS",
        "sip:edge.example.com",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx;rport"),
            ("From", NameAddr.parse("<sip:probe@example.com>").with_tag("t1")),
            ("To", "<sip:edge.example.com>"),
            ("Call-ID", "abc"),
            ("CSeq", CSeq(1, "OPTIONS")),
            ("Max-Forwards", 70),
        ],
    )
    data = bytes(req)
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    again = parse_message(data)
    assert isinstance(again, Request)
    assert again.from_.tag == "t1" and again.cseq.number == 1
    assert bytes(again) == data


def test_leading_crlf_is_ignored() -> None:
    msg = parse_message(b"\r\n\r\n" + INVITE)
    assert isinstance(msg, Request)


# ------------------------------------------------------------ remembered start lines
def test_a_remembered_start_line_parses_the_same_and_still_obeys_the_limits() -> None:
    first = parse_message(INVITE)
    again = parse_message(INVITE)  # from the memo
    assert isinstance(first, Request) and isinstance(again, Request)
    assert (again.method, str(again.uri)) == (first.method, str(first.uri))
    assert again.headers is not first.headers
    # The memo holds lines, not limits: a caller with a tighter bound gets its 414.
    short = Limits(max_uri_length=len(str(first.uri)) - 1)
    with pytest.raises(SipError) as err:
        parse_message(INVITE, short)
    assert err.value.status_hint == 414


def test_a_remembered_status_line_keeps_its_reason_as_received() -> None:
    for reason in (b"OK", b"", b"Fine Thanks", b"\xc3\x9cber"):
        data = OK_200.replace(b"200 OK", b"200 " + reason, 1)
        for _ in range(2):  # the second from the memo
            resp = parse_message(data)
            assert isinstance(resp, Response)
            assert (resp.status, resp.reason) == (200, reason.decode())


def test_bad_start_lines_fail_every_time() -> None:
    # Only lines that parsed are remembered: a bad one is refused again.
    for line in (b"SIP/2.0 99 Low", b"SIP/3.0 200 OK", b"INV@ITE sip:a@b SIP/2.0"):
        data = OK_200.replace(b"SIP/2.0 200 OK", line, 1)
        for _ in range(2):
            with pytest.raises(SipError):
                parse_message(data)
    uri_headers = INVITE.replace(b"INVITE sip:", b"INVITE sip:", 1).split(b" ", 2)
    data = b" ".join((uri_headers[0], uri_headers[1] + b"?Subject=x", uri_headers[2]))
    for _ in range(2):
        with pytest.raises(SipError, match="headers in the Request-URI"):
            parse_message(data)


def test_the_start_line_memo_is_bounded() -> None:
    from sip import message

    for i in range(message._START_LINES_MAX + 10):
        parse_message(OK_200.replace(b"200 OK", f"200 OK {i}".encode(), 1))
    assert 0 < len(message._status_lines) <= message._START_LINES_MAX


def test_standard_methods_are_tokens() -> None:
    from sip import message

    for method in message.STANDARD_METHODS:
        assert message._TOKEN_RE.fullmatch(method)
    with pytest.raises(SipError, match="malformed method"):
        Request("IN VITE", "sip:a@b")


def test_status_lines_follow_status_and_reason() -> None:
    """Response status lines are remembered by status: a new reason, or a status
    or reason changed after a first serialize, still writes what the response holds."""
    ok = Response(200, "OK")
    fine = Response(200, "Fine")
    assert bytes(ok).startswith(b"SIP/2.0 200 OK\r\n")
    assert bytes(fine).startswith(b"SIP/2.0 200 Fine\r\n")
    assert bytes(ok).startswith(b"SIP/2.0 200 OK\r\n")
    ok.status, ok.reason = 486, "Busy Here"
    assert bytes(ok).startswith(b"SIP/2.0 486 Busy Here\r\n")
    ok.reason = "Busy"
    assert bytes(ok).startswith(b"SIP/2.0 486 Busy\r\n")
