"""SIP over secure WebSocket (RFC 7118) and the registrar for browsers (issue 6, signaling).

Unit tests drive edge/websocket.py with wsproto's client; the end-to-end tests run a real
``sipedge run`` with a WSS listener and talk to it with aiohttp's WebSocket client (an
implementation of its own), as a browser's JavaScript SIP client would: REGISTER, then an
INVITE from the upstream delivered down the WebSocket, answered, ACKed and hung up.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from edge.registrar import Registrar
from edge.websocket import CLOSE_TOO_BIG, Refusal, WebSocketSession
from sip.message import Request as SipRequest
from sip.message import Response, parse_message
from tests.peers import SipedgeProc, TestCerts, free_port, make_test_certs

# ---------------------------------------------------------------- the session (wsproto client)


def client_handshake(
    session: WebSocketSession, subprotocols: list[str]
) -> tuple[WSConnection, Any]:
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(Request(host="edge", target="/", subprotocols=subprotocols))
    got = session.receive(data)
    client.receive_data(got.to_send)
    return client, got


def test_handshake_needs_the_sip_subprotocol() -> None:
    session = WebSocketSession(65536)
    client, got = client_handshake(session, ["chat"])
    assert got.refused is Refusal.NO_SUBPROTOCOL and got.closed and not session.open
    event = next(iter(client.events()))
    assert isinstance(event, RejectConnection) and event.status_code == 400


def test_one_sip_message_per_websocket_message() -> None:
    session = WebSocketSession(65536)
    client, got = client_handshake(session, ["sip"])
    assert got.opened and session.open
    (accepted,) = list(client.events())
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
    msg = b"OPTIONS sip:edge SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    # Split over two frames of one message, then a binary message.
    data = client.send(TextMessage(data=msg[:10].decode(), message_finished=False))
    data += client.send(TextMessage(data=msg[10:].decode()))
    data += client.send(BytesMessage(data=msg))
    assert session.receive(data).messages == [msg, msg]
    client.receive_data(session.frame(b"SIP/2.0 200 OK\r\n\r\n"))
    (reply,) = list(client.events())
    assert isinstance(reply, TextMessage) and reply.data.startswith("SIP/2.0 200")


def test_ping_is_answered_and_close_ends_the_session() -> None:
    session = WebSocketSession(65536)
    client, _ = client_handshake(session, ["sip"])
    list(client.events())
    got = session.receive(client.send(Ping(payload=b"x")))
    client.receive_data(got.to_send)
    assert any(isinstance(e, Pong) for e in client.events())
    got = session.receive(client.send(CloseConnection(code=1000)))
    assert got.closed and got.refused is None


def test_an_oversized_message_closes_with_1009_before_it_is_whole() -> None:
    session = WebSocketSession(1000)
    client, _ = client_handshake(session, ["sip"])
    list(client.events())
    got = session.receive(client.send(TextMessage(data="x" * 600, message_finished=False)))
    assert not got.closed
    got = session.receive(client.send(TextMessage(data="x" * 600, message_finished=False)))
    assert got.closed and got.refused is Refusal.TOO_BIG
    client.receive_data(got.to_send)
    (close,) = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert close.code == CLOSE_TOO_BIG


def test_garbage_is_refused_not_raised() -> None:
    session = WebSocketSession(65536)
    got = session.receive(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert got.closed and got.refused is Refusal.PROTOCOL_ERROR


# ---------------------------------------------------------------- the registrar


def register(
    aor: str, contact: str, expires: str = "", cseq: int = 1, call_id: str = "r1"
) -> SipRequest:
    lines = [
        "REGISTER sip:edge.example SIP/2.0",
        "Via: SIP/2.0/WSS abc.invalid;branch=z9hG4bKreg" + str(cseq),
        "Max-Forwards: 70",
        f"From: <sip:{aor}@edge.example>;tag=f",
        f"To: <sip:{aor}@edge.example>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
        *([f"Expires: {expires}"] if expires else []),
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, SipRequest)
    return msg


class Who:
    def __init__(
        self,
        scheme: str,
        name: str = "",
        agent_id: str | None = None,
        customer_id: str | None = None,
    ) -> None:
        self.scheme, self.name, self.agent_id, self.customer_id = (
            scheme,
            name,
            agent_id,
            customer_id,
        )


def test_registrar_binds_to_the_connection_and_forgets_with_it() -> None:
    now = [1000.0]
    reg = Registrar(clock=lambda: now[0])
    contact = "<sip:x1@abc.invalid;transport=ws>"
    answer = reg.register(
        register("alice", contact), 7, ("127.0.0.1", 5000), Who("digest", "alice")
    )
    assert answer.status == 200
    assert answer.headers == [("Contact", "<sip:x1@abc.invalid;transport=ws>;expires=600")]
    (binding,) = reg.lookup(register("alice", contact).to.uri)
    assert binding.conn_id == 7
    # Somebody else's AOR: refused.  Too short: 423 with Min-Expires.
    assert (
        reg.register(
            register("bob", contact), 7, ("127.0.0.1", 5000), Who("digest", "alice")
        ).status
        == 403
    )
    short = reg.register(
        register("alice", contact, "10", cseq=2), 7, ("127.0.0.1", 5000), Who("digest", "alice")
    )
    assert short.status == 423 and short.headers == [("Min-Expires", "60")]
    # An old CSeq of the same Call-ID is out of order.
    assert (
        reg.register(
            register("alice", contact, cseq=1), 7, ("127.0.0.1", 5000), Who("digest", "alice")
        ).status
        == 500
    )
    assert reg.drop_connection(7) == 1
    assert reg.lookup(register("alice", contact).to.uri) == [] and len(reg) == 0


def test_registrar_expiry_unregister_and_bearer_identity() -> None:
    now = [1000.0]
    reg = Registrar(clock=lambda: now[0])
    who = Who("bearer", agent_id="agent-7", customer_id="c-1")
    c = "<sip:x@b.invalid;transport=ws>"
    assert reg.register(register("agent-7", c, "120"), 3, ("127.0.0.1", 1), who).status == 200
    assert reg.register(register("c-1", c), 3, ("127.0.0.1", 1), who).status == 403
    now[0] += 121
    assert reg.lookup(register("agent-7", c).to.uri) == []
    assert reg.expire() == 1
    assert reg.register(register("agent-7", c, cseq=2), 3, ("127.0.0.1", 1), who).status == 200
    assert reg.register(register("agent-7", c, "0", cseq=3), 3, ("127.0.0.1", 1), who).status == 200
    assert len(reg) == 0
    assert (
        reg.register(register("agent-7", "*", "0", cseq=4), 3, ("127.0.0.1", 1), None).status == 403
    )


# ---------------------------------------------------------------- against a running edge


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("wss-certs"))


JWT_KEY = "w" * 48
UPSTREAM = "127.0.0.2"


@pytest.fixture
def edge(tmp_path: Path, certs: TestCerts) -> Iterator[tuple[SipedgeProc, int, socket.socket]]:
    """sipedge with a WSS listener; a UDP socket on 127.0.0.2 plays its upstream."""
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind((UPSTREAM, 0))
    upstream.settimeout(5)
    up_port = upstream.getsockname()[1]
    wss_port = free_port("127.0.0.1", "tcp")
    proc = SipedgeProc(
        workdir=tmp_path / "edge",
        certs=certs,
        upstream={"sets": [{"name": "pbx", "targets": [{"uri": f"sip:{UPSTREAM}:{up_port}"}]}]},
        extra={
            "listen": {"wss": [f"127.0.0.1:{wss_port}"]},
            "media": {"enabled": False},
        },
    )
    proc.env = {**(proc.env or {}), "JWT_KEY": JWT_KEY}
    proc.start()
    proc.wait_ready()
    yield proc, wss_port, upstream
    proc.stop()
    upstream.close()


def ws_ssl(certs: TestCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


def sip_register(aor: str, *, auth: str = "", cseq: int = 1, call_id: str = "reg-1") -> str:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}",
        "Max-Forwards: 70",
        f"From: <sip:{aor}@127.0.0.1>;tag=ws{cseq}",
        f"To: <sip:{aor}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{aor}x@df7jal23ls0d.invalid;transport=ws>;expires=300",
        *([auth] if auth else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines)


async def next_sip(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> Any:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            data = msg.data.encode() if isinstance(msg.data, str) else msg.data
            parsed = parse_message(data)
            if isinstance(parsed, Response) and parsed.status == 100:
                continue
            return parsed
        raise AssertionError(f"WebSocket ended: {msg.type} {msg.data!r}")


def reply_to(req: SipRequest, status: int, tag: str = "br1") -> str:
    vias = "".join(f"Via: {v}\r\n" for v in req.headers.get_all("Via"))
    rrs = "".join(f"Record-Route: {v}\r\n" for v in req.headers.get_all("Record-Route"))
    return (
        f"SIP/2.0 {status} X\r\n{vias}{rrs}"
        f"From: {req.headers.get('From')}\r\nTo: {req.headers.get('To')};tag={tag}\r\n"
        f"Call-ID: {req.call_id}\r\nCSeq: {req.headers.get('CSeq')}\r\n"
        "Contact: <sip:alicex@df7jal23ls0d.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.timeout(60)
async def test_browser_registers_and_receives_a_call_from_the_upstream(
    edge: tuple[SipedgeProc, int, socket.socket], certs: TestCerts
) -> None:
    proc, port, upstream = edge
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"wss://127.0.0.1:{port}/", protocols=("sip",), ssl=ws_ssl(certs)) as ws,
    ):
        assert ws.protocol == "sip"
        await ws.send_str(sip_register("alice"))  # 127.0.0.1 is a trusted trunk here
        ok = await next_sip(ws)
        assert isinstance(ok, Response) and ok.status == 200
        assert "df7jal23ls0d.invalid" in (ok.headers.get("Contact") or "")
        # The upstream calls alice at the edge: the INVITE comes down the WebSocket.
        edge_udp = proc.addresses.udp
        assert edge_udp is not None
        up_port = upstream.getsockname()[1]
        invite = (
            "INVITE sip:alice@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {UPSTREAM}:{up_port};branch=z9hG4bKup1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:+15551234567@pbx>;tag=up1\r\n"
            "To: <sip:alice@127.0.0.1>\r\nCall-ID: to-browser-1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:pbx@{UPSTREAM}:{up_port}>\r\nContent-Length: 0\r\n\r\n"
        )
        upstream.sendto(invite.encode(), edge_udp)
        got = await next_sip(ws)
        assert isinstance(got, SipRequest) and got.method == "INVITE"
        assert str(got.uri) == "sip:alicex@df7jal23ls0d.invalid;transport=ws"
        assert got.top_via.transport == "WSS"
        rr = got.headers.get_all("Record-Route")
        assert any("transport=ws" in v for v in rr), rr
        await ws.send_str(reply_to(got, 200))
        # The 200 reaches the upstream over UDP.
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline:
            data, _ = await asyncio.get_running_loop().run_in_executor(
                None, upstream.recvfrom, 65535
            )
            resp = parse_message(data)
            if isinstance(resp, Response) and resp.status >= 200:
                status = resp.status
                break
        assert status == 200


@pytest.mark.timeout(60)
async def test_a_stranger_must_authenticate_a_bearer_token_lets_it_register(
    edge: tuple[SipedgeProc, int, socket.socket], certs: TestCerts, tmp_path: Path
) -> None:
    _, port, _ = edge
    # A connection from 127.0.0.4 (not the trusted 127.0.0.1): bind the client there.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0), ssl=ws_ssl(certs))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(f"wss://127.0.0.1:{port}/", protocols=("sip",)) as ws,
    ):
        await ws.send_str(sip_register("agent-7"))
        challenge = await next_sip(ws)
        assert isinstance(challenge, Response) and challenge.status == 407
        now = int(time.time())
        token = pyjwt.encode(
            {"customer_id": "c-1", "agent_id": "agent-7", "permissions": ["call_create"],
             "iat": now, "exp": now + 600},
            JWT_KEY,
            algorithm="HS256",
        )  # fmt: skip
        await ws.send_str(sip_register("agent-7", auth=f"Authorization: Bearer {token}", cseq=2))
        ok = await next_sip(ws)
        assert isinstance(ok, Response) and ok.status == 200, ok
        # Another AOR with the same token: not hers.
        await ws.send_str(
            sip_register("agent-8", auth=f"Authorization: Bearer {token}", cseq=3, call_id="r2")
        )
        refused = await next_sip(ws)
        assert isinstance(refused, Response) and refused.status == 403


@pytest.mark.timeout(60)
async def test_websocket_without_sip_subprotocol_is_refused(
    edge: tuple[SipedgeProc, int, socket.socket], certs: TestCerts
) -> None:
    _, port, _ = edge
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with http.ws_connect(
                f"wss://127.0.0.1:{port}/", protocols=("chat",), ssl=ws_ssl(certs)
            ):
                pass
        assert err.value.status == 400


def test_registrations_live_in_the_state_store() -> None:
    """Bindings sit behind the same store interface as bans and buckets."""
    from edge.state import MemoryStateStore

    store = MemoryStateStore()
    reg = Registrar(clock=lambda: 1000.0, table=store.registrations)
    contact = "<sip:x1@abc.invalid;transport=ws>"
    assert (
        reg.register(
            register("alice", contact), 7, ("127.0.0.1", 5000), Who("digest", "alice")
        ).status
        == 200
    )
    assert len(store.registrations) == 1
    (binding,) = store.registrations.of("alice")
    assert binding.conn_id == 7
    assert reg.drop_connection(7) == 1 and len(store.registrations) == 0
