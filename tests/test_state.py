"""The security state store: token buckets, hit windows, bans, nonce counts, bounded memory."""

from __future__ import annotations

import pytest

from edge.state import Ban, MemoryStateStore, StateStore
from sip.digest import DigestVerifier, NonceFactory

T0 = 1_700_000_000.0


def drain(store: StateStore, key: str, rate: float, now: float) -> int:
    """How many single tokens ``key`` gives at ``now`` before refusing."""
    n = 0
    while store.take(key, rate, now):
        n += 1
        assert n < 100_000
    return n


# ---------------------------------------------------------------- token buckets


def test_bucket_starts_full_at_twice_the_rate() -> None:
    store = MemoryStateStore()
    assert drain(store, "call:c1", 100, T0) == 200
    assert not store.take("call:c1", 100, T0)


def test_bucket_refills_at_rate_per_minute_over_sixty_per_second() -> None:
    store = MemoryStateStore()
    drain(store, "k", 60, T0)  # 1 token per second
    assert not store.take("k", 60, T0 + 0.5)
    assert store.take("k", 60, T0 + 1.0)
    assert not store.take("k", 60, T0 + 1.0)
    assert drain(store, "k", 60, T0 + 11.0) == 10
    # Refilling stops at capacity: a long idle time gives back 2x rate, no more.
    assert drain(store, "k", 60, T0 + 10_000.0) == 120


def test_bucket_sustains_exactly_the_rate() -> None:
    store = MemoryStateStore()
    rate = 10.0  # one token every 6 seconds
    drain(store, "auth:192.0.2.1", rate, T0)
    granted = sum(store.take("auth:192.0.2.1", rate, T0 + 0.5 * i) for i in range(1, 1201))
    assert granted == 100  # 600 s at 10/minute


def test_refusal_takes_nothing() -> None:
    store = MemoryStateStore()
    drain(store, "k", 60, T0)
    for _ in range(50):
        assert not store.take("k", 60, T0 + 0.9)
    assert store.take("k", 60, T0 + 1.0)  # the refusals did not dig a hole


def test_bucket_cost() -> None:
    store = MemoryStateStore()
    assert store.take("k", 60, T0, cost=100)
    assert not store.take("k", 60, T0, cost=21)  # 20 left
    assert store.take("k", 60, T0, cost=20)
    assert not store.take("k", 60, T0 + 4, cost=5)
    assert store.take("k", 60, T0 + 5, cost=5)
    assert store.take("k", 60, T0 + 5, cost=0)


def test_buckets_are_per_key() -> None:
    store = MemoryStateStore()
    drain(store, "call:c1", 100, T0)
    assert store.take("call:c2", 100, T0)
    assert store.take("req:192.0.2.1", 1000, T0)
    assert not store.take("call:c1", 100, T0)


def test_clock_stepping_back_gives_nothing_away() -> None:
    store = MemoryStateStore()
    drain(store, "k", 60, T0)
    assert not store.take("k", 60, T0 - 100)
    assert store.take("k", 60, T0 + 1)


def test_rate_change_resizes_the_bucket() -> None:
    store = MemoryStateStore()
    assert store.take("k", 100, T0)
    assert drain(store, "k", 10, T0) == 20  # clamped to the new capacity


def test_zero_rate_refuses() -> None:
    assert not MemoryStateStore().take("k", 0, T0)


@pytest.mark.parametrize(
    ("rate", "now", "cost"),
    [(-1, T0, 1), (float("nan"), T0, 1), (10, float("inf"), 1), (10, T0, -1)],
)
def test_bucket_rejects_nonsense(rate: float, now: float, cost: float) -> None:
    with pytest.raises(ValueError):
        MemoryStateStore().take("k", rate, now, cost)


# ---------------------------------------------------------------- hit windows


def test_hits_in_a_burst_are_exact() -> None:
    store = MemoryStateStore()
    assert [store.hit("fail:192.0.2.1", 60, T0 + i * 0.01) for i in range(5)] == [1, 2, 3, 4, 5]


def test_hits_age_out_of_the_window() -> None:
    store = MemoryStateStore()
    start = 60.0 * 1000  # aligned on the window
    for i in range(10):
        store.hit("k", 60, start + i)
    # Half way into the next window, half of the previous one still counts.
    assert store.hit("k", 60, start + 90) == 1 + 5
    # Two windows on, nothing of the first ten is left.
    assert store.hit("k", 60, start + 181) == 1


def test_hit_estimate_is_exact_for_evenly_spread_events() -> None:
    store = MemoryStateStore()
    # One event every 6 s for ten minutes: the last 60 s always hold 10.
    counts = [store.hit("k", 60, T0 + 6 * i) for i in range(100)]
    assert all(9 <= c <= 11 for c in counts[20:])


def test_hit_estimate_error_is_bounded_by_the_previous_window() -> None:
    store = MemoryStateStore()
    start = 60.0 * 1000
    for _ in range(10):
        store.hit("k", 60, start + 59)  # all at the end of one window
    # At start + 61 the exact count is 11 (the ten are 2 s old); the estimate
    # weighs the previous window by its overlap, 59/60.
    count = store.hit("k", 60, start + 61)
    assert 1 <= count <= 11
    assert count == 1 + 9


def test_clear_forgets_a_window() -> None:
    store = MemoryStateStore()
    for i in range(4):
        store.hit("fail:a", 60, T0 + i)
    store.hit("fail:b", 60, T0)
    store.clear("fail:a")
    store.clear("never-seen")
    assert store.hit("fail:a", 60, T0 + 5) == 1
    assert store.hit("fail:b", 60, T0 + 5) == 2


def test_windows_are_per_key() -> None:
    store = MemoryStateStore()
    assert store.hit("a", 10, T0) == 1
    assert store.hit("b", 10, T0) == 1
    assert store.hit("a", 10, T0) == 2


def test_hit_rejects_a_bad_window() -> None:
    with pytest.raises(ValueError):
        MemoryStateStore().hit("k", 0, T0)


# ---------------------------------------------------------------- bans


def test_ban_and_banned() -> None:
    store = MemoryStateStore()
    assert not store.banned("192.0.2.1", T0)
    assert store.ban("192.0.2.1", T0 + 300, "flood", T0)
    assert store.banned("192.0.2.1", T0)
    assert store.banned("192.0.2.1", T0 + 299.9)
    assert not store.banned("192.0.2.1", T0 + 300)
    assert not store.banned("192.0.2.2", T0)


def test_ban_again_extends_to_the_later_end() -> None:
    store = MemoryStateStore()
    assert store.ban("192.0.2.1", T0 + 300, "flood", T0)
    assert not store.ban("192.0.2.1", T0 + 100, "auth", T0 + 10)  # shorter: no change
    assert not store.ban("192.0.2.1", T0 + 600, "auth", T0 + 20)
    (ban,) = store.bans(T0 + 30)
    assert ban == Ban("192.0.2.1", T0, T0 + 600, "flood", 0)
    assert store.expire(T0 + 300) == []  # the first end no longer applies
    assert store.banned("192.0.2.1", T0 + 599)
    assert [b.address for b in store.expire(T0 + 600)] == ["192.0.2.1"]


def test_expire_removes_and_returns_ended_bans() -> None:
    store = MemoryStateStore()
    store.ban("192.0.2.1", T0 + 10, "flood", T0)
    store.ban("192.0.2.2", T0 + 20, "auth", T0 + 1)
    store.ban("2001:db8::1", T0 + 30, "scanner", T0 + 2)
    assert store.expire(T0 + 5) == []
    assert store.expire(T0 + 20) == [
        Ban("192.0.2.1", T0, T0 + 10, "flood", 0),
        Ban("192.0.2.2", T0 + 1, T0 + 20, "auth", 0),
    ]
    assert store.expire(T0 + 20) == []
    assert [b.address for b in store.bans(T0 + 20)] == ["2001:db8::1"]


def test_a_lapsed_ban_is_reported_when_the_address_is_banned_again() -> None:
    store = MemoryStateStore()
    store.ban("192.0.2.1", T0 + 10, "flood", T0)
    store.count_drop("192.0.2.1")
    assert store.ban("192.0.2.1", T0 + 100, "auth", T0 + 50)  # new ban, not an extension
    assert store.expire(T0 + 50) == [Ban("192.0.2.1", T0, T0 + 10, "flood", 1)]
    assert store.bans(T0 + 50) == [Ban("192.0.2.1", T0 + 50, T0 + 100, "auth", 0)]


def test_bans_lists_live_ones_with_their_drop_counts() -> None:
    store = MemoryStateStore()
    store.ban("192.0.2.2", T0 + 100, "auth", T0 + 1)
    store.ban("192.0.2.1", T0 + 100, "flood", T0)
    store.ban("192.0.2.3", T0 + 5, "flood", T0)
    for _ in range(3):
        store.count_drop("192.0.2.1")
    store.count_drop("198.51.100.7")  # not banned: ignored
    assert store.bans(T0 + 10) == [
        Ban("192.0.2.1", T0, T0 + 100, "flood", 3),
        Ban("192.0.2.2", T0 + 1, T0 + 100, "auth", 0),
    ]


def test_unban() -> None:
    store = MemoryStateStore()
    store.ban("192.0.2.1", T0 + 100, "flood", T0)
    assert store.unban("192.0.2.1")
    assert not store.unban("192.0.2.1")
    assert not store.banned("192.0.2.1", T0)
    assert store.expire(T0 + 1000) == []  # a lifted ban does not "expire" later
    assert store.ban("192.0.2.1", T0 + 200, "flood", T0 + 1)


def test_ban_must_end_in_the_future() -> None:
    with pytest.raises(ValueError):
        MemoryStateStore().ban("192.0.2.1", T0, "flood", T0)


def test_many_extensions_keep_the_heap_small() -> None:
    store = MemoryStateStore()
    store.ban("192.0.2.1", T0 + 1, "flood", T0)
    for i in range(10_000):
        store.ban("192.0.2.1", T0 + 2 + i, "flood", T0)
    assert len(store._table.heap) <= 2 * 1 + 64 + 1
    assert [b.until for b in store.expire(T0 + 20_000)] == [T0 + 10_001]


# ---------------------------------------------------------------- bounded memory


def test_bucket_table_stays_bounded_under_100k_keys() -> None:
    store = MemoryStateStore(max_buckets=1000)
    store.ban("192.0.2.1", T0 + 3600, "flood", T0)
    for i in range(100_000):
        store.take(f"auth:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 10, T0 + i * 1e-4)
    assert store.stats()["buckets"] <= 1000
    # A bucket with one token taken has not refilled yet when it is dropped.
    assert store.bucket_evictions > 0
    assert store.banned("192.0.2.1", T0 + 11)


def test_refilled_buckets_are_dropped_without_loss() -> None:
    store = MemoryStateStore(max_buckets=10)
    for i in range(100):
        # 60/minute: a token is back within one second, before the key is dropped.
        store.take(f"k{i}", 60, T0 + i)
    assert store.stats()["buckets"] == 10
    assert store.bucket_evictions == 0


def test_a_key_in_use_survives_a_flood_of_fresh_keys() -> None:
    store = MemoryStateStore(max_buckets=100)
    drain(store, "call:c1", 100, T0)
    for i in range(10_000):
        store.take(f"flood{i}", 100, T0)
        if i % 50 == 0:
            assert not store.take("call:c1", 100, T0)  # still empty: not reset


def test_window_table_stays_bounded_under_100k_keys() -> None:
    store = MemoryStateStore(max_windows=1000)
    store.ban("192.0.2.1", T0 + 3600, "auth", T0)
    for i in range(100_000):
        assert store.hit(f"fail:{i}", 60, T0 + i * 1e-4) == 1
    assert store.stats()["windows"] <= 1000
    assert store.banned("192.0.2.1", T0 + 11)
    assert store.bans(T0 + 11)[0].reason == "auth"


def test_full_ban_table_never_refuses_a_ban() -> None:
    store = MemoryStateStore(max_bans=1000)
    for i in range(100_000):
        address = f"2001:db8::{i:x}"
        assert store.ban(address, T0 + 600 + i, "flood", T0 + i * 1e-3)
        assert store.banned(address, T0 + i * 1e-3)
    assert store.stats()["bans"] == 1000
    # The bans ending first made room; the newest are all there.
    assert all(store.banned(f"2001:db8::{i:x}", T0 + 100) for i in range(99_000, 100_000))
    assert store.ban_evictions == 99_000


def test_full_ban_table_makes_room_with_ended_bans_first() -> None:
    store = MemoryStateStore(max_bans=3)
    store.ban("192.0.2.1", T0 + 10, "flood", T0)
    store.ban("192.0.2.2", T0 + 1000, "flood", T0)
    store.ban("192.0.2.3", T0 + 1000, "flood", T0)
    assert store.ban("192.0.2.4", T0 + 1000, "flood", T0 + 20)
    assert store.ban_evictions == 0
    # The ended ban was not lost to the audit trail.
    assert [b.address for b in store.expire(T0 + 20)] == ["192.0.2.1"]
    assert [b.address for b in store.bans(T0 + 20)] == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


# ---------------------------------------------------------------- nonce counts


def test_nonce_count_replay() -> None:
    store = MemoryStateStore(nonce_ttl=300)
    assert store.check_and_record("n1", 1, T0)
    assert not store.check_and_record("n1", 1, T0 + 1)  # replay
    assert store.check_and_record("n1", 2, T0 + 1)
    assert not store.check_and_record("n1", 1, T0 + 2)  # older count
    assert store.check_and_record("n2", 1, T0 + 2)
    # After the ttl the nonce is STALE for the verifier; its history is gone.
    assert store.check_and_record("n1", 1, T0 + 301)


def test_nonce_counts_are_bounded() -> None:
    store = MemoryStateStore(max_nonces=10)
    for i in range(1000):
        store.check_and_record(f"n{i}", 1, T0)
    assert store.stats()["nonces"] == 10
    assert store.stats()["nonce_evictions"] == 990


def test_store_serves_the_digest_verifier() -> None:
    store = MemoryStateStore()
    verifier = DigestVerifier(NonceFactory(b"0123456789abcdef"), store)
    assert verifier.nc_store is store
