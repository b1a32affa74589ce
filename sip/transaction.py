"""SIP transactions: RFC 3261 §17 with the RFC 6026 corrections, as pure state machines.

Rules of this file
------------------
1. Everything that decides what a transaction does next lives here, in four tables:
   ``_INVITE_CLIENT`` (RFC 3261 Figure 5 as amended by RFC 6026 §8.4),
   ``_NON_INVITE_CLIENT`` (Figure 6), ``_INVITE_SERVER`` (Figure 7 as amended by
   RFC 6026 §8.7) and ``_NON_INVITE_SERVER`` (Figure 8).  A row reads like an arrow of
   the figure: ``(state, event): (next state, steps)``.  State names and timer names
   (A-M) are the RFC's.  ``Init`` names the point where each figure's entry arrow starts.
2. No I/O and no clock.  Each input is a method call that carries ``now`` and returns
   a list of actions (:class:`Send`, :class:`StartTimer`, :class:`CancelTimer`,
   :class:`DeliverToTU`, :class:`TimeoutToTU`, :class:`TransportErrorToTU`,
   :class:`Terminated`), in the order they are to be carried out.  Time enters only
   through ``timer_fired``.  ``now`` decides nothing; it is kept as ``last_activity``.
3. An event with no row in the table is ignored: it returns ``[]`` and changes nothing.
   That covers late responses, stale timers (a ``timer_fired`` for a timer that is not
   running is dropped, so an adapter that loses a cancel race does no harm), and the
   TU sending a second final response.
4. ``StartTimer(name, delay)`` replaces any running timer of that name.  On reliable
   transports (TCP, TLS, SCTP, WS, WSS) the retransmit timers A, E and G never start,
   and the wait timers D, I, J and K are zero (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1,
   §17.2.2): a zero timer is not handed to the adapter but fires at once, inside the
   same call, through its own row of the table.
5. Entering Terminated cancels every timer still running and ends with one
   :class:`Terminated` action; the owner then drops the transaction (§17.1.1.2: "MUST
   be destroyed immediately").
6. 2xx responses to INVITE are end to end (RFC 6026 §8.4, §8.7): the INVITE server
   transaction never retransmits a 2xx on its own (the TU does, through
   ``send_response`` while Accepted), and the INVITE client transaction never ACKs one
   (the TU does).  ACKs for 3xx-6xx are hop by hop and are built and absorbed here.

Matching (§17.1.3, §17.2.3) is :func:`client_key`, :func:`server_key` and
:func:`cancel_target_key`; the owner keeps the table of live transactions.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final, Literal, cast

from sip.errors import SipError
from sip.message import Request, Response, make_response, untrack_kept
from sip.random_tokens import token_hex

__all__ = [
    "MAGIC_COOKIE",
    "Action",
    "CancelTimer",
    "DeliverToTU",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Send",
    "StartTimer",
    "State",
    "Terminated",
    "TimeoutToTU",
    "TimerConfig",
    "TimerName",
    "TransactionKey",
    "TransportErrorToTU",
    "build_ack",
    "build_trying",
    "cancel_target_key",
    "client_key",
    "client_transaction",
    "is_reliable",
    "new_branch",
    "server_key",
    "server_transaction",
]

# §8.1.1.7: a branch made by an RFC 3261 element "MUST always begin with the characters
# z9hG4bK".  The check is case-sensitive: the RFC names those characters, and deployed
# stacks test them byte for byte (pjsip's pjsip_tsx_create_key uses pj_strncmp).  Branch
# values themselves are compared case-insensitively (see client_key).
MAGIC_COOKIE: Final = "z9hG4bK"

# §18: the transports that are reliable.  Anything else (UDP, DTLS, unknown) is treated
# as unreliable: an extra retransmission is harmless, a missing one is not.
_RELIABLE_TRANSPORTS: Final = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def new_branch() -> str:
    """A fresh Via branch: the magic cookie and 128 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + token_hex(16)


def is_reliable(transport: str) -> bool:
    """Whether a Via transport token names a reliable transport (§18)."""
    return transport.upper() in _RELIABLE_TRANSPORTS


# ------------------------------------------------------------------------------- timers

TimerName = Literal["A", "B", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M"]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """The base intervals of RFC 3261 §17.1.1.1 and Table 4, in seconds.

    ``t1`` is the round-trip estimate, ``t2`` the cap on the interval between
    retransmissions of non-INVITE requests and INVITE final responses, ``t4`` the
    longest a message stays in the network.  ``d`` is Timer D on unreliable transports,
    "at least 32 seconds" (§17.1.1.2).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0 and self.d >= 0):
            raise ValueError("timer config needs t1 > 0, t2 >= t1, t4 > 0 and d >= 0")

    def initial(self, name: TimerName, reliable: bool) -> float | None:
        """The first delay of a timer, or None when it does not run on this transport."""
        if name in ("A", "E", "G"):
            # Retransmit timers: unreliable transports only.
            return None if reliable else self.t1
        if name in ("B", "F", "H", "L", "M"):
            # Transaction timeouts, the same on every transport (L and M: RFC 6026).
            return 64 * self.t1
        if reliable:
            # D, I, J, K: wait out retransmissions, which do not happen here.
            return 0.0
        if name == "D":
            return self.d
        if name == "J":
            return 64 * self.t1
        return self.t4  # I, K


# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True, init=False)
class Send:
    """Hand ``message`` to the transport layer."""

    message: Request | Response

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(self, message: Request | Response) -> None:
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, slots=True, init=False)
class StartTimer:
    """Fire ``timer_fired(name, ...)`` after ``delay`` seconds, replacing a running one."""

    name: TimerName
    delay: float

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(self, name: TimerName, delay: float) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "delay", delay)


@dataclass(frozen=True, slots=True, init=False)
class CancelTimer:
    name: TimerName

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(self, name: TimerName) -> None:
        object.__setattr__(self, "name", name)


@dataclass(frozen=True, slots=True, init=False)
class DeliverToTU:
    """Responses to the client TU; the request (and ACKs in Accepted) to the server TU."""

    message: Request | Response

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(self, message: Request | Response) -> None:
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, slots=True)
class TimeoutToTU:
    """Timer B or F fired (no final response), or Timer H fired (no ACK)."""


@dataclass(frozen=True, slots=True)
class TransportErrorToTU:
    """The transport failed to deliver a message of this transaction (§17.1.4, §17.2.4)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; drop it from the transaction table."""


# Shared: they carry nothing (and a dataclass's generated __init__ runs interpreted).
_TERMINATED_ACTION: Final = Terminated()
_TIMEOUT_ACTION: Final = TimeoutToTU()
_TRANSPORT_ERROR_ACTION: Final = TransportErrorToTU()


Action = (
    Send | StartTimer | CancelTimer | DeliverToTU | TimeoutToTU | TransportErrorToTU | Terminated
)


# ------------------------------------------------------------------------------- tables


class State(StrEnum):
    INIT = "Init"
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


Event = Literal[
    "start",  # client: request from the TU
    "1xx",  # client: responses received
    "2xx",
    "300-699",
    "request",  # server: the request, or a retransmission of it
    "ACK",  # INVITE server: an ACK matching the transaction
    "1xx from TU",  # server: responses from the TU
    "2xx from TU",
    "300-699 from TU",
    "timer A",
    "timer B",
    "timer D",
    "timer E",
    "timer F",
    "timer G",
    "timer H",
    "timer I",
    "timer J",
    "timer K",
    "timer L",
    "timer M",
    "transport error",
]


class _Op(StrEnum):
    SEND_REQUEST = "send request"  # (re)transmit the client's request
    SEND_ACK = "send ACK"  # INVITE client: ACK the 3xx-6xx, built once (§17.1.1.3)
    SEND_RESPONSE = "send response"  # server: send the TU's response, remember it
    RESEND_LAST = "resend last"  # server: resend the last response sent, if any
    SEND_TRYING = "send 100"  # INVITE server: 100 Trying, if configured (§17.2.1)
    TO_TU = "to TU"  # pass the event's message up
    TIMEOUT_TO_TU = "timeout to TU"
    ERROR_TO_TU = "transport error to TU"
    START = "start"  # start a timer at its initial delay
    CANCEL = "cancel"
    DOUBLE = "double"  # restart at twice the last interval (capped at T2 for E, G)
    AT_T2 = "at T2"  # restart at T2 (Timer E once Proceeding, §17.1.2.2)


@dataclass(frozen=True, slots=True)
class _Step:
    op: _Op
    timer: TimerName | None = None


def _start(name: TimerName) -> _Step:
    return _Step(_Op.START, name)


def _cancel(name: TimerName) -> _Step:
    return _Step(_Op.CANCEL, name)


def _double(name: TimerName) -> _Step:
    return _Step(_Op.DOUBLE, name)


_SEND_REQUEST: Final = _Step(_Op.SEND_REQUEST)
_SEND_ACK: Final = _Step(_Op.SEND_ACK)
_SEND_RESPONSE: Final = _Step(_Op.SEND_RESPONSE)
_RESEND_LAST: Final = _Step(_Op.RESEND_LAST)
_SEND_TRYING: Final = _Step(_Op.SEND_TRYING)
_TO_TU: Final = _Step(_Op.TO_TU)
_TIMEOUT_TO_TU: Final = _Step(_Op.TIMEOUT_TO_TU)
_ERROR_TO_TU: Final = _Step(_Op.ERROR_TO_TU)
_E_AT_T2: Final = _Step(_Op.AT_T2, "E")

_Row = tuple[State, tuple[_Step, ...]]
# A dict, not a Mapping, though never changed: compiled, a dict's get is a direct
# call where a Mapping's is a generic method call, and every event looks one up.
_Table = dict[tuple[State, Event], _Row]

_S: Final = State

# RFC 3261 Figure 5 with RFC 6026 §8.4: 2xx moves to Accepted, where further 2xx (a
# retransmission, or another fork's answer) go to the TU until Timer M fires.  Once a
# provisional arrives the INVITE waits with no timer of its own (§17.1.1.2: Timer B
# only acts in Calling; a proxy bounds the wait with Timer C).  Figure 5 has no
# transport-error arrow out of Proceeding, where nothing is sent: none here either.
_INVITE_CLIENT: Final[_Table] = {
    (_S.INIT, "start"): (_S.CALLING, (_SEND_REQUEST, _start("A"), _start("B"))),
    (_S.CALLING, "timer A"): (_S.CALLING, (_SEND_REQUEST, _double("A"))),
    (_S.CALLING, "timer B"): (_S.TERMINATED, (_TIMEOUT_TO_TU,)),
    (_S.CALLING, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.CALLING, "1xx"): (_S.PROCEEDING, (_cancel("A"), _cancel("B"), _TO_TU)),
    (_S.CALLING, "2xx"): (_S.ACCEPTED, (_cancel("A"), _cancel("B"), _TO_TU, _start("M"))),
    (_S.CALLING, "300-699"): (
        _S.COMPLETED,
        (_cancel("A"), _cancel("B"), _SEND_ACK, _TO_TU, _start("D")),
    ),
    (_S.PROCEEDING, "1xx"): (_S.PROCEEDING, (_TO_TU,)),
    (_S.PROCEEDING, "2xx"): (_S.ACCEPTED, (_TO_TU, _start("M"))),
    (_S.PROCEEDING, "300-699"): (_S.COMPLETED, (_SEND_ACK, _TO_TU, _start("D"))),
    (_S.ACCEPTED, "2xx"): (_S.ACCEPTED, (_TO_TU,)),
    (_S.ACCEPTED, "timer M"): (_S.TERMINATED, ()),
    # A retransmitted final response: ACK again, do not pass it up (§17.1.1.2).
    (_S.COMPLETED, "300-699"): (_S.COMPLETED, (_SEND_ACK,)),
    (_S.COMPLETED, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.COMPLETED, "timer D"): (_S.TERMINATED, ()),
}

# RFC 3261 Figure 6.  Timer E doubles up to T2 while Trying and runs at T2 once
# Proceeding (§17.1.2.2); Timer F bounds both.  Completed absorbs retransmitted
# responses (no row) until Timer K.
_NON_INVITE_CLIENT: Final[_Table] = {
    (_S.INIT, "start"): (_S.TRYING, (_SEND_REQUEST, _start("E"), _start("F"))),
    (_S.TRYING, "timer E"): (_S.TRYING, (_SEND_REQUEST, _double("E"))),
    (_S.TRYING, "timer F"): (_S.TERMINATED, (_TIMEOUT_TO_TU,)),
    (_S.TRYING, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.TRYING, "1xx"): (_S.PROCEEDING, (_TO_TU,)),
    (_S.TRYING, "2xx"): (_S.COMPLETED, (_cancel("E"), _cancel("F"), _TO_TU, _start("K"))),
    (_S.TRYING, "300-699"): (_S.COMPLETED, (_cancel("E"), _cancel("F"), _TO_TU, _start("K"))),
    (_S.PROCEEDING, "timer E"): (_S.PROCEEDING, (_SEND_REQUEST, _E_AT_T2)),
    (_S.PROCEEDING, "timer F"): (_S.TERMINATED, (_TIMEOUT_TO_TU,)),
    (_S.PROCEEDING, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.PROCEEDING, "1xx"): (_S.PROCEEDING, (_TO_TU,)),
    (_S.PROCEEDING, "2xx"): (_S.COMPLETED, (_cancel("E"), _cancel("F"), _TO_TU, _start("K"))),
    (_S.PROCEEDING, "300-699"): (
        _S.COMPLETED,
        (_cancel("E"), _cancel("F"), _TO_TU, _start("K")),
    ),
    (_S.COMPLETED, "timer K"): (_S.TERMINATED, ()),
}

# RFC 3261 Figure 7 with RFC 6026 §8.7: a 2xx from the TU moves to Accepted, where
# the transaction absorbs INVITE retransmissions, sends the TU's own 2xx
# retransmissions, passes matching ACKs to the TU and reports transport errors
# without ending, until Timer L fires.  Timer G doubles up to T2 (§17.2.1).  The ACK
# of a 3xx-6xx is absorbed: it ends at this hop.
_INVITE_SERVER: Final[_Table] = {
    # The 100 goes first: it is what quenches the client's retransmissions.
    (_S.INIT, "request"): (_S.PROCEEDING, (_SEND_TRYING, _TO_TU)),
    (_S.PROCEEDING, "request"): (_S.PROCEEDING, (_RESEND_LAST,)),
    (_S.PROCEEDING, "1xx from TU"): (_S.PROCEEDING, (_SEND_RESPONSE,)),
    (_S.PROCEEDING, "2xx from TU"): (_S.ACCEPTED, (_SEND_RESPONSE, _start("L"))),
    (_S.PROCEEDING, "300-699 from TU"): (
        _S.COMPLETED,
        (_SEND_RESPONSE, _start("G"), _start("H")),
    ),
    (_S.PROCEEDING, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.ACCEPTED, "request"): (_S.ACCEPTED, ()),
    (_S.ACCEPTED, "2xx from TU"): (_S.ACCEPTED, (_SEND_RESPONSE,)),
    (_S.ACCEPTED, "ACK"): (_S.ACCEPTED, (_TO_TU,)),
    (_S.ACCEPTED, "transport error"): (_S.ACCEPTED, (_ERROR_TO_TU,)),
    (_S.ACCEPTED, "timer L"): (_S.TERMINATED, ()),
    (_S.COMPLETED, "request"): (_S.COMPLETED, (_RESEND_LAST,)),
    (_S.COMPLETED, "timer G"): (_S.COMPLETED, (_RESEND_LAST, _double("G"))),
    (_S.COMPLETED, "timer H"): (_S.TERMINATED, (_TIMEOUT_TO_TU,)),
    (_S.COMPLETED, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.COMPLETED, "ACK"): (_S.CONFIRMED, (_cancel("G"), _cancel("H"), _start("I"))),
    (_S.CONFIRMED, "timer I"): (_S.TERMINATED, ()),
}

# RFC 3261 Figure 8.  Retransmissions are absorbed while Trying (nothing to resend
# yet), answered with the last provisional while Proceeding and with the final
# response while Completed (§17.2.2).  Further final responses from the TU have no
# row: they are discarded.
_NON_INVITE_SERVER: Final[_Table] = {
    (_S.INIT, "request"): (_S.TRYING, (_TO_TU,)),
    (_S.TRYING, "request"): (_S.TRYING, ()),
    (_S.TRYING, "1xx from TU"): (_S.PROCEEDING, (_SEND_RESPONSE,)),
    (_S.TRYING, "2xx from TU"): (_S.COMPLETED, (_SEND_RESPONSE, _start("J"))),
    (_S.TRYING, "300-699 from TU"): (_S.COMPLETED, (_SEND_RESPONSE, _start("J"))),
    (_S.PROCEEDING, "request"): (_S.PROCEEDING, (_RESEND_LAST,)),
    (_S.PROCEEDING, "1xx from TU"): (_S.PROCEEDING, (_SEND_RESPONSE,)),
    (_S.PROCEEDING, "2xx from TU"): (_S.COMPLETED, (_SEND_RESPONSE, _start("J"))),
    (_S.PROCEEDING, "300-699 from TU"): (_S.COMPLETED, (_SEND_RESPONSE, _start("J"))),
    (_S.PROCEEDING, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.COMPLETED, "request"): (_S.COMPLETED, (_RESEND_LAST,)),
    (_S.COMPLETED, "transport error"): (_S.TERMINATED, (_ERROR_TO_TU,)),
    (_S.COMPLETED, "timer J"): (_S.TERMINATED, ()),
}


# --------------------------------------------------------------------------- machinery

# Looked up once: these are compared for every step of every transaction.
_TERMINATED: Final = State.TERMINATED
_ACCEPTED: Final = State.ACCEPTED
_COMPLETED: Final = State.COMPLETED
_CANCEL_OP: Final = _Op.CANCEL
_START_OP: Final = _Op.START
_TO_TU_OP: Final = _Op.TO_TU
_TIMER_NAMES: Final[tuple[TimerName, ...]] = typing.get_args(TimerName)
# Each timer's bit in a transaction's set of running timers (an int, in order).
_TIMER_BITS: Final[dict[TimerName, int]] = {name: 1 << i for i, name in enumerate(_TIMER_NAMES)}


def _initial_delays(config: TimerConfig, reliable: bool) -> dict[TimerName, float | None]:
    """Every timer's first delay (TimerConfig.initial) for one config and transport kind."""
    # By the config's identity, not its value: every transaction asks, and hashing
    # the frozen dataclass (its generated __hash__, interpreted) cost more than the
    # rest of a transaction's construction.  The entry holds the config, so its id
    # is not reused while the entry lives.
    key = (id(config), reliable)
    found = _delays.get(key)
    if found is not None and found[0] is config:
        return found[1]
    delays = {name: config.initial(name, reliable) for name in _TIMER_NAMES}
    if len(_delays) >= 64:
        _delays.clear()
    _delays[key] = (config, delays)
    return delays


_delays: Final[dict[tuple[int, bool], tuple[TimerConfig, dict[TimerName, float | None]]]] = {}


class _Transaction:
    """What the four machines share: the table walk and the timer bookkeeping."""

    _TABLE: ClassVar[_Table]

    def __init__(self, reliable: bool, config: TimerConfig) -> None:
        self.reliable: Final = reliable
        self.config: Final = config
        self.last_activity: float | None = None
        self._state = State.INIT
        # The running timers as bits of an int (_TIMER_BITS): one per live
        # transaction, and a set would be one more object for the cyclic GC to walk
        # for each of them (an INVITE's live for RFC 6026's 32 s).
        self._running = 0
        self._interval: dict[TimerName, float] = {}
        self._initial = _initial_delays(config, reliable)

    @property
    def state(self) -> State:
        return self._state

    def timer_fired(self, name: TimerName, now: float) -> list[Action]:
        """A timer started by a :class:`StartTimer` of this transaction has expired."""
        self.last_activity = now
        return self._fire(name)

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send a message of this transaction."""
        self.last_activity = now
        return self._handle("transport error", None)

    def _handle(self, event: Event, message: Request | Response | None) -> list[Action]:
        row = self._TABLE.get((self._state, event))
        if row is None:
            return []
        next_state, steps = row
        self._state = next_state
        out: list[Action] = []
        zero: list[TimerName] = []
        for step in steps:
            self._do(step, message, out, zero)
        if next_state is _TERMINATED:
            running = self._running
            if running:
                out.extend(CancelTimer(n) for n, bit in _TIMER_BITS.items() if running & bit)
            self._running = 0
            out.append(_TERMINATED_ACTION)
        # Rule 4: a zero-length timer fires now, through its own row.
        for name in zero:
            out.extend(self._fire(name))
        return out

    def _fire(self, name: TimerName) -> list[Action]:
        bit = _TIMER_BITS[name]
        if not self._running & bit:
            return []  # cancelled meanwhile: the adapter lost a race (rule 3)
        self._running &= ~bit
        return self._handle(cast(Event, f"timer {name}"), None)

    def _do(
        self,
        step: _Step,
        message: Request | Response | None,
        out: list[Action],
        zero: list[TimerName],
    ) -> None:
        op, name = step.op, step.timer
        if name is not None:
            if op is _CANCEL_OP:
                bit = _TIMER_BITS[name]
                if self._running & bit:
                    self._running &= ~bit
                    out.append(CancelTimer(name))
                return
            if op is _START_OP:
                delay = self._initial[name]
            elif op is _Op.DOUBLE:
                delay = 2 * self._interval[name]
                if name != "A":
                    # §17.1.2.2 (E), §17.2.1 (G): capped at T2.  Timer A is not capped;
                    # Timer B ends the doubling (§17.1.1.2).
                    delay = min(delay, self.config.t2)
            else:  # AT_T2
                delay = self.config.t2
            if delay is None:
                return
            self._interval[name] = delay
            self._running |= _TIMER_BITS[name]
            if delay == 0:
                zero.append(name)
            else:
                out.append(StartTimer(name, delay))
            return
        if op is _TO_TU_OP:  # the commonest step, answered before the _act chain
            assert message is not None
            out.append(DeliverToTU(message))
            return
        self._act(op, message, out)

    def _act(self, op: _Op, message: Request | Response | None, out: list[Action]) -> None:
        if op is _Op.TO_TU:
            assert message is not None
            out.append(DeliverToTU(message))
        elif op is _Op.TIMEOUT_TO_TU:
            out.append(_TIMEOUT_ACTION)
        elif op is _Op.ERROR_TO_TU:
            out.append(_TRANSPORT_ERROR_ACTION)
        else:
            raise AssertionError(f"{op} in a {type(self).__name__} table")


# -------------------------------------------------------------------------- clients


class _ClientTransaction(_Transaction):
    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
    ) -> None:
        via = request.top_via
        if via.branch is None or not via.branch.startswith(MAGIC_COOKIE):
            raise ValueError("a client request needs a top Via with an RFC 3261 branch")
        if reliable is None:
            reliable = is_reliable(via.transport)
        super().__init__(reliable, config or TimerConfig())
        self._request: Request | None = request
        #: The key :func:`client_key` gives for responses to this transaction (§17.1.3).
        self.key: Final[TransactionKey] = (via.branch.lower(), request.method)
        untrack_kept(request)

    @property
    def request(self) -> Request:
        """The request this transaction sends.  An INVITE transaction lets go of it
        once Accepted (RFC 6026 §8.4): nothing is sent from there, and the request
        would otherwise live on for Timer M's 32 s with every call."""
        if self._request is None:
            raise RuntimeError("an Accepted INVITE transaction has let go of its request")
        return self._request

    def start(self, now: float) -> list[Action]:
        """Send the request: the entry arrow of Figures 5 and 6."""
        self.last_activity = now
        return self._handle("start", None)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        """A response whose :func:`client_key` is this transaction's ``key``."""
        self.last_activity = now
        if response.status < 200:
            event: Event = "1xx"
        elif response.status < 300:
            event = "2xx"
        else:
            event = "300-699"
        out = self._handle(event, response)
        if self._state is _ACCEPTED:
            self._request = None
        return out

    def _act(self, op: _Op, message: Request | Response | None, out: list[Action]) -> None:
        if op is _Op.SEND_REQUEST:
            out.append(Send(self.request))
        else:
            super()._act(op, message, out)


class InviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.1, Figure 5, with RFC 6026 §8.4 (Accepted, Timer M)."""

    _TABLE = _INVITE_CLIENT

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("InviteClientTransaction needs an INVITE")
        super().__init__(request, reliable=reliable, config=config)
        self._ack: Request | None = None

    def _act(self, op: _Op, message: Request | Response | None, out: list[Action]) -> None:
        if op is _Op.SEND_ACK:
            if self._ack is None:
                assert isinstance(message, Response)
                self._ack = build_ack(self.request, message)
            # A retransmitted final response is answered with the same ACK.
            out.append(Send(self._ack))
        else:
            super()._act(op, message, out)


class NonInviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.2, Figure 6."""

    _TABLE = _NON_INVITE_CLIENT

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"{request.method} does not make a non-INVITE transaction")
        super().__init__(request, reliable=reliable, config=config)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx final response to ``invite`` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and the CSeq number are the INVITE's, the CSeq method is
    ACK, To is the response's (with the tag the server added), the only Via is the
    INVITE's top Via (so the ACK matches the server transaction, §17.2.3) and the Route
    headers are the INVITE's.  No body.
    """
    headers: list[tuple[str, str]] = [("Via", str(invite.top_via))]
    headers += [("Route", route) for route in invite.headers.get_all("Route")]
    headers += [
        ("Max-Forwards", "70"),
        ("From", _required(invite, "From")),
        ("To", _required(response, "To")),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} ACK"),
        ("Content-Length", "0"),
    ]
    return Request("ACK", invite.uri, headers)


# -------------------------------------------------------------------------- servers


class _ServerTransaction(_Transaction):
    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
    ) -> None:
        via = request.top_via
        if reliable is None:
            reliable = is_reliable(via.transport)
        super().__init__(reliable, config or TimerConfig())
        self.request: Final = request
        #: :func:`server_key` of the request that created the transaction (§17.2.3).
        self.key: Final[TransactionKey] = server_key(request)
        self._last_response: Response | None = None
        untrack_kept(request)

    def receive_request(self, request: Request, now: float) -> list[Action]:
        """The creating request (first call), a retransmission of it, or an ACK."""
        self.last_activity = now
        return self._handle("ACK" if request.method == "ACK" else "request", request)

    def send_response(self, response: Response, now: float) -> list[Action]:
        """A response from the TU for this transaction's request."""
        self.last_activity = now
        if response.status < 200:
            event: Event = "1xx from TU"
        elif response.status < 300:
            event = "2xx from TU"
        else:
            event = "300-699 from TU"
        return self._handle(event, response)

    def _act(self, op: _Op, message: Request | Response | None, out: list[Action]) -> None:
        if op is _Op.SEND_RESPONSE:
            assert isinstance(message, Response)
            # Accepted never resends (RFC 6026: the TU retransmits its 2xx), so the
            # 2xx is not kept for the 32 s of Timer L: one message less per live call.
            # A final response is kept while Completed (Timer H or J): out of the
            # GC's view then; a provisional goes with the final, soon after.
            self._last_response = message if self._state is not _ACCEPTED else None
            if self._state is _COMPLETED:
                untrack_kept(message)
            out.append(Send(message))
        elif op is _Op.RESEND_LAST:
            if self._last_response is not None:
                out.append(Send(self._last_response))
        else:
            super()._act(op, message, out)


class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.1, Figure 7, with RFC 6026 §8.7 (Accepted, Timer L).

    ``send_trying``: §17.2.1 has the transaction send 100 (Trying) unless the TU will
    answer within 200 ms.  Rather than run a 200 ms timer, the transaction sends the
    100 at once when ``send_trying`` is true (the default; §17.2.1 allows it in every
    case), and never when it is false, for a TU that promises its own provisional or
    final response within 200 ms.  The 100 copies Via, From, To (without adding a tag,
    §17.2.1), Call-ID, CSeq and Timestamp (§8.2.6.1) from the INVITE.
    """

    _TABLE = _INVITE_SERVER

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        send_trying: bool = True,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("InviteServerTransaction needs an INVITE")
        super().__init__(request, reliable=reliable, config=config)
        self.send_trying: Final = send_trying

    def _act(self, op: _Op, message: Request | Response | None, out: list[Action]) -> None:
        if op is _Op.SEND_TRYING:
            if self.send_trying:
                trying = build_trying(self.request)
                self._last_response = trying
                out.append(Send(trying))
        else:
            super()._act(op, message, out)


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2, Figure 8."""

    _TABLE = _NON_INVITE_SERVER

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"{request.method} does not make a non-INVITE transaction")
        super().__init__(request, reliable=reliable, config=config)


def build_trying(invite: Request) -> Response:
    """The 100 (Trying) an INVITE server transaction sends (§17.2.1).

    Built as §8.2.6 says, To copied without a tag (§17.2.1), Timestamp copied (§8.2.6.1).
    """
    timestamp = invite.headers.get("Timestamp")
    extra = [("Timestamp", timestamp)] if timestamp is not None else []
    return make_response(invite, 100, headers=extra)


def client_transaction(
    request: Request,
    *,
    reliable: bool | None = None,
    config: TimerConfig | None = None,
) -> InviteClientTransaction | NonInviteClientTransaction:
    """The client transaction for ``request``, by its method (ACK makes none, §17)."""
    if request.method == "INVITE":
        return InviteClientTransaction(request, reliable=reliable, config=config)
    return NonInviteClientTransaction(request, reliable=reliable, config=config)


def server_transaction(
    request: Request,
    *,
    reliable: bool | None = None,
    config: TimerConfig | None = None,
    send_trying: bool = True,
) -> InviteServerTransaction | NonInviteServerTransaction:
    """The server transaction for a request that matched none (ACK makes none, §17)."""
    if request.method == "INVITE":
        return InviteServerTransaction(
            request, reliable=reliable, config=config, send_trying=send_trying
        )
    return NonInviteServerTransaction(request, reliable=reliable, config=config)


# ------------------------------------------------------------------------- matching

#: A hashable transaction identifier; compare keys only with keys of the same function.
TransactionKey = tuple[str | int | None, ...]


def client_key(response: Response) -> TransactionKey:
    """The client transaction a response belongs to (§17.1.3).

    Top Via branch and CSeq method: the method tells a CANCEL's responses from those
    of the INVITE it cancels, which share the branch.  Branch values are compared
    case-insensitively: §7.3.1 makes parameter values case-insensitive unless the
    header's definition says otherwise, and §20.42 does not.  Raises
    :class:`~sip.errors.SipError` when the response has no Via branch (it cannot be
    ours: every request we send carries one).
    """
    branch = response.top_via.branch
    if branch is None:
        raise SipError("response without a Via branch")
    return (branch.lower(), response.cseq.method)


def server_key(request: Request) -> TransactionKey:
    """The server transaction a request belongs to (§17.2.3).

    With an RFC 3261 branch (magic cookie, case-sensitive): branch (case-insensitive,
    see :func:`client_key`), sent-by (host case-insensitive, port as written: a
    retransmission repeats it) and method, with ACK counted as INVITE.  A CANCEL has
    its own key; :func:`cancel_target_key` finds the INVITE it cancels.

    Otherwise the RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq number and
    method and the top Via (sent-protocol, sent-by and branch), plus the To tag for
    methods other than INVITE and ACK.  Simplification: §17.2.3 matches an ACK by the
    To tag of the response the transaction sent, which a key cannot see; the To tag
    is instead left out of INVITE and ACK keys.  Two INVITEs that differ only in their
    To tag are not told apart (a To tag means a re-INVITE, which has its own CSeq), and
    an ACK for a 2xx that happens to match lands in Accepted, which passes it to the TU
    as RFC 6026 §8.7 asks.  The Request-URI is compared as text: §19.1.4 equivalence
    is not needed to match a retransmission against its original.
    """
    return _server_key(request, "INVITE" if request.method == "ACK" else request.method)


def cancel_target_key(cancel: Request) -> TransactionKey:
    """The key of the INVITE server transaction a CANCEL cancels (§9.2).

    §9.2: match "assuming that the request method is anything but CANCEL or ACK"; a
    CANCEL repeats the Request-URI, Call-ID, To, From, CSeq number and top Via of the
    request it cancels (§9.1), so its key with the method INVITE is the INVITE's key.
    """
    return _server_key(cancel, "INVITE")


def _server_key(request: Request, method: str) -> TransactionKey:
    via = request.top_via
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch.lower(), via.host.lower(), via.port, method)
    to_tag = None if method == "INVITE" else request.to.tag
    return (
        "2543",
        str(request.uri),
        request.from_.tag,
        to_tag,
        request.call_id,
        request.cseq.number,
        method,
        via.transport,
        via.host.lower(),
        via.port,
        branch,
    )


# ------------------------------------------------------------------------- helpers


def _required(message: Request | Response, name: str) -> str:
    value = message.headers.get(name)
    if value is None:
        raise SipError(f"missing {name}")
    return value
