"""The relay's UDP port pool: even/odd RTP/RTCP pairs over a configured range.

Rules of this file:

- The unit of allocation is a pair: an even RTP port and the odd port after it for
  RTCP (RFC 3550 §11).  A leg that multiplexes RTCP (``a=rtcp-mux``, RFC 5761) binds
  only the even port, and the odd one stays reserved with it: the offerer of
  rtcp-mux must still be ready to receive RTCP on the next port if the answer
  declines it (RFC 5761 §5.1.1), and one kind of unit keeps the free list one deque.
- Binding the sockets is part of allocating: a port that something else on the
  host holds fails to bind, is skipped, and goes to quarantine to be tried again
  later, so it costs one attempt per quarantine period, not one per call.
- Freed pairs wait in quarantine (default 30 s) before reuse, so that late packets
  of an ended call never reach the next call given the same port.
- Bounded work per call: a deque of free pairs, a FIFO of quarantined pairs (every
  pair waits the same time, so the FIFO is also ordered by expiry), and at most
  ``max_attempts`` binds per allocation.  Nothing scans the range after start-up.
- The clock is passed in (``clock=``), so tests drive quarantine with a fake one.
- :class:`PortsExhausted` is the one error of allocation; the proxy answers the
  INVITE with 503.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RANGE = (10000, 60000)
DEFAULT_QUARANTINE = 30.0


class PortsExhausted(Exception):
    """No free RTP port pair in the range: answer the call with 503."""


@dataclass(frozen=True, slots=True)
class PortStats:
    """Counters of the pool, in ports (a pair counts two, rtcp-mux or not)."""

    in_use: int
    free: int
    quarantined: int
    bind_failures: int


@dataclass(frozen=True, slots=True)
class PortAllocation:
    """One allocated pair: the bound RTP socket and, without rtcp-mux, the RTCP one.

    The sockets are non-blocking and belong to the caller, who closes them (or hands
    them to asyncio, whose transports close them) and then gives the allocation back
    with :meth:`PortPool.release`.
    """

    host: str
    rtp_port: int
    rtp_socket: socket.socket
    rtcp_socket: socket.socket | None

    @property
    def rtcp_port(self) -> int:
        """The RTCP port: the odd one after RTP (reserved even when multiplexed)."""
        return self.rtp_port + 1

    @property
    def rtcp_mux(self) -> bool:
        return self.rtcp_socket is None

    def close(self) -> None:
        """Close the sockets (when they were not handed to asyncio)."""
        self.rtp_socket.close()
        if self.rtcp_socket is not None:
            self.rtcp_socket.close()


class PortPool:
    """Even/odd port pairs on ``host`` within ``port_range`` (both ends inclusive).

    ``allocate(rtcp_mux=...)`` binds and returns a :class:`PortAllocation`;
    ``release(allocation)`` puts its pair into quarantine.  ``clock`` is a monotonic
    clock in seconds; ``rng`` shuffles the initial order, so that the ports of the
    next call are not predictable from the last (a cheap hurdle for RTP injection).
    """

    def __init__(
        self,
        host: str,
        port_range: tuple[int, int] = DEFAULT_RANGE,
        quarantine: float = DEFAULT_QUARANTINE,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_attempts: int = 32,
    ) -> None:
        low, high = port_range
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"port range {low}-{high} is not within 1024-65535")
        if quarantine < 0:
            raise ValueError("quarantine must not be negative")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        first = low + (low % 2)  # the first even port
        bases = list(range(first, high, 2))  # base + 1 <= high
        if not bases:
            raise ValueError(f"port range {low}-{high} holds no even/odd pair")
        (rng or random.Random()).shuffle(bases)
        self.host = host
        self.family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        self.port_range = (low, high)
        self.quarantine = quarantine
        self.clock = clock
        self.max_attempts = max_attempts
        self._free: deque[int] = deque(bases)
        self._quarantined: deque[tuple[float, int]] = deque()  # (release time, base)
        self._in_use: set[int] = set()
        self._bind_failures = 0

    # ---------------------------------------------------------------- allocate

    def allocate(self, *, rtcp_mux: bool = False) -> PortAllocation:
        """Bind a free pair (only its RTP port with ``rtcp_mux``) or raise
        :class:`PortsExhausted`."""
        self._expire(self.clock())
        for _ in range(min(self.max_attempts, len(self._free))):
            base = self._free.popleft()
            try:
                rtp = self._bind(base)
            except OSError:
                self._skip(base)
                continue
            rtcp: socket.socket | None = None
            if not rtcp_mux:
                try:
                    rtcp = self._bind(base + 1)
                except OSError:
                    rtp.close()
                    self._skip(base)
                    continue
            self._in_use.add(base)
            return PortAllocation(self.host, base, rtp, rtcp)
        raise PortsExhausted(
            f"no free RTP port pair on {self.host} in {self.port_range[0]}-{self.port_range[1]}"
            f" ({len(self._in_use)} pairs in use, {len(self._quarantined)} quarantined)"
        )

    def release(self, allocation: PortAllocation | int) -> None:
        """Give a pair back (by allocation or by RTP port); it is reused after the
        quarantine.  Releasing a pair that is not in use is ignored."""
        base = allocation if isinstance(allocation, int) else allocation.rtp_port
        if base not in self._in_use:
            return
        self._in_use.discard(base)
        self._quarantined.append((self.clock(), base))

    # ---------------------------------------------------------------- counters

    def stats(self) -> PortStats:
        self._expire(self.clock())
        return PortStats(
            in_use=2 * len(self._in_use),
            free=2 * len(self._free),
            quarantined=2 * len(self._quarantined),
            bind_failures=self._bind_failures,
        )

    # ---------------------------------------------------------------- internals

    def _expire(self, now: float) -> None:
        """Move pairs whose quarantine has run out back to the free deque (oldest
        first: the FIFO is ordered by release time)."""
        quarantined = self._quarantined
        while quarantined and now - quarantined[0][0] >= self.quarantine:
            self._free.append(quarantined.popleft()[1])

    def _skip(self, base: int) -> None:
        """A pair that did not bind: try it again after a quarantine period."""
        self._bind_failures += 1
        self._quarantined.append((self.clock(), base))

    def _bind(self, port: int) -> socket.socket:
        # No SO_REUSEADDR: a port another socket holds must fail to bind.
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock
