"""Value checkers shared by the configuration modules (edge/config.py, edge/config_security.py).

Each reads one key of a decoded TOML table, checks its type and range, and raises
:class:`ConfigError` naming the dotted key and the problem.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip.errors import SipError
from sip.uri import URI

TRANSPORTS = ("udp", "tcp", "tls")
# RFC 3261 §19.1.2: the default port of a sip: URI is 5060, 5061 over TLS.
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


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


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(t: Mapping[str, Any], section: str) -> str:
    if "name" not in t:
        raise ConfigError(f"{section}.name", "missing")
    name = _str(t, section, "name", "")
    if not _NAME.fullmatch(name):
        # Names appear in logs, metrics labels and (trunks) a SIP header value.
        raise ConfigError(f"{section}.name", f"{name!r} must be letters, digits and -._")
    return name


def _choice(
    t: Mapping[str, Any], section: str, name: str, default: str, allowed: tuple[str, ...]
) -> str:
    value = _str(t, section, name, default)
    if value not in allowed:
        raise ConfigError(
            _key(section, name), f"{value!r} is not one of {', '.join(map(repr, allowed))}"
        )
    return value


def _int(t: Mapping[str, Any], section: str, name: str, default: int, low: int, high: int) -> int:
    value = t.get(name, default)
    key = _key(section, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise ConfigError(key, f"{value} out of range {low}-{high}")
    return value


def _seconds(
    t: Mapping[str, Any], section: str, name: str, default: float, *, allow_zero: bool = False
) -> float:
    """A duration in seconds: a TOML integer or float, finite, > 0 (or >= 0)."""
    value = t.get(name, default)
    key = _key(section, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number of seconds, got {_kind(value)}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ConfigError(key, f"{value} is not a finite number of seconds")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(key, f"{value} must be {'>= 0' if allow_zero else '> 0'}")
    return seconds


def _rate(t: Mapping[str, Any], section: str, name: str, default: float) -> float:
    """A rate per second: a TOML integer or float, finite, > 0."""
    value = t.get(name, default)
    key = _key(section, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number per second, got {_kind(value)}")
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(key, f"{value} must be a finite number > 0")
    return rate


def _count(t: Mapping[str, Any], section: str, name: str, default: int, low: int) -> int:
    """An integer >= ``low``, with no upper bound of its own."""
    value = t.get(name, default)
    key = _key(section, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_kind(value)}")
    if value < low:
        raise ConfigError(key, f"{value} must be >= {low}")
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
) -> tuple[HostPort, ...]:
    if name not in t:
        return default
    key = _key(section, name)
    raw = _str_list(t, section, name)
    result: list[HostPort] = []
    for i, s in enumerate(raw):
        hp = _host_port(s, f"{key}[{i}]")
        if hp in result:
            raise ConfigError(f"{key}[{i}]", f"duplicate address {hp}")
        result.append(hp)
    return tuple(result)


def _sip_address(value: Any, key: str) -> tuple[str, str, str, int]:
    """Parse a destination ``sip:IP[:port][;transport=udp|tcp|tls]``.

    Returns (uri, transport, host, port) with the transport and port defaults
    filled in (udp; 5060, or 5061 for tls).  The host must be an IP literal:
    sipedge does no DNS (RFC 3263) when it picks where to send.
    """
    if not isinstance(value, str):
        raise ConfigError(key, f'expected a string "sip:IP:port", got {_kind(value)}')
    try:
        uri = URI.parse(value)
    except SipError as e:
        raise ConfigError(key, f"{value!r} is not a SIP URI: {e.reason}") from None
    if uri.scheme != "sip":
        raise ConfigError(key, f"{value!r}: expected a sip: URI, got {uri.scheme}:")
    if uri.user is not None or uri.headers:
        raise ConfigError(key, f"{value!r}: a destination has no user part and no headers")
    try:
        host = str(ipaddress.ip_address(uri.host))
    except ValueError:
        raise ConfigError(key, f"{value!r}: the host must be an IP address") from None
    transport = uri.transport or "udp"
    if transport not in TRANSPORTS:
        raise ConfigError(key, f"{value!r}: transport must be one of {', '.join(TRANSPORTS)}")
    port = uri.port if uri.port is not None else DEFAULT_PORTS[transport]
    if port == 0:
        raise ConfigError(key, f"{value!r}: port 0 is not a destination")
    return str(uri), transport, host, port


# hostname = *( domainlabel "." ) toplabel [ "." ]   (RFC 3261 section 25.1)
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,10})")


def _host(value: str, key: str) -> str:
    """A host name or IP literal (IPv6 with or without brackets), normalised."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ConfigError(key, f"{value!r} is not an IP address or host name (no port here)")
    return value.lower()


def _host_port(value: Any, key: str) -> HostPort:
    """Parse ``"IP:port"`` / ``"[v6]:port"``; the port is required.

    Only IP literals: every address in the file is one sipedge binds.
    """
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
        raise ConfigError(key, f"{host!r} is not an IP address (sipedge binds an IP)") from None


def _check_readable_file(path: Path, key: str) -> None:
    if not path.is_file():
        where = path if path.is_absolute() else f"{path} (relative to {Path.cwd()})"
        raise ConfigError(key, f"file not found: {where}")
    if not os.access(path, os.R_OK):
        raise ConfigError(key, f"file not readable: {path}")
