"""The state store shared through Redis (edge/state_redis.py), against a real redis-server.

Every behavioural test of tests/test_state.py runs again on a :class:`RedisStateStore`
(one instance alone must answer exactly like the memory store, whatever the sync thread
does meanwhile); then two instances on one Redis share bans, nonce counts, buckets and
failure windows; then Redis dies under them and comes back.

The tests start their own redis-server (Debian package redis-server) on a free loopback
port, without persistence, in a scratch directory, and stop it by its PID.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from edge.state_redis import RedisStateStore
from tests import test_state
from tests.peers import PeerError, Proc, free_port, require_binary

T0 = test_state.T0
BOUND = 10.0  # seconds any propagation may take before the test fails (never asserted on)


# ---------------------------------------------------------------- a redis-server of our own


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``, no persistence, in ``workdir``; by PID."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.port = port or free_port("127.0.0.1", "tcp")
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = Proc(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.workdir), "--daemonize", "no"),
            ],
            workdir=self.workdir,
            name=f"redis-{self.port}",
        ).start()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + BOUND
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if not self.proc.running or time.monotonic() > deadline:
                        raise PeerError(
                            f"redis-server did not answer on port {self.port}\n"
                            f"{self.proc.log_tail()}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the crash case (stop() is the polite one)."""
        if self.proc is not None and self.proc.popen is not None and self.proc.running:
            self.proc.popen.kill()
            self.proc.popen.wait(5.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stores(shared_redis: RedisServer) -> Iterator[Callable[..., RedisStateStore]]:
    """Make stores on the module's Redis under one fresh key prefix; closed afterwards."""
    prefix = f"t{secrets.token_hex(4)}:"
    made: list[RedisStateStore] = []

    def make(**kw: Any) -> RedisStateStore:
        kw.setdefault("sync_interval", 0.01)  # many rounds during each test
        store = RedisStateStore(shared_redis.url, key_prefix=prefix, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def wait_until(what: str, check: Callable[[], bool], timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.005)


def connected(*stores: RedisStateStore) -> None:
    for store in stores:
        wait_until("the store reached redis", lambda s=store: s.connected is True)


# ---------------------------------------------------------------- the memory store's tests

_CASES: list[Any] = []
for _name, _func in inspect.getmembers(test_state, inspect.isfunction):
    if not _name.startswith("test_"):
        continue
    _marks = [m for m in getattr(_func, "pytestmark", []) if m.name == "parametrize"]
    if not _marks:
        _CASES.append(pytest.param(_name, {}, id=_name))
        continue
    (_mark,) = _marks
    _names = (
        [n.strip() for n in _mark.args[0].split(",")]
        if isinstance(_mark.args[0], str)
        else list(_mark.args[0])
    )
    for _i, _values in enumerate(_mark.args[1]):
        _CASES.append(
            pytest.param(_name, dict(zip(_names, _values, strict=True)), id=f"{_name}-{_i}")
        )


@pytest.mark.parametrize(("name", "kwargs"), _CASES)
def test_same_behaviour_as_the_memory_store(
    name: str,
    kwargs: dict[str, Any],
    stores: Callable[..., RedisStateStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each test of tests/test_state.py, with every ``MemoryStateStore(...)`` it makes
    replaced by a RedisStateStore (same arguments), its sync thread running."""
    monkeypatch.setattr(test_state, "MemoryStateStore", stores)
    getattr(test_state, name)(**kwargs)


def test_every_memory_test_is_run_here() -> None:
    assert len(_CASES) >= 35


# ---------------------------------------------------------------- two instances, one Redis


def test_a_ban_reaches_the_other_instance(stores: Callable[..., RedisStateStore]) -> None:
    a, b = stores(), stores()
    connected(a, b)
    assert a.ban("192.0.2.1", T0 + 300, "flood", T0)
    wait_until("b sees a's ban", lambda: b.banned("192.0.2.1", T0 + 1))
    (ban,) = b.bans(T0 + 1)
    assert (ban.address, ban.since, ban.until, ban.reason) == ("192.0.2.1", T0, T0 + 300, "flood")
    # Already banned there: b's own ban extends it, and a learns of the extension.
    assert not b.ban("192.0.2.1", T0 + 900, "auth-failures", T0 + 2)
    wait_until("a sees the extension", lambda: a.bans(T0 + 3)[0].until == T0 + 900)
    assert a.bans(T0 + 3)[0].reason == "flood"
    # An unban is shared too.
    assert a.unban("192.0.2.1")
    wait_until("b sees the unban", lambda: not b.banned("192.0.2.1", T0 + 4))
    # Each instance reports the end of the bans it knew.
    a.ban("192.0.2.2", T0 + 10, "scanner", T0)
    wait_until("b sees the second ban", lambda: b.banned("192.0.2.2", T0 + 1))
    assert [x.address for x in a.expire(T0 + 10)] == ["192.0.2.2"]
    assert [x.address for x in b.expire(T0 + 10)] == ["192.0.2.2"]


def test_a_late_instance_gets_the_bans_by_resync(stores: Callable[..., RedisStateStore]) -> None:
    a = stores()
    connected(a)
    a.ban("2001:db8::1", T0 + 300, "flood", T0)
    a.flush()
    b = stores()  # subscribed after the message went out
    wait_until("b read the ban set", lambda: b.banned("2001:db8::1", T0 + 1))


def test_a_nonce_count_is_shared_exactly(stores: Callable[..., RedisStateStore]) -> None:
    a, b = stores(nonce_ttl=300), stores(nonce_ttl=300)
    connected(a, b)
    assert a.check_and_record("nonce-1", 1, T0)
    assert not b.check_and_record("nonce-1", 1, T0 + 1)  # replayed on the other edge
    assert b.check_and_record("nonce-1", 2, T0 + 1)
    assert not a.check_and_record("nonce-1", 2, T0 + 2)
    assert not a.check_and_record("nonce-1", 1, T0 + 2)
    assert a.check_and_record("nonce-1", 3, T0 + 2)
    assert b.check_and_record("nonce-2", 1, T0 + 2)
    # Past the ttl (on the callers' clock) the history is gone, as in memory.
    assert b.check_and_record("nonce-1", 1, T0 + 301)


def test_buckets_are_shared_within_one_sync(stores: Callable[..., RedisStateStore]) -> None:
    """The documented semantics: each instance decides on its own copy, and learns
    what the others took at its next sync round."""
    a, b = stores(), stores()
    connected(a, b)
    rate = 60.0  # 120 tokens, one a second
    assert test_state.drain(a, "rq:192.0.2.9", rate, T0) == 120
    a.flush()
    # b never used the key: its first answer is its own full bucket ...
    assert b.take("rq:192.0.2.9", rate, T0)
    b.flush()
    # ... and after its sync, the shared bucket: empty.
    assert not b.take("rq:192.0.2.9", rate, T0)
    # Refills count once: two seconds give two tokens between both, not four.
    a.flush()
    got = sum(s.take("rq:192.0.2.9", rate, T0 + 2) for s in (a, b))
    a.flush()
    b.flush()
    got += sum(s.take("rq:192.0.2.9", rate, T0 + 2) for s in (a, b))
    assert got <= 2 + 1  # the one token b took before it knew
    # Sustained load spread over both is held to the one rate (plus one sync's worth).
    granted = 0
    for i in range(1, 601):  # 300 s, each instance asking every half second
        now = T0 + 2 + 0.5 * i
        granted += a.take("rq:192.0.2.9", rate, now) + b.take("rq:192.0.2.9", rate, now)
        if i % 4 == 0:  # a sync every two seconds of this clock
            a.flush()
            b.flush()
    assert 300 - 5 <= granted <= 300 + 5


def test_failure_windows_are_shared(stores: Callable[..., RedisStateStore]) -> None:
    a, b = stores(), stores()
    connected(a, b)
    for i in range(3):
        a.hit("af:192.0.2.7", 300, T0 + i)
    a.flush()
    assert b.hit("af:192.0.2.7", 300, T0 + 3) == 1  # not synced yet: its own only
    b.flush()
    assert b.hit("af:192.0.2.7", 300, T0 + 4) == 2 + 3
    b.flush()
    a.flush()
    assert a.hit("af:192.0.2.7", 300, T0 + 5) == 4 + 2
    # A success on one edge forgives the source on all of them.
    b.clear("af:192.0.2.7")
    b.flush()
    wait_until(
        "a forgot the window",
        lambda: "af:192.0.2.7" not in a._windows,
    )
    a.flush()
    assert a.hit("af:192.0.2.7", 300, T0 + 6) == 1


# ---------------------------------------------------------------- Redis goes away


@pytest.mark.timeout(120)
def test_redis_killed_mid_run_and_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    logs: list[tuple[str, str]] = []
    prefix = f"k{secrets.token_hex(4)}:"

    def log(level: str, event: str, /, **fields: Any) -> None:
        logs.append((level, event))

    a = RedisStateStore(server.url, key_prefix=prefix, sync_interval=0.01, log=log)
    b = RedisStateStore(server.url, key_prefix=prefix, sync_interval=0.01)
    try:
        connected(a, b)
        a.ban("192.0.2.1", T0 + 3000, "flood", T0)
        wait_until("b sees the first ban", lambda: b.banned("192.0.2.1", T0 + 1))
        assert a.check_and_record("n1", 1, T0)

        server.kill()
        # Everything keeps answering from local state.
        wait_until("a noticed", lambda: a.connected is False)
        assert b.banned("192.0.2.1", T0 + 2)  # the local ban cache stays
        assert a.banned("192.0.2.1", T0 + 2)
        assert test_state.drain(a, "rq:192.0.2.50", 60, T0) == 120  # limits: per instance
        assert [a.hit("af:192.0.2.51", 60, T0 + i) for i in range(3)] == [1, 2, 3]
        assert not a.check_and_record("n1", 1, T0 + 3)  # replays still caught locally
        assert a.check_and_record("n2", 1, T0 + 3)
        assert a.ban("192.0.2.2", T0 + 3000, "auth-failures", T0 + 3)
        assert a.banned("192.0.2.2", T0 + 3)
        for i in range(200):
            a.take(f"rq:198.51.100.{i}", 60, T0 + 4)
            a.check_and_record(f"outage-{i}", 1, T0 + 4)
        assert a.errors > 0
        assert logs.count(("warning", "state_redis_down")) == 1  # once, not per call

        # Back (empty: no persistence) on the same port.
        server = RedisServer(tmp_path, server.port).start()
        wait_until("a reconnected", lambda: a.connected is True)
        wait_until("b reconnected", lambda: b.connected is True)
        assert ("info", "state_redis_up") in logs
        # The ban made during the outage reaches b; the one from before survives
        # the empty Redis (pushed back by the instances that knew it).
        wait_until("b sees the outage's ban", lambda: b.banned("192.0.2.2", T0 + 5))
        assert b.banned("192.0.2.1", T0 + 5)
        c = RedisStateStore(server.url, key_prefix=prefix, sync_interval=0.01)
        try:
            wait_until("a newcomer sees both", lambda: c.banned("192.0.2.1", T0 + 5))
            wait_until("a newcomer sees both", lambda: c.banned("192.0.2.2", T0 + 5))
        finally:
            c.close()
        # Shared again: nonce counts and new bans.
        assert a.check_and_record("n3", 1, T0 + 6)
        assert not b.check_and_record("n3", 1, T0 + 6)
        b.ban("192.0.2.3", T0 + 3000, "scanner", T0 + 6)
        wait_until("a sees b's new ban", lambda: a.banned("192.0.2.3", T0 + 7))
    finally:
        a.close()
        b.close()
        server.stop()


def test_redis_down_from_the_start(tmp_path: Path) -> None:
    """Nobody listening at all: the store works locally and says so once."""
    port = free_port("127.0.0.1", "tcp")
    logs: list[str] = []
    store = RedisStateStore(
        f"redis://127.0.0.1:{port}/0", log=lambda level, event, **f: logs.append(event)
    )
    try:
        secret = store.shared_secret("nonce")
        assert len(secret) == 32
        assert store.take("k", 60, T0)
        assert store.hit("k", 60, T0) == 1
        assert store.ban("192.0.2.1", T0 + 10, "flood", T0)
        assert store.banned("192.0.2.1", T0)
        assert store.check_and_record("n", 1, T0)
        assert not store.check_and_record("n", 1, T0)
        wait_until("a few reconnection attempts", lambda: store.errors >= 3)
        assert logs.count("state_redis_down") == 1
    finally:
        store.close()


def test_shared_secret_is_shared(stores: Callable[..., RedisStateStore]) -> None:
    a, b = stores(), stores()
    assert a.shared_secret("nonce") == b.shared_secret("nonce")
    assert a.shared_secret("nonce") != a.shared_secret("other")


# ---------------------------------------------------------------- configuration

ECHO: dict[str, Any] = {"upstream": {"echo": True}}


def test_state_section_defaults_and_values() -> None:
    from edge.config import parse, to_dict

    assert parse(ECHO).state.backend == "memory"
    cfg = parse(
        {
            **ECHO,
            "state": {
                "backend": "redis",
                "url": "redis://:hunter2hunter2@10.0.0.9:6380/2",
                "key_prefix": "edge-eu:",
                "timeout": 0.02,
                "sync_interval": 0.05,
            },
        }
    )
    assert (cfg.state.backend, cfg.state.key_prefix) == ("redis", "edge-eu:")
    assert (cfg.state.timeout, cfg.state.sync_interval) == (0.02, 0.05)
    shown = to_dict(cfg)["state"]
    assert shown["url"] == "redis://:***@10.0.0.9:6380/2"
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"backend": "etcd"}, "state.backend"),
        ({"url": "http://127.0.0.1:6379"}, "state.url"),
        ({"url": "redis://127.0.0.1:99999/0"}, "state.url"),
        ({"key_prefix": "has space"}, "state.key_prefix"),
        ({"timeout": 0}, "state.timeout"),
        ({"timeout": 30}, "state.timeout"),
        ({"sync_interval": 60}, "state.sync_interval"),
        ({"servers": []}, "state.servers"),
    ],
)
def test_state_section_rejects(values: dict[str, Any], key: str) -> None:
    from edge.config import ConfigError, parse

    with pytest.raises(ConfigError) as caught:
        parse({**ECHO, "state": values})
    assert caught.value.key == key


def test_open_admission_builds_the_configured_store(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    from edge.app import open_admission
    from edge.config import parse
    from edge.state import MemoryStateStore
    from sip.digest import NonceStatus

    def config(state: dict[str, Any]) -> Any:
        return parse(
            {
                **ECHO,
                "auth": {"database": str(tmp_path / "c.sqlite3")},
                "audit": {"path": str(tmp_path / "audit.jsonl")},
                "state": state,
            }
        )

    admission, close = open_admission(config({}), log=lambda *a, **k: None)
    assert isinstance(admission.store, MemoryStateStore)
    close()
    prefix = f"oa{secrets.token_hex(4)}:"
    made = []
    for _ in range(2):
        admission, close = open_admission(
            config({"backend": "redis", "url": shared_redis.url, "key_prefix": prefix}),
            log=lambda *a, **k: None,
        )
        made.append((admission, close))
    try:
        (a, _), (b, _) = made
        assert isinstance(a.store, RedisStateStore)
        # One nonce secret for both: a challenge from one verifies on the other.
        challenge = a.verifier.make_challenge(a.realm, T0, "192.0.2.1")[0]
        status = b.verifier.nonces.check(challenge.nonce, T0, "192.0.2.1", b.realm)
        assert status is NonceStatus.VALID
    finally:
        for _, close in made:
            close()
