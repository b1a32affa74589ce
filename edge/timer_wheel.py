"""Many short-lived timers on one event-loop timer.

A proxied call starts about ten transaction timers (RFC 3261 §17: A or E, B or F,
then D, K, L or M), and most are cancelled or simply run out 32 s later.  Each
``loop.call_later`` costs a handle, a libuv timer and a copied context: three
objects the cyclic GC walks for as long as the timer waits, plus the heap work
to start and cancel it.  SIP's timers need a precision of milliseconds, not
microseconds, so this wheel files each timer under a tick of ``resolution``
seconds and keeps one loop timer armed for the earliest tick.

:meth:`TimerWheel.start` returns a ticket, the owner remembers the ticket of
each timer it considers running, and when an entry comes due the wheel hands
``(owner, name, ticket)`` to ``fire``, which ignores a ticket it no longer
holds.  The owner also hands a dropped ticket to :meth:`TimerWheel.cancel`,
once: the wheel counts the live entries of each tick, and a tick left with
none no longer wakes the loop.  Most timers are cancelled (A or E and B or F of
every transaction, a response or two later), and a lightly loaded proxy woke
for each: sipp over TLS at 50 calls/s made 9.0 wake-ups per call before, 6.1
after.  The wheel still keeps a cancelled entry, and its owner, until the tick
passes or reaches the front; the owner's ticket check stays the final word.

A timer never fires before its deadline (to the loop's clock).  One shorter
than a second (the retransmit timers) fires within a tick of it; a longer one
within 20 ticks (100 ms at the default resolution).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Any, Final

#: Fire callback: owner, timer name, ticket.
Fire = Callable[[Any, str, int], None]

#: Delays of at least _LONG seconds are filed to a multiple of _COARSE ticks.
_LONG: Final = 1.0
_COARSE: Final = 20

#: A ticket is its tick shifted left by _SEQ_BITS plus a sequence number, so that
#: cancel() finds the tick without a map from tickets (2**20 timers per tick).
_SEQ_BITS: Final = 20
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1


class _Slot:
    """One tick: its entries, flat (owner, name, ticket, owner, name, ticket, ...: no
    per-timer object to allocate and for the GC to walk), and how many of them are
    live (not cancelled).  One object per tick: a start or a cancel finds both
    with one lookup."""

    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.live = 0


class TimerWheel:
    """Timers filed by tick; one loop timer for the earliest tick that has any."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Fire, resolution: float = 0.005
    ) -> None:
        if not resolution > 0:
            raise ValueError("resolution must be > 0")
        self._loop = loop
        # Bound once: compiled, loop.time() is a generic method call each time.
        self._time: Callable[[], float] = loop.time
        self._fire = fire
        self._resolution = resolution
        # The ticks that have entries; a tick that ran (or is running) is gone.
        self._slots: dict[int, _Slot] = {}
        self._ticks: list[int] = []  # a heap of the keys of _slots
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0  # the tick _handle is set for
        self._done = -1  # every tick up to this one has fired
        self._ticket = 0
        self._running = False  # in _run: it arms the loop timer once, at the end

    def __len__(self) -> int:
        """Entries waiting, including those whose owner has since dropped them."""
        return sum(len(slot.entries) for slot in self._slots.values()) // 3

    def start(self, owner: Any, name: str, delay: float) -> int:
        """File a timer ``delay`` seconds from now; the ticket ``fire`` will get."""
        now = self._time()
        tick = math.ceil((now + delay) / self._resolution)
        if delay >= _LONG:
            # Timeouts and waits (B, F, H, D, J, K, L, M: 5 or 32 s) round up to a
            # coarse tick, so that those that run out share their wake-ups.
            tick = -(-tick // _COARSE) * _COARSE
        if tick <= self._done:
            # The loop may run a tick's callback a hair early; whatever is
            # started from it still waits for a later tick, never this run.
            tick = self._done + 1
        self._ticket = (self._ticket + 1) & _SEQ_MASK
        ticket = (tick << _SEQ_BITS) | self._ticket
        slot = self._slots.get(tick)
        if slot is None:
            slot = _Slot()
            self._slots[tick] = slot
            heapq.heappush(self._ticks, tick)
        live = slot.live
        slot.live = live + 1
        if live == 0 and not self._running and (self._handle is None or tick < self._armed):
            self._arm(tick, now)
        entries = slot.entries
        entries.append(owner)
        entries.append(name)
        entries.append(ticket)
        return ticket

    def cancel(self, ticket: int) -> None:
        """The owner dropped ``ticket``: its entry will fire stale, and if it was
        the last live one of its tick, that tick no longer wakes the loop.

        Call it at most once per ticket and not after the ticket fired: the wheel
        counts, it does not look the entry up.  (A ticket whose tick already ran
        is ignored, so cancelling from inside a ``fire`` callback is fine.)
        """
        tick = ticket >> _SEQ_BITS
        slot = self._slots.get(tick)
        if slot is None or slot.live <= 0:
            return  # its tick ran or is running
        if slot.live > 1:
            slot.live -= 1
            return
        slot.live = 0
        if self._running or self._handle is None or tick != self._armed:
            return
        # The armed tick is dead: arm for the first live one, if any.
        if self._drop_dead_front():
            self._arm(self._ticks[0], self._time())
        else:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Drop every entry and the loop timer; nothing fires after this."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._slots.clear()
        self._ticks.clear()

    def _arm(self, tick: int, now: float) -> None:
        """Set the loop timer for ``tick``; ``now`` is the loop's clock, read by the caller."""
        if self._handle is not None:
            self._handle.cancel()
        self._armed = tick
        # call_later, not call_at: uvloop's call_at is call_later with one more step
        # (a Python-level call with keywords), about half the cost of an arm.
        self._handle = self._loop.call_later(tick * self._resolution - now, self._run)

    def _run(self) -> None:
        self._handle = None
        # The armed tick is due: the loop ran its handle.  Any later tick whose
        # time has also passed (a busy loop runs late) goes in the same pass.
        due = max(self._armed, math.floor(self._time() / self._resolution))
        self._done = due
        ticks = self._ticks
        self._running = True
        try:
            while ticks and ticks[0] <= due:
                entries = self._slots.pop(heapq.heappop(ticks)).entries
                for i in range(0, len(entries), 3):
                    try:
                        self._fire(entries[i], entries[i + 1], entries[i + 2])
                    except Exception as exc:  # one owner's failure must not strand the rest
                        self._loop.call_exception_handler(
                            {"message": "timer wheel callback failed", "exception": exc}
                        )
        finally:
            self._running = False
            if self._drop_dead_front() and self._handle is None:
                # Read again: the callbacks above took time.
                self._arm(ticks[0], self._time())

    def _drop_dead_front(self) -> bool:
        """Drop the ticks at the front with no live entry (theirs would only fire
        stale, and need no wake-up of their own); whether any tick is left."""
        ticks = self._ticks
        slots = self._slots
        while ticks and slots[ticks[0]].live == 0:
            del slots[heapq.heappop(ticks)]
        return bool(ticks)
