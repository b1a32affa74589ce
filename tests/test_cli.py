"""The ``sipedge`` command line, run the way a user runs it: a fresh interpreter."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge import cli

ROOT = Path(__file__).resolve().parent.parent
DEV_CONFIG = ROOT / "configs" / "dev.toml"
EXAMPLE_CONFIG = ROOT / "configs" / "sipedge.example.toml"

PEM_CERT = b"-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
PEM_KEY = b"-----BEGIN PRIVATE KEY-----\nMIIEsecretkey\n-----END PRIVATE KEY-----\n"


@pytest.fixture(scope="module", autouse=True)
def devcert() -> None:
    """The dev certificate the configs point at (what `make devcert` makes)."""
    subprocess.run(["bash", "scripts/devcert.sh", ".sipedge"], cwd=ROOT, check=True)


def sipedge(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIPEDGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
idle_timeout = 120.0

[proxy]
max_forwards = 70

[upstream]
echo = true

[[upstream.sets]]
name = "pbx"
[[upstream.sets.targets]]
uri = "sip:10.0.0.5:5060;transport=udp"

[[trunks]]
name = "loopback"
allow = ["127.0.0.1/32"]
"""


def test_help_everywhere() -> None:
    for args in (["--help"], ["run", "--help"], ["check-config", "--help"]):
        result = sipedge(*args)
        assert result.returncode == 0, result.stderr
        assert "usage: sipedge" in result.stdout
        if args != ["--help"]:
            assert "--tls-cert-base64" in result.stdout
            assert "SIPEDGE_TLS_KEY_BASE64" in result.stdout


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


def test_check_config_accepts_dev_config() -> None:
    result = sipedge("check-config", "--config", str(DEV_CONFIG))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["listen"] == {
        "udp": ["127.0.0.1:5060"],
        "tcp": ["127.0.0.1:5060"],
        "tls": ["127.0.0.1:5061"],
        "wss": ["127.0.0.1:8443"],
        "advertise": "",
    }
    assert effective["metrics"] == {"address": "127.0.0.1:2112"}
    assert effective["upstream"] == {
        "echo": True,
        "default": "",
        "sets": [],
        "resolved_default": "echo",
    }
    assert effective["echo"]["address"] == "127.0.0.1:5099"
    assert [(t["name"], t["allow"]) for t in effective["trunks"]] == [
        ("loopback", ["127.0.0.1/32"])
    ]


def test_check_config_accepts_example_config() -> None:
    result = sipedge("check-config", "--config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["listen"]["udp"] == ["127.0.0.1:5060"]
    assert effective["listen"]["tls"] == ["127.0.0.1:5061"]
    assert effective["upstream"]["resolved_default"] == "echo"
    (pbx,) = effective["upstream"]["sets"]
    assert [t["uri"] for t in pbx["targets"]] == [
        "sip:192.0.2.10:5060;transport=udp",
        "sip:192.0.2.11:5061;transport=tls",
    ]
    assert [t["name"] for t in effective["trunks"]] == ["loopback", "carrier"]
    assert effective["trunks"][1]["prefixes"] == ["+1", "001"]


def _keys(data: dict[str, object], prefix: str = "") -> set[str]:
    """The dotted names of the leaf keys (tables and arrays of tables walked into)."""
    keys: set[str] = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                keys |= _keys(item, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_example_and_docs_show_every_key() -> None:
    """Every key check-config prints is set in the example and has a row in the docs."""
    import tomllib

    effective = json.loads(sipedge("check-config", "--config", str(EXAMPLE_CONFIG)).stdout)
    declared = _keys(effective) - {"upstream.resolved_default"}
    # Derived from address, not keys of the file.
    declared -= {f"trunks.{k}" for k in ("transport", "host", "port")}
    declared -= {f"upstream.sets.targets.{k}" for k in ("transport", "host", "port")}
    declared -= {"auth.jwt_key"}  # says whether $JWT_KEY is set; never a key of the file
    example = _keys(tomllib.loads(EXAMPLE_CONFIG.read_text()))
    assert declared - example == set()
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for key in declared:
        leaf = key.rsplit(".", 1)[-1]
        assert f"| `{leaf}` |" in docs, f"{key} has no row in docs/configuration.md"


def test_check_config_fills_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[upstream]\necho = true\n")
    result = sipedge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["tls"] == {
        "cert": ".sipedge/dev-cert.pem",
        "key": ".sipedge/dev-key.pem",
        "client_ca": "",
        "verify_client": "none",
    }
    assert effective["metrics"]["address"] == "127.0.0.1:2112"
    assert effective["limits"]["max_message_size"] == 65536
    assert effective["proxy"]["trunk_header"] == "X-Sipedge-Trunk"
    assert effective["proxy"]["server_header"] == ""
    assert effective["trunks"] == []


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ("max_message_size", "max_mesage_size", "limits.max_mesage_size", "unknown key"),
        ("echo = true", 'echo = "yes"', "upstream.echo", "expected a boolean, got a string"),
        ('"127.0.0.1:2112"', '"127.0.0.1:70000"', "metrics.address", "port 70000 out of range"),
        (".sipedge/dev-cert.pem", ".sipedge/no-such-cert.pem", "tls.cert", "file not found"),
        ("idle_timeout = 120.0", "idle_timeout = 0", "limits.idle_timeout", "must be > 0"),
        ("max_forwards = 70", "max_forwards = 300", "proxy.max_forwards", "out of range 1-255"),
        (
            "sip:10.0.0.5:5060;transport=udp",
            "sip:10.0.0.5:5060;transport=sctp",
            "upstream.sets[0].targets[0].uri",
            "transport must be one of udp, tcp, tls",
        ),
        ('name = "pbx"', 'name = "echo"', "upstream.sets[0].name", "echo endpoint"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "port-out-of-range",
        "missing-cert",
        "zero-timeout",
        "max-forwards",
        "bad-uri",
        "echo-name",
    ],
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


def test_base64_from_environment_is_masked(tmp_path: Path) -> None:
    # The certificate files need not exist when the PEM comes from the environment.
    path = write_config(tmp_path, GOOD.replace(".sipedge/dev-", "/nonexistent/"))
    env = {"SIPEDGE_TLS_CERT_BASE64": b64(PEM_CERT), "SIPEDGE_TLS_KEY_BASE64": b64(PEM_KEY)}
    result = sipedge("check-config", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["tls"]["cert"] == "<from environment>"
    assert effective["tls"]["key"] == "<from environment>"
    assert "secretkey" not in result.stdout
    assert b64(PEM_KEY) not in result.stdout


def test_base64_flags(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD.replace(".sipedge/dev-", "/nonexistent/"))
    result = sipedge(
        "check-config",
        "--config",
        str(path),
        "--tls-cert-base64",
        b64(PEM_CERT),
        "--tls-key-base64",
        b64(PEM_KEY),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tls"]["key"] == "<from command line>"
    assert b64(PEM_KEY) not in result.stdout


def test_bad_base64_names_the_key_not_the_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD)
    secret = "c2VjcmV0LWtleS1ub3QtcGVt"  # base64 of something that is not PEM
    env = {"SIPEDGE_TLS_CERT_BASE64": b64(PEM_CERT), "SIPEDGE_TLS_KEY_BASE64": secret}
    result = sipedge("check-config", "--config", str(path), env=env)
    assert result.returncode == 2
    assert ": tls.key: SIPEDGE_TLS_KEY_BASE64 does not decode to PEM" in result.stderr
    assert secret not in result.stderr


def test_run_rejects_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD.replace("65536", "0"))
    result = sipedge("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ": limits.max_message_size: " in lines[0]


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` takes argv and the environment, for embedding and tests."""
    path = write_config(tmp_path, "[listen]\ntls = []\n[upstream]\necho = true\n")
    assert cli.main(["check-config", "--config", str(path)], env={}) == 0
    assert json.loads(capsys.readouterr().out)["listen"]["tls"] == []
