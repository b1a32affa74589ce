"""The sipedge configuration: one TOML file, validated once at start-up.

Rules of this file:
- Every key the program reads is declared here, in a typed frozen dataclass with
  its default.  A key that is not declared is an error, never silently ignored
  (a typo such as ``max_mesage_size`` must not fall back to a default).
- Validation stops at the first problem and reports it as a :class:`ConfigError`
  naming the dotted key (``limits.max_message_size``, ``trunks[0].allow[1]``)
  and the problem, so the CLI prints one line and exits with status 2.
- Relative file paths are taken relative to the working directory sipedge is
  started in (``make run`` starts it in the repository root).
- No I/O here beyond reading the file and checking that referenced files exist.

To add a key: add a field to the section's dataclass, read it in the section's
``_parse_*`` function (which lists the allowed keys), add it to ``to_dict`` if
it is not a plain value, and document it in ``configs/sipedge.example.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CERT = Path(".sipedge/dev-cert.pem")
DEFAULT_KEY = Path(".sipedge/dev-key.pem")

MIN_MESSAGE_SIZE = 1024
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class ConfigError(Exception):
    """A configuration problem: ``key`` is the dotted key, ``problem`` what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class HostPort:
    """An address as written in the config: ``"127.0.0.1:5060"``, ``"[::1]:5060"``."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:  # IPv6 literal
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Sockets for SIP signalling, per transport (RFC 3261 section 18)."""

    udp: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5060),)
    tcp: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5060),)
    tls: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5061),)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server certificate and key for the TLS listeners (PEM files)."""

    cert: Path = DEFAULT_CERT
    key: Path = DEFAULT_KEY


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics and /healthz endpoint."""

    address: HostPort = HostPort("127.0.0.1", 2112)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what a peer may send."""

    max_message_size: int = 65536


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where calls go: the built-in echo endpoint, or a list of SIP servers."""

    echo: bool = False
    targets: tuple[HostPort, ...] = ()


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """A peer trusted by source address (no digest challenge)."""

    name: str
    allow: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    trunks: tuple[TrunkConfig, ...] = ()


# ---------------------------------------------------------------- loading


def load(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read and validate the TOML file at ``path``.

    Raises :class:`ConfigError` (key ``"config"`` for an unreadable file or bad
    TOML).  ``check_files=False`` skips the checks that referenced files exist.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {os.fspath(path)!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"invalid TOML: {e}") from e
    return parse(data, check_files=check_files)


def parse(data: Mapping[str, Any], *, check_files: bool = True) -> Config:
    """Validate an already decoded TOML document."""
    _no_unknown_keys(data, "", {"listen", "tls", "metrics", "limits", "upstream", "trunks"})
    listen = _parse_listen(_table(data, "listen"))
    tls = _parse_tls(_table(data, "tls"))
    metrics = _parse_metrics(_table(data, "metrics"))
    limits = _parse_limits(_table(data, "limits"))
    upstream = _parse_upstream(_table(data, "upstream"))
    trunks = _parse_trunks(data.get("trunks", []))
    if check_files and listen.tls:
        # The certificate matters only when something serves TLS.
        _check_readable_file(tls.cert, "tls.cert")
        _check_readable_file(tls.key, "tls.key")
    return Config(
        listen=listen, tls=tls, metrics=metrics, limits=limits, upstream=upstream, trunks=trunks
    )


def to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as JSON-ready data (addresses and paths as strings)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, HostPort):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, HostPort | Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
            return str(value)
        return value

    result: dict[str, Any] = convert(config)
    return result


# ---------------------------------------------------------------- sections


def _parse_listen(t: Mapping[str, Any]) -> ListenConfig:
    _no_unknown_keys(t, "listen", {"udp", "tcp", "tls"})
    d = ListenConfig()
    udp = _addresses(t, "listen", "udp", d.udp, ip_only=True)
    tcp = _addresses(t, "listen", "tcp", d.tcp, ip_only=True)
    tls = _addresses(t, "listen", "tls", d.tls, ip_only=True)
    # TCP and TLS listeners are both TCP sockets: one address cannot serve both.
    seen: dict[HostPort, str] = {}
    for name, addrs in (("tcp", tcp), ("tls", tls)):
        for i, a in enumerate(addrs):
            key = f"listen.{name}[{i}]"
            if a in seen:
                raise ConfigError(key, f"{a} is already used by {seen[a]}")
            seen[a] = key
    return ListenConfig(udp=udp, tcp=tcp, tls=tls)


def _parse_tls(t: Mapping[str, Any]) -> TlsConfig:
    _no_unknown_keys(t, "tls", {"cert", "key"})
    d = TlsConfig()
    return TlsConfig(
        cert=Path(_str(t, "tls", "cert", str(d.cert))),
        key=Path(_str(t, "tls", "key", str(d.key))),
    )


def _parse_metrics(t: Mapping[str, Any]) -> MetricsConfig:
    _no_unknown_keys(t, "metrics", {"address"})
    d = MetricsConfig()
    if "address" not in t:
        return d
    return MetricsConfig(address=_host_port(t["address"], "metrics.address", ip_only=True))


def _parse_limits(t: Mapping[str, Any]) -> LimitsConfig:
    _no_unknown_keys(t, "limits", {"max_message_size"})
    d = LimitsConfig()
    size = _int(t, "limits", "max_message_size", d.max_message_size)
    if not MIN_MESSAGE_SIZE <= size <= MAX_MESSAGE_SIZE:
        raise ConfigError(
            "limits.max_message_size",
            f"{size} out of range {MIN_MESSAGE_SIZE}-{MAX_MESSAGE_SIZE}",
        )
    return LimitsConfig(max_message_size=size)


def _parse_upstream(t: Mapping[str, Any]) -> UpstreamConfig:
    _no_unknown_keys(t, "upstream", {"echo", "targets"})
    d = UpstreamConfig()
    echo = _bool(t, "upstream", "echo", d.echo)
    targets = _addresses(t, "upstream", "targets", d.targets, ip_only=False)
    if echo and targets:
        raise ConfigError("upstream.targets", "cannot be combined with upstream.echo = true")
    if not echo and not targets:
        raise ConfigError("upstream", "no destination: set echo = true or list targets")
    return UpstreamConfig(echo=echo, targets=targets)


def _parse_trunks(value: Any) -> tuple[TrunkConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("trunks", f"expected an array of tables ([[trunks]]), got {_kind(value)}")
    trunks: list[TrunkConfig] = []
    names: set[str] = set()
    for i, t in enumerate(value):
        where = f"trunks[{i}]"
        _no_unknown_keys(t, where, {"name", "allow"})
        if "name" not in t:
            raise ConfigError(f"{where}.name", "missing")
        name = _str(t, where, "name", "")
        if not name:
            raise ConfigError(f"{where}.name", "must not be empty")
        if name in names:
            raise ConfigError(f"{where}.name", f"duplicate trunk name {name!r}")
        names.add(name)
        if "allow" not in t:
            raise ConfigError(f"{where}.allow", "missing")
        raw = _str_list(t, where, "allow")
        if not raw:
            raise ConfigError(f"{where}.allow", "must list at least one network")
        allow: list[IPNetwork] = []
        for j, s in enumerate(raw):
            try:
                allow.append(ipaddress.ip_network(s, strict=True))
            except ValueError as e:
                raise ConfigError(f"{where}.allow[{j}]", f"not a CIDR network: {e}") from None
        trunks.append(TrunkConfig(name=name, allow=tuple(allow)))
    return tuple(trunks)


# ---------------------------------------------------------------- helpers


def _kind(value: Any) -> str:
    """TOML's name for the type of a decoded value, for error messages."""
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return "a date/time"


def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _no_unknown_keys(t: Mapping[str, Any], section: str, allowed: set[str]) -> None:
    for name in t:
        if name not in allowed:
            raise ConfigError(
                _key(section, name), f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, f"expected a table, got {_kind(value)}")
    return value


def _str(t: Mapping[str, Any], section: str, name: str, default: str) -> str:
    value = t.get(name, default)
    if not isinstance(value, str):
        raise ConfigError(_key(section, name), f"expected a string, got {_kind(value)}")
    return value


def _int(t: Mapping[str, Any], section: str, name: str, default: int) -> int:
    value = t.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(_key(section, name), f"expected an integer, got {_kind(value)}")
    return value


def _bool(t: Mapping[str, Any], section: str, name: str, default: bool) -> bool:
    value = t.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(_key(section, name), f"expected a boolean, got {_kind(value)}")
    return value


def _str_list(t: Mapping[str, Any], section: str, name: str) -> list[str]:
    value = t.get(name, [])
    key = _key(section, name)
    if not isinstance(value, list):
        raise ConfigError(key, f"expected an array of strings, got {_kind(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ConfigError(f"{key}[{i}]", f"expected a string, got {_kind(v)}")
    return value


def _addresses(
    t: Mapping[str, Any],
    section: str,
    name: str,
    default: tuple[HostPort, ...],
    *,
    ip_only: bool,
) -> tuple[HostPort, ...]:
    if name not in t:
        return default
    key = _key(section, name)
    raw = _str_list(t, section, name)
    result: list[HostPort] = []
    for i, s in enumerate(raw):
        hp = _host_port(s, f"{key}[{i}]", ip_only=ip_only)
        if hp in result:
            raise ConfigError(f"{key}[{i}]", f"duplicate address {hp}")
        result.append(hp)
    return tuple(result)


# hostname = *( domainlabel "." ) toplabel [ "." ]   (RFC 3261 section 25.1)
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,10})")


def _host_port(value: Any, key: str, *, ip_only: bool) -> HostPort:
    """Parse ``"host:port"`` / ``"[v6]:port"``; the port is required."""
    if not isinstance(value, str):
        raise ConfigError(key, f'expected a string "host:port", got {_kind(value)}')
    m = _HOST_PORT.fullmatch(value)
    if m is None:
        raise ConfigError(key, f'{value!r} is not "host:port" (IPv6 as "[::1]:port")')
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise ConfigError(key, f"port {port} out of range 1-65535")
    if m["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(m["v6"]))
        except ValueError:
            raise ConfigError(key, f"{m['v6']!r} is not an IPv6 address") from None
        return HostPort(host, port)
    host = m["host"]
    try:
        return HostPort(str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    if ip_only:
        raise ConfigError(key, f"{host!r} is not an IP address (a listener binds an IP)")
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ConfigError(key, f"{host!r} is not an IP address or host name")
    return HostPort(host.lower(), port)


def _check_readable_file(path: Path, key: str) -> None:
    if not path.is_file():
        where = path if path.is_absolute() else f"{path} (relative to {Path.cwd()})"
        raise ConfigError(key, f"file not found: {where}")
    if not os.access(path, os.R_OK):
        raise ConfigError(key, f"file not readable: {path}")
