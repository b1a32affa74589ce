"""The security sections of the configuration: [auth], [ratelimit], [bans], [scanners], [audit],
[state].

Same rules as edge/config.py (every key declared with its default, the first
problem reported as a :class:`ConfigError` naming the dotted key).  Defaults are
the reference document's (``../shared/reference/security-architecture.txt``):
100 calls a minute per customer, 10 authentication attempts and 1000 requests a
minute per source address, JWTs signed with HS256 under the key in ``JWT_KEY``.

The JWT signing key is a secret: it never comes from the file, only from the
environment variable the file names, and it lives in a ``repr=False`` field so
that neither ``check-config`` nor a log line shows it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge.config_values import (
    ConfigError,
    _bool,
    _choice,
    _int,
    _no_unknown_keys,
    _seconds,
    _str,
    _str_list,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SECURITY_SECTIONS = ("auth", "ratelimit", "bans", "scanners", "audit", "state")
STATE_BACKENDS = ("memory", "redis")
REDIS_SCHEMES = ("redis", "rediss", "unix")

# RFC 8760 names; the first is preferred (one challenge each, in order).
DIGEST_ALGORITHMS = ("SHA-256", "SHA-512-256", "MD5")
# HS256 with a key shorter than its output (32 bytes) is guessable offline.
MIN_JWT_KEY = 32

# User-Agent or From display names of the usual SIP scanners (svmap/svwar/svcrack
# announce themselves as "friendly-scanner" and sipvicious; sipcli and
# VaxSIPUserAgent come with toll-fraud kits).  Matched as case-insensitive substrings.
DEFAULT_SCANNERS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sundayddr",
    "iWar",
    "sivus",
    "smap",
    "pplsip",
)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who must authenticate, and how (edge/admission.py)."""

    realm: str = "sipedge"
    database: str = ".sipedge/credentials.sqlite3"
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_lifetime: float = 300.0
    jwt_key_env: str = "JWT_KEY"
    jwt_leeway: float = 30.0
    jwt_max_lifetime: float = 86400.0
    # Set by the edge on requests it forwards for an authenticated customer;
    # removed from every request that arrives (nobody can forge it).
    customer_header: str = "X-Sipedge-Customer-Id"
    jwt_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Token buckets (twice the rate, refilled every second)."""

    calls_per_minute: float = 100.0  # INVITEs per authenticated customer
    auth_attempts_per_minute: float = 10.0  # requests with credentials per source
    requests_per_minute: float = 1000.0  # every request per untrusted source


@dataclass(frozen=True, slots=True)
class BanConfig:
    """Flood and brute-force bans (like Kamailio's pike module)."""

    enabled: bool = True
    duration: float = 900.0
    # Requests refused by the per-source limit within flood_window before a ban.
    flood_drops: int = 100
    flood_window: float = 10.0
    # Failed authentications from one source within auth_window before a ban.
    auth_failures: int = 5
    auth_window: float = 300.0
    # Whether a scanner's first packet also bans its source.
    scanners: bool = True
    # Sources never banned nor limited per source (trunks and upstream targets
    # never are; this adds, say, a monitoring host).
    exempt: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    """Requests from known scanners are dropped silently."""

    enabled: bool = True
    user_agents: tuple[str, ...] = DEFAULT_SCANNERS


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit log: JSON lines in the reference document's format."""

    # "-" is stdout (next to the operational log lines); otherwise a file, mode 0600.
    path: str = "-"
    # Lines per second per event type and source before the rest are summarised.
    max_per_second: int = 20
    # Lines are written together at most this long after their events (0: each at
    # once); what the process holds is lost if it is killed outright (edge/audit.py).
    flush_interval: float = 0.05


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where buckets, failure windows, bans and nonce counts live (edge/state.py).

    "memory": in this process.  "redis": shared with every edge using the same
    Redis and ``key_prefix`` (edge/state_redis.py).  The URL may carry a
    password: :func:`edge.config.to_dict` masks it.
    """

    backend: str = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sipedge:"
    # The longest a request may wait for Redis (a nonce count check); the rest
    # of the hot path never waits for it.
    timeout: float = 0.05
    # How old the other edges' takings and hits may be when a limit decides.
    sync_interval: float = 0.1


def parse_state(t: Mapping[str, Any]) -> StateConfig:
    s = "state"
    d = StateConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    url = _str(t, s, "url", d.url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise ConfigError("state.url", f"not a URL: {e}") from None
    if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
        raise ConfigError(
            "state.url", "expected redis://host:port/db, rediss://host:port/db or unix:///path"
        )
    prefix = _str(t, s, "key_prefix", d.key_prefix)
    if not re.fullmatch(r"[\x21-\x7e]*", prefix):
        raise ConfigError("state.key_prefix", f"{prefix!r}: printable ASCII without spaces")
    timeout = _seconds(t, s, "timeout", d.timeout)
    if timeout > 5:
        # The event loop waits this long for a nonce check while Redis is silent.
        raise ConfigError("state.timeout", f"{timeout} s would stall the proxy; at most 5")
    sync_interval = _seconds(t, s, "sync_interval", d.sync_interval)
    if not 0.005 <= sync_interval <= 10:
        raise ConfigError("state.sync_interval", f"{sync_interval} out of range 0.005-10")
    return StateConfig(
        backend=_choice(t, s, "backend", d.backend, STATE_BACKENDS),
        url=url,
        key_prefix=prefix,
        timeout=timeout,
        sync_interval=sync_interval,
    )


def redacted_url(url: str) -> str:
    """``url`` without its password (for check-config and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_auth(t: Mapping[str, Any], env: Mapping[str, str]) -> AuthConfig:
    s = "auth"
    d = AuthConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)} - {"jwt_key"})
    realm = _str(t, s, "realm", d.realm)
    if not realm or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e ]+", realm):
        # It is sent quoted in every challenge: no quote, backslash or control character.
        raise ConfigError("auth.realm", f"{realm!r} must be printable ASCII without '\"' or '\\'")
    algorithms = _str_list(t, s, "digest_algorithms") if "digest_algorithms" in t else None
    if algorithms is not None:
        if not algorithms:
            raise ConfigError("auth.digest_algorithms", "must name at least one algorithm")
        for i, name in enumerate(algorithms):
            if name not in DIGEST_ALGORITHMS:
                raise ConfigError(
                    f"auth.digest_algorithms[{i}]",
                    f"{name!r} is not one of {', '.join(map(repr, DIGEST_ALGORITHMS))}",
                )
        if len(set(algorithms)) != len(algorithms):
            raise ConfigError("auth.digest_algorithms", "lists an algorithm twice")
    header = _str(t, s, "customer_header", d.customer_header)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", header):
        raise ConfigError("auth.customer_header", f"{header!r} is not a header name")
    env_name = _str(t, s, "jwt_key_env", d.jwt_key_env)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
        raise ConfigError("auth.jwt_key_env", f"{env_name!r} is not an environment variable name")
    jwt_key: bytes | None = None
    value = env.get(env_name)
    if value:
        jwt_key = value.encode("utf-8")
        if len(jwt_key) < MIN_JWT_KEY:
            # Never quote the value: it is the signing key.
            raise ConfigError(
                "auth.jwt_key_env",
                f"${env_name} is {len(jwt_key)} bytes long; HS256 needs at least {MIN_JWT_KEY}",
            )
    return AuthConfig(
        realm=realm,
        database=_str(t, s, "database", d.database) or d.database,
        digest_algorithms=tuple(algorithms) if algorithms is not None else d.digest_algorithms,
        nonce_lifetime=_seconds(t, s, "nonce_lifetime", d.nonce_lifetime),
        jwt_key_env=env_name,
        jwt_leeway=_seconds(t, s, "jwt_leeway", d.jwt_leeway, allow_zero=True),
        jwt_max_lifetime=_seconds(t, s, "jwt_max_lifetime", d.jwt_max_lifetime),
        customer_header=header,
        jwt_key=jwt_key,
    )


def _rate(t: Mapping[str, Any], section: str, name: str, default: float) -> float:
    rate = _seconds(t, section, name, default)  # a positive finite number
    if rate > 1e9:
        raise ConfigError(f"{section}.{name}", f"{rate} is not a sensible rate")
    return rate


def parse_ratelimit(t: Mapping[str, Any]) -> RateLimitConfig:
    s = "ratelimit"
    d = RateLimitConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    return RateLimitConfig(
        calls_per_minute=_rate(t, s, "calls_per_minute", d.calls_per_minute),
        auth_attempts_per_minute=_rate(
            t, s, "auth_attempts_per_minute", d.auth_attempts_per_minute
        ),
        requests_per_minute=_rate(t, s, "requests_per_minute", d.requests_per_minute),
    )


def parse_bans(t: Mapping[str, Any]) -> BanConfig:
    s = "bans"
    d = BanConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    exempt: list[IPNetwork] = []
    for j, text in enumerate(_str_list(t, s, "exempt")):
        try:
            exempt.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ConfigError(f"bans.exempt[{j}]", f"not a CIDR network: {e}") from None
    return BanConfig(
        enabled=_bool(t, s, "enabled", d.enabled),
        duration=_seconds(t, s, "duration", d.duration),
        flood_drops=_int(t, s, "flood_drops", d.flood_drops, 1, 10_000_000),
        flood_window=_seconds(t, s, "flood_window", d.flood_window),
        auth_failures=_int(t, s, "auth_failures", d.auth_failures, 1, 1_000_000),
        auth_window=_seconds(t, s, "auth_window", d.auth_window),
        scanners=_bool(t, s, "scanners", d.scanners),
        exempt=tuple(exempt),
    )


def parse_scanners(t: Mapping[str, Any]) -> ScannerConfig:
    s = "scanners"
    d = ScannerConfig()
    _no_unknown_keys(t, s, {"enabled", "user_agents"})
    agents = tuple(_str_list(t, s, "user_agents")) if "user_agents" in t else d.user_agents
    for j, agent in enumerate(agents):
        if not agent.strip():
            raise ConfigError(f"scanners.user_agents[{j}]", "empty pattern would match everything")
    return ScannerConfig(enabled=_bool(t, s, "enabled", d.enabled), user_agents=agents)


#: The longest [audit] flush_interval: lines held longer are too many to lose.
MAX_AUDIT_FLUSH_INTERVAL: Final = 5.0


def parse_audit(t: Mapping[str, Any]) -> AuditConfig:
    s = "audit"
    d = AuditConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    flush_interval = _seconds(t, s, "flush_interval", d.flush_interval, allow_zero=True)
    if flush_interval > MAX_AUDIT_FLUSH_INTERVAL:
        raise ConfigError(
            f"{s}.flush_interval",
            f"{flush_interval:g} s is more than {MAX_AUDIT_FLUSH_INTERVAL:g} s of lines to lose",
        )
    return AuditConfig(
        path=_str(t, s, "path", d.path) or d.path,
        max_per_second=_int(t, s, "max_per_second", d.max_per_second, 1, 1_000_000),
        flush_interval=flush_interval,
    )
