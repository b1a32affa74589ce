"""The metrics and health endpoint (edge/metrics.py, edge/health.py) on loopback.

A real Proxy (with tests/test_proxy.py's in-memory transport), a real transport
layer, a real media relay and port pool; what a scrape shows is checked against
their own counters, parsed with prometheus_client's parser.  The dashboard
(configs/grafana/sipedge.json) may only name metrics the exporter defines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edge import health
from edge.config import Config, HostPort, LimitsConfig, ListenConfig
from edge.media import MediaController
from edge.metrics import METRIC_NAMES, Metrics, Parts
from edge.proxy import Proxy
from edge.transport import TransportLayer
from media.latching import DropReason
from media.ports import PortPool
from media.relay import MediaRelay
from sip.message import Request
from tests.test_proxy import (
    CALLER,
    PBX1,
    PBX2,
    FakeTransport,
    StubRouter,
    answer,
    invite,
    make_config,
    only,
    udp,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "configs" / "grafana" / "sipedge.json"
# prometheus_client's process, GC and platform collectors (Linux).
STANDARD = frozenset(
    {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "python_gc_collections_total",
        "python_info",
    }
)


class Router(StubRouter):
    """The proxy tests' router plus the health view the metrics read."""

    def __init__(self) -> None:
        super().__init__([PBX1, PBX2])
        self.states = {"pbx/sip:127.0.0.2:5080": True, "pbx/sip:127.0.0.3:5080": False}

    def target_states(self) -> dict[str, bool]:
        return dict(self.states)


class Transport(FakeTransport):
    """The in-memory transport plus the counters a TransportLayer keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.counters = {"tls_handshake_failures": 2, "idle_timeouts": 1, "framing_errors": 4}
        self.connection_count = 3


def free_port_pair() -> int:
    """An even port whose pair is free now (the pool skips one that is not later)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = port - port % 2
        if base >= 1024 and base + 1 <= 65535:
            return base
    raise AssertionError("no free UDP port pair on 127.0.0.1")


def media_controller(pairs: int) -> MediaController:
    """A controller over a real relay with ``pairs`` port pairs, no quarantine."""
    low = free_port_pair()
    pool = PortPool("127.0.0.1", (low, low + 2 * pairs - 1), quarantine=0.0)
    relay = MediaRelay("127.0.0.1", pool=pool)
    return MediaController(Config(), relay=relay)


async def get(address: tuple[str, int], path: str) -> tuple[int, str, bytes]:
    """GET with urllib (blocking, so in a thread: the server runs on this loop)."""
    url = f"http://{address[0]}:{address[1]}{path}"

    def fetch() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    return await asyncio.to_thread(fetch)


async def raw(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` as is and end it; everything the server answers before it closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def scrape(metrics: Metrics) -> dict[str, Any]:
    assert metrics.address is not None
    status, ctype, body = await get(metrics.address, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values of one family by their sorted labels (counters without _total)."""
    family = families[name]
    return {
        tuple(sorted(s.labels.items())): s.value for s in family.samples if isinstance(s, Sample)
    }


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    return samples(families, name)[tuple(sorted(labels.items()))]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy(make_config(), Transport(), Router())
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Metrics]:
    metrics = Metrics(Parts())
    await metrics.start(HostPort("127.0.0.1", 0))
    yield metrics
    await metrics.close()


# ---------------------------------------------------------------- /metrics


async def test_a_scrape_shows_the_parts_counters(proxy: Proxy, endpoint: Metrics) -> None:
    media = media_controller(pairs=4)
    endpoint.parts.proxy = proxy
    endpoint.parts.transport = proxy.transport
    endpoint.parts.media = media
    t: FakeTransport = proxy.transport
    proxy.on_message(invite(), udp(("127.0.0.9", 5070)))  # a stranger: challenged (407)
    proxy.on_message(invite(), udp(CALLER))
    ((fwd, _),) = only(t.take(), Request)
    proxy.on_message(answer(fwd, 200), udp(PBX1))
    proxy.on_message(b"\x00garbage\r\n\r\n", udp(CALLER))
    proxy.counters["requests_foo"] = 7  # an old-style key: folded into OTHER
    adm = proxy.admission
    adm.counters.update(auth_ok_digest=3, auth_failed_bearer=2, dropped_scanner=5, bans_added=1)
    adm.store.ban("192.0.2.66", adm.clock() + 600, "scanner", adm.clock())
    relay = media.relay
    assert relay is not None
    session = await relay.create_session("call-1")
    offer = await session.add_leg("offer")
    answer_leg = await session.add_leg("answer")
    offer.counters.packets_in, offer.counters.bytes_in = 10, 1720
    answer_leg.counters.packets_out, answer_leg.counters.bytes_out = 10, 1720
    answer_leg.counters.drops[DropReason.AUTH_FAILED] = 6
    answer_leg.counters.drops["punt_limited"] = 9  # a reason of the C data plane's
    answer_leg.set_crypto(object(), object())  # type: ignore[arg-type]  # an SDES leg

    fams = await scrape(endpoint)

    assert fams["sipedge_sip_requests"].type == "counter"
    requests = samples(fams, "sipedge_sip_requests")
    assert requests[(("method", "INVITE"), ("transport", "udp"))] == 2
    assert proxy.counters["requests_invite_udp"] == 2
    assert requests[(("method", "OTHER"), ("transport", ""))] == 7
    assert value(fams, "sipedge_sip_parse_errors") == proxy.counters["parse_errors"] == 1
    assert value(fams, "sipedge_sip_refused", status="407") == 1
    assert fams["sipedge_dialogs"].type == "gauge"
    assert value(fams, "sipedge_dialogs", state="confirmed") == 1
    assert value(fams, "sipedge_dialogs", state="early") == 0
    assert value(fams, "sipedge_sip_transactions", side="server") >= 1
    assert value(fams, "sipedge_draining") == 0
    # Admission and its state store.
    assert value(fams, "sipedge_auth", scheme="digest", result="ok") == 3
    assert value(fams, "sipedge_auth", scheme="bearer", result="failed") == 2
    assert value(fams, "sipedge_auth_challenges") == adm.counters["challenged"] == 1
    assert value(fams, "sipedge_admission_drops", reason="scanner") == 5
    assert value(fams, "sipedge_bans") == 1
    assert value(fams, "sipedge_bans_active") == 1
    assert value(fams, "sipedge_state_entries", table="bans") == 1
    assert value(fams, "sipedge_state_evictions", table="ban") == 0
    # Transport.
    assert value(fams, "sipedge_connections_open") == 3
    assert value(fams, "sipedge_tls_handshake_failures", reason="error") == 2
    assert value(fams, "sipedge_connection_timeouts", kind="idle") == 1
    assert value(fams, "sipedge_transport_errors", error="framing") == 4
    # Upstream health from the router the proxy uses.
    assert value(fams, "sipedge_upstream_target_up", set="pbx", target="sip:127.0.0.2:5080") == 1
    assert value(fams, "sipedge_upstream_target_up", set="pbx", target="sip:127.0.0.3:5080") == 0
    # Media: the relay's legs, totals and port pool.
    assert value(fams, "sipedge_media_legs", profile="sdes") == 1
    assert value(fams, "sipedge_media_legs", profile="rtp") == 1
    assert value(fams, "sipedge_media_packets", direction="in") == 10
    assert value(fams, "sipedge_media_bytes", direction="out") == 1720
    assert value(fams, "sipedge_media_drops", reason="auth_failed") == 6
    assert value(fams, "sipedge_media_drops", reason="punt_limited") == 9
    assert value(fams, "sipedge_media_drops", reason="punt_overflow") == 0
    assert value(fams, "sipedge_media_ports", state="in_use") == 4
    assert value(fams, "sipedge_media_ports", state="free") == 4
    assert not samples(fams, "sipedge_metrics_errors")  # every part was read

    # The values follow the parts between scrapes.
    proxy.counters["parse_errors"] += 2
    offer.counters.packets_in += 5
    await relay.delete_session("call-1")  # totals keep what deleted legs counted
    fams = await scrape(endpoint)
    assert value(fams, "sipedge_sip_parse_errors") == 3
    assert value(fams, "sipedge_media_packets", direction="in") == 15
    assert value(fams, "sipedge_media_ports", state="in_use") == 0
    await media.close()


async def test_every_exposed_name_is_declared(proxy: Proxy, endpoint: Metrics) -> None:
    media = media_controller(pairs=2)
    endpoint.parts.proxy = proxy
    endpoint.parts.transport = proxy.transport
    endpoint.parts.media = media
    endpoint.parts.echo = SimpleNamespace(calls=1, packets_echoed=5, sip_address=("127.0.0.1", 1))
    endpoint.observe_call(42.0, "bye")
    endpoint.observe_call(None, "failed-486")
    fams = await scrape(endpoint)
    exposed = {s.name for f in fams.values() for s in f.samples}
    # Every family is announced (HELP and TYPE) even before it has a sample.
    announced: set[str] = set()
    for family in fams.values():
        if not family.name.startswith("sipedge_"):
            continue
        assert family.documentation, family.name
        if family.type == "counter":
            announced.add(family.name + "_total")
        elif family.type == "histogram":
            announced |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            assert family.type == "gauge", family
            announced.add(family.name)
    # The WebRTC counters come with a media controller that keeps them.
    webrtc = {"sipedge_media_dtls_handshakes_total", "sipedge_media_ice_nominations_total"}
    # The C loops' series come with a controller that runs the data plane.
    plane = {n for n in METRIC_NAMES if n.startswith("sipedge_fastpath_")}
    assert announced <= METRIC_NAMES and METRIC_NAMES - announced <= webrtc | plane
    assert {n for n in exposed if n.startswith("sipedge_")} <= METRIC_NAMES
    # Standard process and Python series come along (the dashboard uses them).
    assert exposed >= STANDARD
    await media.close()


async def test_calls_are_counted_through_the_hooks(endpoint: Metrics) -> None:
    m = endpoint
    for _ in range(3):
        m.call_started()
    m.call_answered()
    m.call_answered()
    m.observe_call(12.0, "bye")
    m.observe_call(4000.0, "media-timeout")
    m.observe_call(None, "failed-486")
    m.observe_call(None, "failed-499")  # no series of its own: counted by class
    m.observe_call(None, "failed-486")
    m.observe_call(None, "max-age")  # an early dialog that never ended
    m.observe_call(1.0, "something new")
    fams = await scrape(m)
    assert value(fams, "sipedge_calls_started") == 3
    assert value(fams, "sipedge_calls_answered") == 2
    assert samples(fams, "sipedge_calls_failed") == {
        (("reason", "486"),): 2,
        (("reason", "4xx"),): 1,
        (("reason", "max_age"),): 1,
    }
    hist = fams["sipedge_call_duration_seconds"]
    assert hist.type == "histogram"
    counts = {s.labels["outcome"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts == {"bye": 1, "media_timeout": 1, "other": 1}
    buckets = {
        s.labels["le"]: s.value
        for s in hist.samples
        if s.name.endswith("_bucket") and s.labels["outcome"] == "bye"
    }
    assert buckets["5.0"] == 0 and buckets["15.0"] == 1 and buckets["+Inf"] == 1
    sums = {s.labels["outcome"]: s.value for s in hist.samples if s.name.endswith("_sum")}
    assert sums["media_timeout"] == 4000.0


async def test_a_part_that_fails_costs_only_its_own_metrics(endpoint: Metrics) -> None:
    class Broken:
        counters: ClassVar[dict[str, int]] = {"requests_invite": 1}
        dialogs = property(lambda self: 1 / 0)

    logged: list[str] = []
    endpoint.log = lambda level, event, **fields: logged.append(event)
    endpoint.parts.proxy = Broken()
    endpoint.parts.transport = Transport()
    fams = await scrape(endpoint)
    assert "sipedge_sip_requests" not in fams  # the proxy's section, whole or nothing
    assert value(fams, "sipedge_connections_open") == 3
    assert value(fams, "sipedge_metrics_errors", part="proxy") == 1
    assert "metrics_part_failed" in logged


# ---------------------------------------------------------------- /healthz, /readyz


async def test_healthz_answers_while_nothing_is_ready(endpoint: Metrics) -> None:
    assert endpoint.address is not None
    status, _, body = await get(endpoint.address, "/healthz")
    assert status == 200 and body == b"ok\n"
    status, ctype, body = await get(endpoint.address, "/readyz")
    assert status == 503 and ctype == "application/json"
    answer_ = json.loads(body)
    assert answer_["ready"] is False
    assert "listeners not started" in answer_["reasons"]


async def test_readyz_follows_listeners_upstreams_ports_and_draining(
    endpoint: Metrics,
) -> None:
    assert endpoint.address is not None
    config = Config(
        listen=ListenConfig(
            udp=(HostPort("127.0.0.1", 0),), tcp=(HostPort("127.0.0.1", 0),), tls=()
        )
    )
    parts = endpoint.parts
    parts.config = dataclass_replace_upstream(config)

    async def reasons() -> list[str]:
        status, _, body = await get(endpoint.address or ("", 0), "/readyz")
        got = json.loads(body)
        assert (status == 200) is got["ready"] is (not got["reasons"])
        return list(got["reasons"])

    transport = TransportLayer(
        listen=config.listen,
        limits=LimitsConfig(),
        tls_server=None,
        tls_client=None,
        on_message=lambda data, source: None,
    )
    parts.transport = transport
    assert "udp listener 127.0.0.1:0 not bound" in await reasons()
    await transport.start()
    router = Router()
    router.states = dict.fromkeys(router.states, False)
    proxy = Proxy(make_config(), FakeTransport(), router)
    parts.proxy = proxy
    assert await reasons() == ["all 2 upstream targets down"]
    router.states["pbx/sip:127.0.0.3:5080"] = True
    assert await reasons() == []
    fams = await scrape(endpoint)
    assert value(fams, "sipedge_ready") == 1

    # A media relay with two pairs: one call takes them all.
    media = media_controller(pairs=2)
    parts.media = media
    assert media.relay is not None
    pool = media.relay.pool
    held = [pool.allocate(), pool.allocate()]
    assert await reasons() == ["media port pool exhausted"]
    assert value(await scrape(endpoint), "sipedge_ready") == 0
    for allocation in held:
        allocation.close()
        pool.release(allocation)
    assert await reasons() == []  # quarantine 0: free again at once

    proxy.draining = True
    assert await reasons() == ["draining"]
    proxy.draining = False
    await transport.close()
    assert await reasons() == [
        "udp listener 127.0.0.1:0 not bound",
        "tcp listener 127.0.0.1:0 not bound",
    ]
    await media.close()


def dataclass_replace_upstream(config: Config) -> Config:
    """``config`` without the echo endpoint, so the router's targets decide."""
    return dataclasses.replace(
        config, upstream=dataclasses.replace(config.upstream, echo=False, default="")
    )


async def test_readyz_with_the_echo_endpoint() -> None:
    parts = Parts(config=Config())  # upstream.echo is on by default
    assert "echo endpoint not started" in health.not_ready(parts)

    class Echo:
        started = False

        @property
        def sip_address(self) -> tuple[str, int]:
            if not self.started:
                raise RuntimeError("echo endpoint not started")
            return ("127.0.0.1", 5099)

    parts.echo = echo = Echo()
    assert "echo endpoint not started" in health.not_ready(parts)
    echo.started = True
    assert "echo endpoint not started" not in health.not_ready(parts)


# ---------------------------------------------------------------- bad requests


async def test_bad_requests_get_4xx_and_harm_nothing(
    endpoint: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = endpoint.address
    assert address is not None

    def status_of(response: bytes) -> int:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
        assert match, response[:80]
        return int(match.group(1))

    post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    response = await raw(address, post)
    assert status_of(response) == 405 and b"\r\nAllow: GET\r\n" in response
    assert status_of(await raw(address, b"GET /nowhere HTTP/1.1\r\n\r\n")) == 404
    assert status_of(await raw(address, b"\x16\x03\x01\x02\x00\x01\r\n\r\n")) == 400
    assert status_of(await raw(address, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) == 400
    assert status_of(await raw(address, b"GET /metrics\r\n\r\n")) == 400  # HTTP/0.9
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * health.MAX_REQUEST)
    response = await raw(address, huge)
    assert response == b"" or status_of(response) == 431
    assert await raw(address, b"GET /metr") == b""  # half a request, then EOF

    # A client that stalls gets 408 once the read timeout has passed.
    monkeypatch.setattr(health, "READ_TIMEOUT", 0.05)
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    async with asyncio.timeout(10):
        assert status_of(await reader.read()) == 408
    writer.close()

    # More clients than MAX_CLIENTS: the extra one is closed, the others served.
    monkeypatch.setattr(health, "READ_TIMEOUT", 30.0)
    idle = [await asyncio.open_connection(*address) for _ in range(health.MAX_CLIENTS)]
    await asyncio.sleep(0)  # let the server accept them
    for _ in range(100):
        if len(endpoint._server._clients) == health.MAX_CLIENTS:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert await raw(address, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
    for _, w in idle:
        w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
    for r, w in idle:
        async with asyncio.timeout(10):
            assert status_of(await r.read()) == 200
        w.close()

    # Still serving.
    status, _, _ = await get(address, "/healthz")
    assert status == 200
    status, _, _ = await get(address, "/metrics?debug=1")
    assert status == 200


async def test_close_ends_open_connections() -> None:
    metrics = Metrics(Parts())
    await metrics.start(("127.0.0.1", 0))
    assert metrics.address is not None
    reader, writer = await asyncio.open_connection(*metrics.address)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finished
    await asyncio.sleep(0)
    await metrics.close()
    async with asyncio.timeout(10):
        try:
            rest = await reader.read()
        except ConnectionResetError:  # cut, not closed: also fine
            rest = b""
    assert rest == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(*metrics.address)


async def test_a_taken_address_is_an_oserror() -> None:
    first = Metrics(Parts())
    await first.start(("127.0.0.1", 0))
    assert first.address is not None
    second = Metrics(Parts())
    with pytest.raises(OSError):
        await second.start(first.address)
    await first.close()


# ---------------------------------------------------------------- the dashboard


def dashboard_exprs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, child in node.items():
            if key in ("expr", "query") and isinstance(child, str):
                found.append(child)
            else:
                found += dashboard_exprs(child)
    elif isinstance(node, list):
        for child in node:
            found += dashboard_exprs(child)
    return found


# A metric name in PromQL: an identifier not followed by "(" (a function), not a
# label name inside {...} or by(...), not a keyword.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\w+|\$\{[^}]*\}", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z0-9_:.]+", expr):
        word = match.group(0)
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if word.lower() in _PROMQL_WORDS or not re.match(r"[A-Za-z_:]", word):
            continue  # a keyword or a number
        names.add(word)
    return names


def test_dashboard_is_a_grafana_model_over_our_metrics() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["title"] and model["uid"] and isinstance(model["schemaVersion"], int)
    panels = model["panels"]
    assert panels, "a dashboard without panels"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs(panels)
    assert len(exprs) >= 10
    standard = STANDARD | {"up"}  # Prometheus' own
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel.get("title") and panel.get("gridPos"), panel
        for target in panel.get("targets", []):
            assert target.get("expr"), (panel["title"], target)
            names = promql_metric_names(target["expr"])
            assert names, target["expr"]
            unknown = names - METRIC_NAMES - standard
            assert not unknown, (panel["title"], target["expr"], unknown)
    # Every templating query names our metrics too.
    for var in model.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            inner = re.search(r"label_values\((\w+)", query)
            assert inner and inner.group(1) in METRIC_NAMES | standard, query


def test_promql_name_extraction() -> None:
    expr = (
        'sum by (reason) (rate(sipedge_media_drops_total{reason=~"auth_failed|replay",'
        'instance=~"$instance"}[5m])) / ignoring(x) sipedge_media_ports{state="free"} > 0.9'
    )
    assert promql_metric_names(expr) == {"sipedge_media_drops_total", "sipedge_media_ports"}
    quantile = (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(sipedge_call_duration_seconds_bucket[$__rate_interval])))"
    )
    assert promql_metric_names(quantile) == {"sipedge_call_duration_seconds_bucket"}
