"""edge/tls.py: the TLS policy (RFC 9325: 1.2 minimum, 1.3 preferred, ECDHE with AEAD for
1.2), client certificates, and loading certificate and key from files or base64.

Handshakes run between two in-memory ``ssl.SSLObject`` peers (no sockets, no
timing), and once over a real socket against ``openssl s_client`` (Debian
``openssl``) as an independent peer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import tls

# ---------------------------------------------------------------- throwaway certificates


def make_cert(
    kind: str = "ec",
    *,
    cn: str = "sipedge test",
    san_ip: str = "127.0.0.1",
    issuer: tuple[bytes, bytes] | None = None,
    ca: bool = False,
) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM): ECDSA P-256 or RSA 2048, SAN IP ``san_ip``, one day.

    Self-signed unless ``issuer`` (cert PEM, key PEM of a CA) is given.
    """
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    if issuer is None:
        issuer_name, signer = name, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0])
        issuer_key = serialization.load_pem_private_key(issuer[1], password=None)
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        issuer_name, signer = issuer_cert.subject, issuer_key
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    cert = builder.sign(signer, hashes.SHA256())
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def der(cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ec_pair() -> tuple[bytes, bytes]:
    return make_cert("ec")


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, bytes]:
    return make_cert("rsa")


# ---------------------------------------------------------------- in-memory handshake


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a handshake between two in-memory peers; an ``ssl.SSLError`` from either
    side propagates.  Returns (server, client) once both are done."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    c_done = s_done = False
    for _ in range(20):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            try:
                server.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if c_done and s_done:
            # TLS 1.3: a server that refuses the client's certificate says so only
            # after the client has finished; one read on each side surfaces it.
            for side in (server, client):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.read(1)
                s_in.write(c_out.read())
                c_in.write(s_out.read())
            return server, client
    raise AssertionError("handshake did not finish")


def trusting_client(cert_pem: bytes, **kwargs: object) -> ssl.SSLContext:
    """A plain Python client (not our policy) that trusts ``cert_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cert_pem.decode())
    for name, value in kwargs.items():
        setattr(ctx, name, value)
    return ctx


# ---------------------------------------------------------------- versions and ciphers


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_tls13_negotiated_by_default(kind: str, ec_pair, rsa_pair) -> None:
    cert, key = ec_pair if kind == "ec" else rsa_pair
    server, client = handshake(tls.server_context(cert, key), trusting_client(cert))
    assert server.version() == client.version() == "TLSv1.3"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("ec", "ECDHE-ECDSA-AES256-GCM-SHA384"), ("rsa", "ECDHE-RSA-AES256-GCM-SHA384")],
)
def test_tls12_gets_ecdhe_aes_gcm(kind: str, expected: str, ec_pair, rsa_pair) -> None:
    cert, key = ec_pair if kind == "ec" else rsa_pair
    client = trusting_client(cert, maximum_version=ssl.TLSVersion.TLSv1_2)
    server, _ = handshake(tls.server_context(cert, key), client)
    assert server.version() == "TLSv1.2"
    assert server.cipher()[0] == expected  # type: ignore[index]


@pytest.mark.parametrize(
    "cipher",
    [
        "AES128-SHA",  # RSA key transport, CBC
        "AES256-GCM-SHA384",  # RSA key transport (no forward secrecy), GCM
        "ECDHE-RSA-AES128-SHA",  # ECDHE, but CBC
        "ECDHE-ECDSA-AES256-SHA384",  # ECDHE, but CBC
        "DHE-RSA-AES256-GCM-SHA384",  # finite-field DHE
    ],
)
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_tls12_without_ecdhe_aead_is_refused(kind: str, cipher: str, ec_pair, rsa_pair) -> None:
    cert, key = ec_pair if kind == "ec" else rsa_pair
    client = trusting_client(cert, maximum_version=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers(cipher)
    with pytest.raises(ssl.SSLError):
        handshake(tls.server_context(cert, key), client)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
def test_tls10_and_tls11_are_refused_by_the_server(version: ssl.TLSVersion, rsa_pair) -> None:
    cert, key = rsa_pair
    client = trusting_client(cert, minimum_version=version, maximum_version=version)
    # Let the client offer the old version at all (Debian's default level forbids it),
    # so that the refusal we see is the server's.
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as info:
        handshake(tls.server_context(cert, key), client)
    assert "UNSUPPORTED_PROTOCOL" in str(info.value) or "PROTOCOL_VERSION" in str(info.value)


def test_policy_of_both_contexts(ec_pair) -> None:
    cert, key = ec_pair
    for ctx in (tls.server_context(cert, key), tls.client_context(verify=False)):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 == set(tls.TLS12_CIPHERS.split(":"))


def test_client_context_verifies_the_server(ec_pair) -> None:
    cert, key = ec_pair
    server_ctx = tls.server_context(cert, key)
    _, client = handshake(server_ctx, tls.client_context(ca_pem=cert))
    assert client.version() == "TLSv1.3"
    # Another CA: refused.
    other, _ = make_cert("ec")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_ctx, tls.client_context(ca_pem=other))
    # A certificate for another IP: refused by the name check.
    cert2, key2 = make_cert("ec", san_ip="127.0.0.9")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.server_context(cert2, key2), tls.client_context(ca_pem=cert2))
    # verify=False: anything goes (for lab trunks only).
    handshake(tls.server_context(cert2, key2), tls.client_context(verify=False))


# ---------------------------------------------------------------- client certificates


@pytest.fixture(scope="module")
def pki() -> dict[str, tuple[bytes, bytes]]:
    ca = make_cert("ec", cn="test CA", ca=True)
    other_ca = make_cert("ec", cn="other CA", ca=True)
    return {
        "ca": ca,
        "server": make_cert("ec", cn="server", issuer=ca),
        "client": make_cert("rsa", cn="client", issuer=ca),
        "stranger": make_cert("ec", cn="stranger", issuer=other_ca),
    }


def test_client_certificate_required(pki) -> None:
    ca, (cert, key) = pki["ca"], pki["server"]
    server_ctx = tls.server_context(cert, key, client_ca=ca[0], verify_client="required")
    with pytest.raises(ssl.SSLError):
        handshake(server_ctx, tls.client_context(ca_pem=ca[0]))
    with pytest.raises(ssl.SSLError):
        stranger = tls.client_context(
            ca_pem=ca[0], cert_pem=pki["stranger"][0], key_pem=pki["stranger"][1]
        )
        handshake(server_ctx, stranger)
    client_ctx = tls.client_context(
        ca_pem=ca[0], cert_pem=pki["client"][0], key_pem=pki["client"][1]
    )
    server, _ = handshake(server_ctx, client_ctx)
    assert server.getpeercert(binary_form=True) == der(pki["client"][0])


def test_client_certificate_optional(pki) -> None:
    ca, (cert, key) = pki["ca"], pki["server"]
    server_ctx = tls.server_context(cert, key, client_ca=ca[0], verify_client="optional")
    server, _ = handshake(server_ctx, tls.client_context(ca_pem=ca[0]))
    assert server.getpeercert(binary_form=True) is None
    client_ctx = tls.client_context(
        ca_pem=ca[0], cert_pem=pki["client"][0], key_pem=pki["client"][1]
    )
    server, _ = handshake(server_ctx, client_ctx)
    assert server.getpeercert(binary_form=True) == der(pki["client"][0])


def test_client_certificate_not_asked_by_default(pki) -> None:
    cert, key = pki["server"]
    client_ctx = tls.client_context(
        ca_pem=pki["ca"][0], cert_pem=pki["client"][0], key_pem=pki["client"][1]
    )
    server, _ = handshake(tls.server_context(cert, key), client_ctx)
    assert server.getpeercert(binary_form=True) is None


def test_bad_context_arguments(ec_pair) -> None:
    cert, key = ec_pair
    with pytest.raises(ValueError, match="verify_client"):
        tls.server_context(cert, key, verify_client="sometimes")
    with pytest.raises(ValueError, match="client CA"):
        tls.server_context(cert, key, verify_client="required")
    with pytest.raises(ValueError, match="client CA"):
        tls.server_context(cert, key, client_ca=b"junk", verify_client="required")
    with pytest.raises(ValueError, match="both"):
        tls.client_context(cert_pem=cert)
    other_key = make_cert("ec")[1]
    with pytest.raises(ValueError, match="KEY_VALUES_MISMATCH"):
        tls.server_context(cert, other_key)


def test_pem_goes_through_a_private_directory_that_is_removed(ec_pair, monkeypatch) -> None:
    seen: list[tuple[int, int]] = []
    real = tls._write_private

    def spy(path: Path, data: bytes) -> None:
        real(path, data)
        seen.append((path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777))

    monkeypatch.setattr(tls, "_write_private", spy)
    dirs_before = _tls_tmp_dirs()
    tls.server_context(*ec_pair)
    assert seen == [(0o700, 0o600), (0o700, 0o600)]
    assert _tls_tmp_dirs() == dirs_before


def _tls_tmp_dirs() -> set[str]:
    import tempfile

    found: set[str] = set()
    for base in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(base):
            found |= {n for n in os.listdir(base) if n.startswith("sipedge-tls-")}
    return found


# ---------------------------------------------------------------- load_pem_pair


def _b64(data: bytes, wrap: bool = False) -> str:
    text = base64.b64encode(data).decode()
    if wrap:  # as `base64` prints it without -w0
        text = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    return text


def test_load_pem_pair_from_files(tmp_path: Path, ec_pair) -> None:
    cert, key = ec_pair
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    assert tls.load_pem_pair(tmp_path / "c.pem", tmp_path / "k.pem", None, None) == (cert, key)
    with pytest.raises(ValueError, match=r"TLS key file .*missing.pem.*cannot read"):
        tls.load_pem_pair(tmp_path / "c.pem", tmp_path / "missing.pem", None, None)


def test_base64_wins_over_paths(tmp_path: Path, ec_pair, rsa_pair) -> None:
    cert, key = rsa_pair
    (tmp_path / "c.pem").write_bytes(ec_pair[0])
    (tmp_path / "k.pem").write_bytes(ec_pair[1])
    got = tls.load_pem_pair(
        tmp_path / "c.pem", tmp_path / "k.pem", _b64(cert, wrap=True), _b64(key)
    )
    assert got == (cert, key)
    # The paths need not exist when base64 is given.
    assert tls.load_pem_pair("/nonexistent/c", "/nonexistent/k", _b64(cert), _b64(key)) == (
        cert,
        key,
    )


def test_load_pem_pair_names_the_bad_input(ec_pair) -> None:
    cert, key = ec_pair
    with pytest.raises(ValueError, match=r"SIPEDGE_TLS_CERT_BASE64.*not valid base64"):
        tls.load_pem_pair(None, None, "@@not base64@@", _b64(key))
    with pytest.raises(ValueError, match=r"SIPEDGE_TLS_KEY_BASE64.*not valid base64"):
        tls.load_pem_pair(None, None, _b64(cert), "abc")
    with pytest.raises(ValueError, match=r"SIPEDGE_TLS_CERT_BASE64.*not PEM"):
        tls.load_pem_pair(None, None, _b64(b"hello world"), _b64(key))
    with pytest.raises(ValueError, match=r"SIPEDGE_TLS_KEY_BASE64.*not PEM"):
        tls.load_pem_pair(None, None, _b64(cert), _b64(b"junk"))
    with pytest.raises(ValueError, match=r"SIPEDGE_TLS_KEY_BASE64.*not a PEM private key"):
        tls.load_pem_pair(None, None, _b64(cert), _b64(cert))
    with pytest.raises(ValueError, match=r"TLS certificate .*not a PEM certificate"):
        tls.load_pem_pair(None, None, _b64(b"-----BEGIN CERTIFICATE-----\nxx\n"), _b64(key))
    with pytest.raises(ValueError, match="SIPEDGE_TLS_KEY_BASE64 is missing"):
        tls.load_pem_pair(None, None, _b64(cert), None)
    with pytest.raises(ValueError, match="SIPEDGE_TLS_CERT_BASE64 is missing"):
        tls.load_pem_pair(None, None, "", _b64(key))
    with pytest.raises(ValueError, match="no TLS certificate"):
        tls.load_pem_pair(None, None, None, None)


def test_mismatched_key_is_refused_without_quoting_it(ec_pair) -> None:
    cert, _ = ec_pair
    for other_key in (make_cert("ec")[1], make_cert("rsa")[1]):
        with pytest.raises(ValueError, match="does not match") as info:
            tls.load_pem_pair(None, None, _b64(cert), _b64(other_key))
        _assert_no_key_material(str(info.value), other_key)


def test_encrypted_key_is_refused(ec_pair) -> None:
    cert, key = ec_pair
    loaded = serialization.load_pem_private_key(key, password=None)
    encrypted = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="encrypted keys are not supported") as info:
        tls.load_pem_pair(None, None, _b64(cert), _b64(encrypted))
    _assert_no_key_material(str(info.value), encrypted)
    # server_context() must not prompt on the terminal either.
    with pytest.raises(ValueError, match="encrypted"):
        tls.server_context(cert, encrypted)


def _assert_no_key_material(message: str, key_pem: bytes) -> None:
    for line in key_pem.decode().splitlines():
        if not line.startswith("-----"):
            assert line[:16] not in message


# ---------------------------------------------------------------- openssl s_client


class ThreadServer:
    """A blocking TLS server in a thread: handshakes with each client in turn and
    records the outcome.  Bounded: at most ``limit`` connections and 20 s."""

    def __init__(self, ctx: ssl.SSLContext, limit: int = 8) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so that close() is noticed between accepts
        self.port = self.sock.getsockname()[1]
        self.results: list[str] = []
        self.limit = limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 20
        served = 0
        while served < self.limit and not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            served += 1
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    self.results.append(f"ok {s.version()} {s.cipher()[0]}")  # type: ignore[index]
                    s.recv(1)
            except (ssl.SSLError, OSError) as e:
                self.results.append(f"error {e}")
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found: install the Debian package 'openssl'")
    return subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.interop
def test_openssl_s_client(tmp_path: Path, rsa_pair) -> None:
    cert, key = rsa_pair
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cert)
    server = ThreadServer(tls.server_context(cert, key))
    try:
        ok = _s_client(server.port, "-CAfile", str(ca_file), "-verify_return_error")
        assert ok.returncode == 0, ok.stderr
        assert "Protocol version: TLSv1.3" in ok.stderr
        assert "Verification: OK" in ok.stderr

        tls12 = _s_client(server.port, "-CAfile", str(ca_file), "-tls1_2")
        assert tls12.returncode == 0, tls12.stderr
        assert "Ciphersuite: ECDHE-RSA-AES256-GCM-SHA384" in tls12.stderr

        for refused in (
            ("-tls1_2", "-cipher", "AES128-SHA"),
            ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"),
            ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),
        ):
            bad = _s_client(server.port, *refused)
            assert bad.returncode != 0, (refused, bad.stderr)
            assert "CONNECTION ESTABLISHED" not in bad.stderr
    finally:
        server.close()
    assert server.results[0].startswith("ok TLSv1.3")
    assert server.results[1] == "ok TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"
    assert len(server.results) == 5
    assert all(r.startswith("error") for r in server.results[2:])
