"""Overload end to end (edge/overload.py): a real ``sipedge run`` hit by a burst of new
calls far beyond what it can take at once.

2000 INVITEs leave one socket back to back, a few milliseconds in all; the edge (with
its echo endpoint in the same process) needs far longer than that for them, so its
UDP receive queue backs up.  With ``[limits] overload_delay`` at 0.1 s the edge must
answer part of the burst 503 with the configured Retry-After, still answer the calls
it took on, log the episode's start and end, count the refusals in ``/metrics``, and
take a new call normally once the queue has drained.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from sip.message import Response, parse_message
from tests.peers import ProcGroup, SipedgeProc, TestCerts
from tests.test_e2e_ops import http_get, metric_values, total
from tests.test_e2e_proxy import certs, procs

__all__ = ["certs", "procs"]  # fixtures, used by name

pytestmark = [pytest.mark.slow]

BURST = 2000
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)


def invite(n: int, edge: tuple[str, int], local: tuple[str, int]) -> bytes:
    head = (
        f"INVITE sip:1000@{edge[0]}:{edge[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-burst-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:load@{local[0]}>;tag=burst{n}\r\n"
        f"To: <sip:1000@{edge[0]}>\r\n"
        f"Call-ID: burst-{n}@overload.test\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:load@{local[0]}:{local[1]}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return (head + SDP).encode()


def collect(sock: socket.socket, quiet: float, limit: float) -> list[Response]:
    """Responses until ``quiet`` s pass without one (at most ``limit`` s in all)."""
    out: list[Response] = []
    deadline = time.monotonic() + limit
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        msg = parse_message(data)
        if isinstance(msg, Response):
            out.append(msg)
    return out


def log_events(edge: SipedgeProc) -> list[str]:
    events = []
    for line in edge.read_stdout().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                events.append(str(record["event"]))
    return events


@pytest.mark.timeout(120)
def test_a_burst_of_new_calls_gets_503_and_the_edge_recovers(
    tmp_path: Path, certs: TestCerts, procs: ProcGroup
) -> None:
    edge = SipedgeProc(
        workdir=tmp_path / "edge",
        certs=certs,
        extra={
            "limits": {"overload_delay": 0.1, "overload_retry_after": 3},
            "media": {"enabled": False},
            "proxy": {"drain_grace": 1.0},
        },
    )
    procs.add(edge).start()
    edge.wait_ready()
    target = edge.addresses.udp
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()
        for n in range(BURST):
            sock.sendto(invite(n, target, local), target)
        answers = collect(sock, quiet=3.0, limit=60.0)
        # One final answer per call (the edge retransmits them: nothing here ACKs).
        final_of = {r.call_id: r for r in answers if r.status >= 200}
        finals = Counter(r.status for r in final_of.values())
        refused = [r for r in final_of.values() if r.status == 503]
        assert refused, f"no 503 in {len(answers)} responses to {BURST} INVITEs: {finals}"
        assert {r.headers.get("Retry-After") for r in refused} == {"3"}
        assert finals[200] > 0, f"no call of the burst was answered: {finals}"
        print(f"{BURST} INVITEs: final answers {dict(finals)}")
        # The episode ends once the queue has stayed low for two seconds.
        deadline = time.monotonic() + 30
        while "overload_end" not in log_events(edge) and time.monotonic() < deadline:
            time.sleep(0.2)
        events = log_events(edge)
        assert "overload_start" in events and "overload_end" in events, events
        assert events.index("overload_start") < events.index("overload_end")
        _, text = http_get(edge.metrics, "/metrics")
        values = metric_values(text)
        assert total(values, "sipedge_overload_refused_total") == len(refused)
        assert total(values, "sipedge_overloaded") == 0
        # After the episode a new call is taken and answered.
        sock.sendto(invite(BURST, target, local), target)
        later = [
            r
            for r in collect(sock, quiet=2.0, limit=20.0)
            if r.call_id == f"burst-{BURST}@overload.test"
        ]
        assert [r.status for r in later if r.status >= 200][:1] == [200], [r.status for r in later]
    finally:
        sock.close()
