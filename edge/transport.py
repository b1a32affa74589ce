"""SIP transports over UDP, TCP and TLS (RFC 3261 §18): bytes in, bytes out.

This layer moves bytes and makes no SIP decision.  What comes in is handed to
``on_message(data, Source)`` one whole message at a time; what the proxy sends
names a :class:`Destination`.  It uses only loop APIs uvloop implements
(protocols, ``sock_accept``, ``connect_accepted_socket``), so it runs on both.

Rules of this file:
- UDP: one socket per configured address.  Responses and requests go out of a
  listener socket, so that they come from the port requests arrive on (RFC 3261
  §18.2.2, symmetric response RFC 3581 §4).  CRLF keep-alives are dropped.
- TCP/TLS: a :class:`sip.framing.StreamFramer` per connection cuts the stream;
  a keep-alive ping gets its pong (RFC 5626 §3.5.1); a framing error gets the
  400/413 ``salvage_response`` builds, if any, and the connection is closed,
  since nothing after it can be framed (RFC 3261 §18.3).
- Connection reuse (RFC 3261 §18, RFC 5923): an index (transport, ip, port) ->
  connection holds every connection's remote address and the aliases the proxy
  registers.  A send uses the named connection if still open, else the index,
  else opens a connection and queues until it is up.
- Hostile peers: limits on connections in total and per source IP, idle
  timeout, header (slow-loris) timeout, TLS handshake timeout, half-closed
  connections closed, write buffers bounded.  Connections we open count toward
  the total but are never refused: the proxy decides those, a peer does not.
  Each connection keeps one timer, re-armed lazily: traffic costs no timer work.
- ``on_error`` callbacks run from the event loop (never inside ``send``), at
  most once per send.  Log lines never carry message content.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import itertools
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, cast

from edge.config import LimitsConfig, ListenConfig
from edge.websocket import WebSocketSession
from sip._abnf import untracked
from sip.errors import SipError
from sip.framing import PONG, KeepAlive, StreamFramer, is_keepalive
from sip.message import salvage_response

TRANSPORTS: Final = ("udp", "tcp", "tls", "wss")

# A peer that does not read what we write cannot hold more memory than this.
WRITE_BUFFER_LIMIT: Final = 1 << 20
# An outbound TCP connect that has not succeeded by then has failed (the kernel
# would keep retrying SYNs for minutes); the transaction layer fails over.
CONNECT_TIMEOUT: Final = 10.0
# How long a gracefully closing connection may take to flush before it is aborted.
CLOSE_GRACE: Final = 5.0
# RFC 5923 aliases a single connection may collect; more is a peer playing games.
MAX_ALIASES: Final = 16
BACKLOG: Final = 1024
_WS_COUNTER: Final = {
    "no_subprotocol": "ws_no_subprotocol",
    "too_big": "ws_too_big",
    "protocol_error": "ws_protocol_errors",
}
# Timers may fire up to a clock tick early; deadlines within this count as reached.
_EPSILON: Final = 1e-3

# What TransportLayer.counters reports (all present from the start, for metrics).
COUNTERS: Final = (
    "udp_oversize",
    "udp_keepalives",
    "udp_send_errors",
    "udp_send_dropped",
    "connections_refused",
    "framing_errors",
    "idle_timeouts",
    "header_timeouts",
    "tls_handshake_timeouts",
    "tls_handshake_failures",
    "connect_failures",
    "write_buffer_overflows",
    "ws_no_subprotocol",
    "ws_too_big",
    "ws_protocol_errors",
)


@dataclass(frozen=True, slots=True, init=False)
class Source:
    """Where a message came from.

    ``local`` is the address of our listening socket it arrived on; for a
    connection we opened, the address of our listener of that transport and
    family (what our Via and Record-Route name), or the socket's own address
    when there is none.
    """

    transport: str  # "udp" | "tcp" | "tls"
    remote: tuple[str, int]  # peer IP (IPv6 without brackets), port
    local: tuple[str, int]
    conn_id: int | None = None  # stream connection id; None for UDP
    peer_cert_der: bytes | None = None  # TLS peer certificate (DER) if one was presented

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        transport: str,
        remote: tuple[str, int],
        local: tuple[str, int],
        conn_id: int | None = None,
        peer_cert_der: bytes | None = None,
    ) -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "remote", remote)
        object.__setattr__(self, "local", local)
        object.__setattr__(self, "conn_id", conn_id)
        object.__setattr__(self, "peer_cert_der", peer_cert_der)
        # Strings, numbers and tuples of them: no cycle can pass through it, and a
        # call's transactions keep their sources and destinations for 32 s.
        untracked(self)


@dataclass(frozen=True, slots=True, init=False)
class Destination:
    """Where to send.

    ``host`` is an IP literal (no DNS here).  ``conn_id`` names a connection to
    prefer while it is open.  ``local`` (UDP) picks the listener socket to send
    from, e.g. the ``Source.local`` of the request being answered, so that the
    response leaves from the socket the request came in on when several UDP
    listeners exist (RFC 3581 §4).
    """

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int
    conn_id: int | None = None
    local: tuple[str, int] | None = None

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        conn_id: int | None = None,
        local: tuple[str, int] | None = None,
    ) -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "conn_id", conn_id)
        object.__setattr__(self, "local", local)
        untracked(self)  # as a Source's


LogFn = Callable[..., None]
OnMessage = Callable[[bytes, Source], None]
OnError = Callable[[], None]


@functools.lru_cache(maxsize=4096)
def _ip_info(host: str) -> tuple[int, str, bool] | None:
    """(family, canonical text, is loopback) of an IP literal, None if not one."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            return socket.AF_INET6, ip.compressed, ip.is_loopback
    return socket.AF_INET, ip.compressed, ip.is_loopback


# A burst of datagrams (a load test, a carrier's failover) must wait in the
# kernel while the loop is busy rather than be dropped: Kamailio needed 4 MB
# in the benchmark.  As root SO_RCVBUFFORCE passes net.core.rmem_max.
UDP_RECEIVE_BUFFER: Final = 4 << 20


def _grow_receive_buffer(sock: socket.socket) -> None:
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER)
            return
        except OSError:
            continue  # not permitted: the kernel default (or rmem_max) stays


class _RateLimitedLog:
    """At most ``burst`` lines per event per ``period`` seconds; the next line
    that gets through says how many were suppressed."""

    __slots__ = ("_log", "_period", "_burst", "_windows")

    def __init__(self, log: LogFn, period: float = 10.0, burst: int = 5) -> None:
        self._log = log
        self._period = period
        self._burst = burst
        self._windows: dict[str, list[float]] = {}  # event -> [window start, lines, suppressed]

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        w = self._windows.get(event)
        if w is None or now - w[0] >= self._period:
            suppressed = int(w[2]) if w is not None else 0
            w = self._windows[event] = [now, 0, 0]
            if suppressed:
                fields["suppressed"] = suppressed
        if w[1] >= self._burst:
            w[2] += 1
            return
        w[1] += 1
        self._log(level, event, **fields)


def _no_log(level: str, event: str, **fields: Any) -> None:
    pass


class _Listener:
    __slots__ = ("kind", "family", "local", "loopback", "wildcard", "udp", "server", "sock")

    def __init__(self, kind: str, family: int, local: tuple[str, int]) -> None:
        self.kind = kind
        self.family = family
        self.local = local
        ip = ipaddress.ip_address(local[0])
        self.loopback = ip.is_loopback
        self.wildcard = ip.is_unspecified
        self.udp: asyncio.DatagramTransport | None = None
        self.server: asyncio.AbstractServer | None = None
        self.sock: socket.socket | None = None  # TLS: we accept ourselves

    def reaches(self, loopback: bool) -> bool:
        # A socket bound to 127.0.0.1 cannot send to a public address and vice versa.
        return self.wildcard or self.loopback == loopback


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer, listener: _Listener) -> None:
        self._layer = layer
        self._listener = listener

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._layer._on_datagram(data, addr, self._listener)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends; they cannot be tied to a send, the
        # transaction timers cover the loss.
        self._layer._counters["udp_send_errors"] += 1


class _State(enum.Enum):
    CONNECTING = "connecting"  # outbound: connect (and TLS handshake) in progress
    HANDSHAKE = "handshake"  # inbound TLS: server handshake in progress
    OPEN = "open"
    CLOSED = "closed"


class _Conn(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(
        self,
        layer: TransportLayer,
        kind: str,
        *,
        inbound: bool,
        listener: _Listener | None = None,
        remote: tuple[str, int] | None = None,
    ) -> None:
        self.layer = layer
        self.kind = kind
        self.inbound = inbound
        self.listener = listener
        self.id = 0  # set when admitted
        self.state = _State.CONNECTING
        self.remote: tuple[str, int] = remote or ("", 0)
        self.tr: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.source: Source | None = None
        self.framer = StreamFramer(layer._max_message_size)
        self.held = bytearray()  # copy of what the framer holds, for salvage_response
        self.queue: list[tuple[bytes, OnError | None]] = []  # sends waiting for the connection
        self.queued_bytes = 0
        self.keys: set[tuple[str, str, int]] = set()
        now = layer._loop.time()
        self.started = now
        self.last = now
        self.partial_since: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.close_reason = ""
        self.forgotten = False
        self.sock_owned = False
        # SIP over WebSocket (RFC 7118): the session that frames messages.
        self.ws: WebSocketSession | None = None

    # ------------------------------------------------------------ protocol callbacks

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's: a cast, not an isinstance check.
        transport = cast(asyncio.Transport, base)
        if self.state is _State.CLOSED:  # closed while connecting
            transport.abort()
            return
        # Inbound TLS was admitted at accept(); inbound TCP is admitted here.
        if self.inbound and self.kind == "tcp":
            peer = transport.get_extra_info("peername")
            if peer is None or not self.layer._admit(self, peer):
                transport.abort()
                return
        self.opened(transport)

    def data_received(self, data: bytes) -> None:
        if self.state is _State.OPEN:
            self.feed(data)

    def eof_received(self) -> bool | None:
        # A peer that closes its write side is done with the connection; keeping
        # half-open connections only helps exhaust the connection limit.
        self.close("half_closed")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not _State.CLOSED:
            self.state = _State.CLOSED
            self.close_reason = "peer_closed" if exc is None else f"error:{type(exc).__name__}"
        self.layer._forget(self)

    # ------------------------------------------------------------ life cycle

    def opened(self, transport: asyncio.Transport) -> None:
        """The connection is up (TCP connected, TLS handshake done)."""
        self.tr = transport
        self.state = _State.OPEN
        peer = transport.get_extra_info("peername")
        if peer is not None:
            self.remote = (peer[0], peer[1])
        cert: bytes | None = None
        if self.kind in ("tls", "wss"):
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is not None:
                cert = sslobj.getpeercert(binary_form=True)
                # By version, for metrics: "tls_handshakes_TLSv1.3".
                self.layer._counters[f"tls_handshakes_{sslobj.version()}"] += 1
        if self.listener is not None:
            local = self.listener.local
        else:
            local = self.layer._outbound_local(self.kind, transport)
        self.source = Source(self.kind, self.remote, local, self.id, cert)
        self.last = self.layer._loop.time()
        if self.kind == "wss":
            self.ws = WebSocketSession(self.layer._max_message_size)
            # Until the upgrade is done the slow-loris clock runs, as for a header.
            self.partial_since = self.last
            self.arm()
        queue, self.queue, self.queued_bytes = self.queue, [], 0
        for data, on_error in queue:
            self.write(data, on_error)

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Stop using the connection; ``abort`` drops unsent data (hostile peer)."""
        if self.state is _State.CLOSED:
            if abort and self.tr is not None:
                self.tr.abort()
            return
        self.state = _State.CLOSED
        self.close_reason = reason
        self.layer._unindex(self)
        self._fail_queue()
        if self.tr is None:
            # Connecting or in the handshake: cancelling the attempt closes its socket.
            if self.task is not None:
                self.task.cancel()
            self.layer._forget(self)
        elif abort:
            self.tr.abort()
        else:
            self.tr.close()
            # A peer that reads nothing would keep a closing connection forever.
            self._set_timer(self.layer._loop.time() + CLOSE_GRACE)

    def _fail_queue(self) -> None:
        queue, self.queue, self.queued_bytes = self.queue, [], 0
        for _, on_error in queue:
            if on_error is not None:
                self.layer._call_soon(on_error)

    # ------------------------------------------------------------ data

    def write(self, data: bytes, on_error: OnError | None) -> None:
        if self.ws is not None:
            if not self.ws.open or self.state is not _State.OPEN:
                if on_error is not None:
                    self.layer._call_soon(on_error)
                return
            data = self.ws.frame(data)
        if self.state is _State.OPEN:
            tr = self.tr
            assert tr is not None
            tr.write(data)
            self.last = self.layer._loop.time()
            if tr.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                self.layer._counters["write_buffer_overflows"] += 1
                self.layer._rlog(
                    "warning", "write_buffer_full", conn_id=self.id, remote=self.remote
                )
                self.close("write_buffer_full", abort=True)
                if on_error is not None:
                    self.layer._call_soon(on_error)
        elif self.state is _State.CLOSED or self.queued_bytes + len(data) > WRITE_BUFFER_LIMIT:
            if on_error is not None:
                self.layer._call_soon(on_error)
        else:
            self.queue.append((data, on_error))
            self.queued_bytes += len(data)

    def feed(self, data: bytes) -> None:
        if self.ws is not None:
            self._feed_ws(data)
            return
        layer = self.layer
        now = layer._loop.time()
        self.last = now
        framer = self.framer
        source = self.source
        assert source is not None  # set when the connection opened
        # Keep what the framer holds, so that a framing error can be answered
        # with the head of the bad message (salvage_response needs its Via).
        held = self.held
        if held:
            held += data
            chunk: bytes | bytearray = held
        else:
            chunk = data
        consumed = 0
        completed = False
        for item in framer.feed(data):
            if type(item) is bytes:
                consumed += len(item)
                completed = True
                layer._deliver(item, source)
            elif item is KeepAlive.PING:
                consumed += 4
                completed = True
                if self.tr is not None and self.state is _State.OPEN:
                    self.tr.write(PONG)
            elif item is KeepAlive.PONG:
                consumed += 2
                completed = True
            elif isinstance(item, SipError):
                self._framing_error(bytes(chunk[consumed:]), item)
                return
            if self.state is not _State.OPEN:
                return  # closed by the proxy while handling a message
        buffered = framer.buffered
        if buffered == 0:
            if held:
                self.held = bytearray()
            self.partial_since = None
            return
        if chunk is held:
            del held[: len(held) - buffered]
        else:
            self.held = bytearray(data[len(data) - buffered :])
        if self.partial_since is None or completed:
            # A message has started and not ended: the slow-loris clock runs.
            self.partial_since = now
            deadline = now + layer._header_timeout
            if deadline < self.timer_at:
                self._set_timer(deadline)

    def _feed_ws(self, data: bytes) -> None:
        ws = self.ws
        source = self.source
        assert ws is not None and source is not None
        layer = self.layer
        self.last = layer._loop.time()
        got = ws.receive(data)
        if got.to_send and self.tr is not None:
            self.tr.write(got.to_send)
        if got.opened:
            self.partial_since = None
        for message in got.messages:
            layer._deliver(message, source)
            if self.state is not _State.OPEN:
                return
        if got.refused is not None:
            layer._counters[_WS_COUNTER[got.refused.value]] += 1
            layer._rlog(
                "info", "websocket_refused", remote=self.remote[0], reason=got.refused.value
            )
        if got.closed:
            self.close(got.refused.value if got.refused else "websocket_closed")

    def _framing_error(self, bad: bytes, error: SipError) -> None:
        layer = self.layer
        layer._counters["framing_errors"] += 1
        layer._rlog(
            "info",
            "framing_error",
            transport=self.kind,
            remote=self.remote,
            conn_id=self.id,
            reason=error.reason,
            status=error.status_hint,
        )
        answer = salvage_response(bad, error)
        if answer is not None and self.tr is not None:
            self.tr.write(answer)
        self.close("framing_error")

    # ------------------------------------------------------------ timers

    def arm(self) -> None:
        """(Re)arm the one timer at the nearest deadline."""
        layer = self.layer
        deadline = self.last + layer._idle_timeout
        if self.state is _State.HANDSHAKE:
            deadline = min(deadline, self.started + layer._handshake_timeout)
        if self.partial_since is not None:
            deadline = min(deadline, self.partial_since + layer._header_timeout)
        self._set_timer(deadline)

    def _set_timer(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.layer._loop.call_at(at, self._on_timer)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = 0.0

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = 0.0
        layer = self.layer
        if self.state is _State.CLOSED:
            if self.tr is not None:
                self.tr.abort()  # the close grace is over
            return
        now = layer._loop.time() + _EPSILON
        reason = ""
        if self.state is _State.HANDSHAKE and now >= self.started + layer._handshake_timeout:
            reason = "tls_handshake_timeout"
        elif self.partial_since is not None and now >= self.partial_since + layer._header_timeout:
            reason = "header_timeout"
        elif now >= self.last + layer._idle_timeout:
            reason = "idle_timeout"
        if not reason:
            self.arm()
            return
        layer._counters[reason + "s"] += 1
        layer._log("debug", "connection_timeout", conn_id=self.id, reason=reason)
        self.close(reason, abort=True)


class TransportLayer:
    """UDP, TCP and TLS listeners and connections for the proxy.

    ``on_message(data, source)`` gets every whole message; ``send`` takes bytes
    and a :class:`Destination`.  Exceptions raised by ``on_message`` are logged
    and do not reach the event loop.
    """

    def __init__(
        self,
        *,
        listen: ListenConfig,
        limits: LimitsConfig,
        tls_server: ssl.SSLContext | None,
        tls_client: ssl.SSLContext | None,
        on_message: OnMessage,
        log: LogFn | None = None,
    ) -> None:
        self._listen_config = listen
        self._max_message_size = limits.max_message_size
        self._max_connections = limits.max_connections
        self._max_per_source = limits.max_connections_per_source
        self._idle_timeout = limits.idle_timeout
        self._header_timeout = limits.header_timeout
        self._handshake_timeout = limits.tls_handshake_timeout
        self._tls_server = tls_server
        self._tls_client = tls_client
        self._on_message = on_message
        self._log: LogFn = log or _no_log
        self._rlog = _RateLimitedLog(self._log)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in start()
        self._listeners: list[_Listener] = []
        self._udp: list[_Listener] = []
        self._conns: dict[int, _Conn] = {}
        self._index: dict[tuple[str, str, int], _Conn] = {}
        self._per_source: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._closed = False
        # Called with a connection id when an open connection goes away.
        self.on_connection_closed: Callable[[int], None] | None = None

    # ------------------------------------------------------------ public API

    async def start(self) -> None:
        """Bind every configured listener; ``OSError`` naming the address on failure."""
        self._loop = asyncio.get_running_loop()
        listen = self._listen_config
        if (listen.tls or listen.wss) and self._tls_server is None:
            raise ValueError("TLS listeners are configured but no TLS server context was given")
        try:
            for kind in TRANSPORTS:
                for hp in getattr(listen, kind):
                    await self._bind(kind, hp.host, hp.port)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close listeners and connections (connections get a moment to flush)."""
        self._closed = True
        for listener in self._listeners:
            if listener.server is not None:
                listener.server.close()
            if listener.udp is not None:
                listener.udp.close()
        for task in list(self._tasks):
            task.cancel()  # accept loops, handshakes, connects
        listeners, self._listeners = self._listeners, []
        self._udp.clear()
        for conn in list(self._conns.values()):
            conn.close("shutdown")
        # Bounded wait for the transports to report connection_lost.
        for _ in range(50):
            if not self._conns and not self._tasks:
                break
            await asyncio.sleep(0.02)
        for conn in list(self._conns.values()):
            conn.close("shutdown", abort=True)
            self._forget(conn)
        for listener in listeners:
            if listener.sock is not None:  # after its accept loop has ended
                listener.sock.close()

    def send(self, data: bytes, dest: Destination, on_error: OnError | None = None) -> None:
        """Send one message (or keep-alive); ``on_error`` is called later, once, if it
        could not be handed to the network (no route, connect failed, connection gone)."""
        if dest.transport == "udp":
            self._send_udp(data, dest, on_error)
            return
        conn = None
        if dest.conn_id is not None:
            conn = self._conns.get(dest.conn_id)
            if conn is not None and (conn.state is _State.CLOSED or conn.kind != dest.transport):
                conn = None
        if conn is None:
            info = _ip_info(dest.host)
            if info is None or dest.transport not in ("tcp", "tls", "wss") or self._closed:
                self._send_failed("bad_destination", dest, on_error)
                return
            conn = self._index.get((dest.transport, info[1], dest.port))
            if conn is None and dest.transport == "wss":
                # Browsers connect to us; there is nobody to connect to.
                self._send_failed("no_websocket_connection", dest, on_error)
                return
            if conn is None:
                if dest.transport == "tls" and self._tls_client is None:
                    self._send_failed("no_tls_client_context", dest, on_error)
                    return
                conn = self._connect(dest.transport, info[1], dest.port)
        conn.write(data, on_error)

    def deliver_to(self, on_message: OnMessage) -> None:
        """Hand received messages to ``on_message`` from now on (the proxy, once it
        exists: it needs this layer to be built first)."""
        self._on_message = on_message

    def register_alias(self, conn_id: int, host: str, port: int) -> None:
        """RFC 5923 §5: (transport, host, port) now maps to this connection.

        Whether the peer may claim that address (§11: only with TLS mutual
        authentication or a trusted peer) is the caller's decision.
        """
        conn = self._conns.get(conn_id)
        info = _ip_info(host)
        if conn is None or conn.state is _State.CLOSED or info is None:
            return
        key = (conn.kind, info[1], port)
        if key in conn.keys:
            return
        if len(conn.keys) > MAX_ALIASES:  # the remote address plus MAX_ALIASES
            self._rlog("warning", "too_many_aliases", conn_id=conn_id, remote=conn.remote)
            return
        old = self._index.get(key)
        if old is not None:
            old.keys.discard(key)
        self._index[key] = conn
        conn.keys.add(key)

    def local_address(self, transport: str, family: int = socket.AF_INET) -> tuple[str, int] | None:
        """The address of a bound listener of that transport and family (for Via and
        Record-Route), or None."""
        for listener in self._listeners:
            if listener.kind == transport and listener.family == family:
                return listener.local
        return None

    def set_tls_server_context(self, ctx: ssl.SSLContext) -> None:
        """Use ``ctx`` for TLS connections accepted from now on (certificate reload)."""
        self._tls_server = ctx

    @property
    def connection_count(self) -> int:
        """Open TCP and TLS connections, inbound and outbound (including ones still
        connecting or in their handshake)."""
        return len(self._conns)

    def connection_remote(self, conn_id: int) -> tuple[str, int] | None:
        """The peer address of an open connection (flow tokens check against it)."""
        conn = self._conns.get(conn_id)
        if conn is None or not conn.remote[0]:
            return None
        return conn.remote

    def close_connection(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.close("closed_by_proxy")

    @property
    def counters(self) -> dict[str, int]:
        """Event counts for metrics, one per name in :data:`COUNTERS` (a copy)."""
        return dict(self._counters)

    # ------------------------------------------------------------ listeners

    async def _bind(self, kind: str, host: str, port: int) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=stype, flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, stype)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {kind} {where}: {e.strerror or e}") from e
        try:
            if family == socket.AF_INET6:
                # One listener per configured address: "::" must not also take IPv4.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if stype == socket.SOCK_STREAM:
                # Restart without waiting for old connections in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                _grow_receive_buffer(sock)
            sock.bind(sockaddr)
            sock.setblocking(False)
            bound = sock.getsockname()
            listener = _Listener(kind, family, (bound[0], bound[1]))
            if kind == "udp":
                listener.udp, _ = await self._loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self, listener), sock=sock
                )
            elif kind == "tcp":
                listener.server = await self._loop.create_server(
                    lambda: _Conn(self, kind, inbound=True, listener=listener),
                    sock=sock,
                    backlog=BACKLOG,
                )
            else:
                sock.listen(BACKLOG)
                listener.sock = sock
                self._spawn(self._accept_loop(listener, sock))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot listen on {kind} {where}: {e.strerror or e}") from e
        self._listeners.append(listener)
        if kind == "udp":
            self._udp.append(listener)
        self._log("info", "listening", transport=kind, address=str(where), bound=listener.local)

    # ------------------------------------------------------------ UDP

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...], listener: _Listener) -> None:
        if len(data) > self._max_message_size:
            self._counters["udp_oversize"] += 1
            self._rlog("warning", "udp_oversize", remote=addr[0], size=len(data))
            return
        # The first-byte test keeps is_keepalive's copy off the hot path.
        if not data or (data[0] in b"\r\n" and is_keepalive(data)):
            self._counters["udp_keepalives"] += 1
            return
        self._deliver(data, Source("udp", (addr[0], addr[1]), listener.local))

    def _send_udp(self, data: bytes, dest: Destination, on_error: OnError | None) -> None:
        info = _ip_info(dest.host)
        listener = None if info is None else self._pick_udp(info[0], info[2], dest.local)
        if listener is None or listener.udp is None:
            self._send_failed("no_udp_socket", dest, on_error)
            return
        udp = listener.udp
        # Both loops buffer datagrams the kernel refused for now; bound that too.
        if udp.get_write_buffer_size() > WRITE_BUFFER_LIMIT:  # type: ignore[attr-defined]
            self._counters["udp_send_dropped"] += 1
            self._send_failed("udp_buffer_full", dest, on_error)
            return
        try:
            udp.sendto(data, (dest.host, dest.port))
        except (OSError, ValueError):
            self._counters["udp_send_errors"] += 1
            self._send_failed("udp_send_error", dest, on_error)

    def _pick_udp(
        self, family: int, loopback: bool, local: tuple[str, int] | None
    ) -> _Listener | None:
        if local is not None:
            for listener in self._udp:
                if listener.local == local and listener.family == family:
                    return listener
        fallback = None
        for listener in self._udp:
            if listener.family == family:
                if listener.reaches(loopback):
                    return listener
                fallback = fallback or listener
        return fallback

    # ------------------------------------------------------------ streams

    def _admit(self, conn: _Conn, peer: tuple[Any, ...]) -> bool:
        """Register an accepted connection, or refuse it (limits, shutting down)."""
        if self._closed:
            return False
        ip = peer[0]
        reason = ""
        if len(self._conns) >= self._max_connections:
            reason = "max_connections"
        elif self._per_source[ip] >= self._max_per_source:
            reason = "max_connections_per_source"
        if reason:
            self._counters["connections_refused"] += 1
            self._rlog(
                "warning", "connection_refused", transport=conn.kind, remote=ip, reason=reason
            )
            return False
        conn.remote = (ip, peer[1])
        self._per_source[ip] += 1
        self._register(conn)
        return True

    def _register(self, conn: _Conn) -> None:
        conn.id = next(self._ids)
        self._conns[conn.id] = conn
        info = _ip_info(conn.remote[0])
        if info is not None:
            key = (conn.kind, info[1], conn.remote[1])
            old = self._index.get(key)
            if old is not None:
                old.keys.discard(key)
            self._index[key] = conn
            conn.keys.add(key)
        conn.arm()
        self._log(
            "debug",
            "connection_opened",
            transport=conn.kind,
            conn_id=conn.id,
            remote=conn.remote,
            inbound=conn.inbound,
        )

    def _unindex(self, conn: _Conn) -> None:
        for key in conn.keys:
            if self._index.get(key) is conn:
                del self._index[key]
        conn.keys.clear()

    def _forget(self, conn: _Conn) -> None:
        """The connection is gone: drop every reference to it (idempotent)."""
        if conn.forgotten or conn.id == 0:
            return
        if self.on_connection_closed is not None and conn.source is not None:
            # Registrations bound to this flow die with it (RFC 5626 §5.2).
            try:
                self.on_connection_closed(conn.id)
            except Exception as exc:
                self._rlog("error", "on_connection_closed_failed", error=type(exc).__name__)
        conn.forgotten = True
        conn.state = _State.CLOSED
        self._unindex(conn)
        conn.cancel_timer()
        conn._fail_queue()
        self._conns.pop(conn.id, None)
        if conn.inbound:
            ip = conn.remote[0]
            self._per_source[ip] -= 1
            if self._per_source[ip] <= 0:
                del self._per_source[ip]
        self._log(
            "debug",
            "connection_closed",
            transport=conn.kind,
            conn_id=conn.id,
            remote=conn.remote,
            reason=conn.close_reason or "closed",
        )

    async def _accept_loop(self, listener: _Listener, sock: socket.socket) -> None:
        """Accept TLS connections ourselves rather than with create_server(ssl=...), so
        that each handshake uses the server context current at accept time (reload)
        and connections in their handshake count against the limits."""
        while True:
            try:
                csock, peer = await self._loop.sock_accept(sock)
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS, ECONNABORTED ...
                self._rlog("error", "accept_failed", transport="tls", error=e.strerror or str(e))
                await asyncio.sleep(0.1)  # let connections close rather than spin
                continue
            conn = _Conn(self, listener.kind, inbound=True, listener=listener)
            conn.state = _State.HANDSHAKE
            if not self._admit(conn, peer):
                csock.close()
                continue
            csock.setblocking(False)
            task = conn.task = self._spawn(self._server_handshake(conn, csock))
            task.add_done_callback(functools.partial(_close_unowned, conn, csock))

    async def _server_handshake(self, conn: _Conn, csock: socket.socket) -> None:
        ctx = self._tls_server
        assert ctx is not None
        conn.sock_owned = True  # from here on the transport closes the socket
        try:
            # connection_made() runs once the handshake is done.
            await self._loop.connect_accepted_socket(
                lambda: conn,
                csock,
                ssl=ctx,
                ssl_handshake_timeout=self._handshake_timeout,
                ssl_shutdown_timeout=self._handshake_timeout,
            )
        except asyncio.CancelledError:
            self._forget(conn)
            raise
        except Exception as exc:  # ssl.SSLError, ConnectionError, TimeoutError ...
            if conn.state is not _State.CLOSED:
                self._counters["tls_handshake_failures"] += 1
                self._rlog("info", "tls_handshake_failed", remote=conn.remote[0],
                           error=_ssl_reason(exc))  # fmt: skip
                conn.state = _State.CLOSED
                conn.close_reason = "tls_handshake_failed"
            self._forget(conn)
            return
        conn.task = None

    def _connect(self, kind: str, host: str, port: int) -> _Conn:
        conn = _Conn(self, kind, inbound=False, remote=(host, port))
        self._register(conn)
        conn.task = self._spawn(self._open(conn, host, port))
        return conn

    async def _open(self, conn: _Conn, host: str, port: int) -> None:
        kwargs: dict[str, Any] = {}
        timeout = CONNECT_TIMEOUT
        if conn.kind == "tls":
            ctx = self._tls_client
            assert ctx is not None
            # An IP destination is checked against the certificate's IP SANs when
            # the context checks names; "" means no SNI and no name check.
            kwargs = {
                "ssl": ctx,
                "server_hostname": host if ctx.check_hostname else "",
                "ssl_handshake_timeout": self._handshake_timeout,
                "ssl_shutdown_timeout": self._handshake_timeout,
            }
            timeout += self._handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(lambda: conn, host, port, **kwargs)
        except asyncio.CancelledError:
            self._forget(conn)
            raise
        except Exception as exc:  # OSError, TimeoutError, ssl.SSLError ...
            if conn.state is not _State.CLOSED:
                self._counters["connect_failures"] += 1
                self._rlog(
                    "warning",
                    "connect_failed",
                    transport=conn.kind,
                    remote=[host, port],
                    error=_ssl_reason(exc),
                )
                conn.close("connect_failed", abort=True)
            self._forget(conn)
            return
        conn.task = None

    def _outbound_local(self, kind: str, transport: asyncio.BaseTransport) -> tuple[str, int]:
        sockname = transport.get_extra_info("sockname")
        family = socket.AF_INET6 if sockname and ":" in sockname[0] else socket.AF_INET
        local = self.local_address(kind, family)
        if local is not None:
            return local
        return (sockname[0], sockname[1]) if sockname else ("", 0)

    # ------------------------------------------------------------ helpers

    def _deliver(self, data: bytes, source: Source) -> None:
        try:
            self._on_message(data, source)
        except Exception as exc:
            # A bug in the proxy must not take a listener down (uvloop closes a
            # transport whose protocol callback raises).  The exception text is
            # not logged: it may quote the message.
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
            self._rlog("error", "on_message_failed", error=type(exc).__name__, where=where)

    def _send_failed(self, reason: str, dest: Destination, on_error: OnError | None) -> None:
        self._rlog(
            "info",
            "send_failed",
            reason=reason,
            transport=dest.transport,
            remote=[dest.host, dest.port],
        )
        if on_error is not None:
            self._call_soon(on_error)

    def _call_soon(self, callback: OnError) -> None:
        self._loop.call_soon(self._run_callback, callback)

    def _run_callback(self, callback: OnError) -> None:
        try:
            callback()
        except Exception as exc:
            self._rlog("error", "on_error_failed", error=type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _close_unowned(conn: _Conn, csock: socket.socket, _: object) -> None:
    # A handshake task cancelled before it ran never handed its socket to a transport.
    if not conn.sock_owned:
        csock.close()


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__}:{exc.reason}"
    return type(exc).__name__
