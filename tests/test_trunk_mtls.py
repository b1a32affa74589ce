"""A carrier trusted by mutual TLS (issue 5): address *and* client certificate.

A trunk with ``tls_fingerprints`` or ``tls_subjects`` trusts its sources only over TLS
with a listed certificate; from the same address without one (or over UDP) the source is
a stranger: its OPTIONS gets no answer and its INVITE a 407.  Driven against a real
``sipedge run`` with Python's ssl module as the TLS client.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge.config import ConfigError, parse
from edge.tls import certificate_matches
from tests.peers import SipedgeProc, TestCerts, make_test_certs

pytestmark = [pytest.mark.interop]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("mtls-certs"))


def der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def fingerprint(path: Path, colons: bool = True) -> str:
    digest = hashlib.sha256(der_of(path)).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2)) if colons else digest


# ---------------------------------------------------------------- config and matching


def test_a_certificate_trunk_needs_a_listener_that_asks_for_certificates() -> None:
    trunk = {"name": "c", "allow": ["127.0.0.1/32"], "tls_subjects": ["CN=sbc"]}
    with pytest.raises(ConfigError) as err:
        parse({"upstream": {"echo": True}, "trunks": [trunk]}, check_files=False)
    assert err.value.key == "trunks[0].tls_subjects"
    with pytest.raises(ConfigError) as err:
        parse(
            {"upstream": {"echo": True}, "trunks": [{**trunk, "tls_fingerprints": ["xyz"]}]},
            check_files=False,
        )
    assert err.value.key == "trunks[0].tls_fingerprints[0]"


def test_fingerprints_and_subjects_match(certs: TestCerts) -> None:
    der = der_of(certs.cert)
    cfg = parse(
        {
            "upstream": {"echo": True},
            "tls": {"verify_client": "optional", "client_ca": str(certs.ca)},
            "trunks": [
                {
                    "name": "a",
                    "allow": ["10.0.0.0/8"],
                    "tls_fingerprints": [fingerprint(certs.cert)],
                }
            ],
        },
        check_files=False,
    )
    (trunk,) = cfg.trunks
    assert trunk.tls_fingerprints == (hashlib.sha256(der).hexdigest(),)
    assert certificate_matches(trunk, der)
    assert not certificate_matches(trunk, None)
    assert not certificate_matches(trunk, der_of(certs.ca))

    def subjects(*names: str) -> SimpleNamespace:
        return SimpleNamespace(tls_fingerprints=(), tls_subjects=names)

    assert certificate_matches(subjects("CN=127.0.0.1"), der)
    assert not certificate_matches(subjects("CN=127.0.0.2", "O=x"), der)
    assert not certificate_matches(subjects("CN=127.0.0.1"), b"not a certificate")


# ---------------------------------------------------------------- against the running edge


def sip_over_tls(
    addr: tuple[str, int], certs: TestCerts, method: str, *, client_cert: bool, wait: float = 3.0
) -> bytes | None:
    """Send one request over a fresh TLS connection; the first response, or None."""
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        ctx.load_cert_chain(str(certs.cert), str(certs.key))
    with (
        socket.create_connection(addr, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=addr[0]) as tls,
    ):
        lport = tls.getsockname()[1]
        stamp = time.monotonic_ns()
        msg = (
            f"{method} sip:1000@{addr[0]}:{addr[1]};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:{lport};branch=z9hG4bK-mtls-{lport}-{stamp}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:carrier@127.0.0.1>;tag=m{lport}\r\n"
            "To: <sip:1000@127.0.0.1>\r\n"
            f"Call-ID: mtls-{lport}-{stamp}@127.0.0.1\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:carrier@127.0.0.1:{lport};transport=tls>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        tls.sendall(msg.encode())
        tls.settimeout(wait)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = tls.recv(65535)
            except (TimeoutError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
            # Skip a 100 Trying: the first final or provisional other than 100 decides.
            for part in data.split(b"SIP/2.0 ")[1:]:
                if not part.startswith(b"100 "):
                    return b"SIP/2.0 " + part
        return None


def udp_options(addr: tuple[str, int], wait: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        lport = s.getsockname()[1]
        s.sendto(
            (
                f"OPTIONS sip:{addr[0]}:{addr[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-mtls-u{lport};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:carrier@127.0.0.1>;tag=u{lport}\r\n"
                f"To: <sip:{addr[0]}:{addr[1]}>\r\n"
                f"Call-ID: mtls-u{lport}@127.0.0.1\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            addr,
        )
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


@pytest.fixture
def edge_with(tmp_path: Path, certs: TestCerts) -> Iterator[object]:
    started: list[SipedgeProc] = []

    def start(**trunk_extra: object) -> SipedgeProc:
        proc = SipedgeProc(
            workdir=tmp_path / f"edge{len(started)}",
            certs=certs,
            trunks=[{"name": "carrier", "allow": ["127.0.0.1/32"], **trunk_extra}],
            extra={"tls": {"verify_client": "optional", "client_ca": str(certs.ca)}},
        )
        started.append(proc)
        proc.start()
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.mark.timeout(90)
def test_listed_certificate_is_the_carrier_and_nothing_else_is(
    edge_with: object, certs: TestCerts
) -> None:
    edge = edge_with(tls_fingerprints=[fingerprint(certs.cert)])  # type: ignore[operator]
    tls, udp = edge.addresses.tls, edge.addresses.udp
    answer = sip_over_tls(tls, certs, "OPTIONS", client_cert=True)
    assert answer is not None and answer.startswith(b"SIP/2.0 200"), answer
    # Same address, TLS without a certificate: a stranger.  A probe gets silence,
    # a call a challenge.
    assert sip_over_tls(tls, certs, "OPTIONS", client_cert=False, wait=1.5) is None
    challenge = sip_over_tls(tls, certs, "INVITE", client_cert=False)
    assert challenge is not None and challenge.startswith(b"SIP/2.0 407"), challenge
    assert b"Proxy-Authenticate: Digest" in challenge
    # And over UDP, where no certificate can be shown.
    assert udp_options(udp) is None


@pytest.mark.timeout(90)
def test_subject_or_unlisted_fingerprint(edge_with: object, certs: TestCerts) -> None:
    by_subject = edge_with(tls_subjects=["CN=127.0.0.1"])  # type: ignore[operator]
    answer = sip_over_tls(by_subject.addresses.tls, certs, "OPTIONS", client_cert=True)
    assert answer is not None and answer.startswith(b"SIP/2.0 200"), answer
    # A valid certificate (it chains to the client CA) that is not the listed one.
    other = edge_with(tls_fingerprints=[fingerprint(certs.ca)])  # type: ignore[operator]
    assert sip_over_tls(other.addresses.tls, certs, "OPTIONS", client_cert=True, wait=1.5) is None
