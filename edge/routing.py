"""Where an initial request goes: upstream sets, carrier trunks, and upstream health.

Rules of this file:
- Pure decisions and health bookkeeping.  No I/O and no clock: time enters as ``now``
  (the proxy sends the OPTIONS probes and reports their outcome here), so every rule
  is tested with a fake clock.
- Two directions (issue 3, "Routing"):
  * a call from outside (its source is not one of our upstream targets) goes to the
    default upstream set, whose algorithm orders the targets: ``round-robin`` (rotate
    per call), ``weight`` (smooth weighted round-robin, as nginx does) or ``hash``
    (weighted rendezvous hashing of the Call-ID, so that removing a target moves only
    the calls it had);
  * a call from an upstream target towards the outside goes to a trunk: the one named
    by the trunk header (``proxy.trunk_header``), else the trunk with the longest
    number prefix matching the Request-URI user part; no match is kind ``"none"``
    (the proxy answers 404).
- Targets that are down go to the end of the failover list, in configuration order.
  When every target is down the order is kept anyway: trying is better than refusing.
- Health is tracked only for sets that are probed (``probe_interval > 0``): a target
  nobody probes could never come back up, so failures reported against it are ignored.
  The built-in echo set is never probed (it lives in this process).
- Hosts are compared as IP addresses; no DNS lookups here.  A source IP matches an
  upstream target only by an IP-literal target host.

"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from edge.config import ECHO_SET, Config, TrunkConfig
from sip._abnf import remember
from sip.message import Request

__all__ = [
    "RouteDecision",
    "Router",
    "Target",
    "normalize_number",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A probe whose outcome was never reported (a proxy bug, or a task cancelled at
# shutdown) stops blocking the next one after this long: 64*T1, the longest an
# OPTIONS client transaction can run (RFC 3261 §17.1.2.2, Timer F).
_PROBE_STALE: Final = 32.0


# ------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Target:
    """One next hop: where to send, over which transport, and which set it belongs to."""

    uri: str
    transport: str
    host: str
    port: int
    weight: int = 1
    set_name: str = ""


@dataclass(frozen=True, slots=True, init=False)
class RouteDecision:
    """``targets`` in the order to try them (first choice, then failover)."""

    targets: tuple[Target, ...]
    kind: str  # "upstream" | "trunk" | "none"
    name: str  # the set or trunk name ("" for "none")

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(self, targets: tuple[Target, ...], kind: str, name: str) -> None:
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)


_NO_ROUTE: Final = RouteDecision((), "none", "")


# ---------------------------------------------------------------------- numbers

# RFC 3966 §5.1.1: visual-separator = "-" / "." / "(" / ")"; spaces are what people
# type into a configuration file.
_VISUAL_SEPARATORS: Final = str.maketrans("", "", "-.() ")


def normalize_number(user: str) -> str:
    """A telephone number as the prefix table sees it: user parameters dropped
    (``+4930123;npdi`` of a ``user=phone`` URI, RFC 3261 §19.1.6), escapes decoded,
    visual separators removed.  ``"+1 (212) 555-0100"`` gives ``"+12125550100"``."""
    return unquote(user.split(";", 1)[0]).translate(_VISUAL_SEPARATORS)


# ITU-T E.164: "+", a country code that does not start with 0, at most 15 digits.
_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")


def is_e164(user: str | None) -> bool:
    """Whether a URI user part is an E.164 number (after :func:`normalize_number`)."""
    return user is not None and _E164.fullmatch(normalize_number(user)) is not None


_IP_CACHE_MAX: Final = 4096


@functools.lru_cache(maxsize=_IP_CACHE_MAX)
def _ip(text: str) -> IPAddress | None:
    """An address from a source or a config host; IPv4-mapped IPv6 becomes IPv4.

    Cached (bounded, least recently used out): every initial request asks for its
    source's, and ipaddress parsing costs more than the rest of the routing decision.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _hrw_score(call_id: str, target: Target) -> float:
    """Weighted rendezvous score (Schindelhauer and Schomaker's logarithmic method):
    ``weight / -ln(u)`` with ``u`` uniform in (0, 1) from a stable hash of the pair.
    The highest score wins; each target gets calls in proportion to its weight, and
    removing one only moves the calls whose best score was its own."""
    if target.weight <= 0:
        return 0.0
    digest = hashlib.blake2b(
        f"{call_id}\x00{target.uri}".encode(errors="surrogateescape"), digest_size=8
    ).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return target.weight / -math.log(u)


# ------------------------------------------------------------------------- router


@dataclass(slots=True)
class _Health:
    up: bool = True
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    next_probe: float | None = None  # None: due at once
    in_flight_since: float | None = None


@dataclass(slots=True)
class _Set:
    name: str
    algorithm: str
    targets: tuple[Target, ...]
    probe_interval: float
    probe_failures: int
    probe_successes: int
    rr_next: int = 0
    # Smooth weighted round-robin: the running "current weight" per target uri.
    current: dict[str, int] | None = None

    @property
    def probed(self) -> bool:
        return self.probe_interval > 0


class Router:
    """Routing decisions and upstream health; see the module docstring for the rules."""

    def __init__(
        self,
        config: Config,
        *,
        echo_address: tuple[str, int] | None = None,
        log: Callable[..., None] | None = None,
    ) -> None:
        self._log = log
        self._trunk_header = config.proxy.trunk_header
        self._sets: dict[str, _Set] = {}
        for s in config.upstream.sets:
            targets = tuple(
                Target(t.uri, t.transport, t.host, t.port, t.weight, s.name) for t in s.targets
            )
            self._sets[s.name] = _Set(
                s.name,
                s.algorithm,
                targets,
                s.probe_interval,
                s.probe_failures,
                s.probe_successes,
            )
        if config.upstream.echo and ECHO_SET not in self._sets:
            if echo_address is None:
                echo_address = (config.echo.address.host, config.echo.address.port)
            host, port = echo_address
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            echo = Target(f"sip:{hostport}", "udp", host, port, 1, ECHO_SET)
            # Never probed: it is in this process, and a probe could not bring it back.
            self._sets[ECHO_SET] = _Set(ECHO_SET, "round-robin", (echo,), 0.0, 1, 1)
        self._default = config.upstream.resolved_default()
        self._health: dict[tuple[str, str], _Health] = {
            (s.name, t.uri): _Health() for s in self._sets.values() for t in s.targets
        }
        # Sources that count as "our upstream": IP-literal hosts of configured sets.  The
        # echo endpoint is left out: it never sends an initial request, and on a
        # development box it shares 127.0.0.1 with the local sipp that plays the carrier.
        self._upstream_ips: frozenset[IPAddress] = frozenset(
            ip for s in config.upstream.sets for t in s.targets if (ip := _ip(t.host)) is not None
        )
        self._upstream_sources: dict[str, bool] = {}  # is_upstream_source by text
        self._allow: tuple[tuple[IPNetwork, TrunkConfig], ...] = ()
        self._trunks: dict[str, TrunkConfig] = {}
        self._prefixes: tuple[tuple[str, TrunkConfig], ...] = ()
        self.set_trunks(config.trunks)

    def set_trunks(self, trunks: Sequence[TrunkConfig]) -> None:
        """Use these trunks from now on (SIGHUP): allowlists and number prefixes.

        Built aside and swapped in whole, so a request never sees half a table;
        live calls keep their dialogs (nothing here refers to them).
        """
        # Allowlist networks, most specific first (stable: ties keep config order).
        allow = [(net, trunk) for trunk in trunks for net in trunk.allow]
        allow.sort(key=lambda pair: -pair[0].prefixlen)
        prefixes = [(normalize_number(p), t) for t in trunks if _routable(t) for p in t.prefixes]
        prefixes.sort(key=lambda pair: -len(pair[0]))
        self._allow, self._trunks, self._prefixes = (
            tuple(allow),
            {t.name: t for t in trunks},
            tuple(prefixes),
        )

    # ------------------------------------------------------------------ decisions

    def route_initial(self, request: Request, source_ip: str) -> RouteDecision:
        """Where a dialog-creating or out-of-dialog request goes (see module docstring)."""
        if self.is_upstream_source(source_ip):
            return self._route_to_trunk(request)
        upstream = self._sets.get(self._default)
        if upstream is None or not upstream.targets:
            return _NO_ROUTE
        return RouteDecision(self._order(upstream, request.call_id), "upstream", upstream.name)

    def is_upstream_source(self, ip: str) -> bool:
        """The request came from one of our upstream targets (by IP)."""
        # By the source's text first: an address's hash runs interpreted
        # (ipaddress), once per initial request.  Bounded like _ip's cache.
        known = self._upstream_sources.get(ip)
        if known is None:
            addr = _ip(ip)
            known = addr is not None and addr in self._upstream_ips
            remember(self._upstream_sources, ip, known, _IP_CACHE_MAX)
        return known

    def trunk_for_source(self, ip: str) -> TrunkConfig | None:
        """The trunk whose allowlist holds ``ip``; the longest matching prefix wins."""
        addr = _ip(ip)
        if addr is None:
            return None
        for net, trunk in self._allow:
            if addr.version == net.version and addr in net:
                return trunk
        return None

    def trunk_target(self, trunk: TrunkConfig) -> Target | None:
        """The next hop of a trunk, or None for a trunk that only sends to us."""
        if not _routable(trunk):
            return None
        transport = trunk.transport.lower()
        port = trunk.port or (5061 if transport == "tls" else 5060)  # RFC 3261 §19.1.2
        return Target(trunk.address, transport, trunk.host, port, 1, trunk.name)

    def _route_to_trunk(self, request: Request) -> RouteDecision:
        if self._trunk_header:
            named = request.headers.get(self._trunk_header)
            if named is not None:
                # An explicit choice is obeyed or refused, never silently replaced by
                # the prefix table: a wrong header is the upstream's bug to see.
                trunk = self._trunks.get(named.strip())
                target = self.trunk_target(trunk) if trunk is not None else None
                if trunk is None or target is None:
                    self._emit("warning", "trunk_unknown", trunk=named.strip())
                    return _NO_ROUTE
                return RouteDecision((target,), "trunk", trunk.name)
        user = request.uri.user
        if user is None:
            return _NO_ROUTE
        number = normalize_number(user)
        for prefix, trunk in self._prefixes:
            if number.startswith(prefix):
                target = self.trunk_target(trunk)
                assert target is not None  # only routable trunks are in the table
                return RouteDecision((target,), "trunk", trunk.name)
        return _NO_ROUTE

    def _order(self, s: _Set, call_id: str) -> tuple[Target, ...]:
        up = [t for t in s.targets if self._is_up(s, t)]
        down = [t for t in s.targets if not self._is_up(s, t)]
        if not up:
            # Everything is down: keep the algorithm's order over all of them.
            up, down = list(s.targets), []
        if s.algorithm == "hash":
            ordered = sorted(up, key=lambda t: (-_hrw_score(call_id, t), t.uri))
        elif s.algorithm == "weight":
            ordered = self._smooth_weighted(s, up)
        else:  # round-robin
            start = s.rr_next % len(up)
            s.rr_next = (s.rr_next + 1) % (1 << 30)
            ordered = up[start:] + up[:start]
        return (*ordered, *down)

    @staticmethod
    def _smooth_weighted(s: _Set, up: list[Target]) -> list[Target]:
        """nginx's smooth weighted round-robin (ngx_http_upstream_get_peer): every
        candidate gains its weight, the largest current weight is chosen and pays the
        total back.  Over any window of sum(weights) calls each target is chosen
        exactly weight times, interleaved rather than in bursts."""
        if s.current is None:
            s.current = {}
        current = s.current
        weighted = [t for t in up if t.weight > 0]
        spare = [t for t in up if t.weight <= 0]  # weight 0: only as a last resort
        if not weighted:
            return spare
        total = 0
        best: Target | None = None
        for t in weighted:
            current[t.uri] = current.get(t.uri, 0) + t.weight
            total += t.weight
            if best is None or current[t.uri] > current[best.uri]:
                best = t
        assert best is not None
        current[best.uri] -= total
        # Failover: the others in the order they would be chosen next.
        rest = sorted(
            (t for t in weighted if t is not best),
            key=lambda t: -(current[t.uri] + t.weight),
        )
        return [best, *rest, *spare]

    # ---------------------------------------------------------------------- health

    def probe_targets(self, now: float) -> list[Target]:
        """Targets whose OPTIONS probe is due; each is marked in flight until
        :meth:`report_probe` (never two probes in flight for one target)."""
        due: list[Target] = []
        for s in self._sets.values():
            if not s.probed:
                continue
            for t in s.targets:
                h = self._health[(s.name, t.uri)]
                if h.in_flight_since is not None and now - h.in_flight_since < _PROBE_STALE:
                    continue
                if h.next_probe is not None and now < h.next_probe:
                    continue
                h.in_flight_since = now
                h.next_probe = now + s.probe_interval
                due.append(t)
        return due

    def report_probe(self, target: Target, ok: bool, now: float) -> None:
        """The outcome of a probe sent for ``target`` (any final response counts as
        alive except 503, by the caller's choice; a timeout is a failure)."""
        h = self._health.get((target.set_name, target.uri))
        if h is None:
            return
        h.in_flight_since = None
        self._record(target, h, ok)

    def report_failure(self, target: Target, now: float) -> None:
        """A call sent to ``target`` timed out or got 503: counts as a failed probe."""
        h = self._health.get((target.set_name, target.uri))
        if h is not None:
            self._record(target, h, False)

    def target_states(self) -> dict[str, bool]:
        """``"set/uri"`` -> up, for metrics."""
        return {
            f"{s.name}/{t.uri}": self._health[(s.name, t.uri)].up
            for s in self._sets.values()
            for t in s.targets
        }

    def _record(self, target: Target, h: _Health, ok: bool) -> None:
        s = self._sets.get(target.set_name)
        if s is None or not s.probed:
            return
        if ok:
            h.failures = 0
            h.successes += 1
            if not h.up and h.successes >= s.probe_successes:
                h.up = True
                self._emit("info", "upstream_up", set=s.name, uri=target.uri)
        else:
            h.successes = 0
            h.failures += 1
            if h.up and h.failures >= s.probe_failures:
                h.up = False
                self._emit(
                    "warning", "upstream_down", set=s.name, uri=target.uri, failures=h.failures
                )

    def _is_up(self, s: _Set, t: Target) -> bool:
        return self._health[(s.name, t.uri)].up

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log(level, event, **fields)


def _routable(trunk: TrunkConfig) -> bool:
    """A trunk we can send to: it has an address (others only send calls to us)."""
    return bool(trunk.address and trunk.host)
