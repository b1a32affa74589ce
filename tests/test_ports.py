"""media/ports: even/odd pairs, rtcp-mux, quarantine on a fake clock, exhaustion, ports
held by others.  Real sockets on 127.0.0.1; small ranges drawn inside 20000-29999, the
block kept for tests (a port someone else holds is skipped by design anyway)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from media.ports import PortAllocation, PortPool, PortsExhausted

HOST = "127.0.0.1"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def small_range(pairs: int) -> tuple[int, int]:
    """An even-aligned range of ``pairs`` pairs somewhere in 20000-29999."""
    start = random.randrange(20000, 29999 - 2 * pairs, 2)
    return start, start + 2 * pairs - 1


@pytest.fixture
def allocations() -> Iterator[list[PortAllocation]]:
    held: list[PortAllocation] = []
    yield held
    for allocation in held:
        allocation.close()


def _free_pool(pairs: int, clock: FakeClock, quarantine: float = 30.0) -> PortPool:
    """A pool whose range is entirely bindable right now (retry another draw if not)."""
    for _ in range(20):
        low, high = small_range(pairs)
        probes = []
        try:
            for port in range(low, high + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(s)
                s.bind((HOST, port))
        except OSError:
            continue
        finally:
            for s in probes:
                s.close()
        return PortPool(HOST, (low, high), quarantine, clock=clock)
    raise RuntimeError("no free test port range")


def test_pairs_are_even_rtp_and_odd_rtcp_and_bound(allocations: list[PortAllocation]) -> None:
    pool = _free_pool(8, FakeClock())
    low, high = pool.port_range
    for _ in range(8):
        a = pool.allocate()
        allocations.append(a)
        assert a.rtp_port % 2 == 0 and low <= a.rtp_port < a.rtcp_port <= high
        assert a.rtcp_port == a.rtp_port + 1 and not a.rtcp_mux
        assert a.rtp_socket.getsockname() == (HOST, a.rtp_port)
        assert a.rtcp_socket is not None
        assert a.rtcp_socket.getsockname() == (HOST, a.rtcp_port)
        assert a.rtp_socket.getblocking() is False
    assert len({a.rtp_port for a in allocations}) == 8
    stats = pool.stats()
    assert (stats.in_use, stats.free, stats.quarantined) == (16, 0, 0)


def test_rtcp_mux_binds_one_port_and_reserves_the_odd_one(
    allocations: list[PortAllocation],
) -> None:
    pool = _free_pool(2, FakeClock())
    a = pool.allocate(rtcp_mux=True)
    allocations.append(a)
    assert a.rtcp_mux and a.rtcp_socket is None
    assert a.rtp_socket.getsockname() == (HOST, a.rtp_port)
    # The odd port is not bound by us...
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((HOST, a.rtp_port + 1))
    probe.close()
    # ...but stays with the allocation: the next one gets the other pair.
    b = pool.allocate(rtcp_mux=True)
    allocations.append(b)
    assert {a.rtp_port, b.rtp_port} == {pool.port_range[0], pool.port_range[0] + 2}
    assert pool.stats().in_use == 4


def test_quarantine_on_a_fake_clock(allocations: list[PortAllocation]) -> None:
    clock = FakeClock()
    pool = _free_pool(2, clock, quarantine=30.0)
    a, b = pool.allocate(), pool.allocate()
    allocations.append(b)
    a.close()
    pool.release(a)
    s = pool.stats()
    assert (s.in_use, s.free, s.quarantined) == (2, 0, 2)
    with pytest.raises(PortsExhausted):
        pool.allocate()
    clock.now += 29.9
    with pytest.raises(PortsExhausted):
        pool.allocate()
    assert pool.stats().quarantined == 2
    clock.now += 0.1
    assert pool.stats().free == 2
    again = pool.allocate()
    allocations.append(again)
    assert again.rtp_port == a.rtp_port  # the only pair out of quarantine
    # Releasing twice (or a port never allocated) is harmless.
    pool.release(a.rtp_port + 1000)
    b.close()
    pool.release(b)
    pool.release(b)
    assert pool.stats().quarantined == 2


def test_quarantine_is_first_in_first_out(allocations: list[PortAllocation]) -> None:
    clock = FakeClock()
    pool = _free_pool(3, clock, quarantine=10.0)
    first, second, third = pool.allocate(), pool.allocate(), pool.allocate()
    allocations.append(third)
    for a in (first, second):
        a.close()
        pool.release(a)
        clock.now += 5
    # first has waited 10 s, second 5 s.
    reused = pool.allocate()
    allocations.append(reused)
    assert reused.rtp_port == first.rtp_port
    with pytest.raises(PortsExhausted):
        pool.allocate()


def test_exhaustion_raises_ports_exhausted_with_a_clear_message(
    allocations: list[PortAllocation],
) -> None:
    pool = _free_pool(3, FakeClock())
    allocations.extend(pool.allocate() for _ in range(3))
    with pytest.raises(PortsExhausted, match=r"no free RTP port pair on 127\.0\.0\.1"):
        pool.allocate()
    with pytest.raises(PortsExhausted):
        pool.allocate(rtcp_mux=True)
    assert pool.stats().in_use == 6


def test_ports_in_use_by_others_are_skipped(allocations: list[PortAllocation]) -> None:
    clock = FakeClock()
    pool = _free_pool(4, clock, quarantine=30.0)
    low = pool.port_range[0]
    # Someone else holds the RTP port of one pair and the RTCP port of another.
    squatters = []
    for port in (low, low + 3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, port))
        squatters.append(s)
    try:
        got = []
        with pytest.raises(PortsExhausted):
            while True:
                a = pool.allocate()
                allocations.append(a)
                got.append(a.rtp_port)
        assert sorted(got) == [low + 4, low + 6]
        stats = pool.stats()
        assert stats.bind_failures == 2
        assert stats.quarantined == 4  # the two skipped pairs wait to be tried again
        # The half-bound pair left nothing bound behind: its RTP port is free.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((HOST, low + 2))
        probe.close()
    finally:
        for s in squatters:
            s.close()
    # Once the squatters are gone and the quarantine has passed, the pairs return.
    clock.now += 30
    back = [pool.allocate(), pool.allocate()]
    allocations.extend(back)
    assert sorted(a.rtp_port for a in back) == [low, low + 2]


def test_rtcp_mux_allocation_skips_only_a_busy_rtp_port(
    allocations: list[PortAllocation],
) -> None:
    pool = _free_pool(1, FakeClock())
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((HOST, pool.port_range[0] + 1))  # the odd port only
    try:
        a = pool.allocate(rtcp_mux=True)  # needs only the even one
        allocations.append(a)
        assert a.rtp_port == pool.port_range[0]
    finally:
        squatter.close()


def test_allocation_work_is_bounded_when_everything_is_taken() -> None:
    """A range whose every port is held by someone else: each call tries at most
    max_attempts pairs, then raises; the tried pairs go to quarantine."""
    clock = FakeClock()
    pool = _free_pool(40, clock)
    pool.max_attempts = 8
    squatters = []
    try:
        for port in range(pool.port_range[0], pool.port_range[1] + 1, 2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, port))
            squatters.append(s)
        with pytest.raises(PortsExhausted):
            pool.allocate()
        assert pool.stats().bind_failures == 8
        assert pool.stats().free == 2 * 32
    finally:
        for s in squatters:
            s.close()


def test_default_range_builds_quickly_and_counts() -> None:
    pool = PortPool(HOST, clock=FakeClock())
    assert pool.port_range == (10000, 60000)
    assert pool.quarantine == 30.0
    assert pool.stats().free == 50000  # 25000 pairs: 10000/10001 ... 59998/59999


@pytest.mark.parametrize("port_range", [(10001, 10001), (60000, 59000), (80, 1000), (65534, 70000)])
def test_bad_ranges_are_refused(port_range: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        PortPool(HOST, port_range)


def test_odd_range_ends_keep_pairs_inside() -> None:
    pool = PortPool(HOST, (20001, 20006), clock=FakeClock())
    assert pool.stats().free == 4  # 20002/20003 and 20004/20005


def test_ipv6_pool() -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.fail("no IPv6 loopback (::1): enable IPv6 on lo to run this test")
    pool = PortPool("::1", small_range(4), clock=FakeClock())
    a = pool.allocate()
    try:
        assert a.rtp_socket.family == socket.AF_INET6
        assert a.rtp_socket.getsockname()[1] == a.rtp_port
    finally:
        a.close()
