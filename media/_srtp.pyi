"""Type stub for the C extension ``media._srtp`` (built from ``media/_srtp.c``).

The pure-Python twin ``media._srtp_py`` has the same API; ``media.srtp`` picks one.
"""

from typing import Final, Literal, final

from _typeshed import ReadableBuffer, WriteableBuffer

from media.suites import SrtpError as SrtpError
from media.suites import SrtpSuite

REPLAY_WINDOW: Final[int]
MAX_SSRCS: Final[int]
_C_API: object
"""Capsule ``media._srtp._C_API``: the se_srtp_capi table for C loops (see _srtp.c)."""

@final
class Context:
    """One direction of SRTP and SRTCP under one master key (RFC 3711), for up to
    ``max_ssrcs`` SSRCs: ``"outbound"`` contexts protect, ``"inbound"`` ones
    unprotect.  A refused packet raises :class:`media.suites.SrtpError`."""

    def __init__(
        self,
        master_key: ReadableBuffer,
        master_salt: ReadableBuffer,
        suite: str | SrtpSuite,
        *,
        direction: Literal["inbound", "outbound"],
        max_ssrcs: int = 16,
    ) -> None: ...
    @property
    def suite(self) -> str:
        """RFC 4568 name of the suite."""
    @property
    def direction(self) -> Literal["inbound", "outbound"]: ...
    def protect_rtp(self, packet: ReadableBuffer, /) -> bytes:
        """RTP in, SRTP out (outbound contexts)."""
    def unprotect_rtp(self, packet: ReadableBuffer, /) -> bytes:
        """SRTP in, RTP out (inbound contexts)."""
    def protect_rtcp(self, packet: ReadableBuffer, /) -> bytes:
        """RTCP in, SRTCP out (outbound contexts)."""
    def unprotect_rtcp(self, packet: ReadableBuffer, /) -> bytes:
        """SRTCP in, RTCP out (inbound contexts)."""
    def protect_rtp_into(self, buffer: WriteableBuffer, length: int, /) -> int:
        """In place: buffer[:length] RTP becomes SRTP; room for the tag needed."""
    def unprotect_rtp_into(self, buffer: WriteableBuffer, length: int, /) -> int:
        """In place: buffer[:length] SRTP becomes RTP; returns the RTP length."""
    def protect_rtcp_into(self, buffer: WriteableBuffer, length: int, /) -> int:
        """In place: buffer[:length] RTCP becomes SRTCP; room for index and tag needed."""
    def unprotect_rtcp_into(self, buffer: WriteableBuffer, length: int, /) -> int:
        """In place: buffer[:length] SRTCP becomes RTCP; returns the RTCP length."""
    def counters(self) -> dict[str, int]:
        """rtp_packets, rtcp_packets, auth_failures, replays, short, format, ssrc_limit."""
    def roc(self, ssrc: int, /) -> int | None:
        """Roll-over counter of the highest SRTP index of that SSRC (None if unseen)."""
    def ssrcs(self) -> list[int]:
        """The SSRCs this context tracks, oldest first."""

def backend() -> str:
    """Which implementation this is: ``"c"``."""

def openssl_version() -> str:
    """Version string of the libcrypto loaded at run time."""

def openssl_version_number() -> int:
    """``OpenSSL_version_num()`` of the libcrypto loaded at run time."""

def _kdf(
    master_key: ReadableBuffer, master_salt: ReadableBuffer, label: int, length: int, /
) -> bytes:
    """RFC 3711 §4.3.1 key derivation (rate 0): ``length`` bytes for ``label``."""

def _keystream(session_key: ReadableBuffer, iv: ReadableBuffer, length: int, /) -> bytes:
    """``length`` bytes of AES-CM keystream from a 16-byte IV (RFC 3711 §4.1.1)."""

def _bench_raw(n: int, /) -> dict[str, float]:
    """ns per op of bare OpenSSL AES-128-CTR(160 B) and HMAC-SHA1(182 B), best of 5."""

def _bench_core(
    outbound: Context, inbound: Context, packet: ReadableBuffer, n: int, /
) -> tuple[float, float]:
    """ns per protect and per unprotect of packet, from a C loop, best of 5."""
