"""edge/transport.py over real sockets on 127.0.0.x (and ::1), on uvloop and on asyncio.

Every test runs on both event loops: uvloop in production, asyncio as the
reference.  Listeners bind port 0 (the kernel picks a free port).  Timeouts are
configured small (0.3 s) and every wait is bounded; no test asserts how long
anything took.  Nothing may reach the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from edge import tls
from edge.config import HostPort, LimitsConfig, ListenConfig
from edge.transport import Destination, Source, TransportLayer
from tests.test_tls import der, make_cert

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """``@run`` runs the decorated coroutine function at once on the parametrized loop,
    bounded to 20 s, and fails on anything reported to the loop's exception handler."""

    def runner(body: Callable[[], Awaitable[None]]) -> None:
        errors: list[dict[str, Any]] = []

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
            async with asyncio.timeout(20):
                await body()

        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            r.run(main())
        assert not errors, errors

    return runner


# ---------------------------------------------------------------- helpers


class Edge:
    """A started TransportLayer with an inbox of what it received and its log lines."""

    def __init__(
        self,
        *,
        udp: tuple[str, ...] = (),
        tcp: tuple[str, ...] = (),
        tls_on: tuple[str, ...] = (),
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        on_message: Callable[[bytes, Source], None] | None = None,
        **limits: Any,
    ) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, Source]] = asyncio.Queue()
        self.logs: list[tuple[str, str, dict[str, Any]]] = []
        listen = ListenConfig(
            udp=tuple(HostPort(h, 0) for h in udp),
            tcp=tuple(HostPort(h, 0) for h in tcp),
            tls=tuple(HostPort(h, 0) for h in tls_on),
        )
        self.layer = TransportLayer(
            listen=listen,
            limits=LimitsConfig(**limits),
            tls_server=tls_server,
            tls_client=tls_client,
            on_message=on_message or (lambda data, src: self.inbox.put_nowait((data, src))),
            log=lambda level, event, **fields: self.logs.append((level, event, fields)),
        )

    async def __aenter__(self) -> Edge:
        await self.layer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.layer.close()

    def addr(self, transport: str, family: int = socket.AF_INET) -> tuple[str, int]:
        local = self.layer.local_address(transport, family)
        assert local is not None
        return local

    async def recv(self) -> tuple[bytes, Source]:
        async with asyncio.timeout(5):
            return await self.inbox.get()

    def events(self) -> list[str]:
        return [event for _, event, _ in self.logs]


def request(branch: str = "z9hG4bK1", body: bytes = b"", method: str = "OPTIONS") -> bytes:
    head = (
        f"{method} sip:edge@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5999;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=1\r\n"
        "To: <sip:edge@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


RESPONSE = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:edge@127.0.0.1>;tag=2\r\n"
    b"Call-ID: z9hG4bK1@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, tuple[Any, ...]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inbox.put_nowait((data, addr))

    async def recv(self) -> tuple[bytes, tuple[Any, ...]]:
        async with asyncio.timeout(5):
            return await self.inbox.get()

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def udp_client(host: str = "127.0.0.1") -> UdpClient:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpClient, local_addr=(host, 0)
    )
    proto.transport = transport  # uvloop calls connection_made() a little later
    return proto


async def read_until_closed(reader: asyncio.StreamReader, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (EOF or reset), bounded to 5 s."""
    data = b""
    async with asyncio.timeout(5):
        while len(data) < limit:
            try:
                chunk = await reader.read(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
    return data


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(5):
        return await reader.readexactly(n)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


def closed_port() -> socket.socket:
    """A bound TCP socket that does not listen: connecting to its port is refused.
    The caller keeps it (so no one else takes the port) and closes it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(2):
            await writer.wait_closed()
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass


# ---------------------------------------------------------------- UDP


def test_udp_message_in_and_answer_out(run) -> None:
    @run
    async def _() -> None:
        async with Edge(udp=("127.0.0.1",)) as edge:
            client = await udp_client()
            client.send(request(), edge.addr("udp"))
            data, src = await edge.recv()
            assert data == request()
            assert src.transport == "udp" and src.conn_id is None and src.peer_cert_der is None
            assert src.remote == client.transport.get_extra_info("sockname")  # type: ignore[union-attr]
            assert src.local == edge.addr("udp")
            # The answer leaves from the port the request arrived on (RFC 3581 §4).
            edge.layer.send(RESPONSE, Destination("udp", *src.remote))
            answer, addr = await client.recv()
            assert answer == RESPONSE
            assert addr[:2] == edge.addr("udp")


def test_udp_keepalives_empty_and_oversize_datagrams_are_dropped(run) -> None:
    @run
    async def _() -> None:
        async with Edge(udp=("127.0.0.1",), max_message_size=2048) as edge:
            client = await udp_client()
            for junk in (b"\r\n\r\n", b"\r\n", b"\n", b"x" * 3000, request(body=b"y" * 2048)):
                client.send(junk, edge.addr("udp"))
            client.send(request("z9hG4bKlast"), edge.addr("udp"))
            data, _ = await edge.recv()
            assert data == request("z9hG4bKlast")  # the only one passed on
            assert edge.inbox.empty()
            counters = edge.layer.counters
            assert counters["udp_oversize"] == 2
            assert counters["udp_keepalives"] == 3
            assert "udp_oversize" in edge.events()


def test_udp_answer_from_the_listener_named_in_destination_local(run) -> None:
    @run
    async def _() -> None:
        async with Edge(udp=("127.0.0.1", "127.0.0.2")) as edge:
            first, second = (lst.local for lst in edge.layer._udp)
            assert first[0] == "127.0.0.1" and second[0] == "127.0.0.2"
            client = await udp_client()
            client.send(request(), second)
            _, src = await edge.recv()
            assert src.local == second
            edge.layer.send(RESPONSE, Destination("udp", *src.remote, local=src.local))
            _, addr = await client.recv()
            assert addr[:2] == second
            # Without a hint: a listener of the family that can reach the destination.
            edge.layer.send(RESPONSE, Destination("udp", *src.remote))
            _, addr = await client.recv()
            assert addr[:2] == first


def test_udp_ipv6_and_family_mismatch(run) -> None:
    @run
    async def _() -> None:
        async with Edge(udp=("::1",)) as edge:
            assert edge.layer.local_address("udp") is None
            local = edge.addr("udp", socket.AF_INET6)
            client = await udp_client("::1")
            client.send(request(), local)
            _, src = await edge.recv()
            assert src.remote[0] == "::1" and src.local == local
            edge.layer.send(RESPONSE, Destination("udp", *src.remote))
            answer, addr = await client.recv()
            assert answer == RESPONSE and addr[:2] == local
            # No IPv4 socket to send from, and not an IP at all: on_error, later, once.
            failures: list[str] = []
            edge.layer.send(
                RESPONSE, Destination("udp", "127.0.0.1", 9), lambda: failures.append("v4")
            )
            edge.layer.send(
                RESPONSE, Destination("udp", "example.com", 9), lambda: failures.append("dns")
            )
            assert failures == []  # never from inside send()
            await eventually(lambda: len(failures) == 2, "on_error for both")
            await asyncio.sleep(0.05)
            assert sorted(failures) == ["dns", "v4"]


def test_on_message_exception_does_not_take_the_listener_down(run) -> None:
    @run
    async def _() -> None:
        seen: list[bytes] = []

        def on_message(data: bytes, src: Source) -> None:
            seen.append(data)
            if len(seen) == 1:
                raise RuntimeError("proxy bug with Authorization: Digest secret-token")

        async with Edge(udp=("127.0.0.1",), tcp=("127.0.0.1",), on_message=on_message) as edge:
            client = await udp_client()
            client.send(request("z9hG4bKa"), edge.addr("udp"))
            client.send(request("z9hG4bKb"), edge.addr("udp"))
            await eventually(lambda: len(seen) == 2, "second datagram delivered")
            _, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request("z9hG4bKc"))
            await eventually(lambda: len(seen) == 3, "TCP still works")
            await close_writer(writer)
            assert "on_message_failed" in edge.events()
            assert "secret-token" not in repr(edge.logs)


# ---------------------------------------------------------------- TCP framing


def test_tcp_messages_arrive_whole_whatever_the_writes(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            _, writer = await asyncio.open_connection(*edge.addr("tcp"))
            body = b"v=0\r\n"
            writer.write(request("z9hG4bK1") + request("z9hG4bK2", body))
            for byte in request("z9hG4bK3", b"hello"):
                writer.write(bytes([byte]))
                await writer.drain()
            got = [await edge.recv() for _ in range(3)]
            assert [d for d, _ in got] == [
                request("z9hG4bK1"),
                request("z9hG4bK2", body),
                request("z9hG4bK3", b"hello"),
            ]
            sources = {s for _, s in got}
            assert len(sources) == 1
            (src,) = sources
            assert src.transport == "tcp" and src.conn_id is not None
            assert src.local == edge.addr("tcp")
            assert src.remote == writer.get_extra_info("sockname")
            await close_writer(writer)


def test_tcp_ping_gets_pong(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(b"\r\n\r\n")
            assert await read_exactly(reader, 2) == b"\r\n"  # RFC 5626 §3.5.1
            # A pong from the peer needs no answer; a message after it still arrives.
            writer.write(b"\r\n" + request())
            data, _ = await edge.recv()
            assert data == request()
            await close_writer(writer)


@pytest.mark.parametrize(
    ("junk", "status"),
    [
        # Two Content-Length headers: no way to know where the message ends.
        (request().replace(b"Max-Forwards: 70", b"Content-Length: 9\r\nMax-Forwards: 70"), 400),
        (request().replace(b"Content-Length: 0", b"Content-Length: 12345678901"), 400),
        # A body larger than max_message_size.
        (request().replace(b"Content-Length: 0", b"Content-Length: 999999"), 413),
    ],
    ids=["two-content-lengths", "content-length-out-of-range", "too-large"],
)
def test_tcp_framing_error_gets_an_answer_and_a_close(run, junk: bytes, status: int) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            # The whole message before the bad one is still delivered.
            writer.write(request("z9hG4bKgood") + junk)
            answer = await read_until_closed(reader)
            data, _ = await edge.recv()
            assert data == request("z9hG4bKgood")
            assert answer.startswith(f"SIP/2.0 {status} ".encode()), answer
            assert b"\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\n" in answer
            assert b"\r\nCall-ID: z9hG4bK1@test\r\n" in answer
            assert edge.layer.counters["framing_errors"] == 1
            await eventually(lambda: edge.layer.connection_count == 0, "connection forgotten")
            await close_writer(writer)


def test_tcp_missing_content_length_closes(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            # Without a Via there is nowhere to send an answer: just the close.
            no_via = b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(no_via)
            assert await read_until_closed(reader) == b""
            await close_writer(writer)
            # With a Via: 400, then the close.
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request().replace(b"Content-Length: 0\r\n", b""))
            assert (await read_until_closed(reader)).startswith(b"SIP/2.0 400 ")
            await close_writer(writer)
            assert edge.inbox.empty()


def test_tcp_framing_error_in_a_message_sent_byte_by_byte_is_still_answered(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            bad = request("z9hG4bKbad").replace(
                b"Max-Forwards: 70", b"Content-Length: 3\r\nMax-Forwards: 70"
            )
            for byte in request("z9hG4bKgood") + bad:
                writer.write(bytes([byte]))
                await writer.drain()
            answer = await read_until_closed(reader)
            assert answer.startswith(b"SIP/2.0 400 ")
            assert b"branch=z9hG4bKbad\r\n" in answer  # the head of the bad message, not the good
            data, _ = await edge.recv()
            assert data == request("z9hG4bKgood")
            await close_writer(writer)


def test_tcp_over_ipv6(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("::1",)) as edge:
            assert edge.layer.local_address("tcp") is None
            local = edge.addr("tcp", socket.AF_INET6)
            reader, writer = await asyncio.open_connection(*local)
            writer.write(request())
            _, src = await edge.recv()
            assert src.remote[0] == "::1" and src.local == local
            edge.layer.send(RESPONSE, Destination("tcp", "0:0::1", src.remote[1]))  # same IP
            assert await read_exactly(reader, len(RESPONSE)) == RESPONSE
            assert edge.layer.connection_count == 1
            await close_writer(writer)


def test_tcp_garbage_never_escapes_and_the_listener_survives(run) -> None:
    @run
    async def _() -> None:
        rng = random.Random(3261)
        async with Edge(tcp=("127.0.0.1",), max_message_size=4096) as edge:
            for _ in range(20):
                reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
                writer.write(junk + b"\r\n\r\n" + junk)
                writer.write_eof()
                await read_until_closed(reader)
                await close_writer(writer)
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request())
            data, _ = await edge.recv()
            assert data == request()
            await close_writer(writer)


def test_half_closed_connection_is_closed(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request())
            writer.write_eof()
            data, _ = await edge.recv()
            assert data == request()
            assert await read_until_closed(reader) == b""
            await eventually(lambda: edge.layer.connection_count == 0, "connection closed")
            await close_writer(writer)


# ---------------------------------------------------------------- connection reuse


def test_send_to_an_inbound_peer_reuses_its_connection(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request())
            _, src = await edge.recv()
            assert edge.layer.connection_count == 1
            # By address only (RFC 3261 §18.2.2: the connection the request came on).
            edge.layer.send(RESPONSE, Destination("tcp", *src.remote))
            assert await read_exactly(reader, len(RESPONSE)) == RESPONSE
            # By connection id, with an address that means nothing.
            edge.layer.send(RESPONSE, Destination("tcp", "127.0.0.1", 9, conn_id=src.conn_id))
            assert await read_exactly(reader, len(RESPONSE)) == RESPONSE
            assert edge.layer.connection_count == 1
            # The proxy may close it.
            assert src.conn_id is not None
            edge.layer.close_connection(src.conn_id)
            assert await read_until_closed(reader) == b""
            await eventually(lambda: edge.layer.connection_count == 0, "closed")
            await close_writer(writer)


def test_alias_maps_an_address_to_a_connection(run) -> None:
    @run
    async def _() -> None:
        listening_nowhere = closed_port()
        alias_port = listening_nowhere.getsockname()[1]
        try:
            async with Edge(tcp=("127.0.0.1",)) as edge:
                reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
                writer.write(request())
                _, src = await edge.recv()
                assert src.conn_id is not None
                # RFC 5923: Via: SIP/2.0/TCP 127.0.0.1:<alias_port>;alias
                edge.layer.register_alias(src.conn_id, "127.0.0.1", alias_port)
                failed: list[int] = []
                edge.layer.send(
                    RESPONSE, Destination("tcp", "127.0.0.1", alias_port), lambda: failed.append(1)
                )
                assert await read_exactly(reader, len(RESPONSE)) == RESPONSE
                assert edge.layer.connection_count == 1 and not failed
                # Once the connection is gone, the alias is too: a new connect, refused.
                await close_writer(writer)
                await eventually(lambda: edge.layer.connection_count == 0, "closed")
                edge.layer.send(
                    RESPONSE, Destination("tcp", "127.0.0.1", alias_port), lambda: failed.append(2)
                )
                await eventually(lambda: failed == [2], "connect refused")
        finally:
            listening_nowhere.close()


def test_outbound_connect_refused_calls_on_error_once_per_send(run) -> None:
    @run
    async def _() -> None:
        nobody = closed_port()
        try:
            async with Edge(tcp=("127.0.0.1",)) as edge:
                failed: list[str] = []
                dest = Destination("tcp", "127.0.0.1", nobody.getsockname()[1])
                edge.layer.send(request("z9hG4bKa"), dest, lambda: failed.append("a"))
                edge.layer.send(request("z9hG4bKb"), dest, lambda: failed.append("b"))
                assert edge.layer.connection_count == 1  # one attempt, both sends queued
                await eventually(lambda: len(failed) == 2, "on_error for both sends")
                await asyncio.sleep(0.05)
                assert failed == ["a", "b"]
                assert edge.layer.connection_count == 0
                assert edge.layer.counters["connect_failures"] == 1
                assert "connect_failed" in edge.events()
        finally:
            nobody.close()


def test_outbound_connection_is_reused_both_ways(run) -> None:
    @run
    async def _() -> None:
        accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        server = await asyncio.start_server(lambda r, w: accepted.append((r, w)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with Edge(tcp=("127.0.0.1",)) as edge:
                dest = Destination("tcp", "127.0.0.1", port)
                edge.layer.send(request("z9hG4bKa"), dest)
                edge.layer.send(request("z9hG4bKb"), dest)
                await eventually(lambda: len(accepted) == 1, "one connection")
                reader, writer = accepted[0]
                expected = request("z9hG4bKa") + request("z9hG4bKb")
                assert await read_exactly(reader, len(expected)) == expected
                # The upstream answers on the same connection (RFC 3261 §18.1.2).
                writer.write(RESPONSE)
                data, src = await edge.recv()
                assert data == RESPONSE and src.transport == "tcp"
                assert src.remote == ("127.0.0.1", port)
                assert src.local == edge.addr("tcp")  # our listener, for Via matching
                edge.layer.send(
                    request("z9hG4bKc"), Destination("tcp", "127.0.0.1", 9, src.conn_id)
                )
                edge.layer.send(request("z9hG4bKd"), dest)
                expected = request("z9hG4bKc") + request("z9hG4bKd")
                assert await read_exactly(reader, len(expected)) == expected
                assert len(accepted) == 1 and edge.layer.connection_count == 1
                # The upstream goes away: the next send opens a new connection.
                writer.close()
                await eventually(lambda: edge.layer.connection_count == 0, "gone")
                edge.layer.send(request("z9hG4bKe"), dest)
                await eventually(lambda: len(accepted) == 2, "a new connection")
        finally:
            for _, w in accepted:
                w.close()
            server.close()


def test_write_buffer_is_bounded_for_a_peer_that_does_not_read(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            sock = socket.socket()
            # A small receive window keeps the kernel from absorbing megabytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(edge.addr("tcp"))
            sock.setblocking(False)
            try:
                _, writer = await asyncio.open_connection(sock=sock)
                writer.write(request())
                _, src = await edge.recv()
                failed: list[int] = []
                chunk = request(body=b"x" * 60000)
                for _ in range(400):  # at most 24 MB
                    edge.layer.send(
                        chunk, Destination("tcp", *src.remote), lambda: failed.append(1)
                    )
                    await asyncio.sleep(0)
                    if failed:
                        break
                await eventually(lambda: bool(failed), "on_error after the bound")
                assert edge.layer.counters["write_buffer_overflows"] == 1
                await eventually(lambda: edge.layer.connection_count == 0, "closed")
                await close_writer(writer)
            finally:
                sock.close()


# ---------------------------------------------------------------- limits and timeouts


def test_connections_per_source_are_limited(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",), max_connections_per_source=2) as edge:
            addr = edge.addr("tcp")
            conns = [await asyncio.open_connection(*addr) for _ in range(2)]
            for _, w in conns:
                w.write(b"\r\n\r\n")
            for r, _ in conns:
                assert await read_exactly(r, 2) == b"\r\n"
            # The third from the same IP is closed at once.
            r3, w3 = await asyncio.open_connection(*addr)
            w3.write(b"\r\n\r\n")
            assert await read_until_closed(r3) == b""
            await close_writer(w3)
            assert "connection_refused" in edge.events()
            # Another source is welcome.
            r4, w4 = await asyncio.open_connection(*addr, local_addr=("127.0.0.2", 0))
            w4.write(b"\r\n\r\n")
            assert await read_exactly(r4, 2) == b"\r\n"
            # When one of the first two goes, the first source may connect again.
            await close_writer(conns[0][1])
            await eventually(lambda: edge.layer.connection_count == 2, "one closed")
            r5, w5 = await asyncio.open_connection(*addr)
            w5.write(b"\r\n\r\n")
            assert await read_exactly(r5, 2) == b"\r\n"
            assert edge.layer.counters["connections_refused"] == 1
            for w in (conns[1][1], w4, w5):
                await close_writer(w)


def test_total_connections_are_limited(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",), max_connections=2) as edge:
            addr = edge.addr("tcp")
            conns = [
                await asyncio.open_connection(*addr, local_addr=(f"127.0.0.{i}", 0)) for i in (2, 3)
            ]
            for r, w in conns:
                w.write(b"\r\n\r\n")
                assert await read_exactly(r, 2) == b"\r\n"
            r, w = await asyncio.open_connection(*addr, local_addr=("127.0.0.4", 0))
            assert await read_until_closed(r) == b""
            assert edge.layer.counters["connections_refused"] == 1
            for _, w2 in [*conns, (r, w)]:
                await close_writer(w2)


def test_idle_connection_is_closed(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",), idle_timeout=0.3) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            writer.write(request())
            await edge.recv()
            assert await read_until_closed(reader) == b""
            assert edge.layer.counters["idle_timeouts"] == 1
            assert edge.layer.connection_count == 0
            await close_writer(writer)


def test_keepalives_keep_a_connection_open(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",), idle_timeout=0.5) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            # Twice the idle timeout in all, a ping every fifth of it.
            for _ in range(10):
                writer.write(b"\r\n\r\n")
                assert await read_exactly(reader, 2) == b"\r\n"
                await asyncio.sleep(0.1)
            assert edge.layer.counters["idle_timeouts"] == 0
            assert await read_until_closed(reader) == b""  # and then it times out
            await close_writer(writer)


def test_slow_loris_is_cut_off_by_the_header_timeout(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",), header_timeout=0.3, idle_timeout=30) as edge:
            reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
            closed = False
            # One byte every 50 ms keeps the idle timer happy but never ends a message.
            for byte in request()[:200]:
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                await asyncio.sleep(0.05)
                if reader.at_eof() or edge.layer.connection_count == 0:
                    closed = True
                    break
            assert closed
            assert edge.layer.counters["header_timeouts"] == 1
            assert edge.inbox.empty()
            await close_writer(writer)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki() -> dict[str, tuple[bytes, bytes]]:
    ca = make_cert("ec", cn="test CA", ca=True)
    return {
        "ca": ca,
        "server": make_cert("ec", cn="server", issuer=ca),
        "server2": make_cert("rsa", cn="server two", issuer=ca),
        "client": make_cert("ec", cn="client", issuer=ca),
    }


def test_tls_listener_delivers_with_the_client_certificate(run, pki) -> None:
    @run
    async def _() -> None:
        ca = pki["ca"][0]
        server_ctx = tls.server_context(*pki["server"], client_ca=ca, verify_client="optional")
        async with Edge(tls_on=("127.0.0.1",), tls_server=server_ctx) as edge:
            plain = tls.client_context(ca_pem=ca)
            reader, writer = await asyncio.open_connection(*edge.addr("tls"), ssl=plain)
            writer.write(request())
            data, src = await edge.recv()
            assert data == request()
            assert src.transport == "tls" and src.peer_cert_der is None
            assert src.local == edge.addr("tls")
            edge.layer.send(RESPONSE, Destination("tls", *src.remote, conn_id=src.conn_id))
            assert await read_exactly(reader, len(RESPONSE)) == RESPONSE
            writer.write(b"\r\n\r\n")
            assert await read_exactly(reader, 2) == b"\r\n"
            await close_writer(writer)

            mutual = tls.client_context(
                ca_pem=ca, cert_pem=pki["client"][0], key_pem=pki["client"][1]
            )
            reader, writer = await asyncio.open_connection(*edge.addr("tls"), ssl=mutual)
            writer.write(request())
            _, src = await edge.recv()
            assert src.peer_cert_der == der(pki["client"][0])
            await close_writer(writer)


def test_tls_handshake_timeout_and_failure(run, pki) -> None:
    @run
    async def _() -> None:
        server_ctx = tls.server_context(*pki["server"])
        async with Edge(
            tls_on=("127.0.0.1",), tls_server=server_ctx, tls_handshake_timeout=0.3
        ) as edge:
            # A TCP client that connects to the TLS port and says nothing.
            reader, writer = await asyncio.open_connection(*edge.addr("tls"))
            assert await read_until_closed(reader) == b""
            await close_writer(writer)
            assert edge.layer.counters["tls_handshake_timeouts"] == 1
            # One that speaks SIP in clear to the TLS port.
            reader, writer = await asyncio.open_connection(*edge.addr("tls"))
            writer.write(request())
            await read_until_closed(reader)
            await close_writer(writer)
            await eventually(lambda: edge.layer.connection_count == 0, "both gone")
            assert edge.layer.counters["tls_handshake_failures"] == 1
            assert edge.inbox.empty()
            # A TLS 1.2 client with a cipher outside the policy.
            weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            weak.check_hostname, weak.verify_mode = False, ssl.CERT_NONE
            weak.maximum_version = ssl.TLSVersion.TLSv1_2
            weak.set_ciphers("AES128-SHA")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection(*edge.addr("tls"), ssl=weak)
            await eventually(lambda: edge.layer.connection_count == 0, "gone")


def test_tls_between_two_layers_and_certificate_reload(run, pki) -> None:
    @run
    async def _() -> None:
        ca = pki["ca"][0]
        server_ctx = tls.server_context(*pki["server"])
        async with (
            Edge(tls_on=("127.0.0.1",), tls_server=server_ctx) as upstream,
            Edge(tcp=("127.0.0.1",), tls_client=tls.client_context(ca_pem=ca)) as edge,
        ):
            dest = Destination("tls", *upstream.addr("tls"))
            edge.layer.send(request(), dest)
            data, up_src = await upstream.recv()
            assert data == request() and up_src.transport == "tls"
            upstream.layer.send(RESPONSE, Destination("tls", *up_src.remote, up_src.conn_id))
            data, src = await edge.recv()
            assert data == RESPONSE
            assert src.transport == "tls" and src.remote == upstream.addr("tls")
            assert src.peer_cert_der == der(pki["server"][0])  # the upstream's certificate
            # SIGHUP: a new certificate for new connections; the open one stays.
            upstream.layer.set_tls_server_context(tls.server_context(*pki["server2"]))
            assert src.conn_id is not None
            edge.layer.close_connection(src.conn_id)
            await eventually(lambda: edge.layer.connection_count == 0, "closed")
            edge.layer.send(request("z9hG4bK2"), dest)
            data, up_src = await upstream.recv()
            assert data == request("z9hG4bK2")
            upstream.layer.send(RESPONSE, Destination("tls", *up_src.remote, up_src.conn_id))
            _, src = await edge.recv()
            assert src.peer_cert_der == der(pki["server2"][0])


def test_tls_outbound_to_an_untrusted_server_fails_over(run, pki) -> None:
    @run
    async def _() -> None:
        stranger = make_cert("ec")
        async with (
            Edge(tls_on=("127.0.0.1",), tls_server=tls.server_context(*stranger)) as upstream,
            Edge(tls_client=tls.client_context(ca_pem=pki["ca"][0])) as edge,
        ):
            failed: list[int] = []
            edge.layer.send(
                request(), Destination("tls", *upstream.addr("tls")), lambda: failed.append(1)
            )
            await eventually(lambda: failed == [1], "on_error")
            assert edge.layer.counters["connect_failures"] == 1
            assert upstream.inbox.empty()
            await eventually(lambda: upstream.layer.connection_count == 0, "upstream side gone")


def test_tls_outbound_without_verification(run, pki) -> None:
    @run
    async def _() -> None:
        # A lab upstream whose certificate names another address: no check, no SNI.
        other = make_cert("ec", san_ip="192.0.2.1")
        async with (
            Edge(tls_on=("127.0.0.1",), tls_server=tls.server_context(*other)) as upstream,
            Edge(tls_client=tls.client_context(verify=False)) as edge,
        ):
            edge.layer.send(request(), Destination("tls", *upstream.addr("tls")))
            data, _ = await upstream.recv()
            assert data == request()


# ---------------------------------------------------------------- start-up


def test_bind_failure_names_the_address(run) -> None:
    @run
    async def _() -> None:
        taken = socket.create_server(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        try:
            layer = TransportLayer(
                listen=ListenConfig(
                    udp=(HostPort("127.0.0.1", 0),), tcp=(HostPort("127.0.0.1", port),), tls=()
                ),
                limits=LimitsConfig(),
                tls_server=None,
                tls_client=None,
                on_message=lambda data, src: None,
            )
            with pytest.raises(OSError, match=f"tcp 127.0.0.1:{port}"):
                await layer.start()
            assert layer.local_address("udp") is None  # what was bound is closed again
        finally:
            taken.close()
        layer = TransportLayer(
            listen=ListenConfig(udp=(), tcp=(), tls=(HostPort("127.0.0.1", 0),)),
            limits=LimitsConfig(),
            tls_server=None,
            tls_client=None,
            on_message=lambda data, src: None,
        )
        with pytest.raises(ValueError, match="TLS"):
            await layer.start()


def test_close_ends_connections_and_later_sends_fail(run) -> None:
    @run
    async def _() -> None:
        edge = Edge(tcp=("127.0.0.1",), udp=("127.0.0.1",))
        await edge.layer.start()
        reader, writer = await asyncio.open_connection(*edge.addr("tcp"))
        writer.write(request())
        _, src = await edge.recv()
        # Sends before close: TLS without a client context fails; an alias on a
        # connection that does not exist is ignored.
        failed: list[str] = []
        edge.layer.send(request(), Destination("tls", "127.0.0.1", 9), lambda: failed.append("tls"))
        edge.layer.register_alias(12345, "127.0.0.1", 9)
        await edge.layer.close()
        assert await read_until_closed(reader) == b""
        assert edge.layer.connection_count == 0
        edge.layer.send(request(), Destination("tcp", *src.remote), lambda: failed.append("tcp"))
        edge.layer.send(request(), Destination("udp", *src.remote), lambda: failed.append("udp"))
        await eventually(lambda: len(failed) == 3, "all three failed")
        assert sorted(failed) == ["tcp", "tls", "udp"]
        await close_writer(writer)


def test_refusals_are_logged_at_a_limited_rate() -> None:
    from edge.transport import _RateLimitedLog

    lines: list[tuple[str, str, dict[str, Any]]] = []
    rlog = _RateLimitedLog(lambda level, event, **f: lines.append((level, event, f)), burst=5)
    for i in range(100):
        rlog("warning", "connection_refused", remote=f"192.0.2.{i}")
        rlog("info", "framing_error", n=i)
    assert [e for _, e, _ in lines].count("connection_refused") == 5
    assert [e for _, e, _ in lines].count("framing_error") == 5
