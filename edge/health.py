"""Liveness and readiness of a running sipedge, and the HTTP endpoint that serves
them with the metrics (edge/metrics.py).

Rules of this file:
- Readiness is a pure read of the parts, no I/O and no clock of its own: the
  endpoint asks at request time, and tests hand in fakes.
- Alive (``/healthz``) means the event loop answers: nothing here is consulted.
- Ready (``/readyz``) means a new call could get through now: the SIP listeners
  are bound, something can take the call (an upstream target that is up, or the
  built-in echo endpoint), the media relay has a free port pair, and the proxy is
  not draining.  A load balancer or Kubernetes takes an instance that is not ready
  out of rotation without restarting it; each reason is one short line for the
  probe's log.
- Parts are duck-typed and optional (:class:`Parts`): the app fills them in as
  they start, so readiness turns true only once all of them are up.
- :class:`HttpEndpoint` is asyncio on the proxy's own loop (no threads, so reading
  the parts needs no locks): HTTP/1.1 GET only, one request per connection
  (``Connection: close``), the request head bounded (:data:`MAX_REQUEST`) and timed
  (:data:`READ_TIMEOUT`), at most :data:`MAX_CLIENTS` at once.  It has no
  authentication: it belongs on an internal address (docs/operations.md names the
  firewall rule and the NetworkPolicy that keep it there).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

MAX_REQUEST: Final = 8192  # bytes of request line and headers
READ_TIMEOUT: Final = 5.0  # seconds to send the request head
WRITE_TIMEOUT: Final = 10.0  # seconds for the client to take the response
MAX_CLIENTS: Final = 16  # Prometheus and a probe or two; more is someone else

# The listener kinds of [listen], in the order the transport binds them.
LISTENER_KINDS = ("udp", "tcp", "tls", "wss")
# A relayed call holds an RTP/RTCP pair on each side (media/ports.py counts ports).
PORTS_PER_CALL = 4


@dataclass(slots=True)
class Parts:
    """What the metrics and health endpoints read; every reference is optional.

    Not frozen: the app may hand it over before the parts exist and fill them in
    as they start (readiness stays false until they are there).  ``admission``,
    ``router`` and ``media`` default to the proxy's own (``proxy.admission``,
    ``proxy.router``, ``proxy.media``) when left None.
    """

    config: Any = None  # edge.config.Config
    proxy: Any = None  # edge.proxy.Proxy
    admission: Any = None  # edge.admission.Admission
    transport: Any = None  # edge.transport.TransportLayer
    router: Any = None  # edge.routing.Router
    media: Any = None  # edge.media.MediaController
    echo: Any = None  # edge.echo.EchoEndpoint

    def get(self, name: str) -> Any:
        """The part ``name``, or the proxy's attribute of that name when not set."""
        part = getattr(self, name)
        if part is None and name in ("admission", "router", "media") and self.proxy is not None:
            part = getattr(self.proxy, name, None)
        return part


def not_ready(parts: Parts) -> list[str]:
    """Why this instance should get no new calls now; empty when it is ready."""
    reasons: list[str] = []
    reasons += _listeners(parts)
    reasons += _upstream(parts)
    reasons += _media(parts)
    proxy = parts.proxy
    if proxy is None:
        reasons.append("proxy not started")
    elif getattr(proxy, "draining", False):
        reasons.append("draining")
    return reasons


def _listeners(parts: Parts) -> list[str]:
    transport = parts.transport
    if transport is None:
        return ["listeners not started"]
    listen = getattr(parts.config, "listen", None)
    if listen is None:
        # Without the configuration, any bound listener will do.
        bound = any(
            transport.local_address(kind, family) is not None
            for kind in LISTENER_KINDS
            for family in (socket.AF_INET, socket.AF_INET6)
        )
        return [] if bound else ["no listener bound"]
    reasons = []
    for kind in LISTENER_KINDS:
        for address in getattr(listen, kind, ()):
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            if transport.local_address(kind, family) is None:
                reasons.append(f"{kind} listener {address} not bound")
    return reasons


def _upstream(parts: Parts) -> list[str]:
    upstream = getattr(parts.config, "upstream", None)
    if parts.echo is not None or (upstream is not None and upstream.echo):
        # Calls can always go to the echo endpoint, once it listens.
        echo = parts.echo
        if echo is None:
            return ["echo endpoint not started"]
        try:
            echo.sip_address  # noqa: B018 (raises until the endpoint is bound)
        except RuntimeError:
            return ["echo endpoint not started"]
        return []
    router = parts.get("router")
    if router is None:
        return ["router not started"]
    states = router.target_states()
    if not states:
        return ["no upstream targets"]
    if not any(states.values()):
        return [f"all {len(states)} upstream targets down"]
    return []


def _media(parts: Parts) -> list[str]:
    media = parts.get("media")
    relay = getattr(media, "relay", None)
    if relay is None:
        return []  # no relay: signalling only, no ports to run out of
    if relay.pool.stats().free < PORTS_PER_CALL:
        # Fewer free ports than one call takes: the next offer would get 503.
        return ["media port pool exhausted"]
    return []


# ---------------------------------------------------------------- the endpoint


class HttpEndpoint:
    """``/metrics`` (``render()``), ``/healthz`` and ``/readyz`` (``readiness()``)."""

    def __init__(self, render: Callable[[], bytes], readiness: Callable[[], list[str]]) -> None:
        self._render = render
        self._readiness = readiness
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self, address: Any) -> None:
        """Listen on ``address`` (a HostPort or (host, port)); OSError if it cannot."""
        host, port = (address.host, address.port) if hasattr(address, "host") else address
        # ``limit`` bounds what readuntil() buffers while looking for the blank line.
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=MAX_REQUEST, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for open connections: cut them;
        # their handlers see the connection lost and end.
        for writer in list(self._clients):
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS or self._server is None:
            writer.transport.abort()
            return
        self._clients.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            # The client went away or stalled: nothing to answer, nothing to flush.
            writer.transport.abort()
        except BaseException:
            writer.transport.abort()
            raise
        else:
            writer.close()
        finally:
            self._clients.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, b"request head too large\n")
            return
        except TimeoutError:
            await _respond(writer, 408, b"request timeout\n")
            return
        await _respond(writer, *self._answer(head))

    def _answer(self, head: bytes) -> tuple[int, bytes, str, tuple[tuple[str, str], ...]]:
        line = head.split(b"\r\n", 1)[0]
        words = line.split(b" ")
        if len(words) != 3 or words[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return 400, b"bad request\n", _TEXT, ()
        method, target = words[0], words[1]
        if method != b"GET":
            return 405, b"GET only\n", _TEXT, (("Allow", "GET"),)
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, self._render(), _EXPOSITION, ()
        if path == b"/healthz":
            # Answering at all is the proof: the event loop runs.
            return 200, b"ok\n", _TEXT, ()
        if path == b"/readyz":
            reasons = self._readiness()
            body = json.dumps({"ready": not reasons, "reasons": reasons}).encode() + b"\n"
            return (503 if reasons else 200), body, "application/json", ()
        return 404, b"not found: /metrics, /healthz, /readyz\n", _TEXT, ()


_TEXT: Final = "text/plain; charset=utf-8"
# The text format every Prometheus (2.x and 3.x) reads; generate_latest() writes
# exactly it for names without UTF-8 (prometheus-client >= 0.22 would announce 1.0.0).
_EXPOSITION: Final = "text/plain; version=0.0.4; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    ctype: str = _TEXT,
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()
