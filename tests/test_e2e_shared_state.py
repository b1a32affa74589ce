"""End to end: two ``sipedge run`` processes sharing their security state through one Redis.

Edge A and edge B listen on different ports of 127.0.0.1 with ``[state] backend =
"redis"`` on a redis-server this test starts (tests/test_state_redis.py: own PID, free
port, no persistence).  An attacker on 127.0.0.3 floods edge A until A bans it; edge B,
which never heard from the attacker, then drops its INVITE unanswered while a stranger
on 127.0.0.4 still gets B's 407 challenge.  What B knows is read from its metrics
endpoint and its audit log.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import PeerError, ProcGroup, SipedgeProc, TestCerts, free_port, make_test_certs
from tests.test_state_redis import RedisServer

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ATTACKER = "127.0.0.3"
STRANGER = "127.0.0.4"
FLOOD_DROPS = 20  # bans.flood_drops
RATE = 60  # ratelimit.requests_per_minute: 120 requests pass, then drops
BOUND = 15.0  # seconds a propagation may take before the test fails (never asserted on)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def procs() -> Iterator[ProcGroup]:
    with ProcGroup() as group:
        yield group


def start_edge(
    name: str, workdir: Path, procs: ProcGroup, certs: TestCerts, url: str
) -> SipedgeProc:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = SipedgeProc(
        workdir=workdir,
        certs=certs,
        name=name,
        extra={
            "state": {"backend": "redis", "url": url, "key_prefix": "e2e:"},
            # Each line at once: B's audit log is checked for a line it must not have.
            "audit": {"path": str(workdir / "audit.jsonl"), "flush_interval": 0},
            "ratelimit": {"requests_per_minute": RATE},
            "bans": {"flood_drops": FLOOD_DROPS, "flood_window": 10.0},
            "proxy": {"timer_t1": 0.1},
        },
    )
    procs.add(proc).start()
    try:
        proc.wait_ready()
    except PeerError as e:
        pytest.fail(f"{name} did not start: {e}\n--- config\n{proc.config_text}")
    return proc


def audit(proc: SipedgeProc) -> list[dict[str, Any]]:
    try:
        text = (proc.workdir / "audit.jsonl").read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def metric(proc: SipedgeProc, name: str, labels: str = "") -> float:
    host, port = proc.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5.0) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


def wait_until(what: str, check: Any, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def invite(host: str, port: int, src: str, src_port: int, i: int) -> bytes:
    return (
        f"INVITE sip:1000@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:{src_port};branch=z9hG4bKsh{i};rport\r\n"
        f"From: <sip:caller@{src}>;tag=f{i}\r\nTo: <sip:1000@{host}>\r\n"
        f"Call-ID: shared-{src}-{i}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "User-Agent: sipedge-test\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final_answer(sock: socket.socket, seconds: float) -> int | None:
    """The status of the first final response within ``seconds``; None for silence."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        first = data.split(b"\r\n", 1)[0].decode(errors="replace")
        if first.startswith("SIP/2.0 ") and int(first.split()[1]) >= 200:
            return int(first.split()[1])
    return None


@pytest.mark.timeout(120)
def test_a_source_banned_by_one_edge_is_dropped_by_the_other(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        edge_a = start_edge("edge-a", tmp_path / "a", procs, certs, server.url)
        edge_b = start_edge("edge-b", tmp_path / "b", procs, certs, server.url)
        a_host, a_port = edge_a.addresses.of("udp")
        b_host, b_port = edge_b.addresses.of("udp")
        assert (a_host, a_port) != (b_host, b_port)

        # Before: B challenges the attacker like anyone else.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ATTACKER, free_port(ATTACKER, "udp")))
            sock.sendto(
                invite(b_host, b_port, ATTACKER, sock.getsockname()[1], 0), (b_host, b_port)
            )
            assert final_answer(sock, 5.0) == 407

        # The flood, against A only, until A bans the source.
        def banned_by_a() -> bool:
            return any(
                e["event_type"] == "ban_added" and e.get("source_ip") == ATTACKER
                for e in audit(edge_a)
            )

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ATTACKER, free_port(ATTACKER, "udp")))
            port = sock.getsockname()[1]
            sent = 0
            deadline = time.monotonic() + BOUND
            while not banned_by_a():
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"A did not ban {ATTACKER} after {sent} INVITEs\n{edge_a.log_tail()}"
                    )
                for _ in range(50):
                    sent += 1
                    sock.sendto(invite(a_host, a_port, ATTACKER, port, sent), (a_host, a_port))
                time.sleep(0.01)
        (ban,) = [e for e in audit(edge_a) if e["event_type"] == "ban_added"]
        assert ban["details"]["reason"] == "flood"

        # B learns of it (one pub/sub message) without ever having banned it itself.
        wait_until("B lists the ban", lambda: metric(edge_b, "sipedge_bans_active") >= 1)
        assert not [e for e in audit(edge_b) if e["event_type"] == "ban_added"]

        # The attacker's INVITE to B: dropped unanswered.  A stranger: challenged.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ATTACKER, free_port(ATTACKER, "udp")))
            sock.sendto(
                invite(b_host, b_port, ATTACKER, sock.getsockname()[1], 1), (b_host, b_port)
            )
            assert final_answer(sock, 2.0) is None
        assert metric(edge_b, "sipedge_admission_drops_total", '{reason="banned"}') >= 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((STRANGER, free_port(STRANGER, "udp")))
            sock.sendto(
                invite(b_host, b_port, STRANGER, sock.getsockname()[1], 2), (b_host, b_port)
            )
            assert final_answer(sock, 5.0) == 407

        # Both edges said they share their state, and neither lost Redis.
        for proc in (edge_a, edge_b):
            out = proc.read_stdout()
            assert '"event": "state_shared"' in out or '"event":"state_shared"' in out
            assert "state_redis_down" not in out
    finally:
        procs.stop_all()
        server.stop()
