"""edge/timer_wheel.py on uvloop and on asyncio: order, never early, stale tickets,
cancelled ticks that do not wake the loop, re-arming for an earlier timer,
callbacks that start timers, failures, close.

Every wait is bounded; no test asserts how long anything took, only the order
of events and that none came before its deadline on the loop's own clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from edge.timer_wheel import TimerWheel

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
# uvloop's clock and timers count whole milliseconds: a handle may run up to
# a millisecond before the float deadline it was given.
CLOCK_SLACK = 0.0015


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    def runner(coro: Any) -> Any:
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, 20))
        finally:
            loop.close()

    return runner


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def test_timers_fire_in_deadline_order_and_never_early(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float, float]] = []
        deadlines: dict[str, float] = {}

        def fire(owner: Any, name: str, ticket: int) -> None:
            fired.append((name, deadlines[name], loop.time()))

        wheel = TimerWheel(loop, fire, resolution=0.005)
        rng = random.Random(3)
        for i in range(300):
            delay = rng.uniform(0.0, 0.3)
            deadlines[str(i)] = loop.time() + delay
            wheel.start(None, str(i), delay)
        assert len(wheel) == 300
        await until(lambda: len(fired) == 300)
        for name, deadline, at in fired:
            assert at >= deadline - CLOCK_SLACK, (name, deadline, at)
        # Filed by tick: order holds between timers more than a tick apart.
        for (_, d1, _), (_, d2, _) in itertools.pairwise(fired):
            assert d2 > d1 - 0.005
        assert len(wheel) == 0
        assert wheel._handle is None  # idle: no loop timer left armed

    run(main())


def test_long_timers_share_coarse_ticks_and_are_never_early(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, float, int]] = []
        deadlines: dict[str, float] = {}

        def fire(owner: Any, name: str, ticket: int) -> None:
            fired.append((deadlines[name], loop.time(), wheel._done))

        wheel = TimerWheel(loop, fire, resolution=0.005)
        for i in range(40):
            delay = 1.0 + i * 0.004
            deadlines[str(i)] = loop.time() + delay
            wheel.start(None, str(i), delay)
        await until(lambda: len(fired) == 40)
        assert all(at >= deadline - CLOCK_SLACK for deadline, at, _ in fired)
        # 40 deadlines over 0.16 s on 0.1 s ticks: at most three wake-ups.
        assert len({done for _, _, done in fired}) <= 3

    run(main())


def test_each_start_gets_a_new_ticket_and_the_owner_decides(run: Callable[[Any], Any]) -> None:
    """A restart files a second entry; both come due, and the owner keeps only the
    ticket it holds (what Proxy._on_timer does with ctx.timers)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held: dict[str, int] = {}
        ran: list[tuple[str, int]] = []
        seen: list[int] = []

        def fire(owner: Any, name: str, ticket: int) -> None:
            seen.append(ticket)
            if held.get(name) == ticket:
                del held[name]
                ran.append((name, ticket))

        wheel = TimerWheel(loop, fire)
        first = wheel.start(None, "A", 0.02)
        held["A"] = first
        second = wheel.start(None, "A", 0.04)
        held["A"] = second  # restarted: the first ticket is stale
        held["B"] = wheel.start(None, "B", 0.02)
        del held["B"]  # cancelled
        assert len({first, second}) == 2
        await until(lambda: len(seen) == 3)
        assert ran == [("A", second)]
        assert held == {}

    run(main())


def test_a_tick_left_with_only_cancelled_timers_does_not_wake_the_loop(
    run: Callable[[Any], Any],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, int]] = []
        wheel = TimerWheel(loop, lambda o, n, t: fired.append((n, wheel._done)))
        a = wheel.start(None, "A", 0.01)
        b1 = wheel.start(None, "B", 0.03)
        b2 = wheel.start(None, "B2", 0.03)  # same tick as B
        c = wheel.start(None, "C", 0.06)
        assert wheel._armed == a >> 20
        wheel.cancel(a)  # the armed tick dies: the wheel re-arms for B's
        assert wheel._armed == b1 >> 20 == b2 >> 20
        wheel.cancel(b1)  # B's tick still has B2
        assert wheel._armed == b2 >> 20
        await until(lambda: len(fired) == 2)
        # A's dead tick was dropped, not run; B's entry fired stale with B2.
        assert [name for name, _ in fired] == ["B", "B2"]
        # In one pass, B2's tick or (a loop running late) a later one.
        assert fired[0][1] == fired[1][1] >= b2 >> 20
        assert wheel._armed == c >> 20
        wheel.cancel(c)  # nothing live: no loop timer, and C's dead tick is dropped
        assert wheel._handle is None and len(wheel) == 0
        wheel.cancel(c)  # its tick is gone: ignored
        wheel.cancel(b2)  # fired already: ignored
        await asyncio.sleep(0.1)
        assert len(fired) == 2
        d = wheel.start(None, "D", 0.0)
        await until(lambda: len(fired) == 3)
        # Its own tick, or a later one when the loop ran late (_run takes every tick
        # that has passed): never an earlier one.
        assert fired[2][0] == "D" and fired[2][1] >= d >> 20

    run(main())


def test_random_starts_and_cancels_every_live_timer_fires_once_and_no_wake_up_is_idle(
    run: Callable[[Any], Any],
) -> None:
    """Owners start, restart and cancel at random, from outside and from inside
    callbacks (as Proxy._run does with ctx.timers): each timer still held fires
    exactly once and never early, and each wake-up fires at least one of them."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(11)
        held: dict[str, int] = {}
        deadline: dict[int, float] = {}
        ran: list[tuple[int, float]] = []
        live_per_pass: dict[int, int] = {}
        started = 0

        def start(name: str, delay: float) -> None:
            nonlocal started
            old = held.pop(name, None)
            if old is not None:
                wheel.cancel(old)
            ticket = wheel.start(None, name, delay)
            held[name] = ticket
            deadline[ticket] = loop.time() + delay
            started += 1

        def cancel_some() -> None:
            for name in rng.sample(sorted(held), min(len(held), rng.randint(0, 3))):
                wheel.cancel(held.pop(name))

        def fire(owner: Any, name: str, ticket: int) -> None:
            live_per_pass.setdefault(wheel._done, 0)
            if held.get(name) != ticket:
                return
            del held[name]
            live_per_pass[wheel._done] += 1
            ran.append((ticket, loop.time()))
            if rng.random() < 0.3:
                cancel_some()
            if rng.random() < 0.3 and started < 600:
                start(f"cb{started}", rng.uniform(0.0, 0.1))

        wheel = TimerWheel(loop, fire, resolution=0.005)
        for i in range(400):
            start(f"t{rng.randint(0, 1000)}", rng.choice((rng.uniform(0.0, 0.25), 1.0)))
            if rng.random() < 0.2:
                cancel_some()
            if i % 50 == 0:
                await asyncio.sleep(0.003)
        await until(lambda: not held, limit=15)
        assert len(ran) == len({ticket for ticket, _ in ran}) > 100
        for ticket, at in ran:
            assert at >= deadline[ticket] - CLOCK_SLACK
        idle = [done for done, live in live_per_pass.items() if live == 0]
        assert idle == [], f"{len(idle)} of {len(live_per_pass)} wake-ups fired only stale entries"
        assert wheel._handle is None

    run(main())


def test_an_earlier_timer_does_not_wait_for_a_later_one(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        wheel = TimerWheel(loop, lambda o, n, t: fired.append(n))
        wheel.start(None, "late", 30.0)
        wheel.start(None, "early", 0.01)
        await until(lambda: fired == ["early"])
        assert len(wheel) == 1
        wheel.close()
        assert len(wheel) == 0

    run(main())


def test_a_timer_started_by_a_callback_waits_for_a_later_pass(run: Callable[[Any], Any]) -> None:
    """Zero delays started from a callback come due on later passes, one per
    pass: never in the pass that is running, so a chain cannot spin the loop."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        passes: list[int] = []
        wheel: TimerWheel

        def fire(owner: Any, name: str, ticket: int) -> None:
            passes.append(wheel._done)
            if len(passes) < 20:
                wheel.start(None, name, 0.0)

        wheel = TimerWheel(loop, fire)
        wheel.start(None, "chain", 0.0)
        await until(lambda: len(passes) == 20)
        assert passes == sorted(set(passes))  # a new tick for every link
        await asyncio.sleep(0.03)
        assert len(passes) == 20 and len(wheel) == 0

    run(main())


def test_a_failing_callback_is_reported_and_the_rest_still_fire(
    run: Callable[[Any], Any],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        fired: list[str] = []

        def fire(owner: Any, name: str, ticket: int) -> None:
            if name == "bad":
                raise RuntimeError("owner failed")
            fired.append(name)

        wheel = TimerWheel(loop, fire, resolution=0.05)
        # One tick: all three share a slot, the failure in the middle.
        for name in ("before", "bad", "after"):
            wheel.start(None, name, 0.0)
        await until(lambda: len(fired) == 2)
        assert fired == ["before", "after"]
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], RuntimeError)

    run(main())


def test_close_drops_everything(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        wheel = TimerWheel(loop, lambda o, n, t: fired.append(n))
        for i in range(50):
            wheel.start(None, str(i), 0.01 * (i % 5))
        wheel.close()
        assert len(wheel) == 0 and wheel._handle is None
        await asyncio.sleep(0.08)
        assert fired == []
        # Usable again after close.
        wheel.start(None, "again", 0.0)
        await until(lambda: fired == ["again"])

    run(main())


def test_resolution_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="resolution"):
            TimerWheel(loop, lambda o, n, t: None, resolution=0)
    finally:
        loop.close()
