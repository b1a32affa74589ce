"""DTLS-SRTP endpoint for one relay leg (RFC 5763, RFC 5764, RFC 8842), sans-I/O.

    dtls = DtlsEndpoint("server")                  # or "client", from a=setup
    dtls.set_remote_fingerprints(sd.fingerprints_for(m))
    dtls.start(now)                                # a client's ClientHello is queued
    dtls.receive(datagram, now)                    # a DTLS datagram from the peer
    for out in dtls.datagrams_to_send(): send(out)
    dtls.handle_timer(now)                         # now and then: retransmissions
    while (event := dtls.next_event()) is not None:
        ...                                        # HandshakeDone(keys) / DtlsFailed(reason)

Inputs are API calls, datagrams and ``now``; outputs are datagrams, events and a timer,
as in aioquic's ``QuicConnection``.  The TLS is OpenSSL's (pyOpenSSL ``DTLS_METHOD``
over memory BIOs), never our own crypto; the relay's socket glue only shuttles.

Rules of this file:

- DTLS 1.2 only (what browsers and baresip speak; ``use_srtp`` of RFC 5764 is a DTLS 1.2
  extension).  ``use_srtp`` offers and accepts SRTP_AES128_CM_HMAC_SHA1_80 only: the one
  profile every WebRTC stack has, and the one the C SRTP core implements for DTLS here
  (aiortc and Chrome prefer AEAD GCM when offered; we never offer it).
- Our certificate is ECDSA P-256, self-signed, made once per process
  (:func:`local_certificate`); its SHA-256 fingerprint goes into the SDP.
- The cipher list is ECDHE with ECDSA or RSA (AES-GCM, ChaCha20, AES-CBC-SHA): as a
  server only the ECDSA suites fit our certificate (what aiortc's ECDSA-only client
  offers); as a client the RSA ones let us complete with baresip 1.0's RSA-2048
  ``sha1WithRSA`` certificate.  The peer's certificate is self-signed and not checked
  against any CA: the only check is its fingerprint.
- The peer certificate's SHA-256 digest must equal one of the ``sha-256`` fingerprints
  of its SDP (RFC 8122 §5, RFC 5763 §5); fingerprints of other hash functions are
  ignored, and an SDP without a ``sha-256`` one is refused.  The SDP may come after
  the handshake (an answerer that is DTLS client starts before its answer reaches us):
  the keys are then held back until :meth:`DtlsEndpoint.set_remote_fingerprints`; a
  mismatch fails the endpoint either way, and the keys are never released.
- Keys (RFC 5764 §4.2): ``EXTRACTOR-dtls_srtp``, 2 * (16 + 14) bytes, laid out as
  client key, server key, client salt, server salt; the client sends with the client's.
- Handshake datagrams from the peer are rate-limited (token bucket per endpoint):
  excess is dropped and counted, never fed to OpenSSL.  A handshake not done within
  ``handshake_timeout`` seconds of :meth:`start` fails with reason ``timeout``.
- Output is split at DTLS record boundaries into datagrams of at most ``mtu`` bytes
  (the memory BIO is a byte stream; OpenSSL fragments handshake messages to the MTU).
- Nothing the peer sends raises: an OpenSSL error ends the handshake as
  :class:`DtlsFailed` with OpenSSL's reason (alerts OpenSSL queued are still sent).
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from media.suites import AES_CM_128_HMAC_SHA1_80, SrtpSuite, suite_for_dtls_profile
from sip.sdp_attributes import Fingerprint

Role = Literal["client", "server"]
State = Literal["new", "connecting", "verifying", "connected", "failed", "closed"]

DTLS1_2_VERSION: Final = 0xFEFD  # OpenSSL's DTLS1_2_VERSION (pyOpenSSL has no name for it)
SRTP_PROFILE: Final = AES_CM_128_HMAC_SHA1_80
EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"  # RFC 5764 §4.2
CIPHERS: Final = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
DEFAULT_MTU: Final = 1200  # what browsers use for DTLS; fits any path with IPv6 and a tunnel
RECORD_HEADER: Final = 13  # RFC 6347 §4.1: type, version, epoch, sequence number, length
CERT_LIFETIME: Final = datetime.timedelta(days=30)
FINGERPRINT_HASH: Final = "sha-256"


# ---------------------------------------------------------------- our certificate


@dataclass(frozen=True, slots=True)
class LocalCertificate:
    """Our DTLS certificate and key and its SDP fingerprint."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    fingerprint: Fingerprint

    @classmethod
    def generate(cls) -> LocalCertificate:
        """A fresh self-signed ECDSA P-256 certificate (RFC 8827 §6.5 asks for a
        new one per origin; per process is what a relay can do)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipedge")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + CERT_LIFETIME)
            .sign(key, hashes.SHA256())
        )
        digest = cert.fingerprint(hashes.SHA256())
        return cls(cert, key, Fingerprint.from_digest(FINGERPRINT_HASH, digest))


@cache
def local_certificate() -> LocalCertificate:
    """The process's certificate, made on first use."""
    return LocalCertificate.generate()


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """The SRTP master keys one side of a DTLS-SRTP association got (RFC 5764 §4.2):
    ``local_*`` protect what we send, ``remote_*`` unprotect what the peer sends."""

    suite: SrtpSuite
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The handshake completed and the peer's certificate matched its fingerprint."""

    keys: SrtpKeys
    role: Role
    cipher: str
    peer_fingerprint: str  # sha-256 of the peer's certificate, for logs


@dataclass(frozen=True, slots=True)
class DtlsFailed:
    """The association is unusable: ``reason`` is ``fingerprint_mismatch``,
    ``no_fingerprint``, ``no_srtp_profile``, ``timeout``, ``closed`` (close_notify or a
    fatal alert from the peer) or ``handshake`` (``detail`` has OpenSSL's words)."""

    reason: str
    detail: str = ""


DtlsEvent = HandshakeDone | DtlsFailed

COUNTERS: Final = ("received", "sent", "rate_limited", "after_failure", "application_data")


def split_records(data: bytes, mtu: int) -> list[bytes]:
    """DTLS records from a memory BIO, packed into datagrams of at most ``mtu`` bytes
    (a record bigger than that, which OpenSSL should not make, goes alone)."""
    records: list[bytes] = []
    pos = 0
    while pos + RECORD_HEADER <= len(data):
        length = int.from_bytes(data[pos + 11 : pos + 13], "big")
        end = pos + RECORD_HEADER + length
        records.append(data[pos:end])
        pos = end
    if pos < len(data):  # a torn record: should not happen with a memory BIO
        records.append(data[pos:])
    datagrams: list[bytes] = []
    for record in records:
        if datagrams and len(datagrams[-1]) + len(record) <= mtu:
            datagrams[-1] += record
        else:
            datagrams.append(record)
    return datagrams


def _context(certificate: LocalCertificate) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION)
    # Self-signed peers: accept any chain here; the fingerprint is the check.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    ctx.use_certificate(certificate.cert)
    ctx.use_privatekey(certificate.key)
    ctx.check_privatekey()
    ctx.set_cipher_list(CIPHERS)
    ctx.set_tlsext_use_srtp(SRTP_PROFILE.openssl_profile.encode())
    return ctx


class DtlsEndpoint:
    """One DTLS-SRTP association (see the module docstring).

    ``rate`` and ``burst`` bound the datagrams per second fed to OpenSSL.
    """

    def __init__(
        self,
        role: Role,
        certificate: LocalCertificate | None = None,
        *,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = 20.0,
        rate: float = 20.0,
        burst: int = 40,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"DTLS role must be 'client' or 'server', not {role!r}")
        self.role: Role = role
        self.certificate = certificate or local_certificate()
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        self.rate = rate
        self.burst = burst
        self.state: State = "new"
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.remote_fingerprints: list[Fingerprint] | None = None
        self.peer_fingerprint: str | None = None
        self.started_at: float | None = None
        self.done_at: float | None = None
        self._pending_keys: tuple[SrtpKeys, str] | None = None
        self._events: deque[DtlsEvent] = deque()
        self._out: list[bytes] = []
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._ssl = SSL.Connection(_context(self.certificate), None)
        self._ssl.set_ciphertext_mtu(mtu)
        if role == "server":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()

    # ---------------------------------------------------------------- API

    @property
    def handshake_seconds(self) -> float | None:
        if self.started_at is None or self.done_at is None:
            return None
        return self.done_at - self.started_at

    def set_remote_fingerprints(self, fingerprints: list[Fingerprint]) -> None:
        """The peer's ``a=fingerprint`` lines (its latest SDP).  A handshake that is
        already done is checked now."""
        self.remote_fingerprints = list(fingerprints)
        if self.state == "verifying":
            self._verify()

    def start(self, now: float) -> None:
        """Begin: a client sends its ClientHello, a server waits for one.  Idempotent."""
        if self.state != "new":
            return
        self.state = "connecting"
        self.started_at = now
        self._stamp = now
        if self.role == "client":
            self._handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """A DTLS datagram from the peer (RFC 7983: first byte 20-63)."""
        self.counters["received"] += 1
        if self.state in ("failed", "closed"):
            self.counters["after_failure"] += 1
            return
        if not self._take_token(now):
            self.counters["rate_limited"] += 1
            return
        if self.state == "new":
            if self.role == "client":
                # The server speaks first only to answer us: nothing to do before start.
                self.counters["after_failure"] += 1
                return
            self.start(now)
        try:
            self._ssl.bio_write(data)
        except SSL.Error as exc:
            self._fail("handshake", _openssl_reason(exc))
            return
        if self.state == "connecting":
            self._handshake(now)
        else:
            self._read_records()
        self._flush()

    def handle_timer(self, now: float) -> None:
        """Retransmit a lost flight when OpenSSL's timer expired; fail a handshake that
        took too long.  Call it now and then (the relay ticks every 100 ms or so)."""
        if self.state != "connecting":
            return
        if self.started_at is not None and now - self.started_at >= self.handshake_timeout:
            self._fail("timeout", f"no handshake within {self.handshake_timeout:g} s")
            return
        try:
            self._ssl.DTLSv1_handle_timeout()  # a no-op unless OpenSSL's timer expired
        except SSL.Error as exc:
            self._fail("handshake", _openssl_reason(exc))
            return
        self._flush()

    def get_timer(self, now: float) -> float | None:
        """When :meth:`handle_timer` has something to do (on the ``now`` clock)."""
        if self.state != "connecting":
            return None
        retransmit = self._ssl.DTLSv1_get_timeout()
        deadline = (self.started_at or now) + self.handshake_timeout
        return deadline if retransmit is None else min(deadline, now + retransmit)

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        self.counters["sent"] += len(out)
        return out

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Send close_notify (best effort) and stop."""
        if self.state in ("connected", "verifying", "connecting"):
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._flush()
        if self.state not in ("failed",):
            self.state = "closed"

    # ---------------------------------------------------------------- internals

    def _take_token(self, now: float) -> bool:
        stamp = self._stamp if self._stamp is not None else now
        tokens = min(float(self.burst), self._tokens + max(0.0, now - stamp) * self.rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def _handshake(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._fail("handshake", _openssl_reason(exc))
            return
        self._flush()
        self.done_at = now
        profile = self._ssl.get_selected_srtp_profile()
        try:
            suite = suite_for_dtls_profile(profile.decode())
        except ValueError:
            suite = None
        if suite is not SRTP_PROFILE:
            self._fail("no_srtp_profile", f"profile {profile.decode() or 'none'}")
            return
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable
            self._fail("no_fingerprint", "the peer sent no certificate")
            return
        digest = cert.fingerprint(hashes.SHA256())
        self.peer_fingerprint = Fingerprint.from_digest(FINGERPRINT_HASH, digest).value
        self._pending_keys = (self._export(suite), self._ssl.get_cipher_name() or "")
        self.state = "verifying"
        if self.remote_fingerprints is not None:
            self._verify()

    def _export(self, suite: SrtpSuite) -> SrtpKeys:
        k, s = suite.master_key_len, suite.master_salt_len
        material = self._ssl.export_keying_material(EXPORTER_LABEL, 2 * (k + s))
        client_key, server_key = material[:k], material[k : 2 * k]
        client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s :]
        if self.role == "client":
            return SrtpKeys(suite, client_key, client_salt, server_key, server_salt)
        return SrtpKeys(suite, server_key, server_salt, client_key, client_salt)

    def _verify(self) -> None:
        assert self._pending_keys is not None and self.peer_fingerprint is not None
        expected = [
            f.digest()
            for f in self.remote_fingerprints or ()
            if f.hash_func.lower() == FINGERPRINT_HASH
        ]
        if not expected:
            self._fail("no_fingerprint", "the peer's SDP has no sha-256 fingerprint")
            return
        actual = bytes.fromhex(self.peer_fingerprint.replace(":", ""))
        if not any(hmac.compare_digest(actual, e) for e in expected):
            self._fail("fingerprint_mismatch", f"peer certificate sha-256 {self.peer_fingerprint}")
            return
        keys, cipher = self._pending_keys
        self._pending_keys = None
        self.state = "connected"
        self._events.append(HandshakeDone(keys, self.role, cipher, self.peer_fingerprint))

    def _read_records(self) -> None:
        """After the handshake: alerts, close_notify, a retransmitted final flight (which
        OpenSSL answers), or application data (a data channel we do not offer)."""
        while True:
            try:
                data = self._ssl.recv(2048)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._fail("closed", "close_notify from the peer")
                return
            except SSL.Error as exc:
                self._fail("closed", _openssl_reason(exc))
                return
            if data:
                self.counters["application_data"] += 1

    def _flush(self) -> None:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            except SSL.Error:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if chunks:
            self._out.extend(split_records(b"".join(chunks), self.mtu))

    def _fail(self, reason: str, detail: str) -> None:
        self._flush()  # an alert OpenSSL queued still goes out
        self._pending_keys = None
        if self.state != "failed":
            self.state = "failed"
            self._events.append(DtlsFailed(reason, detail))


def _openssl_reason(exc: BaseException) -> str:
    """OpenSSL's error queue as one short line."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        return "; ".join(str(part[-1]) for part in args if isinstance(part, tuple)) or str(exc)
    return str(exc) or type(exc).__name__
