"""What the proxy keeps per transaction and per proxied request.

The transaction machines (``sip/transaction.py``) hold protocol state; these
records hold what the proxy needs around them: where answers go, the timer
handles, and for a proxied request the hops still to try and its call's
media.  They are plain records: the logic lives in :mod:`edge.proxy` and
:mod:`edge.proxy_media`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.admission import Identity
from edge.dialogs import Dialog
from edge.transport import Destination, Source
from sip.message import Request, Response
from sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
)


@dataclass(eq=False, slots=True, init=False)
class _ServerCtx:
    txn: InviteServerTransaction | NonInviteServerTransaction
    source: Source
    reply: Destination
    timers: dict[str, int] = field(default_factory=dict)
    forward: _Forward | None = None
    identity: Identity | None = None  # who sent the request (edge/admission.py)

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        txn: InviteServerTransaction | NonInviteServerTransaction,
        source: Source,
        reply: Destination,
        timers: dict[str, int] | None = None,
        forward: _Forward | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.txn = txn
        self.source = source
        self.reply = reply
        self.timers = {} if timers is None else timers
        self.forward = forward
        self.identity = identity


@dataclass(eq=False, slots=True, init=False)
class _ClientCtx:
    txn: InviteClientTransaction | NonInviteClientTransaction
    dest: Destination
    forward: _Forward | None
    target: Any = None  # routing.Target when the hop came from the router
    on_final: Callable[[Response | None], None] | None = None
    timers: dict[str, int] = field(default_factory=dict)
    provisional: bool = False
    cancelled: bool = False

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        txn: InviteClientTransaction | NonInviteClientTransaction,
        dest: Destination,
        forward: _Forward | None,
        target: Any = None,
        on_final: Callable[[Response | None], None] | None = None,
        timers: dict[str, int] | None = None,
        provisional: bool = False,
        cancelled: bool = False,
    ) -> None:
        self.txn = txn
        self.dest = dest
        self.forward = forward
        self.target = target
        self.on_final = on_final
        self.timers = {} if timers is None else timers
        self.provisional = provisional
        self.cancelled = cancelled


@dataclass(eq=False, slots=True, init=False)
class _Forward:
    """One proxied request and the hops left to try for it (serial failover)."""

    server: _ServerCtx
    request: Request  # Route-processed copy, before this hop's Via and Record-Route
    hops: list[tuple[Destination, Any]]
    record_route: bool
    client: _ClientCtx | None = None
    best: Response | None = None
    failures: list[str] | None = None  # made on the first failure: most calls have none
    final_sent: bool = False
    cancelled: bool = False
    # Timer C's ticket on the proxy's timer wheel, while it runs.
    timer_c: int | None = None
    # When Timer C runs out (loop time): a provisional pushes it back without a new
    # timer; the one running checks it when it fires (§16.7 step 2).
    timer_c_due: float = 0.0
    dialog: Dialog | None = None
    # Media: the call's relay session, which side sent the offer, and the
    # answers already rewritten (a retransmitted 2xx repeats its SDP).
    media_key: str | None = None
    answer_from: str = "callee"
    answers: dict[bytes, bytes] | None = None  # made with the first rewritten answer
    media_task: asyncio.Task[None] | None = None

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        server: _ServerCtx,
        request: Request,
        hops: list[tuple[Destination, Any]],
        record_route: bool,
        client: _ClientCtx | None = None,
        best: Response | None = None,
        failures: list[str] | None = None,
        final_sent: bool = False,
        cancelled: bool = False,
        timer_c: int | None = None,
        timer_c_due: float = 0.0,
        dialog: Dialog | None = None,
        media_key: str | None = None,
        answer_from: str = "callee",
        answers: dict[bytes, bytes] | None = None,
        media_task: asyncio.Task[None] | None = None,
    ) -> None:
        self.server = server
        self.request = request
        self.hops = hops
        self.record_route = record_route
        self.client = client
        self.best = best
        self.failures = failures
        self.final_sent = final_sent
        self.cancelled = cancelled
        self.timer_c = timer_c
        self.timer_c_due = timer_c_due
        self.dialog = dialog
        self.media_key = media_key
        self.answer_from = answer_from
        self.answers = answers
        self.media_task = media_task
