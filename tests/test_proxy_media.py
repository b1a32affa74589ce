"""The proxy's SDP handling (edge/proxy_media.py) with the real media controller.

The proxy runs on the in-memory transport of tests/test_proxy.py; its media controller
is the real one (tests/test_media_controller.py's relay on 127.0.0.1 and phones on
127.0.0.2 and .3), wrapped to record which SDP went in as an offer or an answer and
from which side.  RTP is exchanged through the relay where a test must show that the
negotiation came out right.  Cases: RFC 3262 (offers and answers in reliable
provisional responses and PRACK), RFC 3311 (UPDATE in the early dialog), RFC 6337
§2.1 patterns, re-INVITE without SDP, and RFC 5621 multipart bodies.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from edge.audit import AuditLog, call_resource_id
from edge.media import MediaController
from edge.proxy import Proxy
from edge.transport import Destination
from sip.message import Request, Response
from sip.sdp import parse_sdp
from tests.sipdata import build
from tests.test_media_controller import (
    CALLEE,
    CALLER,
    RELAY,
    Harness,
    Phone,
    exchange,
    media_config,
    rtp,
)
from tests.test_proxy import CALLER as CALLER_SIP
from tests.test_proxy import PBX1, FakeTransport, StubRouter, make_config, only, udp

pytestmark = pytest.mark.timeout(30)

KEY = "call-1@127.0.0.1;a1"
ROUTE = "Route: <sip:127.0.0.1:5060;transport=udp;lr>"
ISUP = bytes.fromhex("0100490000030200070410003363214300000306")


class Recording:
    """The real controller, recording (kind, side) of each SDP it is given."""

    enabled = True

    def __init__(self, inner: MediaController) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    async def offer(self, key: str, side: str, body: bytes, **kw: Any) -> bytes:
        self.calls.append(("offer", side))
        result: bytes = await self.inner.offer(key, side, body, **kw)
        return result

    async def answer(self, key: str, side: str, body: bytes) -> bytes:
        self.calls.append(("answer", side))
        result: bytes = await self.inner.answer(key, side, body)
        return result

    async def end(self, key: str, reason: str) -> None:
        await self.inner.end(key, reason)

    def timed_out(self, now: float) -> list[str]:
        return []

    async def close(self) -> None:
        await self.inner.close()
        assert self.inner.relay is not None
        await self.inner.relay.close()


class Call:
    """One call through the proxy: builds the messages of both parties and feeds them."""

    def __init__(self, proxy: Proxy, media: Recording, caller: Phone, callee: Phone) -> None:
        self.proxy = proxy
        self.t: FakeTransport = proxy.transport
        self.media = media
        self.caller = caller
        self.callee = callee
        self.invite: Request | None = None  # as forwarded to the callee
        self.cseq = {"a1": 1, "b1": 100}
        self.branch = 0

    # -- sending
    async def feed(self, data: bytes, source: tuple[str, int]) -> list[Any]:
        self.proxy.on_message(data, udp(source))
        for _ in range(20):  # the controller is async: let its tasks finish
            await asyncio.sleep(0.01)
        return self.t.take()

    def _branch(self) -> str:
        self.branch += 1
        return f"z9hG4bKt{self.branch}"

    def request(
        self,
        method: str,
        sender: str,
        body: bytes = b"",
        ctype: str = "application/sdp",
        extra: tuple[str, ...] = (),
        cseq: int | None = None,
    ) -> bytes:
        """An in-dialog request from "caller" (tag a1) or "callee" (tag b1)."""
        tag, peer = ("a1", "b1") if sender == "caller" else ("b1", "a1")
        if cseq is None:
            self.cseq[tag] += 1
            cseq = self.cseq[tag]
        host = "127.0.0.1:5070" if sender == "caller" else "127.0.0.2:5080"
        target = "sip:pbx@127.0.0.2:5080" if sender == "caller" else "sip:alice@127.0.0.1:5070"
        names = {"a1": "<sip:alice@127.0.0.1:5070>", "b1": "<sip:1000@127.0.0.1:5060>"}
        lines = [
            f"{method} {target} SIP/2.0",
            f"Via: SIP/2.0/UDP {host};branch={self._branch()};rport",
            ROUTE,
            "Max-Forwards: 70",
            f"From: {names[tag]};tag={tag}",
            f"To: {names[peer]};tag={peer}",
            "Call-ID: call-1@127.0.0.1",
            f"CSeq: {cseq} {method}",
            *extra,
        ]
        if body:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(body)}")
        return build(*lines, body=body)

    def response(
        self,
        req: Request,
        status: int,
        body: bytes = b"",
        extra: tuple[str, ...] = (),
        ctype: str = "application/sdp",
    ) -> bytes:
        vias = [f"Via: {v}" for v in req.headers.get_all("Via")]
        to = req.headers.get("To") or ""
        if "tag=" not in to:
            to += ";tag=b1"
        lines = [
            f"SIP/2.0 {status} X",
            *vias,
            *(f"Record-Route: {v}" for v in req.headers.get_all("Record-Route")),
            f"From: {req.headers.get('From')}",
            f"To: {to}",
            f"Call-ID: {req.call_id}",
            f"CSeq: {req.headers.get('CSeq')}",
            "Contact: <sip:pbx@127.0.0.2:5080>",
            *extra,
        ]
        if body:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(body)}")
        return build(*lines, body=body)

    async def start(self, body: bytes = b"", ctype: str = "application/sdp") -> Request:
        """The caller's INVITE (with ``body``, or none: a late offer) to the callee."""
        lines = [
            "INVITE sip:1000@127.0.0.1:5060 SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKinvite;rport",
            "Max-Forwards: 70",
            "From: <sip:alice@127.0.0.1:5070>;tag=a1",
            "To: <sip:1000@127.0.0.1:5060>",
            "Call-ID: call-1@127.0.0.1",
            "CSeq: 1 INVITE",
            "Contact: <sip:alice@127.0.0.1:5070>",
            "Supported: 100rel",
        ]
        if body:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(body)}")
        sent = await self.feed(build(*lines, body=body), CALLER_SIP)
        ((fwd, _),) = only(sent, Request)
        self.invite = fwd
        return fwd

    async def from_callee(self, data: bytes) -> list[Any]:
        return await self.feed(data, PBX1)

    async def from_caller(self, data: bytes) -> list[Any]:
        return await self.feed(data, CALLER_SIP)


def reliable(rseq: int = 1) -> tuple[str, ...]:
    return ("Require: 100rel", f"RSeq: {rseq}")


def one(sent: list[Any], kind: type) -> Any:
    (item,) = only(sent, kind)
    return item[0]


def names_relay(body: bytes) -> None:
    """The SDP points at the relay only."""
    sd = parse_sdp(body)
    assert all(c.host == RELAY for c in [sd.connection] if c is not None)
    for m in sd.media:
        conn = sd.connection_for(m)
        assert conn is not None and conn.host == RELAY


async def media_flows(call: Call) -> None:
    assert await exchange(call.caller, call.callee, rtp(1)) == rtp(1)
    assert await exchange(call.callee, call.caller, rtp(2, ssrc=2)) == rtp(2, ssrc=2)


@pytest.fixture(params=[True, False], ids=["fast", "python"])
async def call(request: pytest.FixtureRequest) -> AsyncIterator[Call]:
    """A call through the proxy, its media on the C data plane or on Python's path."""
    harness = Harness()
    transport = FakeTransport()
    proxy = Proxy(make_config(), transport, StubRouter([PBX1]))
    await proxy.start()
    proxy.config.media = SimpleNamespace(enabled=True, caller="as-offered")
    proxy.config.upstream = SimpleNamespace(sets=(SimpleNamespace(name="pbx", media="rtp"),))
    media = Recording(MediaController(media_config(fast_path=request.param)))
    proxy.media = media
    c = Call(proxy, media, await harness.phone(CALLER), await harness.phone(CALLEE))
    yield c
    await proxy.close()
    harness.close()


# ---------------------------------------------------------------- RFC 3262


async def test_late_offer_in_a_reliable_183_answered_in_the_prack(call: Call) -> None:
    """RFC 6337 §2.1 pattern 4: INVITE without SDP, offer in a reliable 183, answer in
    the PRACK; the 200 repeats the offer's SDP (served from the cache), ACK empty."""
    invite = await call.start()
    assert invite.body == b""
    offer = call.callee.sdp()
    sent = await call.from_callee(call.response(invite, 183, offer, reliable()))
    progress = one(sent, Response)
    assert progress.status == 183 and progress.headers.get("RSeq") == "1"
    names_relay(progress.body)
    call.caller.learn(progress.body)
    assert call.media.calls == [("offer", "callee")]

    prack = call.request("PRACK", "caller", call.caller.sdp(), extra=("RAck: 1 1 INVITE",))
    sent = await call.from_caller(prack)
    fwd_prack = one(sent, Request)
    assert fwd_prack.method == "PRACK" and only(sent, Request)[0][1] == Destination("udp", *PBX1)
    names_relay(fwd_prack.body)
    call.callee.learn(fwd_prack.body)
    assert call.media.calls == [("offer", "callee"), ("answer", "caller")]
    await media_flows(call)  # early media both ways

    sent = await call.from_callee(call.response(fwd_prack, 200))
    assert one(sent, Response).status == 200
    sent = await call.from_callee(call.response(invite, 200, offer))
    ok = one(sent, Response)
    assert ok.body == progress.body  # the same SDP the caller already has
    assert call.media.calls == [("offer", "callee"), ("answer", "caller")]
    sent = await call.from_caller(call.request("ACK", "caller", cseq=1))
    assert one(sent, Request).body == b""
    assert call.media.calls == [("offer", "callee"), ("answer", "caller")]
    await media_flows(call)


async def test_late_offer_200_with_new_sdp_after_the_prack_answer_is_dropped(
    call: Call,
) -> None:
    """RFC 3261 §13.2.1: no new offer in responses to the INVITE once answered; the
    far end's unrelayed SDP must not reach the caller either."""
    invite = await call.start()
    await call.from_callee(call.response(invite, 183, call.callee.sdp(), reliable()))
    prack = call.request("PRACK", "caller", call.caller.sdp(), extra=("RAck: 1 1 INVITE",))
    await call.from_caller(prack)
    other = call.callee.sdp(version=2, direction="sendonly")
    ok = one(await call.from_callee(call.response(invite, 200, other)), Response)
    assert ok.status == 200 and ok.body == b""
    assert call.media.calls == [("offer", "callee"), ("answer", "caller")]


async def test_late_offer_superseded_before_the_answer_and_answered_in_the_ack(
    call: Call,
) -> None:
    """An unreliable 183 with SDP in a late-offer call is taken as the offer (never
    passed raw); the 200's different SDP replaces it; the ACK answers the 200's."""
    invite = await call.start()
    progress = one(await call.from_callee(call.response(invite, 183, call.callee.sdp())), Response)
    names_relay(progress.body)
    second = call.callee.sdp(version=2)
    ok = one(await call.from_callee(call.response(invite, 200, second)), Response)
    names_relay(ok.body)
    call.caller.learn(ok.body)
    assert call.media.calls == [("offer", "callee"), ("offer", "callee")]
    ack = call.request("ACK", "caller", call.caller.sdp(), cseq=1)
    fwd_ack = one(await call.from_caller(ack), Request)
    names_relay(fwd_ack.body)
    call.callee.learn(fwd_ack.body)
    assert call.media.calls[-1] == ("answer", "caller")
    await media_flows(call)


async def test_early_offer_answered_in_a_reliable_183_then_200_repeats_or_omits(
    call: Call,
) -> None:
    """RFC 3262 with the offer in the INVITE: the answer in the reliable 183 is taken
    once; the 200 repeating it is served from the cache, a PRACK without SDP is left
    alone, and a 200 retransmitted without SDP stays without."""
    invite = await call.start(call.caller.sdp())
    names_relay(invite.body)
    call.callee.learn(invite.body)
    answer = call.callee.sdp()
    progress = one(await call.from_callee(call.response(invite, 183, answer, reliable())), Response)
    call.caller.learn(progress.body)
    assert call.media.calls == [("offer", "caller"), ("answer", "callee")]
    prack = call.request("PRACK", "caller", extra=("RAck: 1 1 INVITE",))
    fwd_prack = one(await call.from_caller(prack), Request)
    assert fwd_prack.body == b""
    await call.from_callee(call.response(fwd_prack, 200))
    ok = one(await call.from_callee(call.response(invite, 200, answer)), Response)
    assert ok.body == progress.body
    assert call.media.calls == [("offer", "caller"), ("answer", "callee")]
    await media_flows(call)


async def test_early_offer_200_without_sdp_after_a_reliable_answer(call: Call) -> None:
    invite = await call.start(call.caller.sdp())
    call.callee.learn(invite.body)
    progress = one(
        await call.from_callee(call.response(invite, 183, call.callee.sdp(), reliable())),
        Response,
    )
    call.caller.learn(progress.body)
    ok = one(await call.from_callee(call.response(invite, 200)), Response)
    assert ok.status == 200 and ok.body == b""
    assert call.media.calls == [("offer", "caller"), ("answer", "callee")]
    await media_flows(call)


async def test_prack_with_an_offer_answered_in_its_200(call: Call) -> None:
    """RFC 6337 §2.1 pattern 5: after the reliable 183 answered the INVITE's offer, a
    PRACK may carry a new offer; its 200 carries the answer."""
    invite = await call.start(call.caller.sdp())
    call.callee.learn(invite.body)
    progress = one(
        await call.from_callee(call.response(invite, 183, call.callee.sdp(), reliable())),
        Response,
    )
    call.caller.learn(progress.body)
    new_offer = call.caller.sdp(version=2, direction="sendonly")
    prack = call.request("PRACK", "caller", new_offer, extra=("RAck: 1 1 INVITE",))
    fwd_prack = one(await call.from_caller(prack), Request)
    names_relay(fwd_prack.body)
    assert parse_sdp(fwd_prack.body).media[0].has("sendonly")
    answer = call.callee.sdp(version=2, direction="recvonly")
    ok = one(await call.from_callee(call.response(fwd_prack, 200, answer)), Response)
    names_relay(ok.body)
    assert call.media.calls == [
        ("offer", "caller"),
        ("answer", "callee"),
        ("offer", "caller"),
        ("answer", "callee"),
    ]


async def test_update_in_the_early_dialog_re_offers(call: Call) -> None:
    """RFC 3311: the callee re-offers with UPDATE before the 200; the caller's 200 to
    the UPDATE answers; the INVITE's 200 then repeats nothing new."""
    invite = await call.start()
    progress = one(
        await call.from_callee(call.response(invite, 183, call.callee.sdp(), reliable())),
        Response,
    )
    call.caller.learn(progress.body)
    prack = call.request("PRACK", "caller", call.caller.sdp(), extra=("RAck: 1 1 INVITE",))
    call.callee.learn(one(await call.from_caller(prack), Request).body)
    update = call.request("UPDATE", "callee", call.callee.sdp(version=2))
    fwd_update = one(await call.from_callee(update), Request)
    names_relay(fwd_update.body)
    call.caller.learn(fwd_update.body)
    ok = one(
        await call.from_caller(call.response(fwd_update, 200, call.caller.sdp(version=2))), Response
    )
    names_relay(ok.body)
    assert call.media.calls == [
        ("offer", "callee"),
        ("answer", "caller"),
        ("offer", "callee"),
        ("answer", "caller"),
    ]
    ok = one(await call.from_callee(call.response(invite, 200)), Response)
    assert ok.status == 200 and len(call.media.calls) == 4
    await media_flows(call)


async def test_re_invite_without_sdp_offer_in_200_answer_in_ack(call: Call) -> None:
    """A re-INVITE without SDP: the 2xx offers, the ACK answers (RFC 3261 §14.1)."""
    invite = await call.start(call.caller.sdp())
    call.callee.learn(invite.body)
    ok = one(await call.from_callee(call.response(invite, 200, call.callee.sdp())), Response)
    call.caller.learn(ok.body)
    await call.from_caller(call.request("ACK", "caller", cseq=1))
    reinvite = call.request("INVITE", "callee")
    fwd = one(await call.from_callee(reinvite), Request)
    assert fwd.body == b""
    ok2 = one(await call.from_caller(call.response(fwd, 200, call.caller.sdp(version=2))), Response)
    names_relay(ok2.body)
    call.callee.learn(ok2.body)
    assert call.media.calls[-1] == ("offer", "caller")
    ack = call.request("ACK", "callee", call.callee.sdp(version=2), cseq=call.cseq["b1"])
    fwd_ack = one(await call.from_callee(ack), Request)
    names_relay(fwd_ack.body)
    call.caller.learn(fwd_ack.body)
    assert call.media.calls[-1] == ("answer", "callee")
    await media_flows(call)


async def test_ack_with_sdp_and_no_offer_pending_loses_its_sdp(call: Call) -> None:
    invite = await call.start()
    ok = one(await call.from_callee(call.response(invite, 200, call.callee.sdp())), Response)
    call.caller.learn(ok.body)
    answer = call.caller.sdp()
    fwd_ack = one(await call.from_caller(call.request("ACK", "caller", answer, cseq=1)), Request)
    names_relay(fwd_ack.body)
    # The same ACK again (for a retransmitted 200): the same rewrite, no new answer.
    again = one(await call.from_caller(call.request("ACK", "caller", answer, cseq=1)), Request)
    assert again.body == fwd_ack.body
    # A different SDP with no offer pending: it does not reach the callee.
    other = call.caller.sdp(version=7)
    dropped = one(await call.from_caller(call.request("ACK", "caller", other, cseq=1)), Request)
    assert dropped.body == b""
    assert call.media.calls == [("offer", "callee"), ("answer", "caller")]


# ---------------------------------------------------------------- RFC 5621 multipart


def multipart(sdp: bytes, boundary: str = "unique-boundary-1") -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/sdp\r\n\r\n".encode()
        + sdp
        + f"\r\n--{boundary}\r\nContent-Type: application/isup;version=itu-t92+\r\n"
        "Content-Disposition: signal;handling=optional\r\n\r\n".encode()
        + ISUP
        + f"\r\n--{boundary}--\r\n".encode()
    )


MIXED = 'multipart/mixed;boundary="unique-boundary-1"'


async def test_multipart_offer_and_answer_are_rewritten_in_place(call: Call) -> None:
    """SDP plus ISUP (RFC 3204): the SDP part is rewritten, the ISUP part and the
    boundary are kept, Content-Length is true to the new body."""
    from sip.multipart import Multipart

    body = multipart(call.caller.sdp())
    invite = await call.start(body, ctype=MIXED)
    assert invite.content_type is not None and str(invite.content_type) == MIXED
    assert int(invite.headers.get("Content-Length") or 0) == len(invite.body)
    mp = Multipart.parse(invite.body, invite.content_type)
    assert [bytes(p.body) for p in mp.parts][1] == ISUP
    names_relay(mp.parts[0].body)
    call.callee.learn(mp.parts[0].body)
    answer = multipart(call.callee.sdp())
    ok = one(await call.from_callee(call.response(invite, 200, answer, ctype=MIXED)), Response)
    assert ok.content_type is not None
    ok_mp = Multipart.parse(ok.body, ok.content_type)
    assert ok_mp.parts[1].body == ISUP
    call.caller.learn(ok_mp.parts[0].body)
    assert call.media.calls == [("offer", "caller"), ("answer", "callee")]
    await media_flows(call)


async def test_multipart_without_sdp_is_a_late_offer_left_as_is(call: Call) -> None:
    body = (
        b"--b1\r\nContent-Type: application/isup\r\n\r\n" + ISUP + b"\r\n--b1\r\n"
        b"Content-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n"
    )
    invite = await call.start(body, ctype="multipart/mixed;boundary=b1")
    assert invite.body == body and call.media.calls == []
    ok = one(await call.from_callee(call.response(invite, 200, call.callee.sdp())), Response)
    names_relay(ok.body)
    assert call.media.calls == [("offer", "callee")]


@pytest.mark.parametrize(
    "body",
    [
        b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n",  # no closing delimiter
        b"no delimiter at all",
        b"--b1\r\nContent-Type application/sdp\r\n\r\nv=0\r\n--b1--",  # bad part header
    ],
)
async def test_malformed_multipart_is_treated_as_no_sdp(call: Call, body: bytes) -> None:
    invite = await call.start(body, ctype="multipart/mixed;boundary=b1")
    assert invite.body == body and call.media.calls == []
    assert call.proxy.counters.get("internal_errors", 0) == 0


async def test_multipart_answer_refused_loses_only_its_sdp_part(call: Call) -> None:
    """An answer the relay cannot use (no stream left): its SDP goes, ISUP stays."""
    invite = await call.start(call.caller.sdp())
    bad = call.callee.sdp(proto="RTP/SAVP")  # SRTP to an offer of plain RTP
    answer = multipart(bad)
    ok = one(await call.from_callee(call.response(invite, 200, answer, ctype=MIXED)), Response)
    assert b"application/sdp" not in ok.body and ISUP in ok.body
    assert b"127.0.0.3" not in ok.body


# ---------------------------------------------------------------- media timeout audit


async def test_media_timeout_writes_an_audit_event(call: Call) -> None:
    """The edge ends a call whose media stopped: BYE to each party and one audit line
    (edge/audit.py) naming the call by its pseudonymous resource id."""
    stream = io.StringIO()
    call.proxy.audit = AuditLog(None, stream=stream)
    invite = await call.start(call.caller.sdp())
    call.callee.learn(invite.body)
    call.caller.learn(
        one(await call.from_callee(call.response(invite, 200, call.callee.sdp())), Response).body
    )
    call.media.timed_out = lambda now: [KEY]  # type: ignore[method-assign]
    call.proxy._media_timeouts(0.0)
    byes = [m for m, _ in call.t.take() if isinstance(m, Request) and m.method == "BYE"]
    assert len(byes) == 2
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["event_type"] == "media_timeout" and line["action"] == "terminate"
    assert line["resource_type"] == "call"
    assert line["resource_id"] == call_resource_id("call-1@127.0.0.1")
    assert line["details"]["reason"] == "no media either way"
    assert "call-1@127.0.0.1" not in stream.getvalue()  # the Call-ID stays out


async def test_early_offer_ack_with_sdp_is_not_passed_raw(call: Call) -> None:
    """An early-offer call's ACK carrying SDP (no offer pending): the SDP stays behind."""
    invite = await call.start(call.caller.sdp())
    ok = one(await call.from_callee(call.response(invite, 200, call.callee.sdp())), Response)
    names_relay(ok.body)
    ack = call.request("ACK", "caller", call.caller.sdp(version=9), cseq=1)
    fwd_ack = one(await call.from_caller(ack), Request)
    assert fwd_ack.body == b"" and "Content-Type" not in fwd_ack.headers


async def test_sdp_in_a_failure_response_does_not_leak(call: Call) -> None:
    """A 488 describing what the callee could do: its SDP names the callee; it goes."""
    invite = await call.start(call.caller.sdp())
    sent = await call.from_callee(call.response(invite, 488, call.callee.sdp()))
    failure = one(sent, Response)
    assert failure.status == 488
    assert failure.body == b"" and "Content-Type" not in failure.headers
    assert failure.headers.get("Content-Length") == "0"
