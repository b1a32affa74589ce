"""media/dtls: the DTLS-SRTP endpoint against itself, aiortc and an RSA/SHA-1 peer.

Peers:
- our own endpoint (two in memory);
- aiortc's ``RTCDtlsTransport`` (what a browser-grade WebRTC stack does), over an
  in-memory stand-in for its ICE transport, in both roles: as client it offers only
  ECDHE-ECDSA suites, which our ECDSA certificate serves;
- a plain pyOpenSSL endpoint with an RSA-2048 ``sha1WithRSA`` certificate
  (``tests/data/dtls``), standing in for baresip 1.0, in both roles.

The SRTP keys are checked by protecting with one side's keys and unprotecting with the
other's: our C core (:mod:`media.srtp`) against aiortc's libsrtp sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import SignatureAlgorithmOID
from OpenSSL import SSL

from media.dtls import (
    DtlsEndpoint,
    DtlsFailed,
    HandshakeDone,
    LocalCertificate,
    local_certificate,
    split_records,
)
from media.srtp import Context
from sip.sdp_attributes import Fingerprint

try:
    from aiortc.rtcdtlstransport import (
        RTCCertificate,
        RTCDtlsFingerprint,
        RTCDtlsParameters,
        RTCDtlsTransport,
    )
except ImportError as exc:  # a missing peer fails, naming what to install
    raise ImportError(
        f"aiortc is needed for the DTLS interop tests: .venv/bin/pip install aiortc==1.16.0 ({exc})"
    ) from exc

RSA_SHA1_PEM = Path(__file__).parent / "data" / "dtls" / "rsa2048-sha1-selfsigned.pem"
RTP = struct.pack("!BBHII", 0x80, 0, 1, 160, 0xABCD) + bytes(range(160))


def pump(a: DtlsEndpoint, b: DtlsEndpoint, now: float = 0.0, rounds: int = 10) -> None:
    for _ in range(rounds):
        for d in a.datagrams_to_send():
            b.receive(d, now)
        for d in b.datagrams_to_send():
            a.receive(d, now)


def events(endpoint: DtlsEndpoint) -> list[Any]:
    out = []
    while (event := endpoint.next_event()) is not None:
        out.append(event)
    return out


def contexts(done: HandshakeDone) -> tuple[Context, Context]:
    k = done.keys
    suite = k.suite.name
    return (
        Context(k.remote_key, k.remote_salt, suite, direction="inbound"),
        Context(k.local_key, k.local_salt, suite, direction="outbound"),
    )


# ---------------------------------------------------------------- ourselves


def test_certificate_is_ecdsa_p256_made_once_with_a_sha256_fingerprint() -> None:
    cert = local_certificate()
    assert cert is local_certificate()
    public = cert.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert cert.fingerprint.hash_func == "sha-256" and len(cert.fingerprint.digest()) == 32
    assert str(Fingerprint.parse(str(cert.fingerprint))) == str(cert.fingerprint)


@pytest.mark.parametrize("fingerprint_late", [False, True])
def test_two_endpoints_agree_on_keys(fingerprint_late: bool) -> None:
    server = DtlsEndpoint("server")
    client = DtlsEndpoint("client", LocalCertificate.generate())
    client.set_remote_fingerprints([server.certificate.fingerprint])
    if not fingerprint_late:
        server.set_remote_fingerprints([client.certificate.fingerprint])
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    assert client.state == "connected"
    if fingerprint_late:
        # The answer naming the client's fingerprint comes after its handshake: keys wait.
        assert server.state == "verifying" and events(server) == []
        server.set_remote_fingerprints([client.certificate.fingerprint])
    assert server.state == "connected"
    (s,), (c,) = events(server), events(client)
    assert isinstance(s, HandshakeDone) and isinstance(c, HandshakeDone)
    assert (s.role, c.role) == ("server", "client")
    assert s.keys.suite.name == "AES_CM_128_HMAC_SHA1_80"
    assert (s.keys.local_key, s.keys.local_salt) == (c.keys.remote_key, c.keys.remote_salt)
    assert (s.keys.remote_key, s.keys.remote_salt) == (c.keys.local_key, c.keys.local_salt)
    assert s.keys.local_key != s.keys.remote_key
    assert s.peer_fingerprint == str(client.certificate.fingerprint.value)
    assert s.keys.local_key.hex() not in repr(s) and str(list(s.keys.local_key)) not in repr(s)
    assert repr(s.keys.local_key)[2:-1] not in repr(s)  # no key material in repr
    server_in, server_out = contexts(s)
    client_in, client_out = contexts(c)
    assert server_in.unprotect_rtp(client_out.protect_rtp(RTP)) == RTP
    assert client_in.unprotect_rtp(server_out.protect_rtp(RTP)) == RTP
    assert server.handshake_seconds is not None and server.handshake_seconds >= 0


@pytest.mark.parametrize("late", [False, True])
def test_fingerprint_mismatch_fails_and_releases_no_keys(late: bool) -> None:
    server = DtlsEndpoint("server")
    client = DtlsEndpoint("client", LocalCertificate.generate())
    wrong = LocalCertificate.generate().fingerprint
    client.set_remote_fingerprints([server.certificate.fingerprint])
    if not late:
        server.set_remote_fingerprints([wrong])
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    if late:
        server.set_remote_fingerprints([wrong])
    (failed,) = events(server)
    assert isinstance(failed, DtlsFailed) and failed.reason == "fingerprint_mismatch"
    assert server.state == "failed"
    server.receive(b"\x16\xfe\xfd" + bytes(20), 1.0)  # nothing more is processed
    assert server.counters["after_failure"] == 1 and events(server) == []


def test_fingerprints_of_other_hashes_are_not_enough() -> None:
    server = DtlsEndpoint("server")
    client = DtlsEndpoint("client", LocalCertificate.generate())
    client.set_remote_fingerprints([server.certificate.fingerprint])
    sha1 = Fingerprint("sha-1", ":".join(["AB"] * 20))
    server.set_remote_fingerprints([sha1])
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    (failed,) = events(server)
    assert isinstance(failed, DtlsFailed) and failed.reason == "no_fingerprint"


def test_garbage_fails_the_handshake_without_raising() -> None:
    server = DtlsEndpoint("server")
    server.set_remote_fingerprints([local_certificate().fingerprint])
    server.receive(b"\x16\xfe\xfd\x00\x00" + bytes(8) + b"\x00\x05" + b"hello", 0.0)
    server.receive(b"\x17" * 40, 0.0)
    evs = events(server)
    assert all(isinstance(e, DtlsFailed) for e in evs)
    if evs:
        assert evs[0].reason == "handshake"


def test_handshake_packets_are_rate_limited() -> None:
    server = DtlsEndpoint("server", rate=10.0, burst=5)
    junk = b"\x16\xfe\xfd" + bytes(10)
    for _ in range(20):
        server.receive(junk, 5.0)  # same instant: only the burst passes
    assert server.counters["rate_limited"] >= 14


def test_handshake_timeout_on_the_callers_clock() -> None:
    client = DtlsEndpoint("client", handshake_timeout=10.0)
    client.set_remote_fingerprints([local_certificate().fingerprint])
    client.start(100.0)
    assert client.datagrams_to_send()  # the ClientHello
    timer = client.get_timer(100.0)
    assert timer is not None and timer <= 110.0
    client.handle_timer(105.0)
    assert client.state == "connecting"
    client.handle_timer(110.0)
    (failed,) = events(client)
    assert isinstance(failed, DtlsFailed) and failed.reason == "timeout"


def test_a_lost_flight_is_sent_again_by_the_timer() -> None:
    """OpenSSL's retransmission timer runs on its own clock (1 s at first): wait for it,
    bounded, without asserting how long it took."""
    client = DtlsEndpoint("client")
    client.start(0.0)
    first = client.datagrams_to_send()
    assert first and first[0][0] == 22  # handshake record
    again: list[bytes] = []
    for _ in range(60):  # at most about 6 s
        client.handle_timer(0.0)
        again = client.datagrams_to_send()
        if again:
            break
        time.sleep(0.1)
    assert again and again[0][0] == 22


def test_split_records_packs_whole_records_up_to_the_mtu() -> None:
    def record(n: int) -> bytes:
        return b"\x16\xfe\xfd" + bytes(8) + n.to_bytes(2, "big") + bytes(n)

    data = record(500) + record(500) + record(300) + record(1000)
    out = split_records(data, 1200)
    assert [len(d) for d in out] == [513 * 2, 313, 1013]
    assert b"".join(out) == data


# ---------------------------------------------------------------- RSA / SHA-1 (baresip 1.0)


def rsa_sha1_peer(role: str) -> tuple[SSL.Connection, Fingerprint]:
    pem = RSA_SHA1_PEM.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA1
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    # baresip offers both SHA1 profiles; we must pick _80.
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80:SRTP_AES128_CM_SHA1_32")
    conn = SSL.Connection(ctx, None)
    if role == "client":
        conn.set_connect_state()
    else:
        conn.set_accept_state()
    return conn, Fingerprint.from_digest("sha-256", cert.fingerprint(hashes.SHA256()))


def pump_openssl(ours: DtlsEndpoint, theirs: SSL.Connection) -> None:
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            theirs.do_handshake()
        out = b""
        while True:
            try:
                out += theirs.bio_read(65536)
            except SSL.WantReadError:
                break
        for d in split_records(out, 1200) if out else []:
            ours.receive(d, 0.0)
        for d in ours.datagrams_to_send():
            theirs.bio_write(d)


@pytest.mark.parametrize("our_role", ["server", "client"])
def test_rsa_sha1_peer_in_both_roles(our_role: str) -> None:
    theirs, fingerprint = rsa_sha1_peer("client" if our_role == "server" else "server")
    ours = DtlsEndpoint(our_role)  # type: ignore[arg-type]
    ours.set_remote_fingerprints([fingerprint])
    ours.start(0.0)
    pump_openssl(ours, theirs)
    (done,) = events(ours)
    assert isinstance(done, HandshakeDone), done
    assert theirs.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    if our_role == "client":
        assert "RSA" in done.cipher  # the RSA suites are what let us talk to baresip
    # Our keys equal what the peer's OpenSSL exports (RFC 5764 §4.2 layout).
    material = theirs.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    client_key, server_key = material[:16], material[16:32]
    client_salt, server_salt = material[32:46], material[46:]
    if our_role == "server":
        assert (done.keys.local_key, done.keys.local_salt) == (server_key, server_salt)
        assert (done.keys.remote_key, done.keys.remote_salt) == (client_key, client_salt)
    else:
        assert (done.keys.local_key, done.keys.local_salt) == (client_key, client_salt)


def test_rsa_peer_with_the_wrong_fingerprint_is_refused() -> None:
    theirs, _ = rsa_sha1_peer("client")
    ours = DtlsEndpoint("server")
    ours.set_remote_fingerprints([LocalCertificate.generate().fingerprint])
    ours.start(0.0)
    pump_openssl(ours, theirs)
    (failed,) = events(ours)
    assert isinstance(failed, DtlsFailed) and failed.reason == "fingerprint_mismatch"


# ---------------------------------------------------------------- aiortc


class _FakeIce:
    """What RTCDtlsTransport touches on its ICE transport (shared/peers README §5)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.rx: asyncio.Queue[bytes] = asyncio.Queue()
        self.tx: asyncio.Queue[bytes] = asyncio.Queue()

    async def _recv(self) -> bytes:
        return await self.rx.get()

    async def _send(self, data: bytes) -> None:
        await self.tx.put(data)


async def handshake_with_aiortc(our_role: str) -> tuple[DtlsEndpoint, HandshakeDone, Any]:
    ice = _FakeIce("controlling" if our_role == "client" else "controlled")
    theirs = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
    theirs._set_role("server" if our_role == "client" else "client")
    ours = DtlsEndpoint(our_role)  # type: ignore[arg-type]
    (their_fp,) = [f for f in theirs.getLocalParameters().fingerprints if f.algorithm == "sha-256"]
    ours.set_remote_fingerprints([Fingerprint("sha-256", their_fp.value)])
    our_fp = ours.certificate.fingerprint
    params = RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint("sha-256", our_fp.value)])
    loop = asyncio.get_running_loop()

    async def our_side() -> None:
        ours.start(loop.time())
        while ours.state in ("new", "connecting"):
            for d in ours.datagrams_to_send():
                await ice.rx.put(d)
            try:
                data = await asyncio.wait_for(ice.tx.get(), 0.2)
            except TimeoutError:
                ours.handle_timer(loop.time())
                continue
            ours.receive(data, loop.time())
        for d in ours.datagrams_to_send():
            await ice.rx.put(d)

    await asyncio.wait_for(asyncio.gather(theirs.start(params), our_side()), 15)
    assert theirs.state == "connected", theirs.state
    (done,) = events(ours)
    assert isinstance(done, HandshakeDone), done
    return ours, done, theirs


@pytest.mark.parametrize("our_role", ["server", "client"])
async def test_aiortc_in_both_roles_and_its_srtp_decrypts_in_our_core(our_role: str) -> None:
    _, done, theirs = await handshake_with_aiortc(our_role)
    try:
        # aiortc prefers AEAD GCM; we offer and accept only AES_CM_128_HMAC_SHA1_80.
        assert theirs._ssl.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
        assert "ECDSA" in done.cipher
        inbound, outbound = contexts(done)
        assert inbound.unprotect_rtp(theirs._tx_srtp.protect(RTP)) == RTP
        assert theirs._rx_srtp.unprotect(outbound.protect_rtp(RTP)) == RTP
        rtcp = struct.pack("!BBHI", 0x80, 201, 1, 0x1234) + bytes(4)
        assert inbound.unprotect_rtcp(theirs._tx_srtp.protect_rtcp(rtcp)) == rtcp
    finally:
        await theirs.stop()


async def test_aiortc_with_the_wrong_fingerprint_is_refused() -> None:
    ice = _FakeIce("controlled")
    theirs = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
    theirs._set_role("client")
    ours = DtlsEndpoint("server")
    ours.set_remote_fingerprints([LocalCertificate.generate().fingerprint])
    our_fp = ours.certificate.fingerprint
    params = RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint("sha-256", our_fp.value)])
    task = asyncio.ensure_future(theirs.start(params))
    try:
        for _ in range(20):
            data = await asyncio.wait_for(ice.tx.get(), 5)
            ours.receive(data, 0.0)
            for d in ours.datagrams_to_send():
                await ice.rx.put(d)
            if ours.state == "failed":
                break
        (failed,) = events(ours)
        assert isinstance(failed, DtlsFailed) and failed.reason == "fingerprint_mismatch"
    finally:
        task.cancel()
        await theirs.stop()
