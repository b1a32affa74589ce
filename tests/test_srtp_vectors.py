"""Known-answer tests of the SRTP cores: RFC 3711 Appendix B and libsrtp's own vectors.

Every test runs on the C core (``media._srtp``) and on its Python twin
(``media._srtp_py``).  The source of each constant is cited above it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from media.suites import SUITES, SrtpError


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The backend under test.  The C one must import: a missing build fails."""
    return importlib.import_module("media._srtp" if request.param == "c" else "media._srtp_py")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ---------------------------------------------------------------- RFC 3711 B.2

# RFC 3711 Appendix B.2, "AES-CM Test Vectors":
#   Session Key:      2B7E151628AED2A6ABF7158809CF4F3C
#   Rollover Counter: 00000000
#   Sequence Number:  0000
#   SSRC:             00000000
#   Session Salt:     F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000 (already shifted)
#   Offset:           F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000
B2_SESSION_KEY = h("2B7E151628AED2A6ABF7158809CF4F3C")
B2_IV = h("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
# RFC 3711 Appendix B.2, "Counter / Keystream" table (block counter -> keystream block).
B2_KEYSTREAM = {
    0x0000: h("E03EAD0935C95E80E166B16DD92B4EB4"),
    0x0001: h("D23513162B02D0F72A43A2FE4A5F97AB"),
    0x0002: h("41E95B3BB0A2E8DD477901E4FCA894C0"),
    0xFEFF: h("EC8CDF7398607CB0F2D21675EA9EA1E4"),
    0xFF00: h("362B7C3C6773516318A077D7FC5073AE"),
    0xFF01: h("6A2CC3787889374FBEB4C81B17BA6C44"),
}


def test_b2_aes_cm_keystream(impl: ModuleType) -> None:
    stream = impl._keystream(B2_SESSION_KEY, B2_IV, 0xFF02 * 16)
    for block, expected in B2_KEYSTREAM.items():
        assert stream[block * 16 : block * 16 + 16] == expected, f"block {block:#06x}"


def test_b2_keystream_prefix_is_stable(impl: ModuleType) -> None:
    """A shorter request gives a prefix of a longer one (the chunking of the C
    core does not shift the counter): 1, 15, 16, 17, 511, 512, 513 bytes."""
    full = impl._keystream(B2_SESSION_KEY, B2_IV, 2048)
    for n in (0, 1, 15, 16, 17, 511, 512, 513, 2047):
        assert impl._keystream(B2_SESSION_KEY, B2_IV, n) == full[:n]


# ---------------------------------------------------------------- RFC 3711 B.3

# RFC 3711 Appendix B.3, "Key Derivation Test Vectors" (key_derivation_rate 0,
# packet index 000000000000):
#   master key:  E1F97A0D3E018BE0D64FA32C06DE4139
#   master salt: 0EC675AD498AFEEBB6960B3AABE6
B3_MASTER_KEY = h("E1F97A0D3E018BE0D64FA32C06DE4139")
B3_MASTER_SALT = h("0EC675AD498AFEEBB6960B3AABE6")
# "Cipher key" (label 0x00): IV 0EC675AD498AFEEBB6960B3AABE60000
B3_CIPHER_KEY = h("C61E7A93744F39EE10734AFE3FF7A087")
# "Cipher salt" (label 0x02): IV 0EC675AD498AFEE9B6960B3AABE60000; the RFC lists
# one keystream block, of which the 112-bit session salt is the first 14 bytes.
B3_CIPHER_SALT_BLOCK = h("30CBBC08863D8C85D49DB34A9AE17AC6")
# "Authentication key" (label 0x01): IV 0EC675AD498AFEEAB6960B3AABE60000; the RFC
# lists six keystream blocks; HMAC-SHA1 uses the first 160 bits.
B3_AUTH_KEYSTREAM = h(
    """
    CEBE321F6FF7716B6FD4AB49AF256A15
    6D38BAA48F0A0ACF3C34E2359E6CDBCE
    E049646C43D9327AD175578EF7227098
    6371C10C9A369AC2F94A8C5FBCDDDC25
    6D6E919A48B610EF17C2041E47403576
    6B68642C59BBFC2F34DB60DBDFB2DC68
    """
)


def test_b3_cipher_key(impl: ModuleType) -> None:
    assert impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, 0, 16) == B3_CIPHER_KEY


def test_b3_cipher_salt(impl: ModuleType) -> None:
    assert impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, 2, 16) == B3_CIPHER_SALT_BLOCK
    assert impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, 2, 14) == B3_CIPHER_SALT_BLOCK[:14]


def test_b3_auth_key(impl: ModuleType) -> None:
    assert impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, 1, 96) == B3_AUTH_KEYSTREAM
    assert impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, 1, 20) == h(
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"
    )


def test_kdf_labels_differ(impl: ModuleType) -> None:
    """The six labels of RFC 3711 §4.3.2 give six different key streams."""
    outputs = {impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT, label, 20) for label in range(6)}
    assert len(outputs) == 6


def test_kdf_rejects_bad_lengths(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl._kdf(B3_MASTER_KEY[:15], B3_MASTER_SALT, 0, 16)
    with pytest.raises(ValueError):
        impl._kdf(B3_MASTER_KEY, B3_MASTER_SALT + b"\x00", 0, 16)


# ---------------------------------------------------------------- whole packets

# libsrtp test/srtp_driver.c, srtp_validate(): AES_CM_128_HMAC_SHA1_80 under the
# B.3 master key and salt.  The RTP packet: V=2, PT 15, seq 0x1234, ts 0xdecafbad,
# SSRC 0xcafebabe, 16 bytes of 0xab.
LIBSRTP_KEY = B3_MASTER_KEY + B3_MASTER_SALT
LIBSRTP_RTP = h("800f1234decafbadcafebabe" + "ab" * 16)
LIBSRTP_SRTP = h(
    "800f1234decafbadcafebabe"
    "4e55dc4ce79978d88ca4d215949d2402"  # encrypted payload
    "b78d6acc99ea179b8dbb"  # 80-bit tag
)
# Same function, the SRTCP packet: an SR header, SSRC 0xcafebabe, 16 bytes of
# 0xab, protected with SRTCP index 1 (libsrtp's first outbound index).
LIBSRTP_RTCP = h("81c8000bcafebabe" + "ab" * 16)
LIBSRTP_SRTCP = h(
    "81c8000bcafebabe"
    "7128035be487b9bdbef89041f977a5a8"  # encrypted
    "80000001"  # E=1, index 1
    "993e08cd54d6c1230798"  # 80-bit tag
)


def _pair(impl: ModuleType, suite: str = "AES_CM_128_HMAC_SHA1_80") -> tuple[Any, Any]:
    key, salt = LIBSRTP_KEY[:16], LIBSRTP_KEY[16:]
    return (
        impl.Context(key, salt, suite, direction="outbound"),
        impl.Context(key, salt, suite, direction="inbound"),
    )


def test_libsrtp_srtp_vector(impl: ModuleType) -> None:
    tx, rx = _pair(impl)
    assert tx.protect_rtp(LIBSRTP_RTP) == LIBSRTP_SRTP
    assert rx.unprotect_rtp(LIBSRTP_SRTP) == LIBSRTP_RTP


def test_libsrtp_srtcp_vector(impl: ModuleType) -> None:
    tx, rx = _pair(impl)
    assert rx.unprotect_rtcp(LIBSRTP_SRTCP) == LIBSRTP_RTCP
    # RFC 3711 §3.4: our first SRTCP index is 0, libsrtp's is 1; the second matches.
    first = tx.protect_rtcp(LIBSRTP_RTCP)
    assert first[-14:-10] == h("80000000")
    assert tx.protect_rtcp(LIBSRTP_RTCP) == LIBSRTP_SRTCP


def test_libsrtp_vector_under_32_bit_tag(impl: ModuleType) -> None:
    """The _32 suite differs only in the SRTP tag length: the first 4 bytes of
    the 80-bit tag.  SRTCP keeps the 80-bit tag (RFC 5764 §4.1.2)."""
    tx, rx = _pair(impl, "AES_CM_128_HMAC_SHA1_32")
    assert tx.protect_rtp(LIBSRTP_RTP) == LIBSRTP_SRTP[:-6]
    assert rx.unprotect_rtcp(LIBSRTP_SRTCP) == LIBSRTP_RTCP
    with pytest.raises(SrtpError) as err:
        rx.unprotect_rtp(LIBSRTP_SRTP)  # a 10-byte tag
    assert err.value.reason == "auth"


def test_suite_table() -> None:
    """SRTCP tags stay 80 bits for both suites; SRTP tags are 80 and 32 bits."""
    assert [(s.name, s.rtp_tag_len, s.rtcp_tag_len) for s in SUITES.values()] == [
        ("AES_CM_128_HMAC_SHA1_80", 10, 10),
        ("AES_CM_128_HMAC_SHA1_32", 4, 10),
    ]
    assert all(s.key_salt_len == 30 for s in SUITES.values())
