"""The running application: start-up order, signals, reload, start-up failures.

Two halves:
- in-process, with fake parts injected through ``components``: the order things
  start and stop in, what a failure at each step gives;
- ``sipedge run`` as a subprocess with the real parts on free loopback ports:
  "ready", SIGTERM -> exit 0, SIGHUP reload, a port in use, a bad certificate.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import errno
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge import app, config

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def make_cert(cn: str = "localhost") -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(cn)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def free_ports(*kinds: int) -> list[int]:
    """Distinct free loopback ports, one per socket type given (held until all are chosen)."""
    socks = []
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    assert len(set(ports)) == len(ports)
    return ports


class Log:
    """Collects log calls, as a component sees the logger."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, level: str, event: str, /, **fields: Any) -> None:
        self.records.append({"level": level, "event": event, **fields})

    def events(self) -> list[str]:
        return [r["event"] for r in self.records]

    def find(self, event: str) -> dict[str, Any]:
        for r in self.records:
            if r["event"] == event:
                return r
        raise AssertionError(f"no {event!r} in {self.events()}")


# ---------------------------------------------------------------- in-process, with fakes


class Calls(list[str]):
    pass


class FakeTls:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.fail_load: Exception | None = None
        self.loads = 0

    def load_pem_pair(
        self, cert: Any, key: Any, cert_b64: str | None, key_b64: str | None
    ) -> tuple[bytes, bytes]:
        self.calls.append("tls.load")
        self.loads += 1
        if self.fail_load is not None:
            raise self.fail_load
        if cert_b64 is not None and key_b64 is not None:
            return base64.b64decode(cert_b64), base64.b64decode(key_b64)
        return b"cert", b"key"

    def server_context(self, cert: bytes, key: bytes, **kw: Any) -> tuple[str, int]:
        self.calls.append("tls.server_context")
        return ("server-ctx", self.loads)

    def client_context(self) -> str:
        self.calls.append("tls.client_context")
        return "client-ctx"


class FakeEcho:
    fail: OSError | None = None

    def __init__(self, cfg: config.EchoConfig, *, log: Any, calls: Calls) -> None:
        self.cfg = cfg
        self.calls = calls

    async def start(self) -> None:
        self.calls.append("echo.start")
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        self.calls.append("echo.close")

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.cfg.address.host, self.cfg.address.port)


class FakeRouter:
    def __init__(
        self, cfg: config.Config, *, echo_address: tuple[str, int] | None, log: Any, calls: Calls
    ) -> None:
        calls.append(f"router echo={echo_address}")


class FakeTransport:
    fail: OSError | None = None

    def __init__(self, *, calls: Calls, **kw: Any) -> None:
        self.kw = kw
        self.calls = calls
        self.contexts: list[Any] = [kw["tls_server"]]
        calls.append("transport")

    async def start(self) -> None:
        self.calls.append("transport.start")
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        self.calls.append("transport.close")

    def set_tls_server_context(self, ctx: Any) -> None:
        self.calls.append("transport.set_tls_server_context")
        self.contexts.append(ctx)


class FakeProxy:
    drain_forever = False

    def __init__(self, cfg: Any, transport: Any, router: Any, *, log: Any, calls: Calls) -> None:
        self.calls = calls
        self.messages: list[tuple[bytes, Any]] = []
        calls.append("proxy")

    def on_message(self, data: bytes, source: Any) -> None:
        self.messages.append((data, source))

    async def start(self) -> None:
        self.calls.append("proxy.start")

    async def drain(self, grace: float) -> None:
        self.calls.append(f"proxy.drain {grace}")
        if self.drain_forever:
            await asyncio.Event().wait()

    async def close(self) -> None:
        self.calls.append("proxy.close")


class Fakes:
    def __init__(self) -> None:
        self.calls = Calls()
        self.tls = FakeTls(self.calls)
        self.echo_fail: OSError | None = None
        self.transport_fail: OSError | None = None
        self.drain_forever = False
        self.transport: FakeTransport | None = None
        self.proxy: FakeProxy | None = None

    def components(self) -> app.Components:
        def echo(cfg: Any, *, log: Any, **_: Any) -> FakeEcho:
            e = FakeEcho(cfg, log=log, calls=self.calls)
            e.fail = self.echo_fail
            return e

        def router(cfg: Any, *, echo_address: Any, log: Any) -> FakeRouter:
            return FakeRouter(cfg, echo_address=echo_address, log=log, calls=self.calls)

        def transport(**kw: Any) -> FakeTransport:
            self.transport = FakeTransport(calls=self.calls, **kw)
            self.transport.fail = self.transport_fail
            return self.transport

        def proxy(cfg: Any, transport: Any, router: Any, *, log: Any, **_: Any) -> FakeProxy:
            self.proxy = FakeProxy(cfg, transport, router, log=log, calls=self.calls)
            self.proxy.drain_forever = self.drain_forever
            return self.proxy

        return app.Components(
            tls=self.tls, transport_layer=transport, echo_endpoint=echo, router=router, proxy=proxy
        )


def cfg_from(text: str) -> config.Config:
    import tomllib

    return config.parse(tomllib.loads(text), check_files=False)


ECHO_CONFIG = """\
[listen]
udp = ["127.0.0.1:15060"]
tcp = []
tls = ["127.0.0.1:15061"]
[proxy]
drain_grace = 7.5
[upstream]
echo = true
[echo]
address = "127.0.0.1:15099"
"""


async def serve_until_ready(
    cfg: config.Config, fakes: Fakes, log: Log
) -> tuple[asyncio.Task[int], asyncio.Event]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        app.serve(cfg, ready=ready, stop=stop, log=log, components=fakes.components())
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return task, stop


async def test_start_order_ready_and_stop() -> None:
    fakes, log = Fakes(), Log()
    task, stop = await serve_until_ready(cfg_from(ECHO_CONFIG), fakes, log)
    assert not task.done()
    assert fakes.calls == [
        "tls.load",
        "tls.server_context",
        "tls.client_context",
        "echo.start",
        "router echo=('127.0.0.1', 15099)",
        "transport",
        "proxy",
        "transport.start",
        "proxy.start",
    ]
    ready = log.find("ready")
    assert ready["udp"] == ["127.0.0.1:15060"]
    assert ready["tls"] == ["127.0.0.1:15061"]
    assert ready["echo"] == "127.0.0.1:15099"
    assert ready["upstream"] == "echo"
    # The transport's callback reaches the proxy.
    assert fakes.transport is not None and fakes.proxy is not None
    assert fakes.transport.kw["tls_server"] == ("server-ctx", 1)
    assert fakes.transport.kw["tls_client"] == "client-ctx"
    fakes.transport.kw["on_message"](b"OPTIONS", "source")
    assert fakes.proxy.messages == [(b"OPTIONS", "source")]

    fakes.calls.clear()
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert fakes.calls == ["proxy.drain 7.5", "proxy.close", "transport.close", "echo.close"]
    assert log.events()[-1] == "stopped"


async def test_no_echo_no_tls() -> None:
    fakes, log = Fakes(), Log()
    cfg = cfg_from(
        '[listen]\ntls = []\n[upstream]\n[[upstream.sets]]\nname = "pbx"\n'
        '[[upstream.sets.targets]]\nuri = "sip:10.0.0.1"\n'
    )
    task, stop = await serve_until_ready(cfg, fakes, log)
    assert "echo.start" not in fakes.calls
    assert "tls.server_context" not in fakes.calls
    assert "router echo=None" in fakes.calls
    assert fakes.transport is not None and fakes.transport.kw["tls_server"] is None
    assert "echo" not in log.find("ready")
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_base64_pem_reaches_the_tls_module() -> None:
    fakes, log = Fakes(), Log()
    cfg = cfg_from(ECHO_CONFIG)
    tls = config.TlsConfig(cert_pem=b"C", key_pem=b"K", pem_source=config.FROM_ENVIRONMENT)
    cfg = config.Config(
        listen=cfg.listen, tls=tls, upstream=cfg.upstream, echo=cfg.echo, proxy=cfg.proxy
    )
    seen: list[Any] = []
    real_load = fakes.tls.load_pem_pair

    def load(cert: Any, key: Any, cert_b64: Any, key_b64: Any) -> tuple[bytes, bytes]:
        seen.append((cert_b64, key_b64))
        return real_load(cert, key, cert_b64, key_b64)

    fakes.tls.load_pem_pair = load  # type: ignore[method-assign]
    task, stop = await serve_until_ready(cfg, fakes, log)
    assert seen == [(base64.b64encode(b"C").decode(), base64.b64encode(b"K").decode())]
    assert log.find("ready")["tls_source"] == "<from environment>"
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_unreadable_certificate_is_one_line_and_exit_2() -> None:
    fakes, log = Fakes(), Log()
    fakes.tls.fail_load = ValueError("TLS key file 'k.pem': not a PEM private key")
    code = await app.serve(cfg_from(ECHO_CONFIG), log=log, components=fakes.components())
    assert code == 2
    assert log.records == [
        {
            "level": "error",
            "event": "startup_failed",
            "setting": "tls.cert",
            "problem": "TLS key file 'k.pem': not a PEM private key",
        }
    ]
    assert "echo.start" not in fakes.calls


async def test_port_in_use_names_the_listener() -> None:
    (port,) = free_ports(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        fakes, log = Fakes(), Log()
        fakes.transport_fail = OSError(errno.EADDRINUSE, "Address already in use")
        cfg = cfg_from(ECHO_CONFIG.replace("15060", str(port)))
        code = await app.serve(cfg, log=log, components=fakes.components())
    assert code == 2
    failed = log.find("startup_failed")
    assert failed["setting"] == "listen.udp[0]"
    assert failed["problem"] == f"127.0.0.1:{port} is already in use"
    # What had started is closed again, in reverse.
    assert fakes.calls[-2:] == ["transport.close", "echo.close"]


async def test_echo_port_in_use() -> None:
    fakes, log = Fakes(), Log()
    fakes.echo_fail = OSError(errno.EADDRINUSE, "Address already in use")
    code = await app.serve(cfg_from(ECHO_CONFIG), log=log, components=fakes.components())
    assert code == 2
    assert log.find("startup_failed") == {
        "level": "error",
        "event": "startup_failed",
        "setting": "echo.address",
        "problem": "127.0.0.1:15099 is already in use",
    }
    assert "transport" not in fakes.calls


async def test_a_bug_at_startup_is_exit_1_with_traceback_field() -> None:
    fakes, log = Fakes(), Log()
    comps = fakes.components()

    def broken_router(*a: Any, **kw: Any) -> None:
        raise KeyError("oops")

    comps = app.Components(
        tls=comps.tls,
        transport_layer=comps.transport_layer,
        echo_endpoint=comps.echo_endpoint,
        router=broken_router,
        proxy=comps.proxy,
    )
    code = await app.serve(cfg_from(ECHO_CONFIG), log=log, components=comps)
    assert code == 1
    failed = log.find("startup_failed")
    assert failed["problem"] == "KeyError: 'oops'"
    assert "broken_router" in failed["traceback"]
    assert fakes.calls[-1] == "echo.close"


async def test_second_signal_cuts_the_drain_short() -> None:
    fakes, log = Fakes(), Log()
    fakes.drain_forever = True
    the_app = app._App(cfg_from(ECHO_CONFIG), log, fakes.components())
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(the_app.serve(ready, stop))
    await ready.wait()
    the_app._on_stop_signal(signal.SIGTERM)
    for _ in range(100):  # a few loop turns for the drain to begin
        if "proxy.drain 7.5" in fakes.calls:
            break
        await asyncio.sleep(0)
    assert "proxy.drain 7.5" in fakes.calls
    assert not task.done()
    the_app._on_stop_signal(signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0
    assert log.find("drain_cut_short")["forced"] is True
    assert fakes.calls[-3:] == ["proxy.close", "transport.close", "echo.close"]


async def test_reload_swaps_the_context_or_keeps_the_old_one() -> None:
    fakes, log = Fakes(), Log()
    the_app = app._App(cfg_from(ECHO_CONFIG), log, fakes.components())
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(the_app.serve(ready, stop))
    await ready.wait()
    assert fakes.transport is not None
    assert the_app.reload() is True
    assert fakes.transport.contexts == [("server-ctx", 1), ("server-ctx", 2)]
    assert log.find("tls_reloaded")["source"] == ".sipedge/dev-cert.pem, .sipedge/dev-key.pem"
    fakes.tls.fail_load = ValueError("TLS certificate file 'c.pem': no certificate")
    assert the_app.reload() is False
    assert fakes.transport.contexts == [("server-ctx", 1), ("server-ctx", 2)]
    assert log.find("tls_reload_failed") == {
        "level": "error",
        "event": "tls_reload_failed",
        "setting": "tls.cert",
        "problem": "TLS certificate file 'c.pem': no certificate",
    }
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_reload_without_tls_listeners() -> None:
    fakes, log = Fakes(), Log()
    the_app = app._App(
        cfg_from(ECHO_CONFIG.replace('tls = ["127.0.0.1:15061"]', "tls = []")),
        log,
        fakes.components(),
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(the_app.serve(ready, stop))
    await ready.wait()
    assert the_app.reload() is False
    assert log.find("reload_skipped")["reason"] == "no TLS listeners"
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_wildcard_without_advertise_warns() -> None:
    fakes, log = Fakes(), Log()
    cfg = cfg_from(ECHO_CONFIG.replace('udp = ["127.0.0.1:15060"]', 'udp = ["0.0.0.0:15060"]'))
    task, stop = await serve_until_ready(cfg, fakes, log)
    warning = log.find("advertise_missing")
    assert warning["setting"] == "listen.advertise"
    assert warning["addresses"] == ["0.0.0.0:15060"]
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


# ---------------------------------------------------------------- `sipedge run`, real parts


class Sipedge:
    """``sipedge run`` in a subprocess; stdout lines parsed as JSON as they come."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIPEDGE_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next log line with ``event`` (every line must be JSON)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(f"no {event!r} within {timeout}s; saw {self.raw}") from None
            if line is None:
                raise AssertionError(
                    f"exited ({self.proc.wait()}) before {event!r}; saw {self.raw}; "
                    f"stderr {self.stderr()}"
                )
            self.raw.append(line)
            record = json.loads(line)
            self.seen.append(record)
            if record["event"] == event:
                return record

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def run_sipedge() -> Iterator[Any]:
    started: list[Sipedge] = []

    def start(config_path: Path, env: dict[str, str] | None = None) -> Sipedge:
        s = Sipedge(config_path, env)
        started.append(s)
        return s

    yield start
    for s in started:  # only the processes this test started, by their Popen handle
        s.kill()


def write_run_config(tmp_path: Path, *, with_files: bool = True, extra: str = "") -> Path:
    udp, echo = free_ports(socket.SOCK_DGRAM, socket.SOCK_DGRAM)
    tcp, tls, metrics = free_ports(socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_STREAM)
    if with_files:
        cert, key = make_cert()
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)
    text = f"""\
[listen]
udp = ["127.0.0.1:{udp}"]
tcp = ["127.0.0.1:{tcp}"]
tls = ["127.0.0.1:{tls}"]

[tls]
cert = "{tmp_path}/cert.pem"
key = "{tmp_path}/key.pem"

[metrics]
address = "127.0.0.1:{metrics}"

[proxy]
drain_grace = 2.0

[upstream]
echo = true

[echo]
address = "127.0.0.1:{echo}"

[auth]
database = "{tmp_path}/credentials.sqlite3"

[audit]
path = "{tmp_path}/audit.log"

[control]
path = "{tmp_path}/control.sock"

[[trunks]]
name = "loopback"
allow = ["127.0.0.1/32"]
{extra}"""
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    return path


def udp_options(port: int, timeout: float = 5.0) -> bytes:
    """Send OPTIONS to the edge itself over UDP; the first response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        msg = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-app-{os.getpid()};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:test@127.0.0.1>;tag=t{lport}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: app-test-{lport}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), ("127.0.0.1", port))
        while True:
            data, _ = s.recvfrom(65535)
            if data.startswith(b"SIP/2.0 "):
                return data


@pytest.mark.timeout(60)
def test_run_ready_answers_and_stops_on_sigterm(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    s = run_sipedge(path)
    ready = s.wait_for("ready")
    udp_port = int(ready["udp"][0].rsplit(":", 1)[1])
    assert ready["echo"].startswith("127.0.0.1:")
    # The wiring works end to end: transport -> proxy -> transport.
    response = udp_options(udp_port)
    assert response.startswith(b"SIP/2.0 200"), response[:200]
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr()
    s.wait_for("stopped", timeout=5)
    assert "stopping" in [r["event"] for r in s.seen]
    assert s.stderr() == ""


@pytest.mark.timeout(60)
def test_run_reloads_certificate_on_sighup(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    s = run_sipedge(path)
    s.wait_for("ready")
    # A new certificate in place of the old one.
    cert, key = make_cert("renewed")
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "cert.pem").write_bytes(cert)
    s.signal(signal.SIGHUP)
    reloaded = s.wait_for("tls_reloaded")
    assert str(tmp_path / "cert.pem") in reloaded["source"]
    # A broken one is refused, and the proxy keeps running with the old one.
    (tmp_path / "cert.pem").write_bytes(b"not a certificate")
    s.signal(signal.SIGHUP)
    failed = s.wait_for("tls_reload_failed")
    assert failed["level"] == "error"
    assert failed["setting"] == "tls.cert"
    assert s.proc.poll() is None
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr()


@pytest.mark.timeout(60)
def test_run_reloads_trunk_allowlist_on_sighup(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    s = run_sipedge(path)
    ready = s.wait_for("ready")
    udp_port = int(ready["udp"][0].rsplit(":", 1)[1])
    assert udp_options(udp_port).startswith(b"SIP/2.0 200")
    # 127.0.0.1 leaves the allowlist: from now on it is a stranger, whose OPTIONS
    # gets no answer at all.
    path.write_text(
        path.read_text().replace('allow = ["127.0.0.1/32"]', 'allow = ["127.0.0.9/32"]')
    )
    s.signal(signal.SIGHUP)
    reloaded = s.wait_for("config_reloaded")
    assert "trunks" in reloaded["applied"]
    with pytest.raises(TimeoutError):
        udp_options(udp_port, timeout=1.0)
    # A file that no longer validates changes nothing, and says which key is wrong.
    path.write_text(path.read_text() + "\n[bans]\nduration = -1\n")
    s.signal(signal.SIGHUP)
    failed = s.wait_for("config_reload_failed")
    assert failed["setting"] == "bans.duration"
    assert s.proc.poll() is None
    # Back on the list (and a valid file): answered again, no restart.
    path.write_text(
        path.read_text()
        .replace('allow = ["127.0.0.9/32"]', 'allow = ["127.0.0.1/32"]')
        .replace("\n[bans]\nduration = -1\n", "")
    )
    s.signal(signal.SIGHUP)
    s.wait_for("config_reloaded")
    assert udp_options(udp_port).startswith(b"SIP/2.0 200")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr()


@pytest.mark.timeout(60)
def test_control_socket_answers_bans_calls_and_reload(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    s = run_sipedge(path)
    ready = s.wait_for("ready")
    sock = tmp_path / "control.sock"
    assert sock.stat().st_mode & 0o777 == 0o600

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge", *args, "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=ROOT,
        )

    assert json.loads(cli("bans", "list", "--json").stdout) == []
    assert json.loads(cli("calls", "list", "--json").stdout) == []
    missing = cli("bans", "remove", "127.0.0.3")
    assert missing.returncode == 1 and "no ban" in missing.stderr
    reloaded = cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "config" in reloaded.stdout and "tls" in reloaded.stdout
    s.wait_for("config_reloaded")
    udp_port = int(ready["udp"][0].rsplit(":", 1)[1])
    assert udp_options(udp_port).startswith(b"SIP/2.0 200")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr()
    assert not sock.exists()


@pytest.mark.timeout(60)
def test_run_with_certificate_from_environment(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path, with_files=False)
    cert, key = make_cert()
    env = {
        "SIPEDGE_TLS_CERT_BASE64": base64.b64encode(cert).decode(),
        "SIPEDGE_TLS_KEY_BASE64": base64.b64encode(key).decode(),
    }
    s = run_sipedge(path, env)
    ready = s.wait_for("ready")
    assert ready["tls_source"] == "<from environment>"
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr()
    # The key never reaches the log.
    key_body = key.decode().splitlines()[1]
    assert all(key_body not in line for line in s.raw)


@pytest.mark.timeout(60)
def test_run_port_in_use_is_one_line_and_exit_2(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    text = path.read_text()
    udp_port = int(text.split('udp = ["127.0.0.1:', 1)[1].split('"', 1)[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", udp_port))
        s = run_sipedge(path)
        failed = s.wait_for("startup_failed")
        assert s.wait() == 2
    assert failed["setting"] == "listen.udp[0]"
    assert failed["problem"] == f"127.0.0.1:{udp_port} is already in use"
    assert "Traceback" not in s.stderr()


@pytest.mark.timeout(60)
def test_run_unreadable_certificate_is_exit_2(tmp_path: Path, run_sipedge: Any) -> None:
    path = write_run_config(tmp_path)
    (tmp_path / "cert.pem").write_bytes(b"garbage")
    s = run_sipedge(path)
    failed = s.wait_for("startup_failed")
    assert s.wait() == 2
    assert failed["setting"] == "tls.cert"
    assert "Traceback" not in s.stderr()


def test_run_bad_config_names_the_key(tmp_path: Path) -> None:
    path = write_run_config(tmp_path, extra='[[upstream.sets]]\nname = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert ": upstream.sets[0].targets: must list at least one target" in line


def test_run_installs_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def fake_serve(cfg: Any, *, log: Any = None, **_: Any) -> int:
        seen.append(type(asyncio.get_running_loop()).__module__)
        return 0

    monkeypatch.setattr(app, "serve", fake_serve)
    assert app.run(config.Config()) == 0
    assert seen and seen[0].startswith("uvloop")
