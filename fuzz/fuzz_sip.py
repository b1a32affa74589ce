"""atheris fuzz target for the SIP parser and stream framer.

Invariant (h11's fuzz/afl-server.py is the model): for any bytes,
``parse_message`` returns a message or raises :class:`SipError`, nothing
else; every typed accessor of a parsed message does the same; a parsed
message serialises to bytes that parse again and serialise identically; and
the stream framer cuts the same frames whether the bytes arrive whole or in
small pieces.

    python fuzz/fuzz_sip.py -runs=20000 CORPUS_DIR    # bounded, as make test runs it
    python fuzz/fuzz_sip.py CORPUS_DIR                # until stopped
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from sip.errors import SipError
    from sip.framing import StreamFramer
    from sip.message import Message, parse_message

ACCESSORS = (
    "via",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "content_length",
    "content_type",
    "contact",
    "route",
    "record_route",
    "expires",
    "supported",
    "require",
    "proxy_require",
)


def touch(msg: Message) -> None:
    for name in ACCESSORS:
        with contextlib.suppress(SipError):
            getattr(msg, name)
    for header in ("Authorization", "Proxy-Authorization"):
        with contextlib.suppress(SipError):
            msg.credentials(header)
    for header in ("WWW-Authenticate", "Proxy-Authenticate"):
        with contextlib.suppress(SipError):
            msg.challenges(header)


def frames(data: bytes, step: int) -> list[object] | str:
    framer = StreamFramer(max_message_size=8192)
    out: list[object] = []
    for i in range(0, len(data), step):
        out += framer.feed(data[i : i + step])
    # Errors compare by where they happen, not by object identity.
    return ["error" if isinstance(f, SipError) else f for f in out]


def test_one_input(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipError:
        msg = None
    if msg is not None:
        touch(msg)
        out = bytes(msg)
        again = parse_message(out)
        assert bytes(again) == out, (data, out)
    whole = frames(data, len(data) or 1)
    pieces = frames(data, 7)
    assert whole == pieces, (data, whole, pieces)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
