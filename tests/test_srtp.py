"""The SRTP cores against libsrtp, against each other, and on their own.

Every test that takes ``impl`` runs on the C core (``media._srtp``) and on the
Python twin (``media._srtp_py``).  libsrtp (through pylibsrtp) is the real peer:
the differential tests send 10,000 random packets per suite each way with
sequence numbers that wrap (so the ROC moves), several SSRCs, reordering and
loss, then replay and tamper with packets; our output must equal libsrtp's byte
for byte.  The RFC and libsrtp known-answer vectors are in test_srtp_vectors.py.
"""

from __future__ import annotations

import hmac
import importlib
import os
import random
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import media.srtp
from media.suites import SUITES, SrtpError
from tests.peers import python_run

try:
    import pylibsrtp
except ImportError:  # pragma: no cover - the peer is part of the test extras
    pylibsrtp = None

REPO = Path(__file__).resolve().parent.parent
SUITE_NAMES = list(SUITES)
LIB_PROFILE = {
    "AES_CM_128_HMAC_SHA1_80": "SRTP_PROFILE_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": "SRTP_PROFILE_AES128_CM_SHA1_32",
}
N_PACKETS = 10_000  # per suite and direction (the issue asks for at least 10,000)


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The backend under test.  The C one must import: a missing build fails."""
    return importlib.import_module("media._srtp" if request.param == "c" else "media._srtp_py")


def libsrtp() -> Any:
    if pylibsrtp is None:
        pytest.fail("pylibsrtp is not importable: pip install pylibsrtp (in the test extras)")
    return pylibsrtp


def lib_pair(suite: str, key_salt: bytes) -> tuple[Any, Any]:
    """libsrtp sessions for any outbound / any inbound SSRC (window 128, its default)."""
    lib = libsrtp()
    profile = getattr(lib.Policy, LIB_PROFILE[suite])
    tx = lib.Session(
        lib.Policy(key=key_salt, ssrc_type=lib.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    )
    rx = lib.Session(
        lib.Policy(key=key_salt, ssrc_type=lib.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    )
    return tx, rx


def our_pair(impl: ModuleType, suite: str, key_salt: bytes, **kw: Any) -> tuple[Any, Any]:
    key, salt = key_salt[:16], key_salt[16:]
    return (
        impl.Context(key, salt, suite, direction="outbound", **kw),
        impl.Context(key, salt, suite, direction="inbound", **kw),
    )


def outcome(fn: Any, packet: bytes) -> bytes | str:
    """The result bytes, or the SrtpError reason."""
    try:
        result: bytes = fn(packet)
    except SrtpError as exc:
        return exc.reason
    return result


def rtp(seq: int, ssrc: int = 0x1234ABCD, payload: bytes = b"\x55" * 160, ts: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def rtcp(ssrc: int = 0x1234ABCD, body: bytes = b"\x66" * 20) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, (len(body) + 4) // 4, ssrc) + body


# ---------------------------------------------------------------- random traffic


@dataclass
class Packet:
    data: bytes
    header_len: int
    ssrc: int
    seq: int


def random_rtp(rng: random.Random, ssrc: int, seq: int, ts: int) -> Packet:
    """A random RTP packet: CSRCs and a header extension now and then, any
    marker and payload type, a payload of 0..1200 bytes."""
    cc = rng.choice((0,) * 12 + (1, 2, 15))
    ext = rng.random() < 0.15
    first = 0x80 | (0x10 if ext else 0) | cc
    second = rng.getrandbits(8)
    header = struct.pack("!BBHII", first, second, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    header += rng.randbytes(4 * cc)
    if ext:
        words = rng.randint(0, 4)
        header += struct.pack("!HH", 0xBEDE, words) + rng.randbytes(4 * words)
    return Packet(header + rng.randbytes(rng.randint(0, 1200)), len(header), ssrc, seq & 0xFFFF)


def rtp_traffic(rng: random.Random, n: int, n_ssrcs: int = 3) -> list[Packet]:
    """n packets from n_ssrcs interleaved streams.  Each stream starts close
    enough below 65535 that its sequence number wraps (ROC 0 -> 1); a few
    packets are lost (gaps of up to 40) and neighbours are swapped (reordering
    within the replay window)."""
    per_stream = n // n_ssrcs
    streams = [
        [rng.getrandbits(32), 65535 - rng.randrange(per_stream // 2), rng.getrandbits(32)]
        for _ in range(n_ssrcs)
    ]
    out = []
    for _ in range(n):
        s = streams[rng.randrange(n_ssrcs)]
        if rng.random() < 0.02:
            s[1] += rng.randint(1, 40)  # loss
        out.append(random_rtp(rng, s[0], s[1], s[2]))
        s[1] += 1
        s[2] += 160
    for i in range(len(out) - 8):
        if rng.random() < 0.03:  # reordering, a few packets deep
            j = i + rng.randint(1, 6)
            out[i], out[j] = out[j], out[i]
    return out


def random_rtcp(rng: random.Random, ssrc: int) -> bytes:
    body = rng.randbytes(rng.randint(0, 1200))
    pt = rng.choice((200, 201, 202, 203, 204, 205, 206))
    return struct.pack("!BBHI", 0x80 | rng.randint(0, 31), pt, len(body) // 4 + 1, ssrc) + body


def flip_bit(rng: random.Random, data: bytes, start: int, end: int) -> bytes:
    pos = rng.randrange(start, end)
    out = bytearray(data)
    out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def lib_refuses(fn: Any, packet: bytes) -> str:
    """libsrtp must refuse the packet; returns its error text."""
    with pytest.raises(pylibsrtp.Error) as err:
        fn(packet)
    return str(err.value)


# ---------------------------------------------------------------- differential: SRTP


@pytest.mark.interop
@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_srtp_against_libsrtp(impl: ModuleType, suite: str) -> None:
    """10,000 random packets each way: we protect and libsrtp unprotects, libsrtp
    protects and we unprotect; our SRTP equals libsrtp's byte for byte."""
    rng = random.Random(f"srtp-{suite}")
    key_salt = rng.randbytes(30)
    lib_tx, lib_rx = lib_pair(suite, key_salt)
    tx, rx = our_pair(impl, suite, key_salt)
    tag_len = SUITES[suite].rtp_tag_len
    traffic = rtp_traffic(rng, N_PACKETS)

    for p in traffic:
        ours = tx.protect_rtp(p.data)
        theirs = lib_tx.protect(p.data)
        assert ours == theirs, f"SSRC {p.ssrc:#x} seq {p.seq}"
        assert len(ours) == len(p.data) + tag_len
        assert ours[: p.header_len] == p.data[: p.header_len]  # header authenticated, not encrypted
        assert lib_rx.unprotect(ours) == p.data  # we protect, libsrtp unprotects
        assert rx.unprotect_rtp(theirs) == p.data  # libsrtp protects, we unprotect

    ssrcs = {p.ssrc for p in traffic}
    assert sorted(rx.ssrcs()) == sorted(ssrcs)
    assert all(rx.roc(ssrc) == 1 and tx.roc(ssrc) == 1 for ssrc in ssrcs), "every stream wrapped"
    assert rx.counters() == {
        "rtp_packets": N_PACKETS,
        "rtcp_packets": 0,
        "auth_failures": 0,
        "replays": 0,
        "short": 0,
        "format": 0,
        "ssrc_limit": 0,
    }
    assert tx.counters()["rtp_packets"] == N_PACKETS


@pytest.mark.interop
@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_srtp_replays_and_tampering_against_libsrtp(impl: ModuleType, suite: str) -> None:
    """Replayed packets (in the window and older than it) and packets with one
    bit flipped in the header, the payload or the tag are refused by us and by
    libsrtp, counted, and change nothing: the untouched packet still passes."""
    rng = random.Random(f"srtp-bad-{suite}")
    key_salt = rng.randbytes(30)
    lib_tx, lib_rx = lib_pair(suite, key_salt)
    _, rx = our_pair(impl, suite, key_salt)
    tag_len = SUITES[suite].rtp_tag_len
    traffic = rtp_traffic(rng, 2_000)
    protected = []
    for p in traffic:
        srtp = lib_tx.protect(p.data)
        protected.append((p, srtp))
        assert rx.unprotect_rtp(srtp) == p.data
        lib_rx.unprotect(srtp)

    # Replays: recent ones (inside the window) and old ones (behind it).
    replays = [protected[i] for i in range(len(protected) - 100, len(protected))]
    replays += rng.sample(protected[:1000], 150)
    for _, srtp in replays:
        assert outcome(rx.unprotect_rtp, srtp) == "replay"
        assert "replay" in lib_refuses(lib_rx.unprotect, srtp)
    assert rx.counters()["replays"] == len(replays)

    # Tampering: one flipped bit in the header, the payload or the tag of a
    # fresh packet, then the packet itself.
    reasons: dict[str, int] = {}
    streams = {p.ssrc: p for p, _ in protected}
    for i in range(300):
        last = streams[rng.choice(list(streams))]
        fresh = random_rtp(rng, last.ssrc, last.seq + 1, i)
        streams[last.ssrc] = fresh
        srtp = lib_tx.protect(fresh.data)
        body = len(srtp) - tag_len
        region = ("header", "payload", "tag")[i % 3]
        if region == "payload" and body == fresh.header_len:
            region = "tag"  # empty payload
        span = {
            "header": (0, fresh.header_len),
            "payload": (fresh.header_len, body),
            "tag": (body, len(srtp)),
        }[region]
        bad = flip_bit(rng, srtp, *span)
        reason = outcome(rx.unprotect_rtp, bad)
        if region == "header":
            # a flipped version or CC/X bit may make the header malformed, a
            # flipped sequence number may land on an index already seen
            assert reason in ("auth", "format", "replay"), region
        else:
            assert reason == "auth", region
        reasons[reason] = reasons.get(reason, 0) + 1  # type: ignore[index]
        lib_refuses(lib_rx.unprotect, bad)
        assert rx.unprotect_rtp(srtp) == fresh.data  # nothing moved
        lib_rx.unprotect(srtp)

    counters = rx.counters()
    assert counters["auth_failures"] == reasons.get("auth", 0) >= 200
    assert counters["format"] == reasons.get("format", 0)
    assert counters["replays"] == len(replays) + reasons.get("replay", 0)
    assert counters["rtp_packets"] == len(traffic) + 300


# ---------------------------------------------------------------- differential: SRTCP


@pytest.mark.interop
@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_srtcp_against_libsrtp(impl: ModuleType, suite: str) -> None:
    """SRTCP both ways, byte for byte, then replays and tampering.  Our first
    SRTCP index per SSRC is 0 (RFC 3711 §3.4), libsrtp's is 1: one packet per
    SSRC is sent ahead so the indices line up."""
    rng = random.Random(f"srtcp-{suite}")
    key_salt = rng.randbytes(30)
    lib_tx, lib_rx = lib_pair(suite, key_salt)
    tx, rx = our_pair(impl, suite, key_salt)
    overhead = SUITES[suite].rtcp_overhead
    ssrcs = [rng.getrandbits(32) for _ in range(3)]
    for ssrc in ssrcs:
        first = tx.protect_rtcp(rtcp(ssrc))
        assert first[-overhead : -overhead + 4] == b"\x80\x00\x00\x00"  # E=1, index 0
        assert lib_rx.unprotect_rtcp(first) == rtcp(ssrc)

    delivered = []
    for _ in range(3_000):
        packet = random_rtcp(rng, rng.choice(ssrcs))
        ours = tx.protect_rtcp(packet)
        theirs = lib_tx.protect_rtcp(packet)
        assert ours == theirs
        assert len(ours) == len(packet) + overhead
        assert lib_rx.unprotect_rtcp(ours) == packet
        assert rx.unprotect_rtcp(theirs) == packet
        delivered.append(theirs)
    assert rx.counters()["rtcp_packets"] == 3_000

    replays = delivered[-50:] + rng.sample(delivered[:2000], 50)
    for srtcp in replays:
        assert outcome(rx.unprotect_rtcp, srtcp) == "replay"
        assert "replay" in lib_refuses(lib_rx.unprotect_rtcp, srtcp)
    assert rx.counters()["replays"] == len(replays)

    auth = 0
    for i in range(300):
        packet = random_rtcp(rng, rng.choice(ssrcs))
        srtcp = lib_tx.protect_rtcp(packet)
        index_at = len(srtcp) - overhead
        span = [(0, 8), (8, index_at), (index_at, index_at + 4), (index_at + 4, len(srtcp))][i % 4]
        if span[0] == span[1]:
            span = (0, 8)
        bad = flip_bit(rng, srtcp, *span)
        reason = outcome(rx.unprotect_rtcp, bad)
        # the E|index word: a flipped index may name one already seen
        assert reason in (("auth", "replay", "format") if span[0] < 8 else ("auth", "replay"))
        if span not in ((0, 8), (index_at, index_at + 4)):
            assert reason == "auth"
        auth += reason == "auth"
        lib_refuses(lib_rx.unprotect_rtcp, bad)
        assert rx.unprotect_rtcp(srtcp) == packet
        lib_rx.unprotect_rtcp(srtcp)
    assert rx.counters()["auth_failures"] == auth >= 150


# ---------------------------------------------------------------- the C core against its twin


def scenario(impl: ModuleType, suite: str, seed: int) -> list[Any]:
    """A scripted mix of good and bad traffic; every outcome and counter, in order."""
    rng = random.Random(seed)
    key_salt = rng.randbytes(30)
    tx, rx = our_pair(impl, suite, key_salt, max_ssrcs=4)
    log: list[Any] = []
    sent: list[bytes] = []
    ssrcs = [rng.getrandbits(32) for _ in range(5)]  # one more than max_ssrcs
    seqs = {s: rng.choice((0, 100, 32760, 65500, 65535)) for s in ssrcs}
    for _ in range(1_500):
        action = rng.random()
        ssrc = rng.choice(ssrcs)
        if action < 0.55:
            seqs[ssrc] = (seqs[ssrc] + rng.choice((1, 1, 1, 2, 50, -3, 0))) & 0xFFFF
            p = random_rtp(rng, ssrc, seqs[ssrc], 0).data
            srtp = outcome(tx.protect_rtp, p)
            log.append(srtp)
            if isinstance(srtp, bytes):
                sent.append(srtp)
                log.append(outcome(rx.unprotect_rtp, srtp))
        elif action < 0.70:
            srtcp = outcome(tx.protect_rtcp, random_rtcp(rng, ssrc))
            log.append(srtcp)
            if isinstance(srtcp, bytes):
                log.append(outcome(rx.unprotect_rtcp, srtcp))
        elif action < 0.80 and sent:
            log.append(outcome(rx.unprotect_rtp, rng.choice(sent)))  # replay
        elif action < 0.90 and sent:
            victim = rng.choice(sent)
            log.append(outcome(rx.unprotect_rtp, flip_bit(rng, victim, 0, len(victim))))
        else:
            junk = rng.randbytes(rng.randint(0, 60))
            log.append(outcome(rx.unprotect_rtp, junk))
            log.append(outcome(rx.unprotect_rtcp, junk))
            log.append(outcome(tx.protect_rtp, junk))
            log.append(outcome(tx.protect_rtcp, junk))
    log.append(tx.counters())
    log.append(rx.counters())
    log.append([(s, tx.roc(s), rx.roc(s)) for s in ssrcs])
    log.append((tx.ssrcs(), rx.ssrcs()))
    return log


@pytest.mark.parametrize("suite", SUITE_NAMES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_and_python_agree(suite: str, seed: int) -> None:
    c = scenario(importlib.import_module("media._srtp"), suite, seed)
    py = scenario(importlib.import_module("media._srtp_py"), suite, seed)
    assert len(c) == len(py)
    for i, (a, b) in enumerate(zip(c, py, strict=True)):
        assert a == b, f"step {i}"
    reasons = {x for x in c if isinstance(x, str)}
    assert {"auth", "replay", "short", "format", "ssrc_limit"} <= reasons


@given(st.binary(max_size=120), st.sampled_from(SUITE_NAMES))
def test_c_and_python_agree_on_any_bytes(data: bytes, suite: str) -> None:
    """Arbitrary bytes into every transform of fresh contexts: same bytes or same reason."""
    key_salt = bytes(range(30))
    results = []
    for name in ("media._srtp", "media._srtp_py"):
        tx, rx = our_pair(importlib.import_module(name), suite, key_salt)
        results.append(
            [
                outcome(rx.unprotect_rtp, data),
                outcome(rx.unprotect_rtcp, data),
                outcome(tx.protect_rtp, data),
                outcome(tx.protect_rtcp, data),
                rx.counters(),
                tx.counters(),
            ]
        )
    assert results[0] == results[1]


# ---------------------------------------------------------------- ROC and the replay window


def test_roc_across_the_wrap(impl: ModuleType) -> None:
    """RFC 3711 §3.3.1: after 65535 comes 0 with ROC 1; a late packet from before
    the wrap is still decrypted with ROC 0 (Appendix A's v = ROC - 1)."""
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    packets = {seq: tx.protect_rtp(rtp(seq)) for seq in (65533, 65535, 0, 1)}
    late = tx.protect_rtp(rtp(65534))  # sent late: the sender estimates ROC 0 too
    assert tx.roc(0x1234ABCD) == 1
    for seq in (65533, 65535, 0, 1):
        assert rx.unprotect_rtp(packets[seq]) == rtp(seq)
    assert rx.roc(0x1234ABCD) == 1
    assert rx.unprotect_rtp(late) == rtp(65534)
    assert rx.roc(0x1234ABCD) == 1
    assert rx.roc(0x1) is None


def test_late_packet_at_stream_start_keeps_roc_zero(impl: ModuleType) -> None:
    """A stream that starts at seq 5 and then sees 65530: ROC stays 0, as in
    libsrtp (Appendix A alone would guess ROC 2^32 - 1)."""
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    lib_tx, lib_rx = lib_pair("AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    for seq in (5, 65530, 65531):
        srtp = tx.protect_rtp(rtp(seq))
        assert srtp == lib_tx.protect(rtp(seq))
        assert rx.unprotect_rtp(srtp) == lib_rx.unprotect(srtp) == rtp(seq)
    assert tx.roc(0x1234ABCD) == rx.roc(0x1234ABCD) == 0


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_replay_window_edges(impl: ModuleType, direction: str) -> None:
    """128 packets (RFC 3711 §3.3.2): with 1000 the highest, 873 (127 behind) is
    accepted once, 872 (128 behind) is too old, 1000 again is a replay.  The
    sender refuses to reuse an index as libsrtp does."""
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    lib_tx, lib_rx = lib_pair("AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    if direction == "outbound":

        def ours(seq: int) -> bytes | str:
            return outcome(tx.protect_rtp, rtp(seq))

        def theirs(seq: int) -> bytes | str:
            try:
                return bytes(lib_tx.protect(rtp(seq)))
            except pylibsrtp.Error:
                return "replay"
    else:
        # each from a fresh sender: one sender would refuse 872 after 1000
        prepared = {
            seq: lib_pair("AES_CM_128_HMAC_SHA1_80", bytes(range(30)))[0].protect(rtp(seq))
            for seq in (1000, 873, 872)
        }

        def ours(seq: int) -> bytes | str:
            return outcome(rx.unprotect_rtp, prepared[seq])

        def theirs(seq: int) -> bytes | str:
            try:
                return bytes(lib_rx.unprotect(prepared[seq]))
            except pylibsrtp.Error:
                return "replay"

    expected = [(1000, bytes), (873, bytes), (873, "replay"), (872, "replay"), (1000, "replay")]
    for seq, verdict in expected:
        a, b = ours(seq), theirs(seq)
        assert a == b, seq
        assert (a == "replay") if verdict == "replay" else isinstance(a, bytes), seq
    ctx = tx if direction == "outbound" else rx
    assert ctx.counters()["replays"] == 3


def test_window_slides_far_ahead(impl: ModuleType) -> None:
    """A jump of more than the window forgets everything older."""
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    old = [tx.protect_rtp(rtp(seq)) for seq in range(10, 20)]
    ahead = tx.protect_rtp(rtp(20 + 200))
    assert rx.unprotect_rtp(old[5]) == rtp(15)
    assert rx.unprotect_rtp(ahead) == rtp(220)
    assert outcome(rx.unprotect_rtp, old[6]) == "replay"  # 204 behind


def test_srtcp_unencrypted_packet(impl: ModuleType) -> None:
    """E=0 (RFC 3711 §3.4): authenticated, not encrypted; passed through as is."""
    key_salt = bytes(range(30))
    _, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", key_salt)
    auth_key = impl._kdf(key_salt[:16], key_salt[16:], 4, 20)  # SRTCP auth key, label 4
    packet = rtcp(0x42)
    signed = packet + struct.pack("!I", 7)  # E=0, index 7
    srtcp = signed + hmac.digest(auth_key, signed, "sha1")[:10]
    assert rx.unprotect_rtcp(srtcp) == packet
    assert outcome(rx.unprotect_rtcp, srtcp) == "replay"


# ---------------------------------------------------------------- API


def test_backend_selection() -> None:
    assert media.srtp.backend() in ("c", "python")
    if os.environ.get(media.srtp.ENV_VAR, "") in ("", "auto", "c"):
        assert media.srtp.backend() == "c"
        assert media.srtp.FALLBACK_WARNING is None
    assert media.srtp.SrtpError is SrtpError
    assert importlib.import_module("media._srtp").SrtpError is SrtpError
    assert importlib.import_module("media._srtp_py").SrtpError is SrtpError


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return python_run(["-c", code], **env)


def test_environment_switch() -> None:
    code = "import media.srtp as s; print(s.backend(), s.Context.__module__)"
    python = _run(code, {"SIPEDGE_SRTP_BACKEND": "python"})
    assert python.stdout.split() == ["python", "media._srtp_py"], python.stderr
    assert _run(code, {"SIPEDGE_SRTP_BACKEND": "c"}).stdout.split() == ["c", "media._srtp"]
    bad = _run(code, {"SIPEDGE_SRTP_BACKEND": "rust"})
    assert bad.returncode != 0 and "SIPEDGE_SRTP_BACKEND" in bad.stderr


def test_fallback_when_the_extension_is_missing_is_loud() -> None:
    code = (
        "import sys; sys.modules['media._srtp'] = None\n"
        "import media.srtp as s\n"
        "print(s.backend()); print(s.FALLBACK_WARNING is not None)\n"
        "tx = s.Context(bytes(16), bytes(14), 'AES_CM_128_HMAC_SHA1_80', direction='outbound')\n"
        "print(len(tx.protect_rtp(bytes([0x80]) + bytes(11))))\n"
    )
    result = _run(code, {"SIPEDGE_SRTP_BACKEND": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "True", "22"]
    assert result.stderr.count("falling back to the pure-Python SRTP") == 1
    forced = _run(code, {"SIPEDGE_SRTP_BACKEND": "c"})
    assert forced.returncode != 0 and "media._srtp" in forced.stderr.splitlines()[-1]


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_in_place_api(impl: ModuleType, suite: str) -> None:
    """*_into(buffer, length) transform a writable buffer in place, with the
    same bytes as the copying API; a refused packet leaves the buffer alone."""
    key_salt = bytes(range(30))
    tx, rx = our_pair(impl, suite, key_salt)
    tx2, rx2 = our_pair(impl, suite, key_salt)
    packet = rtp(7, payload=bytes(range(160)))
    buf = bytearray(1500)
    buf[: len(packet)] = packet
    n = tx.protect_rtp_into(buf, len(packet))
    assert bytes(buf[:n]) == tx2.protect_rtp(packet)
    m = rx.unprotect_rtp_into(memoryview(buf), n)
    assert bytes(buf[:m]) == packet
    assert rx2.unprotect_rtp(tx2.protect_rtp(rtp(8))) == rtp(8)

    srtp = bytearray(tx2.protect_rtp(rtp(9)))
    srtp[-1] ^= 1
    before = bytes(srtp)
    with pytest.raises(SrtpError) as err:
        rx.unprotect_rtp_into(srtp, len(srtp))
    assert err.value.reason == "auth" and bytes(srtp) == before

    report = rtcp(0x77)
    buf = bytearray(report) + bytearray(SUITES[suite].rtcp_overhead)
    n = tx.protect_rtcp_into(buf, len(report))
    assert n == len(buf)
    assert rx.unprotect_rtcp_into(buf, n) == len(report) and bytes(buf[: len(report)]) == report

    tight = bytearray(rtp(10))  # no room for the tag
    with pytest.raises(ValueError, match="too small"):
        tx.protect_rtp_into(tight, len(tight))
    assert bytes(tight) == rtp(10)
    with pytest.raises(ValueError):
        tx.protect_rtp_into(bytearray(20), 21)
    with pytest.raises(BufferError):
        tx.protect_rtp_into(rtp(11) + bytes(10), 172)
    assert tx.protect_rtp(memoryview(rtp(12))) == tx2.protect_rtp(bytearray(rtp(12)))


def test_c_api_capsule_runs_the_core_without_python() -> None:
    """The se_srtp_capi table in media._srtp._C_API, as the fast path of issue 7
    uses it: context_core() with the GIL, then the transforms in place on a C
    buffer with the GIL released (ctypes CFUNCTYPE calls drop it)."""
    import ctypes

    c = importlib.import_module("media._srtp")
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    transform = ctypes.CFUNCTYPE(
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        size_p,
    )

    class Counters(ctypes.Structure):
        _fields_ = [
            ("rtp_packets", ctypes.c_uint64),
            ("rtcp_packets", ctypes.c_uint64),
            ("refused", ctypes.c_uint64 * 6),
        ]

    class Capi(ctypes.Structure):
        _fields_ = [
            ("version", ctypes.c_uint),
            ("context_core", ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)),
            ("protect_rtp", transform),
            ("unprotect_rtp", transform),
            ("protect_rtcp", transform),
            ("unprotect_rtcp", transform),
            ("counters", ctypes.CFUNCTYPE(ctypes.POINTER(Counters), ctypes.c_void_p)),
        ]

    capi = Capi.from_address(get_pointer(c._C_API, b"media._srtp._C_API"))
    assert capi.version == 1
    tx, rx = our_pair(c, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    ref_tx, _ = our_pair(c, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    core_tx, core_rx = capi.context_core(tx), capi.context_core(rx)
    assert core_tx and core_rx
    with pytest.raises(TypeError):
        capi.context_core(object())

    packet = rtp(1, payload=bytes(range(160)))
    buf = ctypes.create_string_buffer(packet, 200)
    out = ctypes.c_size_t()
    assert capi.protect_rtp(core_tx, buf, len(packet), buf, 200, ctypes.byref(out)) == 0
    assert buf.raw[: out.value] == ref_tx.protect_rtp(packet)
    srtp_len = out.value
    buf.raw = bytes(buf.raw[: srtp_len - 1]) + bytes([buf.raw[srtp_len - 1] ^ 1])
    before = buf.raw
    assert capi.unprotect_rtp(core_rx, buf, srtp_len, buf, 200, ctypes.byref(out)) == 3  # auth
    assert buf.raw == before
    buf.raw = bytes(before[: srtp_len - 1]) + bytes([before[srtp_len - 1] ^ 1])
    assert capi.unprotect_rtp(core_rx, buf, srtp_len, buf, 200, ctypes.byref(out)) == 0
    assert buf.raw[: out.value] == packet
    assert capi.protect_rtp(core_tx, buf, len(packet), buf, len(packet) + 9, ctypes.byref(out)) == 6
    assert capi.protect_rtp(core_rx, buf, len(packet), buf, 200, ctypes.byref(out)) == 7
    counters = capi.counters(core_rx).contents
    assert (counters.rtp_packets, counters.refused[3]) == (1, 1)
    assert rx.counters()["auth_failures"] == 1 and rx.counters()["rtp_packets"] == 1


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_oversized_packets_are_refused(impl: ModuleType, direction: str) -> None:
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    huge = rtp(1, payload=bytes(65600))
    if direction == "outbound":
        assert outcome(tx.protect_rtp, huge) == outcome(tx.protect_rtcp, huge) == "format"
    else:
        assert outcome(rx.unprotect_rtp, huge) == outcome(rx.unprotect_rtcp, huge) == "format"


def test_direction_is_enforced(impl: ModuleType) -> None:
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    for call in (tx.unprotect_rtp, tx.unprotect_rtcp, rx.protect_rtp, rx.protect_rtcp):
        with pytest.raises(ValueError, match="direction"):
            call(rtp(1) + bytes(14))
    assert (tx.direction, rx.direction) == ("outbound", "inbound")
    assert tx.suite == "AES_CM_128_HMAC_SHA1_80"


def test_ssrc_limit(impl: ModuleType) -> None:
    """A context tracks at most max_ssrcs SSRCs; unauthenticated packets from
    new SSRCs never take a slot."""
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)), max_ssrcs=2)
    a = tx.protect_rtp(rtp(1, 1))
    forged = bytearray(tx.protect_rtp(rtp(1, 2)))
    forged[-1] ^= 0x80
    assert outcome(rx.unprotect_rtp, bytes(forged)) == "auth"
    assert rx.ssrcs() == []
    assert rx.unprotect_rtp(a) == rtp(1, 1)
    b = tx.protect_rtp(rtp(2, 2))
    assert rx.unprotect_rtp(b) == rtp(2, 2)
    assert outcome(tx.protect_rtp, rtp(1, 3)) == "ssrc_limit"
    assert outcome(tx.protect_rtcp, rtcp(3)) == "ssrc_limit"
    other_tx, _ = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    c = other_tx.protect_rtp(rtp(1, 3))
    assert outcome(rx.unprotect_rtp, c) == "ssrc_limit"
    assert rx.ssrcs() == [1, 2] and rx.counters()["ssrc_limit"] == 1
    assert tx.counters()["ssrc_limit"] == 2


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "short"),
        (bytes([0x80]) + bytes(10), "short"),
        (bytes([0x40]) + bytes(11), "format"),  # version 1
        (bytes([0x81]) + bytes(11), "format"),  # one CSRC, none there
        (bytes([0x90]) + bytes(11), "format"),  # extension bit, no extension
        (bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "format"),  # ext overruns
    ],
)
def test_malformed_rtp(impl: ModuleType, packet: bytes, reason: str) -> None:
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    assert outcome(tx.protect_rtp, packet) == reason
    # the same header with room for a tag behind it
    srtp_reason = outcome(rx.unprotect_rtp, packet + bytes(10) if packet else packet)
    assert srtp_reason == reason
    assert tx.counters()[reason] == 1 and rx.counters()[reason] == 1


def test_malformed_rtcp(impl: ModuleType) -> None:
    tx, rx = our_pair(impl, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    assert outcome(tx.protect_rtcp, bytes([0x80]) + bytes(6)) == "short"
    assert outcome(tx.protect_rtcp, bytes([0x00]) + bytes(7)) == "format"
    assert outcome(rx.unprotect_rtcp, bytes([0x80]) + bytes(20)) == "short"  # 8 + 4 + 10 = 22
    assert outcome(rx.unprotect_rtcp, bytes([0x00]) + bytes(21)) == "format"
    assert outcome(rx.unprotect_rtcp, bytes([0x80]) + bytes(21)) == "auth"


def test_constructor_checks(impl: ModuleType) -> None:
    key, salt = bytes(16), bytes(14)
    with pytest.raises(ValueError, match="master key"):
        impl.Context(bytes(15), salt, "AES_CM_128_HMAC_SHA1_80", direction="inbound")
    with pytest.raises(ValueError, match="master salt"):
        impl.Context(key, bytes(16), "AES_CM_128_HMAC_SHA1_80", direction="inbound")
    with pytest.raises(ValueError, match="unsupported"):
        impl.Context(key, salt, "AEAD_AES_128_GCM", direction="inbound")
    with pytest.raises(ValueError, match="direction"):
        impl.Context(key, salt, "AES_CM_128_HMAC_SHA1_80", direction="both")
    with pytest.raises(TypeError):
        impl.Context(key, salt, "AES_CM_128_HMAC_SHA1_80")
    with pytest.raises(ValueError, match="max_ssrcs"):
        impl.Context(key, salt, "AES_CM_128_HMAC_SHA1_80", direction="inbound", max_ssrcs=0)
    with pytest.raises(TypeError):
        impl.Context(16, 14, "AES_CM_128_HMAC_SHA1_80", direction="inbound")
    with pytest.raises(TypeError):
        impl.Context(key, salt, 80, direction="inbound")
    ctx = impl.Context(key, salt, SUITES["AES_CM_128_HMAC_SHA1_32"], direction="outbound")
    with pytest.raises(TypeError):
        ctx.protect_rtp(172)
    with pytest.raises(TypeError):
        ctx.protect_rtp("not bytes")
    assert ctx.suite == "AES_CM_128_HMAC_SHA1_32"
    assert "AES_CM_128_HMAC_SHA1_32" in repr(ctx)


def test_error_carries_reason() -> None:
    err = SrtpError("replay")
    assert err.reason == "replay" and str(err).startswith("replay: ")
    with pytest.raises(ValueError):
        SrtpError("bogus")  # type: ignore[arg-type]
