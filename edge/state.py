"""Shared state for the security policy: token buckets, hit windows, bans, nonce counts.

The policy (rate limits, flood bans, digest replay checks) keeps every piece of
state it needs behind :class:`StateStore`, so that several edge instances can
later share it without the policy changing.  Like the cores, a store reads no
clock: every call takes ``now`` (seconds on a clock shared by the instances
that share the store, i.e. wall clock once scaled out).

Pieces:

* token buckets (:meth:`StateStore.take`): capacity twice the per-minute rate,
  refilled continuously at rate/60 per second, starting full (the reference
  document's "bucket size 2x rate limit"), one per key ("call:<customer>",
  "auth:<address>", ...; the keys are the policy's business);
* hit windows (:meth:`StateStore.hit`): "how many events under this key in the
  last N seconds", for failed-authentication and flood thresholds;
* bans (:meth:`StateStore.ban`, :meth:`StateStore.banned`, ...): addresses
  whose packets are dropped before parsing, with a reason and a drop count;
* nonce counts (:meth:`StateStore.check_and_record`): the digest replay check,
  so a store is also a :class:`sip.digest.NonceCountStore`.

:class:`MemoryStateStore` is the default, one per process, bounded in memory.
A Redis store would fit behind the same Protocol: ``take`` as a Lua script
(read tokens and stamp, refill, take, write back, atomically), ``hit`` as INCR
on "<key>:<window index>" with EXPIRE of two windows (the same two-bucket
estimate as here), ``ban`` as SET with PX (the ban's remaining time) plus a
PUBLISH, ``banned`` answered from a local copy of the ban set refreshed by
that pub/sub channel (a network round trip per packet would be the flood's
best friend), and nonce counts as a Lua compare-and-set with an expiry.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sip.digest import MemoryNonceCountStore

__all__ = ["Ban", "MemoryStateStore", "StateStore"]


@dataclass(frozen=True, slots=True)
class Ban:
    """A ban as listed: ``hits`` counts the packets dropped while it lasted."""

    address: str
    since: float
    until: float
    reason: str
    hits: int = 0


class StateStore(Protocol):
    """Everything the security policy remembers, in one place it can be shared from."""

    #: The registrar's bindings (browsers over WebSocket; per process, see there).
    registrations: RegistrationTable

    #: The bans by address, each entry's ``until`` when it ends (some may have
    #: ended, until :meth:`expire`).  Read for every packet: a lookup here is
    #: what :meth:`banned` does, without the call (edge.admission).
    ban_entries: dict[str, _BanEntry]

    def take(self, key: str, rate_per_minute: float, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False, taking nothing, if too few.

        The bucket holds ``2 * rate_per_minute`` tokens, starts full and refills
        at ``rate_per_minute / 60`` tokens per second.
        """
        ...

    def hit(self, key: str, window: float, now: float) -> int:
        """Record one event under ``key``; how many fell in the last ``window`` seconds.

        The count includes this event.
        """
        ...

    def clear(self, key: str) -> None:
        """Forget ``key``'s hit window (after a successful authentication, say)."""
        ...

    def ban(self, address: str, until: float, reason: str, now: float) -> bool:
        """Ban ``address`` until ``until``; True if newly banned.

        An address already banned keeps its ban (and reason), extended to the
        later of the two ends, and the answer is False.
        """
        ...

    def banned(self, address: str, now: float) -> bool:
        """Is ``address`` banned?  Called for every packet before parsing: O(1)."""
        ...

    def bans(self, now: float) -> list[Ban]:
        """The live bans, oldest first."""
        ...

    def unban(self, address: str) -> bool:
        """Lift ``address``'s ban; True if there was one."""
        ...

    def expire(self, now: float) -> list[Ban]:
        """Remove and return the bans whose time is up (the caller audits them)."""
        ...

    def count_drop(self, address: str) -> None:
        """Count one packet dropped because ``address`` is banned."""
        ...

    def check_and_record(self, nonce: str, nc: int, now: float) -> bool:
        """True, and remember ``nc``, if it is strictly greater than any seen for ``nonce``."""
        ...


# --------------------------------------------------------------------------
# The in-memory store

# Float dust: a bucket refilled in many small steps may hold 0.999999999 where
# arithmetic says 1; it must not refuse that token.
_EPSILON = 1e-9


class _Bucket:
    __slots__ = ("tokens", "stamp", "capacity", "per_second")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.tokens = capacity
        self.stamp = now
        self.capacity = capacity
        self.per_second = per_second

    def refill(self, now: float) -> None:
        # A clock stepping back neither refills nor moves the stamp back.
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def full_at(self, now: float) -> bool:
        """Would the bucket be full by ``now``?  Then forgetting it changes nothing."""
        elapsed = max(0.0, now - self.stamp)
        return self.tokens + elapsed * self.per_second >= self.capacity - _EPSILON


class _Window:
    """Two adjacent fixed windows: events in the current one and in the one before."""

    __slots__ = ("length", "index", "current", "previous")

    def __init__(self, length: float, index: int) -> None:
        self.length = length
        self.index = index
        self.current = 0
        self.previous = 0

    def advance(self, index: int) -> None:
        if index == self.index + 1:
            self.previous, self.current = self.current, 0
        elif index > self.index + 1:
            self.previous = self.current = 0
        else:
            # Same window, or the clock stepped back: keep counting here.
            return
        self.index = index

    def dead_at(self, now: float) -> bool:
        """No event left in the last two windows: forgetting it changes nothing."""
        return math.floor(now / self.length) > self.index + 1


class _BanEntry:
    __slots__ = ("address", "since", "until", "reason", "hits")

    def __init__(self, address: str, since: float, until: float, reason: str) -> None:
        self.address = address
        self.since = since
        self.until = until
        self.reason = reason
        self.hits = 0

    def snapshot(self) -> Ban:
        return Ban(self.address, self.since, self.until, self.reason, self.hits)


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")


class BanTable:
    """One instance's bans: a dict for the per-packet lookup, a heap for expiry.

    Shared by the memory and the Redis store (the Redis one keeps its local
    copy here).  ``heap`` holds (until, address), lazily pruned: an extended or
    lifted ban leaves a stale item behind, recognised by its ``until`` no
    longer matching.  ``lapsed`` holds bans that ended and were removed before
    :meth:`expire` saw them.  Full: the ban that ends first makes room (see
    :class:`MemoryStateStore`), counted in ``evictions`` when it was live.
    """

    __slots__ = ("entries", "evictions", "heap", "lapsed", "max_bans")

    def __init__(self, max_bans: int) -> None:
        self.max_bans = max_bans
        self.entries: dict[str, _BanEntry] = {}
        self.heap: list[tuple[float, str]] = []
        self.lapsed: deque[Ban] = deque(maxlen=max_bans)
        self.evictions = 0

    def add(self, address: str, until: float, reason: str, now: float) -> bool:
        """Ban (or extend); True if newly banned.  Times already checked."""
        entry = self.entries.get(address)
        if entry is not None:
            if now < entry.until:
                if until > entry.until:
                    entry.until = until
                    self.push(until, address)
                return False
            # Ended but not yet collected: report it, then ban afresh.
            del self.entries[address]
            self.lapsed.append(entry.snapshot())
        if len(self.entries) >= self.max_bans:
            self._make_room(now)
        self.entries[address] = _BanEntry(address, now, until, reason)
        self.push(until, address)
        return True

    def live(self, now: float) -> list[Ban]:
        found = [e.snapshot() for e in self.entries.values() if now < e.until]
        found.sort(key=lambda b: (b.since, b.address))
        return found

    def remove(self, address: str) -> bool:
        return self.entries.pop(address, None) is not None

    def expire(self, now: float) -> list[Ban]:
        ended = list(self.lapsed)
        self.lapsed.clear()
        heap = self.heap
        while heap and heap[0][0] <= now:
            until, address = heapq.heappop(heap)
            entry = self.entries.get(address)
            if entry is not None and entry.until == until:
                del self.entries[address]
                ended.append(entry.snapshot())
        return ended

    def count_drop(self, address: str) -> None:
        entry = self.entries.get(address)
        if entry is not None:
            entry.hits += 1

    def push(self, until: float, address: str) -> None:
        heap = self.heap
        heapq.heappush(heap, (until, address))
        # Extensions and unbans leave stale items; rebuild before they dominate.
        if len(heap) > 2 * len(self.entries) + 64:
            heap[:] = [(e.until, a) for a, e in self.entries.items()]
            heapq.heapify(heap)

    def _make_room(self, now: float) -> None:
        heap = self.heap
        while heap:
            until, address = heapq.heappop(heap)
            entry = self.entries.get(address)
            if entry is None or entry.until != until:
                continue
            del self.entries[address]
            if until <= now:
                self.lapsed.append(entry.snapshot())
            else:
                self.evictions += 1
            return


class RegistrationTable:
    """Registrar bindings (edge/registrar.py keeps the rules, this the records), by
    address-of-record and by the connection they arrived on.  Bindings are any
    objects with ``aor`` and ``conn_id``.  Per process in every store: a binding
    names a socket of this process."""

    __slots__ = ("by_aor", "by_conn", "total")

    def __init__(self) -> None:
        self.by_aor: dict[str, list[Any]] = {}
        self.by_conn: dict[int, set[str]] = {}
        self.total = 0

    def __len__(self) -> int:
        return self.total

    def of(self, aor: str) -> list[Any]:
        return list(self.by_aor.get(aor, ()))

    def all(self) -> list[Any]:
        return [b for bindings in self.by_aor.values() for b in bindings]

    def add(self, binding: Any) -> None:
        self.by_aor.setdefault(binding.aor, []).append(binding)
        self.by_conn.setdefault(binding.conn_id, set()).add(binding.aor)
        self.total += 1

    def remove(self, binding: Any) -> None:
        bindings = self.by_aor.get(binding.aor)
        if not bindings or binding not in bindings:
            return
        bindings.remove(binding)
        self.total -= 1
        if not bindings:
            del self.by_aor[binding.aor]
        if not any(b.conn_id == binding.conn_id for b in self.by_aor.get(binding.aor, ())):
            aors = self.by_conn.get(binding.conn_id)
            if aors is not None:
                aors.discard(binding.aor)
                if not aors:
                    del self.by_conn[binding.conn_id]

    def drop_conn(self, conn_id: int) -> int:
        dropped = 0
        for aor in self.by_conn.pop(conn_id, set()):
            for b in [b for b in self.by_aor.get(aor, ()) if b.conn_id == conn_id]:
                self.by_aor[aor].remove(b)
                self.total -= 1
                dropped += 1
            if not self.by_aor.get(aor, True):
                del self.by_aor[aor]
        return dropped


def table_stats(store: Any) -> dict[str, int]:
    """The metrics both stores report of their (local) tables."""
    return {
        "buckets": len(store._buckets),
        "windows": len(store._windows),
        "bans": len(store.ban_entries),
        "nonces": len(store._nonces),
        "bucket_evictions": store.bucket_evictions,
        "window_evictions": store.window_evictions,
        "ban_evictions": store.ban_evictions,
        "nonce_evictions": store._nonces.evictions,
    }


class MemoryStateStore:
    """:class:`StateStore` in this process's memory, bounded in size.

    ``max_buckets``, ``max_windows`` and ``max_bans`` bound the three tables;
    nonce counts are kept by a :class:`sip.digest.MemoryNonceCountStore`
    (``nonce_ttl``, ``max_nonces``; see there).  A flood of distinct keys
    (one per spoofed source) therefore costs a fixed amount of memory.

    When a table is full:

    * buckets and windows are kept in least-recently-used order and the least
      recently used is dropped.  Dropping a bucket that has refilled, or a
      window with no event in its last two periods, loses nothing; dropping
      a live one hands that key a fresh bucket or an empty window, and is
      counted in ``bucket_evictions`` / ``window_evictions``.  Keys in use
      stay at the young end, so it takes a flood of that many fresh keys
      between two uses of a key to reset it.  Watch the counters.
    * a ban is never refused: the ban that ends first makes room.  If it has
      already ended it is handed to the next :meth:`expire` call like any
      other; if it is still live it is lifted early and counted in
      ``ban_evictions``.  :meth:`banned` stays one dict lookup whatever the
      size.

    Hit windows are approximate, in fixed memory: two adjacent fixed windows
    of ``window`` seconds (aligned on multiples of ``window``), the previous
    one weighted by how much of it still overlaps the sliding window:
    ``current + previous * (1 - elapsed_in_current / window)``, rounded down.
    The exact count and the estimate both lie between ``current`` and
    ``current + previous``, so the error is at most the previous window's
    count, and nil when those events were spread evenly.  A burst is counted
    exactly while it stays in the current window.  One key should always be
    used with the same ``window``; a different one starts the key afresh.
    """

    __slots__ = (
        "_buckets",
        "_windows",
        "ban_entries",
        "_table",
        "_nonces",
        "registrations",
        "max_buckets",
        "max_windows",
        "max_bans",
        "bucket_evictions",
        "window_evictions",
    )

    def __init__(
        self,
        *,
        max_buckets: int = 100_000,
        max_windows: int = 100_000,
        max_bans: int = 100_000,
        nonce_ttl: float = 305.0,
        max_nonces: int = 100_000,
    ) -> None:
        for name, value in (
            ("max_buckets", max_buckets),
            ("max_windows", max_windows),
            ("max_bans", max_bans),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        self.max_buckets = max_buckets
        self.max_windows = max_windows
        self.max_bans = max_bans
        self.bucket_evictions = 0
        self.window_evictions = 0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._table = BanTable(max_bans)
        self.ban_entries = self._table.entries  # banned(): one dict lookup
        self.registrations = RegistrationTable()
        self._nonces = MemoryNonceCountStore(ttl=nonce_ttl, max_entries=max_nonces)

    # ------------------------------------------------------------ buckets

    def take(self, key: str, rate_per_minute: float, now: float, cost: float = 1.0) -> bool:
        if not (math.isfinite(rate_per_minute) and rate_per_minute >= 0):
            raise ValueError("rate must be finite and non-negative")
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError("cost must be finite and non-negative")
        _check_time("now", now)
        capacity = 2.0 * rate_per_minute
        per_second = rate_per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                _, oldest = self._buckets.popitem(last=False)
                if not oldest.full_at(now):
                    self.bucket_evictions += 1
            bucket = self._buckets[key] = _Bucket(capacity, per_second, now)
        else:
            self._buckets.move_to_end(key)
            bucket.refill(now)
            if bucket.capacity != capacity:
                # The rate was reconfigured: the new size applies from now.
                bucket.capacity, bucket.per_second = capacity, per_second
                bucket.tokens = min(bucket.tokens, capacity)
        if bucket.tokens + _EPSILON < cost:
            return False
        bucket.tokens = max(0.0, bucket.tokens - cost)
        return True

    # ------------------------------------------------------------ hit windows

    def hit(self, key: str, window: float, now: float) -> int:
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be positive")
        _check_time("now", now)
        index = math.floor(now / window)
        entry = self._windows.get(key)
        if entry is None or entry.length != window:
            if entry is None and len(self._windows) >= self.max_windows:
                _, oldest = self._windows.popitem(last=False)
                if not oldest.dead_at(now):
                    self.window_evictions += 1
            entry = self._windows[key] = _Window(window, index)
            self._windows.move_to_end(key)
        else:
            self._windows.move_to_end(key)
            entry.advance(index)
        entry.current += 1
        if entry.index != index:
            # Clock stepped back into an older window: no weighting applies.
            return entry.current + entry.previous
        overlap = 1.0 - (now - index * window) / window
        return entry.current + math.floor(entry.previous * overlap)

    def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    # ------------------------------------------------------------ bans

    def ban(self, address: str, until: float, reason: str, now: float) -> bool:
        _check_time("now", now)
        _check_time("until", until)
        if until <= now:
            raise ValueError("a ban must end after now")
        return self._table.add(address, until, reason, now)

    def banned(self, address: str, now: float) -> bool:
        entry = self.ban_entries.get(address)
        return entry is not None and now < entry.until

    def bans(self, now: float) -> list[Ban]:
        return self._table.live(now)

    def unban(self, address: str) -> bool:
        return self._table.remove(address)

    def expire(self, now: float) -> list[Ban]:
        return self._table.expire(now)

    def count_drop(self, address: str) -> None:
        self._table.count_drop(address)

    @property
    def ban_evictions(self) -> int:
        return self._table.evictions

    # ------------------------------------------------------------ nonce counts

    def check_and_record(self, nonce: str, nc: int, now: float) -> bool:
        return self._nonces.check_and_record(nonce, nc, now)

    # ------------------------------------------------------------ metrics

    def stats(self) -> dict[str, int]:
        """Table sizes and eviction counters, for metrics (evictions should stay at 0)."""
        return table_stats(self)


if TYPE_CHECKING:
    # MemoryStateStore satisfies the Protocol, and any store is a NonceCountStore.
    from sip.digest import NonceCountStore

    _store: StateStore = MemoryStateStore()
    _nonce_store: NonceCountStore = _store
