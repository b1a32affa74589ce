"""The relay's fast path: the C data plane of :mod:`media._srtp` behind a typed API.

Python decides, C moves packets (docs: /work/shared/ARCHITECTURE.md, issue 7).  A
:class:`FastPath` owns loop threads (one per CPU the process may use, by default)
that forward RTP/RTCP between *legs* without the GIL: epoll over the legs' sockets,
``recvmmsg``/``sendmmsg`` in batches of 32, SRTP unprotect and protect in place with
the C core of :mod:`media.srtp`, counters per leg.

    fp = FastPath()                       # loops = len(os.sched_getaffinity(0))
    fp.start()
    a = fp.add_leg(sock_a)                # the plane dup()s the fd; asyncio must not read it
    b = fp.add_leg(sock_b)
    fp.pair(a, b)                         # fp.pair(a, a): an echo leg
    fp.set_crypto(b, inbound=Context(..., direction="inbound"), outbound=Context(...))
    fp.set_addresses(a, rtp_source=caller, rtp_destination=caller)
    fp.attach(asyncio.get_running_loop(), on_punted)   # punted datagrams, in batches
    ...
    fp.remove_leg(a)                      # final counters; then close the socket
    fp.close()                            # joins the loops, closes the plane's fds

The table only forwards media from a leg's *accepted source* (its latched address):
everything else is punted to Python whole, with STUN and DTLS, so latching and its
proofs (:mod:`media.latching`), ICE and DTLS stay in Python.  Python forwards a
punted datagram it accepts with :meth:`FastPath.forward` (the C steps from decryption
on, with the C contexts: a :class:`media._srtp.Context` given to the plane belongs to
it and must not be called from Python meanwhile), then latches with
:meth:`FastPath.set_addresses` so the next packets stay in C, once Python has handled
what the leg punted before them (its next :meth:`FastPath.drain` says so): until then
they queue behind those, in order.

Modes follow from the crypto of the two legs of a pair: ``rtp`` (no context),
``srtp-in`` (the receiving leg has an inbound context: SRTP -> RTP), ``srtp-out``
(the peer has an outbound one: RTP -> SRTP), both (SRTP -> SRTP with new keys).
Counters: every datagram a loop reads is ``received`` (and forwarded or dropped by
reason) or ``to_python``; ``auth_failed`` and ``replay`` are counted in C.  Each leg
punts within a budget (:data:`PUNT_RATE` per second, :data:`PUNT_BURST` at once), one
for datagrams from the host its destination names (its endpoint) and one for any other
source, so that a stranger's spray does not starve the endpoint's own punts; past it
the plane drops (``punt_limited``), and a full ring drops too (``punt_overflow``).
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from media import _srtp
from media.rtp import PacketKind

Address = tuple[str, int]

DROP_REASONS: Final[tuple[str, ...]] = _srtp.PLANE_DROPS
MAX_DATAGRAM: Final[int] = _srtp.PLANE_MAX_DATAGRAM
#: The per-leg punt budget (punts per second, burst): why these numbers, fastpath.h.
PUNT_RATE: Final[float] = _srtp.PLANE_PUNT_RATE
PUNT_BURST: Final[float] = _srtp.PLANE_PUNT_BURST


class Mode(enum.StrEnum):
    """What a pair of legs does to media from ``leg`` to its peer."""

    RTP = "rtp"
    SRTP_IN = "srtp-in"  # SRTP in on this leg, plain out to the peer
    SRTP_OUT = "srtp-out"  # plain in, SRTP out to the peer
    BOTH = "both"  # SRTP in, SRTP out under the peer's keys


def default_loops() -> int:
    """The CPUs this process may run on (``sched_getaffinity``), at least one."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True, slots=True)
class PlaneCounters:
    """One leg's counters in the C plane.  ``*_in``: from the leg's endpoint and
    forwarded; ``*_out``: sent to its endpoint; ``to_python``: punted; ``drops``: by
    reason (:data:`DROP_REASONS`).  ``last_rx`` is ``time.monotonic()`` of the last
    packet that passed the inbound step, ``None`` before one."""

    received: int
    packets_in: int
    bytes_in: int
    rtcp_in: int
    to_python: int
    packets_out: int
    bytes_out: int
    rtcp_out: int
    send_errors: int
    last_rx: float | None
    last_ssrc: int
    drops: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlaneCounters:
        return cls(**d)

    @property
    def auth_failures(self) -> int:
        return self.drops.get("auth_failed", 0)

    @property
    def replays(self) -> int:
        return self.drops.get("replay", 0)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


@dataclass(frozen=True, slots=True)
class Punted:
    """A datagram the plane handed to Python: STUN, DTLS, or RTP/RTCP from a source
    that is not the leg's accepted one."""

    leg: int
    kind: PacketKind
    on_rtcp_socket: bool
    data: bytes
    source: Address


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What :meth:`FastPath.forward` did: ``verdict`` is ``"forwarded"``,
    ``"send_error"`` or a drop reason; ``authenticated``: the inbound step passed
    (plain RTP always does), the proof SRTP latching needs; ``sent``: bytes sent."""

    verdict: str
    authenticated: bool
    sent: int

    @property
    def forwarded(self) -> bool:
        return self.verdict == "forwarded"


PuntHandler = Callable[[list[Punted]], None]


def _fd(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


class FastPath:
    """The C data plane: loop threads, the forwarding table, the punt queue.

    ``loops``: threads (default :func:`default_loops`); ``cpus``: pin loop *i* to
    ``cpus[i]`` (default: not pinned, the scheduler spreads them).  ``max_legs``
    bounds the table.  ``rtcp_rate``/``rtcp_burst``: the per-leg RTCP token bucket,
    as :class:`media.relay.MediaRelay`'s.  ``punt_rate``/``punt_burst``: the per-leg
    punt budget (:data:`PUNT_RATE`, :data:`PUNT_BURST`): a leg hands Python at most
    that many datagrams per second after a burst, the rest is dropped in C as
    ``punt_limited``, so that a stranger spraying one leg cannot fill the punt ring
    the other legs of its loop share (``punt_overflow``).  Twice over: once for its
    endpoint's host (the IP of its ``rtp_destination`` or ``rtcp_destination``), once
    for every other source, so that the spray does not starve the endpoint either.
    ``poll_us``: after a batch, a loop polls that long (0-1000 us) before it sleeps
    in epoll: on a VM a sleeping vCPU is slow to wake, and that wake-up is most of
    the p99 latency; polling keeps the core busy instead (0: sleep at once).
    ``poll_busy_pct``: a loop polls only while its batches take at least that share
    of its time (measured over 20 ms; it stops below 3/4 of it), so that polling at
    most multiplies a busy loop's CPU by 100/pct and a lightly loaded relay sleeps
    (0: always poll).
    """

    def __init__(
        self,
        loops: int | None = None,
        *,
        max_legs: int = 65536,
        rtcp_rate: float = 100.0,
        rtcp_burst: float = 200.0,
        punt_rate: float = PUNT_RATE,
        punt_burst: float = PUNT_BURST,
        cpus: Sequence[int] | None = None,
        poll_us: int = 0,
        poll_busy_pct: int = 0,
    ) -> None:
        n = default_loops() if loops is None else loops
        self._plane = _srtp.Plane(
            n,
            max_legs=max_legs,
            rtcp_rate=rtcp_rate,
            rtcp_burst=rtcp_burst,
            punt_rate=punt_rate,
            punt_burst=punt_burst,
            cpus=list(cpus) if cpus is not None else None,
            poll_us=poll_us,
            poll_busy_pct=poll_busy_pct,
        )
        self.poll_us = poll_us
        self.poll_busy_pct = poll_busy_pct
        self._reader: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._legs: set[int] = set()

    # ---------------------------------------------------------------- lifecycle

    @property
    def loops(self) -> int:
        return self._plane.loops

    @property
    def punt_fd(self) -> int:
        """An eventfd, readable while punted datagrams wait (:meth:`drain` resets it)."""
        return self._plane.punt_fd

    @property
    def running(self) -> bool:
        return self._started and not self._plane.closed

    def start(self) -> None:
        if not self._started:
            self._plane.start()
            self._started = True

    def stop(self) -> None:
        """Stop and join the loop threads (the table stays)."""
        self._plane.stop()

    def close(self) -> None:
        """Stop, close the plane's copies of every leg's sockets, free the table."""
        self.detach()
        if not self._plane.closed:
            self._plane.close()
        self._legs.clear()

    def __enter__(self) -> FastPath:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- table

    def add_leg(
        self,
        sock: socket.socket | int,
        rtcp_sock: socket.socket | int | None = None,
        *,
        mux: bool = False,
        webrtc: bool = False,
        loop: int | None = None,
    ) -> int:
        """A leg on ``sock`` (RTP, and RTCP too when ``mux`` or without ``rtcp_sock``);
        its handle.  The plane keeps a dup() of each fd until :meth:`remove_leg`.
        ``webrtc``: a dtls-srtp leg (no media in or out before :meth:`set_crypto`).
        ``loop``: the owning loop (default: the one with the fewest legs)."""
        rtcp_fd = -1 if rtcp_sock is None else _fd(rtcp_sock)
        handle = self._plane.add_leg(
            _fd(sock), rtcp_fd, mux=mux, webrtc=webrtc, loop=-1 if loop is None else loop
        )
        self._legs.add(handle)
        return handle

    def remove_leg(self, handle: int) -> PlaneCounters:
        """Out of the table (no loop touches it afterwards); its final counters."""
        counters = PlaneCounters.from_dict(self._plane.remove_leg(handle))
        self._legs.discard(handle)
        return counters

    @property
    def legs(self) -> frozenset[int]:
        return frozenset(self._legs)

    def pair(self, a: int, b: int | None) -> None:
        """Make ``a`` and ``b`` each other's peer (their old peers lose theirs);
        ``b is None`` unpairs ``a``; ``b == a`` makes ``a`` an echo leg, which sends
        what it receives back to its own destination, re-encrypted for it."""
        self._plane.pair(a, b)

    def echo(self, handle: int) -> None:
        self._plane.pair(handle, handle)

    def set_flags(self, handle: int, *, mux: bool, webrtc: bool) -> None:
        self._plane.set_flags(handle, mux=mux, webrtc=webrtc)

    def set_crypto(
        self, handle: int, inbound: _srtp.Context | None, outbound: _srtp.Context | None
    ) -> None:
        """The leg's SRTP contexts of the C core (``None``: plain that way).  The plane
        keeps them alive; Python must not call them while they are attached."""
        self._plane.set_crypto(handle, inbound, outbound)

    def set_addresses(
        self,
        handle: int,
        *,
        rtp_source: Address | None = None,
        rtcp_source: Address | None = None,
        rtp_destination: Address | None = None,
        rtcp_destination: Address | None = None,
    ) -> None:
        """Where media is accepted from (the latched sources: anything else is punted)
        and where media for the leg's endpoint goes.  Unset means none."""
        self._plane.set_addresses(
            handle, rtp_source, rtcp_source, rtp_destination, rtcp_destination
        )

    def set_endpoint_host(self, handle: int, host: str | None) -> None:
        """The IP the leg's endpoint's SIP came from (None: unknown): its datagrams,
        like those from the destination's IP, draw on the leg's own punt budget (an
        endpoint behind a NAT signals a private address but sends from this one)."""
        self._plane.set_endpoint_host(handle, host)

    def latch(self, handle: int, rtp: Address | None, rtcp: Address | None = None) -> None:
        """Accept from and send to ``rtp`` (and ``rtcp``, default: ``rtp``, rtcp-mux)."""
        rtcp = rtp if rtcp is None else rtcp
        self.set_addresses(
            handle, rtp_source=rtp, rtcp_source=rtcp, rtp_destination=rtp, rtcp_destination=rtcp
        )

    def addresses(
        self, handle: int
    ) -> tuple[Address | None, Address | None, Address | None, Address | None]:
        """(rtp_source, rtcp_source, rtp_destination, rtcp_destination)."""
        return self._plane.addresses(handle)

    @staticmethod
    def mode(inbound: _srtp.Context | None, peer_outbound: _srtp.Context | None) -> Mode:
        if inbound is not None and peer_outbound is not None:
            return Mode.BOTH
        if inbound is not None:
            return Mode.SRTP_IN
        return Mode.SRTP_OUT if peer_outbound is not None else Mode.RTP

    # ---------------------------------------------------------------- per leg

    def counters(self, handle: int) -> PlaneCounters:
        return PlaneCounters.from_dict(self._plane.counters(handle))

    def ssrcs(self, handle: int) -> tuple[int | None, int | None]:
        """The SSRCs of the last RTP and RTCP packets that passed the inbound step from
        the leg's accepted source (``None``: none since that source was set): what
        Python's latch follows (:meth:`media.latching.Latch.follow`)."""
        return self._plane.ssrcs(handle)

    def drop_sources(self, handle: int) -> dict[str, Address]:
        """Per drop reason, the source of the last datagram the loops dropped for it
        (for the relay's rate-limited drop log lines)."""
        return self._plane.drop_sources(handle)

    def set_clock(self, now: float | None) -> None:
        """Run the loops' clock (RTCP buckets, punt budgets, ``last_rx``) at ``now`` seconds until
        the next call; ``None``: ``CLOCK_MONOTONIC`` again, as ``time.monotonic``.
        For tests whose relay runs on a fake clock."""
        self._plane.set_clock(now)

    def forward(self, handle: int, rtcp: bool, data: bytes) -> ForwardResult:
        """Forward a punted datagram Python accepted, as the loop would from the RTCP
        rate on (one RTCP bucket per leg, shared with the loop; then decryption,
        destination, encryption, send); counts nothing but the SSRC the latch follows
        (the caller counts)."""
        verdict, authenticated, sent = self._plane.forward(handle, rtcp, data)
        return ForwardResult(verdict, authenticated, sent)

    def loop_stats(self) -> list[dict[str, Any]]:
        """Per loop: wake-ups, recvmmsg and sendmmsg calls, packets read and sent,
        ``busy_ns`` (time on batches, not waiting or polling), whether it is
        ``polling`` now and whether it is in ``poll_mode`` (polls after each batch,
        asleep or not), legs owned."""
        return self._plane.loop_stats()

    # ---------------------------------------------------------------- punted

    def drain(self, limit: int = 1024) -> list[Punted]:
        """Punted datagrams waiting, oldest first per loop, at most ``limit``.

        Handle them before the next drain, which tells the plane they are handled: until
        then, a leg's media from its accepted source is punted behind the leg's own
        punts rather than forwarded past them, so that a latch never reorders a stream
        (``media/fastpath.h``, Order)."""
        return [
            Punted(handle, PacketKind(kind), on_rtcp, data, source)
            for handle, kind, on_rtcp, data, source in self._plane.drain(limit)
        ]

    def attach(self, loop: asyncio.AbstractEventLoop, handler: PuntHandler) -> None:
        """Call ``handler`` from ``loop`` with the punted datagrams whenever some wait
        (``add_reader`` on :attr:`punt_fd`)."""
        self.detach()

        def ready() -> None:
            while batch := self.drain():
                handler(batch)

        loop.add_reader(self.punt_fd, ready)
        self._reader = loop

    def detach(self) -> None:
        if self._reader is not None:
            if not self._reader.is_closed():
                self._reader.remove_reader(self.punt_fd)
            self._reader = None
