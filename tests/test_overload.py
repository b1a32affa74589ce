"""edge/overload: the call gate's two limits on a clock the test moves."""

from __future__ import annotations

from edge.overload import CALLS, CPS, CallGate


def test_no_limits_take_everything() -> None:
    gate = CallGate()
    assert not gate.enabled
    assert all(gate.refuse(10**6, float(t)) is None for t in range(100))


def test_max_calls_counts_the_live_calls_it_is_given() -> None:
    gate = CallGate(max_calls=3)
    assert gate.enabled
    assert gate.refuse(2, 0.0) is None
    assert gate.refuse(3, 0.0) == CALLS
    assert gate.refuse(4, 0.0) == CALLS
    assert gate.refuse(0, 0.0) is None


def test_max_cps_is_a_bucket_of_one_second_refilled_at_the_rate() -> None:
    gate = CallGate(max_cps=10)
    assert [gate.refuse(0, 100.0) for _ in range(11)] == [None] * 10 + [CPS]
    # A refusal takes nothing: a tenth of a second later there is one token.
    assert gate.refuse(0, 100.1) is None
    assert gate.refuse(0, 100.1) == CPS
    # Idle for a minute: one second's worth, no more.
    assert [gate.refuse(0, 160.0) for _ in range(11)] == [None] * 10 + [CPS]
    # 1000 steps of a millisecond refill exactly ten tokens, float dust or not.
    took = sum(gate.refuse(0, 160.0 + i / 1000) is None for i in range(1, 1001))
    assert took == 10


def test_a_clock_stepping_back_refills_nothing() -> None:
    gate = CallGate(max_cps=1)
    assert gate.refuse(0, 50.0) is None
    assert gate.refuse(0, 10.0) == CPS  # back in time: no token
    assert gate.refuse(0, 50.5) == CPS  # half a second after the stamp (50.0)
    assert gate.refuse(0, 51.0) is None


def test_calls_is_checked_before_a_token_is_taken() -> None:
    gate = CallGate(max_calls=1, max_cps=1)
    assert gate.refuse(1, 0.0) == CALLS
    assert gate.refuse(0, 0.0) is None  # the token was still there
