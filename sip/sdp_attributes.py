"""Typed values of SDP attributes, and the low-level checks they share with :mod:`sip.sdp`.

Each class is a frozen value with ``X.parse(text)`` and ``str(x)`` as inverses for well-formed
text (the text after ``a=<name>:``): ``RtpMap``, ``Fmtp``, ``Rtcp``, ``RtcpFb``, ``Group``,
``Fingerprint``, ``Candidate``, ``CryptoKey``, ``Crypto``; the ``SRTP_KEY_SALT_LENGTHS`` table
of SDES suites; the enums ``Direction`` and ``Setup`` for attribute values. ``Connection``
(``c=``) lives here too because ``a=rtcp`` embeds one (RFC 3605 §2.1).

Import these from :mod:`sip.sdp`, which re-exports them; this module must not import
:mod:`sip.sdp` (that module builds on the helpers below). Malformed text raises
:class:`~sip.errors.SipError`; reasons never quote the input, which may carry keys.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from sip.errors import SipError

__all__ = [
    "SRTP_KEY_SALT_LENGTHS",
    "Candidate",
    "Connection",
    "Crypto",
    "CryptoKey",
    "Direction",
    "Fingerprint",
    "Fmtp",
    "Group",
    "Rtcp",
    "RtcpFb",
    "RtpMap",
    "Setup",
]

# RFC 8866 §9: token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E
_TOKEN: Final = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
# A host name in c=/o=/candidates. RFC 8866 §9 has FQDN = 4*(alpha-numeric / "-" / "."); we
# take the RFC 1123 label form without the 4-character minimum, and allow "_", which Windows
# machine names put into o= lines.
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
_FQDN_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# RFC 8122 §5: fingerprint = 2UHEX *(":" 2UHEX); lower case accepted as some stacks send it.
_FINGERPRINT_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
# RFC 8839 §5.1: ice-char = ALPHA / DIGIT / "+" / "/"
_ICE_CHARS_RE: Final = re.compile(r"[A-Za-z0-9+/]{1,32}")
_IPV4_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE: Final = re.compile(rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}")


def _digits(text: str, what: str, hi: int | None = None, max_len: int = 20) -> int:
    # str.isdigit() alone would accept non-ASCII digits; the length cap keeps int() away from
    # its 4300-digit ValueError and rejects absurd values early.
    if not (0 < len(text) <= max_len and text.isascii() and text.isdigit()):
        raise SipError(f"bad {what}")
    n = int(text)
    if hi is not None and n > hi:
        raise SipError(f"{what} out of range")
    return n


def _token(text: str, what: str) -> str:
    if _TOKEN_RE.fullmatch(text) is None:
        raise SipError(f"bad {what}")
    return text


def _check_host(addrtype: str, host: str, what: str) -> None:
    """Validate an IP4/IP6 literal or FQDN (RFC 8866 §5.7 and §9)."""
    if ":" in host:
        if addrtype != "IP6":
            raise SipError(f"{what}: IPv6 address without IP6 addrtype")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SipError(f"bad {what} address") from None
    elif host.replace(".", "").isdigit():
        # A regex rather than ipaddress.IPv4Address: five times faster on the per-call path.
        if addrtype != "IP4":
            raise SipError(f"{what}: IPv4 address without IP4 addrtype")
        if _IPV4_RE.fullmatch(host) is None:
            raise SipError(f"bad {what} address")
    elif len(host) > 255 or _FQDN_RE.fullmatch(host) is None:
        raise SipError(f"bad {what} address")


def _check_net(nettype: str, addrtype: str, what: str) -> None:
    if nettype == "IN" and addrtype in ("IP4", "IP6"):
        return
    _token(nettype, f"{what} nettype")
    _token(addrtype, f"{what} addrtype")
    # RFC 8866 §5.7: for nettype IN the address types are IP4 and IP6. Other nettypes
    # (RFC 3108 ATM, ...) are carried opaquely; a relay will not touch them.
    if nettype == "IN" and addrtype not in ("IP4", "IP6"):
        raise SipError(f"bad {what} addrtype")


class Direction(enum.StrEnum):
    """Media direction attributes (RFC 8866 §6.7; RFC 3264 §5.1 / §6.1)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


class Setup(enum.StrEnum):
    """``a=setup`` roles (RFC 4145 §4, used for DTLS by RFC 5763 §5)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"
    HOLDCONN = "holdconn"


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=`` (RFC 8866 §5.7). ``address`` is the wire text, multicast ``/ttl/count`` included."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Connection:
        parts = text.split(" ")
        if len(parts) != 3:
            raise SipError("bad c= line")
        nettype, addrtype, address = parts
        _check_net(nettype, addrtype, "c=")
        host, *suffix = address.split("/")
        # RFC 8866 §5.7: IP4 multicast is addr/ttl[/count], IP6 multicast is addr[/count].
        if len(suffix) > (2 if addrtype == "IP4" else 1):
            raise SipError("bad c= address")
        for part in suffix:
            _digits(part, "c= ttl or count", max_len=5)
        if nettype == "IN":
            _check_host(addrtype, host, "c=")
        elif not host:
            raise SipError("bad c= address")
        return cls(nettype, addrtype, address)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP4`` or ``IN IP6`` chosen from the address literal (or IP4 for a name)."""
        addrtype = "IP6" if ":" in address else "IP4"
        _check_host(addrtype, address, "c=")
        return cls("IN", addrtype, address)

    @property
    def host(self) -> str:
        """The address without any multicast TTL / count suffix."""
        return self.address.partition("/")[0]

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` (or ``::``): the RFC 2543 hold address, see RFC 3264 §8.4."""
        return self.nettype == "IN" and self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` (RFC 8866 §6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, text: str) -> RtpMap:
        pt, sep, rest = text.partition(" ")
        parts = rest.split("/")
        if not sep or len(parts) not in (2, 3):
            raise SipError("bad rtpmap")
        channels = _digits(parts[2], "rtpmap channels", max_len=3) if len(parts) == 3 else None
        return cls(
            _digits(pt, "rtpmap payload type", 127),
            _token(parts[0], "rtpmap encoding"),
            _digits(parts[1], "rtpmap clock rate", max_len=10),
            channels,
        )

    def __str__(self) -> str:
        tail = "" if self.channels is None else f"/{self.channels}"
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{tail}"


@dataclass(frozen=True, slots=True)
class Fmtp:
    """``a=fmtp:<format> <parameters>`` (RFC 8866 §6.15); parameters kept as text."""

    fmt: str
    params: str

    @classmethod
    def parse(cls, text: str) -> Fmtp:
        fmt, sep, params = text.partition(" ")
        if not sep:
            raise SipError("bad fmtp")
        return cls(_token(fmt, "fmtp format"), params)

    def parameters(self) -> dict[str, str]:
        """``a=b;c=d`` as a dict; a bare item (``0-15`` of telephone-event) maps to ``""``."""
        out: dict[str, str] = {}
        for item in self.params.split(";"):
            key, _, value = item.strip().partition("=")
            if key:
                out[key] = value
        return out

    def __str__(self) -> str:
        return f"{self.fmt} {self.params}"


@dataclass(frozen=True, slots=True)
class Rtcp:
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605 §2.1)."""

    port: int
    connection: Connection | None = None

    @classmethod
    def parse(cls, text: str) -> Rtcp:
        port, sep, rest = text.partition(" ")
        return cls(_digits(port, "rtcp port", 65535), Connection.parse(rest) if sep else None)

    def __str__(self) -> str:
        return str(self.port) if self.connection is None else f"{self.port} {self.connection}"


@dataclass(frozen=True, slots=True)
class RtcpFb:
    """``a=rtcp-fb:<pt|*> <type> [<parameter>]`` (RFC 4585 §4.2), e.g. ``96 nack pli``."""

    fmt: str
    type: str
    parameter: str | None = None

    @classmethod
    def parse(cls, text: str) -> RtcpFb:
        parts = text.split(" ", 2)
        if len(parts) < 2:
            raise SipError("bad rtcp-fb")
        fmt = parts[0] if parts[0] == "*" else _token(parts[0], "rtcp-fb format")
        return cls(fmt, _token(parts[1], "rtcp-fb type"), parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        tail = "" if self.parameter is None else f" {self.parameter}"
        return f"{self.fmt} {self.type}{tail}"


@dataclass(frozen=True, slots=True)
class Group:
    """``a=group:<semantics> <mid>...`` (RFC 5888 §5), e.g. BUNDLE (RFC 9143)."""

    semantics: str
    mids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Group:
        semantics, *mids = text.split(" ")
        for mid in mids:
            _token(mid, "group identification-tag")
        return cls(_token(semantics, "group semantics"), tuple(mids))

    def __str__(self) -> str:
        return " ".join((self.semantics, *self.mids))


# Fingerprint digest sizes for the hash functions of RFC 8122 §5 (RFC 3279 names).
_DIGEST_SIZES: Final[dict[str, int]] = {
    "sha-1": 20,
    "sha-224": 28,
    "sha-256": 32,
    "sha-384": 48,
    "sha-512": 64,
    "md5": 16,
    "md2": 16,
}


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """``a=fingerprint:<hash-func> <XX:XX:...>`` (RFC 8122 §5)."""

    hash_func: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        hash_func, sep, value = text.partition(" ")
        if not sep or _FINGERPRINT_RE.fullmatch(value) is None:
            raise SipError("bad fingerprint")
        size = _DIGEST_SIZES.get(hash_func.lower())
        if size is not None and len(value) != 3 * size - 1:
            raise SipError("fingerprint length does not match its hash function")
        return cls(_token(hash_func, "fingerprint hash function"), value)

    @classmethod
    def from_digest(cls, hash_func: str, digest: bytes) -> Fingerprint:
        return cls(hash_func, digest.hex(":").upper())

    def digest(self) -> bytes:
        return bytes.fromhex(self.value.replace(":", ""))

    def __str__(self) -> str:
        return f"{self.hash_func} {self.value}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """``a=candidate`` (RFC 8839 §5.1)::

    foundation SP component-id SP transport SP priority SP connection-address SP port
    SP "typ" SP cand-type [SP "raddr" SP addr] [SP "rport" SP port] *(SP name SP value)
    """

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Candidate:
        parts = text.split(" ")
        if len(parts) < 8 or parts[6] != "typ" or len(parts) % 2:
            raise SipError("bad candidate")
        if _ICE_CHARS_RE.fullmatch(parts[0]) is None:
            raise SipError("bad candidate foundation")
        address = parts[4]
        # The address may be IP4, IP6 or an FQDN (RFC 8839 §5.1; mDNS "<uuid>.local").
        _check_host("IP6" if ":" in address else "IP4", address, "candidate")
        rest = parts[8:]
        raddr = rport = None
        if rest[:1] == ["raddr"]:
            raddr = rest[1]
            _check_host("IP6" if ":" in raddr else "IP4", raddr, "candidate raddr")
            rest = rest[2:]
        if rest[:1] == ["rport"]:
            rport = _digits(rest[1], "candidate rport", 65535)
            rest = rest[2:]
        ext = tuple(
            (_token(rest[i], "candidate extension"), rest[i + 1]) for i in range(0, len(rest), 2)
        )
        return cls(
            parts[0],
            _digits(parts[1], "candidate component", 256, max_len=3),
            _token(parts[2], "candidate transport"),
            _digits(parts[3], "candidate priority", 2**32 - 1, max_len=10),
            address,
            _digits(parts[5], "candidate port", 65535),
            _token(parts[7], "candidate type"),
            raddr,
            rport,
            ext,
        )

    def __str__(self) -> str:
        out = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        if self.related_address is not None:
            out += ("raddr", self.related_address)
        if self.related_port is not None:
            out += ("rport", str(self.related_port))
        for name, value in self.extensions:
            out += (name, value)
        return " ".join(out)


# SDES suites: (master key, master salt) lengths in bytes. RFC 4568 §6.2 (AES_CM_128, F8),
# RFC 6188 §7.1 (AES_192/256_CM), RFC 7714 (AEAD_AES_*_GCM, 96-bit salt).
SRTP_KEY_SALT_LENGTHS: Final[dict[str, tuple[int, int]]] = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14),
    "AES_CM_128_HMAC_SHA1_32": (16, 14),
    "F8_128_HMAC_SHA1_80": (16, 14),
    "AES_192_CM_HMAC_SHA1_80": (24, 14),
    "AES_192_CM_HMAC_SHA1_32": (24, 14),
    "AES_256_CM_HMAC_SHA1_80": (32, 14),
    "AES_256_CM_HMAC_SHA1_32": (32, 14),
    "AEAD_AES_128_GCM": (16, 12),
    "AEAD_AES_256_GCM": (32, 12),
}


def _b64decode(text: str) -> bytes:
    # Some stacks drop the "=" padding of 46-byte AES-256 keys; restore it before decoding.
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SipError("bad crypto key encoding") from None


@dataclass(frozen=True, slots=True)
class CryptoKey:
    """One ``inline:<key||salt>[|<lifetime>][|<mki>:<length>]`` key-param (RFC 4568 §9.2).
    ``key_salt`` is the base64 text; it is left out of ``repr`` so keys do not reach logs."""

    key_salt: str = field(repr=False)
    lifetime: str | None = None
    mki: int | None = None
    mki_length: int | None = None

    @classmethod
    def parse(cls, text: str) -> CryptoKey:
        method, sep, info = text.partition(":")
        if method != "inline" or not sep:
            raise SipError("unsupported crypto key method")
        key_salt, *extra = info.split("|")
        if not key_salt or len(extra) > 2:
            raise SipError("bad crypto key-params")
        _b64decode(key_salt)
        lifetime = mki = mki_length = None
        if extra and ":" not in extra[0]:
            # lifetime = ["2^"] 1*(DIGIT)
            lifetime = extra.pop(0)
            _digits(lifetime.removeprefix("2^"), "crypto lifetime")
        if extra:
            value, sep, length = extra.pop().partition(":")
            if not sep or extra:
                raise SipError("bad crypto key-params")
            mki = _digits(value, "crypto MKI value", max_len=40)
            mki_length = _digits(length, "crypto MKI length", 128, max_len=3)
            if mki_length == 0:
                raise SipError("crypto MKI length out of range")
        return cls(key_salt, lifetime, mki, mki_length)

    def decode(self) -> bytes:
        """The concatenated master key and salt."""
        return _b64decode(self.key_salt)

    def __str__(self) -> str:
        out = "inline:" + self.key_salt
        if self.lifetime is not None:
            out += "|" + self.lifetime
        if self.mki is not None:
            out += f"|{self.mki}:{self.mki_length}"
        return out


@dataclass(frozen=True, slots=True)
class Crypto:
    """``a=crypto:<tag> <suite> <key-params> [<session-params>]`` (RFC 4568 §9.1)."""

    tag: int
    suite: str
    keys: tuple[CryptoKey, ...]
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Crypto:
        # RFC 4568 §9.1 separates fields by 1*WSP.
        parts = text.split()
        if len(parts) < 3:
            raise SipError("bad crypto attribute")
        tag = _digits(parts[0], "crypto tag", max_len=9)
        suite = _token(parts[1], "crypto suite")
        keys = tuple(CryptoKey.parse(k) for k in parts[2].split(";"))
        lengths = SRTP_KEY_SALT_LENGTHS.get(suite)
        if lengths is not None:
            for key in keys:
                if len(key.decode()) != sum(lengths):
                    raise SipError("crypto key length does not match its suite")
        return cls(tag, suite, keys, tuple(parts[3:]))

    @classmethod
    def make(
        cls, tag: int, suite: str, key: bytes, salt: bytes, lifetime: str | None = None
    ) -> Crypto:
        """A single-key crypto attribute; raises SipError if the lengths do not fit ``suite``."""
        lengths = SRTP_KEY_SALT_LENGTHS.get(suite)
        if lengths is not None and (len(key), len(salt)) != lengths:
            raise SipError("crypto key length does not match its suite")
        encoded = base64.b64encode(key + salt).decode("ascii")
        return cls(tag, suite, (CryptoKey(encoded, lifetime),))

    def key_and_salt(self, index: int = 0) -> tuple[bytes, bytes]:
        """Master key and master salt of key-param ``index``, split per the suite table."""
        lengths = SRTP_KEY_SALT_LENGTHS.get(self.suite)
        if lengths is None:
            raise SipError("unknown crypto suite")
        if not 0 <= index < len(self.keys):
            raise SipError("no such crypto key-param")
        raw = self.keys[index].decode()
        if len(raw) != sum(lengths):
            raise SipError("crypto key length does not match its suite")
        return raw[: lengths[0]], raw[lengths[0] :]

    def __str__(self) -> str:
        keys = ";".join(str(k) for k in self.keys)
        return " ".join((str(self.tag), self.suite, keys, *self.session_params))
