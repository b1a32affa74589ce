"""Overload protection: refuse new calls while the edge cannot keep up.

A proxy past its capacity that goes on accepting calls fails most of them.  The
requests wait in the kernel's receive queues, the answers leave too late, the
callers retransmit, and the retransmissions queue up behind the rest: in the
benchmark (issue 3) sipedge over TLS failed 26% of its calls at 1800 calls per
second, its maximum being 1600.  RFC 3261 gives an overloaded server 503 with
Retry-After (§21.5.4): a carrier then tries its next route, and the calls the
edge already holds keep getting their answers in time.

The measure is how long a message waits before the edge reads it, not how much
waits: ten thousand datagrams of a banned flooder cost a lookup each and drain
in milliseconds, while a few hundred new calls take a second.  Two estimates,
the larger counts:

- UDP: a probe.  Every ``INTERVAL`` the watch sends a keepalive-shaped datagram
  from a socket of its own to a UDP listener (``TransportLayer.watch_probe``)
  and times how long it takes to be read; a probe still unread counts for its
  age.  It waits behind everything queued on that socket, and behind the loop.
- Connections (TCP, TLS, WebSocket): what their receive queues hold, divided by
  the rate the loop read them at over the last interval.  The queues count the
  kernel's buffers, headers included, so this errs high, by up to about 2x.

:class:`OverloadGate` is the decision, with no I/O: delays in, changes out.  It
starts refusing once the delay has been at or over ``limits.overload_delay`` for
two samples in a row (one slow moment, a collection or a burst drained at once,
is no overload) and stops once it has stayed under a quarter of that for
``CALM_SECONDS``.  Only new calls are refused: requests within a dialog, CANCEL,
ACK and every response still go through, since refusing them would fail calls
the edge has already taken on.  :func:`watch` is the asyncio loop feeding it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Final

#: Seconds between samples.
INTERVAL: Final = 0.1
#: Samples in a row at or over the threshold before new calls are refused.
ENTER_SAMPLES: Final = 2
#: Seconds the delay must stay under a quarter of the threshold to end an episode.
CALM_SECONDS: Final = 2.0
#: What a probe carries: a keepalive (RFC 5626 §3.5.1), which the transport drops.
PROBE: Final = b"\r\n\r\n"
#: Connections that delivered data within this many seconds are watched.
ACTIVE_SECONDS: Final = 1.0

START: Final = "overload_start"
END: Final = "overload_end"


class OverloadGate:
    """Whether new calls are refused now, from samples of how late the loop is."""

    def __init__(self, threshold: float, retry_after: int) -> None:
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        #: Seconds of delay at which new calls are refused.
        self.threshold = threshold
        #: The Retry-After value of the 503s, in seconds.
        self.retry_after = retry_after
        self.shedding = False
        self.episodes = 0
        #: The largest delay seen during the current (or last) episode, in seconds.
        self.peak = 0.0
        self._over = 0
        self._calm_since: float | None = None

    def sample(self, now: float, delay: float) -> str | None:
        """Take one sample; ``START`` or ``END`` when the state changes, else None."""
        if not self.shedding:
            self._over = self._over + 1 if delay >= self.threshold else 0
            if self._over < ENTER_SAMPLES:
                return None
            self.shedding = True
            self.episodes += 1
            self.peak = delay
            self._calm_since = None
            return START
        self.peak = max(self.peak, delay)
        if delay >= self.threshold / 4:
            self._calm_since = None
            return None
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since < CALM_SECONDS:
            return None
        self.shedding = False
        self._over = 0
        self._calm_since = None
        return END


class _UdpProbe:
    """Times keepalive-shaped datagrams sent to a UDP listener of the transport."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._target: tuple[str, int] | None = transport.probe_target()
        self._sock: socket.socket | None = None
        self.sent_at: float | None = None
        self.last = 0.0
        if self._target is None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        transport.watch_probe(sock.getsockname()[:2], self._arrived)

    def _arrived(self) -> None:
        if self.sent_at is not None:
            self.last = self._loop.time() - self.sent_at
            self.sent_at = None

    def delay(self, now: float) -> float:
        """The last probe's wait, or the age of the one still unread if longer;
        sends the next probe once the last has arrived."""
        if self.sent_at is not None:
            return max(self.last, now - self.sent_at)
        if self._sock is not None and self._target is not None:
            try:
                self._sock.sendto(PROBE, self._target)
                self.sent_at = now
            except OSError:
                pass  # a full socket buffer: the next interval tries again
        return self.last

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watch(
    gate: OverloadGate,
    transport: Any,
    log: Callable[..., Any],
    interval: float = INTERVAL,
) -> None:
    """Sample the transport's delay every ``interval`` s into ``gate``, logging each
    change; runs until cancelled."""
    loop = asyncio.get_running_loop()
    probe = _UdpProbe(transport, loop)
    read = transport.stream_bytes_read
    try:
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            udp = probe.delay(now)
            was, read = read, transport.stream_bytes_read
            queued = transport.stream_backlog(now - ACTIVE_SECONDS)
            rate = (read - was) / interval
            stream = queued / rate if rate > 0 else (interval if queued else 0.0)
            delay = max(udp, stream)
            change = gate.sample(now, delay)
            if change == START:
                log(
                    "warning",
                    START,
                    delay_ms=round(delay * 1000),
                    udp_delay_ms=round(udp * 1000),
                    stream_backlog_bytes=queued,
                    retry_after=gate.retry_after,
                )
            elif change == END:
                log("info", END, peak_delay_ms=round(gate.peak * 1000), episodes=gate.episodes)
    finally:
        transport.watch_probe(None, lambda: None)
        probe.close()
