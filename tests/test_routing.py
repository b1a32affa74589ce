"""edge/routing: upstream set algorithms, failover, health with a fake clock, trunks.

Configurations go through :func:`edge.config.parse`, so the router is tested against
the shapes the real loader produces.  Distributions are checked on counts over fixed
Call-IDs (deterministic), with tolerances derived from the counts, never from time.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from edge import config as cfg
from edge.routing import RouteDecision, Router, Target, normalize_number
from sip.message import Request

UPSTREAM_IP = "192.0.2.10"  # one of the targets below: requests from it go to trunks
OUTSIDE_IP = "198.51.100.7"


def make_config(
    *,
    sets: list[dict[str, Any]] | None = None,
    echo: bool = False,
    default: str = "",
    trunks: list[dict[str, Any]] | None = None,
    echo_address: str = "127.0.0.1:5099",
) -> cfg.Config:
    data: dict[str, Any] = {
        "listen": {"udp": ["127.0.0.1:5060"], "tcp": [], "tls": []},
        "upstream": {"echo": echo},
        "echo": {"address": echo_address},
    }
    if sets is not None:
        data["upstream"]["sets"] = sets
    if default:
        data["upstream"]["default"] = default
    if trunks is not None:
        data["trunks"] = trunks
    return cfg.parse(data, check_files=False)


def a_set(
    name: str = "pbx",
    algorithm: str = "round-robin",
    targets: tuple[tuple[str, int], ...] = (("192.0.2.10", 1), ("192.0.2.11", 1)),
    **probe: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "algorithm": algorithm,
        "targets": [{"uri": f"sip:{host}:5060", "weight": w} for host, w in targets],
        **probe,
    }


def invite(uri: str = "sip:alice@edge.example", call_id: str = "c1", **extra: str) -> Request:
    headers: list[tuple[str, Any]] = [
        ("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1"),
        ("From", "<sip:bob@example.com>;tag=1"),
        ("To", f"<{uri}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 INVITE"),
        ("Max-Forwards", "70"),
    ]
    headers += list(extra.items())
    return Request("INVITE", uri, headers)


def first_hosts(router: Router, n: int, source: str = OUTSIDE_IP) -> list[str]:
    return [
        router.route_initial(invite(call_id=f"call-{i}"), source).targets[0].host for i in range(n)
    ]


class Logs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, event: str, /, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


THREE = (("192.0.2.10", 1), ("192.0.2.11", 1), ("192.0.2.12", 1))


# ------------------------------------------------------------------ algorithms


def test_round_robin_rotates_per_call_and_lists_the_rest_for_failover() -> None:
    router = Router(make_config(sets=[a_set(targets=THREE)]))
    orders = [
        [t.host[-2:] for t in router.route_initial(invite(call_id=str(i)), OUTSIDE_IP).targets]
        for i in range(4)
    ]
    assert orders == [
        ["10", "11", "12"],
        ["11", "12", "10"],
        ["12", "10", "11"],
        ["10", "11", "12"],
    ]


def test_round_robin_distribution_is_even() -> None:
    router = Router(make_config(sets=[a_set(targets=THREE)]))
    counts = Counter(first_hosts(router, 1000))
    assert sorted(counts.values()) == [333, 333, 334]


def test_decision_names_the_set_and_kind() -> None:
    router = Router(make_config(sets=[a_set(name="farm")]))
    decision = router.route_initial(invite(), OUTSIDE_IP)
    assert decision.kind == "upstream"
    assert decision.name == "farm"
    assert decision.targets[0] == Target(
        "sip:192.0.2.10:5060", "udp", "192.0.2.10", 5060, 1, "farm"
    )


def test_smooth_weighted_sequence_matches_nginx() -> None:
    # The example in nginx's commit introducing smooth weighted round-robin
    # (52327e0627f49dbda1e8db695e63a4b0af4448b1): weights {a:5, b:1, c:1}
    # give "a a b a c a a", interleaved rather than five a's in a row.
    targets = (("192.0.2.1", 5), ("192.0.2.2", 1), ("192.0.2.3", 1))
    router = Router(make_config(sets=[a_set(algorithm="weight", targets=targets)]))
    names = {"192.0.2.1": "a", "192.0.2.2": "b", "192.0.2.3": "c"}
    assert "".join(names[h] for h in first_hosts(router, 14)) == "aabacaa" * 2


@pytest.mark.parametrize("weights", [(1, 2, 3), (5, 1, 1), (10, 1, 0)])
def test_weight_distribution_respects_weights(weights: tuple[int, ...]) -> None:
    hosts = [f"192.0.2.{i + 1}" for i in range(len(weights))]
    targets = tuple((h, w) for h, w in zip(hosts, weights, strict=True) if w > 0)
    router = Router(make_config(sets=[a_set(algorithm="weight", targets=targets)]))
    n = 1000
    counts = Counter(first_hosts(router, n))
    total = sum(w for _, w in targets)
    for host, weight in targets:
        # Smooth WRR chooses each target exactly `weight` times in every window of
        # `total` calls, so the count is off the ideal by less than one window's share.
        assert abs(counts[host] - n * weight / total) <= weight


def test_weight_failover_lists_every_other_target() -> None:
    targets = (("192.0.2.1", 3), ("192.0.2.2", 2), ("192.0.2.3", 1))
    router = Router(make_config(sets=[a_set(algorithm="weight", targets=targets)]))
    for i in range(12):
        decision = router.route_initial(invite(call_id=str(i)), OUTSIDE_IP)
        assert sorted(t.host for t in decision.targets) == [h for h, _ in targets]


def test_hash_is_stable_per_call_id_and_across_instances() -> None:
    config = make_config(sets=[a_set(algorithm="hash", targets=THREE)])
    one, two = Router(config), Router(config)
    for i in range(50):
        request = invite(call_id=f"stable-{i}")
        first = one.route_initial(request, OUTSIDE_IP).targets
        assert one.route_initial(request, OUTSIDE_IP).targets == first
        # A fresh router (another process, a restart) agrees: no per-process hash seed.
        assert two.route_initial(request, OUTSIDE_IP).targets == first


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 5)])
def test_hash_distribution_respects_weights(weights: tuple[int, ...]) -> None:
    targets = tuple((f"192.0.2.{i + 1}", w) for i, w in enumerate(weights))
    router = Router(make_config(sets=[a_set(algorithm="hash", targets=targets)]))
    n = 1000
    counts = Counter(first_hosts(router, n))
    total = sum(weights)
    for host, weight in targets:
        p = weight / total
        # Each Call-ID is an independent draw: the count is binomial(n, p).  Five
        # standard deviations; the Call-IDs are fixed, so the outcome is too.
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[host] - n * p) <= 5 * sigma, (host, counts)


def test_hash_removing_a_target_moves_only_its_calls() -> None:
    before = Router(make_config(sets=[a_set(algorithm="hash", targets=THREE)]))
    after = Router(make_config(sets=[a_set(algorithm="hash", targets=THREE[:2])]))
    removed = THREE[2][0]
    moved = 0
    for i in range(1000):
        request = invite(call_id=f"hrw-{i}")
        old = before.route_initial(request, OUTSIDE_IP).targets
        new = after.route_initial(request, OUTSIDE_IP).targets
        if old[0].host == removed:
            # Its calls go to what was their second choice.
            assert new[0].host == old[1].host
            moved += 1
        else:
            assert new[0].host == old[0].host
    assert 200 < moved < 470  # about a third of the calls were on the removed target


def test_hash_adding_a_target_only_takes_calls_to_itself() -> None:
    before = Router(make_config(sets=[a_set(algorithm="hash", targets=THREE[:2])]))
    after = Router(make_config(sets=[a_set(algorithm="hash", targets=THREE)]))
    for i in range(300):
        request = invite(call_id=f"add-{i}")
        old = before.route_initial(request, OUTSIDE_IP).targets[0].host
        new = after.route_initial(request, OUTSIDE_IP).targets[0].host
        assert new in (old, THREE[2][0])


# ------------------------------------------------------------------- failover


def mark(router: Router, target: Target, ok: bool, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        router.report_probe(target, ok, now)


def targets_of(router: Router, set_name: str = "pbx") -> dict[str, Target]:
    decision = router.route_initial(invite(call_id="x"), OUTSIDE_IP)
    assert decision.name == set_name
    return {t.host: t for t in decision.targets}


@pytest.mark.parametrize("algorithm", ["round-robin", "weight", "hash"])
def test_down_targets_go_last(algorithm: str) -> None:
    router = Router(make_config(sets=[a_set(algorithm=algorithm, targets=THREE)]))
    down = targets_of(router)["192.0.2.11"]
    mark(router, down, False, 2)  # probe_failures defaults to 2
    for i in range(30):
        order = [t.host for t in router.route_initial(invite(call_id=f"d{i}"), OUTSIDE_IP).targets]
        assert order[-1] == "192.0.2.11"
        assert sorted(order) == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]


def test_round_robin_skips_a_down_target_evenly() -> None:
    router = Router(make_config(sets=[a_set(targets=THREE)]))
    mark(router, targets_of(router)["192.0.2.11"], False, 2)
    counts = Counter(first_hosts(router, 100))
    assert counts == {"192.0.2.10": 50, "192.0.2.12": 50}


def test_all_down_keeps_the_algorithms_order() -> None:
    router = Router(make_config(sets=[a_set(targets=THREE)]))
    for target in targets_of(router).values():
        mark(router, target, False, 2)
    assert set(router.target_states().values()) == {False}
    orders = [
        [t.host[-2:] for t in router.route_initial(invite(call_id=str(i)), OUTSIDE_IP).targets]
        for i in range(3)
    ]
    # Still rotating over every target (targets_of took the first turn): trying is
    # better than refusing.
    assert [o[0] for o in orders] == ["11", "12", "10"]
    assert all(sorted(o) == ["10", "11", "12"] for o in orders)


def test_report_failure_counts_as_a_failed_probe() -> None:
    logs = Logs()
    router = Router(make_config(sets=[a_set(targets=THREE)]), log=logs)
    target = targets_of(router)["192.0.2.12"]
    router.report_failure(target, 1.0)
    assert router.target_states()["pbx/sip:192.0.2.12:5060"] is True
    router.report_failure(target, 2.0)
    assert router.target_states()["pbx/sip:192.0.2.12:5060"] is False
    assert logs.events() == ["upstream_down"]
    level, _, fields = logs.lines[0]
    assert level == "warning"
    assert fields["set"] == "pbx"
    assert fields["uri"] == "sip:192.0.2.12:5060"


# ---------------------------------------------------------------- probes, health


def probed(**probe: Any) -> Router:
    return Router(make_config(sets=[a_set(targets=THREE[:2], **probe)]))


def test_probes_are_due_at_start_then_every_interval() -> None:
    router = probed(probe_interval=10.0)
    first = router.probe_targets(0.0)
    assert [t.host for t in first] == ["192.0.2.10", "192.0.2.11"]
    assert router.probe_targets(0.5) == []  # in flight
    for target in first:
        router.report_probe(target, True, 0.2)
    assert router.probe_targets(9.9) == []  # not due yet
    assert len(router.probe_targets(10.0)) == 2


def test_never_two_probes_in_flight_for_one_target() -> None:
    router = probed(probe_interval=1.0)
    slow, fast = router.probe_targets(0.0)
    router.report_probe(fast, True, 0.1)
    # Long past the interval: only the target whose probe came back is probed again.
    assert router.probe_targets(5.0) == [fast]
    router.report_probe(slow, False, 5.5)
    assert router.probe_targets(5.5) == [slow]


def test_a_probe_never_reported_stops_blocking_after_timer_f() -> None:
    router = probed(probe_interval=1.0)
    router.probe_targets(0.0)
    assert router.probe_targets(31.0) == []
    assert len(router.probe_targets(32.0)) == 2


def test_down_after_failures_up_after_successes() -> None:
    logs = Logs()
    router = Router(
        make_config(
            sets=[a_set(targets=THREE[:2], probe_interval=5.0, probe_failures=3, probe_successes=2)]
        ),
        log=logs,
    )
    key = "pbx/sip:192.0.2.10:5060"
    now = 0.0

    def probe_round(ok: bool) -> None:
        nonlocal now
        for target in router.probe_targets(now):
            router.report_probe(target, ok if target.host == "192.0.2.10" else True, now + 0.1)
        now += 5.0

    probe_round(False)
    probe_round(False)
    assert router.target_states()[key] is True
    probe_round(True)  # a success resets the failure count
    probe_round(False)
    probe_round(False)
    assert router.target_states()[key] is True
    probe_round(False)
    assert router.target_states()[key] is False
    assert logs.events() == ["upstream_down"]
    probe_round(True)
    assert router.target_states()[key] is False
    probe_round(False)  # a failure resets the success count
    probe_round(True)
    assert router.target_states()[key] is False
    probe_round(True)
    assert router.target_states()[key] is True
    assert logs.events() == ["upstream_down", "upstream_up"]
    assert logs.lines[1][0] == "info"
    assert router.target_states()["pbx/sip:192.0.2.11:5060"] is True


def test_unprobed_sets_and_the_echo_set_are_never_marked_down() -> None:
    router = Router(
        make_config(echo=True, sets=[a_set(name="quiet", probe_interval=0)], default="echo"),
        echo_address=("127.0.0.1", 40123),
    )
    assert router.probe_targets(0.0) == []
    echo = router.route_initial(invite(), OUTSIDE_IP).targets[0]
    for _ in range(5):
        router.report_failure(echo, 1.0)
    quiet = Target("sip:192.0.2.10:5060", "udp", "192.0.2.10", 5060, 1, "quiet")
    for _ in range(5):
        router.report_failure(quiet, 1.0)
    assert router.target_states() == {
        "quiet/sip:192.0.2.10:5060": True,
        "quiet/sip:192.0.2.11:5060": True,
        "echo/sip:127.0.0.1:40123": True,
    }


def test_reports_for_unknown_targets_are_ignored() -> None:
    router = probed()
    stranger = Target("sip:203.0.113.1", "udp", "203.0.113.1", 5060, 1, "nope")
    router.report_probe(stranger, False, 0.0)
    router.report_failure(stranger, 0.0)
    assert set(router.target_states().values()) == {True}


# -------------------------------------------------------------------- echo set


def test_echo_set_holds_the_endpoint_address() -> None:
    router = Router(make_config(echo=True), echo_address=("127.0.0.1", 40123))
    decision = router.route_initial(invite(), OUTSIDE_IP)
    assert decision == RouteDecision(
        (Target("sip:127.0.0.1:40123", "udp", "127.0.0.1", 40123, 1, "echo"),), "upstream", "echo"
    )


def test_echo_set_falls_back_to_the_configured_address() -> None:
    router = Router(make_config(echo=True, echo_address="[::1]:5098"))
    (target,) = router.route_initial(invite(), OUTSIDE_IP).targets
    assert (target.uri, target.host, target.port) == ("sip:[::1]:5098", "::1", 5098)


def test_echo_is_not_an_upstream_source() -> None:
    # make run: a local sipp on 127.0.0.1 plays the carrier and the echo endpoint
    # listens on 127.0.0.1 too; calls from sipp must still go to the echo set.
    router = Router(make_config(echo=True), echo_address=("127.0.0.1", 5099))
    assert not router.is_upstream_source("127.0.0.1")
    assert router.route_initial(invite(), "127.0.0.1").kind == "upstream"


def test_default_set_among_several() -> None:
    config = make_config(
        echo=True,
        sets=[a_set(name="a"), a_set(name="b", targets=(("192.0.2.20", 1),))],
        default="b",
    )
    decision = Router(config).route_initial(invite(), OUTSIDE_IP)
    assert (decision.name, decision.targets[0].host) == ("b", "192.0.2.20")


# ----------------------------------------------------------------------- trunks

TRUNKS = [
    {"name": "inbound", "allow": ["198.51.100.0/24"]},
    {"name": "de", "address": "sip:203.0.113.1:5060", "prefixes": ["+49", "0049"]},
    {"name": "berlin", "address": "sip:203.0.113.2;transport=tcp", "prefixes": ["+4930"]},
    {"name": "secure", "address": "sip:203.0.113.3;transport=tls", "prefixes": ["+1"]},
]


def trunk_router(**extra: Any) -> Router:
    return Router(make_config(sets=[a_set()], trunks=TRUNKS, **extra))


@pytest.mark.parametrize(
    ("uri", "trunk"),
    [
        ("sip:+4940123456@edge", "de"),
        ("sip:+4930123456@edge", "berlin"),  # longest prefix wins
        ("sip:004930123456@edge", "de"),
        ("tel:+49-30-123456", "berlin"),  # visual separators (RFC 3966 §5.1.1)
        ("tel:+49.40.123456;phone-context=example.com", "de"),
        ("sip:+49(30)123456;npdi@edge;user=phone", "berlin"),
        ("sip:%2B4930123@edge", "berlin"),
        ("sip:+12125550100@edge", "secure"),
    ],
)
def test_trunk_by_longest_prefix(uri: str, trunk: str) -> None:
    decision = trunk_router().route_initial(invite(uri), UPSTREAM_IP)
    assert (decision.kind, decision.name) == ("trunk", trunk)
    assert len(decision.targets) == 1


def test_trunk_target_carries_transport_and_default_ports() -> None:
    router = trunk_router()
    by_name = {
        d.name: d.targets[0]
        for d in (
            router.route_initial(invite(uri), UPSTREAM_IP)
            for uri in ("sip:+4940@e", "sip:+4930@e", "sip:+1@e")
        )
    }
    assert (by_name["de"].transport, by_name["de"].port) == ("udp", 5060)
    assert (by_name["berlin"].transport, by_name["berlin"].port) == ("tcp", 5060)
    assert (by_name["secure"].transport, by_name["secure"].port) == ("tls", 5061)
    assert by_name["berlin"].host == "203.0.113.2"
    assert by_name["berlin"].set_name == "berlin"


@pytest.mark.parametrize("uri", ["sip:+3312345@edge", "sip:alice@edge", "sip:edge"])
def test_no_matching_trunk_is_none(uri: str) -> None:
    assert trunk_router().route_initial(invite(uri), UPSTREAM_IP) == RouteDecision((), "none", "")


def test_trunk_header_wins_over_the_prefix() -> None:
    request = invite("sip:+4930123@edge", **{"X-Sipedge-Trunk": " secure "})
    decision = trunk_router().route_initial(request, UPSTREAM_IP)
    assert (decision.kind, decision.name) == ("trunk", "secure")


def test_trunk_header_naming_no_routable_trunk_is_refused() -> None:
    logs = Logs()
    router = Router(make_config(sets=[a_set()], trunks=TRUNKS), log=logs)
    for name in ("nowhere", "inbound"):
        request = invite("sip:+4930123@edge", **{"X-Sipedge-Trunk": name})
        assert router.route_initial(request, UPSTREAM_IP).kind == "none"
    assert logs.events() == ["trunk_unknown", "trunk_unknown"]


def test_trunk_header_name_is_configurable() -> None:
    data: dict[str, Any] = {
        "listen": {"udp": ["127.0.0.1:5060"], "tcp": [], "tls": []},
        "proxy": {"trunk_header": "X-Carrier"},
        "upstream": {"sets": [a_set()]},
        "trunks": TRUNKS,
    }
    router = Router(cfg.parse(data, check_files=False))
    request = invite("sip:+4930123@edge", **{"X-Carrier": "de", "X-Sipedge-Trunk": "secure"})
    assert router.route_initial(request, UPSTREAM_IP).name == "de"


def test_calls_from_outside_ignore_the_trunk_header() -> None:
    request = invite("sip:+4930123@edge", **{"X-Sipedge-Trunk": "secure"})
    decision = trunk_router().route_initial(request, OUTSIDE_IP)
    assert (decision.kind, decision.name) == ("upstream", "pbx")


def test_normalize_number() -> None:
    assert normalize_number("+1 (212) 555-0100") == "+12125550100"
    assert normalize_number("0049.30.1234;npdi;rn=+4930") == "0049301234"
    assert normalize_number("%2B49") == "+49"


# ------------------------------------------------------------------ allowlists

ALLOW_TRUNKS = [
    {"name": "wide", "allow": ["10.0.0.0/8", "2001:db8::/32"]},
    {"name": "narrow", "allow": ["10.1.2.0/24", "2001:db8:1::/48"]},
    {"name": "host", "allow": ["10.1.2.3/32"]},
    {"name": "twin", "allow": ["10.1.2.0/24"]},  # same prefix as narrow: first listed wins
]


@pytest.mark.parametrize(
    ("ip", "trunk"),
    [
        ("10.9.9.9", "wide"),
        ("10.1.2.4", "narrow"),
        ("10.1.2.3", "host"),
        ("::ffff:10.1.2.3", "host"),  # IPv4-mapped source on a dual-stack socket
        ("2001:db8:2::1", "wide"),
        ("2001:db8:1::1", "narrow"),
        ("2001:DB8:1:0::1", "narrow"),
        ("[2001:db8:1::1]", "narrow"),
        ("11.0.0.1", None),
        ("2001:db9::1", None),
        ("not-an-ip", None),
        ("", None),
    ],
)
def test_allowlist_longest_prefix(ip: str, trunk: str | None) -> None:
    router = Router(make_config(sets=[a_set()], trunks=ALLOW_TRUNKS))
    found = router.trunk_for_source(ip)
    assert (found.name if found is not None else None) == trunk


def test_upstream_source_by_ip() -> None:
    router = Router(
        make_config(
            sets=[
                a_set(targets=(("192.0.2.10", 1),)),
                {"name": "v6", "targets": [{"uri": "sip:[2001:db8::10]:5060"}]},
            ]
        )
    )
    assert router.is_upstream_source("192.0.2.10")
    assert router.is_upstream_source("::ffff:192.0.2.10")
    assert router.is_upstream_source("2001:db8:0::10")
    assert not router.is_upstream_source("192.0.2.11")
    assert not router.is_upstream_source("garbage")


def test_e164_numbers() -> None:
    from edge.routing import is_e164

    for good in ("+15551234567", "+4930123456", "+1-555-123-4567", "+1(555)1234567", "+12"):
        assert is_e164(good), good
    for bad in (None, "", "15551234567", "+0123456", "+1234567890123456", "alice", "+1555x", "+"):
        assert not is_e164(bad), bad
