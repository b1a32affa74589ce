"""Overload protection (edge/overload.py): the gate's decisions, the watch's estimate
of the delay, the transport's probes and backlog, and the config keys.  The proxy's
side (503 to a new call, the live call untouched) is tests/test_proxy.py; a real
burst is tests/test_e2e_overload.py."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from edge import config as config_mod
from edge.overload import CALM_SECONDS, END, PROBE, START, OverloadGate, watch
from tests.test_transport import Edge, request, run

__all__ = ["run"]  # the fixture, used by name


def test_one_sample_over_is_a_moment_two_in_a_row_start_an_episode() -> None:
    gate = OverloadGate(threshold=0.25, retry_after=5)
    assert gate.sample(0.0, 2.0) is None  # a collection, a burst drained at once
    assert gate.sample(0.1, 0.0) is None
    assert gate.sample(0.2, 0.25) is None
    assert not gate.shedding
    assert gate.sample(0.3, 0.3) == START
    assert gate.shedding and gate.episodes == 1 and gate.peak == 0.3


def test_an_episode_ends_after_calm_seconds_under_a_quarter() -> None:
    gate = OverloadGate(threshold=0.4, retry_after=5)
    gate.sample(0.0, 0.5)
    assert gate.sample(0.1, 3.0) == START
    assert gate.sample(0.2, 0.3) is None  # under the threshold, not yet under a quarter
    assert gate.sample(0.3, 0.05) is None  # calm from here
    assert gate.sample(0.3 + CALM_SECONDS / 2, 0.0) is None
    assert gate.sample(0.4 + CALM_SECONDS / 2, 0.1) is None  # back at a quarter: calm again
    assert gate.sample(0.5 + CALM_SECONDS / 2, 0.0) is None
    assert gate.sample(0.5 + CALM_SECONDS, 0.0) is None  # not calm long enough since
    assert gate.sample(0.5 + CALM_SECONDS * 1.5, 0.0) == END
    assert not gate.shedding and gate.peak == 3.0
    # A new episode needs two samples in a row again.
    assert gate.sample(10.0, 1.0) is None
    assert gate.sample(10.1, 1.0) == START
    assert gate.episodes == 2 and gate.peak == 1.0


def test_gate_refuses_a_threshold_that_would_always_shed() -> None:
    with pytest.raises(ValueError):
        OverloadGate(threshold=0.0, retry_after=5)


class FakeTransport:
    """The transport's side of the watch: no UDP listener; per sample, the bytes
    read from connections since the last and the bytes left unread."""

    def __init__(self, samples: list[tuple[int, int]]) -> None:
        self.samples = iter(samples)
        self.total = 0
        self.unread = 0
        self.started = False
        self.probe: Any = "unset"

    def probe_target(self) -> None:
        return None

    def watch_probe(self, source: Any, on_probe: Any) -> None:
        self.probe = source

    @property
    def stream_bytes_read(self) -> int:
        if self.started:  # once per sample, before stream_backlog
            read, self.unread = next(self.samples, (1000, 0))
            self.total += read
        self.started = True
        return self.total

    def stream_backlog(self, active_since: float) -> int:
        return self.unread


def test_watch_estimates_the_stream_delay_and_logs_each_change() -> None:
    logs: list[tuple[str, str, dict[str, Any]]] = []
    interval = 0.001
    transport = FakeTransport(
        [
            (0, 5000),  # unread, nothing read: one interval late
            (1000, 1000),  # 1000 unread at 1000 per interval: one interval
            (100, 100_000),  # 100_000 unread at 100 per interval: 1000 intervals, 1 s
            (100, 100_000),  # again: an episode
        ]
    )

    async def main() -> OverloadGate:
        gate = OverloadGate(threshold=0.5, retry_after=9)
        log = lambda lvl, ev, **f: logs.append((lvl, ev, f))  # noqa: E731
        task = asyncio.create_task(watch(gate, transport, log, interval=interval))
        async with asyncio.timeout(20):
            while gate.episodes == 0 or gate.shedding:  # then calm for CALM_SECONDS
                await asyncio.sleep(interval)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return gate

    gate = asyncio.run(main())
    assert [ev for _, ev, _ in logs] == [START, END]
    assert logs[0][2] == {
        "delay_ms": 1000,
        "udp_delay_ms": 0,
        "stream_backlog_bytes": 100_000,
        "retry_after": 9,
    }
    assert gate.peak == pytest.approx(1.0)
    assert transport.probe is None  # the watch let go of the transport


def test_probe_datagrams_are_timed_not_counted_as_keepalives(run) -> None:
    @run
    async def _() -> None:
        async with Edge(udp=("127.0.0.1",), tcp=("127.0.0.1",)) as edge:
            target = edge.layer.probe_target()
            assert target == edge.addr("udp")
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            arrived = asyncio.Event()
            try:
                probe.bind(("127.0.0.1", 0))
                edge.layer.watch_probe(probe.getsockname(), arrived.set)
                other.sendto(PROBE, target)  # a peer's keepalive: counted, not a probe
                probe.sendto(PROBE, target)
                async with asyncio.timeout(5):
                    await arrived.wait()
                assert edge.layer.counters["udp_keepalives"] == 1
                assert edge.inbox.empty()
            finally:
                probe.close()
                other.close()


def test_stream_backlog_counts_unread_bytes_of_active_connections(run) -> None:
    @run
    async def _() -> None:
        async with Edge(tcp=("127.0.0.1",)) as edge:
            assert edge.layer.stream_backlog(0.0) == 0 and edge.layer.stream_bytes_read == 0
            stream = socket.create_connection(edge.addr("tcp"))
            try:
                stream.sendall(request("z9hG4bKs0"))
                await edge.recv()  # the connection is open and has delivered
                assert edge.layer.stream_bytes_read == len(request("z9hG4bKs0"))
                # Sent with no await in between: the loop has not read it yet.
                stream.sendall(request("z9hG4bKs1") * 10)
                assert edge.layer.stream_backlog(0.0) >= 10 * len(request("z9hG4bKs1"))
                # Connections silent since active_since do not count.
                later = asyncio.get_running_loop().time() + 60
                assert edge.layer.stream_backlog(later) == 0
                for _ in range(10):
                    await edge.recv()
                assert edge.layer.stream_backlog(0.0) == 0
            finally:
                stream.close()


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "c.toml"
    path.write_text("[upstream]\necho = true\n" + text)
    return config_mod.load(str(path), check_files=False)


def test_config_defaults_and_bad_values_name_the_key(tmp_path: Path) -> None:
    limits = _load(tmp_path, "").limits
    assert (limits.overload_delay, limits.overload_retry_after) == (0.25, 5)
    off = _load(tmp_path, "[limits]\noverload_delay = 0\noverload_retry_after = 30\n").limits
    assert (off.overload_delay, off.overload_retry_after) == (0.0, 30)
    for text, key in (
        ("[limits]\noverload_delay = -1\n", "limits.overload_delay"),
        ('[limits]\noverload_delay = "1s"\n', "limits.overload_delay"),
        ("[limits]\noverload_retry_after = 0\n", "limits.overload_retry_after"),
    ):
        with pytest.raises(config_mod.ConfigError) as e:
            _load(tmp_path, text)
        assert e.value.key == key
