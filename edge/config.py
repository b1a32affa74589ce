"""The sipedge configuration: one TOML file, validated once at start-up.

Rules of this file:
- Every key the program reads is declared here, in a typed frozen dataclass with
  its default.  A key that is not declared is an error, never silently ignored
  (a typo such as ``max_mesage_size`` must not fall back to a default).
- Validation stops at the first problem and reports it as a :class:`ConfigError`
  naming the dotted key (``limits.max_message_size``, ``trunks[0].allow[1]``,
  ``upstream.sets[0].targets[1].uri``) and the problem, so the CLI prints one
  line and exits with status 2.
- Relative file paths are taken relative to the working directory sipedge is
  started in (``make run`` starts it in the repository root).
- No I/O here beyond reading the file, checking that referenced files exist and
  reading the TLS base64 environment variables.
- Secrets never reach ``repr``, :func:`to_dict` or a log line: the PEM given as
  base64 lives in ``repr=False`` fields and :func:`to_dict` shows where it came
  from instead.

To add a key: add a field to the section's dataclass, read it in the section's
``_parse_*`` function (which lists the allowed keys), add it to ``to_dict`` if
it is not a plain value, and document it in ``configs/sipedge.example.toml`` and
``docs/configuration.md``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config_security import (
    SECURITY_SECTIONS,
    AuditConfig,
    AuthConfig,
    BanConfig,
    RateLimitConfig,
    ScannerConfig,
    StateConfig,
    parse_audit,
    parse_auth,
    parse_bans,
    parse_ratelimit,
    parse_scanners,
    parse_state,
    redacted_url,
)
from edge.config_values import (
    ConfigError,
    HostPort,
    _addresses,
    _bool,
    _check_readable_file,
    _choice,
    _count,
    _host,
    _host_port,
    _int,
    _kind,
    _name,
    _no_unknown_keys,
    _rate,
    _seconds,
    _sip_address,
    _str,
    _str_list,
    _table,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CERT = Path(".sipedge/dev-cert.pem")
DEFAULT_KEY = Path(".sipedge/dev-key.pem")

MIN_MESSAGE_SIZE = 1024
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

ENV_CERT_B64 = "SIPEDGE_TLS_CERT_BASE64"
ENV_KEY_B64 = "SIPEDGE_TLS_KEY_BASE64"
# What check-config prints instead of PEM that did not come from a file.
FROM_ENVIRONMENT = "<from environment>"
FROM_COMMAND_LINE = "<from command line>"

VERIFY_CLIENT = ("none", "optional", "required")
ALGORITHMS = ("round-robin", "weight", "hash")
# What one side of a call speaks (docs/configuration.md, [media]): the relay bridges
# between the two sides' policies; "dtls-srtp" is a WebRTC side (ICE-lite, DTLS-SRTP).
MEDIA_POLICIES = ("as-offered", "rtp", "srtp", "dtls-srtp", "passthrough")
DEFAULT_PORT_RANGE = (10000, 60000)
ECHO_SET = "echo"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Sockets for SIP signalling, per transport (RFC 3261 section 18)."""

    udp: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5060),)
    tcp: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5060),)
    tls: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5061),)
    # SIP over secure WebSocket (RFC 7118) for browsers; TLS as for ``tls``.
    wss: tuple[HostPort, ...] = ()
    # Host or IP written into Via and Record-Route instead of the bound address
    # ("" = the bound address); needed behind NAT and when binding 0.0.0.0 / [::].
    advertise: str = ""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server certificate and key for the TLS listeners, and client certificate checks.

    ``cert_pem``/``key_pem`` are set when the PEM came as base64 (command line or
    environment); then ``cert``/``key`` are not read.  ``pem_source`` says where
    it came from, for check-config and logs.
    """

    cert: Path = DEFAULT_CERT
    key: Path = DEFAULT_KEY
    client_ca: Path | None = None
    verify_client: str = "none"
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    pem_source: str = ""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The local control socket (``sipedge bans``, ``calls``, ``reload``)."""

    # A Unix socket, mode 0600: who can open it can lift bans and read calls.
    path: str = ".sipedge/control.sock"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics and /healthz endpoint."""

    address: HostPort = HostPort("127.0.0.1", 2112)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what a peer may send and hold open (times in seconds), and on the
    calls the edge takes on in all (edge/overload.py; 0: no limit)."""

    max_message_size: int = 65536
    max_connections: int = 4096
    max_connections_per_source: int = 32
    idle_timeout: float = 120.0
    header_timeout: float = 10.0
    tls_handshake_timeout: float = 5.0
    max_calls: int = 0
    max_cps: int = 0
    overload_retry_after: int = 1


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Proxy behaviour (RFC 3261 section 16) and transaction timers (section 17)."""

    record_route: bool = True
    max_forwards: int = 70
    drain_grace: float = 30.0
    server_header: str = ""
    timer_t1: float = 0.5
    timer_t2: float = 4.0
    timer_t4: float = 5.0
    timer_c: float = 180.0
    trunk_header: str = "X-Sipedge-Trunk"


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One upstream server: ``uri`` as written, and what it says."""

    uri: str
    transport: str
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class UpstreamSetConfig:
    """A dispatcher set: targets, how to pick one, how to probe them."""

    name: str
    algorithm: str = "round-robin"
    targets: tuple[TargetConfig, ...] = ()
    probe_interval: float = 10.0
    probe_failures: int = 2
    probe_successes: int = 1
    # What the set's servers speak (MEDIA_POLICIES); a PBX answers in kind by default.
    media: str = "as-offered"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where calls from outside go: the built-in echo endpoint and/or upstream sets."""

    echo: bool = False
    default: str = ""
    sets: tuple[UpstreamSetConfig, ...] = ()

    def resolved_default(self) -> str:
        """The name of the set calls from outside go to."""
        if self.default:
            return self.default
        if self.echo:
            return ECHO_SET
        return self.sets[0].name if self.sets else ""


@dataclass(frozen=True, slots=True)
class EchoConfig:
    """The built-in echo endpoint (a small UAS that plays the caller's media back)."""

    address: HostPort = HostPort("127.0.0.1", 5099)
    rtp_address: str = "127.0.0.1"
    answer_delay: float = 0.0
    # The media policy of the "echo" set: the echo endpoint answers RTP/AVP(F) only
    # (edge/echo.py), so an SRTP caller reaches it through the relay as plain RTP.
    media: str = "rtp"


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """A carrier: trusted by source address, and optionally where calls to it go.

    ``transport``/``host``/``port`` are parsed from ``address``; an inbound-only
    trunk (``address = ""``) has them empty and ``port`` None.
    """

    name: str
    allow: tuple[IPNetwork, ...] = ()
    address: str = ""
    transport: str = ""
    host: str = ""
    port: int | None = None
    prefixes: tuple[str, ...] = ()
    # What the carrier speaks (MEDIA_POLICIES): carriers speak plain RTP.
    media: str = "rtp"
    # Mutual TLS: when either is set, the trunk's sources are trusted only over TLS
    # with a client certificate whose SHA-256 fingerprint (lower-case hex, no colons)
    # or subject (RFC 4514 string, or just "CN=...") is listed.
    tls_fingerprints: tuple[str, ...] = ()
    tls_subjects: tuple[str, ...] = ()
    # "e164": calls from and to this trunk must name E.164 numbers ("+" and digits).
    numbers: str = "any"

    @property
    def needs_certificate(self) -> bool:
        return bool(self.tls_fingerprints or self.tls_subjects)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The media relay (media/relay.py) and the SDP rewriting of the proxy.

    ``address`` is where the relay binds and what it writes into SDP; "" means the
    host of the first ``listen.udp`` address, or ``listen.advertise`` when that is a
    wildcard and the advertised name is an IP literal: :meth:`resolved_address`,
    which raises :class:`ConfigError` when neither gives an IP (the media
    controller calls it at start-up).  ``caller`` is the media policy of a calling
    side that is not a trunk (a trunk's is its own ``media``).  ``fast_path``: the C
    data plane forwards the media (media/fastpath.py); where it cannot run, or with
    false, every packet goes through Python (the reference path).  ``punt_rate`` and
    ``punt_burst``: what each of the plane's legs may hand Python (datagrams per second
    after a burst), past which it drops them in C; the defaults are the plane's own
    (SE_FP_PUNT_RATE, SE_FP_PUNT_BURST in media/fastpath.h, where their reasons are).
    ``fastpath_poll_us``: after a batch, each loop of the plane polls that many
    microseconds before it sleeps: a latency tail traded for CPU (0, the default,
    sleeps at once).  ``fastpath_poll_busy_pct``: ...but only while the loop's
    batches take at least that share of its time, so that polling at most
    multiplies the CPU of a busy loop by 100/pct and a lightly loaded relay sleeps
    (0: poll after every batch).
    """

    enabled: bool = True
    address: str = ""
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    quarantine: float = 30.0
    timeout: float = 60.0
    caller: str = "as-offered"
    fast_path: bool = True
    punt_rate: float = 250.0
    punt_burst: int = 400
    fastpath_poll_us: int = 0
    fastpath_poll_busy_pct: int = 40

    def resolved_address(self, listen: ListenConfig) -> str:
        """The IP the relay binds and writes into SDP."""
        if self.address:
            return self.address
        wildcard = ("0.0.0.0", "::")
        if listen.udp and listen.udp[0].host not in wildcard:
            return listen.udp[0].host
        try:
            advertised = ipaddress.ip_address(listen.advertise)
        except ValueError:
            pass
        else:
            return str(advertised)
        why = "listen.udp is empty" if not listen.udp else "listen.udp[0] is a wildcard address"
        raise ConfigError("media.address", f"required: {why} and listen.advertise is no IP")


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    upstream: UpstreamConfig = field(default_factory=lambda: UpstreamConfig(echo=True))
    echo: EchoConfig = field(default_factory=EchoConfig)
    trunks: tuple[TrunkConfig, ...] = ()
    media: MediaConfig = field(default_factory=MediaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    bans: BanConfig = field(default_factory=BanConfig)
    scanners: ScannerConfig = field(default_factory=ScannerConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    state: StateConfig = field(default_factory=StateConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    def media_policy_of_set(self, name: str) -> str:
        """The media policy of upstream set ``name`` (``"echo"``: the echo endpoint's)."""
        if name == ECHO_SET and self.upstream.echo:
            return self.echo.media
        for s in self.upstream.sets:
            if s.name == name:
                return s.media
        raise KeyError(f"no upstream set {name!r}")

    def media_policy_of_trunk(self, name: str) -> str:
        """The media policy of trunk ``name``."""
        for t in self.trunks:
            if t.name == name:
                return t.media
        raise KeyError(f"no trunk {name!r}")


# ---------------------------------------------------------------- loading


def load(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] = os.environ,
    cert_b64: str | None = None,
    key_b64: str | None = None,
    check_files: bool = True,
) -> Config:
    """Read and validate the TOML file at ``path``.

    ``cert_b64``/``key_b64`` (the command line flags) win over the environment
    variables ``SIPEDGE_TLS_CERT_BASE64``/``SIPEDGE_TLS_KEY_BASE64``; either way
    the certificate files need not exist.  Raises :class:`ConfigError` (key
    ``"config"`` for an unreadable file or bad TOML).  ``check_files=False``
    skips the checks that referenced files exist.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {os.fspath(path)!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"invalid TOML: {e}") from e
    pem = _pem_from_base64(env, cert_b64, key_b64)
    return parse(data, check_files=check_files, pem=pem, env=env)


def parse(
    data: Mapping[str, Any],
    *,
    check_files: bool = True,
    pem: tuple[bytes, bytes, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already decoded TOML document.

    ``pem`` is (certificate, key, source) when they came as base64; ``env``
    holds the JWT signing key (``auth.jwt_key_env``), none when omitted.
    """
    _no_unknown_keys(
        data,
        "",
        {
            "listen",
            "tls",
            "metrics",
            "limits",
            "proxy",
            "upstream",
            "echo",
            "trunks",
            "media",
            "control",
            *SECURITY_SECTIONS,
        },
    )
    listen = _parse_listen(_table(data, "listen"))
    tls = _parse_tls(_table(data, "tls"), pem)
    metrics = _parse_metrics(_table(data, "metrics"))
    limits = _parse_limits(_table(data, "limits"))
    proxy = _parse_proxy(_table(data, "proxy"))
    upstream = _parse_upstream(_table(data, "upstream"))
    echo = _parse_echo(_table(data, "echo"))
    trunks = _parse_trunks(data.get("trunks", []))
    media = _parse_media(_table(data, "media"))
    auth = parse_auth(_table(data, "auth"), env or {})
    ratelimit = parse_ratelimit(_table(data, "ratelimit"))
    bans = parse_bans(_table(data, "bans"))
    scanners = parse_scanners(_table(data, "scanners"))
    audit = parse_audit(_table(data, "audit"))
    state = parse_state(_table(data, "state"))
    control = _parse_control(_table(data, "control"))
    if upstream.echo:
        _check_echo_address(echo, listen)
    for i, trunk in enumerate(trunks):
        if trunk.needs_certificate and (
            not (listen.tls or listen.wss) or tls.verify_client == "none"
        ):
            key = "tls_fingerprints" if trunk.tls_fingerprints else "tls_subjects"
            raise ConfigError(
                f"trunks[{i}].{key}",
                'needs a TLS listener with tls.verify_client = "optional" or "required" '
                "(and tls.client_ca), so that clients are asked for a certificate",
            )
    if check_files and (listen.tls or listen.wss):
        # The certificate matters only when something serves TLS.
        if tls.cert_pem is None:
            _check_readable_file(tls.cert, "tls.cert")
            _check_readable_file(tls.key, "tls.key")
        if tls.client_ca is not None:
            _check_readable_file(tls.client_ca, "tls.client_ca")
    return Config(
        listen=listen,
        tls=tls,
        metrics=metrics,
        limits=limits,
        proxy=proxy,
        upstream=upstream,
        echo=echo,
        trunks=trunks,
        media=media,
        auth=auth,
        ratelimit=ratelimit,
        bans=bans,
        scanners=scanners,
        audit=audit,
        state=state,
        control=control,
    )


def to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as JSON-ready data (addresses and paths as strings).

    PEM given as base64 is never included: ``tls.cert``/``tls.key`` say where it
    came from instead.  ``resolved_default`` shows which set ``upstream.default``
    means.
    """

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, HostPort):
            return {
                f.name: convert(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.repr  # repr=False marks secrets
            }
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, HostPort | Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
            return str(value)
        return value

    result: dict[str, Any] = convert(config)
    del result["tls"]["pem_source"]  # not a key of the file
    if config.tls.cert_pem is not None:
        result["tls"]["cert"] = config.tls.pem_source
        result["tls"]["key"] = config.tls.pem_source
    result["tls"]["client_ca"] = str(config.tls.client_ca or "")
    result["upstream"]["resolved_default"] = config.upstream.resolved_default()
    low, high = config.media.port_range
    result["media"]["port_range"] = f"{low}-{high}"  # as written in the file
    # Whether bearer tokens can be checked, never the key itself.
    key_env = config.auth.jwt_key_env
    result["auth"]["jwt_key"] = (
        f"<from ${key_env}>" if config.auth.jwt_key else f"<${key_env} unset>"
    )
    # A Redis URL may carry a password.
    result["state"]["url"] = redacted_url(config.state.url)
    return result


# ---------------------------------------------------------------- sections


def _parse_listen(t: Mapping[str, Any]) -> ListenConfig:
    _no_unknown_keys(t, "listen", {"udp", "tcp", "tls", "wss", "advertise"})
    d = ListenConfig()
    udp = _addresses(t, "listen", "udp", d.udp)
    tcp = _addresses(t, "listen", "tcp", d.tcp)
    tls = _addresses(t, "listen", "tls", d.tls)
    wss = _addresses(t, "listen", "wss", d.wss)
    # TCP, TLS and WSS listeners are all TCP sockets: one address serves one of them.
    seen: dict[HostPort, str] = {}
    for name, addrs in (("tcp", tcp), ("tls", tls), ("wss", wss)):
        for i, a in enumerate(addrs):
            key = f"listen.{name}[{i}]"
            if a in seen:
                raise ConfigError(key, f"{a} is already used by {seen[a]}")
            seen[a] = key
    advertise = _str(t, "listen", "advertise", d.advertise)
    if advertise:
        advertise = _host(advertise, "listen.advertise")
    return ListenConfig(udp=udp, tcp=tcp, tls=tls, wss=wss, advertise=advertise)


def _parse_tls(t: Mapping[str, Any], pem: tuple[bytes, bytes, str] | None) -> TlsConfig:
    _no_unknown_keys(t, "tls", {"cert", "key", "client_ca", "verify_client"})
    d = TlsConfig()
    cert = _str(t, "tls", "cert", str(d.cert))
    key = _str(t, "tls", "key", str(d.key))
    client_ca = _str(t, "tls", "client_ca", "")
    verify_client = _choice(t, "tls", "verify_client", d.verify_client, VERIFY_CLIENT)
    if verify_client != "none" and not client_ca:
        # Without a CA every client certificate fails verification.
        raise ConfigError("tls.client_ca", f"required when tls.verify_client is {verify_client!r}")
    cert_pem, key_pem, source = pem if pem is not None else (None, None, "")
    return TlsConfig(
        cert=Path(cert),
        key=Path(key),
        client_ca=Path(client_ca) if client_ca else None,
        verify_client=verify_client,
        cert_pem=cert_pem,
        key_pem=key_pem,
        pem_source=source,
    )


def _parse_control(t: Mapping[str, Any]) -> ControlConfig:
    _no_unknown_keys(t, "control", {"path"})
    path = _str(t, "control", "path", ControlConfig().path) or ControlConfig().path
    if len(os.fsencode(path)) > 100:
        # sockaddr_un holds 108 bytes; a longer path cannot be bound.
        raise ConfigError("control.path", f"{path!r} is too long for a Unix socket (max 100 bytes)")
    return ControlConfig(path=path)


def _parse_metrics(t: Mapping[str, Any]) -> MetricsConfig:
    _no_unknown_keys(t, "metrics", {"address"})
    d = MetricsConfig()
    if "address" not in t:
        return d
    return MetricsConfig(address=_host_port(t["address"], "metrics.address"))


def _parse_limits(t: Mapping[str, Any]) -> LimitsConfig:
    s = "limits"
    d = LimitsConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    size = _int(t, s, "max_message_size", d.max_message_size, MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE)
    max_connections = _int(t, s, "max_connections", d.max_connections, 1, 1_000_000)
    per_source = _int(
        t, s, "max_connections_per_source", d.max_connections_per_source, 1, max_connections
    )
    return LimitsConfig(
        max_message_size=size,
        max_connections=max_connections,
        max_connections_per_source=per_source,
        idle_timeout=_seconds(t, s, "idle_timeout", d.idle_timeout),
        header_timeout=_seconds(t, s, "header_timeout", d.header_timeout),
        tls_handshake_timeout=_seconds(t, s, "tls_handshake_timeout", d.tls_handshake_timeout),
        max_calls=_int(t, s, "max_calls", d.max_calls, 0, 10_000_000),
        max_cps=_int(t, s, "max_cps", d.max_cps, 0, 1_000_000),
        overload_retry_after=_int(t, s, "overload_retry_after", d.overload_retry_after, 0, 3600),
    )


# header-name = token (RFC 3261 section 25.1)
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Server = "Server" HCOLON server-val *(LWS server-val): printable text on one line.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


def _parse_proxy(t: Mapping[str, Any]) -> ProxyConfig:
    s = "proxy"
    d = ProxyConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    server_header = _str(t, s, "server_header", d.server_header).strip()
    if not _HEADER_VALUE.fullmatch(server_header):
        raise ConfigError("proxy.server_header", "must be printable ASCII on one line")
    trunk_header = _str(t, s, "trunk_header", d.trunk_header)
    if trunk_header and not _TOKEN.fullmatch(trunk_header):
        raise ConfigError("proxy.trunk_header", f"{trunk_header!r} is not a header name")
    t1 = _seconds(t, s, "timer_t1", d.timer_t1)
    t2 = _seconds(t, s, "timer_t2", d.timer_t2)
    if t2 < t1:
        # T2 caps the doubling of T1 (RFC 3261 section 17.1.2.2).
        raise ConfigError("proxy.timer_t2", f"{t2} is less than proxy.timer_t1 ({t1})")
    return ProxyConfig(
        record_route=_bool(t, s, "record_route", d.record_route),
        max_forwards=_int(t, s, "max_forwards", d.max_forwards, 1, 255),
        drain_grace=_seconds(t, s, "drain_grace", d.drain_grace, allow_zero=True),
        server_header=server_header,
        timer_t1=t1,
        timer_t2=t2,
        timer_t4=_seconds(t, s, "timer_t4", d.timer_t4),
        timer_c=_seconds(t, s, "timer_c", d.timer_c),
        trunk_header=trunk_header,
    )


def _parse_upstream(t: Mapping[str, Any]) -> UpstreamConfig:
    _no_unknown_keys(t, "upstream", {"echo", "default", "sets"})
    echo = _bool(t, "upstream", "echo", False)
    default = _str(t, "upstream", "default", "")
    raw_sets = t.get("sets", [])
    if not isinstance(raw_sets, list) or not all(isinstance(v, dict) for v in raw_sets):
        raise ConfigError(
            "upstream.sets",
            f"expected an array of tables ([[upstream.sets]]), got {_kind(raw_sets)}",
        )
    sets: list[UpstreamSetConfig] = []
    names: set[str] = {ECHO_SET} if echo else set()
    for i, raw in enumerate(raw_sets):
        s = _parse_set(raw, f"upstream.sets[{i}]")
        if s.name in names:
            why = "is the echo endpoint's set" if s.name == ECHO_SET and echo else "is a duplicate"
            raise ConfigError(f"upstream.sets[{i}].name", f"{s.name!r} {why}")
        names.add(s.name)
        sets.append(s)
    if not echo and not sets:
        raise ConfigError("upstream", "no destination: set echo = true or add [[upstream.sets]]")
    if default and default not in names:
        raise ConfigError(
            "upstream.default",
            f"{default!r} names no upstream set (have: {', '.join(sorted(names))})",
        )
    return UpstreamConfig(echo=echo, default=default, sets=tuple(sets))


def _parse_set(t: Mapping[str, Any], where: str) -> UpstreamSetConfig:
    d = UpstreamSetConfig(name="")
    _no_unknown_keys(t, where, {f.name for f in dataclasses.fields(d)})
    name = _name(t, where)
    algorithm = _choice(t, where, "algorithm", d.algorithm, ALGORITHMS)
    raw = t.get("targets", [])
    key = f"{where}.targets"
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise ConfigError(key, f"expected an array of tables ([[{key}]]), got {_kind(raw)}")
    if not raw:
        raise ConfigError(key, "must list at least one target ([[upstream.sets.targets]])")
    targets: list[TargetConfig] = []
    seen: dict[tuple[str, str, int], int] = {}
    for j, tt in enumerate(raw):
        twhere = f"{key}[{j}]"
        _no_unknown_keys(tt, twhere, {"uri", "weight"})
        if "uri" not in tt:
            raise ConfigError(f"{twhere}.uri", "missing")
        uri, transport, host, port = _sip_address(tt["uri"], f"{twhere}.uri")
        ident = (transport, host, port)
        if ident in seen:
            raise ConfigError(f"{twhere}.uri", f"same destination as {key}[{seen[ident]}]")
        seen[ident] = j
        weight = _int(tt, twhere, "weight", 1, 1, 1_000_000)
        targets.append(TargetConfig(uri, transport, host, port, weight))
    return UpstreamSetConfig(
        name=name,
        algorithm=algorithm,
        targets=tuple(targets),
        probe_interval=_seconds(t, where, "probe_interval", d.probe_interval, allow_zero=True),
        probe_failures=_int(t, where, "probe_failures", d.probe_failures, 1, 1000),
        probe_successes=_int(t, where, "probe_successes", d.probe_successes, 1, 1000),
        media=_media_policy(t, where, "media", d.media),
    )


def _parse_echo(t: Mapping[str, Any]) -> EchoConfig:
    d = EchoConfig()
    _no_unknown_keys(t, "echo", {f.name for f in dataclasses.fields(d)})
    address = d.address
    if "address" in t:
        address = _host_port(t["address"], "echo.address")
    rtp_address = _str(t, "echo", "rtp_address", d.rtp_address)
    try:
        rtp_address = str(ipaddress.ip_address(rtp_address))
    except ValueError:
        raise ConfigError("echo.rtp_address", f"{rtp_address!r} is not an IP address") from None
    return EchoConfig(
        address=address,
        rtp_address=rtp_address,
        answer_delay=_seconds(t, "echo", "answer_delay", d.answer_delay, allow_zero=True),
        media=_media_policy(t, "echo", "media", d.media),
    )


def _check_echo_address(echo: EchoConfig, listen: ListenConfig) -> None:
    """The echo endpoint's UDP socket must not collide with a UDP listener."""
    wildcard = {"0.0.0.0", "::"}
    for i, a in enumerate(listen.udp):
        if a.port == echo.address.port and (
            a.host == echo.address.host or a.host in wildcard or echo.address.host in wildcard
        ):
            raise ConfigError("echo.address", f"{echo.address} collides with listen.udp[{i}] {a}")


# A dialled-number prefix: digits, optionally after "+", as in E.164 or national dialling.
_PREFIX = re.compile(r"\+?[0-9*#]+")


def _parse_trunks(value: Any) -> tuple[TrunkConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("trunks", f"expected an array of tables ([[trunks]]), got {_kind(value)}")
    trunks: list[TrunkConfig] = []
    names: set[str] = set()
    prefix_owner: dict[str, str] = {}
    for i, t in enumerate(value):
        where = f"trunks[{i}]"
        _no_unknown_keys(
            t,
            where,
            {
                "name",
                "allow",
                "address",
                "prefixes",
                "media",
                "tls_fingerprints",
                "tls_subjects",
                "numbers",
            },
        )
        name = _name(t, where)
        if name in names:
            raise ConfigError(f"{where}.name", f"duplicate trunk name {name!r}")
        names.add(name)
        allow: list[IPNetwork] = []
        for j, s in enumerate(_str_list(t, where, "allow")):
            try:
                allow.append(ipaddress.ip_network(s, strict=True))
            except ValueError as e:
                raise ConfigError(f"{where}.allow[{j}]", f"not a CIDR network: {e}") from None
        address = _str(t, where, "address", "")
        transport, host, port = "", "", None
        if address:
            address, transport, host, port = _sip_address(address, f"{where}.address")
        elif not allow:
            raise ConfigError(f"{where}.allow", "must list at least one network (or set address)")
        prefixes = _str_list(t, where, "prefixes")
        for j, p in enumerate(prefixes):
            pkey = f"{where}.prefixes[{j}]"
            if not _PREFIX.fullmatch(p):
                raise ConfigError(pkey, f"{p!r} is not a number prefix (digits, optional '+')")
            if not address:
                raise ConfigError(pkey, "routes calls to a trunk without an address")
            if p in prefix_owner:
                raise ConfigError(pkey, f"{p!r} already routes to trunk {prefix_owner[p]!r}")
            prefix_owner[p] = name
        trunks.append(
            TrunkConfig(
                name=name,
                allow=tuple(allow),
                address=address,
                transport=transport,
                host=host,
                port=port,
                prefixes=tuple(prefixes),
                media=_media_policy(t, where, "media", TrunkConfig(name="").media),
                tls_fingerprints=_fingerprints(t, where),
                tls_subjects=_subjects(t, where),
                numbers=_choice(t, where, "numbers", "any", ("any", "e164")),
            )
        )
    return tuple(trunks)


_FINGERPRINT = re.compile(r"(?:sha-?256:)?((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})", re.I)


def _fingerprints(t: Mapping[str, Any], where: str) -> tuple[str, ...]:
    result = []
    for j, text in enumerate(_str_list(t, where, "tls_fingerprints")):
        m = _FINGERPRINT.fullmatch(text.strip())
        if m is None:
            raise ConfigError(
                f"{where}.tls_fingerprints[{j}]",
                "not a SHA-256 fingerprint (64 hex digits, colons allowed, e.g. from "
                "`openssl x509 -noout -fingerprint -sha256`)",
            )
        result.append(m[1].replace(":", "").lower())
    return tuple(result)


def _subjects(t: Mapping[str, Any], where: str) -> tuple[str, ...]:
    subjects = _str_list(t, where, "tls_subjects")
    for j, text in enumerate(subjects):
        if "=" not in text:
            raise ConfigError(
                f"{where}.tls_subjects[{j}]", f'{text!r} is not a subject such as "CN=sbc.example"'
            )
    return tuple(s.strip() for s in subjects)


def _media_policy(t: Mapping[str, Any], section: str, name: str, default: str) -> str:
    # "dtls-srtp": the side is a WebRTC endpoint (ICE-lite and DTLS-SRTP on its leg).
    return _choice(t, section, name, default, MEDIA_POLICIES)


# "start-end": both ends inclusive, an even start (RTP even, RTCP the odd port after).
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


def _parse_media(t: Mapping[str, Any]) -> MediaConfig:
    s = "media"
    d = MediaConfig()
    _no_unknown_keys(t, s, {f.name for f in dataclasses.fields(d)})
    address = _str(t, s, "address", d.address)
    if address:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ConfigError("media.address", f"{address!r} is not an IP address") from None
        if address in ("0.0.0.0", "::"):
            raise ConfigError("media.address", "a wildcard address cannot be written into SDP")
    low, high = d.port_range
    text = _str(t, s, "port_range", f"{low}-{high}")
    m = _PORT_RANGE.fullmatch(text)
    if m is None:
        raise ConfigError("media.port_range", f'{text!r} is not "start-end", e.g. "10000-60000"')
    low, high = int(m[1]), int(m[2])
    if not 1024 <= low < high <= 65535:
        raise ConfigError("media.port_range", f"{text!r} must lie within 1024-65535, start < end")
    if low % 2:
        raise ConfigError("media.port_range", f"{text!r}: the start must be even (an RTP port)")
    return MediaConfig(
        enabled=_bool(t, s, "enabled", d.enabled),
        address=address,
        port_range=(low, high),
        quarantine=_seconds(t, s, "quarantine", d.quarantine, allow_zero=True),
        timeout=_seconds(t, s, "timeout", d.timeout, allow_zero=True),
        caller=_media_policy(t, s, "caller", d.caller),
        fast_path=_bool(t, s, "fast_path", d.fast_path),
        # A rate of 0 or a burst under one datagram would punt nothing: no leg could
        # ever latch, answer ICE or finish DTLS.
        punt_rate=_rate(t, s, "punt_rate", d.punt_rate),
        punt_burst=_count(t, s, "punt_burst", d.punt_burst, 1),
        # SE_FP_MAX_POLL_US in media/fastpath.h.
        fastpath_poll_us=_int(t, s, "fastpath_poll_us", d.fastpath_poll_us, 0, 1000),
        fastpath_poll_busy_pct=_int(
            t, s, "fastpath_poll_busy_pct", d.fastpath_poll_busy_pct, 0, 100
        ),
    )


# ---------------------------------------------------------------- base64 PEM


def _pem_from_base64(
    env: Mapping[str, str], cert_b64: str | None, key_b64: str | None
) -> tuple[bytes, bytes, str] | None:
    """The certificate and key given as base64 (flags win over the environment)."""
    if cert_b64 or key_b64:
        source = FROM_COMMAND_LINE
        names = ("--tls-cert-base64", "--tls-key-base64")
    else:
        cert_b64, key_b64 = env.get(ENV_CERT_B64), env.get(ENV_KEY_B64)
        source = FROM_ENVIRONMENT
        names = (ENV_CERT_B64, ENV_KEY_B64)
    if not cert_b64 and not key_b64:
        return None
    # A certificate from one place and a key from another is a mistake waiting to happen.
    if not cert_b64:
        raise ConfigError("tls.cert", f"{names[1]} is given but {names[0]} is not")
    if not key_b64:
        raise ConfigError("tls.key", f"{names[0]} is given but {names[1]} is not")
    return (
        _decode_pem(cert_b64, "tls.cert", names[0]),
        _decode_pem(key_b64, "tls.key", names[1]),
        source,
    )


def _decode_pem(value: str, key: str, name: str) -> bytes:
    # `base64` wraps its output at 76 columns; Kubernetes does not: accept both.
    compact = "".join(value.split())
    try:
        pem = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        # Never quote the value: it may be a private key.
        raise ConfigError(key, f"{name} is not valid base64") from None
    if b"-----BEGIN " not in pem:
        raise ConfigError(key, f"{name} does not decode to PEM")
    return pem
