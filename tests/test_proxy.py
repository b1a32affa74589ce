"""The proxy core against an in-memory transport: RFC 3261 §16 behaviour, message by message.

The transport and router here are stand-ins that record what the proxy sends;
the end-to-end tests (tests/test_e2e_proxy.py) drive the same paths with sipp.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from edge.config import LimitsConfig
from edge.config_security import AuditConfig, AuthConfig, BanConfig, RateLimitConfig, ScannerConfig
from edge.proxy import Proxy
from edge.proxy_state import _Forward
from edge.transport import Destination, Source
from sip.message import Request, Response, parse_message
from tests.sipdata import build

EDGE = ("127.0.0.1", 5060)
CALLER = ("127.0.0.1", 5070)
PBX1 = ("127.0.0.2", 5080)
PBX2 = ("127.0.0.3", 5080)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[Request | Response, Destination]] = []
        self.conns: dict[int, tuple[str, int]] = {}
        self.fail: set[tuple[str, int]] = set()

    def send(self, data: bytes, dest: Destination, on_error: Any = None) -> None:
        # Which local socket answers is the transport's concern (tested there).
        self.sent.append((parse_message(data), dataclasses.replace(dest, local=None)))
        if (dest.host, dest.port) in self.fail and on_error is not None:
            on_error()

    def local_address(self, transport: str, family: int = 2) -> tuple[str, int]:
        return ("127.0.0.1", 5061 if transport == "tls" else 5060)

    def register_alias(self, conn_id: int, host: str, port: int) -> None:
        pass

    def connection_remote(self, conn_id: int) -> tuple[str, int] | None:
        return self.conns.get(conn_id)

    def take(self) -> list[tuple[Request | Response, Destination]]:
        out, self.sent = self.sent, []
        return out


class StubRouter:
    def __init__(self, targets: list[tuple[str, int]], transport: str = "udp") -> None:
        self.targets = [
            SimpleNamespace(
                uri=f"sip:{h}:{p};transport={transport}", transport=transport, host=h, port=p
            )
            for h, p in targets
        ]
        self.failures: list[Any] = []

    def route_initial(self, request: Request, source_ip: str) -> Any:
        return SimpleNamespace(kind="upstream", name="pbx", targets=tuple(self.targets))

    def is_upstream_source(self, ip: str) -> bool:
        return ip in ("127.0.0.2", "127.0.0.3")

    def trunk_for_source(self, ip: str) -> Any:
        return (
            SimpleNamespace(name="loopback", media="as-offered", needs_certificate=False)
            if ip == "127.0.0.1"
            else None
        )

    def report_failure(self, target: Any, now: float) -> None:
        self.failures.append(target)

    def report_probe(self, target: Any, ok: bool, now: float) -> None:
        pass

    def probe_targets(self, now: float) -> list[Any]:
        return []


def make_config(t1: float = 0.5) -> Any:
    hp = SimpleNamespace
    return SimpleNamespace(
        listen=SimpleNamespace(
            udp=(hp(host="127.0.0.1", port=5060),),
            tcp=(hp(host="127.0.0.1", port=5060),),
            tls=(hp(host="127.0.0.1", port=5061),),
            advertise="",
        ),
        limits=LimitsConfig(),
        proxy=SimpleNamespace(
            record_route=True,
            max_forwards=70,
            drain_grace=1.0,
            server_header="",
            timer_t1=t1,
            timer_t2=4.0,
            timer_t4=5.0,
            timer_c=180.0,
            trunk_header="X-Sipedge-Trunk",
        ),
        auth=AuthConfig(),
        ratelimit=RateLimitConfig(),
        bans=BanConfig(),
        scanners=ScannerConfig(),
        audit=AuditConfig(),
    )


def invite(branch: str = "z9hG4bKcaller1", extra: tuple[str, ...] = ()) -> bytes:
    return build(
        "INVITE sip:1000@127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:alice@127.0.0.1:5070>;tag=a1",
        "To: <sip:1000@127.0.0.1:5060>",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@127.0.0.1:5070>",
        *extra,
        "Content-Length: 0",
    )


def udp(remote: tuple[str, int]) -> Source:
    return Source("udp", remote, EDGE)


def answer(req: Request, status: int, to_tag: str = "b1", extra: tuple[str, ...] = ()) -> bytes:
    vias = [f"Via: {v}" for v in req.headers.get_all("Via")]
    rr = [f"Record-Route: {v}" for v in req.headers.get_all("Record-Route")]
    to = req.headers.get("To") or ""
    if "tag=" not in to:
        to += f";tag={to_tag}"
    return build(
        f"SIP/2.0 {status} X",
        *vias,
        *rr,
        f"From: {req.headers.get('From')}",
        f"To: {to}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.headers.get('CSeq')}",
        "Contact: <sip:pbx@127.0.0.2:5080>",
        *extra,
        "Content-Length: 0",
    )


@pytest.fixture
async def proxy() -> Any:
    transport = FakeTransport()
    p = Proxy(make_config(), transport, StubRouter([PBX1, PBX2]))
    await p.start()
    yield p
    await p.close()


def only(sent: list[tuple[Any, Destination]], kind: type) -> list[tuple[Any, Destination]]:
    return [(m, d) for m, d in sent if isinstance(m, kind)]


async def test_invite_is_forwarded_with_via_rr_and_max_forwards(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(("127.0.0.9", 5070)))  # a stranger
    ((resp, dest),) = t.take()
    assert isinstance(resp, Response) and resp.status == 407  # a stranger must authenticate
    proxy.on_message(invite(), udp(CALLER))
    sent = t.take()
    trying = only(sent, Response)
    assert [r.status for r, _ in trying] == [100]
    assert trying[0][1] == Destination("udp", "127.0.0.1", 5070)
    ((fwd, dest),) = only(sent, Request)
    assert dest == Destination("udp", *PBX1)
    assert fwd.max_forwards == 69
    ours, theirs = fwd.via
    assert ours.host == "127.0.0.1" and ours.port == 5060 and ours.branch.startswith("z9hG4bK")
    assert theirs.branch == "z9hG4bKcaller1" and theirs.rport == 5070
    assert fwd.headers.get_all("Record-Route") == ["<sip:127.0.0.1:5060;transport=udp;lr>"]
    # A retransmitted INVITE is absorbed: the 100 again, nothing forwarded.
    proxy.on_message(invite(), udp(CALLER))
    assert [m.status for m, _ in t.take() if isinstance(m, Response)] == [100]


async def test_timer_c_is_reset_by_a_provisional_then_cancels_and_answers_408() -> None:
    """§16.6 item 11 and §16.7 step 2: Timer C runs from the INVITE, a provisional
    starts it again, and when it runs out the branch is cancelled and the caller
    gets a 408."""
    config = make_config()
    config.proxy.timer_c = 0.4
    transport = FakeTransport()
    p = Proxy(config, transport, StubRouter([PBX1]))
    await p.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        p.on_message(invite(), udp(CALLER))
        ((fwd, _),) = only(transport.take(), Request)
        await asyncio.sleep(0.25)
        p.on_message(answer(fwd, 180), udp(PBX1))  # Timer C starts again: due at 0.65 s
        ringing = transport.take()
        assert [m.status for m, _ in ringing if isinstance(m, Response)] == [180]
        await asyncio.sleep(0.25)  # 0.5 s after the INVITE: past the first 0.4 s
        assert transport.take() == []
        deadline = start + 3.0
        sent: list[tuple[Any, Destination]] = []
        while loop.time() < deadline and not any(
            isinstance(m, Response) and m.status == 408 for m, _ in sent
        ):
            await asyncio.sleep(0.02)
            sent += transport.take()
        fired = loop.time() - start
        assert 0.6 <= fired < 2.0, fired
        cancels = [(m, d) for m, d in only(sent, Request) if m.method == "CANCEL"]
        assert [d for _, d in cancels] == [Destination("udp", *PBX1)]
        finals = [(m, d) for m, d in only(sent, Response) if m.status >= 200]
        assert [(m.status, d) for m, d in finals] == [(408, Destination("udp", *CALLER))]
    finally:
        await p.close()


async def test_an_answered_call_leaves_no_forward_on_the_timer_wheel(proxy: Proxy) -> None:
    """Timer C runs on the timer wheel from the INVITE and stops at the final
    response.  The wheel keeps a stopped entry until its tick passes (180 s for
    Timer C) unless it is at the front: that entry must not hold the forward, or
    the call's transactions and messages would outlive it by minutes."""
    t: FakeTransport = proxy.transport

    def entries() -> list[tuple[Any, str]]:
        wheel = proxy._wheel
        assert wheel is not None
        return [
            (slot.entries[i], slot.entries[i + 1])
            for slot in wheel._slots.values()
            for i in range(0, len(slot.entries), 3)
        ]

    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    assert [name for _, name in entries()].count("C") == 1  # Timer C runs
    # A second call still ringing keeps earlier timers live at the wheel's front,
    # as other calls do on a busy proxy: the first call's stopped entry stays put.
    second = invite("z9hG4bKcaller2").replace(b"call-1@", b"call-2@")
    proxy.on_message(second, udp(CALLER))
    t.take()
    proxy.on_message(answer(fwd, 180), udp(PBX1))
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    assert [m.status for m, _ in only(t.take(), Response)] == [180, 200]
    assert [name for _, name in entries()].count("C") == 2  # the stopped one, kept
    kept = [
        o
        for o, _ in entries()
        if isinstance(o, _Forward) and o.request.call_id == "call-1@127.0.0.1"
    ]
    assert kept == []


async def test_call_setup_ack_and_bye(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    proxy.on_message(answer(fwd, 180), udp(PBX1))
    ((ringing, dest),) = t.take()
    assert isinstance(ringing, Response) and ringing.status == 180
    assert len(ringing.via) == 1 and dest == Destination("udp", *CALLER)
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    ((ok, _),) = t.take()
    assert isinstance(ok, Response) and ok.status == 200
    assert len(proxy.dialogs) == 1
    # The caller ACKs along the route set: Route is our Record-Route.
    ack = build(
        "ACK sip:pbx@127.0.0.2:5080 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack1;rport",
        "Route: <sip:127.0.0.1:5060;transport=udp;lr>",
        "Max-Forwards: 70",
        "From: <sip:alice@127.0.0.1:5070>;tag=a1",
        "To: <sip:1000@127.0.0.1:5060>;tag=b1",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 1 ACK",
        "Content-Length: 0",
    )
    proxy.on_message(ack, udp(CALLER))
    ((fwd_ack, dest),) = t.take()
    assert isinstance(fwd_ack, Request) and fwd_ack.method == "ACK"
    assert dest == Destination("udp", *PBX1) and "route" not in fwd_ack.headers
    # The callee hangs up: BYE from the upstream towards the caller's Contact.
    bye = build(
        "BYE sip:alice@127.0.0.1:5070 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKbye1",
        "Route: <sip:127.0.0.1:5060;transport=udp;lr>",
        "Max-Forwards: 70",
        "From: <sip:1000@127.0.0.1:5060>;tag=b1",
        "To: <sip:alice@127.0.0.1:5070>;tag=a1",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 1 BYE",
        "Content-Length: 0",
    )
    proxy.on_message(bye, udp(PBX1))
    ((fwd_bye, dest),) = only(t.take(), Request)
    assert dest == Destination("udp", *CALLER)
    proxy.on_message(answer(fwd_bye, 200, to_tag="a1"), udp(CALLER))
    ((bye_ok, dest),) = t.take()
    assert isinstance(bye_ok, Response) and bye_ok.status == 200
    assert dest == Destination("udp", *PBX1)
    assert len(proxy.dialogs) == 0


async def test_503_fails_over_then_reaches_the_caller(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(CALLER))
    ((first, dest),) = only(t.take(), Request)
    assert dest == Destination("udp", *PBX1)
    proxy.on_message(answer(first, 503), udp(PBX1))
    sent = t.take()
    requests = only(sent, Request)
    assert [(m.method, d) for m, d in requests] == [
        ("ACK", Destination("udp", *PBX1)),
        ("INVITE", Destination("udp", *PBX2)),
    ]
    assert not only(sent, Response)  # nothing to the caller yet
    second = requests[1][0]
    assert second.top_via.branch != first.top_via.branch
    proxy.on_message(answer(second, 503), udp(PBX2))
    responses = only(t.take(), Response)
    assert [r.status for r, _ in responses] == [500]  # §16.7 step 6: not a 503
    assert len(proxy.dialogs) == 0
    assert len(proxy.router.failures) == 2


async def test_timeout_fails_over() -> None:
    transport = FakeTransport()
    p = Proxy(make_config(t1=0.01), transport, StubRouter([PBX1, PBX2]))
    await p.start()
    p.on_message(invite(), udp(CALLER))
    for _ in range(200):  # Timer B is 64*T1 = 0.64 s; bounded wait
        await asyncio.sleep(0.02)
        if any(d == Destination("udp", *PBX2) for _, d in transport.sent):
            break
    to_pbx2 = [m for m, d in transport.sent if d == Destination("udp", *PBX2)]
    assert to_pbx2 and isinstance(to_pbx2[0], Request) and to_pbx2[0].method == "INVITE"
    await p.close()


async def test_cancel_before_answer(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    proxy.on_message(answer(fwd, 180), udp(PBX1))
    t.take()
    cancel = build(
        "CANCEL sip:1000@127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKcaller1;rport",
        "Max-Forwards: 70",
        "From: <sip:alice@127.0.0.1:5070>;tag=a1",
        "To: <sip:1000@127.0.0.1:5060>",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 1 CANCEL",
        "Content-Length: 0",
    )
    proxy.on_message(cancel, udp(CALLER))
    sent = t.take()
    assert [(m.status, m.cseq.method) for m, _ in only(sent, Response)] == [(200, "CANCEL")]
    ((down_cancel, dest),) = only(sent, Request)
    assert down_cancel.method == "CANCEL" and dest == Destination("udp", *PBX1)
    assert down_cancel.top_via.branch == fwd.top_via.branch  # §9.1
    proxy.on_message(answer(down_cancel, 200), udp(PBX1))
    proxy.on_message(answer(fwd, 487), udp(PBX1))
    sent = t.take()
    assert [r.status for r, _ in only(sent, Response)] == [487]
    assert [m.method for m, _ in only(sent, Request)] == ["ACK"]


async def test_options_to_the_edge_and_hop_limits(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    options = build(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKopt1",
        "Max-Forwards: 70",
        "From: <sip:mon@127.0.0.1>;tag=o1",
        "To: <sip:127.0.0.1:5060>",
        "Call-ID: opt-1",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
    )
    proxy.on_message(options, udp(CALLER))
    ((resp, _),) = t.take()
    assert (
        isinstance(resp, Response)
        and resp.status == 200
        and "INVITE" in (resp.headers.get("Allow") or "")
    )
    assert "server" not in resp.headers  # we do not advertise ourselves
    stranger = options.replace(b"z9hG4bKopt1", b"z9hG4bKopt2")
    proxy.on_message(stranger, udp(("127.0.0.9", 5070)))
    assert t.take() == []  # a stranger's probe gets nothing
    proxy.on_message(
        invite("z9hG4bKmf0").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), udp(CALLER)
    )
    ((resp, _),) = t.take()
    assert isinstance(resp, Response) and resp.status == 483


async def test_draining_refuses_new_calls(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.draining = True
    proxy.on_message(invite(), udp(CALLER))
    statuses = [m.status for m, _ in t.take() if isinstance(m, Response)]
    assert statuses == [100, 503]


def second_invite(n: int) -> bytes:
    """Another call's INVITE from the caller (its own Call-ID and branch)."""
    return (
        invite(branch=f"z9hG4bKcall{n}")
        .replace(b"call-1@", f"call-{n}@".encode())
        .replace(b"tag=a1", f"tag=a{n}".encode())
    )


async def test_max_calls_refuses_new_calls_with_503_but_never_the_calls_in_progress() -> None:
    config = make_config()
    config.limits = LimitsConfig(max_calls=1, overload_retry_after=7)
    transport = FakeTransport()
    logs: list[tuple[str, str, dict[str, Any]]] = []
    p = Proxy(
        config, transport, StubRouter([PBX1]), log=lambda lv, ev, **kw: logs.append((lv, ev, kw))
    )
    await p.start()
    try:
        p.on_message(invite(), udp(CALLER))
        ((fwd, _),) = only(transport.take(), Request)
        # A second call while the first rings: 503 with Retry-After, nothing forwarded.
        p.on_message(second_invite(2), udp(CALLER))
        sent = transport.take()
        assert only(sent, Request) == []
        refused = [m for m, _ in sent if isinstance(m, Response) and m.status == 503]
        assert len(refused) == 1 and refused[0].headers.get("Retry-After") == "7"
        assert p.counters.get("overload_calls") == 1
        ((level, _, fields),) = [entry for entry in logs if entry[1] == "overload"]
        assert level == "warning" and fields["refused"] == {"calls": 1}
        assert fields["live_calls"] == 1 and fields["max_calls"] == 1
        # The call in progress is answered and hung up: none of it is refused.
        p.on_message(answer(fwd, 200), udp(PBX1))
        assert [m.status for m, _ in transport.take()] == [200]
        bye = build(
            "BYE sip:alice@127.0.0.1:5070 SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKbye1",
            "Route: <sip:127.0.0.1:5060;transport=udp;lr>",
            "Max-Forwards: 70",
            "From: <sip:1000@127.0.0.1:5060>;tag=b1",
            "To: <sip:alice@127.0.0.1:5070>;tag=a1",
            "Call-ID: call-1@127.0.0.1",
            "CSeq: 1 BYE",
            "Content-Length: 0",
        )
        p.on_message(bye, udp(PBX1))
        ((fwd_bye, _),) = only(transport.take(), Request)
        p.on_message(answer(fwd_bye, 200, to_tag="a1"), udp(CALLER))
        transport.take()
        assert len(p.dialogs) == 0
        # The call is over: the next new call is taken.
        p.on_message(second_invite(3), udp(CALLER))
        ((fwd3, _),) = only(transport.take(), Request)
        assert fwd3.call_id == "call-3@127.0.0.1"
        assert p.counters.get("overload_calls") == 1
    finally:
        await p.close()


async def test_max_cps_refuses_past_a_second_s_worth_and_refills() -> None:
    config = make_config()
    config.limits = LimitsConfig(max_cps=2, overload_retry_after=0)
    transport = FakeTransport()
    p = Proxy(config, transport, StubRouter([PBX1]))
    clock = [1000.0]
    p._clock = lambda: clock[0]
    await p.start()
    try:
        forwarded, refused = [], []
        for n in range(2, 6):  # four new calls in the same instant: two are taken
            p.on_message(second_invite(n), udp(CALLER))
            sent = transport.take()
            forwarded += [m.call_id for m, _ in only(sent, Request)]
            refused += [m for m, _ in sent if isinstance(m, Response) and m.status == 503]
        assert forwarded == ["call-2@127.0.0.1", "call-3@127.0.0.1"]
        assert len(refused) == 2 and all("retry-after" not in r.headers for r in refused)
        assert p.counters.get("overload_cps") == 2
        clock[0] += 0.5  # one more token
        for n in (6, 7):
            p.on_message(second_invite(n), udp(CALLER))
        sent = transport.take()
        assert [m.call_id for m, _ in only(sent, Request)] == ["call-6@127.0.0.1"]
        assert p.counters.get("overload_cps") == 3
    finally:
        await p.close()


async def test_malformed_request_gets_400_only_from_known_peers(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    bad = invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    proxy.on_message(bad, udp(CALLER))
    ((resp, _),) = t.take()
    assert isinstance(resp, Response) and resp.status == 400
    proxy.on_message(bad, udp(("127.0.0.9", 5070)))
    assert t.take() == []


async def test_stream_caller_gets_flow_token_and_double_record_route(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    t.conns[7] = ("127.0.0.1", 40000)
    source = Source("tls", ("127.0.0.1", 40000), ("127.0.0.1", 5061), conn_id=7)
    data = invite().replace(b"SIP/2.0/UDP 127.0.0.1:5070", b"SIP/2.0/TCP 127.0.0.1:5070")
    proxy.on_message(data, source)
    sent = t.take()
    ((_trying, dest),) = only(sent, Response)
    assert dest.conn_id == 7  # replies go down the caller's connection
    ((fwd, _),) = only(sent, Request)
    outbound, inbound = fwd.headers.get_all("Record-Route")
    assert outbound == "<sip:127.0.0.1:5060;transport=udp;lr>"
    assert inbound.startswith("<sip:ft7x") and ";transport=tls;lr>" in inbound
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    t.take()
    # The callee's BYE follows the route set and reaches the caller's connection,
    # not the address in its Contact (which nobody could connect to).
    bye = build(
        "BYE sip:alice@127.0.0.1:5070;transport=tcp SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKbye2",
        f"Route: {outbound}, {inbound}",
        "Max-Forwards: 70",
        "From: <sip:1000@127.0.0.1:5060>;tag=b1",
        "To: <sip:alice@127.0.0.1:5070>;tag=a1",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 2 BYE",
        "Content-Length: 0",
    )
    proxy.on_message(bye, udp(PBX1))
    ((fwd_bye, dest),) = only(t.take(), Request)
    assert dest.conn_id == 7 and fwd_bye.top_via.transport == "TCP"
    # A forged token does not steer anything into the connection.
    forged = bye.replace(
        inbound.encode(), b"<sip:ft7xdeadbeefdeadbeef@127.0.0.1:5061;transport=tls;lr>"
    )
    forged = forged.replace(b"z9hG4bKbye2", b"z9hG4bKbye3")
    proxy.on_message(forged, udp(PBX1))
    ((_, dest),) = only(t.take(), Request)
    assert dest.conn_id is None


class StubMedia:
    """The media controller's interface, recording calls; SDP passes unchanged."""

    enabled = True

    def __init__(self) -> None:
        self.offers: list[tuple[str, str]] = []
        self.answers: list[tuple[str, str]] = []
        self.ended: list[str] = []
        self.expired: list[str] = []

    async def offer(self, key: str, side: str, body: bytes, **policies: Any) -> bytes:
        self.offers.append((key, side))
        return body.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 127.0.0.1 ")

    async def answer(self, key: str, side: str, body: bytes) -> bytes:
        self.answers.append((key, side))
        return body.replace(b"m=audio 4000", b"m=audio 5000")

    async def end(self, key: str, reason: str) -> None:
        self.ended.append(key)

    def timed_out(self, now: float) -> list[str]:
        return self.expired

    async def close(self) -> None:
        pass


SDP = (
    b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)


async def test_media_timeout_ends_the_call_with_a_bye_to_each_party(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    media = StubMedia()
    proxy.media = media
    proxy.config.media = SimpleNamespace(enabled=True, caller="as-offered")
    proxy.config.upstream = SimpleNamespace(sets=(SimpleNamespace(name="pbx", media="rtp"),))
    data = invite(extra=("Content-Type: application/sdp",)).replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: %d\r\n\r\n" % len(SDP) + SDP
    )
    proxy.on_message(data, udp(CALLER))
    await asyncio.sleep(0.05)  # the offer goes through the (async) media controller
    sent = t.take()
    assert [m.status for m, _ in only(sent, Response)] == [100], sent
    ((fwd, _),) = only(sent, Request)
    assert media.offers == [("call-1@127.0.0.1;a1", "caller")]
    assert b"c=IN IP4 127.0.0.1 " in fwd.body  # what was forwarded is the rewritten offer
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    await asyncio.sleep(0.05)
    t.take()
    media.expired = ["call-1@127.0.0.1;a1"]
    proxy._media_timeouts(0.0)
    byes = [(m, d) for m, d in t.take() if isinstance(m, Request) and m.method == "BYE"]
    assert [(str(m.uri), d.host, d.port) for m, d in byes] == [
        ("sip:pbx@127.0.0.2:5080", *PBX1),
        ("sip:alice@127.0.0.1:5070", *CALLER),
    ]
    to_callee, to_caller = byes[0][0], byes[1][0]
    assert to_callee.from_.tag == "a1" and to_callee.to.tag == "b1"
    assert to_caller.from_.tag == "b1" and to_caller.to.tag == "a1"
    assert to_callee.cseq.number > 1 and to_caller.cseq.number > 1
    assert len(proxy.dialogs) == 0
    await asyncio.sleep(0)
    assert media.ended == ["call-1@127.0.0.1;a1"]


async def test_late_offer_goes_through_the_relay(proxy: Proxy) -> None:
    """RFC 3261 §13.2.1: INVITE without SDP, offer in the 2xx, answer in the ACK."""
    t: FakeTransport = proxy.transport
    media = StubMedia()
    proxy.media = media
    proxy.config.media = SimpleNamespace(enabled=True, caller="as-offered")
    proxy.config.upstream = SimpleNamespace(sets=(SimpleNamespace(name="pbx", media="rtp"),))
    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    assert fwd.body == b"" and media.offers == []
    ok = answer(fwd, 200, extra=("Content-Type: application/sdp",)).replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: %d\r\n\r\n" % len(SDP) + SDP
    )
    proxy.on_message(ok, udp(PBX1))
    await asyncio.sleep(0.05)
    ((relayed, _),) = only(t.take(), Response)
    assert media.offers == [("call-1@127.0.0.1;a1", "callee")]
    assert b"c=IN IP4 127.0.0.1 " in relayed.body  # the offer the caller sees is rewritten
    ack = build(
        "ACK sip:pbx@127.0.0.2:5080 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack9;rport",
        "Route: <sip:127.0.0.1:5060;transport=udp;lr>",
        "Max-Forwards: 70",
        "From: <sip:alice@127.0.0.1:5070>;tag=a1",
        "To: <sip:1000@127.0.0.1:5060>;tag=b1",
        "Call-ID: call-1@127.0.0.1",
        "CSeq: 1 ACK",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
        body=SDP,
    )
    proxy.on_message(ack, udp(CALLER))
    await asyncio.sleep(0.05)
    ((fwd_ack, dest),) = only(t.take(), Request)
    assert media.answers == [("call-1@127.0.0.1;a1", "caller")]
    assert b"m=audio 5000" in fwd_ack.body and dest == Destination("udp", *PBX1)


# ---------------------------------------------------------------- who gets in (issue 5)


async def test_carrier_promising_e164_gets_484_and_400(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    trunk = SimpleNamespace(name="loopback", media="rtp", needs_certificate=False, numbers="e164")
    proxy.router.trunk_for_source = lambda ip: trunk if ip == "127.0.0.1" else None
    proxy.forget_roles()
    proxy.on_message(invite(), udp(CALLER))  # sip:1000@...: not E.164
    ((resp, _),) = t.take()
    assert isinstance(resp, Response) and resp.status == 484
    good_uri = invite("z9hG4bKcaller2").replace(b"INVITE sip:1000@", b"INVITE sip:+15559876543@")
    proxy.on_message(good_uri, udp(CALLER))
    ((resp, _),) = t.take()
    assert isinstance(resp, Response) and resp.status == 400  # From is sip:alice@...
    both = invite("z9hG4bKcaller3").replace(b"INVITE sip:1000@", b"INVITE sip:+1-555-987-6543@")
    both = both.replace(b"From: <sip:alice@", b"From: <sip:+15551234567@")
    proxy.on_message(both, udp(CALLER))
    sent = t.take()
    assert [r.status for r, _ in only(sent, Response)] == [100]
    assert len(only(sent, Request)) == 1


async def test_forged_identity_headers_are_stripped_from_a_carrier(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    forged = ("X-Sipedge-Customer-Id: someone-else", "P-Asserted-Identity: <sip:boss@x>")
    proxy.on_message(invite(extra=forged), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    assert "X-Sipedge-Customer-Id" not in fwd.headers
    # A carrier is trusted to assert identities (RFC 3325 trust domain): PAI stays.
    assert fwd.headers.get("P-Asserted-Identity") == "<sip:boss@x>"


async def test_a_banned_source_is_dropped_before_parsing(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    now = proxy.admission.clock()
    proxy.admission.store.ban("127.0.0.9", now + 60, "test", now)
    proxy.on_message(b"\x00garbage that would otherwise cost a parse", udp(("127.0.0.9", 5070)))
    proxy.on_message(invite(), udp(("127.0.0.9", 5070)))
    assert t.take() == []
    assert proxy.counters.get("parse_errors", 0) == 0
    (ban,) = proxy.admission.store.bans(now)
    assert ban.hits == 2


async def test_a_stranger_cannot_end_or_cancel_other_peoples_calls(proxy: Proxy) -> None:
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    t.take()
    to_tag = "callee1"
    bye = build(
        "BYE sip:1000@127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bKevil;rport",
        "Max-Forwards: 70",
        "From: <sip:caller@127.0.0.1>;tag=caller-tag",
        f"To: <sip:1000@127.0.0.1>;tag={to_tag}",
        f"Call-ID: {fwd.call_id}",
        "CSeq: 2 BYE",
        "Content-Length: 0",
    )
    proxy.on_message(bye, udp(("127.0.0.9", 5070)))
    sent = t.take()
    assert only(sent, Request) == []  # not forwarded to the callee
    assert all(r.status == 407 for r, _ in only(sent, Response))
    assert len(proxy.dialogs) == 1


@pytest.mark.parametrize(
    ("text", "ours"),
    [
        ("sip:127.0.0.1;lr", True),
        ("sip:127.0.0.1:5060;transport=tcp;lr", True),
        ("sips:127.0.0.1;lr", True),  # TLS's default port, 5061
        ("sip:127.0.0.1:5062;lr", False),
        ("sip:127.0.0.1;transport=tls", True),
        ("sip:127.0.0.2;lr", False),
        ("sip:user@127.0.0.1:5061;transport=tls", True),
        ("tel:+15551234567", False),
    ],
)
async def test_is_us_answers_the_same_from_its_memo(proxy: Proxy, text: str, ours: bool) -> None:
    """_is_us remembers its answer by the URI's text; the second answer is the
    first, and a URI without text (built, not parsed) is worked out each time."""
    from sip.uri import URI

    uri = URI.parse(text)
    assert proxy._is_us(uri) is ours
    assert proxy._us[text] is ours
    assert proxy._is_us(URI.parse(text)) is ours
    assert proxy._is_us(dataclasses.replace(uri, text="")) is ours


async def test_is_us_memo_stays_bounded(proxy: Proxy) -> None:
    from edge import proxy as proxy_module
    from sip.uri import URI

    for i in range(proxy_module._US_CACHE_MAX + 10):
        proxy._is_us(URI.parse(f"sip:u{i}@127.0.0.2"))
    assert len(proxy._us) <= proxy_module._US_CACHE_MAX
    assert proxy._is_us(URI.parse("sip:127.0.0.1;lr")) is True
