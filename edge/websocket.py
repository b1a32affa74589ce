"""SIP over WebSocket (RFC 7118), the server side, sans-I/O over wsproto.

One :class:`WebSocketSession` per accepted connection (already TLS: the edge
serves ``wss`` only).  Bytes from the socket go into :meth:`receive`, which
returns what to write back (the HTTP 101 or an error answer, pongs, close
frames), the SIP messages that arrived whole, and whether the connection is
done.  :meth:`frame` turns one outgoing SIP message into one WebSocket message.

What RFC 7118 asks and this enforces:

* the opening handshake must offer the ``sip`` subprotocol (§4.1); without it
  the upgrade is refused with 400 (counted as ``no_subprotocol``);
* each SIP message is exactly one WebSocket message, text or binary (§5.2);
  a message larger than the edge's ``max_message_size`` closes the
  connection with 1009 (Message Too Big) before it is buffered whole;
* a ping is answered with a pong; a close is answered and ends the session.

The handshake request itself is bounded by h11 inside wsproto (16 KiB of
headers); a peer that sends no handshake at all is the transport's slow-loris
timer's business.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

SUBPROTOCOL = "sip"
# RFC 6455 §7.4.1 close codes.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class Refusal(enum.Enum):
    NO_SUBPROTOCOL = "no_subprotocol"
    TOO_BIG = "too_big"
    PROTOCOL_ERROR = "protocol_error"


@dataclass(slots=True)
class Received:
    """What one :meth:`WebSocketSession.receive` call produced."""

    to_send: bytes = b""
    messages: list[bytes] = field(default_factory=list)
    closed: bool = False
    refused: Refusal | None = None
    opened: bool = False  # the handshake completed in this call


class WebSocketSession:
    """The server end of one SIP-over-WebSocket connection."""

    __slots__ = ("_buffer", "_conn", "_max", "open", "path")

    def __init__(self, max_message_size: int) -> None:
        self._conn = WSConnection(ConnectionType.SERVER)
        self._max = max_message_size
        self._buffer = bytearray()
        self.open = False
        self.path = ""

    def receive(self, data: bytes) -> Received:
        out = Received()
        try:
            self._conn.receive_data(data if data else None)
            for event in self._conn.events():
                if isinstance(event, Request):
                    self._on_request(event, out)
                elif isinstance(event, TextMessage | BytesMessage):
                    chunk = (
                        event.data.encode("utf-8") if isinstance(event, TextMessage) else event.data
                    )
                    if len(self._buffer) + len(chunk) > self._max:
                        self._close(out, CLOSE_TOO_BIG, "message too big", Refusal.TOO_BIG)
                        return out
                    self._buffer += chunk
                    if event.message_finished:
                        out.messages.append(bytes(self._buffer))
                        self._buffer.clear()
                elif isinstance(event, Ping):
                    out.to_send += self._conn.send(event.response())
                elif isinstance(event, CloseConnection):
                    if self._conn.state is ConnectionState.REMOTE_CLOSING:
                        out.to_send += self._conn.send(event.response())
                    out.closed = True
                    return out
                if out.closed:
                    return out
        except (RemoteProtocolError, LocalProtocolError) as error:
            out.refused = Refusal.PROTOCOL_ERROR
            out.closed = True
            if isinstance(error, RemoteProtocolError) and error.event_hint is not None:
                with contextlib.suppress(LocalProtocolError):
                    out.to_send += self._conn.send(error.event_hint)
        return out

    def frame(self, message: bytes) -> bytes:
        """One SIP message as one WebSocket text message (RFC 7118 §5.2: SIP is UTF-8)."""
        if not self.open:
            raise ConnectionError("the WebSocket handshake has not completed")
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            return self._conn.send(BytesMessage(data=message))
        return self._conn.send(TextMessage(data=text))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        if not self.open:
            return b""
        try:
            return self._conn.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""

    # ------------------------------------------------------------ helpers

    def _on_request(self, request: Request, out: Received) -> None:
        if SUBPROTOCOL not in [p.strip().lower() for p in request.subprotocols]:
            out.to_send += self._conn.send(RejectConnection(status_code=400))
            out.refused = Refusal.NO_SUBPROTOCOL
            out.closed = True
            return
        self.path = request.target
        out.to_send += self._conn.send(AcceptConnection(subprotocol=SUBPROTOCOL))
        self.open = out.opened = True

    def _close(self, out: Received, code: int, reason: str, refusal: Refusal) -> None:
        out.to_send += self._conn.send(CloseConnection(code=code, reason=reason))
        out.refused = refusal
        out.closed = True
        self._buffer.clear()
