"""RFC 3261 §17 / RFC 6026 transaction machines, driven by a fake clock.

Each test names the arrow of Figure 5, 6, 7 or 8 (or the RFC 6026 addition) it walks.
The :class:`Driver` plays the adapter: it keeps the timers the machine asks for and
fires them in order; it also checks two invariants on every action list (a cancelled
timer was running; Terminated leaves no timer running).
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import re
from collections.abc import Callable, Sequence

import pytest

from sip.errors import SipError
from sip.message import Request, Response, make_response, parse_message
from sip.transaction import (
    MAGIC_COOKIE,
    Action,
    CancelTimer,
    DeliverToTU,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    StartTimer,
    State,
    Terminated,
    TimeoutToTU,
    TimerConfig,
    TransportErrorToTU,
    build_ack,
    cancel_target_key,
    client_key,
    client_transaction,
    is_reliable,
    new_branch,
    server_key,
    server_transaction,
)

Txn = (
    InviteClientTransaction
    | NonInviteClientTransaction
    | InviteServerTransaction
    | NonInviteServerTransaction
)

BRANCH = "z9hG4bK776asdhds"


def request(
    method: str = "INVITE",
    *,
    transport: str = "UDP",
    branch: str | None = BRANCH,
    cseq: int = 314159,
    cseq_method: str | None = None,
    uri: str = "sip:bob@biloxi.example.com",
    to_tag: str | None = None,
    sent_by: str = "pc33.atlanta.example.com",
    extra: Sequence[str] = (),
) -> Request:
    """A parsed request in the style of RFC 3261 §24.2 (with a proxy's Via under ours)."""
    via_params = f";branch={branch}" if branch is not None else ""
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by}{via_params}",
        "Via: SIP/2.0/UDP client.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1",
        "Max-Forwards: 69",
        f"To: {to}",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        f"CSeq: {cseq} {cseq_method or method}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "a6c85cf") -> Response:
    """A response to ``req`` as the next hop would send it, through the parser."""
    msg = parse_message(bytes(make_response(req, status, to_tag=to_tag)))
    assert isinstance(msg, Response)
    return msg


class Driver:
    """The adapter's side of one transaction: a fake clock and the timers it started."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self.now = 0.0
        self.timers: dict[str, float] = {}
        self.log: list[tuple[float, Action]] = []

    def state(self) -> State:
        return self.txn.state

    def take(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            self.log.append((self.now, action))
            if isinstance(action, StartTimer):
                assert action.delay > 0  # rule 4: zero timers never reach the adapter
                self.timers[action.name] = self.now + action.delay
            elif isinstance(action, CancelTimer):
                del self.timers[action.name]  # KeyError: cancelled a timer not running
            elif isinstance(action, Terminated):
                assert self.timers == {}
        return actions

    def advance(self, until: float) -> list[tuple[float, Action]]:
        """Fire every timer due by ``until``, in order; return what they did."""
        first = len(self.log)
        while self.timers:
            name, when = min(self.timers.items(), key=lambda item: (item[1], item[0]))
            if when > until:
                break
            del self.timers[name]
            self.now = when
            self.take(self.txn.timer_fired(name, when))  # type: ignore[arg-type]
        self.now = until
        return self.log[first:]

    def at(self, now: float) -> Driver:
        """Move the clock to ``now`` (firing timers due before it)."""
        self.advance(now)
        return self

    # inputs
    def start(self) -> list[Action]:
        assert isinstance(self.txn, InviteClientTransaction | NonInviteClientTransaction)
        return self.take(self.txn.start(self.now))

    def receive_response(self, resp: Response) -> list[Action]:
        assert isinstance(self.txn, InviteClientTransaction | NonInviteClientTransaction)
        return self.take(self.txn.receive_response(resp, self.now))

    def receive_request(self, req: Request) -> list[Action]:
        assert isinstance(self.txn, InviteServerTransaction | NonInviteServerTransaction)
        return self.take(self.txn.receive_request(req, self.now))

    def send_response(self, resp: Response) -> list[Action]:
        assert isinstance(self.txn, InviteServerTransaction | NonInviteServerTransaction)
        return self.take(self.txn.send_response(resp, self.now))

    def transport_error(self) -> list[Action]:
        return self.take(self.txn.transport_error(self.now))


def send_times(log: list[tuple[float, Action]]) -> list[float]:
    return [t for t, a in log if isinstance(a, Send)]


def names(actions: list[Action]) -> list[str]:
    """A compact picture of an action list, e.g. ``["Send", "StartTimer A 0.5"]``."""
    out = []
    for a in actions:
        if isinstance(a, StartTimer):
            out.append(f"StartTimer {a.name} {a.delay:g}")
        elif isinstance(a, CancelTimer):
            out.append(f"CancelTimer {a.name}")
        else:
            out.append(type(a).__name__)
    return out


def timeline(log: list[tuple[float, Action]]) -> list[tuple[float, str]]:
    return [(t, name) for (t, _), name in zip(log, names([a for _, a in log]), strict=True)]


def sent(actions: list[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, Send)]


# ----------------------------------------------------------- INVITE client (Figure 5)


def test_invite_client_udp_retransmits_at_t1_doubling_until_timer_b() -> None:
    invite = request()
    d = Driver(InviteClientTransaction(invite))
    assert d.state() is State.INIT
    first = d.start()
    assert names(first) == ["Send", "StartTimer A 0.5", "StartTimer B 32"]
    assert sent(first) == [invite]
    assert d.state() is State.CALLING
    log = d.advance(100.0)
    # §17.1.1.2: A at T1, 2T1, 4T1, ... (not capped at T2); B at 64*T1 ends it.
    assert send_times(log) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(a.message is invite for _, a in log if isinstance(a, Send))
    assert timeline(log[-3:]) == [
        (32.0, "TimeoutToTU"),
        (32.0, "CancelTimer A"),
        (32.0, "Terminated"),
    ]
    assert d.state() is State.TERMINATED


def test_invite_client_tcp_sends_once_and_times_out_with_b() -> None:
    d = Driver(InviteClientTransaction(request(transport="TCP")))
    assert d.txn.reliable
    assert names(d.start()) == ["Send", "StartTimer B 32"]
    log = d.advance(100.0)
    assert timeline(log) == [(32.0, "TimeoutToTU"), (32.0, "Terminated")]


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_invite_client_1xx_stops_retransmissions_and_goes_proceeding(transport: str) -> None:
    invite = request(transport=transport)
    d = Driver(InviteClientTransaction(invite))
    d.start()
    d.at(1.0)
    ringing = response(invite, 180)
    out = d.receive_response(ringing)
    expected = ["CancelTimer A"] if transport == "UDP" else []
    assert names(out) == [*expected, "CancelTimer B", "DeliverToTU"]
    assert out[-1] == DeliverToTU(ringing)
    assert d.state() is State.PROCEEDING
    # No timer left: a proceeding INVITE waits for the TU's own limit (Timer C).
    assert d.advance(1000.0) == []
    progress = response(invite, 183)
    assert d.receive_response(progress) == [DeliverToTU(progress)]
    assert d.state() is State.PROCEEDING


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@pytest.mark.parametrize("provisional_first", [False, True])
def test_invite_client_2xx_goes_accepted_and_passes_every_2xx_up(
    transport: str, provisional_first: bool
) -> None:
    invite = request(transport=transport)
    d = Driver(InviteClientTransaction(invite))
    d.start()
    if provisional_first:
        d.receive_response(response(invite, 180))
    ok = response(invite, 200)
    out = d.receive_response(ok)
    # RFC 6026 §8.4: to the TU, Timer M; no ACK from the transaction.
    assert out[-2:] == [DeliverToTU(ok), StartTimer("M", 32.0)]
    assert sent(out) == []
    assert d.state() is State.ACCEPTED
    # Nothing is sent from Accepted: the INVITE is let go rather than kept for Timer M.
    assert not any(r is d.txn for r in gc.get_referrers(invite))
    with pytest.raises(RuntimeError, match="let go of its request"):
        _ = d.txn.request
    d.at(2.0)
    assert d.receive_response(ok) == [DeliverToTU(ok)]  # retransmission
    other_fork = response(invite, 200, to_tag="fork2")
    assert d.receive_response(other_fork) == [DeliverToTU(other_fork)]
    # Neither provisionals nor failures do anything once accepted.
    assert d.receive_response(response(invite, 180)) == []
    assert d.receive_response(response(invite, 486)) == []
    log = d.advance(100.0)
    assert [(t, a) for t, a in log] == [(32.0, Terminated())]
    assert d.state() is State.TERMINATED
    assert d.receive_response(ok) == []


@pytest.mark.parametrize("provisional_first", [False, True])
def test_invite_client_udp_final_failure_acks_and_waits_timer_d(provisional_first: bool) -> None:
    invite = request()
    d = Driver(InviteClientTransaction(invite))
    d.start()
    if provisional_first:
        d.receive_response(response(invite, 180))
    busy = response(invite, 486)
    out = d.receive_response(busy)
    cancels = [] if provisional_first else ["CancelTimer A", "CancelTimer B"]
    assert names(out) == [*cancels, "Send", "DeliverToTU", "StartTimer D 32"]
    ack = sent(out)[0]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert out[-2] == DeliverToTU(busy)
    assert d.state() is State.COMPLETED
    # A retransmitted final response: the same ACK again, nothing to the TU.
    d.at(5.0)
    again = d.receive_response(response(invite, 486))
    assert len(again) == 1 and isinstance(again[0], Send) and again[0].message is ack
    assert d.receive_response(response(invite, 200)) == []
    assert d.receive_response(response(invite, 180)) == []
    log = d.advance(100.0)
    assert log == [(32.0, Terminated())]


def test_invite_client_tcp_final_failure_terminates_at_once() -> None:
    invite = request(transport="TCP")
    d = Driver(InviteClientTransaction(invite))
    d.start()
    busy = response(invite, 603)
    out = d.receive_response(busy)
    # Timer D is zero on reliable transports: Completed is passed through.
    assert names(out) == ["CancelTimer B", "Send", "DeliverToTU", "Terminated"]
    assert d.state() is State.TERMINATED
    assert d.receive_response(busy) == []


def test_invite_client_ack_is_built_per_17_1_1_3() -> None:
    invite = request(
        extra=[
            "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
            "Contact: <sip:alice@pc33.atlanta.example.com>",
            "Content-Type: application/sdp",
        ]
    )
    d = Driver(InviteClientTransaction(invite))
    d.start()
    out = d.receive_response(response(invite, 404, to_tag="xyz42"))
    ack = parse_message(bytes(sent(out)[0]))
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@biloxi.example.com"
    assert ack.call_id == invite.call_id
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to.tag == "xyz42"
    assert str(ack.to.uri) == "sip:bob@biloxi.example.com"
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert [str(v) for v in ack.via] == [str(invite.via[0])]
    assert ack.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    assert ack.max_forwards == 70
    assert ack.content_length == 0 and ack.body == b""
    assert "Contact" not in ack.headers and "Content-Type" not in ack.headers
    # The ACK matches the INVITE's server transaction at the next hop (§17.2.3).
    assert server_key(ack) == server_key(invite)


def test_build_ack_without_routes() -> None:
    invite = request()
    ack = build_ack(invite, response(invite, 500))
    assert ack.headers.get_all("Route") == []
    assert ack.to.tag == "a6c85cf"


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_invite_client_transport_error_in_calling(transport: str) -> None:
    d = Driver(InviteClientTransaction(request(transport=transport)))
    d.start()
    out = d.transport_error()
    cancels = ["CancelTimer A", "CancelTimer B"] if transport == "UDP" else ["CancelTimer B"]
    assert names(out) == ["TransportErrorToTU", *cancels, "Terminated"]
    assert d.state() is State.TERMINATED


def test_invite_client_transport_error_in_completed() -> None:
    invite = request()
    d = Driver(InviteClientTransaction(invite))
    d.start()
    d.receive_response(response(invite, 486))
    assert names(d.transport_error()) == ["TransportErrorToTU", "CancelTimer D", "Terminated"]


def test_invite_client_transport_error_in_proceeding_and_accepted_is_ignored() -> None:
    # Figure 5 (and RFC 6026) have no transport-error arrow out of Proceeding or
    # Accepted: the transaction sends nothing there.
    invite = request()
    d = Driver(InviteClientTransaction(invite))
    d.start()
    d.receive_response(response(invite, 100))
    assert d.transport_error() == []
    assert d.state() is State.PROCEEDING
    d.receive_response(response(invite, 200))
    assert d.transport_error() == []
    assert d.state() is State.ACCEPTED


def test_invite_client_ignores_stale_timers_and_early_input() -> None:
    invite = request()
    txn = InviteClientTransaction(invite)
    assert txn.receive_response(response(invite, 200), 0.0) == []  # before start
    assert txn.timer_fired("A", 0.0) == []  # never started
    d = Driver(txn)
    d.start()
    d.receive_response(response(invite, 180))
    # A and B were cancelled; an adapter that loses the race fires them anyway.
    assert txn.timer_fired("A", 0.5) == []
    assert txn.timer_fired("B", 32.0) == []
    assert txn.state is State.PROCEEDING
    assert txn.start(1.0) == []
    assert txn.last_activity == 1.0


def test_invite_client_custom_timers() -> None:
    config = TimerConfig(t1=0.1, t2=0.4, t4=1.0, d=40.0)
    invite = request()
    d = Driver(InviteClientTransaction(invite, config=config))
    assert names(d.start()) == ["Send", "StartTimer A 0.1", "StartTimer B 6.4"]
    log = d.advance(2.0)
    assert send_times(log) == pytest.approx([0.1, 0.3, 0.7, 1.5])
    out = d.receive_response(response(invite, 486))
    assert out[-1] == StartTimer("D", 40.0)


def test_invite_client_needs_rfc3261_branch_and_invite() -> None:
    with pytest.raises(ValueError, match="branch"):
        InviteClientTransaction(request(branch="1234"))
    with pytest.raises(ValueError, match="branch"):
        InviteClientTransaction(request(branch=None))
    with pytest.raises(ValueError, match="branch"):
        InviteClientTransaction(request(branch="Z9HG4BK776asdhds"))
    with pytest.raises(ValueError, match="INVITE"):
        InviteClientTransaction(request("OPTIONS"))


# ------------------------------------------------------- non-INVITE client (Figure 6)


def test_non_invite_client_udp_timer_e_doubles_to_t2_until_timer_f() -> None:
    options = request("OPTIONS")
    d = Driver(NonInviteClientTransaction(options))
    assert names(d.start()) == ["Send", "StartTimer E 0.5", "StartTimer F 32"]
    assert d.state() is State.TRYING
    log = d.advance(100.0)
    # §17.1.2.2: intervals T1, 2T1, 4T1, then T2 = 4 s.
    sends = send_times(log)
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert [b - a for a, b in itertools.pairwise(sends[3:])] == [4.0] * (len(sends) - 4)
    assert sends[-1] == 31.5
    assert timeline(log[-3:]) == [
        (32.0, "TimeoutToTU"),
        (32.0, "CancelTimer E"),
        (32.0, "Terminated"),
    ]


def test_non_invite_client_timer_e_stays_at_t2_once_proceeding() -> None:
    register = request("REGISTER")
    d = Driver(NonInviteClientTransaction(register))
    d.start()
    d.at(0.7)  # E fired at 0.5, next at 1.5 (interval 1 s)
    trying = response(register, 100)
    assert d.receive_response(trying) == [DeliverToTU(trying)]
    assert d.state() is State.PROCEEDING
    log = d.advance(20.0)
    # The running E fires at 1.5, then every T2 (§17.1.2.2), not 2 s after.
    assert send_times(log) == [1.5, 5.5, 9.5, 13.5, 17.5]
    assert [a for _, a in log if isinstance(a, StartTimer)] == [StartTimer("E", 4.0)] * 5
    again = response(register, 100)
    assert d.receive_response(again) == [DeliverToTU(again)]
    log = d.advance(40.0)
    assert timeline(log[-3:]) == [
        (32.0, "TimeoutToTU"),
        (32.0, "CancelTimer E"),
        (32.0, "Terminated"),
    ]


@pytest.mark.parametrize("status", [200, 404])
@pytest.mark.parametrize("provisional_first", [False, True])
def test_non_invite_client_udp_final_then_timer_k(status: int, provisional_first: bool) -> None:
    bye = request("BYE", to_tag="a6c85cf")
    d = Driver(NonInviteClientTransaction(bye))
    d.start()
    d.at(0.6)
    if provisional_first:
        d.receive_response(response(bye, 180))
    final = response(bye, status)
    out = d.receive_response(final)
    assert names(out) == ["CancelTimer E", "CancelTimer F", "DeliverToTU", "StartTimer K 5"]
    assert out[2] == DeliverToTU(final)
    assert d.state() is State.COMPLETED
    # Completed absorbs retransmitted (or any) responses.
    assert d.receive_response(response(bye, status)) == []
    assert d.receive_response(response(bye, 100)) == []
    log = d.advance(100.0)
    assert log == [(5.6, Terminated())]


def test_non_invite_client_tcp_no_retransmissions_and_k_is_zero() -> None:
    message = request("MESSAGE", transport="TCP")
    d = Driver(NonInviteClientTransaction(message))
    assert names(d.start()) == ["Send", "StartTimer F 32"]
    d.at(10.0)
    assert len(d.log) == 2  # nothing was retransmitted
    ok = response(message, 202)
    assert names(d.receive_response(ok)) == ["CancelTimer F", "DeliverToTU", "Terminated"]
    assert d.state() is State.TERMINATED


def test_non_invite_client_tcp_timer_f_in_proceeding() -> None:
    message = request("MESSAGE", transport="TCP")
    d = Driver(NonInviteClientTransaction(message))
    d.start()
    d.receive_response(response(message, 100))
    log = d.advance(100.0)
    assert timeline(log) == [(32.0, "TimeoutToTU"), (32.0, "Terminated")]


@pytest.mark.parametrize("provisional_first", [False, True])
def test_non_invite_client_transport_error(provisional_first: bool) -> None:
    options = request("OPTIONS")
    d = Driver(NonInviteClientTransaction(options))
    d.start()
    if provisional_first:
        d.receive_response(response(options, 100))
    out = d.transport_error()
    assert names(out) == ["TransportErrorToTU", "CancelTimer E", "CancelTimer F", "Terminated"]
    # In Completed nothing is sent, so there is no arrow for it.
    d2 = Driver(NonInviteClientTransaction(options))
    d2.start()
    d2.receive_response(response(options, 200))
    assert d2.transport_error() == []


def test_non_invite_client_refuses_invite_and_ack() -> None:
    with pytest.raises(ValueError):
        NonInviteClientTransaction(request("INVITE"))
    with pytest.raises(ValueError):
        NonInviteClientTransaction(request("ACK"))


# ----------------------------------------------------------- INVITE server (Figure 7)


def test_invite_server_sends_100_and_repeats_last_provisional() -> None:
    invite = request(extra=["Timestamp: 54.2"])
    d = Driver(InviteServerTransaction(invite))
    assert d.state() is State.INIT
    out = d.receive_request(invite)
    assert names(out) == ["Send", "DeliverToTU"]
    assert out[1] == DeliverToTU(invite)
    trying = sent(out)[0]
    assert isinstance(trying, Response)
    assert d.state() is State.PROCEEDING
    # §17.2.1 / §8.2.6: Vias in order, To without a tag, Timestamp copied.
    parsed = parse_message(bytes(trying))
    assert isinstance(parsed, Response)
    assert parsed.status == 100
    assert [str(v) for v in parsed.via] == [str(v) for v in invite.via]
    assert parsed.to.tag is None
    assert parsed.headers.get("Timestamp") == "54.2"
    assert (parsed.cseq, parsed.call_id) == (invite.cseq, invite.call_id)
    # A retransmitted INVITE gets the last provisional again, and is not passed up.
    assert sent(d.receive_request(invite)) == [trying]
    ringing = response(invite, 180)
    assert d.send_response(ringing) == [Send(ringing)]
    assert d.receive_request(invite) == [Send(ringing)]
    assert d.state() is State.PROCEEDING


def test_invite_server_without_send_trying_has_nothing_to_resend() -> None:
    invite = request()
    d = Driver(InviteServerTransaction(invite, send_trying=False))
    assert d.receive_request(invite) == [DeliverToTU(invite)]
    assert d.receive_request(invite) == []
    ringing = response(invite, 180)
    d.send_response(ringing)
    assert d.receive_request(invite) == [Send(ringing)]


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_invite_server_2xx_goes_accepted_until_timer_l(transport: str) -> None:
    invite = request(transport=transport)
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    ok = response(invite, 200)
    assert d.send_response(ok) == [Send(ok), StartTimer("L", 32.0)]
    assert d.state() is State.ACCEPTED
    # Nothing is resent from Accepted: the 2xx is not kept for Timer L's 32 s.
    assert not any(r is d.txn for r in gc.get_referrers(ok))
    d.at(1.0)
    # RFC 6026 §8.7: INVITE retransmissions are absorbed (the TU retransmits the 2xx),
    # the TU's retransmissions are sent, a matching ACK goes to the TU.
    assert d.receive_request(invite) == []
    assert d.send_response(ok) == [Send(ok)]
    ack = request("ACK", to_tag="a6c85cf", cseq_method="ACK")
    assert d.receive_request(ack) == [DeliverToTU(ack)]
    assert d.receive_request(ack) == [DeliverToTU(ack)]
    assert d.transport_error() == [TransportErrorToTU()]
    assert d.state() is State.ACCEPTED
    assert d.send_response(response(invite, 180)) == []
    assert d.send_response(response(invite, 500)) == []
    assert d.advance(100.0) == [(32.0, Terminated())]
    assert d.state() is State.TERMINATED


def test_invite_server_udp_failure_retransmits_with_g_until_ack() -> None:
    invite = request()
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    busy = response(invite, 486)
    out = d.send_response(busy)
    assert out == [Send(busy), StartTimer("G", 0.5), StartTimer("H", 32.0)]
    assert d.state() is State.COMPLETED
    log = d.advance(12.0)
    # §17.2.1: G doubles up to T2.
    assert send_times(log) == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(a == Send(busy) for _, a in log if isinstance(a, Send))
    assert d.receive_request(invite) == [Send(busy)]
    assert d.send_response(response(invite, 500)) == []  # a second final: discarded
    ack = request("ACK", to_tag="a6c85cf", cseq_method="ACK")
    out = d.receive_request(ack)
    assert out == [CancelTimer("G"), CancelTimer("H"), StartTimer("I", 5.0)]
    assert d.state() is State.CONFIRMED
    # Confirmed absorbs ACK and INVITE retransmissions until Timer I.
    assert d.receive_request(ack) == []
    assert d.receive_request(invite) == []
    assert d.advance(100.0) == [(17.0, Terminated())]


def test_invite_server_udp_timer_h_without_ack() -> None:
    invite = request()
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    d.send_response(response(invite, 404))
    log = d.advance(100.0)
    sends = send_times(log)
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5] and sends[-1] == 31.5
    assert timeline(log[-3:]) == [
        (32.0, "TimeoutToTU"),
        (32.0, "CancelTimer G"),
        (32.0, "Terminated"),
    ]


def test_invite_server_tcp_failure_no_g_and_i_is_zero() -> None:
    invite = request(transport="TCP")
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    busy = response(invite, 486)
    assert d.send_response(busy) == [Send(busy), StartTimer("H", 32.0)]
    assert d.advance(10.0) == []
    ack = request("ACK", transport="TCP", to_tag="a6c85cf", cseq_method="ACK")
    assert d.receive_request(ack) == [CancelTimer("H"), Terminated()]
    assert d.state() is State.TERMINATED


def test_invite_server_tcp_timer_h() -> None:
    invite = request(transport="TCP")
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    d.send_response(response(invite, 486))
    assert d.advance(100.0) == [(32.0, TimeoutToTU()), (32.0, Terminated())]


def test_invite_server_transport_errors() -> None:
    invite = request()
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    assert d.transport_error() == [TransportErrorToTU(), Terminated()]
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    d.send_response(response(invite, 503))
    out = d.transport_error()
    assert names(out) == ["TransportErrorToTU", "CancelTimer G", "CancelTimer H", "Terminated"]
    # Confirmed sends nothing: no arrow.
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    d.send_response(response(invite, 503))
    d.receive_request(request("ACK", to_tag="a6c85cf", cseq_method="ACK"))
    assert d.transport_error() == []
    assert d.state() is State.CONFIRMED


def test_invite_server_ack_before_final_is_ignored() -> None:
    invite = request()
    d = Driver(InviteServerTransaction(invite))
    d.receive_request(invite)
    assert d.receive_request(request("ACK", cseq_method="ACK")) == []
    assert d.state() is State.PROCEEDING


# ------------------------------------------------------- non-INVITE server (Figure 8)


def test_non_invite_server_udp_walk() -> None:
    register = request("REGISTER")
    d = Driver(NonInviteServerTransaction(register))
    assert d.receive_request(register) == [DeliverToTU(register)]
    assert d.state() is State.TRYING
    assert d.receive_request(register) == []  # §17.2.2: discarded while Trying
    trying = response(register, 100)
    assert d.send_response(trying) == [Send(trying)]
    assert d.state() is State.PROCEEDING
    assert d.receive_request(register) == [Send(trying)]
    ringing = response(register, 183)
    assert d.send_response(ringing) == [Send(ringing)]
    assert d.receive_request(register) == [Send(ringing)]
    d.at(3.0)
    ok = response(register, 200)
    assert d.send_response(ok) == [Send(ok), StartTimer("J", 32.0)]
    assert d.state() is State.COMPLETED
    assert d.receive_request(register) == [Send(ok)]
    assert d.send_response(response(register, 500)) == []  # §17.2.2: discarded
    assert d.send_response(response(register, 180)) == []
    assert d.advance(100.0) == [(35.0, Terminated())]


@pytest.mark.parametrize("status", [202, 403])
@pytest.mark.parametrize("provisional_first", [False, True])
def test_non_invite_server_final_from_trying_or_proceeding(
    status: int, provisional_first: bool
) -> None:
    message = request("MESSAGE")
    d = Driver(NonInviteServerTransaction(message))
    d.receive_request(message)
    if provisional_first:
        d.send_response(response(message, 100))
        assert d.state() is State.PROCEEDING
    final = response(message, status)
    assert d.send_response(final) == [Send(final), StartTimer("J", 32.0)]
    assert d.receive_request(message) == [Send(final)]


def test_non_invite_server_tcp_j_is_zero() -> None:
    options = request("OPTIONS", transport="TCP")
    d = Driver(NonInviteServerTransaction(options))
    d.receive_request(options)
    d.send_response(response(options, 100))
    ok = response(options, 200)
    assert d.send_response(ok) == [Send(ok), Terminated()]
    assert d.state() is State.TERMINATED
    assert d.receive_request(options) == []


def test_non_invite_server_transport_errors() -> None:
    options = request("OPTIONS")
    d = Driver(NonInviteServerTransaction(options))
    d.receive_request(options)
    assert d.transport_error() == []  # Trying sent nothing: no arrow in Figure 8
    d.send_response(response(options, 100))
    assert d.transport_error() == [TransportErrorToTU(), Terminated()]
    d = Driver(NonInviteServerTransaction(options))
    d.receive_request(options)
    d.send_response(response(options, 200))
    assert d.transport_error() == [TransportErrorToTU(), CancelTimer("J"), Terminated()]


def test_server_transactions_check_their_method() -> None:
    with pytest.raises(ValueError):
        InviteServerTransaction(request("BYE"))
    with pytest.raises(ValueError):
        NonInviteServerTransaction(request("INVITE"))
    with pytest.raises(ValueError):
        server_transaction(request("ACK"))


# ------------------------------------------------------------------ construction


def test_factories_pick_the_machine_by_method() -> None:
    assert isinstance(client_transaction(request()), InviteClientTransaction)
    assert isinstance(client_transaction(request("CANCEL")), NonInviteClientTransaction)
    assert isinstance(server_transaction(request()), InviteServerTransaction)
    assert isinstance(server_transaction(request("BYE")), NonInviteServerTransaction)
    trying_off = server_transaction(request(), send_trying=False)
    assert isinstance(trying_off, InviteServerTransaction) and not trying_off.send_trying


@pytest.mark.parametrize(
    ("transport", "reliable"),
    [("UDP", False), ("TCP", True), ("TLS", True), ("WS", True), ("WSS", True), ("SCTP", True)],
)
def test_reliability_follows_the_top_via(transport: str, reliable: bool) -> None:
    assert is_reliable(transport) is reliable
    assert is_reliable(transport.lower()) is reliable
    assert client_transaction(request(transport=transport)).reliable is reliable
    assert server_transaction(request(transport=transport)).reliable is reliable


def test_reliability_can_be_given() -> None:
    # The adapter knows the socket; a Via can say UDP for a request that came over TCP.
    txn = InviteClientTransaction(request(transport="UDP"), reliable=True)
    assert names(txn.start(0.0)) == ["Send", "StartTimer B 32"]


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0.0}, {"t1": 1.0, "t2": 0.5}, {"t4": 0.0}, {"d": -1.0}],
)
def test_timer_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)


def test_timer_config_defaults_are_rfc_3261_table_4() -> None:
    config = TimerConfig()
    assert (config.t1, config.t2, config.t4) == (0.5, 4.0, 5.0)
    unreliable = {name: config.initial(name, False) for name in "ABDEFGHIJKLM"}  # type: ignore[arg-type]
    assert unreliable == {
        "A": 0.5, "B": 32.0, "D": 32.0, "E": 0.5, "F": 32.0, "G": 0.5,
        "H": 32.0, "I": 5.0, "J": 32.0, "K": 5.0, "L": 32.0, "M": 32.0,
    }  # fmt: skip
    reliable = {name: config.initial(name, True) for name in "ABDEFGHIJKLM"}  # type: ignore[arg-type]
    assert reliable == {
        "A": None, "B": 32.0, "D": 0.0, "E": None, "F": 32.0, "G": None,
        "H": 32.0, "I": 0.0, "J": 0.0, "K": 0.0, "L": 32.0, "M": 32.0,
    }  # fmt: skip


# ---------------------------------------------------------------------- matching


def test_new_branch() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    for branch in branches:
        assert re.fullmatch(r"z9hG4bK[0-9a-f]{32}", branch)


def test_client_key_matches_responses_by_branch_and_cseq_method() -> None:
    invite = request()
    txn = InviteClientTransaction(invite)
    assert client_key(response(invite, 180)) == txn.key
    assert client_key(response(invite, 200)) == txn.key
    # A CANCEL shares the INVITE's branch (§9.1); the CSeq method tells them apart.
    cancel = request("CANCEL")
    cancel_txn = NonInviteClientTransaction(cancel)
    assert client_key(response(cancel, 200)) == cancel_txn.key != txn.key
    assert client_key(response(request(branch=BRANCH + "x"), 200)) != txn.key
    # §7.3.1: parameter values compare case-insensitively (§20.42 makes no exception).
    shouted = request(branch="z9hG4bK776ASDHDS")
    assert client_key(response(shouted, 200)) == txn.key


def test_client_key_needs_a_branch() -> None:
    with pytest.raises(SipError):
        client_key(response(request(branch=None), 200))


def test_server_key_rfc3261() -> None:
    invite = request()
    key = server_key(invite)
    assert key == InviteServerTransaction(invite).key
    assert server_key(request()) == key  # a retransmission
    # ACK for a non-2xx: same branch (§17.1.1.3), matches the INVITE (§17.2.3 rule 3).
    assert server_key(request("ACK", to_tag="a6c85cf", cseq_method="ACK")) == key
    # Branch, sent-by and method all count.
    assert server_key(request(branch=BRANCH + "1")) != key
    assert server_key(request(sent_by="pc34.atlanta.example.com")) != key
    assert server_key(request(sent_by="pc33.atlanta.example.com:5060")) != key
    assert server_key(request(sent_by="PC33.Atlanta.Example.COM")) == key
    assert server_key(request(branch="z9hG4bK776ASDHDS")) == key
    # Request-URI, tags and CSeq do not: the branch identifies the transaction.
    assert server_key(request(uri="sip:carol@chicago.example.com", cseq=1)) == key


def test_cancel_is_its_own_transaction_and_finds_its_invite() -> None:
    invite = request()
    cancel = request("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel) == NonInviteServerTransaction(cancel).key
    assert cancel_target_key(cancel) == server_key(invite)
    # A CANCEL for another INVITE finds nothing.
    assert cancel_target_key(request("CANCEL", branch=BRANCH + "z")) != server_key(invite)


def test_magic_cookie_check_is_case_sensitive() -> None:
    assert server_key(request(branch="z9hG4bK776"))[0] == "3261"
    assert server_key(request(branch="Z9HG4BK776"))[0] == "2543"
    assert server_key(request(branch="z9hg4bk776"))[0] == "2543"
    assert MAGIC_COOKIE == "z9hG4bK"


@pytest.mark.parametrize("branch", [None, "1234abc"])
def test_server_key_rfc2543_fallback(branch: str | None) -> None:
    invite = request(branch=branch)
    key = server_key(invite)
    assert key[0] == "2543"
    assert server_key(request(branch=branch)) == key  # a retransmission
    # §17.2.3: an ACK matches by Request-URI, From tag, Call-ID, CSeq number and top
    # Via; its To tag (the response's) is left out of the key (documented choice).
    ack = request("ACK", branch=branch, to_tag="a6c85cf", cseq_method="ACK")
    assert server_key(ack) == key
    assert server_key(request("ACK", branch=branch, cseq=2, cseq_method="ACK")) != key
    assert server_key(request(branch=branch, uri="sip:bob@192.0.2.4")) != key
    assert server_key(request(branch=branch, cseq=314160)) != key
    assert server_key(request(branch=branch, sent_by="pc34.atlanta.example.com")) != key
    assert server_key(request(branch=branch, transport="TCP")) != key
    # CANCEL: its own transaction, and it finds the INVITE (§9.2).
    cancel = request("CANCEL", branch=branch)
    assert server_key(cancel) != key
    assert cancel_target_key(cancel) == key
    # Other methods keep the To tag in the key.
    bye = server_key(request("BYE", branch=branch, to_tag="a"))
    assert bye != server_key(request("BYE", branch=branch, to_tag="b"))
    assert bye == server_key(request("BYE", branch=branch, to_tag="a"))


def test_rfc3261_and_rfc2543_keys_never_collide() -> None:
    keys = {server_key(request(branch=b)) for b in (None, "abc", BRANCH)}
    assert len(keys) == 3


# --------------------------------------------------------- two peers over lossy UDP


class Network:
    """An INVITE client and the INVITE server at the next hop, over a lossy datagram link.

    One fake clock and one queue of due events (timers and datagrams, which take
    ``LATENCY`` to cross); every message crosses as bytes and is parsed again, and the
    server side looks its transactions up by key, as an adapter would.
    """

    LATENCY = 0.01

    def __init__(self, drop: set[int]) -> None:
        self.now = 0.0
        self.drop = drop  # indexes of datagrams (in sending order) that are lost
        self.sent = 0
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.timers: dict[tuple[int, str], int] = {}  # (id(txn), name) -> live seq
        self.client: InviteClientTransaction | None = None
        self.servers: dict[tuple[str | int | None, ...], InviteServerTransaction] = {}
        self.client_tu: list[Response] = []
        self.server_tu: list[Request] = []
        self.terminated: list[tuple[float, str]] = []

    def later(self, delay: float, thunk: Callable[[], None]) -> int:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, thunk))
        return self.seq

    def run(self, txn: Txn, side: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                index, self.sent = self.sent, self.sent + 1
                if index not in self.drop:
                    data = bytes(action.message)
                    self.later(self.LATENCY, functools.partial(self.arrive, side, data))
            elif isinstance(action, StartTimer):
                self.start_timer(txn, side, action)
            elif isinstance(action, CancelTimer):
                del self.timers[(id(txn), action.name)]
            elif isinstance(action, DeliverToTU):
                self.tu(txn, side, action.message)
            elif isinstance(action, Terminated):
                self.terminated.append((self.now, side))
                self.servers = {k: v for k, v in self.servers.items() if v is not txn}

    def start_timer(self, txn: Txn, side: str, action: StartTimer) -> None:
        slot = (id(txn), action.name)

        def fire() -> None:
            if self.timers.get(slot) != seq:
                return  # cancelled or replaced
            del self.timers[slot]
            self.run(txn, side, txn.timer_fired(action.name, self.now))

        seq = self.later(action.delay, fire)
        self.timers[slot] = seq

    def tu(self, txn: Txn, side: str, message: Request | Response) -> None:
        if side == "client":
            assert isinstance(message, Response)
            self.client_tu.append(message)
            return
        assert isinstance(message, Request) and isinstance(txn, InviteServerTransaction)
        self.server_tu.append(message)
        busy = make_response(message, 486, to_tag="srv1")
        self.run(txn, "server", txn.send_response(busy, self.now))

    def arrive(self, from_side: str, data: bytes) -> None:
        message = parse_message(data)
        if from_side == "client":
            assert isinstance(message, Request)
            key = server_key(message)
            txn = self.servers.get(key)
            if txn is None:
                if message.method == "ACK":
                    return  # matches no transaction: an ACK for a 2xx, the TU's business
                txn = self.servers[key] = InviteServerTransaction(message)
            self.run(txn, "server", txn.receive_request(message, self.now))
        else:
            assert isinstance(message, Response) and self.client is not None
            if client_key(message) == self.client.key:
                self.run(self.client, "client", self.client.receive_response(message, self.now))

    def go(self, invite: Request, until: float) -> None:
        self.client = InviteClientTransaction(invite)
        self.run(self.client, "client", self.client.start(self.now))
        while self.queue and self.queue[0][0] <= until:
            self.now, _, thunk = heapq.heappop(self.queue)
            thunk()


def test_two_peers_recover_from_lost_invite_and_lost_final_response() -> None:
    # Datagrams: 0 INVITE (lost), 1 INVITE (Timer A, 0.5), 2 100 Trying, 3 486 (lost),
    # 4 486 (Timer G, 1.01), 5 ACK.
    net = Network(drop={0, 3})
    net.go(request(extra=["Route: <sip:edge.example.com;lr>"]), until=100.0)
    assert [m.method for m in net.server_tu] == ["INVITE"]  # passed up once
    assert [r.status for r in net.client_tu] == [100, 486]  # 486 passed up once
    assert net.sent == 6
    # Client: Completed at 1.02, Timer D (32 s).  Server: ACK at 1.03, then Timer I (T4).
    assert net.terminated == [
        pytest.approx((6.03, "server")),
        pytest.approx((33.02, "client")),
    ]
    assert net.servers == {} and net.timers == {}


def test_two_peers_lost_ack_is_repaired_by_response_retransmission() -> None:
    # 0 INVITE, 1 100, 2 486, 3 ACK (lost), 4 486 (Timer G at 0.51), 5 ACK again.
    net = Network(drop={3})
    net.go(request(), until=100.0)
    assert [r.status for r in net.client_tu] == [100, 486]
    assert net.sent == 6
    assert [side for _, side in net.terminated] == ["server", "client"]
    assert net.timers == {}
