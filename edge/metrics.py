"""Prometheus metrics, ``/healthz`` and ``/readyz`` on the metrics port.

    metrics = Metrics(Parts(config=cfg, proxy=proxy, transport=transport, echo=echo))
    await metrics.start(cfg.metrics.address)
    ...
    metrics.observe_call(duration_s, "bye")  # from the proxy, when a call ends
    await metrics.close()

Rules of this file:
- Nothing on the hot path.  The parts keep the plain counters they already keep
  (``Proxy.counters``, ``Admission.counters``, ``TransportLayer.counters``, the relay's
  per-leg counters) and :class:`_Collector` reads them when Prometheus scrapes; live
  gauges (dialogs, legs, ports, upstream health) are counted then too.  The only
  state kept here is what no part counts: calls started, answered, failed and their
  durations, fed by the proxy's hooks (:meth:`Metrics.call_started` and friends).
- Names follow Prometheus' conventions: ``sipedge_`` prefix, counters end in
  ``_total``, base units (seconds, bytes).  Every name is in :data:`METRIC_NAMES`
  (the dashboard test checks configs/grafana/sipedge.json against it).
- Labels come from a closed set each (methods, status classes, drop reasons, the
  configured upstream targets): a peer that invents SIP methods cannot make new
  time series.
- One part that raises while being read costs its own metrics for that scrape
  (counted in ``sipedge_metrics_errors_total``), not the whole scrape.
- Served by :class:`edge.health.HttpEndpoint` on the proxy's own loop: a scrape
  reads the parts between two packets, so nothing needs a lock.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from edge import __version__
from edge.health import HttpEndpoint, Parts, not_ready
from edge.log import LogFn
from edge.overload import LIMITS as OVERLOAD_LIMITS
from media.latching import PLANE_DROP_REASONS, DropReason

__all__ = ["METRIC_NAMES", "Metrics", "Parts"]

# RFC 3261 and the extensions a proxy sees (RFC 3262, 3265, 3311, 3428, 3515, 3903,
# 6086); anything else counts as "OTHER".
METHODS: Final = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER "  # noqa: SIM905
    "MESSAGE UPDATE".split()
)
TRANSPORTS: Final = frozenset(("udp", "tcp", "tls", "ws", "wss"))
AUTH_SCHEMES: Final = frozenset(("digest", "bearer", "accesskey"))
TLS_VERSIONS: Final = frozenset(("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"))
# Failure statuses worth a series of their own; others count by class ("4xx").
CALL_FAILURES: Final = frozenset(
    "400 403 404 407 408 410 480 481 482 483 484 486 487 488 500 502 503 504 "  # noqa: SIM905
    "600 603 604 606".split()
)
CALL_OUTCOMES: Final = ("bye", "media_timeout", "max_age", "other")
# Call durations: a short test call to a long conference (the dialog table ends a
# call after 12 h at most).
DURATION_BUCKETS: Final = tuple(
    float(s) for s in (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
)

# admission counter -> (metric, label value)
_ADMISSION_DROPS: Final = {
    "dropped_banned": "banned",
    "dropped_scanner": "scanner",
    "dropped_unauthenticated": "unauthenticated",
}
_RATE_LIMITS: Final = {
    "dropped_request_rate": "requests",
    "dropped_auth_rate": "auth_attempts",
    "rate_limited_customer": "calls",
}
# transport counter -> label value of sipedge_transport_errors_total
_TRANSPORT_ERRORS: Final = {
    "framing_errors": "framing",
    "udp_oversize": "udp_oversize",
    "udp_send_errors": "udp_send_error",
    "udp_send_dropped": "udp_send_dropped",
    "write_buffer_overflows": "write_buffer_overflow",
}
# Every reason the relay counts (media/latching.py), so a new one shows up by itself,
# and the C data plane's own (too_long, punt_overflow, punt_limited).
_DROP_REASONS: Final = (*(str(reason) for reason in DropReason), *PLANE_DROP_REASONS)
# Leg.profile (media/relay.py) -> label value: the key exchange of each leg.
_PROFILES: Final = {"rtp": "rtp", "srtp": "sdes", "dtls-srtp": "dtls"}
# MediaController counters of WebRTC legs, once it keeps them.
_WEBRTC_COUNTERS: Final = ("dtls_handshakes", "dtls_failures", "ice_nominations")

# Every name a scrape may show, as it appears in the text format.
METRIC_NAMES: Final = frozenset(
    {
        "sipedge_build_info",
        "sipedge_ready",
        "sipedge_metrics_errors_total",
        # SIP (edge/proxy.py)
        "sipedge_sip_requests_total",
        "sipedge_sip_responses_total",
        "sipedge_sip_refused_total",
        "sipedge_sip_parse_errors_total",
        "sipedge_internal_errors_total",
        "sipedge_sip_transactions",
        "sipedge_dialogs",
        "sipedge_draining",
        "sipedge_overload_refused_total",
        # calls (hooks in edge/proxy.py)
        "sipedge_calls_started_total",
        "sipedge_calls_answered_total",
        "sipedge_calls_failed_total",
        "sipedge_call_duration_seconds_bucket",
        "sipedge_call_duration_seconds_count",
        "sipedge_call_duration_seconds_sum",
        # admission (edge/admission.py, edge/state.py)
        "sipedge_auth_total",
        "sipedge_auth_challenges_total",
        "sipedge_permission_denied_total",
        "sipedge_ratelimit_hits_total",
        "sipedge_admission_drops_total",
        "sipedge_bans_total",
        "sipedge_bans_active",
        "sipedge_state_entries",
        "sipedge_state_evictions_total",
        # transport (edge/transport.py)
        "sipedge_connections_open",
        "sipedge_connections_refused_total",
        "sipedge_connection_timeouts_total",
        "sipedge_connect_failures_total",
        "sipedge_transport_errors_total",
        "sipedge_udp_keepalives_total",
        "sipedge_tls_handshakes_total",
        "sipedge_tls_handshake_failures_total",
        # routing (edge/routing.py)
        "sipedge_upstream_target_up",
        # media (edge/media.py, media/relay.py, media/ports.py)
        "sipedge_media_calls",
        "sipedge_media_passthrough_calls_total",
        "sipedge_media_sessions",
        "sipedge_media_legs",
        "sipedge_media_sdp_total",
        "sipedge_media_sdp_errors_total",
        "sipedge_media_dtls_handshakes_total",
        "sipedge_media_ice_nominations_total",
        "sipedge_media_received_packets_total",
        "sipedge_media_packets_total",
        "sipedge_media_bytes_total",
        "sipedge_media_rtcp_packets_total",
        "sipedge_media_punted_packets_total",
        "sipedge_media_send_errors_total",
        "sipedge_media_drops_total",
        "sipedge_media_ports",
        "sipedge_media_ports_exhausted_total",
        "sipedge_media_port_bind_failures_total",
        # the C data plane (media/fastpath.py)
        "sipedge_fastpath_loop_wakeups_total",
        "sipedge_fastpath_loop_packets_total",
        "sipedge_fastpath_loop_syscalls_total",
        "sipedge_fastpath_loop_legs",
        # the built-in echo endpoint (edge/echo.py)
        "sipedge_echo_calls",
        "sipedge_echo_packets_total",
    }
)


# ---------------------------------------------------------------- label helpers


def _split_transport(rest: str) -> tuple[str, str]:
    """``invite_udp`` -> (``invite``, ``udp``); ``invite`` -> (``invite``, ``""``)."""
    head, _, tail = rest.rpartition("_")
    if head and tail in TRANSPORTS:
        return head, tail
    return rest, ""


def _method(name: str) -> str:
    upper = name.upper()
    return upper if upper in METHODS else "OTHER"


def _failure_reason(status: str) -> str:
    if status in CALL_FAILURES:
        return status
    if len(status) == 3 and status.isdigit() and status[0] in "3456":
        return f"{status[0]}xx"
    return "other"


def _outcome(reason: str) -> str:
    normal = reason.replace("-", "_")
    return normal if normal in CALL_OUTCOMES else "other"


class _Histogram:
    """Cumulative-at-scrape bucket counts for one label value (no locks: one loop)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*DURATION_BUCKETS, math.inf), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), float(total)))
        return out


# ---------------------------------------------------------------- the collector


class _Collector:
    """Reads the parts at scrape time; see the module docstring."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.errors: dict[str, int] = defaultdict(int)
        self._sections: tuple[tuple[str, Callable[[], Iterable[Metric]]], ...] = (
            ("health", self._health),
            ("calls", self._calls),
            ("proxy", self._proxy),
            ("admission", self._admission),
            ("transport", self._transport),
            ("router", self._router),
            ("media", self._media),
            ("echo", self._echo),
        )

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "sipedge_build_info", "sipedge's version (always 1)", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        for name, section in self._sections:
            try:
                families = list(section())  # whole or nothing per part
            except Exception as exc:
                self.errors[name] += 1
                self._metrics.log(
                    "error", "metrics_part_failed", part=name, error=f"{type(exc).__name__}: {exc}"
                )
                continue
            yield from families
        errors = CounterMetricFamily(
            "sipedge_metrics_errors",
            "Scrapes in which reading a part failed (its metrics were left out)",
            labels=["part"],
        )
        for name, n in sorted(self.errors.items()):
            errors.add_metric([name], n)
        yield errors

    @property
    def parts(self) -> Parts:
        return self._metrics.parts

    # ------------------------------------------------------------ sections

    def _health(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sipedge_ready",
            "1 when /readyz answers 200 (listeners bound, an upstream up, media ports free)",
            value=0 if not_ready(self.parts) else 1,
        )

    def _calls(self) -> Iterator[Metric]:
        m = self._metrics
        yield CounterMetricFamily(
            "sipedge_calls_started", "INVITEs that started a call (new dialog)", value=m.started
        )
        yield CounterMetricFamily(
            "sipedge_calls_answered", "Calls that got a 2xx to their INVITE", value=m.answered
        )
        failed = CounterMetricFamily(
            "sipedge_calls_failed",
            "Calls that ended unanswered, by final status (or class) or end reason",
            labels=["reason"],
        )
        for reason, n in sorted(m.failed.items()):
            failed.add_metric([reason], n)
        yield failed
        duration = HistogramMetricFamily(
            "sipedge_call_duration_seconds",
            "Durations of answered calls, from the 2xx to their end, by how they ended",
            labels=["outcome"],
        )
        for outcome, hist in sorted(m.durations.items()):
            duration.add_metric([outcome], hist.buckets(), hist.sum)
        yield duration

    def _proxy(self) -> Iterator[Metric]:
        proxy = self.parts.proxy
        if proxy is None:
            return
        requests: dict[tuple[str, str], int] = defaultdict(int)
        responses: dict[tuple[str, str], int] = defaultdict(int)
        refused: dict[str, int] = defaultdict(int)
        counters = dict(proxy.counters)
        for key, n in counters.items():
            if key.startswith("requests_"):
                method, transport = _split_transport(key[len("requests_") :])
                requests[_method(method), transport] += n
            elif key.startswith("responses_"):
                status_class, transport = _split_transport(key[len("responses_") :])
                if len(status_class) == 3 and status_class[0] in "123456":
                    responses[status_class, transport] += n
            elif key.startswith("refused_"):
                status = key[len("refused_") :]
                if status == "dropped" or (len(status) == 3 and status.isdigit()):
                    refused[status] += n
        family = CounterMetricFamily(
            "sipedge_sip_requests",
            "SIP requests received, by method and transport (before admission)",
            labels=["method", "transport"],
        )
        for labels, n in sorted(requests.items()):
            family.add_metric(list(labels), n)
        yield family
        family = CounterMetricFamily(
            "sipedge_sip_responses",
            "SIP responses sent, by status class and transport",
            labels=["status_class", "transport"],
        )
        for labels, n in sorted(responses.items()):
            family.add_metric(list(labels), n)
        yield family
        family = CounterMetricFamily(
            "sipedge_sip_refused",
            "Requests refused by admission: answered with this status, or dropped",
            labels=["status"],
        )
        for status, n in sorted(refused.items()):
            family.add_metric([status], n)
        yield family
        yield CounterMetricFamily(
            "sipedge_sip_parse_errors",
            "SIP messages that did not parse",
            value=counters.get("parse_errors", 0),
        )
        yield CounterMetricFamily(
            "sipedge_internal_errors",
            "Messages whose handling raised (a bug; see the log)",
            value=counters.get("internal_errors", 0),
        )
        # The proxy's transaction tables (no public count yet).
        transactions = GaugeMetricFamily(
            "sipedge_sip_transactions", "Live SIP transactions", labels=["side"]
        )
        transactions.add_metric(["server"], len(getattr(proxy, "_server", ())))
        transactions.add_metric(["client"], len(getattr(proxy, "_client", ())))
        yield transactions
        states: dict[str, int] = {"early": 0, "confirmed": 0}
        for dialog in proxy.dialogs:
            state = dialog.state.value
            if state in states:
                states[state] += 1
        dialogs = GaugeMetricFamily("sipedge_dialogs", "Live calls, by state", labels=["state"])
        for state, n in states.items():
            dialogs.add_metric([state], n)
        yield dialogs
        yield GaugeMetricFamily(
            "sipedge_draining",
            "1 while shutting down (new calls get 503)",
            value=1 if getattr(proxy, "draining", False) else 0,
        )
        family = CounterMetricFamily(
            "sipedge_overload_refused",
            "New calls answered 503 past [limits] max_calls or max_cps, by limit",
            labels=["limit"],
        )
        for limit in OVERLOAD_LIMITS:
            family.add_metric([limit], counters.get(f"overload_{limit}", 0))
        yield family

    def _admission(self) -> Iterator[Metric]:
        adm = self.parts.get("admission")
        if adm is None:
            return
        counters = dict(adm.counters)
        auth: dict[tuple[str, str], int] = defaultdict(int)
        for key, n in counters.items():
            for prefix, result in (("auth_ok_", "ok"), ("auth_failed_", "failed")):
                if key.startswith(prefix):
                    scheme = key[len(prefix) :]
                    auth[scheme if scheme in AUTH_SCHEMES else "other", result] += n
        family = CounterMetricFamily(
            "sipedge_auth",
            "Authentication attempts by scheme and result",
            labels=["scheme", "result"],
        )
        for labels, n in sorted(auth.items()):
            family.add_metric(list(labels), n)
        yield family
        yield CounterMetricFamily(
            "sipedge_auth_challenges",
            "Requests without credentials answered 401/407",
            value=counters.get("challenged", 0),
        )
        yield CounterMetricFamily(
            "sipedge_permission_denied",
            "Authenticated requests refused for lack of a permission (403)",
            value=counters.get("permission_denied", 0),
        )
        family = CounterMetricFamily(
            "sipedge_ratelimit_hits",
            "Requests over a rate limit, by limit",
            labels=["limit"],
        )
        for key, limit in _RATE_LIMITS.items():
            family.add_metric([limit], counters.get(key, 0))
        yield family
        family = CounterMetricFamily(
            "sipedge_admission_drops",
            "Requests dropped unanswered, by reason",
            labels=["reason"],
        )
        for key, reason in _ADMISSION_DROPS.items():
            family.add_metric([reason], counters.get(key, 0))
        yield family
        yield CounterMetricFamily(
            "sipedge_bans", "Sources banned", value=counters.get("bans_added", 0)
        )
        store = adm.store
        yield GaugeMetricFamily(
            "sipedge_bans_active", "Sources banned now", value=len(store.bans(adm.clock()))
        )
        stats = getattr(store, "stats", None)
        if stats is not None:
            values = stats()
            entries = GaugeMetricFamily(
                "sipedge_state_entries", "Entries in the state store, by table", labels=["table"]
            )
            evictions = CounterMetricFamily(
                "sipedge_state_evictions",
                "Entries evicted from a full table (should stay 0)",
                labels=["table"],
            )
            for name, value in sorted(values.items()):
                if name.endswith("_evictions"):
                    evictions.add_metric([name.removesuffix("_evictions")], value)
                else:
                    entries.add_metric([name], value)
            yield entries
            yield evictions

    def _transport(self) -> Iterator[Metric]:
        transport = self.parts.transport
        if transport is None:
            return
        counters = dict(transport.counters)
        yield GaugeMetricFamily(
            "sipedge_connections_open",
            "Open TCP and TLS connections (including ones in their handshake)",
            value=transport.connection_count,
        )
        yield CounterMetricFamily(
            "sipedge_connections_refused",
            "Connections refused by the connection limits",
            value=counters.get("connections_refused", 0),
        )
        family = CounterMetricFamily(
            "sipedge_connection_timeouts",
            "Connections closed for silence (idle) or an unfinished message (header)",
            labels=["kind"],
        )
        family.add_metric(["idle"], counters.get("idle_timeouts", 0))
        family.add_metric(["header"], counters.get("header_timeouts", 0))
        yield family
        yield CounterMetricFamily(
            "sipedge_connect_failures",
            "Outbound TCP/TLS connections that failed",
            value=counters.get("connect_failures", 0),
        )
        family = CounterMetricFamily(
            "sipedge_transport_errors", "Transport errors by kind", labels=["error"]
        )
        for key, error in _TRANSPORT_ERRORS.items():
            family.add_metric([error], counters.get(key, 0))
        yield family
        yield CounterMetricFamily(
            "sipedge_udp_keepalives",
            "Keep-alive datagrams (CRLF) received",
            value=counters.get("udp_keepalives", 0),
        )
        versions: dict[str, int] = defaultdict(int)
        for key, n in counters.items():
            if key.startswith("tls_handshakes_"):
                version = key[len("tls_handshakes_") :]
                versions[version if version in TLS_VERSIONS else "other"] += n
        family = CounterMetricFamily(
            "sipedge_tls_handshakes",
            "Completed TLS handshakes by protocol version",
            labels=["version"],
        )
        for version, n in sorted(versions.items()):
            family.add_metric([version], n)
        yield family
        family = CounterMetricFamily(
            "sipedge_tls_handshake_failures",
            "Inbound TLS handshakes that failed or timed out",
            labels=["reason"],
        )
        family.add_metric(["error"], counters.get("tls_handshake_failures", 0))
        family.add_metric(["timeout"], counters.get("tls_handshake_timeouts", 0))
        yield family

    def _router(self) -> Iterator[Metric]:
        router = self.parts.get("router")
        if router is None:
            return
        family = GaugeMetricFamily(
            "sipedge_upstream_target_up",
            "1 when the upstream target answers its OPTIONS probes (unprobed: always 1)",
            labels=["set", "target"],
        )
        for key, up in sorted(router.target_states().items()):
            set_name, _, target = key.partition("/")
            family.add_metric([set_name, target], 1 if up else 0)
        yield family

    def _media(self) -> Iterator[Metric]:
        media = self.parts.get("media")
        if media is None:
            return
        s = media.stats()
        calls = GaugeMetricFamily(
            "sipedge_media_calls", "Calls known to the media controller", labels=["mode"]
        )
        calls.add_metric(["relayed"], s.get("relayed_calls", 0))
        calls.add_metric(["passthrough"], s.get("calls", 0) - s.get("relayed_calls", 0))
        yield calls
        yield CounterMetricFamily(
            "sipedge_media_passthrough_calls",
            "Calls whose SDP went through untouched",
            value=s.get("passthrough_calls", 0),
        )
        family = CounterMetricFamily(
            "sipedge_media_sdp", "SDP offers and answers handled", labels=["kind"]
        )
        family.add_metric(["offer"], s.get("offers", 0))
        family.add_metric(["answer"], s.get("answers", 0))
        yield family
        family = CounterMetricFamily(
            "sipedge_media_sdp_errors",
            "SDP that did not parse (400) or could not be relayed (488)",
            labels=["reason"],
        )
        family.add_metric(["bad_sdp"], s.get("bad_sdp", 0))
        family.add_metric(["offer_refused"], s.get("offers_refused", 0))
        family.add_metric(["answer_refused"], s.get("answers_refused", 0))
        yield family
        if all(key in s for key in _WEBRTC_COUNTERS):
            family = CounterMetricFamily(
                "sipedge_media_dtls_handshakes",
                "DTLS-SRTP handshakes of WebRTC legs, by result",
                labels=["result"],
            )
            family.add_metric(["ok"], s["dtls_handshakes"])
            family.add_metric(["failed"], s["dtls_failures"])
            yield family
            yield CounterMetricFamily(
                "sipedge_media_ice_nominations",
                "ICE candidate pairs nominated by WebRTC peers (ICE-lite)",
                value=s["ice_nominations"],
            )
        yield CounterMetricFamily(
            "sipedge_media_ports_exhausted",
            "Offers refused with 503 because no port pair was free",
            value=s.get("ports_exhausted", 0),
        )
        relay = getattr(media, "relay", None)
        if relay is None:
            return  # media disabled: no relay counters
        yield GaugeMetricFamily(
            "sipedge_media_sessions",
            "Relay sessions (one per relayed m= line)",
            value=s["sessions"],
        )
        profiles = dict.fromkeys(_PROFILES.values(), 0)
        for session in list(relay.sessions.values()):
            for leg in session.legs.values():
                profile = getattr(leg, "profile", None)
                if profile is None:  # a relay without DTLS-SRTP: SRTP is SDES-keyed
                    srtp = leg.inbound is not None or leg.outbound is not None
                    profile = "srtp" if srtp else "rtp"
                profiles[_PROFILES.get(profile, profile)] += 1
        legs = GaugeMetricFamily(
            "sipedge_media_legs", "Relay legs by media profile", labels=["profile"]
        )
        for profile, n in profiles.items():
            legs.add_metric([profile], n)
        yield legs
        yield CounterMetricFamily(
            "sipedge_media_received_packets",
            "Datagrams received on relay ports (forwarded, punted or dropped)",
            value=s["received"],
        )
        for name, doc, key in (
            ("sipedge_media_packets", "RTP and RTCP packets relayed", "packets"),
            ("sipedge_media_bytes", "Bytes relayed (UDP payload)", "bytes"),
            ("sipedge_media_rtcp_packets", "RTCP packets relayed", "rtcp"),
        ):
            family = CounterMetricFamily(
                name, f"{doc}: in from an endpoint, out to one", labels=["direction"]
            )
            family.add_metric(["in"], s[f"{key}_in"])
            family.add_metric(["out"], s[f"{key}_out"])
            yield family
        yield CounterMetricFamily(
            "sipedge_media_punted_packets",
            "STUN and DTLS packets handed to the control layer",
            value=s["punted"],
        )
        yield CounterMetricFamily(
            "sipedge_media_send_errors",
            "Relayed packets the socket refused",
            value=s["send_errors"],
        )
        family = CounterMetricFamily(
            "sipedge_media_drops",
            "Packets dropped by the relay, by reason (auth_failed and replay: SRTP)",
            labels=["reason"],
        )
        for reason in _DROP_REASONS:
            family.add_metric([reason], s.get(f"drops_{reason}", 0))
        yield family
        ports = GaugeMetricFamily(
            "sipedge_media_ports", "Relay UDP ports by state", labels=["state"]
        )
        ports.add_metric(["in_use"], s["ports_in_use"])
        ports.add_metric(["free"], s["ports_free"])
        ports.add_metric(["quarantined"], s["ports_quarantined"])
        yield ports
        yield CounterMetricFamily(
            "sipedge_media_port_bind_failures",
            "Relay ports that something else on the host held",
            value=s["port_bind_failures"],
        )
        yield from self._fast_path(getattr(media, "fast_path", None))

    def _fast_path(self, fast: Any) -> Iterator[Metric]:
        """The C data plane's loops: how busy each is (wake-ups against packets: the
        batch size; packets per second against the loop's maximum: its utilisation)."""
        if fast is None:
            return
        wakeups = CounterMetricFamily(
            "sipedge_fastpath_loop_wakeups",
            "Wake-ups of each C data-plane loop (epoll_wait returns with work)",
            labels=["loop"],
        )
        packets = CounterMetricFamily(
            "sipedge_fastpath_loop_packets",
            "Datagrams each C loop read (in) and sent (out)",
            labels=["loop", "direction"],
        )
        syscalls = CounterMetricFamily(
            "sipedge_fastpath_loop_syscalls",
            "recvmmsg and sendmmsg calls of each C loop",
            labels=["loop", "call"],
        )
        legs = GaugeMetricFamily(
            "sipedge_fastpath_loop_legs", "Relay legs each C loop owns", labels=["loop"]
        )
        busy = CounterMetricFamily(
            "sipedge_fastpath_loop_busy_seconds",
            "Time each C loop spent on batches (not sleeping, not polling)",
            labels=["loop"],
        )
        polling = GaugeMetricFamily(
            "sipedge_fastpath_loop_polling",
            "1 while a C loop polls after its batches ([media] fastpath_poll_us)",
            labels=["loop"],
        )
        for i, loop in enumerate(fast.loop_stats()):
            n = str(i)
            wakeups.add_metric([n], loop["wakeups"])
            packets.add_metric([n, "in"], loop["packets"])
            packets.add_metric([n, "out"], loop["sent"])
            syscalls.add_metric([n, "recvmmsg"], loop["recv_calls"])
            syscalls.add_metric([n, "sendmmsg"], loop["send_calls"])
            legs.add_metric([n], loop["legs"])
            busy.add_metric([n], loop["busy_ns"] / 1e9)
            polling.add_metric([n], 1 if loop["polling"] else 0)
        yield from (wakeups, packets, syscalls, legs, busy, polling)

    def _echo(self) -> Iterator[Metric]:
        echo = self.parts.echo
        if echo is None:
            return
        yield GaugeMetricFamily(
            "sipedge_echo_calls", "Live calls at the echo endpoint", value=echo.calls
        )
        yield CounterMetricFamily(
            "sipedge_echo_packets", "RTP packets echoed back", value=echo.packets_echoed
        )


# ---------------------------------------------------------------- the endpoint


class Metrics:
    """The metrics and health endpoint over ``parts``; see the module docstring."""

    def __init__(self, parts: Parts, *, log: LogFn | None = None) -> None:
        self.parts = parts
        self.log: LogFn = log or _no_log
        # Calls, fed by the proxy's hooks.
        self.started = 0
        self.answered = 0
        self.failed: dict[str, int] = defaultdict(int)
        self.durations: dict[str, _Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        # Standard process_* (CPU, memory, file descriptors), python_gc_* (the GC is
        # tuned in edge/app.py) and python_info series.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._server: HttpEndpoint | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------ hooks

    def call_started(self) -> None:
        """An INVITE created a call (a new dialog)."""
        self.started += 1

    def call_answered(self) -> None:
        """The call got its first 2xx."""
        self.answered += 1

    def observe_call(self, duration_s: float | None, outcome: str) -> None:
        """A call ended: ``duration_s`` from its answer (None: never answered) and the
        proxy's end reason (``"bye"``, ``"media-timeout"``, ``"max-age"``,
        ``"failed-486"`` ...)."""
        if outcome.startswith("failed-"):
            self.failed[_failure_reason(outcome[len("failed-") :])] += 1
        elif duration_s is None:
            self.failed[_outcome(outcome)] += 1
        else:
            key = _outcome(outcome)
            hist = self.durations.get(key)
            if hist is None:
                hist = self.durations[key] = _Histogram()
            hist.observe(max(0.0, duration_s))

    # ------------------------------------------------------------ reads

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4) of everything."""
        return generate_latest(self.registry)

    def readiness(self) -> list[str]:
        """Why the instance is not ready; empty when it is."""
        return not_ready(self.parts)

    # ------------------------------------------------------------ server

    async def start(self, address: Any) -> None:
        """Serve /metrics, /healthz and /readyz on ``address`` (a HostPort or
        (host, port)); OSError if it cannot listen there."""
        self._server = HttpEndpoint(self.render, self.readiness)
        await self._server.start(address)
        self.address = self._server.address
        host, port = self.address
        self.log(
            "info",
            "metrics_listening",
            address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.close()


def _no_log(level: str, event: str, /, **fields: Any) -> None:
    pass
