"""The security state shared by several edge instances through Redis.

:class:`RedisStateStore` implements :class:`edge.state.StateStore` so that edges
behind one address share token buckets, failure windows, bans and digest nonce
counts.  The admission policy calls the store synchronously, from the event
loop, for every request; a Redis round trip costs about 150-200 us on loopback
with redis-py (and far more across a network), against 1-4 us for the
in-memory store.  So the hot path never waits for Redis: it reads and writes
local copies, and two background threads keep them in step:

* the *sync* thread wakes every ``sync_interval`` seconds (and at once after a
  ban), pushes what this instance did since the last round (tokens taken, hits,
  bans, unbans, clears) in one pipeline and reads back what the others did;
* the *pub/sub* thread listens on ``<prefix>events`` for bans, unbans and
  clears published by the others, and applies them as they arrive.

Measured on loopback (redis-server 7.0, redis-py 8): ``take`` 2.5 us (memory
store 1.5), ``hit`` 2.0 (1.2), ``banned`` 0.15 (0.12), ``check_and_record``
~275 us (one round trip); a synchronous script per ``take``, the rejected
design, ~210-280 us.  A sync round costs the thread about 12 us of Python per
key used in the last ``_FOLLOW`` seconds (one Lua call per ``_BATCH`` keys;
Redis spends 5-12 us more per key).

Semantics, per piece:

* ``banned()`` is one dict lookup in the local copy of the ban set.  A ban
  reaches every instance one pub/sub message after its Lua script ran, i.e.
  within one ``sync_interval`` plus two round trips; a full resync every
  ``resync_interval`` (and on every reconnection) repairs missed messages.
  ``ban()`` answers "newly banned?" from the local copy: two instances banning
  one address at the same moment both say True (both audit it).  Drop counts
  (``Ban.hits``) are per instance.  Every instance's ``expire()`` reports the
  end of every ban it knew, so each audit log shows its own ``ban_expired``.
* ``take()``: each instance keeps its own bucket for a key, exactly as
  :class:`edge.state.MemoryStateStore` does, and subtracts what the other
  instances took as it learns about it (each instance adds its takings to a
  per-instance counter in Redis).  Limits are therefore shared within one
  sync round: across N instances a key can get up to N times what one bucket
  grants during ``sync_interval`` beyond the limit, and no more; the others'
  takings may push a bucket into debt (down to minus its capacity), so a
  sustained load spread over the instances is held to the one rate.  An
  instance's first use of a key is decided on a full bucket and corrected at
  its first sync from the shared bucket Redis keeps alongside.
* ``hit()``: this instance's two-window estimate (the same as the memory
  store's) plus the other instances' counts for the same two windows, as of
  the last sync round.  ``clear()`` clears the key everywhere (DEL plus a
  published message).
* ``check_and_record()`` (digest nonce counts) is exact: a synchronous Lua
  compare-and-set of the highest nc, bounded by ``timeout``.  It runs only on
  a digest response that proved the password, so its round trip is not paid
  per packet.  A local record answers a replay without the round trip.

With only one instance, every answer is the memory store's answer.

When Redis is unreachable the edge goes on with its local state: limits and
windows become per instance (fail open towards the shared limit, never
refusing because of Redis), the local ban set stays and grows, nonce counts
are checked locally.  The outage is logged once (``state_redis_down``), each
failed operation counted in ``errors``, and the sync thread reconnects every
``_RETRY`` seconds; on reconnection it pushes the bans made meanwhile (and all
live local bans when Redis itself restarted empty, told by its run_id) and
resynchronises.  The loop blocks on Redis only in ``check_and_record`` and at
start-up (``shared_secret``), at most ``timeout`` each, and not at all while
Redis is known to be down.

Keys (all under ``key_prefix``): ``b:<key>`` (hash: the shared bucket ``t``,
``s`` and per-instance takings ``c:<id>``), ``w:<key>`` (hash:
``<window index>:<id>`` -> hits), ``bans`` (hash: address ->
``until|since|reason``), ``n:<nonce>`` (``nc|first seen``), ``secret:<name>``;
the channel ``events``.  Times are the callers' ``now`` (wall clock); key
expiries, which only collect garbage, are Redis's own.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from edge.state import (
    _EPSILON,
    Ban,
    BanTable,
    RegistrationTable,
    _Bucket,
    _check_time,
    _Window,
    table_stats,
)
from sip.digest import MemoryNonceCountStore

__all__ = ["RedisStateStore"]

Log = Callable[..., None]

# Seconds between reconnection attempts while Redis is down.
_RETRY = 0.5
# Keys pushed per sync round: a flood of spoofed sources must not turn the
# sync thread into a second flood (the rest wait for the next round).
_BATCH = 1000
# Seconds a key stays synced every round after its last use here.
_FOLLOW = 2.0
# Ban, unban and clear messages waiting for Redis; beyond this (a long outage
# under a flood of sources) the oldest are dropped and counted.
_MAX_OPS = 20_000
# A bucket holds 2 * rate and refills at rate / 60 per second: full again
# after 120 s whatever the rate, so its shared state may go after that.
_BUCKET_TTL_MS = 121_000

# For each key of the round (one call for the whole batch: per-command costs in
# redis-py dominate, 40 us a key in a pipeline against a few here): refill the
# shared bucket and take the tokens pushed, add them to this instance's takings;
# return the shared tokens and the other instances' total takings.  Numbers go
# back as strings: Redis would truncate a Lua number to an integer.
_BUCKET_LUA = """
local me, ttl = 'c:' .. ARGV[1], ARGV[2]
local out = {}
for k = 1, #KEYS do
  local h, a = KEYS[k], 2 + (k - 1) * 4
  local taken, cap = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local rate, now = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local t = tonumber(redis.call('HGET', h, 't'))
  local s = tonumber(redis.call('HGET', h, 's'))
  if t == nil or s == nil then t, s = cap, now end
  if now > s then t = math.min(cap, t + (now - s) * rate); s = now end
  t = math.max(0, math.min(cap, t) - taken)
  redis.call('HSET', h, 't', string.format('%.17g', t), 's', string.format('%.17g', s))
  if taken > 0 then redis.call('HINCRBYFLOAT', h, me, ARGV[a + 1]) end
  local others = 0
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= me and string.sub(f, 1, 2) == 'c:' then others = others + tonumber(all[i + 1]) end
  end
  redis.call('PEXPIRE', h, ttl)
  out[#out + 1] = string.format('%.17g', t)
  out[#out + 1] = string.format('%.17g', others)
end
return out
"""

# For each key: add this instance's hits (ARGV from a: window index, ttl, number
# of pairs, then pairs of index and count), drop windows older than the previous
# one, return the others' counts in the current and the previous window.
_WINDOW_LUA = """
local me = ARGV[1]
local a = 2
local out = {}
for k = 1, #KEYS do
  local h, idx, ttl, n = KEYS[k], tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  for i = 0, n - 1 do
    redis.call('HINCRBY', h, ARGV[a + 3 + 2 * i] .. ':' .. me, ARGV[a + 4 + 2 * i])
  end
  a = a + 3 + 2 * n
  local cur, prev = 0, 0
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    local f = all[i]
    local sep = string.find(f, ':', 1, true)
    local w = tonumber(string.sub(f, 1, sep - 1))
    if w < idx - 1 then
      redis.call('HDEL', h, f)
    elseif string.sub(f, sep + 1) ~= me then
      if w == idx then cur = cur + tonumber(all[i + 1]) end
      if w == idx - 1 then prev = prev + tonumber(all[i + 1]) end
    end
  end
  redis.call('PEXPIRE', h, ttl)
  out[#out + 1] = cur
  out[#out + 1] = prev
end
return out
"""

# A ban, extended to the later end if one is live; publishes what changed.
# 1 if newly banned.  Values are "until|since|reason", the numbers as Python
# wrote them (exact: Lua's tostring would keep 14 digits).
_BAN_LUA = """
local addr, now, untl, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local cur = redis.call('HGET', KEYS[1], addr)
if cur then
  local u, s, r = string.match(cur, '^([^|]*)|([^|]*)|(.*)$')
  if u and tonumber(u) > now then
    if tonumber(untl) > tonumber(u) then
      local value = untl .. '|' .. s .. '|' .. r
      redis.call('HSET', KEYS[1], addr, value)
      redis.call('PUBLISH', KEYS[2], 'ban|' .. ARGV[5] .. '|' .. addr .. '|' .. value)
    end
    return 0
  end
end
local value = untl .. '|' .. ARGV[2] .. '|' .. reason
redis.call('HSET', KEYS[1], addr, value)
redis.call('PUBLISH', KEYS[2], 'ban|' .. ARGV[5] .. '|' .. addr .. '|' .. value)
return 1
"""

# The live bans; ended ones are removed (atomically, so that an extension
# by another instance in between is not lost).
_BANS_LUA = """
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local u = tonumber(string.match(all[i + 1], '^([^|]*)|'))
  if u == nil or u <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  end
end
return live
"""

# RFC 7616 §3.4 replay check: record nc if greater than the highest seen for
# the nonce within ttl of its first use (times are the callers').
_NONCE_LUA = """
local nc, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('GET', KEYS[1])
if v then
  local seen, first = string.match(v, '^([^|]*)|(.*)$')
  if seen and now - tonumber(first) < ttl then
    if nc <= tonumber(seen) then return 0 end
    redis.call('SET', KEYS[1], ARGV[1] .. '|' .. first, 'KEEPTTL')
    return 1
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[4])
return 1
"""


class _SharedBucket(_Bucket):
    """A local bucket plus what was taken here since the last push and what the
    others had taken in all at the last sync (None: never synced)."""

    __slots__ = ("pending", "others")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        super().__init__(capacity, per_second, now)
        self.pending = 0.0
        self.others: float | None = None


class _SharedWindow(_Window):
    """This instance's two windows, its hits not yet pushed, and the others'
    counts per window index as of the last sync."""

    __slots__ = ("pending", "others")

    def __init__(self, length: float, index: int) -> None:
        super().__init__(length, index)
        self.pending: dict[int, int] = {}
        self.others: dict[int, int] = {}


def _ms(seconds: float) -> int:
    return max(1000, math.ceil(seconds * 1000))


class RedisStateStore:
    """:class:`edge.state.StateStore` shared through Redis (see the module docstring).

    ``url`` is a redis-py URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``); ``timeout`` bounds the synchronous calls (seconds);
    ``sync_interval`` the age of the others' takings and hits a decision may
    miss; ``resync_interval`` how often the whole ban set is read back.  The
    table bounds are the memory store's.  ``log`` is an ``edge.log.LogFn``.
    Call :meth:`close` to stop the threads.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sipedge:",
        timeout: float = 0.05,
        sync_interval: float = 0.1,
        resync_interval: float = 10.0,
        log: Log | None = None,
        max_buckets: int = 100_000,
        max_windows: int = 100_000,
        max_bans: int = 100_000,
        nonce_ttl: float = 305.0,
        max_nonces: int = 100_000,
        start: bool = True,
    ) -> None:
        for name, value in (
            ("max_buckets", max_buckets),
            ("max_windows", max_windows),
            ("max_bans", max_bans),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be positive")
        self.url = url
        self.prefix = key_prefix
        self.timeout = timeout
        self.sync_interval = sync_interval
        self.resync_interval = resync_interval
        self.log: Log = log or (lambda *a, **k: None)
        self.max_buckets = max_buckets
        self.max_windows = max_windows
        self.max_bans = max_bans
        self.nonce_ttl = nonce_ttl
        self.bucket_evictions = 0
        self.window_evictions = 0
        # Failed Redis operations, and ban/unban/clear messages lost to a full queue.
        self.errors = 0
        self.ops_dropped = 0
        # None until the first contact, then whether the last contact worked.
        self.connected: bool | None = None
        # Who we are in Redis: our takings and hits, and our own messages.
        self.instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _SharedBucket] = OrderedDict()
        self._windows: OrderedDict[str, _SharedWindow] = OrderedDict()
        # Keys used here lately -> time.monotonic() of their last use: synced
        # every round while used, and _FOLLOW seconds more, so that a key's view
        # of the others is never older than one round when it is asked again.
        self._dirty_buckets: dict[str, float] = {}
        self._dirty_windows: dict[str, float] = {}
        # Registrations stay in this process: a binding names one of its sockets.
        self.registrations = RegistrationTable()
        self._table = BanTable(max_bans)
        self.ban_entries = self._table.entries  # banned(): one dict lookup, no lock
        self._ban_heap = self._table.heap
        self._nonces = MemoryNonceCountStore(ttl=nonce_ttl, max_entries=max_nonces)
        # ("ban", address, until, reason, now) | ("unban", address) | ("clear", key)
        self._ops: deque[tuple[Any, ...]] = deque()
        # Addresses with a ban or unban not yet in Redis: a resync leaves them alone.
        self._unpushed: dict[str, int] = {}
        self._now = 0.0  # the latest caller time seen: the sync thread's clock
        self._run_id: str | None = None
        self._resync_due = True
        self._repush = False  # push every live local ban before the next resync
        self._next_resync = 0.0  # time.monotonic() of the next full resync
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._round = threading.Lock()  # one sync round at a time
        self._keys = {
            "bans": key_prefix + "bans",
            "events": key_prefix + "events",
        }
        # The loop's client: short timeouts and no retries, so a call blocks at
        # most ``timeout``.  The threads' client may wait longer.
        self._fast = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        slow = max(1.0, timeout)
        self._slow = redis.Redis.from_url(
            url,
            socket_timeout=slow,
            socket_connect_timeout=slow,
            retry=Retry(NoBackoff(), 0),
        )
        self._bucket_script = self._slow.register_script(_BUCKET_LUA)
        self._window_script = self._slow.register_script(_WINDOW_LUA)
        self._ban_script = self._slow.register_script(_BAN_LUA)
        self._bans_script = self._slow.register_script(_BANS_LUA)
        self._nonce_script = self._fast.register_script(_NONCE_LUA)
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the sync and pub/sub threads (done by the constructor unless ``start=False``)."""
        if self._threads:
            return
        for target, name in ((self._sync_loop, "sync"), (self._listen_loop, "pubsub")):
            thread = threading.Thread(target=target, name=f"sipedge-state-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Push what is pending (bounded by the timeouts), stop the threads, close."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._threads.clear()
        if self.connected:
            with contextlib.suppress(redis.RedisError):
                self.flush()
        self._fast.close()
        self._slow.close()

    def shared_secret(self, name: str, size: int = 32) -> bytes:
        """A random secret every instance on this Redis shares (made by the first to ask).

        For the digest nonce secret: a nonce issued by one edge must verify on
        another, or the shared nonce counts would never meet.  Redis down: a
        secret of our own (nonces then work on this instance only).
        """
        key = f"{self.prefix}secret:{name}"
        try:
            self._fast.set(key, secrets.token_bytes(size), nx=True)
            value = self._fast.get(key)
        except redis.RedisError as e:
            self._down(e)
            return secrets.token_bytes(size)
        self._up()
        if not isinstance(value, bytes) or len(value) < 16:
            return secrets.token_bytes(size)
        return value

    # ------------------------------------------------------------ buckets

    def take(self, key: str, rate_per_minute: float, now: float, cost: float = 1.0) -> bool:
        if not (math.isfinite(rate_per_minute) and rate_per_minute >= 0):
            raise ValueError("rate must be finite and non-negative")
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError("cost must be finite and non-negative")
        _check_time("now", now)
        capacity = 2.0 * rate_per_minute
        per_second = rate_per_minute / 60.0
        with self._lock:
            if now > self._now:
                self._now = now
            buckets = self._buckets
            bucket = buckets.get(key)
            if bucket is None:
                if len(buckets) >= self.max_buckets:
                    old_key, oldest = buckets.popitem(last=False)
                    self._dirty_buckets.pop(old_key, None)
                    # Its takings since the last push stay unknown to the others
                    # (one sync round's worth for one key: not worth a table).
                    if not oldest.full_at(now):
                        self.bucket_evictions += 1
                bucket = buckets[key] = _SharedBucket(capacity, per_second, now)
            else:
                buckets.move_to_end(key)
                bucket.refill(now)
                if bucket.capacity != capacity:
                    # The rate was reconfigured: the new size applies from now.
                    bucket.capacity, bucket.per_second = capacity, per_second
                    bucket.tokens = min(bucket.tokens, capacity)
            self._dirty_buckets[key] = time.monotonic()
            if bucket.tokens + _EPSILON < cost:
                return False
            taken = min(cost, max(0.0, bucket.tokens))
            bucket.tokens -= taken
            bucket.pending += taken
            return True

    # ------------------------------------------------------------ hit windows

    def hit(self, key: str, window: float, now: float) -> int:
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be positive")
        _check_time("now", now)
        index = math.floor(now / window)
        with self._lock:
            if now > self._now:
                self._now = now
            windows = self._windows
            entry = windows.get(key)
            if entry is None or entry.length != window:
                if entry is None and len(windows) >= self.max_windows:
                    old_key, oldest = windows.popitem(last=False)
                    self._dirty_windows.pop(old_key, None)
                    if not oldest.dead_at(now):
                        self.window_evictions += 1
                entry = windows[key] = _SharedWindow(window, index)
                windows.move_to_end(key)
            else:
                windows.move_to_end(key)
                entry.advance(index)
            entry.current += 1
            entry.pending[entry.index] = entry.pending.get(entry.index, 0) + 1
            self._dirty_windows[key] = time.monotonic()
            others = entry.others
            current = entry.current + others.get(entry.index, 0)
            previous = entry.previous + others.get(entry.index - 1, 0)
        if entry.index != index:
            # Clock stepped back into an older window: no weighting applies.
            return current + previous
        overlap = 1.0 - (now - index * window) / window
        return current + math.floor(previous * overlap)

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)
            self._dirty_windows.pop(key, None)
            self._queue(("clear", key))

    # ------------------------------------------------------------ bans

    def ban(self, address: str, until: float, reason: str, now: float) -> bool:
        _check_time("now", now)
        _check_time("until", until)
        if until <= now:
            raise ValueError("a ban must end after now")
        with self._lock:
            if now > self._now:
                self._now = now
            added = self._ban_locally(address, until, reason, now)
            self._queue(("ban", address, until, reason, now))
            self._unpushed[address] = self._unpushed.get(address, 0) + 1
        # Push it now rather than at the next round: it is what the others need first.
        self._wake.set()
        return added

    def banned(self, address: str, now: float) -> bool:
        # No lock: one dict lookup (atomic under the GIL), for every packet.
        entry = self.ban_entries.get(address)
        return entry is not None and now < entry.until

    def bans(self, now: float) -> list[Ban]:
        with self._lock:
            return self._table.live(now)

    def unban(self, address: str) -> bool:
        with self._lock:
            removed = self.ban_entries.pop(address, None) is not None
            self._queue(("unban", address))
            self._unpushed[address] = self._unpushed.get(address, 0) + 1
        self._wake.set()
        return removed

    def expire(self, now: float) -> list[Ban]:
        with self._lock:
            return self._table.expire(now)

    def count_drop(self, address: str) -> None:
        self._table.count_drop(address)

    @property
    def ban_evictions(self) -> int:
        return self._table.evictions

    def _ban_locally(self, address: str, until: float, reason: str, now: float) -> bool:
        """The memory store's ban(), on the local copy; the caller holds the lock."""
        return self._table.add(address, until, reason, now)

    def check_and_record(self, nonce: str, nc: int, now: float) -> bool:
        # Locally a replay: a replay everywhere, no round trip.  Recorded here
        # too, so that an outage falls back on what this instance saw.
        if not self._nonces.check_and_record(nonce, nc, now):
            return False
        if not self.connected:
            return True
        try:
            fresh = self._nonce_script(
                keys=[f"{self.prefix}n:{nonce}"],
                args=[nc, repr(float(now)), repr(float(self.nonce_ttl)), _ms(self.nonce_ttl + 5)],
            )
        except redis.RedisError as e:
            self._down(e)
            self._wake.set()
            return True
        return bool(fresh)

    # ------------------------------------------------------------ metrics

    def stats(self) -> dict[str, int]:
        """Table sizes and eviction counters of the local copies (as the memory store's)."""
        return table_stats(self)

    # ------------------------------------------------------------ Redis health

    def _down(self, error: Exception) -> None:
        self.errors += 1
        if self.connected is not False:
            self.connected = False
            # Once per outage: a dead Redis must not flood the log.
            self.log("warning", "state_redis_down", url=self._safe_url(), error=repr(error))

    def _up(self) -> None:
        if self.connected is not True:
            self.connected = True
            self.log("info", "state_redis_up", url=self._safe_url())

    def _safe_url(self) -> str:
        # The URL may carry a password (redis://:secret@host): log only where.
        kwargs = self._fast.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"

    # ------------------------------------------------------------ the sync thread

    def _queue(self, op: tuple[Any, ...]) -> None:
        if len(self._ops) >= _MAX_OPS:
            dropped = self._ops.popleft()
            self.ops_dropped += 1
            if dropped[0] in ("ban", "unban"):
                self._settled(dropped[1])
            # Redis will miss bans: give it all the live local ones once it answers.
            self._repush = True
        self._ops.append(op)

    def _settled(self, address: str) -> None:
        left = self._unpushed.get(address, 0) - 1
        if left > 0:
            self._unpushed[address] = left
        else:
            self._unpushed.pop(address, None)

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.sync_interval if self.connected else _RETRY)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except redis.RedisError as e:
                self._down(e)
            except Exception as e:  # a bug: say so, keep the thread alive
                self.errors += 1
                self.log("error", "state_redis_error", error=repr(e))

    def flush(self) -> None:
        """One sync round, now, in the caller's thread: resync the bans if due,
        push bans, unbans, clears, takings and hits, read back the others'.
        Raises ``redis.RedisError`` (what was pending stays pending)."""
        with self._round:
            if (
                self._resync_due
                or self._repush
                or not self.connected
                or time.monotonic() >= self._next_resync
            ):
                self._resync()
            self._push_ops()
            self._sync_buckets()
            self._sync_windows()
            self._up()

    def _resync(self) -> None:
        """Read the whole ban set back; after a Redis restart, give it ours."""
        run_id = str(self._slow.info("server").get("run_id", ""))
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted or self._repush:
            # Redis lost everything (tests run it without persistence, a crash
            # can too) or missed bans we had to drop: the local bans are the
            # truth; push them back.
            self._repush = False
            with self._lock:
                live = [
                    ("ban", e.address, e.until, e.reason, e.since)
                    for e in self.ban_entries.values()
                    if e.until > self._now
                ]
                for op in live:
                    self._unpushed[op[1]] = self._unpushed.get(op[1], 0) + 1
                self._ops.extendleft(reversed(live))
            self._push_ops()
        with self._lock:
            now = self._now
        raw = self._bans_script(keys=[self._keys["bans"]], args=[repr(now)])
        remote: dict[str, tuple[float, float, str]] = {}
        for i in range(0, len(raw), 2):
            parsed = _parse_ban(raw[i + 1])
            if parsed is not None:
                remote[raw[i].decode()] = parsed
        with self._lock:
            for address, (until, since, reason) in remote.items():
                if address not in self._unpushed:
                    self._apply_ban(address, until, since, reason)
            for address, entry in list(self.ban_entries.items()):
                # Not in Redis, nothing of ours on its way, still live: lifted
                # by another instance while we missed the message.
                if address not in remote and address not in self._unpushed and entry.until > now:
                    del self.ban_entries[address]
        self._resync_due = False
        self._next_resync = time.monotonic() + self.resync_interval

    def _apply_ban(self, address: str, until: float, since: float, reason: str) -> None:
        """A ban another instance made (caller holds the lock)."""
        entry = self.ban_entries.get(address)
        if entry is not None and since < entry.until:
            if until > entry.until:
                entry.until = until
                self._table.push(until, address)
            return
        if until <= since:
            return
        heap = self._ban_heap
        if len(self.ban_entries) >= self.max_bans and heap and heap[0][0] >= until:
            # Full, and this one would end first: it would make room for itself.
            return
        self._ban_locally(address, until, reason, since)

    def _push_ops(self) -> None:
        while self._ops:
            batch = [self._ops[i] for i in range(min(len(self._ops), _BATCH))]
            pipe = self._slow.pipeline(transaction=False)
            for op in batch:
                if op[0] == "ban":
                    _, address, until, reason, now = op
                    self._ban_script(
                        keys=[self._keys["bans"], self._keys["events"]],
                        args=[address, repr(now), repr(until), reason, self.instance],
                        client=pipe,
                    )
                elif op[0] == "unban":
                    pipe.hdel(self._keys["bans"], op[1])
                    pipe.publish(self._keys["events"], f"unban|{self.instance}|{op[1]}")
                else:
                    pipe.delete(f"{self.prefix}w:{op[1]}")
                    pipe.publish(self._keys["events"], f"clear|{self.instance}|{op[1]}")
            pipe.execute()
            with self._lock:
                for op in batch:
                    # Unless a full queue dropped it meanwhile (and settled it).
                    if self._ops and self._ops[0] is op:
                        self._ops.popleft()
                        if op[0] in ("ban", "unban"):
                            self._settled(op[1])

    def _sync_buckets(self) -> None:
        with self._lock:
            keys = _take_batch(self._dirty_buckets)
            items = []
            for key in keys:
                b = self._buckets.get(key)
                if b is not None:
                    items.append((key, b.capacity, b.per_second, b.pending, b.stamp))
                    b.pending = 0.0
        if not items:
            return
        args: list[Any] = [self.instance, _BUCKET_TTL_MS]
        for _, capacity, per_second, taken, stamp in items:
            args += [repr(taken), repr(capacity), repr(per_second), repr(stamp)]
        try:
            flat = self._bucket_script(keys=[f"{self.prefix}b:{i[0]}" for i in items], args=args)
            results = list(zip(flat[0::2], flat[1::2], strict=True))
        except redis.RedisError:
            with self._lock:
                for key, _, _, taken, _ in items:
                    b = self._buckets.get(key)
                    if b is not None:
                        b.pending += taken
                        self._dirty_buckets[key] = time.monotonic()
            raise
        with self._lock:
            for (key, capacity, _, _, _), (shared_raw, others_raw) in zip(
                items, results, strict=True
            ):
                b = self._buckets.get(key)
                if b is None or b.capacity != capacity:
                    continue
                shared, others = float(shared_raw), float(others_raw)
                if b.others is None:
                    if others > 0:
                        # New here, used elsewhere: no fuller than the shared
                        # bucket, less what we took since the push.
                        b.tokens = min(b.tokens, shared - b.pending)
                elif others > b.others:
                    b.tokens = max(-b.capacity, b.tokens - (others - b.others))
                elif others < b.others:
                    # The hash expired or Redis restarted: all of it is new.
                    b.tokens = max(-b.capacity, b.tokens - others)
                b.others = others

    def _sync_windows(self) -> None:
        with self._lock:
            keys = _take_batch(self._dirty_windows)
            items = []
            for key in keys:
                w = self._windows.get(key)
                if w is not None:
                    items.append((key, w.length, w.index, w.pending))
                    w.pending = {}
        if not items:
            return
        args: list[Any] = [self.instance]
        for _, length, index, pending in items:
            args += [index, _ms(2 * length + 1), len(pending)]
            for i, n in pending.items():
                args += [i, n]
        try:
            flat = self._window_script(keys=[f"{self.prefix}w:{i[0]}" for i in items], args=args)
            results = list(zip(flat[0::2], flat[1::2], strict=True))
        except redis.RedisError:
            with self._lock:
                for key, length, _, pending in items:
                    w = self._windows.get(key)
                    if w is not None and w.length == length:
                        for i, n in pending.items():
                            w.pending[i] = w.pending.get(i, 0) + n
                        self._dirty_windows[key] = time.monotonic()
            raise
        with self._lock:
            for (key, length, index, _), (current, previous) in zip(items, results, strict=True):
                w = self._windows.get(key)
                if w is not None and w.length == length:
                    w.others = {index: int(current), index - 1: int(previous)}

    # ------------------------------------------------------------ the pub/sub thread

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self._slow.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._keys["events"])
                # Subscribed: anything missed before now comes with a resync.
                self._resync_due = True
                self._wake.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except redis.RedisError as e:
                self._down(e)
                self._stop.wait(_RETRY)
            except Exception as e:  # a bug: say so, keep the thread alive
                self.errors += 1
                self.log("error", "state_redis_error", error=repr(e))
                self._stop.wait(_RETRY)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _on_message(self, data: bytes) -> None:
        kind, sender, rest = data.decode("utf-8", "replace").split("|", 2)
        if sender == self.instance:
            return
        with self._lock:
            if kind == "ban":
                address, value = rest.split("|", 1)
                parsed = _parse_ban(value.encode())
                if parsed is not None:
                    self._apply_ban(address, *parsed)
            elif kind == "unban":
                if rest not in self._unpushed:
                    self.ban_entries.pop(rest, None)
            elif kind == "clear":
                self._windows.pop(rest, None)
                self._dirty_windows.pop(rest, None)


def _parse_ban(value: bytes) -> tuple[float, float, str] | None:
    """``until|since|reason`` -> (until, since, reason); None if garbled."""
    try:
        until, since, reason = value.decode("utf-8", "replace").split("|", 2)
        return float(until), float(since), reason
    except ValueError:
        return None


def _take_batch(follow: dict[str, float]) -> list[str]:
    """Up to _BATCH keys of ``follow`` to sync this round, least recently synced first;
    keys unused for _FOLLOW seconds leave (the caller holds the lock)."""
    now = time.monotonic()
    keys = []
    for key in follow:
        keys.append(key)
        if len(keys) == _BATCH:
            break
    for key in keys:
        used = follow.pop(key)
        if now - used < _FOLLOW:
            follow[key] = used  # to the back of the queue
    return keys
