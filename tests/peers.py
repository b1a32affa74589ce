"""Real peers for end-to-end tests and benchmarks: processes, ports, sipp, stunnel, Kamailio.

Everything here drives real programs (sipp from Debian ``sip-tester``, ``stunnel4``,
``kamailio``, ``sipedge`` itself) on loopback addresses only: 127.0.0.1 for the caller side
and sipedge, 127.0.0.2, 127.0.0.3 ... standing for other hosts.  The recipes follow
``shared/peers/README.md`` (verified on this machine).

Rules of this file:
- A process we start is a :class:`Proc`: it runs in a scratch directory with its output in
  files there, we keep its Popen object, and we end it by its PID only (terminate, wait,
  kill).  Nothing here signals a process by name.
- A missing binary is a test failure naming the Debian package (:func:`require_binary`),
  never a skip.
- Ports come from :func:`free_port`: random ports in 20000-31999 (below the kernel's
  ephemeral range, so an outgoing connection cannot take one between the check and the
  bind), never 5060, 5061 or 2112.
- Every wait has a timeout; every load run is bounded by a call count and a time limit.

The catch with TLS (Debian's sipp has no TLS): sipp speaks TCP to a stunnel in client mode,
which speaks TLS to the proxy; or the proxy speaks TLS to a stunnel in server mode, which
speaks TCP to sipp.  Via and Contact written by sipp still say TCP with sipp's own port, so
a proxy must send responses and in-dialog requests back over the connection the caller
opened.  A UAS behind stunnel is given the stunnel address as its Contact (the ``contact``
key) so that in-dialog requests towards it go through TLS too.
"""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
SIPP_SCENARIOS = REPO / "tests" / "sipp"
KAMAILIO_CFG = REPO / "bench" / "kamailio" / "proxy.cfg"


def python_run(
    args: list[str], timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """This interpreter run with ``args`` from the repository, ``env`` added (the
    accelerator switches are read at import, so checking them needs a fresh process)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python_output(code: str, **env: str) -> str:
    """What ``python -c code`` prints (see :func:`python_run`); it must exit 0."""
    out = python_run(["-c", code], **env)
    out.check_returncode()
    return out.stdout.strip()


def c_part(type_name: str, load: Callable[[], Any]) -> Any:
    """What ``load`` (one of sip.message's ``_load_*``) gives: the part of the C
    extension named ``type_name`` (or a bound method of it).  Fails the test, saying
    what to run, when media._srtp does not import."""
    try:
        import media._srtp as srtp
    except ImportError as exc:
        import pytest  # here, as in require_binary: bench/ imports this module too

        pytest.fail(f"the C extension media._srtp does not import ({exc}): run `make install`")
    part = load()
    assert part is not None
    assert isinstance(getattr(part, "__self__", part), getattr(srtp, type_name))
    return part


PortKind = Literal["udp", "tcp", "both"]
SippTransport = Literal["udp", "tcp"]

# Ports we may hand out: below Linux's default ephemeral range (32768-60999).
_PORT_LOW, _PORT_HIGH = 20000, 32000
_RESERVED = {5060, 5061, 2112}
_handed_out: set[int] = set()


class PeerError(RuntimeError):
    """A peer did not start or misbehaved; the message says which and shows its log."""


# ---------------------------------------------------------------- binaries


def find_binary(name: str) -> str | None:
    """The path of ``name`` on PATH (or in /usr/sbin, /sbin, where Debian puts daemons)."""
    path = shutil.which(name)
    if path is None:
        for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return path


def missing_binary_message(name: str, package: str) -> str:
    return (
        f"{name} not found: install Debian package {package} "
        f"(apt-get install {package}, or scripts/debian-deps.sh as root)"
    )


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; a test FAILURE naming the Debian package when it is missing."""
    path = find_binary(name)
    if path is None:
        import pytest

        pytest.fail(missing_binary_message(name, package), pytrace=False)
    return path


def sipedge_binary() -> str | None:
    """The ``sipedge`` console script of the project venv (or of the running interpreter)."""
    for candidate in (Path(sys.executable).parent / "sipedge", REPO / ".venv" / "bin" / "sipedge"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("sipedge")


# ---------------------------------------------------------------- ports


def _bindable(host: str, port: int, kind: Literal["udp", "tcp"]) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(family, stype) as s:
        if kind == "tcp":
            # What servers do: a port in TIME_WAIT is still usable for a listener.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _kinds(kind: PortKind) -> tuple[Literal["udp", "tcp"], ...]:
    return ("udp", "tcp") if kind == "both" else (kind,)


def free_port(host: str = "127.0.0.1", kind: PortKind = "udp", *, count: int = 1) -> int:
    """A port (the first of ``count`` consecutive ones) free on ``host`` for ``kind``.

    "both" means free for UDP and TCP alike (a SIP listener usually takes both).  A port is
    never handed out twice by one process, so two peers of one test cannot collide.
    """
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH - count)
        ports = range(port, port + count)
        if any(p in _handed_out or p in _RESERVED for p in ports):
            continue
        if all(_bindable(host, p, k) for p in ports for k in _kinds(kind)):
            _handed_out.update(ports)
            return port
    raise PeerError(f"no free {kind} port on {host} in {_PORT_LOW}-{_PORT_HIGH}")


def free_udp_block(
    host: str = "127.0.0.1", count: int = 200, low: int = 40000, high: int = 60000
) -> tuple[int, int]:
    """An even-aligned block of ``count`` UDP ports free on ``host`` (first, last), away
    from :func:`free_port`'s range: for a media relay's port range."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(low, high - count) & ~1
        ports = range(start, start + count)
        if any(p in _handed_out for p in ports):
            continue
        if all(_bindable(host, p, "udp") for p in ports):
            _handed_out.update(ports)
            return start, start + count - 1
    raise PeerError(f"no free block of {count} UDP ports on {host} in {low}-{high}")


def _hex_address(host: str) -> set[str]:
    """How /proc/net/{udp,tcp}[6] spell ``host`` (and the wildcard that also covers it)."""
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        packed = ip.packed[::-1]  # little-endian 32-bit word
        return {packed.hex().upper(), "00000000"}
    words = [ip.packed[i : i + 4][::-1] for i in range(0, 16, 4)]
    return {b"".join(words).hex().upper(), "0" * 32}


def port_is_bound(host: str, port: int, kind: Literal["udp", "tcp"]) -> bool:
    """Whether some process has a UDP socket bound, or a TCP socket listening, there.

    Read from /proc/net so that checking a TLS or SIP listener sends it nothing.
    """
    ip = ipaddress.ip_address(host)
    table = f"/proc/net/{kind}{'6' if ip.version == 6 else ''}"
    wanted = _hex_address(host)
    try:
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, _, hexport = fields[1].partition(":")
                if int(hexport, 16) != port or addr not in wanted:
                    continue
                if kind == "udp" or fields[3] == "0A":  # 0A = TCP_LISTEN
                    return True
    except OSError:
        return False
    return False


def wait_for_port(
    host: str,
    port: int,
    kind: PortKind = "udp",
    timeout: float = 10.0,
    proc: Proc | None = None,
) -> None:
    """Wait until ``host:port`` is bound (UDP) or listening (TCP); PeerError on timeout.

    With ``proc``, give up at once (showing its log) if that process exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if all(port_is_bound(host, port, k) for k in _kinds(kind)):
            return
        if proc is not None and proc.poll() is not None:
            raise PeerError(
                f"{proc.name} exited with {proc.returncode} before binding {host}:{port}/{kind}"
                f"\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            where = f"\n{proc.log_tail()}" if proc is not None else ""
            raise PeerError(f"nothing bound to {host}:{port}/{kind} after {timeout}s{where}")
        time.sleep(0.02)


def wait_for_log_line(
    proc_or_file: Proc | Path | str | Sequence[Path | str],
    needle: str,
    timeout: float = 10.0,
) -> str:
    """Wait for a line containing ``needle`` in a process's output (stdout and stderr) or in
    files; return that line.  PeerError on timeout, or at once if the process exits first.
    """
    proc: Proc | None = None
    if isinstance(proc_or_file, Proc):
        proc = proc_or_file
        files = [proc.stdout_path, proc.stderr_path]
    elif isinstance(proc_or_file, str | Path):
        files = [Path(proc_or_file)]
    else:
        files = [Path(p) for p in proc_or_file]
    deadline = time.monotonic() + timeout
    while True:
        exited = proc is not None and proc.poll() is not None
        for path in files:
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
        if exited:
            assert proc is not None
            raise PeerError(
                f"{proc.name} exited with {proc.returncode} before logging {needle!r}"
                f"\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            what = proc.log_tail() if proc is not None else ", ".join(map(str, files))
            raise PeerError(f"no line with {needle!r} after {timeout}s\n{what}")
        time.sleep(0.02)


# ---------------------------------------------------------------- processes


class Proc:
    """A subprocess we own: started in ``workdir`` with stdout/stderr in files there.

    ``stop()`` ends it by PID: SIGTERM, wait up to 5 s, then SIGKILL.  A context manager;
    ``cpu`` pins it to one CPU (as ``taskset -c CPU`` would) before it executes.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workdir: Path,
        name: str,
        env: Mapping[str, str] | None = None,
        cpu: int | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.name = name
        self.env = dict(env) if env is not None else None
        self.cpu = cpu
        self.stdout_path = self.workdir / f"{name}.stdout"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cpu = self.cpu
        preexec = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        env = None if self.env is None else {**os.environ, **self.env}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                preexec_fn=preexec,
            )
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise PeerError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.returncode

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; PeerError (the process left running) on timeout."""
        if self.popen is None:
            raise PeerError(f"{self.name} was never started")
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"{self.name} still running after {timeout}s\n{self.log_tail()}"
            ) from None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait ``timeout`` s, then SIGKILL; return the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode

    def read_stdout(self) -> str:
        with contextlib.suppress(OSError):
            return self.stdout_path.read_text(errors="replace")
        return ""

    def read_stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for label, text in (("stdout", self.read_stdout()), ("stderr", self.read_stderr())):
            tail = text.splitlines()[-lines:]
            if tail:
                parts.append(f"--- {self.name} {label} (last {len(tail)} lines)")
                parts.extend(tail)
        return "\n".join(parts) if parts else f"--- {self.name}: no output"

    def __enter__(self) -> Proc:
        if self.popen is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcGroup:
    """Processes of one test, stopped together, the last started first (a pytest fixture
    yields one; ``with ProcGroup() as g`` works too)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """utime + stime of ``pid`` from /proc/PID/stat, with its live descendants if ``tree``
    (Kamailio works in forked children).  Processes that vanish are skipped."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = descendants(pid) | {pid} if tree else {pid}
    total = 0
    for p in pids:
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``comm`` (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def descendants(pid: int) -> set[int]:
    """Live descendant PIDs of ``pid`` (from the ppid field of /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class TestCerts:
    """A throwaway CA and a server certificate for the loopback test hosts signed by it."""

    __test__ = False  # not a pytest test class

    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    combined: Path  # cert + key in one file (stunnel, baresip)


TEST_CERT_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "::1")


def make_test_certs(
    directory: Path,
    *,
    key_type: Literal["rsa", "ec"] = "rsa",
    ips: Sequence[str] = TEST_CERT_IPS,
) -> TestCerts:
    """Write a test CA and a server certificate into ``directory``, the shape of
    shared/peers/tls/mkcerts.sh: CN 127.0.0.1, SANs DNS:localhost and every IP in ``ips``
    (the loopback "hosts" of the tests, so one certificate serves the proxy and every
    upstream stunnel), serverAuth and clientAuth.  RSA 2048 by default."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key() -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if key_type == "ec":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipedge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost")]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = TestCerts(
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "server.pem",
        key=directory / "server.key",
        combined=directory / "server-combined.pem",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.ca_key.write_bytes(pem_key(ca_key))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    paths.cert.write_bytes(cert_pem)
    paths.key.write_bytes(pem_key(key))
    paths.combined.write_bytes(cert_pem + pem_key(key))
    for p in (paths.ca_key, paths.key, paths.combined):
        p.chmod(0o600)
    return paths


# ---------------------------------------------------------------- sipp

# Columns of sipp's -trace_stat CSV that we read ("(C)" = cumulative).
_STAT_COLUMNS = {
    "successful": "SuccessfulCall(C)",
    "failed": "FailedCall(C)",
    "incoming": "IncomingCall(C)",
    "outgoing": "OutgoingCall(C)",
    "created": "TotalCallCreated",
    "current": "CurrentCall",
}


@dataclass
class SippResult:
    """What one sipp run ended with: exit status and call counters.

    sipp exits 0 when every call succeeded, 1 when at least one failed, 97 when stopped by
    an internal command, 99 when no call was processed, 255 on a fatal error.  ``None``:
    stopped by us (a UAS that is never going to finish by itself).
    """

    name: str
    returncode: int | None
    successful: int
    failed: int
    incoming: int
    outgoing: int
    created: int
    stats: dict[str, str] = field(default_factory=dict)
    errors: str = ""
    log: str = ""

    @property
    def calls(self) -> int:
        return self.successful + self.failed

    def describe(self) -> str:
        """A paragraph for an assertion message: counters, then sipp's complaints."""
        head = (
            f"{self.name}: rc={self.returncode} successful={self.successful} "
            f"failed={self.failed} incoming={self.incoming} outgoing={self.outgoing}"
        )
        return "\n".join(x for x in (head, self.errors.strip()[-3000:], self.log) if x)


def _read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of a sipp -trace_stat CSV (';'-separated, one header line)."""
    try:
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return dict(zip(header, last, strict=False))


def _read_sipp_screen(path: Path) -> dict[str, int]:
    """Fallback: the cumulative column of 'Successful call' / 'Failed call' in a screen dump.

    Lines look like ``  Successful call        |        0                  |  1``.
    """
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            for key, label in (("successful", "Successful call"), ("failed", "Failed call")):
                if line.strip().startswith(label):
                    cells = [c.strip() for c in line.split("|")]
                    with contextlib.suppress(ValueError, IndexError):
                        found[key] = int(cells[-1])
    return found


class Sipp(Proc):
    """One sipp instance (UAC or UAS) with its statistics, errors and screen in files.

    ``transport`` is what sipp itself speaks: "udp" (``-t u1``) or "tcp" (``-t t1``, one
    connection for all calls).  TLS is stunnel's job (:class:`Stunnel`).
    ``keys`` become ``-key NAME VALUE`` (the scenarios' ``[ruri]``, ``[contact]``...).
    ``timeout`` bounds the whole run (sipp ``-timeout``, counted as a failure).
    """

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        name: str,
        local_ip: str,
        transport: SippTransport = "udp",
        remote: tuple[str, int] | None = None,
        port: int | None = None,
        media_port: int | None = None,
        calls: int = 1,
        rate: float | None = None,
        limit: int | None = None,
        hold_ms: int = 0,
        keys: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        recv_timeout_ms: int | None = None,
        trace_msg: bool = False,
        cpu: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        binary = find_binary("sipp") or "sipp"
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SIPP_SCENARIOS / path
        if not path.suffix:
            path = path.with_suffix(".xml")
        self.scenario = path
        self.local_ip = local_ip
        self.transport = transport
        self.port = (
            port
            if port is not None
            else free_port(local_ip, "udp" if transport == "udp" else "tcp")
        )
        # sipp binds UDP media sockets at -mp and -mp+2 whether or not it sends media.
        self.media_port = media_port or free_port(local_ip, "udp", count=4)
        self.control_port = free_port("0.0.0.0", "udp")
        self.calls = calls
        self.stat_path = workdir / f"{name}.stat.csv"
        self.error_path = workdir / f"{name}.errors.log"
        self.screen_path = workdir / f"{name}.screen.log"
        self.message_path = workdir / f"{name}.messages.log"
        self.keys = dict(keys or {})
        argv: list[str] = [binary, "-sf", str(path)]
        if remote is not None:
            argv.append(f"{remote[0]}:{remote[1]}")
        argv += ["-t", "u1" if transport == "udp" else "t1"]
        argv += ["-i", local_ip, "-p", str(self.port), "-mi", local_ip]
        argv += ["-mp", str(self.media_port), "-cp", str(self.control_port)]
        argv += ["-m", str(calls), "-d", str(hold_ms), "-nostdin"]
        if rate is not None:
            argv += ["-r", f"{rate:g}", "-rp", "1000"]
        if limit is not None:
            argv += ["-l", str(limit)]
        argv += ["-timeout", f"{timeout:g}s", "-timeout_error"]
        if recv_timeout_ms is not None:
            argv += ["-recv_timeout", str(recv_timeout_ms)]
        argv += ["-trace_stat", "-stf", str(self.stat_path), "-fd", "1"]
        argv += ["-trace_err", "-error_file", str(self.error_path)]
        argv += ["-trace_screen", "-screen_file", str(self.screen_path)]
        if trace_msg:
            argv += ["-trace_msg", "-message_file", str(self.message_path)]
        for k, v in self.keys.items():
            argv += ["-key", k, v]
        argv += list(extra)
        super().__init__(argv, workdir=workdir, name=name, cpu=cpu)

    @property
    def address(self) -> tuple[str, int]:
        return (self.local_ip, self.port)

    def wait_ready(self, timeout: float = 10.0) -> Sipp:
        """Wait until its SIP socket is bound (a UAS must be, before the UAC calls)."""
        kind: Literal["udp", "tcp"] = "udp" if self.transport == "udp" else "tcp"
        wait_for_port(self.local_ip, self.port, kind, timeout, proc=self)
        return self

    def result(self) -> SippResult:
        """Counters from the stat CSV (falling back to the screen dump) and the error log."""
        stats = _read_sipp_stats(self.stat_path)
        counters: dict[str, int] = {}
        for key, column in _STAT_COLUMNS.items():
            with contextlib.suppress(KeyError, ValueError):
                counters[key] = int(stats[column])
        for key, value in _read_sipp_screen(self.screen_path).items():
            # The screen is written at exit and is the final word when both exist.
            counters[key] = value
        errors = ""
        with contextlib.suppress(OSError):
            errors = self.error_path.read_text(errors="replace")
        return SippResult(
            name=self.name,
            returncode=self.returncode,
            successful=counters.get("successful", 0),
            failed=counters.get("failed", 0),
            incoming=counters.get("incoming", 0),
            outgoing=counters.get("outgoing", 0),
            created=counters.get("created", 0),
            stats=stats,
            errors=errors,
            log=self.log_tail(8),
        )

    def run(self, timeout: float | None = None) -> SippResult:
        """Start (if needed), wait for the exit (bounded), return the result."""
        if self.popen is None:
            self.start()
        try:
            self.wait(timeout if timeout is not None else self._run_bound())
        except PeerError:
            self.stop()
            raise
        return self.result()

    def finish(self, timeout: float = 15.0) -> SippResult:
        """Wait for a sipp that should end by itself; stop it if it does not."""
        with contextlib.suppress(PeerError):
            self.wait(timeout)
        self.stop()
        return self.result()

    def stop_and_result(self) -> SippResult:
        """Stop it now (a UAS kept waiting) and return what it counted."""
        self.stop()
        return self.result()

    def _run_bound(self) -> float:
        # sipp -timeout plus slack for start-up and the final statistics.
        for i, arg in enumerate(self.argv):
            if arg == "-timeout":
                return float(self.argv[i + 1].rstrip("s")) + 10.0
        return 70.0

    def sent_and_received(self) -> str:
        """The message trace (with ``trace_msg=True``), for debugging failures."""
        with contextlib.suppress(OSError):
            return self.message_path.read_text(errors="replace")
        return ""


def sip_uri(host: str, port: int, transport: str, user: str | None = None) -> str:
    """``sip:[user@]host:port;transport=X`` (IPv6 hosts bracketed)."""
    h = f"[{host}]" if ":" in host else host
    u = f"{user}@" if user else ""
    return f"sip:{u}{h}:{port};transport={transport}"


def sipp_uac(
    scenario: str | Path,
    target: tuple[str, int],
    *,
    workdir: Path,
    name: str = "uac",
    transport: SippTransport = "udp",
    local_ip: str = "127.0.0.1",
    ruri: str | None = None,
    user: str = "1000",
    ruri_transport: str | None = None,
    keys: Mapping[str, str] | None = None,
    **kw: Any,
) -> Sipp:
    """A sipp UAC calling ``target`` (the proxy, or a stunnel in front of it).

    ``ruri`` defaults to ``sip:USER@TARGET;transport=...`` (``ruri_transport`` overrides the
    transport named there, e.g. "tls" when sipp's TCP goes through stunnel).  The Contact
    is sipp's own address.  The ``rtp_port`` key (the m= port of proxy_uac.xml) defaults to
    sipp's media port.
    """
    port = kw.pop("port", None) or free_port(local_ip, "udp" if transport == "udp" else "tcp")
    media_port = kw.pop("media_port", None) or free_port(local_ip, "udp", count=4)
    all_keys = {
        "ruri": ruri or sip_uri(target[0], target[1], ruri_transport or transport, user),
        "contact": sip_uri(local_ip, port, transport, "sipp"),
        "rtp_port": str(media_port),
    }
    all_keys.update(keys or {})
    return Sipp(
        scenario,
        workdir=workdir,
        name=name,
        local_ip=local_ip,
        transport=transport,
        remote=target,
        port=port,
        media_port=media_port,
        keys=all_keys,
        **kw,
    )


def sipp_uas(
    scenario: str | Path,
    *,
    workdir: Path,
    name: str = "uas",
    transport: SippTransport = "udp",
    local_ip: str = "127.0.0.2",
    contact: str | None = None,
    keys: Mapping[str, str] | None = None,
    **kw: Any,
) -> Sipp:
    """A sipp UAS on ``local_ip`` (127.0.0.2, .3 ... stand for upstream hosts).

    ``contact`` defaults to its own address; behind stunnel pass the stunnel's TLS URI.
    """
    port = kw.pop("port", None) or free_port(local_ip, "udp" if transport == "udp" else "tcp")
    all_keys = {"contact": contact or sip_uri(local_ip, port, transport)}
    all_keys.update(keys or {})
    return Sipp(
        scenario,
        workdir=workdir,
        name=name,
        local_ip=local_ip,
        transport=transport,
        port=port,
        keys=all_keys,
        **kw,
    )


# ---------------------------------------------------------------- stunnel


class Stunnel(Proc):
    """stunnel 5 (Debian ``stunnel4``) in the foreground with one service.

    - :meth:`client`: accepts plain TCP (from sipp) and connects with TLS, verifying the
      server's certificate chain against ``ca`` and its IP address (checkIP).
    - :meth:`server`: accepts TLS with ``cert``/``key`` and connects with plain TCP (to a
      sipp UAS).
    """

    def __init__(
        self,
        *,
        workdir: Path,
        name: str,
        accept: tuple[str, int],
        connect: tuple[str, int],
        service: Mapping[str, str],
        debug: int = 5,
        cpu: int | None = None,
    ) -> None:
        binary = find_binary("stunnel4") or find_binary("stunnel") or "stunnel"
        self.accept = accept
        self.connect = connect
        self.conf_path = workdir / f"{name}.conf"
        lines = [
            "foreground = yes",
            "pid =",
            f"debug = {debug}",
            f"output = {workdir / (name + '.log')}",
            "",
            f"[{name}]",
            f"accept = {accept[0]}:{accept[1]}",
            f"connect = {connect[0]}:{connect[1]}",
            "sslVersionMin = TLSv1.2",
            # SIP messages are small and interactive: do not wait to fill segments.
            "socket = l:TCP_NODELAY=1",
            "socket = r:TCP_NODELAY=1",
        ]
        lines += [f"{k} = {v}" for k, v in service.items()]
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text("\n".join(lines) + "\n")
        super().__init__([binary, str(self.conf_path)], workdir=workdir, name=name, cpu=cpu)

    @classmethod
    def client(
        cls,
        *,
        workdir: Path,
        accept: tuple[str, int],
        connect: tuple[str, int],
        ca: Path,
        check_ip: str | None = "127.0.0.1",
        name: str = "stunnel-client",
        **kw: Any,
    ) -> Stunnel:
        service = {"client": "yes", "CAfile": str(ca), "verifyChain": "yes"}
        if check_ip:
            service["checkIP"] = check_ip
        return cls(
            workdir=workdir, name=name, accept=accept, connect=connect, service=service, **kw
        )

    @classmethod
    def server(
        cls,
        *,
        workdir: Path,
        accept: tuple[str, int],
        connect: tuple[str, int],
        cert: Path,
        key: Path,
        name: str = "stunnel-server",
        **kw: Any,
    ) -> Stunnel:
        service = {"cert": str(cert), "key": str(key)}
        return cls(
            workdir=workdir, name=name, accept=accept, connect=connect, service=service, **kw
        )

    def wait_ready(self, timeout: float = 10.0) -> Stunnel:
        wait_for_port(self.accept[0], self.accept[1], "tcp", timeout, proc=self)
        return self

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{self.name}.log").read_text(errors="replace")
        return ""


# ---------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string is a JSON string for our values
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for configs: tables, arrays of tables (nested too), scalars and
    arrays of scalars.  tomllib reads it back to the same data."""
    out: list[str] = []

    def emit(table: Mapping[str, Any], path: list[str], header: str | None) -> None:
        scalars = {
            k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)
        }
        if header is not None:
            out.append(header)
        for k, v in scalars.items():
            out.append(f"{k} = {_toml_value(v)}")
        if header is not None or scalars:
            out.append("")
        for k, v in table.items():
            if isinstance(v, dict):
                emit(v, [*path, k], f"[{'.'.join([*path, k])}]")
            elif _is_table_array(v):
                for item in v:
                    emit(item, [*path, k], f"[[{'.'.join([*path, k])}]]")

    emit(data, [], None)
    return "\n".join(out)


# ---------------------------------------------------------------- sipedge


class NotRunnable(PeerError):
    """The system under test did not come up (the reason is the message)."""


@dataclass
class ProxyAddresses:
    """Where a proxy under test listens, per transport (host, port); what a UAC needs."""

    udp: tuple[str, int] | None = None
    tcp: tuple[str, int] | None = None
    tls: tuple[str, int] | None = None

    def of(self, transport: str) -> tuple[str, int]:
        addr: tuple[str, int] | None = getattr(self, transport)
        if addr is None:
            raise PeerError(f"the proxy has no {transport} listener")
        return addr


class SipedgeProc(Proc):
    """``sipedge run --config FILE`` with a generated TOML config.

    Listens on ``host`` with fresh ports for UDP, TCP (one port for both), TLS, metrics and
    the echo endpoint, and gives the media relay a block of 200 free UDP ports.
    ``upstream`` is the [upstream] table (default: echo); ``extra`` is merged over the
    generated top-level tables (e.g. ``{"proxy": {"timer_t1": 0.1}}``).
    :meth:`wait_ready` waits for the JSON log line with ``"event": "ready"``.  The test CA
    is its trust store for outbound TLS (``SSL_CERT_FILE``).
    """

    def __init__(
        self,
        *,
        workdir: Path,
        certs: TestCerts,
        upstream: Mapping[str, Any] | None = None,
        trunks: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
        host: str = "127.0.0.1",
        name: str = "sipedge",
        cpu: int | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        sip_port = free_port(host, "both")
        tls_port = free_port(host, "tcp")
        self.metrics = (host, free_port(host, "tcp"))
        self.echo = (host, free_port(host, "both"))
        self.addresses = ProxyAddresses(
            udp=(host, sip_port), tcp=(host, sip_port), tls=(host, tls_port)
        )
        config: dict[str, Any] = {
            "listen": {
                "udp": [f"{host}:{sip_port}"],
                "tcp": [f"{host}:{sip_port}"],
                "tls": [f"{host}:{tls_port}"],
            },
            "tls": {"cert": str(certs.cert), "key": str(certs.key)},
            "metrics": {"address": f"{self.metrics[0]}:{self.metrics[1]}"},
            "upstream": dict(upstream) if upstream is not None else {"echo": True},
            "echo": {"address": f"{self.echo[0]}:{self.echo[1]}"},
            # The relay's ports: a block of its own, clear of the ports the peers use.
            "media": {"port_range": "{}-{}".format(*free_udp_block(host))},
            "trunks": [dict(t) for t in trunks]
            if trunks is not None
            else [{"name": "loopback", "allow": ["127.0.0.1/32"]}],
        }
        for section, values in (extra or {}).items():
            if isinstance(config.get(section), dict):
                config[section] = {**config[section], **values}
            else:
                config[section] = dict(values)
        self.config = config
        self.config_text = to_toml(config)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(self.config_text)
        exe = binary or sipedge_binary() or "sipedge"
        # Outbound TLS (to an upstream behind stunnel) verifies against the default trust
        # store; OpenSSL reads it from SSL_CERT_FILE, so point that at the test CA.
        env = {"SSL_CERT_FILE": str(certs.ca)}
        super().__init__(
            [exe, "run", "--config", str(self.config_path)],
            workdir=workdir,
            name=name,
            cpu=cpu,
            env=env,
        )

    def wait_ready(self, timeout: float = 20.0) -> SipedgeProc:
        """Wait for ``{"event": "ready"}`` on stdout (or stderr); NotRunnable if it exits or
        stays silent, with the last log lines as the reason."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.poll() is not None
            for line in (self.read_stdout() + self.read_stderr()).splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == "ready":
                        return self
            if exited:
                raise NotRunnable(
                    f"sipedge exited with status {self.returncode} before logging "
                    f'"event": "ready": {self._last_log_line()}\n{self.log_tail()}'
                )
            if time.monotonic() > deadline:
                raise NotRunnable(
                    f'sipedge did not log "event": "ready" within {timeout}s\n{self.log_tail()}'
                )
            time.sleep(0.05)

    def _last_log_line(self) -> str:
        lines = [x for x in (self.read_stdout() + self.read_stderr()).splitlines() if x.strip()]
        return lines[-1] if lines else "(no output)"


# ---------------------------------------------------------------- Kamailio


class KamailioProc(Proc):
    """Kamailio 5.6 (Debian ``kamailio`` + ``kamailio-tls-modules``) running
    ``bench/kamailio/proxy.cfg``: a stateful record-routing proxy (tm, rr, sl, dispatcher)
    sending every new call to ``targets`` (round-robin, failover on 503 or timeout).

    It stands in for sipedge to validate the harness (``SIPEDGE_E2E_PROXY=kamailio``) and is
    the reference of the benchmark.  ``fr_timer_ms``: how long a silent target gets before
    failover (Kamailio's Timer B/F).
    """

    def __init__(
        self,
        *,
        workdir: Path,
        certs: TestCerts,
        targets: Sequence[str],
        host: str = "127.0.0.1",
        name: str = "kamailio",
        children: int = 4,
        fr_timer_ms: int = 3000,
        tls: bool = True,
        cpu: int | None = None,
        config: Path = KAMAILIO_CFG,
        shm_mb: int = 256,
    ) -> None:
        exe = find_binary("kamailio") or "kamailio"
        self.host = host
        sip_port = free_port(host, "both")
        tls_port = free_port(host, "tcp")
        self.ctl_socket = workdir / f"{name}.ctl"
        self.addresses = ProxyAddresses(
            udp=(host, sip_port), tcp=(host, sip_port), tls=(host, tls_port) if tls else None
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.dispatcher_list = workdir / f"{name}.dispatcher.list"
        self.dispatcher_list.write_text("".join(f"1 {t}\n" for t in targets))
        self.tls_cfg = workdir / f"{name}.tls.cfg"
        self.tls_cfg.write_text(
            "[server:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = no\n"
            "require_certificate = no\n"
            f"private_key = {certs.key}\n"
            f"certificate = {certs.cert}\n"
            "\n[client:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = yes\n"
            "require_certificate = yes\n"
            f"ca_list = {certs.ca}\n"
        )
        # Shared memory holds every transaction (kept for a while after it ends): under load
        # tm fails with "out of mem" at 128 MB, so the bench gives it far more.
        argv = [exe, "-DD", "-E", "-f", str(config), "-m", str(shm_mb), "-M", "32"]
        argv += ["-l", f"udp:{host}:{sip_port}", "-l", f"tcp:{host}:{sip_port}"]
        if tls:
            argv += ["-l", f"tls:{host}:{tls_port}", "-A", "WITH_TLS"]
        argv += ["-A", f'DS_LIST="{self.dispatcher_list}"']
        argv += ["-A", f'TLS_CFG="{self.tls_cfg}"']
        argv += ["-A", f"FR_TIMER={fr_timer_ms}", "-A", f"CHILDREN={children}"]
        argv += ["-A", f'CTL_SOCKET="unix:{self.ctl_socket}"']
        # Run files (pid, fifo) in the scratch directory, not /run/kamailio.
        argv += ["-Y", str(workdir)]
        super().__init__(argv, workdir=workdir, name=name, cpu=cpu)

    def wait_ready(self, timeout: float = 20.0) -> KamailioProc:
        for transport in ("udp", "tcp", "tls"):
            addr = getattr(self.addresses, transport)
            if addr is not None:
                kind: Literal["udp", "tcp"] = "udp" if transport == "udp" else "tcp"
                try:
                    wait_for_port(addr[0], addr[1], kind, timeout, proc=self)
                except PeerError as e:
                    raise NotRunnable(str(e)) from None
        return self


__all__ = [
    "KAMAILIO_CFG",
    "REPO",
    "SIPP_SCENARIOS",
    "KamailioProc",
    "NotRunnable",
    "PeerError",
    "Proc",
    "ProcGroup",
    "ProxyAddresses",
    "SipedgeProc",
    "Sipp",
    "SippResult",
    "Stunnel",
    "TestCerts",
    "cpu_seconds",
    "descendants",
    "find_binary",
    "free_port",
    "free_udp_block",
    "make_test_certs",
    "missing_binary_message",
    "port_is_bound",
    "require_binary",
    "sip_uri",
    "sipedge_binary",
    "sipp_uac",
    "sipp_uas",
    "to_toml",
    "wait_for_log_line",
    "wait_for_port",
]


# ---------------------------------------------------------------- security tests (issue 5)


def sipedge_with_env(env: Mapping[str, str], **kw: Any) -> SipedgeProc:
    """A :class:`SipedgeProc` (same arguments) whose process also gets ``env``, e.g.
    ``{"JWT_KEY": ...}`` (the Bearer key never comes from the config file)."""
    proc = SipedgeProc(**kw)
    proc.env = {**(proc.env or {}), **env}
    return proc


def sipedge_admin(
    args: Sequence[str],
    *,
    config: Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``sipedge ARGS --config CONFIG`` (``users``, ``keys``, ``token``) in the config's
    directory, bounded by ``timeout``; PeerError with its output if it exits non-zero."""
    exe = sipedge_binary() or "sipedge"
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        [exe, *args, "--config", str(config)],
        cwd=config.parent,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if done.returncode != 0:
        raise PeerError(
            f"sipedge {' '.join(args[:2])} exited with {done.returncode}\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return done


# Runs one sipvicious 0.3.8 tool with two fixes of defaults, then the tool's own main():
# - another User-Agent: the tools have no option for it (every request says
#   "friendly-scanner"); this changes the default of the one function that builds the
#   requests (sipvicious.libs.svhelper.makeRequest);
# - the source address of svwar and svcrack: their main() drops -b (bindingip is never
#   passed on), so they would send from any address; this makes -b's address the default
#   of their scanner class.
# argv: USER_AGENT ("" = keep) BIND ("" = none) TOOL ARGS...
_SIPVICIOUS_WRAPPER = """\
import importlib, sys
from sipvicious.libs import svhelper

def set_default(fn, name, value):
    code = fn.__code__
    names = code.co_varnames[: code.co_argcount]
    defaults = list(fn.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    fn.__defaults__ = tuple(defaults)

user_agent, bind, tool = sys.argv[1:4]
if user_agent:
    set_default(svhelper.makeRequest, "useragent", user_agent)
module = importlib.import_module("sipvicious." + tool)
scanner_class = {"svwar": "TakeASip", "svcrack": "ASipOfRedWine"}.get(tool)
if scanner_class and bind:
    set_default(getattr(module, scanner_class).__init__, "bindingip", bind)
sys.argv = ["sipvicious_" + tool, *sys.argv[4:]]
module.main()
"""


def sipvicious(
    tool: Literal["svmap", "svwar", "svcrack"],
    args: Sequence[str],
    *,
    workdir: Path,
    name: str,
    bind: str,
    port: int,
    user_agent: str | None = None,
) -> Proc:
    """A sipvicious 0.3.8 tool (pip ``sipvicious``, in the venv) as a :class:`Proc`, not
    started, sending from ``bind``:``port`` (``-b``/``-P``, also for svwar and svcrack,
    which ignore ``-b``; without ``-P`` the tools take 5060).  ``-R`` is never passed (it reports to
    the author, off the box).  ``user_agent`` replaces ``friendly-scanner``."""
    import importlib.util

    if importlib.util.find_spec("sipvicious") is None:
        import pytest

        pytest.fail(
            "sipvicious not importable: install it in the venv "
            "(.venv/bin/pip install sipvicious==0.3.8)",
            pytrace=False,
        )
    argv = [sys.executable, "-c", _SIPVICIOUS_WRAPPER, user_agent or "", bind, tool]
    argv += ["-b", bind, "-P", str(port), *args]
    return Proc(argv, workdir=workdir, name=name)
