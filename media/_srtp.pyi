"""Type stub for the C extension ``media._srtp`` (built from ``media/_srtp.c``).

The pure-Python twin ``media._srtp_py`` has the same API; ``media.srtp`` picks one.
"""

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Final, Literal, final

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

PLANE_DROPS: Final[tuple[str, ...]]
"""The data plane's drop reasons, by index (media.latching.DropReason names, plus
``too_long``, ``punt_overflow`` and ``punt_limited``)."""
PLANE_MAX_DATAGRAM: Final[int]
PLANE_PUNT_RATE: Final[float]
"""The default per-leg punt budget: punts per second ..."""
PLANE_PUNT_BURST: Final[float]
"""... and at once (media/fastpath.h says why)."""

Address = tuple[str, int]
# (handle, kind (media.rtp.PacketKind), on the RTCP socket, datagram, source)
Punted = tuple[int, int, bool, bytes, Address]

@final
class Plane:
    """The relay's C data plane (media/fastpath.c): loop threads that forward RTP and
    SRTP between legs without the GIL.  media.fastpath is the API to use."""

    def __init__(
        self,
        loops: int,
        *,
        max_legs: int = 65536,
        rtcp_rate: float = 100.0,
        rtcp_burst: float = 200.0,
        punt_rate: float = ...,
        punt_burst: float = ...,
        cpus: list[int] | tuple[int, ...] | None = None,
        poll_us: int = 0,
        poll_busy_pct: int = 0,
    ) -> None: ...
    @property
    def punt_fd(self) -> int: ...
    @property
    def loops(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def add_leg(
        self, fd: int, rtcp_fd: int = -1, *, mux: bool = False, webrtc: bool = False, loop: int = -1
    ) -> int: ...
    def remove_leg(self, handle: int, /) -> dict[str, Any]: ...
    def pair(self, a: int, b: int | None, /) -> None: ...
    def set_flags(self, handle: int, *, mux: bool, webrtc: bool) -> None: ...
    def set_crypto(
        self, handle: int, inbound: Context | None, outbound: Context | None, /
    ) -> None: ...
    def set_addresses(
        self,
        handle: int,
        rtp_source: Address | None,
        rtcp_source: Address | None,
        rtp_destination: Address | None,
        rtcp_destination: Address | None,
    ) -> None: ...
    def set_endpoint_host(self, handle: int, host: str | None, /) -> None: ...
    def addresses(
        self, handle: int, /
    ) -> tuple[Address | None, Address | None, Address | None, Address | None]: ...
    def counters(self, handle: int, /) -> dict[str, Any]: ...
    def ssrcs(self, handle: int, /) -> tuple[int | None, int | None]: ...
    def drop_sources(self, handle: int, /) -> dict[str, Address]: ...
    def set_clock(self, seconds: float | None, /) -> None: ...
    def forward(
        self, handle: int, rtcp: bool, datagram: ReadableBuffer, /
    ) -> tuple[str, bool, int]: ...
    def drain(self, max: int = 1024, /) -> list[Punted]: ...
    def loop_stats(self) -> list[dict[str, Any]]: ...

@final
class SipScanner:
    """The C twin of ``sip.message._scan`` (media/sipscan.c); sip.message makes one."""

    def __init__(
        self,
        header_field: type,
        sip_error: type[Exception],
        compact_forms: dict[str, str],
        single_headers: AbstractSet[str],
        direct: bool = True,
        factory: Callable[[str, str, str, str | None], Any] | None = None,
    ) -> None: ...
    def scan(
        self, data: ReadableBuffer, max_headers: int, max_line_length: int, /
    ) -> tuple[str, list[Any], list[str], str | None, int]:
        """(start line, HeaderFields, their keys and values flat (key, value, key,
        value, ...), first repeated single header or None, body offset) of one
        message, or ``sip_error``."""
    @property
    def direct(self) -> bool:
        """True if fields are built by writing their slots instead of calling the type."""
    @property
    def cached_names(self) -> int:
        """Header names in the name cache (at most 1024)."""

def untrack_value(obj: object, /) -> object: ...
def untrack_graph(obj: object, types: tuple[type, ...], /) -> object: ...
def sip_join(lines: list[str], body: bytes, /) -> bytes:
    """``"\\r\\n".join(lines).encode() + body`` (sip.message.Message.serialize)."""

@final
class SipValueParser:
    """C fast paths of the typed SIP header values (media/sipvalues.c); sip.message
    makes one.  Each method returns what the Python parser returns for ``text``
    (an object of the class passed in), or None: "not handled here, ask it"."""

    def __init__(
        self,
        via: type,
        uri: type,
        name_addr: type,
        contact: type,
        cseq: type,
        direct: bool = True,
        factories: tuple[Callable[..., Any] | None, ...] | None = None,
    ) -> None: ...
    def via(self, text: str, /) -> Any: ...
    def uri(self, text: str, /) -> Any: ...
    def name_addr(self, text: str, /) -> Any: ...
    def contact(self, text: str, /) -> Any: ...
    def cseq(self, text: str, /) -> Any: ...
    @property
    def direct(self) -> dict[str, bool]:
        """Per method: True if its objects are built by writing their slots."""

@final
class SipHeaderChecker:
    """The C twin of ``sip.message._check_headers`` (media/sipcheck.c); sip.message
    makes one on its tables and memos."""

    def __init__(
        self,
        sip_error: type[Exception],
        request: type,
        typed: dict[str, Callable[[list[str]], Any]],
        list_headers: frozenset[str],
        required: tuple[str, ...],
        via: Any,
        name_addr: Any,
        contact: Any,
        cseq: Any,
        content_type: Any,
    ) -> None: ...
    def check(self, msg: Any, pairs: list[str], duplicate: str | None, /) -> None:
        """Fill ``msg.headers._typed`` as _check_headers does, or raise its SipError."""
    def split(self, value: str, /) -> list[str]:
        """``sip._abnf.split_list(value)``, the split check() applies to list headers."""
    @property
    def handled(self) -> list[str]:
        """Keys whose typed value C makes (their _TYPED parser is the one it was made with)."""
