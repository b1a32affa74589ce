"""Call admission control: how many calls the edge takes on at once and per second.

Per-source limits (edge/admission.py) stop one peer; these stop the sum of them before
the process saturates.  A core past its capacity does not fail a few calls: every
call's transactions fall behind, retransmissions pile on, and the calls time out
together (docs/operations.md, Scaling).  Refusing the excess with 503 keeps the
rest whole, and tells a carrier's proxy to try its next server (RFC 3263 section 4.3).

Sans-I/O: the proxy asks :meth:`CallGate.refuse` for each new call (an INVITE
outside a dialog, once admitted) with the live calls and the time, and answers 503
when it names a limit.  In-dialog requests never ask: a BYE or a re-INVITE of a call
already taken is never refused, so the calls in progress end as they should.
"""

from __future__ import annotations

from typing import Final

#: What :meth:`CallGate.refuse` names: ``[limits] max_calls`` or ``max_cps``.
CALLS: Final = "calls"
CPS: Final = "cps"
LIMITS: Final = (CALLS, CPS)


class CallGate:
    """``max_calls`` live calls at most, and ``max_cps`` new calls per second (a
    token bucket that holds one second's worth); 0 turns a limit off."""

    __slots__ = ("max_calls", "max_cps", "_tokens", "_stamp")

    def __init__(self, max_calls: int = 0, max_cps: int = 0) -> None:
        self.max_calls = max_calls
        self.max_cps = max_cps
        self._tokens = float(max_cps)
        self._stamp: float | None = None

    @property
    def enabled(self) -> bool:
        return self.max_calls > 0 or self.max_cps > 0

    def refuse(self, live_calls: int, now: float) -> str | None:
        """The limit a new call would pass (:data:`CALLS`, :data:`CPS`), taking
        nothing; else ``None``, and the call takes its token."""
        if self.max_calls and live_calls >= self.max_calls:
            return CALLS
        rate = self.max_cps
        if rate:
            stamp = self._stamp
            # A clock stepping back neither refills nor moves the stamp back.
            if stamp is None or now > stamp:
                if stamp is not None:
                    self._tokens = min(float(rate), self._tokens + (now - stamp) * rate)
                self._stamp = now
            # Float dust: many small refills may leave 0.999999999 for 1.
            if self._tokens < 1.0 - 1e-9:
                return CPS
            self._tokens -= 1.0
        return None
