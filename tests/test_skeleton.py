"""The skeleton: the C extension builds and imports, the CLI validates configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge import config

ROOT = Path(__file__).resolve().parent.parent
DEV_CONFIG = ROOT / "configs" / "dev.toml"
EXAMPLE_CONFIG = ROOT / "configs" / "sipedge.example.toml"


@pytest.fixture(scope="module", autouse=True)
def devcert() -> None:
    """The dev certificate the configs point at (what `make devcert` makes)."""
    subprocess.run(["bash", "scripts/devcert.sh", ".sipedge"], cwd=ROOT, check=True)


def sipedge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the CLI the way a user would, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    return path


# A valid configuration to break one key at a time (paths relative to ROOT).
GOOD = """\
[listen]
udp = ["127.0.0.1:5060"]
tcp = ["127.0.0.1:5060"]
tls = ["127.0.0.1:5061"]

[tls]
cert = ".sipedge/dev-cert.pem"
key = ".sipedge/dev-key.pem"

[metrics]
address = "127.0.0.1:2112"

[limits]
max_message_size = 65536

[upstream]
echo = true

[[trunks]]
name = "loopback"
allow = ["127.0.0.1/32"]
"""


# ---------------------------------------------------------------- the C extension


def test_extension_is_the_c_backend() -> None:
    from media import _srtp

    assert _srtp.backend() == "c"
    assert Path(_srtp.__file__ or "").suffix == ".so"


def test_extension_reports_openssl_3() -> None:
    from media import _srtp

    version = _srtp.openssl_version()
    assert version.startswith("OpenSSL 3."), version
    # OpenSSL 3 numbers are 0xMNN00PP0 (major, minor, patch).
    assert _srtp.openssl_version_number() >> 28 == 3


# ---------------------------------------------------------------- the CLI


def test_help_everywhere() -> None:
    for args in (["--help"], ["run", "--help"], ["check-config", "--help"]):
        result = sipedge(*args)
        assert result.returncode == 0, result.stderr
        assert "usage: sipedge" in result.stdout


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "sipedge"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout


def test_version() -> None:
    result = sipedge("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "sipedge 0.1.0"


def test_no_command_prints_usage_and_fails() -> None:
    result = sipedge()
    assert result.returncode == 2
    assert "usage: sipedge" in result.stderr


@pytest.mark.parametrize("path", [DEV_CONFIG, EXAMPLE_CONFIG], ids=["dev", "example"])
def test_check_config_accepts_shipped_configs(path: Path) -> None:
    result = sipedge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["listen"]["udp"] == ["127.0.0.1:5060"]
    assert effective["listen"]["tls"] == ["127.0.0.1:5061"]
    assert effective["upstream"] == {"echo": True, "targets": []}
    assert effective["limits"] == {"max_message_size": 65536}
    assert effective["metrics"] == {"address": "127.0.0.1:2112"}
    assert effective["trunks"] == [{"name": "loopback", "allow": ["127.0.0.1/32"]}]


def test_check_config_fills_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[upstream]\necho = true\n")
    result = sipedge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["tls"] == {"cert": ".sipedge/dev-cert.pem", "key": ".sipedge/dev-key.pem"}
    assert effective["metrics"]["address"] == "127.0.0.1:2112"
    assert effective["limits"]["max_message_size"] == 65536
    assert effective["trunks"] == []


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ("max_message_size", "max_mesage_size", "limits.max_mesage_size", "unknown key"),
        ("echo = true", 'echo = "yes"', "upstream.echo", "expected a boolean, got a string"),
        ('"127.0.0.1:2112"', '"127.0.0.1:70000"', "metrics.address", "port 70000 out of range"),
        (".sipedge/dev-cert.pem", ".sipedge/no-such-cert.pem", "tls.cert", "file not found"),
    ],
    ids=["unknown-key", "wrong-type", "port-out-of-range", "missing-cert"],
)
def test_check_config_rejects_bad_config(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    assert old in GOOD
    path = write_config(tmp_path, GOOD.replace(old, new, 1))
    result = sipedge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f": {key}: " in lines[0]
    assert problem in lines[0]


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = sipedge("check-config", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "config: cannot read" in result.stderr


def test_run_validates_then_says_proxy_not_built() -> None:
    result = sipedge("run", "--config", str(DEV_CONFIG))
    assert result.returncode == 3
    record = json.loads(result.stderr.strip())
    assert record["event"] == "proxy_not_built"
    assert record["level"] == "error"


def test_run_rejects_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD.replace("65536", "0"))
    result = sipedge("run", "--config", str(path))
    assert result.returncode == 2
    assert "limits.max_message_size" in result.stderr


# ---------------------------------------------------------------- config validation in-process


def parse(text: str) -> config.Config:
    import tomllib

    return config.parse(tomllib.loads(text), check_files=False)


def error_of(text: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        parse(text)
    return info.value


def test_parse_good() -> None:
    cfg = parse(GOOD)
    assert cfg.listen.udp == (config.HostPort("127.0.0.1", 5060),)
    assert cfg.upstream.echo is True
    assert str(cfg.trunks[0].allow[0]) == "127.0.0.1/32"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n[upstream]\necho = true", "bogus"),
        ("listen = 5\n[upstream]\necho = true", "listen"),
        ('[listen]\nudp = "127.0.0.1:5060"\n[upstream]\necho = true', "listen.udp"),
        ("[listen]\nudp = [5060]\n[upstream]\necho = true", "listen.udp[0]"),
        ('[listen]\nudp = ["localhost:5060"]\n[upstream]\necho = true', "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1"]\n[upstream]\necho = true', "listen.udp[0]"),
        ('[listen]\nudp = ["127.0.0.1:0"]\n[upstream]\necho = true', "listen.udp[0]"),
        ('[listen]\ntcp = ["127.0.0.1:5061"]\n[upstream]\necho = true', "listen.tls[0]"),
        ('[listen]\nudp = ["[::1:5060"]\n[upstream]\necho = true', "listen.udp[0]"),
        ("[limits]\nmax_message_size = true\n[upstream]\necho = true", "limits.max_message_size"),
        ("[limits]\nmax_message_size = 1.5\n[upstream]\necho = true", "limits.max_message_size"),
        ("[upstream]", "upstream"),
        ('[upstream]\necho = true\ntargets = ["pbx.example.net:5060"]', "upstream.targets"),
        ('[upstream]\ntargets = ["bad host:5060"]', "upstream.targets[0]"),
        ("[upstream]\necho = true\n[[trunks]]\nallow = []", "trunks[0].name"),
        ('[upstream]\necho = true\n[[trunks]]\nname = "a"', "trunks[0].allow"),
        ('[upstream]\necho = true\n[[trunks]]\nname = "a"\nallow = []', "trunks[0].allow"),
        (
            '[upstream]\necho = true\n[[trunks]]\nname = "a"\nallow = ["10.0.0.1/8"]',
            "trunks[0].allow[0]",
        ),
        (
            '[upstream]\necho = true\n[[trunks]]\nname = "a"\nallow = ["::1/128"]\n'
            '[[trunks]]\nname = "a"\nallow = ["::1/128"]',
            "trunks[1].name",
        ),
        ('trunks = "x"\n[upstream]\necho = true', "trunks"),
    ],
)
def test_parse_rejects(text: str, key: str) -> None:
    assert error_of(text).key == key


def test_ipv6_and_hostnames() -> None:
    cfg = parse(
        '[listen]\nudp = ["[::1]:5060"]\ntcp = []\ntls = []\n'
        '[upstream]\ntargets = ["PBX1.example.net:5080", "[2001:db8::1]:5060"]'
    )
    effective: dict[str, Any] = config.to_dict(cfg)
    assert effective["listen"] == {"udp": ["[::1]:5060"], "tcp": [], "tls": []}
    assert effective["upstream"]["targets"] == ["pbx1.example.net:5080", "[2001:db8::1]:5060"]


def test_no_tls_listener_needs_no_certificate(tmp_path: Path) -> None:
    text = '[listen]\ntls = []\n[tls]\ncert = "/nonexistent.pem"\n[upstream]\necho = true'
    path = write_config(tmp_path, text)
    assert config.load(path).tls.cert == Path("/nonexistent.pem")
