"""Configuration validation in-process: every section, every rule, the key named."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge import config

PEM_CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads(text), check_files=False)


def error_of(text: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        parse(text)
    return info.value


ECHO = "[upstream]\necho = true\n"

FULL = """\
[listen]
udp = ["127.0.0.1:5060", "[::1]:5060"]
tcp = ["127.0.0.1:5060"]
tls = ["127.0.0.1:5061"]
advertise = "SBC.Example.NET"

[tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
verify_client = "optional"

[limits]
max_message_size = 8192
max_connections = 100
max_connections_per_source = 10
idle_timeout = 60
header_timeout = 2.5
tls_handshake_timeout = 3

[proxy]
record_route = false
max_forwards = 20
drain_grace = 0
server_header = "sipedge"
timer_t1 = 0.1
timer_t2 = 0.4
timer_t4 = 0.5
timer_c = 200
trunk_header = "X-Trunk"

[upstream]
echo = true
default = "pbx"

[[upstream.sets]]
name = "pbx"
algorithm = "weight"
probe_interval = 0
probe_failures = 3
probe_successes = 2

[[upstream.sets.targets]]
uri = "sip:10.0.0.5:5080;transport=tcp"
weight = 3

[[upstream.sets.targets]]
uri = "sip:[2001:db8::1];transport=TLS"

[[upstream.sets]]
name = "b"

[[upstream.sets.targets]]
uri = "sip:10.0.0.6"

[echo]
address = "127.0.0.1:5098"
rtp_address = "::1"
answer_delay = 0.5

[[trunks]]
name = "carrier"
allow = ["192.0.2.0/24"]
address = "sip:192.0.2.1:5060;transport=udp"
prefixes = ["+1", "001"]

[[trunks]]
name = "in-only"
allow = ["198.51.100.7/32"]

[metrics]
address = "127.0.0.1:9000"
"""


def test_defaults() -> None:
    cfg = parse(ECHO)
    assert cfg.listen == config.ListenConfig()
    assert cfg.listen.advertise == ""
    assert cfg.tls.client_ca is None
    assert cfg.tls.verify_client == "none"
    assert cfg.tls.cert_pem is None
    assert cfg.limits == config.LimitsConfig(
        max_message_size=65536,
        max_connections=4096,
        max_connections_per_source=32,
        idle_timeout=120.0,
        header_timeout=10.0,
        tls_handshake_timeout=5.0,
        max_calls=0,
        max_cps=0,
        overload_retry_after=1,
    )
    assert cfg.proxy == config.ProxyConfig(
        record_route=True,
        max_forwards=70,
        drain_grace=30.0,
        server_header="",
        timer_t1=0.5,
        timer_t2=4.0,
        timer_t4=5.0,
        timer_c=180.0,
        trunk_header="X-Sipedge-Trunk",
    )
    assert cfg.echo == config.EchoConfig(config.HostPort("127.0.0.1", 5099), "127.0.0.1", 0.0)
    assert cfg.upstream == config.UpstreamConfig(echo=True, default="", sets=())
    assert cfg.upstream.resolved_default() == "echo"
    assert cfg.trunks == ()


def test_default_config_object_is_valid() -> None:
    """Config() as other modules' tests build it matches what an almost empty file gives."""
    assert config.Config() == parse(ECHO)


def test_full() -> None:
    cfg = parse(FULL)
    assert cfg.listen.advertise == "sbc.example.net"
    assert cfg.tls.client_ca == Path("ca.pem")
    assert cfg.tls.verify_client == "optional"
    assert cfg.limits.idle_timeout == 60.0
    assert isinstance(cfg.limits.idle_timeout, float)
    assert cfg.limits.header_timeout == 2.5
    assert cfg.proxy.record_route is False
    assert cfg.proxy.drain_grace == 0.0
    assert cfg.proxy.timer_c == 200.0
    assert cfg.upstream.resolved_default() == "pbx"
    pbx, b = cfg.upstream.sets
    assert pbx == config.UpstreamSetConfig(
        name="pbx",
        algorithm="weight",
        targets=(
            config.TargetConfig("sip:10.0.0.5:5080;transport=tcp", "tcp", "10.0.0.5", 5080, 3),
            config.TargetConfig("sip:[2001:db8::1];transport=TLS", "tls", "2001:db8::1", 5061, 1),
        ),
        probe_interval=0.0,
        probe_failures=3,
        probe_successes=2,
    )
    assert b.algorithm == "round-robin"
    assert b.probe_interval == 10.0
    assert b.targets == (config.TargetConfig("sip:10.0.0.6", "udp", "10.0.0.6", 5060, 1),)
    assert cfg.echo.address == config.HostPort("127.0.0.1", 5098)
    assert cfg.echo.rtp_address == "::1"
    carrier, inbound = cfg.trunks
    assert carrier.address == "sip:192.0.2.1:5060;transport=udp"
    assert (carrier.transport, carrier.host, carrier.port) == ("udp", "192.0.2.1", 5060)
    assert carrier.prefixes == ("+1", "001")
    assert (inbound.address, inbound.transport, inbound.host, inbound.port) == ("", "", "", None)
    assert inbound.prefixes == ()


def test_resolved_default_without_echo_is_the_first_set() -> None:
    cfg = parse(
        '[upstream]\n[[upstream.sets]]\nname = "a"\n[[upstream.sets.targets]]\n'
        'uri = "sip:10.0.0.1"\n[[upstream.sets]]\nname = "b"\n[[upstream.sets.targets]]\n'
        'uri = "sip:10.0.0.2"\n'
    )
    assert cfg.upstream.echo is False
    assert cfg.upstream.resolved_default() == "a"


def test_to_dict_is_json_ready() -> None:
    import json

    effective: dict[str, Any] = config.to_dict(parse(FULL))
    json.dumps(effective)
    assert effective["listen"]["udp"] == ["127.0.0.1:5060", "[::1]:5060"]
    assert effective["tls"]["client_ca"] == "ca.pem"
    assert "cert_pem" not in effective["tls"]
    assert "pem_source" not in effective["tls"]
    assert effective["upstream"]["resolved_default"] == "pbx"
    assert effective["upstream"]["sets"][0]["targets"][0] == {
        "uri": "sip:10.0.0.5:5080;transport=tcp",
        "transport": "tcp",
        "host": "10.0.0.5",
        "port": 5080,
        "weight": 3,
    }
    assert effective["trunks"][0]["allow"] == ["192.0.2.0/24"]
    assert effective["trunks"][1]["port"] is None
    assert effective["echo"]["address"] == "127.0.0.1:5098"


def _set(extra: str = "", target: str = 'uri = "sip:10.0.0.1"') -> str:
    return (
        f'[upstream]\n[[upstream.sets]]\nname = "a"\n{extra}\n[[upstream.sets.targets]]\n{target}\n'
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # top level and listen
        ("bogus = 1\n" + ECHO, "bogus"),
        ("listen = 5\n" + ECHO, "listen"),
        ('[listen]\nudp = "127.0.0.1:5060"\n' + ECHO, "listen.udp"),
        ("[listen]\nudp = [5060]\n" + ECHO, "listen.udp[0]"),
        ('[listen]\nudp = ["localhost:5060"]\n' + ECHO, "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1"]\n' + ECHO, "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1:0"]\n' + ECHO, "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1:65536"]\n' + ECHO, "listen.udp[0]"),
        ('[listen]\ntcp = ["127.0.0.1:5061"]\n' + ECHO, "listen.tls[0]"),
        ('[listen]\nudp = ["[::1:5060"]\n' + ECHO, "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1:5070", "127.0.0.1:5070"]\n' + ECHO, "listen.udp[1]"),
        ('[listen]\nadvertise = "1.2.3.4:5060"\n' + ECHO, "listen.advertise"),
        ('[listen]\nadvertise = "bad host"\n' + ECHO, "listen.advertise"),
        ("[listen]\nadvertise = 1\n" + ECHO, "listen.advertise"),
        # tls
        ('[tls]\nverify_client = "always"\n' + ECHO, "tls.verify_client"),
        ('[tls]\nverify_client = "required"\n' + ECHO, "tls.client_ca"),
        ("[tls]\nclient_ca = 1\n" + ECHO, "tls.client_ca"),
        ('[tls]\npassword = "x"\n' + ECHO, "tls.password"),
        # limits
        ("[limits]\nmax_message_size = true\n" + ECHO, "limits.max_message_size"),
        ("[limits]\nmax_message_size = 1.5\n" + ECHO, "limits.max_message_size"),
        ("[limits]\nmax_message_size = 0\n" + ECHO, "limits.max_message_size"),
        ("[limits]\nmax_connections = 0\n" + ECHO, "limits.max_connections"),
        (
            "[limits]\nmax_connections = 10\nmax_connections_per_source = 11\n" + ECHO,
            "limits.max_connections_per_source",
        ),
        ("[limits]\nidle_timeout = 0\n" + ECHO, "limits.idle_timeout"),
        ("[limits]\nheader_timeout = -1.0\n" + ECHO, "limits.header_timeout"),
        ("[limits]\ntls_handshake_timeout = inf\n" + ECHO, "limits.tls_handshake_timeout"),
        ("[limits]\nidle_timeout = nan\n" + ECHO, "limits.idle_timeout"),
        ('[limits]\nidle_timeout = "2s"\n' + ECHO, "limits.idle_timeout"),
        ("[limits]\nidle_timeout = true\n" + ECHO, "limits.idle_timeout"),
        ("[limits]\nidle_timout = 5\n" + ECHO, "limits.idle_timout"),
        ("[limits]\nmax_calls = -1\n" + ECHO, "limits.max_calls"),
        ("[limits]\nmax_cps = 1500.5\n" + ECHO, "limits.max_cps"),
        ('[limits]\nmax_cps = "1500"\n' + ECHO, "limits.max_cps"),
        ("[limits]\noverload_retry_after = 3601\n" + ECHO, "limits.overload_retry_after"),
        # proxy
        ("[proxy]\nmax_forwards = 0\n" + ECHO, "proxy.max_forwards"),
        ("[proxy]\nmax_forwards = 256\n" + ECHO, "proxy.max_forwards"),
        ("[proxy]\nrecord_route = 1\n" + ECHO, "proxy.record_route"),
        ("[proxy]\ndrain_grace = -1\n" + ECHO, "proxy.drain_grace"),
        ('[proxy]\nserver_header = "a\\r\\nVia: x"\n' + ECHO, "proxy.server_header"),
        ('[proxy]\ntrunk_header = "X Trunk"\n' + ECHO, "proxy.trunk_header"),
        ('[proxy]\ntrunk_header = "X-Trunk:"\n' + ECHO, "proxy.trunk_header"),
        ("[proxy]\ntimer_t1 = 0\n" + ECHO, "proxy.timer_t1"),
        ("[proxy]\ntimer_t1 = 5.0\n" + ECHO, "proxy.timer_t2"),
        ("[proxy]\ntimer_c = 0\n" + ECHO, "proxy.timer_c"),
        ("[proxy]\ntimer_t4 = -5\n" + ECHO, "proxy.timer_t4"),
        # upstream
        ("[upstream]", "upstream"),
        ("[upstream]\necho = false\nsets = []", "upstream"),
        ('[upstream]\necho = "yes"', "upstream.echo"),
        ('[upstream]\necho = true\ntargets = ["10.0.0.1:5060"]', "upstream.targets"),
        ('[upstream]\necho = true\ndefault = "pbx"', "upstream.default"),
        ('[upstream]\ndefault = "echo"\n' + _set()[11:], "upstream.default"),
        ("[upstream]\necho = true\nsets = 5", "upstream.sets"),
        (_set().replace('name = "a"\n', ""), "upstream.sets[0].name"),
        (_set().replace('name = "a"', 'name = ""'), "upstream.sets[0].name"),
        (_set().replace('name = "a"', 'name = "a b"'), "upstream.sets[0].name"),
        (_set() + _set()[11:], "upstream.sets[1].name"),
        (
            "[upstream]\necho = true\n" + _set()[11:].replace('"a"', '"echo"'),
            "upstream.sets[0].name",
        ),
        (_set('algorithm = "random"'), "upstream.sets[0].algorithm"),
        (_set("probe_interval = -1"), "upstream.sets[0].probe_interval"),
        (_set("probe_failures = 0"), "upstream.sets[0].probe_failures"),
        (_set("probe_successes = 0"), "upstream.sets[0].probe_successes"),
        (_set("bogus = 0"), "upstream.sets[0].bogus"),
        ('[upstream]\n[[upstream.sets]]\nname = "a"\n', "upstream.sets[0].targets"),
        ('[upstream]\n[[upstream.sets]]\nname = "a"\ntargets = []', "upstream.sets[0].targets"),
        (_set(target="weight = 2"), "upstream.sets[0].targets[0].uri"),
        (_set(target="uri = 5"), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "10.0.0.1:5060"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:pbx.example.net"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sips:10.0.0.1"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "tel:+15551234"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:10.0.0.1;transport=sctp"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:10.0.0.1:99999"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:10.0.0.1:0"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:bob@10.0.0.1"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:10.0.0.1?Subject=x"'), "upstream.sets[0].targets[0].uri"),
        (_set(target='uri = "sip:10.0.0.1"\nweight = 0'), "upstream.sets[0].targets[0].weight"),
        (_set(target='uri = "sip:10.0.0.1"\nweight = 1.5'), "upstream.sets[0].targets[0].weight"),
        (_set(target='uri = "sip:10.0.0.1"\nport = 1'), "upstream.sets[0].targets[0].port"),
        (
            _set(
                target='uri = "sip:10.0.0.1"\n[[upstream.sets.targets]]\nuri = "sip:10.0.0.1:5060"'
            ),
            "upstream.sets[0].targets[1].uri",
        ),
        # echo
        ('[echo]\naddress = "localhost:5099"\n' + ECHO, "echo.address"),
        ('[echo]\nrtp_address = "example.com"\n' + ECHO, "echo.rtp_address"),
        ("[echo]\nanswer_delay = -1\n" + ECHO, "echo.answer_delay"),
        ("[echo]\nport = 1\n" + ECHO, "echo.port"),
        ('[echo]\naddress = "127.0.0.1:5060"\n' + ECHO, "echo.address"),
        ('[listen]\nudp = ["0.0.0.0:5099"]\n' + ECHO, "echo.address"),
        # trunks
        (ECHO + "[[trunks]]\nallow = []", "trunks[0].name"),
        (ECHO + '[[trunks]]\nname = "a"', "trunks[0].allow"),
        (ECHO + '[[trunks]]\nname = "a"\nallow = []', "trunks[0].allow"),
        (ECHO + '[[trunks]]\nname = "a"\nallow = ["10.0.0.1/8"]', "trunks[0].allow[0]"),
        (ECHO + '[[trunks]]\nname = "a"\nallow = "10.0.0.0/8"', "trunks[0].allow"),
        (
            ECHO + '[[trunks]]\nname = "a"\nallow = ["::1/128"]\n'
            '[[trunks]]\nname = "a"\nallow = ["::1/128"]',
            "trunks[1].name",
        ),
        ('trunks = "x"\n' + ECHO, "trunks"),
        (ECHO + '[[trunks]]\nname = "a"\naddress = "sip:c.example.com"', "trunks[0].address"),
        (ECHO + '[[trunks]]\nname = "a"\naddress = "192.0.2.1:5060"', "trunks[0].address"),
        (
            ECHO + '[[trunks]]\nname = "a"\nallow = ["192.0.2.0/24"]\nprefixes = ["+1"]',
            "trunks[0].prefixes[0]",
        ),
        (
            ECHO + '[[trunks]]\nname = "a"\naddress = "sip:192.0.2.1"\nprefixes = ["1-800"]',
            "trunks[0].prefixes[0]",
        ),
        (
            ECHO + '[[trunks]]\nname = "a"\naddress = "sip:192.0.2.1"\nprefixes = [""]',
            "trunks[0].prefixes[0]",
        ),
        (
            ECHO + '[[trunks]]\nname = "a"\naddress = "sip:192.0.2.1"\nprefixes = ["+1"]\n'
            '[[trunks]]\nname = "b"\naddress = "sip:192.0.2.2"\nprefixes = ["+44", "+1"]',
            "trunks[1].prefixes[1]",
        ),
        (ECHO + '[[trunks]]\nname = "a"\nallow = ["10.0.0.0/8"]\nbogus = 1', "trunks[0].bogus"),
        # metrics
        ('[metrics]\naddress = "127.0.0.1:70000"\n' + ECHO, "metrics.address"),
        # media: the plane's per-leg punt budget
        ("[media]\npunt_rate = 0\n" + ECHO, "media.punt_rate"),
        ("[media]\npunt_rate = -250.0\n" + ECHO, "media.punt_rate"),
        ("[media]\npunt_rate = inf\n" + ECHO, "media.punt_rate"),
        ("[media]\npunt_rate = nan\n" + ECHO, "media.punt_rate"),
        ('[media]\npunt_rate = "250/s"\n' + ECHO, "media.punt_rate"),
        ("[media]\npunt_rate = true\n" + ECHO, "media.punt_rate"),
        ("[media]\npunt_burst = 0\n" + ECHO, "media.punt_burst"),
        ("[media]\npunt_burst = -1\n" + ECHO, "media.punt_burst"),
        ("[media]\npunt_burst = 400.0\n" + ECHO, "media.punt_burst"),
        ('[media]\npunt_burst = "400"\n' + ECHO, "media.punt_burst"),
        ("[media]\nfastpath_poll_us = -1\n" + ECHO, "media.fastpath_poll_us"),
        ("[media]\nfastpath_poll_us = 1001\n" + ECHO, "media.fastpath_poll_us"),
        ("[media]\nfastpath_poll_us = 200.0\n" + ECHO, "media.fastpath_poll_us"),
        ('[media]\nfastpath_poll_us = "200"\n' + ECHO, "media.fastpath_poll_us"),
        ("[media]\nfastpath_poll_us = true\n" + ECHO, "media.fastpath_poll_us"),
        ("[media]\nfastpath_poll_busy_pct = -1\n" + ECHO, "media.fastpath_poll_busy_pct"),
        ("[media]\nfastpath_poll_busy_pct = 101\n" + ECHO, "media.fastpath_poll_busy_pct"),
        ("[media]\nfastpath_poll_busy_pct = 0.5\n" + ECHO, "media.fastpath_poll_busy_pct"),
        ('[media]\nfastpath_poll_busy_pct = "40%"\n' + ECHO, "media.fastpath_poll_busy_pct"),
        ("[audit]\nflush_interval = -0.1\n" + ECHO, "audit.flush_interval"),
        ("[audit]\nflush_interval = 6\n" + ECHO, "audit.flush_interval"),
        ('[audit]\nflush_interval = "50ms"\n' + ECHO, "audit.flush_interval"),
        ("[audit]\nflush_interval = nan\n" + ECHO, "audit.flush_interval"),
    ],
)
def test_parse_rejects(text: str, key: str) -> None:
    assert error_of(text).key == key


def test_punt_budget() -> None:
    """[media] punt_rate and punt_burst: defaults, values as written, errors that name
    the key and say what it must be."""
    assert (config.MediaConfig().punt_rate, config.MediaConfig().punt_burst) == (250.0, 400)
    media = parse("[media]\npunt_rate = 40\npunt_burst = 1\n" + ECHO).media
    assert (media.punt_rate, media.punt_burst) == (40.0, 1)
    assert isinstance(media.punt_rate, float)
    assert parse("[media]\npunt_rate = 0.5\n" + ECHO).media.punt_rate == 0.5
    assert str(error_of("[media]\npunt_rate = 0\n" + ECHO)) == (
        "media.punt_rate: 0 must be a finite number > 0"
    )
    assert str(error_of("[media]\npunt_burst = 0\n" + ECHO)) == "media.punt_burst: 0 must be >= 1"
    assert str(error_of("[media]\npunt_burst = 2.5\n" + ECHO)) == (
        "media.punt_burst: expected an integer, got a float"
    )
    effective = config.to_dict(parse("[media]\npunt_burst = 8\n" + ECHO))
    assert (effective["media"]["punt_rate"], effective["media"]["punt_burst"]) == (250.0, 8)


def test_outbound_only_trunk_needs_no_allow() -> None:
    cfg = parse(ECHO + '[[trunks]]\nname = "out"\naddress = "sip:192.0.2.1;transport=tls"')
    (trunk,) = cfg.trunks
    assert trunk.allow == ()
    assert (trunk.transport, trunk.port) == ("tls", 5061)


def test_error_message_names_the_problem() -> None:
    e = error_of(_set(target='uri = "sip:pbx.example.net"'))
    assert str(e) == (
        "upstream.sets[0].targets[0].uri: 'sip:pbx.example.net': the host must be an IP address"
    )


def test_advertise_forms() -> None:
    for value, expected in [
        ("203.0.113.7", "203.0.113.7"),
        ("[2001:DB8::7]", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("Edge.Example.COM.", "edge.example.com."),
    ]:
        assert parse(f'[listen]\nadvertise = "{value}"\n' + ECHO).listen.advertise == expected


# ---------------------------------------------------------------- files and secrets


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    return path


TLS_ONLY = '[listen]\nudp = []\ntcp = []\ntls = ["127.0.0.1:5061"]\n' + ECHO


def test_no_tls_listener_needs_no_certificate(tmp_path: Path) -> None:
    text = '[listen]\ntls = []\n[tls]\ncert = "/nonexistent.pem"\n' + ECHO
    assert config.load(write(tmp_path, text), env={}).tls.cert == Path("/nonexistent.pem")


def test_tls_listener_needs_the_files(tmp_path: Path) -> None:
    text = TLS_ONLY + f'[tls]\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/k.pem"\n'
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text), env={})
    assert info.value.key == "tls.cert"
    assert "file not found" in info.value.problem
    (tmp_path / "c.pem").write_bytes(PEM_CERT)
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text), env={})
    assert info.value.key == "tls.key"
    (tmp_path / "k.pem").write_bytes(PEM_KEY)
    assert config.load(write(tmp_path, text), env={}).tls.cert_pem is None


def test_client_ca_file_is_checked(tmp_path: Path) -> None:
    text = TLS_ONLY + '[tls]\nclient_ca = "/nonexistent-ca.pem"\nverify_client = "required"\n'
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text), env={}, cert_b64=b64(PEM_CERT), key_b64=b64(PEM_KEY))
    assert info.value.key == "tls.client_ca"


def test_base64_from_environment(tmp_path: Path) -> None:
    env = {config.ENV_CERT_B64: b64(PEM_CERT), config.ENV_KEY_B64: b64(PEM_KEY)}
    cfg = config.load(write(tmp_path, TLS_ONLY), env=env)
    assert cfg.tls.cert_pem == PEM_CERT
    assert cfg.tls.key_pem == PEM_KEY
    assert cfg.tls.pem_source == config.FROM_ENVIRONMENT
    # Never in a repr or the effective configuration.
    for text in (repr(cfg), repr(cfg.tls), str(config.to_dict(cfg))):
        assert "MIIE" not in text
        assert b64(PEM_KEY) not in text
    effective = config.to_dict(cfg)
    assert effective["tls"]["cert"] == "<from environment>"
    assert effective["tls"]["key"] == "<from environment>"


def test_base64_flags_win_over_environment(tmp_path: Path) -> None:
    env = {config.ENV_CERT_B64: "!!!", config.ENV_KEY_B64: "!!!"}
    # A certificate wrapped at 76 columns, as `base64` writes it, is fine too.
    wrapped = b64(PEM_CERT * 3)
    wrapped = "\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))
    cfg = config.load(write(tmp_path, TLS_ONLY), env=env, cert_b64=wrapped, key_b64=b64(PEM_KEY))
    assert cfg.tls.cert_pem == PEM_CERT * 3
    assert config.to_dict(cfg)["tls"]["cert"] == config.FROM_COMMAND_LINE


@pytest.mark.parametrize(
    ("env", "flags", "key", "problem"),
    [
        ({config.ENV_CERT_B64: b64(PEM_CERT)}, {}, "tls.key", "SIPEDGE_TLS_CERT_BASE64 is given"),
        ({config.ENV_KEY_B64: b64(PEM_KEY)}, {}, "tls.cert", "SIPEDGE_TLS_KEY_BASE64 is given"),
        ({}, {"cert_b64": b64(PEM_CERT)}, "tls.key", "--tls-cert-base64 is given"),
        (
            {},
            {"cert_b64": "not base64!", "key_b64": b64(PEM_KEY)},
            "tls.cert",
            "--tls-cert-base64 is not valid base64",
        ),
        (
            {},
            {"cert_b64": b64(PEM_CERT), "key_b64": b64(b"secret-not-pem")},
            "tls.key",
            "--tls-key-base64 does not decode to PEM",
        ),
    ],
)
def test_base64_errors(
    tmp_path: Path, env: dict[str, str], flags: dict[str, str], key: str, problem: str
) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, TLS_ONLY), env=env, **flags)
    assert info.value.key == key
    assert problem in info.value.problem
    assert "secret-not-pem" not in str(info.value)


def test_empty_environment_variables_are_unset(tmp_path: Path) -> None:
    env = {config.ENV_CERT_B64: "", config.ENV_KEY_B64: ""}
    cfg = config.load(write(tmp_path, ECHO), env=env)
    assert cfg.tls.cert_pem is None


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(tmp_path / "missing.toml", env={})
    assert info.value.key == "config"
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, "[listen\n"), env={})
    assert info.value.key == "config"
    assert "invalid TOML" in info.value.problem


def test_fastpath_poll_us() -> None:
    """Off by default (the loops sleep at once); a value as written; the key named."""
    assert config.MediaConfig().fastpath_poll_us == 0
    assert parse("[media]\nfastpath_poll_us = 200\n" + ECHO).media.fastpath_poll_us == 200
    assert parse("[media]\nfastpath_poll_us = 1000\n" + ECHO).media.fastpath_poll_us == 1000
    assert str(error_of("[media]\nfastpath_poll_us = 1001\n" + ECHO)) == (
        "media.fastpath_poll_us: 1001 out of range 0-1000"
    )


def test_fastpath_poll_busy_pct() -> None:
    """Polling, once configured, is adaptive by default (40%); 0 polls always."""
    assert config.MediaConfig().fastpath_poll_busy_pct == 40
    text = "[media]\nfastpath_poll_us = 200\nfastpath_poll_busy_pct = 0\n" + ECHO
    assert parse(text).media.fastpath_poll_busy_pct == 0
    assert (
        parse("[media]\nfastpath_poll_busy_pct = 100\n" + ECHO).media.fastpath_poll_busy_pct == 100
    )
    assert str(error_of("[media]\nfastpath_poll_busy_pct = 101\n" + ECHO)) == (
        "media.fastpath_poll_busy_pct: 101 out of range 0-100"
    )


def test_audit_flush_interval() -> None:
    assert parse(ECHO).audit.flush_interval == 0.05
    assert parse("[audit]\nflush_interval = 0\n" + ECHO).audit.flush_interval == 0.0
    assert parse("[audit]\nflush_interval = 5\n" + ECHO).audit.flush_interval == 5.0
