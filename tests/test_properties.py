"""Property tests of the message parser, serialiser and framer (hypothesis).

- serialise(parse(x)) is stable, and typed values survive the round trip;
- random mutations of valid messages raise nothing but SipError;
- stream framing gives the same messages whatever the read boundaries.
"""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipError
from sip.framing import KeepAlive, StreamFramer
from sip.message import Message, Request, parse_message
from tests.sipdata import INVITE, OK_200, build

CORPUS = [INVITE, OK_200] + [
    p.read_bytes() for p in sorted((Path(__file__).parent / "data").glob("rfc*/valid/*.dat"))
]

TOKEN_ALPHABET = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.one_of(st.none(), st.integers(1, 65535))
users = st.from_regex(r"[A-Za-z0-9\-_.!~*'()&=+$,]{1,12}", fullmatch=True)
safe_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters='"\\\x7f'),
    max_size=40,
).map(str.strip)


def hostport(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER", "MESSAGE"]) | tokens)
    ruri = f"sip:{draw(users)}@{hostport(draw(hosts), draw(ports))}"
    if draw(st.booleans()):
        ruri += ";transport=" + draw(st.sampled_from(["udp", "tcp", "tls", "ws"]))
    vias = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS', 'WSS']))} "
        f"{hostport(draw(hosts), draw(ports))};branch=z9hG4bK{draw(tokens)}"
        + (";rport" if draw(st.booleans()) else "")
        for _ in range(draw(st.integers(1, 4)))
    ]
    display = draw(st.one_of(st.none(), safe_values))
    from_ = (f'"{display}" ' if display is not None else "") + (
        f"<sip:{draw(users)}@{draw(hosts)}>;tag={draw(tokens)}"
    )
    to = f"<sip:{draw(users)}@{draw(hosts)}>"
    body = draw(st.binary(max_size=300))
    lines = [f"{method} {ruri} SIP/2.0"]
    headers = [f"Via: {v}" for v in vias] + [
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {draw(tokens)}@{draw(hosts)}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
        f"Max-Forwards: {draw(st.integers(0, 255))}",
    ]
    extra = draw(st.lists(st.tuples(tokens, safe_values), max_size=5))
    headers += [f"X-{name}: {value}" for name, value in extra]
    headers.append(f"Content-Length: {len(body)}")
    headers = draw(st.permutations(headers))
    compact = draw(st.booleans())
    if compact:
        headers = [h.replace("Via:", "v:").replace("Call-ID:", "i:") for h in headers]
    return build(*lines, *headers, body=body)


def typed_summary(msg: Message) -> tuple[object, ...]:
    return (
        [(v.transport, v.host, v.port, v.branch) for v in msg.via],
        msg.from_,
        msg.to,
        msg.call_id,
        msg.cseq,
        msg.max_forwards,
        msg.body,
    )


@given(requests())
def test_round_trip_is_exact_and_stable(data: bytes) -> None:
    msg = parse_message(data)
    out = bytes(msg)
    assert out == data
    again = parse_message(out)
    assert typed_summary(again) == typed_summary(msg)
    assert isinstance(again, Request) and isinstance(msg, Request)
    assert again.uri == msg.uri


@given(requests(), st.integers(0, 2**31 - 1))
def test_edited_messages_round_trip(data: bytes, branch_number: int) -> None:
    msg = parse_message(data)
    msg.headers.prepend("Via", f"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{branch_number}")
    msg.headers.remove_first("Route")
    out = bytes(msg)
    again = parse_message(out)
    assert again.top_via.branch == f"z9hG4bK{branch_number}"
    assert bytes(again) == out


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "dup"]),
        st.integers(0, 10_000),
        st.binary(min_size=1, max_size=8)
        | st.sampled_from(
            [
                b"\r\n",
                b"\r",
                b"\n",
                b" ",
                b";",
                b",",
                b"<",
                b">",
                b'"',
                b"\\",
                b"%",
                b":",
                b"@",
                b"\x00",
                b"\xff",
                b"99999999999999999999",
                b"[",
                b"]",
                b"\r\n ",
                b"=",
                b"/",
            ]
        ),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, pos, chunk in ops:
        i = pos % (len(buf) + 1)
        if op == "flip" and buf:
            buf[i % len(buf)] ^= chunk[0] or 1
        elif op == "insert":
            buf[i:i] = chunk
        elif op == "delete":
            del buf[i : i + len(chunk)]
        else:
            buf[i:i] = buf[i : i + 40]
    return bytes(buf)


@given(st.sampled_from(CORPUS), mutations)
def test_mutations_raise_only_sip_error(data: bytes, ops: list[tuple[str, int, bytes]]) -> None:
    mutated = mutate(data, ops)
    try:
        msg = parse_message(mutated)
    except SipError:
        return
    # Whatever parsed must serialise to something that parses the same way.
    out = bytes(msg)
    assert bytes(parse_message(out)) == out


@given(
    st.lists(st.sampled_from([INVITE, OK_200, b"\r\n\r\n"]), min_size=1, max_size=6),
    st.lists(st.integers(1, 300), min_size=1, max_size=40),
)
def test_framing_is_independent_of_read_boundaries(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    whole = StreamFramer().feed(stream)
    framer = StreamFramer()
    pieces: list[bytes | KeepAlive | SipError] = []
    pos = 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if pos >= len(stream):
            break
        pieces += framer.feed(stream[pos : pos + cut])
        pos += cut
    pieces += framer.feed(stream[pos:])
    expected = [m if m != b"\r\n\r\n" else KeepAlive.PING for m in messages]
    assert whole == expected
    assert pieces == expected
