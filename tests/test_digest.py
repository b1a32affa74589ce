"""Digest computation, stateless nonces and verification: sip/digest.py.

Vectors cite their source.  draft-smith-sipping-auth-examples-01 is the SIP
worked-examples draft; its values are reproduced by several independent
implementations.  "In the layout of X" marks a header written the way that
stack formats it, with values computed here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip import digest
from sip.auth import DigestChallenge, DigestCredentials, parse_challenge, parse_credentials
from sip.digest import (
    SUPPORTED_ALGORITHMS,
    DigestVerifier,
    MemoryNonceCountStore,
    NonceCountStore,
    NonceFactory,
    NonceStatus,
    Verdict,
    answer_challenge,
    compute_response,
    ha1,
    userhash,
)
from sip.errors import SipError


def md5(data: str | bytes) -> str:
    return hashlib.md5(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def test_sha512_256_is_available() -> None:
    """RFC 7616's third algorithm; OpenSSL 3 provides it (the tests below rely on it)."""
    assert "SHA-512-256" in SUPPORTED_ALGORITHMS, (
        "hashlib has no sha512_256: needs OpenSSL >= 1.1.1"
    )


# ------------------------------------------------------------- RFC 7616 §3.9

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1_responses(algorithm: str, expected: str) -> None:
    key = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    got = compute_response(
        key,
        algorithm=algorithm,
        method="GET",
        uri="/dir/index.html",
        nonce=RFC7616_NONCE,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1_client_answer_matches_the_rfc_header(algorithm: str, expected: str) -> None:
    # The challenge offers "auth, auth-int"; the client takes auth.
    challenge = parse_challenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    assert isinstance(challenge, DigestChallenge)
    got = answer_challenge(
        challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html", RFC7616_CNONCE, 1
    )
    rfc = parse_credentials(
        f'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        f'algorithm={algorithm}, nonce="{RFC7616_NONCE}", nc=00000001, '
        f'cnonce="{RFC7616_CNONCE}", qop=auth, response="{expected}", opaque="{RFC7616_OPAQUE}"'
    )
    assert got == rfc


def test_rfc7616_3_9_2_userhash_sha512_256() -> None:
    # RFC 7616 §3.9.2 with the values of erratum 4897: the published ones were
    # computed with a draft SHA-512/256 and match no FIPS 180-4 implementation.
    user = "J\u00e4s\u00f8n Doe"
    hashed = "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    response = "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"
    assert userhash(user, "api@example.org", "SHA-512-256") == hashed
    challenge = parse_challenge(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
    )
    assert isinstance(challenge, DigestChallenge)
    got = answer_challenge(
        challenge,
        user,
        "Secret, or not?",
        "GET",
        "/doe.json",
        "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
        1,
    )
    assert got.username == hashed
    assert got.userhash is True
    assert got.response == response
    # A SHA-512/256 hash is not SHA-512 cut in half (FIPS 180-4 §5.3.6).
    assert hashed != hashlib.sha512(f"{user}:api@example.org".encode()).hexdigest()[:64]


def test_rfc2617_3_5_example() -> None:
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    got = compute_response(
        key,
        algorithm="MD5",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


# ------------------------------------------ draft-smith-sipping-auth-examples

SMITH_NONCE = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
SMITH_BODY = (
    b"v=0\r\no=bob 2890844526 2890844526 IN IP4 media.biloxi.com\r\ns=-\r\n"
    b"c=IN IP4 media.biloxi.com\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\nm=video 51372 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\n"
    b"m=video 53000 RTP/AVP 32\r\na=rtpmap:32 MPV/90000\r\n"
)


@pytest.mark.parametrize(
    ("section", "algorithm", "qop", "body", "expected"),
    [
        ("3.1", "MD5", None, b"", "bf57e4e0d0bffc0fbaedce64d59add5e"),
        ("3.2", "MD5", "auth", b"", "89eb0059246c02b2f6ee02c7961d5ea3"),
        ("3.4", "MD5-sess", "auth", b"", "e4e4ea61d186d07a92c9e1f6919902e9"),
        ("3.5", "MD5", "auth-int", SMITH_BODY, "bdbeebb2da6adb6bca02599c2239e192"),
        ("3.6", "MD5-sess", "auth-int", SMITH_BODY, "91984da2d8663716e91554859c22ca70"),
    ],
)
def test_draft_smith_sip_examples(
    section: str, algorithm: str, qop: str | None, body: bytes, expected: str
) -> None:
    assert md5(SMITH_BODY) == "c1ed018b8ec4a3b170c0921f5b564e48"  # the draft's H(entity-body)
    got = compute_response(
        ha1("bob", "biloxi.com", "zanzibar", algorithm),
        algorithm=algorithm,
        method="INVITE",
        uri="sip:bob@biloxi.com",
        nonce=SMITH_NONCE,
        qop=qop,
        nc="00000001" if qop else None,
        cnonce="0a4f113b",
        body=body,
    )
    assert got == expected, section


def test_answer_challenge_without_qop_is_rfc2069() -> None:
    # draft-smith §3.1: no qop in the challenge, so no cnonce or nc in reply.
    ch = DigestChallenge(realm="biloxi.com", nonce=SMITH_NONCE, opaque="5ccc069c")
    cr = answer_challenge(ch, "bob", "zanzibar", "INVITE", "sip:bob@biloxi.com", "0a4f113b", 1)
    assert cr.response == "bf57e4e0d0bffc0fbaedce64d59add5e"
    assert cr.qop is None and cr.cnonce is None and cr.nc is None
    assert cr.opaque == "5ccc069c"


# ------------------------------------------------------------ formula edges


def test_auth_int_with_empty_body_hashes_the_empty_string() -> None:
    # RFC 3261 §22.4 item 7: H(entity-body) of no body is MD5("").
    key = ha1("u", "r", "p")
    ha2 = md5("REGISTER:sip:r:d41d8cd98f00b204e9800998ecf8427e")
    expected = md5(f"{key}:n:00000001:c:auth-int:{ha2}")
    got = compute_response(
        key,
        algorithm="MD5",
        method="REGISTER",
        uri="sip:r",
        nonce="n",
        qop="auth-int",
        nc="00000001",
        cnonce="c",
    )
    assert got == expected


def test_sha256_sess_formula() -> None:
    # RFC 7616 §3.4.2: A1 = H(user:realm:pass):nonce:cnonce for -sess.
    key = ha1("u", "r", "p", "SHA-256-sess")
    assert key == ha1("u", "r", "p", "SHA-256") == sha256("u:r:p")
    session = sha256(f"{key}:n:c")
    expected = sha256(f"{session}:n:00000002:c:auth:{sha256('INVITE:sip:x')}")
    got = compute_response(
        key,
        algorithm="sha-256-SESS",
        method="INVITE",
        uri="sip:x",
        nonce="n",
        qop="auth",
        nc="00000002",
        cnonce="c",
    )
    assert got == expected


def test_nc_is_hashed_as_sent() -> None:
    def response(nc: str) -> str:
        return compute_response(
            "aa", algorithm="MD5", method="M", uri="u", nonce="n", qop="auth", nc=nc, cnonce="c"
        )

    assert response("0000000a") != response("0000000A")
    assert response("0000000A") == md5(f"aa:n:0000000A:c:auth:{md5('M:u')}")


def test_ha1_is_utf8() -> None:
    assert ha1("J\u00e4s\u00f8n", "r", "p") == md5("J\u00e4s\u00f8n:r:p".encode())


@pytest.mark.parametrize(
    "call",
    [
        lambda: ha1("u", "r", "p", "SHA-1"),
        lambda: ha1("u\ud800", "r", "p"),
        lambda: userhash("u", "r", "AKAv1-MD5"),
        lambda: compute_response(
            "aa", algorithm="MD5", method="M", uri="u", nonce="n", qop="auth-conf"
        ),
        lambda: compute_response("aa", algorithm="MD5", method="M", uri="u", nonce="n", qop="auth"),
        lambda: compute_response("aa", algorithm="MD5-sess", method="M", uri="u", nonce="n"),
    ],
)
def test_computation_refusals(call: Callable[[], object]) -> None:
    with pytest.raises(SipError):
        call()


# ------------------------------------------------------------------- nonces

SECRET = bytes(range(32))
REALM = "sip.example.net"
CLIENT = "198.51.100.7"
T0 = 1_700_000_000.0


def counter_random() -> Callable[[int], bytes]:
    """A deterministic salt source: 0, 1, 2, ... big-endian."""
    count = itertools.count()
    return lambda n: next(count).to_bytes(n, "big")


def factory(lifetime: float = 300.0, secret: bytes = SECRET) -> NonceFactory:
    return NonceFactory(secret, lifetime, random=counter_random())


def test_nonce_valid_then_stale() -> None:
    f = factory()
    nonce = f.make(T0, CLIENT, REALM)
    assert f.check(nonce, T0, CLIENT, REALM) is NonceStatus.VALID
    assert f.check(nonce, T0 + 300.0, CLIENT, REALM) is NonceStatus.VALID  # boundary
    assert f.check(nonce, T0 + 300.01, CLIENT, REALM) is NonceStatus.STALE
    assert f.check(nonce, T0 + 86400, CLIENT, REALM) is NonceStatus.STALE


def test_nonce_from_the_future() -> None:
    f = factory()
    nonce = f.make(T0 + 4.0, CLIENT, REALM)
    assert f.check(nonce, T0, CLIENT, REALM) is NonceStatus.VALID  # within max_skew (5 s)
    nonce = f.make(T0 + 6.0, CLIENT, REALM)
    assert f.check(nonce, T0, CLIENT, REALM) is NonceStatus.INVALID


def test_nonce_is_bound_to_client_realm_and_secret() -> None:
    f = factory()
    nonce = f.make(T0, CLIENT, REALM)
    assert f.check(nonce, T0, "198.51.100.8", REALM) is NonceStatus.INVALID
    assert f.check(nonce, T0, CLIENT, "other.example.net") is NonceStatus.INVALID
    assert factory(secret=b"another secret, 32 bytes long!!!").check(nonce, T0, CLIENT, REALM) is (
        NonceStatus.INVALID
    )
    # Length-prefixed fields: moving a character across the boundary is not the same binding.
    # realm "a" + address "bc" and realm "ab" + address "c" concatenate alike.
    g = factory()
    n2 = g.make(T0, "bc", "a")
    assert g.check(n2, T0, "bc", "a") is NonceStatus.VALID
    assert g.check(n2, T0, "c", "ab") is NonceStatus.INVALID


def test_every_single_character_change_is_detected() -> None:
    f = factory()
    nonce = f.make(T0, CLIENT, REALM)
    for i, c in enumerate(nonce):
        for other in ("A", "_"):
            if other != c:
                tampered = nonce[:i] + other + nonce[i + 1 :]
                assert f.check(tampered, T0, CLIENT, REALM) is NonceStatus.INVALID


def test_expired_tampered_nonce_is_invalid_not_stale() -> None:
    # Authenticity first: a stale verdict must mean "ours".
    f = factory()
    raw = bytearray(base64.urlsafe_b64decode(f.make(T0, CLIENT, REALM)))
    raw[1:9] = (0).to_bytes(8, "big")  # issue time moved to 1970
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    assert f.check(forged, T0, CLIENT, REALM) is NonceStatus.INVALID


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "=" * 44,
        "A" * 43,
        "A" * 45,
        "A" * 44,
        "+" * 44,
        "é" * 44,
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",  # RFC 7616's nonce: 44 chars, not ours
        "\x00" * 44,
    ],
)
def test_garbage_nonces_are_invalid(garbage: str) -> None:
    assert factory().check(garbage, T0, CLIENT, REALM) is NonceStatus.INVALID


@given(st.text(max_size=60))
def test_check_never_raises_on_text(nonce: str) -> None:
    assert factory().check(nonce, T0, CLIENT, REALM) is NonceStatus.INVALID


def test_nonce_shape_and_secrecy() -> None:
    f = NonceFactory(SECRET)
    a, b = f.make(T0, CLIENT, REALM), f.make(T0, CLIENT, REALM)
    assert a != b  # random salt: two challenges in one millisecond differ
    for nonce in (a, b):
        assert len(nonce) == 44
        assert set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert SECRET not in base64.urlsafe_b64decode(nonce)
    assert SECRET.hex() not in repr(f) and str(SECRET) not in repr(f)
    # Deterministic with a deterministic salt source.
    assert factory().make(T0, CLIENT, REALM) == factory().make(T0, CLIENT, REALM)


def test_nonce_factory_configuration_errors() -> None:
    with pytest.raises(ValueError):
        NonceFactory(b"short")
    with pytest.raises(ValueError):
        NonceFactory(SECRET, 0)
    with pytest.raises(ValueError):
        NonceFactory(SECRET, max_skew=-1)
    f = NonceFactory(SECRET)
    with pytest.raises(ValueError):
        f.make(-1.0, CLIENT, REALM)
    with pytest.raises(ValueError):
        f.make(math.nan, CLIENT, REALM)
    with pytest.raises(ValueError):
        f.check(f.make(T0, CLIENT, REALM), math.nan, CLIENT, REALM)


# ------------------------------------------------------------- nonce counts


def test_nonce_count_must_increase() -> None:
    store: NonceCountStore = MemoryNonceCountStore()
    assert store.check_and_record("n1", 1, T0)
    assert store.check_and_record("n1", 2, T0)
    assert not store.check_and_record("n1", 2, T0)  # replay
    assert not store.check_and_record("n1", 1, T0)  # older
    assert store.check_and_record("n1", 7, T0)  # gaps are fine (lost requests)
    assert store.check_and_record("n2", 1, T0)  # per nonce


def test_nonce_count_entries_expire() -> None:
    store = MemoryNonceCountStore(ttl=10.0)
    assert store.check_and_record("n1", 5, T0)
    assert not store.check_and_record("n1", 5, T0 + 9.9)
    store.check_and_record("n2", 1, T0 + 10.0)  # any call expires old entries
    assert len(store) == 1
    assert store.evictions == 0


def test_nonce_count_store_stays_bounded_under_a_flood() -> None:
    store = MemoryNonceCountStore(ttl=300.0, max_entries=1000)
    for i in range(100_000):
        assert store.check_and_record(f"flood-{i}", 1, T0 + i * 1e-4)
        assert len(store) <= 1000
    assert len(store) == 1000
    assert store.evictions == 99_000
    # The newest entries survive, so a replay of a recent nonce is still caught.
    assert not store.check_and_record("flood-99999", 1, T0 + 10.0)


def test_nonce_count_store_bounded_by_time_without_evictions() -> None:
    store = MemoryNonceCountStore(ttl=10.0, max_entries=100_000)
    for i in range(100_000):
        store.check_and_record(f"n-{i}", 1, T0 + i * 0.01)  # 100 per second
    assert len(store) <= 1001
    assert store.evictions == 0


# --------------------------------------------------------------- verifier

PASSWORD = "correct horse"
USER = "alice"
RURI = "sip:sip.example.net"


def stored_ha1(algorithm: str) -> str:
    return ha1(USER, REALM, PASSWORD, algorithm)


def new_verifier(
    *,
    algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
    allow_rfc2069: bool = False,
    check_uri: bool = True,
) -> DigestVerifier:
    return DigestVerifier(
        factory(), algorithms=algorithms, allow_rfc2069=allow_rfc2069, check_uri=check_uri
    )


def client(
    v: DigestVerifier,
    *,
    algorithm: str = "SHA-256",
    now: float = T0,
    password: str = PASSWORD,
    uri: str = RURI,
    nc: int = 1,
    addr: str = CLIENT,
) -> DigestCredentials:
    """Challenge, answer, and carry both over the wire as header text."""
    challenges = v.make_challenge(REALM, now, addr, algorithms=(algorithm,))
    parsed = parse_challenge(challenges[0].to_header())
    assert isinstance(parsed, DigestChallenge)
    cr = answer_challenge(parsed, USER, password, "REGISTER", uri, "0a4f113b", nc)
    back = parse_credentials(cr.to_header())
    assert isinstance(back, DigestCredentials)
    return back


def verify(
    v: DigestVerifier,
    cr: DigestCredentials,
    *,
    now: float = T0,
    addr: str = CLIENT,
    uri: str = RURI,
    key: str | None = "auto",
    body: bytes = b"",
) -> Verdict:
    if key == "auto":
        known = {name.lower() for name in SUPPORTED_ALGORITHMS}
        algorithm = cr.effective_algorithm
        key = stored_ha1(algorithm if algorithm.lower() in known else "MD5")
    return v.verify(
        cr, method="REGISTER", request_uri=uri, ha1=key, now=now, client_addr=addr, body=body
    )


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip_ok_then_replay_refused(algorithm: str) -> None:
    v = new_verifier()
    cr = client(v, algorithm=algorithm)
    assert verify(v, cr) is Verdict.OK
    assert verify(v, cr) is Verdict.REPLAY  # the same request again
    cr2 = answer_next(cr, 2)
    assert verify(v, cr2, now=T0 + 1) is Verdict.OK  # nc increases: fine
    assert verify(v, answer_next(cr, 1), now=T0 + 2) is Verdict.REPLAY  # lower nc


def answer_next(cr: DigestCredentials, nc: int) -> DigestCredentials:
    """The client's next request on the same nonce."""
    ch = DigestChallenge(realm=cr.realm, nonce=cr.nonce, algorithm=cr.algorithm, qop=("auth",))
    return answer_challenge(ch, USER, PASSWORD, "REGISTER", cr.uri, "0a4f113b", nc)


def test_failed_attempts_do_not_consume_the_nonce_count() -> None:
    v = new_verifier()
    wrong = client(v, password="guess")
    assert verify(v, wrong) is Verdict.BAD_RESPONSE
    right = answer_next(wrong, 1)
    assert verify(v, right) is Verdict.OK


def test_stale_only_with_the_right_password() -> None:
    v = new_verifier()
    later = T0 + 300.5
    assert verify(v, client(v), now=later) is Verdict.STALE
    assert verify(v, client(v, password="guess"), now=later) is Verdict.BAD_RESPONSE


def test_bad_nonce_cases() -> None:
    v = new_verifier()
    cr = client(v)
    assert verify(v, cr, addr="203.0.113.50") is Verdict.BAD_NONCE
    tampered = replace(cr, nonce=("B" if cr.nonce[0] != "B" else "C") + cr.nonce[1:])
    assert verify(v, tampered) is Verdict.BAD_NONCE
    # A nonce minted with another secret, with a response that is right for it.
    other = DigestVerifier(NonceFactory(b"x" * 32))
    assert verify(v, client(other)) is Verdict.BAD_NONCE
    # The realm is bound into the nonce.
    ch = DigestChallenge(realm="other.example", nonce=cr.nonce, algorithm="SHA-256", qop=("auth",))
    moved = answer_challenge(ch, USER, PASSWORD, "REGISTER", RURI, "c", 1)
    assert verify(v, moved, key=ha1(USER, "other.example", PASSWORD, "SHA-256")) is (
        Verdict.BAD_NONCE
    )


def test_bad_response_cases() -> None:
    v = new_verifier()
    assert verify(v, client(v, password="guess")) is Verdict.BAD_RESPONSE
    # Unknown user: same work, same verdict.
    assert verify(v, client(v), key=None) is Verdict.BAD_RESPONSE
    # The stored HA1 of another hash does not fit.
    assert verify(v, client(v, algorithm="SHA-256"), key=stored_ha1("MD5")) is (
        Verdict.BAD_RESPONSE
    )
    garbage = replace(client(v), response="not hex at all \u00e9")
    assert verify(v, garbage) is Verdict.BAD_RESPONSE


def test_unknown_user_never_authenticates(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even a client that knew the stand-in HA1 used for unknown users gets nowhere.
    monkeypatch.setattr(digest, "_UNKNOWN_USER_KEY", b"known")
    v = new_verifier()
    nonce = our_nonce(v, "SHA-256")
    ch = DigestChallenge(realm=REALM, nonce=nonce, algorithm="SHA-256", qop=("auth",))
    cr = answer_challenge(ch, USER, PASSWORD, "REGISTER", RURI, "c", 1)
    forged = compute_response(
        hashlib.sha256(b"known").hexdigest(),
        algorithm="SHA-256",
        method="REGISTER",
        uri=RURI,
        nonce=nonce,
        qop="auth",
        nc="00000001",
        cnonce="c",
    )
    assert verify(v, replace(cr, response=forged), key=None) is Verdict.BAD_RESPONSE


def test_upper_case_response_hex_is_accepted() -> None:
    v = new_verifier()
    cr = client(v)
    assert verify(v, replace(cr, response=cr.response.upper())) is Verdict.OK


def test_bad_uri_and_its_normalisation() -> None:
    v = new_verifier()
    assert verify(v, client(v, uri="sip:evil.example.net")) is Verdict.BAD_URI
    # RFC 3261 §19.1.4: the scheme compares without case.
    assert verify(v, client(v, uri="SIP:sip.example.net")) is Verdict.OK
    # Anything else is compared as text.
    assert verify(v, client(v, uri="sip:SIP.example.net")) is Verdict.BAD_URI
    lax = new_verifier(check_uri=False)
    assert verify(lax, client(lax, uri="sip:elsewhere.example.net")) is Verdict.OK


def test_unsupported_algorithms() -> None:
    v = new_verifier()  # SHA-256 and MD5
    cr = client(v)
    assert verify(v, replace(cr, algorithm="AKAv1-MD5")) is Verdict.UNSUPPORTED_ALGORITHM
    assert verify(v, replace(cr, algorithm="MD5-sess")) is Verdict.UNSUPPORTED_ALGORITHM
    sha_only = new_verifier(algorithms=("SHA-256",))
    md5_cr = client(new_verifier(), algorithm="MD5")
    assert verify(sha_only, md5_cr) is Verdict.UNSUPPORTED_ALGORITHM
    if "SHA-512-256" in SUPPORTED_ALGORITHMS:
        assert verify(v, replace(cr, algorithm="SHA-512-256")) is Verdict.UNSUPPORTED_ALGORITHM


def test_sha512_256_and_sess_when_enabled() -> None:
    v = new_verifier(algorithms=("SHA-512-256", "SHA-256-sess"))
    assert verify(v, client(v, algorithm="SHA-512-256")) is Verdict.OK
    assert verify(v, client(v, algorithm="SHA-256-sess")) is Verdict.OK


def rfc2069_credentials(v: DigestVerifier, algorithm: str = "MD5") -> DigestCredentials:
    nonce = v.make_challenge(REALM, T0, CLIENT)[0].nonce
    ch = DigestChallenge(realm=REALM, nonce=nonce, algorithm=algorithm)  # no qop offered
    return answer_challenge(ch, USER, PASSWORD, "REGISTER", RURI, "c", 1)


def test_rfc2069_refused_by_default() -> None:
    v = new_verifier()
    cr = rfc2069_credentials(v)
    assert cr.qop is None
    assert verify(v, cr) is Verdict.QOP_REQUIRED


def test_rfc2069_when_allowed_is_single_use() -> None:
    v = new_verifier(allow_rfc2069=True)
    cr = rfc2069_credentials(v)
    assert verify(v, cr) is Verdict.OK
    assert verify(v, cr) is Verdict.REPLAY


def test_qop_required_cases() -> None:
    v = new_verifier(allow_rfc2069=True, algorithms=("MD5", "MD5-sess"))
    cr = client(v, algorithm="MD5")
    assert verify(v, replace(cr, qop="auth-conf")) is Verdict.QOP_REQUIRED
    # RFC 3261 §22.4 item 8: -sess needs the cnonce, hence qop.
    sess = replace(rfc2069_credentials(v), algorithm="MD5-sess", cnonce="c")
    assert verify(v, sess) is Verdict.QOP_REQUIRED


def test_auth_int_checks_the_body() -> None:
    v = new_verifier()
    nonce = v.make_challenge(REALM, T0, CLIENT)[0].nonce
    ch = DigestChallenge(realm=REALM, nonce=nonce, algorithm="SHA-256", qop=("auth-int",))
    cr = answer_challenge(ch, USER, PASSWORD, "REGISTER", RURI, "c", 1, body=b"v=0\r\n")
    assert cr.qop == "auth-int"
    assert verify(v, cr, body=b"v=1\r\n") is Verdict.BAD_RESPONSE
    assert verify(v, cr, body=b"v=0\r\n") is Verdict.OK


def test_userhash_flow() -> None:
    v = new_verifier()
    ch = replace(v.make_challenge(REALM, T0, CLIENT)[0], userhash=True)
    cr = answer_challenge(ch, USER, PASSWORD, "REGISTER", RURI, "c", 1)
    assert cr.userhash is True
    assert cr.username == userhash(USER, REALM, "SHA-256") != USER
    # The caller looks the user up by userhash and passes that user's HA1.
    assert verify(v, cr) is Verdict.OK


def test_make_challenge() -> None:
    v = new_verifier()
    chs = v.make_challenge(REALM, T0, CLIENT, opaque="op")
    # RFC 8760 §2.3-2.4: one per algorithm, preferred first; qop always sent.
    assert [c.algorithm for c in chs] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == REALM and c.opaque == "op" for c in chs)
    assert len({c.nonce for c in chs}) == 1
    assert not any(c.stale for c in chs)
    assert all(parse_challenge(c.to_header()) == c for c in chs)
    stale = v.make_challenge(REALM, T0, CLIENT, algorithms=("md5",), stale=True)
    assert [(c.algorithm, c.stale) for c in stale] == [("MD5", True)]
    with pytest.raises(ValueError):
        v.make_challenge(REALM, T0, CLIENT, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        new_verifier(algorithms=())


def test_answer_challenge_refusals() -> None:
    base = DigestChallenge(realm="r", nonce="n", qop=("auth",))
    with pytest.raises(SipError):
        answer_challenge(replace(base, qop=("auth-conf",)), "u", "p", "M", "u", "c", 1)
    with pytest.raises(SipError):
        answer_challenge(replace(base, qop=(), algorithm="MD5-sess"), "u", "p", "M", "u", "c", 1)
    with pytest.raises(SipError):
        answer_challenge(replace(base, algorithm="AKAv1-MD5"), "u", "p", "M", "u", "c", 1)
    for nc in (0, 2**32):
        with pytest.raises(SipError):
            answer_challenge(base, "u", "p", "M", "u", "c", nc)


# ------------------------------------------------------- real-world layouts


def our_nonce(v: DigestVerifier, algorithm: str = "MD5") -> str:
    return v.make_challenge(REALM, T0, CLIENT, algorithms=(algorithm,))[0].nonce


def right_response(nonce: str, algorithm: str, cnonce: str, qop: str | None = "auth") -> str:
    return compute_response(
        stored_ha1(algorithm),
        algorithm=algorithm,
        method="REGISTER",
        uri=RURI,
        nonce=nonce,
        qop=qop,
        nc="00000001" if qop else None,
        cnonce=cnonce if qop else None,
    )


def test_svcrack_layout_is_refused_even_with_the_right_password() -> None:
    # In the layout of sipvicious svcrack (svhelper.challengeResponse against a
    # challenge it read no qop from): "qop=auth" over an RFC 2069 response,
    # without cnonce or nc.
    for v in (new_verifier(), new_verifier(allow_rfc2069=True)):
        nonce = our_nonce(v)
        response = right_response(nonce, "MD5", "", qop=None)
        header = (
            f'Digest username="{USER}",realm="{REALM}",nonce="{nonce}",uri="{RURI}",'
            f'algorithm=MD5,qop=auth,response="{response}"'
        )
        cr = parse_credentials(header)
        assert isinstance(cr, DigestCredentials)
        assert verify(v, cr) is Verdict.BAD_RESPONSE


def test_svcrack_itself() -> None:
    try:
        from sipvicious.libs import svhelper
    except ImportError:
        pytest.fail("sipvicious is missing: pip install sipvicious (the test extra)")
    v = new_verifier()
    nonce = our_nonce(v)
    auth = {
        "username": USER,
        "realm": REALM,
        "password": PASSWORD,
        "nonce": nonce,
        "opaque": None,
        "algorithm": None,
        "qop": None,
        "noncecount": 1,
    }
    cr = parse_credentials(svhelper.challengeResponse(auth, "REGISTER", RURI))
    assert isinstance(cr, DigestCredentials)
    assert verify(v, cr) is Verdict.BAD_RESPONSE


def test_baresip_layout_verifies() -> None:
    # In the layout of libre (baresip) sip_auth_encode: algorithm last.
    v = new_verifier()
    nonce = our_nonce(v)
    cnonce = "0123456789abcdef"
    header = (
        f'Digest username="{USER}", realm="{REALM}", nonce="{nonce}", uri="{RURI}", '
        f'response="{right_response(nonce, "MD5", cnonce)}", cnonce="{cnonce}", qop=auth, '
        "nc=00000001, algorithm=MD5"
    )
    cr = parse_credentials(header)
    assert isinstance(cr, DigestCredentials)
    assert verify(v, cr) is Verdict.OK


def test_linphone_layout_verifies() -> None:
    # In the layout of belle-sip (Linphone): realm and nonce first, SHA-256.
    v = new_verifier()
    nonce = our_nonce(v, "SHA-256")
    cnonce = "hEqvDwSHdlj4CC0E"
    header = (
        f'Digest realm="{REALM}", nonce="{nonce}", algorithm=SHA-256, opaque="+GNywA==", '
        f'username="{USER}", uri="{RURI}", '
        f'response="{right_response(nonce, "SHA-256", cnonce)}", cnonce="{cnonce}", '
        "nc=00000001, qop=auth"
    )
    cr = parse_credentials(header)
    assert isinstance(cr, DigestCredentials)
    assert verify(v, cr) is Verdict.OK


def test_pjsip_layout_verifies() -> None:
    # In the layout of pjproject (Asterisk chan_pjsip as a client).
    v = new_verifier()
    nonce = our_nonce(v)
    cnonce = "b1c2d3e4f5a6"
    header = (
        f'Digest username="{USER}", realm="{REALM}", nonce="{nonce}", uri="{RURI}", '
        f'response="{right_response(nonce, "MD5", cnonce)}", algorithm=MD5, '
        f'cnonce="{cnonce}", qop=auth, nc=00000001'
    )
    cr = parse_credentials(header)
    assert isinstance(cr, DigestCredentials)
    assert verify(v, cr) is Verdict.OK


# ------------------------------------------------------------------ property

_HEXISH = st.text(alphabet="0123456789abcdefABCDEFxyz", max_size=70)
# A genuine nonce (deterministic salt), so that the response check is reached.
_OUR_NONCE = factory().make(T0, CLIENT, REALM)


@given(
    nonce=st.just(_OUR_NONCE) | st.text(max_size=50),
    response=_HEXISH,
    uri=st.sampled_from([RURI, "sip:other", ""]),
    algorithm=st.sampled_from([None, "MD5", "SHA-256", "MD5-sess", "FOO"]),
    qop=st.sampled_from([None, "auth", "auth-int", "x"]),
    nc=st.none() | st.text(alphabet="0123456789abcdef", min_size=8, max_size=8),
    cnonce=st.none() | st.text(max_size=10),
)
def test_verify_never_raises_and_never_accepts_forgeries(
    nonce: str,
    response: str,
    uri: str,
    algorithm: str | None,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> None:
    try:
        cr = DigestCredentials(
            username=USER,
            realm=REALM,
            nonce=nonce,
            uri=uri,
            response=response,
            algorithm=algorithm,
            cnonce=cnonce,
            qop=qop,
            nc=nc,
        )
    except SipError:
        return  # text the grammar refuses never reaches a verifier
    v = new_verifier(allow_rfc2069=True)
    assert verify(v, cr) is not Verdict.OK
