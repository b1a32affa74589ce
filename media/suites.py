"""The one table of SRTP crypto suites, and the error both SRTP backends raise.

Every part of sipedge that names an SRTP suite reads it here: SDES (RFC 4568
``a=crypto`` lines), DTLS-SRTP (RFC 5764 protection profiles, OpenSSL's
``use_srtp`` names) and the SRTP cores themselves (``media._srtp`` in C and
``media._srtp_py``, which both build their contexts from :func:`get_suite`).
Adding a row here is the whole of "supporting a suite" for signalling; the cores
refuse a row whose cipher or authentication they do not implement.

:class:`SrtpError` lives here, not in a backend, so that the C core and its
Python twin raise the same class: the C module imports it from this module when
it loads.  This module imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# What the cores implement (RFC 3711 §4.1.1 AES-CM, §4.2.1 HMAC-SHA1).
CIPHER_AES_CM_128: Final = "AES_CM_128"
AUTH_HMAC_SHA1: Final = "HMAC_SHA1"


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    """One SRTP crypto suite, with every length a signalling layer or a core needs."""

    # RFC 4568 §6.2 crypto-suite name, as in an SDES a=crypto line.
    name: str
    # RFC 5764 §4.1.2 protection profile: its name and its two-byte identifier.
    dtls_profile: str
    dtls_profile_id: int
    # The name OpenSSL's SSL_CTX_set_tlsext_use_srtp() and
    # SSL_get_selected_srtp_profile() use for that profile.
    openssl_profile: str
    cipher: str
    auth: str
    # Master key and master salt (RFC 3711 §8.2), in bytes; SDES inline keys are
    # the two concatenated (RFC 4568 §6.1).
    master_key_len: int
    master_salt_len: int
    # Session keys derived from them (RFC 3711 §4.3): n_e, n_a, n_s in bytes.
    session_key_len: int
    session_auth_key_len: int
    session_salt_len: int
    # Authentication tags in bytes.  SRTCP keeps an 80-bit tag even for the _32
    # suite: RFC 5764 §4.1.2 lists SRTCP_auth_tag_length 80 for
    # SRTP_AES128_CM_HMAC_SHA1_32, RFC 3711 §5.2 makes 80 bits the SRTCP default,
    # and libsrtp's srtp_crypto_policy_set_from_profile_for_rtcp() does the same.
    rtp_tag_len: int
    rtcp_tag_len: int
    # Key lifetime limits (RFC 4568 §6.2.1): at most 2^48 SRTP packets or 2^31
    # SRTCP packets under one master key.
    max_srtp_packets: int
    max_srtcp_packets: int

    @property
    def key_salt_len(self) -> int:
        """Length of master key plus master salt (the SDES inline key, 30 bytes)."""
        return self.master_key_len + self.master_salt_len

    @property
    def rtp_overhead(self) -> int:
        """Bytes an SRTP packet adds to its RTP packet (the tag; no MKI)."""
        return self.rtp_tag_len

    @property
    def rtcp_overhead(self) -> int:
        """Bytes an SRTCP packet adds to its RTCP packet (E flag + index, then the tag)."""
        return 4 + self.rtcp_tag_len


AES_CM_128_HMAC_SHA1_80: Final = SrtpSuite(
    name="AES_CM_128_HMAC_SHA1_80",
    dtls_profile="SRTP_AES128_CM_HMAC_SHA1_80",
    dtls_profile_id=0x0001,
    openssl_profile="SRTP_AES128_CM_SHA1_80",
    cipher=CIPHER_AES_CM_128,
    auth=AUTH_HMAC_SHA1,
    master_key_len=16,
    master_salt_len=14,
    session_key_len=16,
    session_auth_key_len=20,
    session_salt_len=14,
    rtp_tag_len=10,
    rtcp_tag_len=10,
    max_srtp_packets=2**48,
    max_srtcp_packets=2**31,
)

AES_CM_128_HMAC_SHA1_32: Final = SrtpSuite(
    name="AES_CM_128_HMAC_SHA1_32",
    dtls_profile="SRTP_AES128_CM_HMAC_SHA1_32",
    dtls_profile_id=0x0002,
    openssl_profile="SRTP_AES128_CM_SHA1_32",
    cipher=CIPHER_AES_CM_128,
    auth=AUTH_HMAC_SHA1,
    master_key_len=16,
    master_salt_len=14,
    session_key_len=16,
    session_auth_key_len=20,
    session_salt_len=14,
    rtp_tag_len=4,
    rtcp_tag_len=10,
    max_srtp_packets=2**48,
    max_srtcp_packets=2**31,
)

# In order of preference (what an offer lists first).
SUITES: Final[dict[str, SrtpSuite]] = {
    suite.name: suite for suite in (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32)
}


def get_suite(suite: str | SrtpSuite) -> SrtpSuite:
    """The suite of that RFC 4568 name (or the suite itself); ValueError if unknown."""
    if isinstance(suite, SrtpSuite):
        return suite
    if not isinstance(suite, str):
        raise TypeError(f"suite must be a suite name or an SrtpSuite, not {type(suite).__name__}")
    try:
        return SUITES[suite]
    except KeyError:
        raise ValueError(f"unsupported SRTP suite {suite!r}") from None


def suite_for_dtls_profile(profile: str | int) -> SrtpSuite:
    """The suite of a DTLS-SRTP profile: RFC 5764 name, OpenSSL name or identifier."""
    for suite in SUITES.values():
        if profile in (suite.dtls_profile, suite.openssl_profile, suite.dtls_profile_id):
            return suite
    raise ValueError(f"unsupported DTLS-SRTP protection profile {profile!r}")


# ---------------------------------------------------------------- errors

Reason = Literal["short", "format", "auth", "replay", "ssrc_limit"]

# Why a packet was refused; both cores use exactly these, and the relay counts
# its drops by them.
REASONS: Final[dict[str, str]] = {
    "short": "too short for its header and trailer",
    "format": "not an RTP/RTCP packet of version 2 or its header overruns the packet",
    "auth": "authentication tag mismatch",
    "replay": "index already received, older than the replay window, or past the key's lifetime",
    "ssrc_limit": "a new SSRC, and the context already tracks its maximum number of SSRCs",
}


class SrtpError(Exception):
    """A packet the SRTP core refused; ``reason`` is one of :data:`REASONS`.

    The packet is to be dropped and counted; the context is unchanged (a
    refused packet never moves the replay window or the roll-over counter).
    """

    reason: Reason

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown SRTP error reason {reason!r}")
        self.reason = reason
        super().__init__(reason, detail or REASONS[reason])

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"
