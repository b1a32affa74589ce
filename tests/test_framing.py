"""Stream framing (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §3.5.1)."""

from __future__ import annotations

import random

import pytest

from sip.errors import SipError
from sip.framing import KeepAlive, StreamFramer, is_keepalive
from sip.message import parse_message
from tests.sipdata import INVITE, OK_200


def test_several_messages_in_one_read() -> None:
    framer = StreamFramer()
    frames = framer.feed(INVITE + OK_200 + INVITE)
    assert frames == [INVITE, OK_200, INVITE]
    assert framer.buffered == 0


def test_one_message_over_many_reads() -> None:
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    for i in range(len(INVITE)):
        out += framer.feed(INVITE[i : i + 1])
        if i < len(INVITE) - 1:
            assert out == []
    assert out == [INVITE]
    assert parse_message(INVITE, stream=True).body.startswith(b"v=0")


def test_any_split_of_a_stream_gives_the_same_frames() -> None:
    stream = INVITE + b"\r\n\r\n" + OK_200 + b"\r\n" + INVITE + OK_200
    want = StreamFramer().feed(stream)
    assert want == [INVITE, KeepAlive.PING, OK_200, KeepAlive.PONG, INVITE, OK_200]
    rng = random.Random(5)
    for _ in range(200):
        framer = StreamFramer()
        got: list[object] = []
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 40)))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            got += framer.feed(stream[a:b])
        assert got == want
        assert all(type(f) is bytes for f in got if not isinstance(f, KeepAlive))
        assert framer.buffered == 0


def test_keepalives_between_messages() -> None:
    framer = StreamFramer()
    frames = framer.feed(b"\r\n\r\n" + INVITE + b"\r\n" + OK_200 + b"\r\n\r\n")
    assert frames == [KeepAlive.PING, INVITE, KeepAlive.PONG, OK_200, KeepAlive.PING]


def test_a_lone_crlf_waits_to_see_whether_it_is_a_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [KeepAlive.PING]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(INVITE) == [KeepAlive.PONG, INVITE]


def fails(frames: list[object], match: str, status: int = 400) -> None:
    error = frames[-1]
    assert isinstance(error, SipError), frames
    assert match in error.reason and error.status_hint == status


def test_missing_content_length_is_fatal() -> None:
    framer = StreamFramer()
    no_length = INVITE.replace(b"Content-Length: ", b"X-Length: ")
    fails(framer.feed(no_length), "Content-Length")
    assert framer.failed is not None
    assert framer.feed(INVITE) == []  # the connection is done


@pytest.mark.parametrize("value", [b"-5", b"ten", b"1 2", b"0x10", b""])
def test_a_content_length_that_is_no_number_says_so(value: bytes) -> None:
    """Found from outside: "Content-Length: -5" over TCP was answered "missing"."""
    framer = StreamFramer()
    bad = INVITE.replace(
        INVITE[INVITE.index(b"Content-Length: ") :].split(b"\r\n")[0], b"Content-Length: " + value
    )
    fails(framer.feed(bad), "Content-Length is not a number")
    assert framer.failed is not None


def test_a_malformed_content_length_beside_a_valid_one_is_refused_by_the_parse() -> None:
    framer = StreamFramer()
    two = INVITE.replace(b"Subject: call", b"Content-Length: many")
    (frame,) = framer.feed(two)
    with pytest.raises(SipError, match=r"(?i)content-length must appear once"):
        parse_message(frame, stream=True)


def test_two_content_lengths_are_fatal() -> None:
    framer = StreamFramer()
    two = INVITE.replace(b"Subject: call", b"l: 3")
    fails(framer.feed(two), "once")


def test_adjacent_content_lengths_are_fatal() -> None:
    """Found in review: a regex that ate the line's CRLF missed the second line."""
    framer = StreamFramer()
    data = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\nContent-Length: 9\r\n\r\n123456789"
    fails(framer.feed(data), "once")


def test_messages_before_an_error_are_delivered() -> None:
    """Found by the fuzzer: frames cut before a framing error were lost."""
    framer = StreamFramer()
    frames = framer.feed(INVITE + OK_200 + b"garbage\r\n\r\n")
    assert frames[:2] == [INVITE, OK_200]
    fails(frames, "Content-Length")


def test_compact_content_length() -> None:
    framer = StreamFramer()
    compact = INVITE.replace(b"Content-Length:", b"l  :")
    assert framer.feed(compact) == [compact]


def test_endless_headers_are_cut_off() -> None:
    framer = StreamFramer(max_message_size=4096)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    frames: list[object] = []
    for _ in range(1000):
        assert framer.buffered <= 4096 + 100
        frames += framer.feed(b"X-Slow: " + b"a" * 60 + b"\r\n")
    fails(frames, "too large", 413)
    assert framer.buffered == 0


def test_huge_announced_body_is_refused_before_buffering() -> None:
    framer = StreamFramer(max_message_size=65536)
    head = INVITE.split(b"\r\n\r\n")[0]
    head = head[: head.index(b"Content-Length: ")] + b"Content-Length: 9999999"
    assert head.count(b"Content-Length") == 1
    fails(framer.feed(head + b"\r\n\r\n"), "too large", 413)


def test_udp_keepalive_datagrams() -> None:
    assert is_keepalive(b"\r\n\r\n")
    assert is_keepalive(b"\r\n")
    assert not is_keepalive(b"")
    assert not is_keepalive(INVITE)
