"""TLS contexts for the SIP listeners and for outbound connections (RFC 3261 §26.2, RFC 5630).

One policy for both directions, following RFC 9325 (BCP 195):
- TLS 1.2 is the minimum, TLS 1.3 is allowed and, being the highest version
  both sides support, negotiated by default (§3.1.1).
- TLS 1.2 cipher suites are limited to ECDHE key exchange (forward secrecy) with
  an AEAD cipher: AES-GCM, and ChaCha20-Poly1305 for peers without AES hardware
  (§4.2 recommends exactly these).  ECDSA and RSA certificates both work.
  TLS 1.3 suites are all AEAD and keep OpenSSL's defaults.
- No compression (CRIME, §3.3), no renegotiation (§3.5).

Certificates and keys arrive as PEM bytes (from files or from base64 in the
environment, for Kubernetes secrets).  Python's ``ssl`` loads a certificate
chain only from files, so the PEM is written to a private directory (0700,
files 0600, on tmpfs when /dev/shm is there) and removed right after loading.
Error messages name the bad input; they never quote key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

# RFC 9325 §4.2, in OpenSSL names; AES-256 first, as the issue asks, then ChaCha20.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
)

VERIFY_CLIENT_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

CERT_B64_NAME = "--tls-cert-base64 / SIPEDGE_TLS_CERT_BASE64"
KEY_B64_NAME = "--tls-key-base64 / SIPEDGE_TLS_KEY_BASE64"


def server_context(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    client_ca: bytes | None = None,
    verify_client: str = "none",
) -> ssl.SSLContext:
    """A server context for the TLS listeners.

    ``verify_client``: "none" asks for no certificate; "optional" asks for one
    and checks it against ``client_ca`` if the client sends one; "required"
    refuses the handshake without a valid one.  Which trunk needs what is the
    caller's decision (it sees the certificate in ``Source.peer_cert_der``).
    """
    if verify_client not in VERIFY_CLIENT_MODES:
        raise ValueError(f"verify_client must be one of {', '.join(VERIFY_CLIENT_MODES)}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx)
    # The server picks the suite: ours are ordered strongest first.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert_pem, key_pem)
    if verify_client != "none":
        if client_ca is None:
            raise ValueError(f"verify_client={verify_client!r} needs a client CA")
        _load_ca(ctx, client_ca, "client CA")
        ctx.verify_mode = VERIFY_CLIENT_MODES[verify_client]
    return ctx


def client_context(
    *,
    ca_pem: bytes | None = None,
    verify: bool = True,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> ssl.SSLContext:
    """A client context for outbound TLS (to upstreams and trunks).

    With ``verify`` the peer's certificate must chain to ``ca_pem`` (or to the
    system store when none is given) and match the name the transport layer
    passes (the destination IP, checked against the certificate's IP SANs).
    ``cert_pem``/``key_pem`` give a client certificate for mutual TLS.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_policy(ctx)
    if verify:
        if ca_pem is not None:
            _load_ca(ctx, ca_pem, "CA")
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("a client certificate needs both cert_pem and key_pem")
    if cert_pem is not None and key_pem is not None:
        _load_chain(ctx, cert_pem, key_pem)
    return ctx


def load_pem_pair(
    cert_path: str | os.PathLike[str] | None,
    key_path: str | os.PathLike[str] | None,
    cert_b64: str | None,
    key_b64: str | None,
) -> tuple[bytes, bytes]:
    """The certificate (chain) and key as PEM bytes, checked to belong together.

    Base64 values (from the command line or the environment) win over the
    paths; they come as a pair, since a certificate from one source and a key
    from another is a mistake waiting to happen.  Raises ``ValueError`` naming
    the bad input.
    """
    if cert_b64 or key_b64:
        if not (cert_b64 and key_b64):
            missing = KEY_B64_NAME if cert_b64 else CERT_B64_NAME
            raise ValueError(
                f"TLS certificate and key must both be given as base64: {missing} is missing"
            )
        cert_pem = _b64(cert_b64, f"TLS certificate ({CERT_B64_NAME})")
        key_pem = _b64(key_b64, f"TLS key ({KEY_B64_NAME})")
        cert_name = f"TLS certificate ({CERT_B64_NAME})"
        key_name = f"TLS key ({KEY_B64_NAME})"
    else:
        if cert_path is None or key_path is None:
            raise ValueError("no TLS certificate and key: give both paths or both base64 values")
        cert_name = f"TLS certificate file {os.fspath(cert_path)!r}"
        key_name = f"TLS key file {os.fspath(key_path)!r}"
        cert_pem = _read(cert_path, cert_name)
        key_pem = _read(key_path, key_name)
    check_pem_pair(cert_pem, key_pem, cert_name=cert_name, key_name=key_name)
    return cert_pem, key_pem


def check_pem_pair(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    cert_name: str = "TLS certificate",
    key_name: str = "TLS key",
) -> None:
    """Raise ``ValueError`` unless ``cert_pem`` is a PEM certificate chain whose
    first certificate matches the PEM private key ``key_pem``."""
    if b"-----BEGIN" not in cert_pem:
        raise ValueError(f"{cert_name}: not PEM (no -----BEGIN line)")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"{cert_name}: not a PEM certificate") from None
    if b"-----BEGIN" not in key_pem:
        raise ValueError(f"{key_name}: not PEM (no -----BEGIN line)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(f"{key_name}: encrypted keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message is not repeated: it could quote the input.
        raise ValueError(f"{key_name}: not a PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(f"{key_name} does not match {cert_name}")


# ---------------------------------------------------------------- internals


def _apply_policy(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)  # applies to TLS <= 1.2 only
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_ca(ctx: ssl.SSLContext, ca_pem: bytes, name: str) -> None:
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError):
        raise ValueError(f"{name}: not a PEM certificate") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("encrypted keys are not supported")


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with _private_dir() as d:
        cert_file = d / "cert.pem"
        key_file = d / "key.pem"
        _write_private(cert_file, cert_pem)
        _write_private(key_file, key_pem)
        try:
            ctx.load_cert_chain(cert_file, key_file, password=_no_password)
        except ssl.SSLError as e:
            # e.reason is OpenSSL's code (KEY_VALUES_MISMATCH, NO_START_LINE ...),
            # never the file's content.
            raise ValueError(f"cannot load TLS certificate and key: {e.reason or e}") from None
        except ValueError:
            raise ValueError("cannot load TLS key: encrypted keys are not supported") from None


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    # tmpfs keeps the key off the disk where one is mounted; mkdtemp makes it 0700.
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
    path = tempfile.mkdtemp(prefix="sipedge-tls-", dir=base)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _b64(value: str, name: str) -> bytes:
    # Secrets are often wrapped at 76 columns (base64 without -w0): whitespace is fine.
    compact = "".join(value.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: not valid base64") from None


def _read(path: str | os.PathLike[str], name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{name}: cannot read: {e.strerror}") from None


def certificate_matches(trunk: Any, der: bytes | None) -> bool:
    """Whether a TLS peer certificate (DER) is one ``trunk`` lists.

    By SHA-256 fingerprint (``trunk.tls_fingerprints``, lower-case hex), or by
    subject (``trunk.tls_subjects``): the whole RFC 4514 string, or one
    ``CN=...`` that equals the certificate's common name.  No certificate: no match.
    The chain itself was already checked against ``tls.client_ca`` in the handshake.
    """
    if der is None:
        return False
    if trunk.tls_fingerprints and hashlib.sha256(der).hexdigest() in trunk.tls_fingerprints:
        return True
    if not trunk.tls_subjects:
        return False
    try:
        subject = x509.load_der_x509_certificate(der).subject
    except ValueError:
        return False
    full = subject.rfc4514_string()
    names = {
        "CN=" + (a.value if isinstance(a.value, str) else a.value.decode("utf-8", "replace"))
        for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    }
    return any(s == full or s in names for s in trunk.tls_subjects)
