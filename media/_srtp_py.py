"""The pure-Python twin of the C SRTP core ``media._srtp`` (RFC 3711).

Same API, same verdicts, same bytes: ``tests/test_srtp.py`` runs every SRTP
test on both and compares them with each other and with libsrtp.  This one is
the reference a reader can check against the RFC line by line, and the
fallback where the extension could not be built (``media.srtp`` logs that it is
slow: about 13x the C core's CPU per packet called from Python, 20x in a C loop).

AES comes from ``cryptography``: one AES-128-ECB encryptor per session key,
fed the counter blocks of each packet (RFC 3711 §4.1.1, exactly the keystream
AES-CTR would give); HMAC-SHA1 from ``cryptography`` as well, keyed once per
session key and copied per packet (RFC 3711 §4.2.1).

The rules of the C file hold here too: a refused packet changes neither the
caller's buffer nor the context (only the counters); the first check that fails
names the reason, in the same order as the C core.
"""

from __future__ import annotations

import hmac as _hmac
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC

from media.suites import AUTH_HMAC_SHA1, CIPHER_AES_CM_128, SrtpError, SrtpSuite, get_suite

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["MAX_SSRCS", "REPLAY_WINDOW", "Context", "SrtpError", "backend"]

REPLAY_WINDOW: Final = 128  # RFC 3711 §3.3.2 asks for at least 64
MAX_SSRCS: Final = 65536
_MAX_INDEX: Final = (1 << 48) - 1  # §3.3.1: 2^48 SRTP packets per master key
_MAX_SRTCP_INDEX: Final = 0x7FFFFFFF  # §3.4: 31-bit SRTCP index
_E_FLAG: Final = 0x80000000
_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1
_MAX_PACKET: Final = 65535  # larger than any UDP payload: refused as "format"
_RTP_HEADER: Final = 12
_RTCP_HEADER: Final = 8  # SRTCP encrypts from the octet after the first SSRC
_SRTCP_INDEX: Final = 4

# KDF labels, RFC 3711 §4.3.2
_LABEL_RTP_ENC, _LABEL_RTP_AUTH, _LABEL_RTP_SALT = 0, 1, 2
_LABEL_RTCP_ENC, _LABEL_RTCP_AUTH, _LABEL_RTCP_SALT = 3, 4, 5

Direction = Literal["inbound", "outbound"]


def backend() -> str:
    """Which implementation this is: ``"python"``."""
    return "python"


def _bytes(data: ReadableBuffer) -> bytes:
    """bytes of a bytes-like object; TypeError for anything else (bytes(16) would
    make 16 zero bytes, where the C core's buffer protocol refuses an int)."""
    return data if type(data) is bytes else memoryview(data).tobytes()


class _Space(Exception):
    """The destination buffer cannot hold the result (the caller's mistake)."""


# ---------------------------------------------------------------- AES-CM and the KDF


def _ecb(key: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()


def _aes_cm_xor(aes: CipherContext, iv: int, data: bytes) -> bytes:
    """data XOR the AES-CM keystream from the 128-bit IV (its low 16 bits zero):
    block j is AES(k, IV + j), RFC 3711 §4.1.1."""
    n = len(data)
    if n == 0:
        return b""
    blocks = b"".join((iv + j).to_bytes(16, "big") for j in range((n + 15) >> 4))
    keystream = aes.update(blocks)
    return (int.from_bytes(data, "big") ^ int.from_bytes(keystream[:n], "big")).to_bytes(n, "big")


def _keystream(session_key: bytes, iv: bytes, length: int) -> bytes:
    """length bytes of AES-CM keystream from a 16-byte IV (for the B.2 vectors)."""
    if len(session_key) != 16 or len(iv) != 16 or not 0 <= length <= 1 << 20:
        raise ValueError("need a 16-byte key, a 16-byte IV, length 0..2^20")
    return _aes_cm_xor(_ecb(bytes(session_key)), int.from_bytes(iv, "big"), bytes(length))


def _kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 with key_derivation_rate 0: x = (label << 48) XOR salt,
    the output is AES-CM(master key, IV = x * 2^16) over ``length`` zero bytes."""
    if len(master_key) != 16 or len(master_salt) != 14 or not 0 <= label <= 255:
        raise ValueError("need a 16-byte key, a 14-byte salt, label 0..255, length 0..4096")
    if not 0 <= length <= 4096:
        raise ValueError("need a 16-byte key, a 14-byte salt, label 0..255, length 0..4096")
    x = int.from_bytes(master_salt, "big") ^ (label << 48)
    return _aes_cm_xor(_ecb(bytes(master_key)), x << 16, bytes(length))


class _Session:
    """The session keys of one protocol (SRTP or SRTCP), RFC 3711 §4.3."""

    __slots__ = ("aes", "mac", "salt")

    def __init__(self, master_key: bytes, master_salt: bytes, labels: tuple[int, int, int]):
        enc, auth, salt = labels
        self.aes = _ecb(_kdf(master_key, master_salt, enc, 16))
        # Keyed once; copy() per packet is the precomputed inner/outer state.
        self.mac = HMAC(_kdf(master_key, master_salt, auth, 20), hashes.SHA1())
        # k_s * 2^16, ready to XOR with the SSRC and index terms of the IV
        self.salt = int.from_bytes(_kdf(master_key, master_salt, salt, 14), "big") << 16

    def tag(self, *parts: bytes) -> bytes:
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()


# ---------------------------------------------------------------- replay window and ROC


class _Window:
    """A 128-packet sliding window (RFC 3711 §3.3.2): bit d of ``bits`` set means
    index ``top - d`` was accepted."""

    __slots__ = ("bits", "seen", "top")

    def __init__(self) -> None:
        self.top = 0
        self.bits = 0
        self.seen = False

    def check(self, index: int) -> bool:
        """True if index is new and not older than the window."""
        if not self.seen or index > self.top:
            return True
        d = self.top - index
        return d < REPLAY_WINDOW and not (self.bits >> d) & 1

    def add(self, index: int) -> None:
        if not self.seen:
            self.seen, self.top, self.bits = True, index, 1
        elif index > self.top:
            self.bits = ((self.bits << (index - self.top)) | 1) & _WINDOW_MASK
            self.top = index
        else:
            self.bits |= 1 << (self.top - index)

    def estimate(self, seq: int) -> int:
        """RFC 3711 §3.3.1 / Appendix A: the 48-bit index of ``seq``, from the
        highest index so far.  As in libsrtp, a stream whose highest index is at
        most 2^15 has ROC 0 (Appendix A would guess ROC - 1 = 2^32 - 1 there)."""
        if not self.seen or self.top <= 0x8000:
            return seq
        roc, s_l = self.top >> 16, self.top & 0xFFFF
        if s_l < 0x8000:
            v = roc - 1 if seq - s_l > 0x8000 else roc
        else:
            v = roc + 1 if s_l - 0x8000 > seq else roc
        return (v << 16) | seq


class _Stream:
    """What a context keeps per SSRC."""

    __slots__ = ("rtcp", "rtcp_next", "rtp", "ssrc")

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.rtcp_next = 0  # outbound: SRTCP index of the next packet
        self.rtp = _Window()  # its top is ROC << 16 | SEQ
        self.rtcp = _Window()  # inbound SRTCP indices


def _rtp_header_len(p: bytes, length: int) -> int:
    """RTP header length (fixed part, CSRCs, extension; RFC 3550 §5.1, §5.3.1),
    or -1 if the version is not 2 or the header does not fit in length bytes."""
    if p[0] >> 6 != 2:
        return -1
    h = _RTP_HEADER + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if h + 4 > length:
            return -1
        h += 4 + 4 * int.from_bytes(p[h + 2 : h + 4], "big")
    return -1 if h > length else h


_COUNTERS: Final = (
    "rtp_packets",
    "rtcp_packets",
    "auth",
    "replay",
    "short",
    "format",
    "ssrc_limit",
)


class Context:
    """One direction of SRTP and SRTCP under one master key, for up to
    ``max_ssrcs`` SSRCs: ``"outbound"`` contexts protect, ``"inbound"`` ones
    unprotect.  A refused packet raises :class:`SrtpError` with its reason."""

    __slots__ = (
        "_count",
        "_direction",
        "_last",
        "_max_ssrcs",
        "_rtcp",
        "_rtcp_tag",
        "_rtp",
        "_rtp_tag",
        "_streams",
        "_suite",
        "__weakref__",
    )

    def __init__(
        self,
        master_key: ReadableBuffer,
        master_salt: ReadableBuffer,
        suite: str | SrtpSuite,
        *,
        direction: Direction,
        max_ssrcs: int = 16,
    ) -> None:
        key, salt = _bytes(master_key), _bytes(master_salt)
        if direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be 'inbound' or 'outbound', not {direction!r}")
        if not 1 <= max_ssrcs <= MAX_SSRCS:
            raise ValueError(f"max_ssrcs must be in 1..{MAX_SSRCS}")
        s = get_suite(suite)
        if (
            s.cipher != CIPHER_AES_CM_128
            or s.auth != AUTH_HMAC_SHA1
            or s.master_key_len != 16
            or s.master_salt_len != 14
            or not 1 <= s.rtp_tag_len <= 20
            or not 1 <= s.rtcp_tag_len <= 20
        ):
            raise ValueError(f"the Python SRTP core does not implement suite {s!r}")
        if len(key) != s.master_key_len:
            raise ValueError(f"master key must be {s.master_key_len} bytes, got {len(key)}")
        if len(salt) != s.master_salt_len:
            raise ValueError(f"master salt must be {s.master_salt_len} bytes, got {len(salt)}")
        self._suite = s
        self._direction: Direction = direction
        self._max_ssrcs = max_ssrcs
        self._rtp_tag = s.rtp_tag_len
        self._rtcp_tag = s.rtcp_tag_len
        self._rtp = _Session(key, salt, (_LABEL_RTP_ENC, _LABEL_RTP_AUTH, _LABEL_RTP_SALT))
        self._rtcp = _Session(key, salt, (_LABEL_RTCP_ENC, _LABEL_RTCP_AUTH, _LABEL_RTCP_SALT))
        self._streams: dict[int, _Stream] = {}
        self._count = dict.fromkeys(_COUNTERS, 0)

    # ------------------------------------------------------------ public API

    @property
    def suite(self) -> str:
        """RFC 4568 name of the suite."""
        return self._suite.name

    @property
    def direction(self) -> Direction:
        return self._direction

    def protect_rtp(self, packet: ReadableBuffer) -> bytes:
        """RTP in, SRTP out (outbound contexts)."""
        data = _bytes(packet)
        return self._protect_rtp(data, len(data) + self._rtp_tag)

    def unprotect_rtp(self, packet: ReadableBuffer) -> bytes:
        """SRTP in, RTP out (inbound contexts)."""
        data = _bytes(packet)
        return self._unprotect_rtp(data, len(data))

    def protect_rtcp(self, packet: ReadableBuffer) -> bytes:
        """RTCP in, SRTCP out (outbound contexts)."""
        data = _bytes(packet)
        return self._protect_rtcp(data, len(data) + _SRTCP_INDEX + self._rtcp_tag)

    def unprotect_rtcp(self, packet: ReadableBuffer) -> bytes:
        """SRTCP in, RTCP out (inbound contexts)."""
        data = _bytes(packet)
        return self._unprotect_rtcp(data, len(data))

    def protect_rtp_into(self, buffer: WriteableBuffer, length: int) -> int:
        """In place: the RTP packet in buffer[:length] becomes SRTP; returns its length."""
        return self._into(self._protect_rtp, buffer, length)

    def unprotect_rtp_into(self, buffer: WriteableBuffer, length: int) -> int:
        """In place: the SRTP packet in buffer[:length] becomes RTP; returns its length."""
        return self._into(self._unprotect_rtp, buffer, length)

    def protect_rtcp_into(self, buffer: WriteableBuffer, length: int) -> int:
        """In place: the RTCP packet in buffer[:length] becomes SRTCP; returns its length."""
        return self._into(self._protect_rtcp, buffer, length)

    def unprotect_rtcp_into(self, buffer: WriteableBuffer, length: int) -> int:
        """In place: the SRTCP packet in buffer[:length] becomes RTCP; returns its length."""
        return self._into(self._unprotect_rtcp, buffer, length)

    def counters(self) -> dict[str, int]:
        """Packets transformed, and packets refused by reason."""
        c = self._count
        return {
            "rtp_packets": c["rtp_packets"],
            "rtcp_packets": c["rtcp_packets"],
            "auth_failures": c["auth"],
            "replays": c["replay"],
            "short": c["short"],
            "format": c["format"],
            "ssrc_limit": c["ssrc_limit"],
        }

    def roc(self, ssrc: int) -> int | None:
        """Roll-over counter of the highest SRTP index of that SSRC (None if unseen)."""
        if not 0 <= operator.index(ssrc) <= 0xFFFFFFFF:
            raise ValueError("SSRC must fit in 32 bits")
        stream = self._streams.get(ssrc)
        if stream is None or not stream.rtp.seen:
            return None
        return stream.rtp.top >> 16

    def ssrcs(self) -> list[int]:
        """The SSRCs this context tracks, oldest first."""
        return list(self._streams)

    def __repr__(self) -> str:
        return (
            f"<media._srtp_py.Context {self._suite.name} {self._direction}, "
            f"{len(self._streams)} SSRCs>"
        )

    # ------------------------------------------------------------ the transforms

    def _refuse(self, reason: Literal["short", "format", "auth", "replay", "ssrc_limit"]) -> None:
        self._count[reason] += 1
        raise SrtpError(reason)

    def _check_direction(self, wanted: Direction) -> None:
        if self._direction != wanted:
            raise ValueError(
                "wrong direction: protect needs an outbound context, unprotect an inbound one"
            )

    def _stream_for_send(self, ssrc: int) -> _Stream:
        stream = self._streams.get(ssrc)
        if stream is None:
            if len(self._streams) >= self._max_ssrcs:
                self._refuse("ssrc_limit")
            stream = self._streams[ssrc] = _Stream(ssrc)
        return stream

    def _protect_rtp(self, p: bytes, cap: int) -> bytes:
        self._check_direction("outbound")
        if len(p) > _MAX_PACKET:
            self._refuse("format")
        n = len(p)
        if n < _RTP_HEADER:
            self._refuse("short")
        h = _rtp_header_len(p, n)
        if h < 0:
            self._refuse("format")
        if cap < n + self._rtp_tag:
            raise _Space
        ssrc = int.from_bytes(p[8:12], "big")
        stream = self._stream_for_send(ssrc)
        # The sender estimates its index like a receiver (as libsrtp does): a
        # relay forwarding reordered RTP gets the right ROC and never encrypts
        # two packets under one index.
        index = stream.rtp.estimate(int.from_bytes(p[2:4], "big"))
        if index > _MAX_INDEX or not stream.rtp.check(index):
            self._refuse("replay")
        # IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16), §4.1.1
        iv = self._rtp.salt ^ (ssrc << 64) ^ (index << 16)
        out = p[:h] + _aes_cm_xor(self._rtp.aes, iv, p[h:])
        # tag = HMAC(k_a, header || encrypted payload || ROC), §4.2
        tag = self._rtp.tag(out, (index >> 16).to_bytes(4, "big"))
        stream.rtp.add(index)
        self._count["rtp_packets"] += 1
        return out + tag[: self._rtp_tag]

    def _unprotect_rtp(self, p: bytes, cap: int) -> bytes:
        self._check_direction("inbound")
        if len(p) > _MAX_PACKET:
            self._refuse("format")
        n, tag_len = len(p), self._rtp_tag
        if n < _RTP_HEADER + tag_len:
            self._refuse("short")
        body = n - tag_len
        h = _rtp_header_len(p, body)
        if h < 0:
            self._refuse("format")
        if cap < body:
            raise _Space
        ssrc = int.from_bytes(p[8:12], "big")
        stream = self._streams.get(ssrc)
        if stream is None and len(self._streams) >= self._max_ssrcs:
            self._refuse("ssrc_limit")
        window = stream.rtp if stream is not None else _Window()
        index = window.estimate(int.from_bytes(p[2:4], "big"))
        if index > _MAX_INDEX or not window.check(index):
            self._refuse("replay")
        tag = self._rtp.tag(p[:body], (index >> 16).to_bytes(4, "big"))
        if not _hmac.compare_digest(tag[:tag_len], p[body:]):
            self._refuse("auth")
        iv = self._rtp.salt ^ (ssrc << 64) ^ (index << 16)
        out = p[:h] + _aes_cm_xor(self._rtp.aes, iv, p[h:body])
        if stream is None:  # authenticated: now it may take a slot
            stream = self._streams[ssrc] = _Stream(ssrc)
        stream.rtp.add(index)
        self._count["rtp_packets"] += 1
        return out

    def _protect_rtcp(self, p: bytes, cap: int) -> bytes:
        """RFC 3711 §3.4: encrypted from octet 8, then E=1 and the 31-bit SRTCP
        index (0 for an SSRC's first packet), then the tag over all of it."""
        self._check_direction("outbound")
        if len(p) > _MAX_PACKET:
            self._refuse("format")
        n, tag_len = len(p), self._rtcp_tag
        if n < _RTCP_HEADER:
            self._refuse("short")
        if p[0] >> 6 != 2:
            self._refuse("format")
        if cap < n + _SRTCP_INDEX + tag_len:
            raise _Space
        ssrc = int.from_bytes(p[4:8], "big")
        stream = self._stream_for_send(ssrc)
        index = stream.rtcp_next
        if index > _MAX_SRTCP_INDEX:
            self._refuse("replay")  # 2^31 packets: the key is spent
        iv = self._rtcp.salt ^ (ssrc << 64) ^ (index << 16)
        out = p[:_RTCP_HEADER] + _aes_cm_xor(self._rtcp.aes, iv, p[_RTCP_HEADER:])
        out += (index | _E_FLAG).to_bytes(4, "big")
        tag = self._rtcp.tag(out)
        stream.rtcp_next = index + 1
        self._count["rtcp_packets"] += 1
        return out + tag[:tag_len]

    def _unprotect_rtcp(self, p: bytes, cap: int) -> bytes:
        """A packet with E=0 was authenticated but not encrypted: passed through."""
        self._check_direction("inbound")
        if len(p) > _MAX_PACKET:
            self._refuse("format")
        n, tag_len = len(p), self._rtcp_tag
        if n < _RTCP_HEADER + _SRTCP_INDEX + tag_len:
            self._refuse("short")
        if p[0] >> 6 != 2:
            self._refuse("format")
        body = n - tag_len
        rtcp_len = body - _SRTCP_INDEX
        if cap < rtcp_len:
            raise _Space
        ssrc = int.from_bytes(p[4:8], "big")
        stream = self._streams.get(ssrc)
        if stream is None and len(self._streams) >= self._max_ssrcs:
            self._refuse("ssrc_limit")
        e_index = int.from_bytes(p[rtcp_len:body], "big")
        index = e_index & _MAX_SRTCP_INDEX
        window = stream.rtcp if stream is not None else _Window()
        if not window.check(index):
            self._refuse("replay")
        tag = self._rtcp.tag(p[:body])
        if not _hmac.compare_digest(tag[:tag_len], p[body:]):
            self._refuse("auth")
        if e_index & _E_FLAG:
            iv = self._rtcp.salt ^ (ssrc << 64) ^ (index << 16)
            out = p[:_RTCP_HEADER] + _aes_cm_xor(self._rtcp.aes, iv, p[_RTCP_HEADER:rtcp_len])
        else:
            out = p[:rtcp_len]
        if stream is None:
            stream = self._streams[ssrc] = _Stream(ssrc)
        stream.rtcp.add(index)
        self._count["rtcp_packets"] += 1
        return out

    @staticmethod
    def _into(
        transform: Callable[[bytes, int], bytes], buffer: WriteableBuffer, length: int
    ) -> int:
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise BufferError("Object is not writable.")
        if not 0 <= length <= view.nbytes:
            raise ValueError("length must be within the buffer")
        try:
            out = transform(bytes(view[:length]), view.nbytes)
        except _Space:
            raise ValueError("buffer too small for the result") from None
        view[: len(out)] = out
        return len(out)
