"""Message framing on stream transports (RFC 3261 §18.3) and keep-alives (RFC 5626 §3.5.1).

A :class:`StreamFramer` takes whatever a TCP/TLS read gave and returns whole
messages, whatever the read boundaries: several messages in one read, one
message over many reads.  Between messages, a double CRLF is a keep-alive
*ping* (the server answers with a single CRLF, the *pong*); a single CRLF is
a pong.  Framing errors are fatal for the connection: after a bad header
block or a missing Content-Length there is no way to find the next message.
The error comes back as the last item of what :meth:`StreamFramer.feed`
returns, after every message that was whole before it (nothing that arrived
intact is lost); the caller answers 400 if it can and closes.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from sip.errors import SipError

CRLF: Final = b"\r\n"
PING: Final = b"\r\n\r\n"
PONG: Final = b"\r\n"

# Content-Length or its compact form l, at the start of a header line.  The
# full parse checks the value again (and refuses a second Content-Length);
# here it only has to say where the message ends.
# The closing CRLF is a lookahead: consuming it would hide a second
# Content-Length on the very next line (a request-smuggling desync).
_CONTENT_LENGTH_NAME: Final = rb"\r\n(?:content-length|l)[ \t]*:"
_CONTENT_LENGTH_RE: Final = re.compile(
    _CONTENT_LENGTH_NAME + rb"[ \t]*([0-9]+)[ \t]*(?=\r\n)", re.I
)
# Any Content-Length line, whatever its value, looked for only when there is not
# exactly one valid: a line whose value is no number ("-5", "ten") deserves its
# own answer, not "missing".  (One valid beside a malformed one frames by the
# valid one; the full parse then refuses the second line.)
_CONTENT_LENGTH_NAME_RE: Final = re.compile(_CONTENT_LENGTH_NAME, re.I)


class KeepAlive(enum.Enum):
    PING = "ping"
    PONG = "pong"


Frame = bytes | KeepAlive | SipError


class StreamFramer:
    """Cuts a byte stream into SIP messages and keep-alives.

    ``max_message_size`` bounds what is buffered: a peer that sends an
    endless header block or announces a huge body is cut off with 413
    rather than allowed to hold memory.
    """

    __slots__ = ("_buf", "_scan_from", "max_message_size", "failed")

    def __init__(self, max_message_size: int = 65536) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self.max_message_size = max_message_size
        self.failed: SipError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message (for idle/slow-loris checks)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the messages and keep-alives they complete, in order.

        A framing error ends the list (as a :class:`SipError` item) and the
        framer: later calls return nothing.
        """
        if self.failed is not None:
            return []
        out: list[Frame] = []
        try:
            self._cut(data, out)
        except SipError as error:
            self.failed = error
            self._buf.clear()
            out.append(error)
        return out

    def _cut(self, data: bytes, out: list[Frame]) -> None:
        # Cut at offsets and keep only the unfinished tail: a read of whole messages
        # (the usual case) is sliced, not copied through a bytearray, and a read of
        # exactly one message is passed on as it is.  A message that arrives in
        # pieces grows the held bytearray in place (amortised, never copied whole
        # per read: a peer trickling bytes must not cost quadratic time).
        held = self._buf
        src: bytes | bytearray
        if held:
            held += data
            src = held
        else:
            src = data
        size = len(src)
        pos = 0
        try:
            while pos < size:
                if src.startswith(CRLF, pos):
                    if src.startswith(PING, pos):
                        out.append(KeepAlive.PING)
                        pos += 4
                        self._scan_from = 0
                        continue
                    if size - pos < 4 and PING.startswith(src[pos:]):
                        break  # could still become a ping
                    out.append(KeepAlive.PONG)
                    pos += 2
                    self._scan_from = 0
                    continue
                end = src.find(PING, pos + self._scan_from)
                if end < 0:
                    if size - pos > self.max_message_size:
                        raise SipError("header block too large", 413)
                    self._scan_from = max(0, size - pos - 3)
                    break
                lengths = _CONTENT_LENGTH_RE.findall(src, pos, end + 2)
                if len(lengths) != 1:
                    named = len(_CONTENT_LENGTH_NAME_RE.findall(src, pos, end))
                    if named == 0:
                        raise SipError("missing Content-Length on a stream transport")
                    if named > 1:
                        raise SipError("Content-Length must appear once")
                    raise SipError("Content-Length is not a number")
                if len(lengths[0]) > 10:
                    raise SipError("Content-Length out of range")
                total = end + 4 + int(lengths[0]) - pos
                if total > self.max_message_size:
                    raise SipError("message too large", 413)
                if size - pos < total:
                    self._scan_from = end - pos  # the header end is known; wait for the body
                    break
                # Of bytes, the whole-read slice and bytes() are the object itself.
                out.append(bytes(src[pos : pos + total]))
                pos += total
                self._scan_from = 0
        finally:
            if src is held:
                del held[:pos]
            elif pos < size:
                held += src[pos:] if pos else src


def is_keepalive(datagram: bytes) -> bool:
    """True for a CRLF keep-alive datagram (phones send these over UDP)."""
    return bool(datagram) and datagram.strip(b"\r\n") == b""
