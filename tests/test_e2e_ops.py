"""Operations end to end (issue 8): what an operator sees of a real call.

A sipp call with RTP through a running ``sipedge run``: during the call ``sipedge
calls`` (over the control socket) lists it and ``/readyz`` says unready, because the
relay's tiny port pool (two pairs) is in use; after it, the call is gone from the list,
``/readyz`` is ready again, and ``/metrics`` shows the call started, answered and ended
and its media packets relayed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.peers import sip_uri
from tests.peers_media import wait_for_event
from tests.test_e2e_media import PCAP, UPSTREAM, Call, assert_sipp_ok, call, certs, procs

__all__ = ["call", "certs", "procs"]  # fixtures, used by name

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_values(text: str) -> dict[str, float]:
    """name{labels} -> value, labels sorted, for every sample."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(values: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v
        for key, v in values.items()
        if key.split("{", 1)[0] == name and all(w in key for w in want)
    )


def control(call: Call, *args: str) -> Any:
    sock = call.workdir / ".sipedge" / "control.sock"
    done = subprocess.run(
        [sys.executable, "-m", "edge", *args, "--json", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(120)
def test_metrics_readiness_and_calls_follow_a_real_call(call: Call) -> None:
    assert PCAP.is_file(), f"{PCAP} missing: apt-get install sip-tester"
    uas = call.uas("media_uas_echo", extra=("-rtp_echo",))
    # Two port pairs: one call (a leg each side) takes them all.
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], pairs=2, quarantine=0.0)
    assert call.edge is not None
    metrics_at = call.edge.metrics
    assert http_get(metrics_at, "/healthz")[0] == 200
    assert http_get(metrics_at, "/readyz")[0] == 200
    uac = call.uac("media_uac_pcap", edge.udp or ("", 0), hold_ms=4000, keys={"pcap": str(PCAP)})

    listed: list[Any] = []
    unready: tuple[int, str] = (0, "")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (listed and unready[0]):
        time.sleep(0.3)
        if not listed:
            listed = control(call, "calls", "list")
        if not unready[0]:
            status, body = http_get(metrics_at, "/readyz")
            if status == 503:
                unready = (status, body)
    assert listed, "sipedge calls never showed the live call"
    (live,) = listed
    assert live["state"] in ("early", "confirmed") and live["call_id"]
    assert "***" in live["from_uri"] or "sipp" in live["from_uri"]  # numbers masked
    assert unready[0] == 503 and "port pool" in unready[1], unready

    assert_sipp_ok(uac, 1, 60)
    assert_sipp_ok(uas, 1, uas=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and control(call, "calls", "list"):
        time.sleep(0.3)
    assert control(call, "calls", "list") == []
    status, body = http_get(metrics_at, "/readyz")
    assert status == 200, body

    status, text = http_get(metrics_at, "/metrics")
    assert status == 200
    values = metric_values(text)
    assert total(values, "sipedge_calls_started_total") == 1
    assert total(values, "sipedge_calls_answered_total") == 1
    assert total(values, "sipedge_call_duration_seconds_count") == 1
    assert total(values, "sipedge_sip_requests_total", method="INVITE", transport="udp") == 1
    assert total(values, "sipedge_sip_requests_total", method="BYE", transport="udp") == 1
    # 100, 180 and 200 to the caller, 200 to the BYE: all 1xx/2xx, all over UDP.
    assert total(values, "sipedge_sip_responses_total", transport="udp") >= 3
    # The pcap plays one packet per 30 ms for the 4 s the call lasts, and the UAS echoes
    # each: about 2 x 133 packets come into the relay, and as many go out.
    inbound = total(values, "sipedge_media_packets_total", direction="in")
    outbound = total(values, "sipedge_media_packets_total", direction="out")
    assert inbound >= 200 and outbound >= 0.95 * inbound, (inbound, outbound)
    # The C data plane (on by default) did the relaying: its loops read the packets.
    assert total(values, "sipedge_fastpath_loop_packets_total", direction="in") >= 0.9 * inbound
    assert total(values, "sipedge_fastpath_loop_wakeups_total") > 0
    # It spent some time on them; and polling is off by default (the call is over).
    assert 0 < total(values, "sipedge_fastpath_loop_busy_seconds_total") < 4
    assert any(k.startswith("sipedge_fastpath_loop_polling{") for k in values)
    assert total(values, "sipedge_fastpath_loop_polling") == 0


@pytest.mark.timeout(120)
def test_max_calls_refuses_a_new_call_with_503_while_the_calls_in_progress_finish(
    call: Call,
) -> None:
    """``[limits] max_calls = 2`` and three concurrent calls: the two first complete, the
    third INVITE gets 503 with Retry-After and never reaches the upstream, ``/metrics``
    counts it and the log says ``overload``; once the two have ended a new call is taken."""
    uas = call.uas("media_uas_echo", calls=3)
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], limits={"max_calls": 2})
    assert call.edge is not None
    target = edge.udp or ("", 0)
    first = call.uac("media_uac", target, calls=2, hold_ms=4000, rate=10)
    deadline = time.monotonic() + 10
    while len(call.edge_events("media_session_created")) < 2:
        assert time.monotonic() < deadline, f"two calls not set up\n{call.log()}"
        time.sleep(0.05)
    third = call.uac("media_uac_503", target, calls=1)
    assert_sipp_ok(third, 1, 30)
    assert "Retry-After: 1" in third.sent_and_received()
    logged = wait_for_event(call.edge, "overload", 5)
    assert logged["refused"] == {"calls": 1} and logged["max_calls"] == 2, logged
    status, text = http_get(call.edge.metrics, "/metrics")
    assert status == 200
    values = metric_values(text)
    assert total(values, "sipedge_overload_refused_total", limit="calls") == 1
    assert total(values, "sipedge_overload_refused_total", limit="cps") == 0
    assert_sipp_ok(first, 2, 40)
    fourth = call.uac("media_uac", target, calls=1, hold_ms=500)
    assert_sipp_ok(fourth, 1, 30)
    assert_sipp_ok(uas, 3, uas=True)  # the refused call never reached it
