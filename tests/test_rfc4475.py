"""RFC 4475 torture messages: each gets the answer its section names.

The 49 messages are in tests/data/rfc4475 exactly as the RFC's archive holds
them.  Syntax cases (§3.1.2) must fail to parse with the status the RFC
expects; application-layer cases (§3.3) parse and are then refused by the
proxy checks, or pass when only a UAS or registrar would refuse them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.errors import SipError
from sip.framing import StreamFramer
from sip.message import Request, Response, parse_message
from sip.validate import check_proxy_request

DATA = Path(__file__).parent / "data" / "rfc4475"


def load(name: str) -> bytes:
    for folder in ("valid", "invalid"):
        path = DATA / folder / f"{name}.dat"
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError(name)


# name -> (RFC 4475 section, status of the parse error)
PARSE_ERRORS = {
    "badinv01": ("3.1.2.1", 400),  # ;;,;,, in Via and Contact
    "clerr": ("3.1.2.2", 400),  # Content-Length larger than the message
    "ncl": ("3.1.2.3", 400),  # negative Content-Length
    "scalar02": ("3.1.2.4", 400),  # overlarge CSeq, Max-Forwards, Expires
    "scalarlg": ("3.1.2.5", 400),  # overlarge scalars in a response (dropped)
    "quotbal": ("3.1.2.6", 400),  # unterminated quoted display name
    "ltgtruri": ("3.1.2.7", 400),  # <> around the Request-URI
    "lwsruri": ("3.1.2.8", 400),  # LWS inside the Request-URI
    "lwsstart": ("3.1.2.9", 400),  # several SP in the Request-Line
    "trws": ("3.1.2.10", 400),  # SP at the end of the Request-Line
    "escruri": ("3.1.2.11", 400),  # escaped headers in the Request-URI
    "baddate": ("3.1.2.12", 400),  # Date not in GMT
    "regbadct": ("3.1.2.13", 400),  # URI with "?" not in <>
    "badaspec": ("3.1.2.14", 400),  # spaces inside <addr-spec>
    "baddn": ("3.1.2.15", 400),  # non-token characters in a display name
    "badvers": ("3.1.2.16", 505),  # SIP/7.0
    "mismatch01": ("3.1.2.17", 400),  # CSeq method differs from the method
    "mismatch02": ("3.1.2.18", 400),  # the same with an unknown method (400 allowed)
    "bigcode": ("3.1.2.19", 400),  # status code 4294967301 (a response: dropped)
    "insuf": ("3.3.1", 400),  # missing To, From, Call-ID, Max-Forwards
    "multi01": ("3.3.8", 400),  # several single-value headers
    "mcl01": ("3.3.9", 400),  # two Content-Length values
}

# Parse, then the proxy refuses with this status (§16.3).
PROXY_REFUSES = {
    "unkscm": ("3.3.2", 416),  # unknown Request-URI scheme
    "novelsc": ("3.3.3", 416),  # a known scheme a SIP proxy cannot route
    "bext01": ("3.3.5", 420),  # Proxy-Require nobody supports
}

# Parse and pass the proxy checks: the RFC leaves the answer to the UAS or
# registrar (415, 406, 401, 400 for a non-SIP AOR) or expects acceptance.
PROXY_FORWARDS = {
    "badbranch": "3.2.1",  # branch is only the magic cookie: RFC 2543 matching
    "unksm2": "3.3.4",
    "invut": "3.3.6",
    "regaut01": "3.3.7",
    "bcast": "3.3.10",  # a response; the UA ignores the broadcast Via
    "cparam01": "3.3.12",
    "cparam02": "3.3.13",
    "regescrt": "3.3.14",
    "sdp01": "3.3.15",
    "inv2543": "3.4.1",
}

VALID = [
    "wsinv",  # 3.1.1.1
    "intmeth",  # 3.1.1.2
    "esc01",  # 3.1.1.3
    "escnull",  # 3.1.1.4
    "esc02",  # 3.1.1.5
    "lwsdisp",  # 3.1.1.6
    "longreq",  # 3.1.1.7
    "dblreq",  # 3.1.1.8
    "semiuri",  # 3.1.1.9
    "transports",  # 3.1.1.10
    "mpart01",  # 3.1.1.11
    "unreason",  # 3.1.1.12
    "noreason",  # 3.1.1.13
]


def test_every_file_is_classified() -> None:
    names = {p.stem for p in DATA.glob("*/*.dat")}
    classified = set(PARSE_ERRORS) | set(PROXY_REFUSES) | set(PROXY_FORWARDS) | set(VALID)
    assert names == classified | {"zeromf"}
    assert len(names) == 49


@pytest.mark.parametrize("name", sorted(PARSE_ERRORS))
def test_syntax_errors_are_refused(name: str) -> None:
    section, status = PARSE_ERRORS[name]
    data = load(name)
    if name == "baddn":
        # The archive's copy lost its final empty line; restore it so the
        # display name, not the framing, is what is refused.
        data += b"\r\n"
    with pytest.raises(SipError) as info:
        parse_message(data)
    assert info.value.status_hint == status, (section, info.value.reason)


def test_baddn_is_refused_for_its_display_name() -> None:
    with pytest.raises(SipError, match="addr-spec"):
        parse_message(load("baddn") + b"\r\n")


@pytest.mark.parametrize("name", sorted(PROXY_REFUSES))
def test_proxy_refuses(name: str) -> None:
    section, status = PROXY_REFUSES[name]
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    with pytest.raises(SipError) as info:
        check_proxy_request(msg)
    assert info.value.status_hint == status, section


def test_bext01_420_lists_the_unsupported_options() -> None:
    msg = parse_message(load("bext01"))
    assert isinstance(msg, Request)
    with pytest.raises(SipError) as info:
        check_proxy_request(msg)
    assert info.value.headers == (
        ("Unsupported", "noProxiesSupportThis, norDoAnyProxiesSupportThis"),
    )
    # Require is for the UAS; a proxy that supports the Proxy-Require options forwards.
    check_proxy_request(
        msg, supported_extensions=["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    )


def test_zeromf_gets_483_except_options_to_the_proxy() -> None:
    """§3.3.11: Max-Forwards 0; the message is an OPTIONS, which a proxy may answer itself."""
    msg = parse_message(load("zeromf"))
    assert isinstance(msg, Request)
    assert msg.max_forwards == 0
    check_proxy_request(msg)  # answered locally, not a 483
    with pytest.raises(SipError) as info:
        check_proxy_request(msg, answer_options_locally=False)
    assert info.value.status_hint == 483


@pytest.mark.parametrize("name", sorted(PROXY_FORWARDS))
def test_semantic_cases_pass_the_proxy(name: str) -> None:
    msg = parse_message(load(name))
    if isinstance(msg, Request):
        check_proxy_request(msg)


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_parse(name: str) -> None:
    msg = parse_message(load(name))
    assert msg.call_id
    assert msg.via


def test_wsinv_values() -> None:
    """§3.1.1.1: folding, LWS everywhere, escapes in display names."""
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert str(msg.uri) == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.uri.has_param("unknownparam")
    assert msg.to.tag == "1918181833n"
    assert str(msg.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq.number == 9 and msg.cseq.method == "INVITE"
    assert [(v.transport, v.host, v.branch) for v in msg.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    (contact,) = msg.contact
    assert contact.address is not None
    assert contact.address.display_name == 'Quoted string ""'
    assert contact.q == pytest.approx(0.33)
    assert contact.address.param("newparam") == "newvalue"
    assert contact.address.has_param("secondparam")
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Subject") == ""
    assert msg.route[0].uri.lr
    assert len(msg.body) == 150


def test_intmeth_values() -> None:
    """§3.1.1.2: unusual but legal characters everywhere."""
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_are_kept_and_compare_unescaped() -> None:
    """§3.1.1.3 and §3.1.1.4."""
    from sip.uri import URI

    msg = parse_message(load("esc01"))
    assert isinstance(msg, Request)
    assert msg.uri.user == "sips%3Auser%40example.com"
    assert msg.to.uri.equivalent(URI.parse("sip:user@example.com"))
    (contact,) = msg.contact
    assert contact.uri is not None
    assert contact.uri.equivalent(URI.parse("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not contact.uri.equivalent(URI.parse("sip:caller@host5.example.net;lr;name=valueA"))
    null = parse_message(load("escnull"))
    assert [str(c.uri) for c in null.contact] == [
        "sip:%00@host5.example.com",
        "sip:%00%00@host5.example.com",
    ]


def test_esc02_escaped_header_name_is_not_contact() -> None:
    """§3.1.1.5: C%6Fntact is an unknown header, not a third Contact."""
    msg = parse_message(load("esc02"))
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert [str(c.uri) for c in msg.contact] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.to.display_name == "%Z%45"


def test_longreq_values() -> None:
    """§3.1.1.7: long values, many Vias in every case and compact form."""
    msg = parse_message(load("longreq"))
    assert len(msg.via) == 34
    assert msg.via[-1].received == "192.0.2.5"
    assert msg.to.uri.port == 6000


def test_dblreq_over_udp_and_tcp() -> None:
    """§3.1.1.8: over UDP the bytes after Content-Length are noise and go.

    On a stream the same bytes frame as REGISTER, then an INVITE whose body is
    shorter than what follows it, and the leftover bytes are refused.
    """
    data = load("dblreq")
    first = parse_message(data)
    assert isinstance(first, Request) and first.method == "REGISTER"
    assert first.body == b""
    framer = StreamFramer()
    invite_end = data.index(b"LPC") + 2
    frames = framer.feed(data[:invite_end])
    methods = [parse_message(f, stream=True) for f in frames if isinstance(f, bytes)]
    assert [m.method for m in methods if isinstance(m, Request)] == ["REGISTER", "INVITE"]
    (error,) = framer.feed(data[invite_end:])
    assert isinstance(error, SipError)


def test_semiuri_user_with_semicolon() -> None:
    """§3.1.1.9: the ; before @ belongs to the user part."""
    msg = parse_message(load("semiuri"))
    assert isinstance(msg, Request)
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.host == "example.com"
    assert msg.uri.params == ()
    assert len(msg.headers.get_all("Accept")) == 6


def test_transports() -> None:
    """§3.1.1.10: unknown transports in Via are fine."""
    msg = parse_message(load("transports"))
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body() -> None:
    """§3.1.1.11: the body is opaque bytes, not text."""
    msg = parse_message(load("mpart01"))
    assert len(msg.body) == 553
    assert msg.content_type is not None and msg.content_type.mime == "multipart/mixed"


def test_reason_phrases() -> None:
    """§3.1.1.12 and §3.1.1.13: UTF-8 reason phrase; empty reason phrase."""
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response) and unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 ")
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response) and noreason.reason == ""


def test_inv2543_is_accepted() -> None:
    """§3.4.1: no branch, no Max-Forwards, no From tag, no Content-Length."""
    msg = parse_message(load("inv2543"))
    assert msg.top_via.branch is None
    assert msg.max_forwards is None
    assert msg.from_.tag is None
    assert msg.content_length is None


@pytest.mark.parametrize(
    "name", VALID + sorted(PROXY_FORWARDS) + sorted(PROXY_REFUSES) + ["zeromf"]
)
def test_round_trip(name: str) -> None:
    """A parsed message re-serialises to the same bytes (headers untouched)."""
    data = load(name)
    msg = parse_message(data)
    out = bytes(msg)
    if name == "dblreq":
        data = data[: data.index(b"\r\n\r\n") + 4]  # UDP: the second message is dropped
    if msg.content_length is None:
        # A message without Content-Length gets one on the way out (§18.3).
        head, _, body = data.partition(b"\r\n\r\n")
        data = head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert out == data
    again = parse_message(out)
    assert bytes(again) == out
