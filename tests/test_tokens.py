"""Bearer JWT verification (edge/tokens.py).

Tokens are minted with PyJWT directly (an implementation independent of
``mint_jwt``) or built by hand for the attacks of RFC 8725 §2: ``alg: none``,
RS256/HS256 confusion, tampering, malformed input.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from edge import tokens
from edge.tokens import REASONS, Claims, TokenError, key_from_env, mint_jwt, verify_jwt

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
except ImportError as e:  # pragma: no cover - a project dependency
    raise ImportError("these tests need `cryptography`: pip install -e '.[test]'") from e

KEY = b"k" * 16 + b"0123456789abcdef0123"  # 36 bytes
OTHER_KEY = b"x" * 40
NOW = 1_700_000_000.0  # far from the wall clock: nothing may read it
CUSTOMER = "0b5e4b63-5d7c-4c6e-9a8e-1f2d3c4b5a69"


def claims(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "customer_id": CUSTOMER,
        "agent_id": "agent-7",
        "permissions": ["call_create", "call_read"],
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }
    for name, value in changes.items():
        if value is _DROP:
            del payload[name]
        else:
            payload[name] = value
    return payload


_DROP = object()


def hs256(payload: dict[str, Any], key: bytes = KEY, headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def refused(token: str, reason: str, **kwargs: Any) -> None:
    with pytest.raises(TokenError) as info:
        verify_jwt(token, KEY, kwargs.pop("now", NOW), **kwargs)
    assert info.value.reason == reason
    assert str(info.value) == reason
    # The error carries no part of the token.
    if isinstance(token, str) and len(token) > 3:
        assert token not in repr(info.value)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ---------------------------------------------------------------- accepted


def test_valid_token_from_pyjwt() -> None:
    got = verify_jwt(hs256(claims()), KEY, NOW)
    assert got == Claims(
        customer_id=CUSTOMER,
        agent_id="agent-7",
        permissions=("call_create", "call_read"),
        iat=NOW,
        exp=NOW + 3600,
    )


def test_agent_id_is_optional() -> None:
    assert verify_jwt(hs256(claims(agent_id=_DROP)), KEY, NOW).agent_id is None
    assert verify_jwt(hs256(claims(agent_id=None)), KEY, NOW).agent_id is None


def test_empty_permissions_are_a_list() -> None:
    assert verify_jwt(hs256(claims(permissions=[])), KEY, NOW).permissions == ()


def test_mint_round_trip_and_pyjwt_agrees() -> None:
    token = mint_jwt(KEY, CUSTOMER, ["call_create"], agent_id="a1", now=NOW)
    got = verify_jwt(token, KEY, NOW + 10)
    assert (got.customer_id, got.agent_id, got.permissions) == (CUSTOMER, "a1", ("call_create",))
    assert got.exp - got.iat == tokens.DEFAULT_LIFETIME
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    decoded = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == {
        "customer_id": CUSTOMER,
        "agent_id": "a1",
        "permissions": ["call_create"],
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }


def test_mint_lifetime_and_no_agent() -> None:
    token = mint_jwt(KEY, CUSTOMER, [], lifetime=60, now=NOW)
    got = verify_jwt(token, KEY, NOW)
    assert (got.agent_id, got.exp) == (None, NOW + 60)
    assert "agent_id" not in jwt.decode(token, options={"verify_signature": False})


def test_float_times_are_accepted() -> None:
    got = verify_jwt(hs256(claims(iat=NOW + 0.5, exp=NOW + 60.25)), KEY, NOW)
    assert (got.iat, got.exp) == (NOW + 0.5, NOW + 60.25)


# ---------------------------------------------------------------- time


def test_expired() -> None:
    token = hs256(claims())
    refused(token, "expired", now=NOW + 3600 + 31)
    # exp <= now - leeway is expired, as in PyJWT.
    refused(token, "expired", now=NOW + 3600 + 30)


def test_expired_within_leeway_is_accepted() -> None:
    token = hs256(claims())
    assert verify_jwt(token, KEY, NOW + 3600 + 29).customer_id == CUSTOMER
    refused(token, "expired", now=NOW + 3600 + 1, leeway=0)


def test_issued_in_the_future_is_not_yet_valid() -> None:
    token = hs256(claims(iat=int(NOW) + 120, exp=int(NOW) + 3600))
    refused(token, "not_yet_valid")
    # Within the leeway: clocks differ a little.
    assert verify_jwt(token, KEY, NOW + 91).iat == NOW + 120


def test_nbf_in_the_future_is_not_yet_valid() -> None:
    refused(hs256(claims(nbf=int(NOW) + 600)), "not_yet_valid")
    assert verify_jwt(hs256(claims(nbf=int(NOW) - 1)), KEY, NOW).customer_id == CUSTOMER


def test_lifetime_bounds() -> None:
    refused(hs256(claims(exp=int(NOW) + 86401)), "bad_claim")
    assert verify_jwt(hs256(claims(exp=int(NOW) + 86400)), KEY, NOW).exp == NOW + 86400
    refused(hs256(claims(exp=int(NOW) + 7200)), "bad_claim", max_lifetime=3600)
    refused(hs256(claims(exp=int(NOW))), "bad_claim")  # exp == iat
    refused(hs256(claims(exp=int(NOW) - 10)), "bad_claim")  # exp before iat


# ---------------------------------------------------------------- algorithm and signature


def test_wrong_key() -> None:
    refused(hs256(claims(), key=OTHER_KEY), "bad_signature")


def test_alg_none_from_pyjwt() -> None:
    token = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert token.endswith(".")
    refused(token, "bad_algorithm")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "", None, "hs256", "HS256 "])
def test_alg_none_hand_built(alg: str | None) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims())}."
    refused(token, "bad_algorithm")


def test_no_alg_header() -> None:
    refused(f"{b64json({'typ': 'JWT'})}.{b64json(claims())}.", "bad_algorithm")


def test_hs256_header_without_signature() -> None:
    token = hs256(claims())
    unsigned = token.rsplit(".", 1)[0] + "."
    refused(unsigned, "bad_signature")


def test_rs256_token_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    refused(token, "bad_algorithm")


def test_hmac_keyed_with_the_rsa_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """RFC 8725 §2.1: an attacker signs HS256 with the (public) RSA key as HMAC secret."""
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT itself refuses to sign with a PEM as HMAC key, so sign by hand.
    import hashlib
    import hmac

    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(claims())}"
    tag = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(tag)}"
    refused(token, "bad_signature")
    # And a verifier misconfigured with that public key as its secret refuses to start.
    with pytest.raises(ValueError, match="public key"):
        verify_jwt(token, pem, NOW)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(alg: str) -> None:
    # A key long enough for the bigger hash, so PyJWT does not warn.
    refused(jwt.encode(claims(), KEY * 2, algorithm=alg), "bad_algorithm")


def test_tampered_payload() -> None:
    header, _, signature = hs256(claims()).split(".")
    evil = b64json(claims(customer_id="ffffffff-ffff-ffff-ffff-ffffffffffff"))
    refused(f"{header}.{evil}.{signature}", "bad_signature")
    more = b64json(claims(permissions=["call_create", "call_read", "admin"]))
    refused(f"{header}.{more}.{signature}", "bad_signature")


def test_tampered_header() -> None:
    _, payload, signature = hs256(claims()).split(".")
    header = b64json({"alg": "HS256", "typ": "JWT", "kid": "other"})
    refused(f"{header}.{payload}.{signature}", "bad_signature")


def test_every_one_character_change_is_refused_or_harmless() -> None:
    """Changing any one character gives a TokenError, never another exception.

    The only changes that verify are in the unused low bits of a segment's
    last base64url character (base64 decoding ignores them): the same bytes.
    """
    token = hs256(claims())
    original = verify_jwt(token, KEY, NOW)
    for i, c in enumerate(token):
        for replacement in {"A", "b", "-", "_", ".", "0", "="} - {c}:
            mutated = token[:i] + replacement + token[i + 1 :]
            try:
                got = verify_jwt(mutated, KEY, NOW)
            except TokenError as e:
                assert e.reason in REASONS
            else:
                assert got == original, (i, replacement)


# ---------------------------------------------------------------- headers


def test_crit_header_is_refused() -> None:
    refused(hs256(claims(), headers={"crit": ["exp"]}), "malformed")


def test_b64_header_is_refused() -> None:
    token = f"{b64json({'alg': 'HS256', 'b64': False, 'crit': ['b64']})}.{b64json(claims())}.x"
    refused(token, "malformed")


def test_kid_header_is_ignored() -> None:
    assert verify_jwt(hs256(claims(), headers={"kid": "k1"}), KEY, NOW).customer_id == CUSTOMER


# ---------------------------------------------------------------- claims


@pytest.mark.parametrize("name", ["customer_id", "permissions", "exp", "iat"])
def test_missing_claim(name: str) -> None:
    refused(hs256(claims(**{name: _DROP})), "missing_claim")


def test_null_claim_is_missing() -> None:
    refused(hs256(claims(customer_id=None)), "missing_claim")


@pytest.mark.parametrize(
    "permissions",
    ["call_create", {"call_create": True}, [1, 2], ["ok", None], [""], ["a\nb"], 7, ["x"] * 65],
    ids=["string", "object", "ints", "null-item", "empty-name", "newline", "number", "too-many"],
)
def test_permissions_not_a_list_of_strings(permissions: object) -> None:
    refused(hs256(claims(permissions=permissions)), "bad_claim")


@pytest.mark.parametrize("customer_id", ["", 42, ["a"], {"id": 1}, True, "x" * 257, "a\x00b"])
def test_bad_customer_id(customer_id: object) -> None:
    refused(hs256(claims(customer_id=customer_id)), "bad_claim")


@pytest.mark.parametrize("agent_id", ["", 5, ["a"]])
def test_bad_agent_id(agent_id: object) -> None:
    refused(hs256(claims(agent_id=agent_id)), "bad_claim")


@pytest.mark.parametrize(
    ("name", "value"),
    [("iat", "1700000000"), ("exp", True), ("exp", [1]), ("nbf", "soon"), ("iat", None)],
)
def test_times_must_be_numbers(name: str, value: object) -> None:
    reason = "missing_claim" if value is None else "bad_claim"
    refused(hs256(claims(**{name: value})), reason)


def test_token_for_another_audience() -> None:
    refused(hs256(claims(aud="https://elsewhere.example")), "bad_claim")


# ---------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "...",
        "a..c",
        "Bearer abc.def.ghi",
        " " + "a.b.c",
        "a.b.c\n",
        "é.b.c",
        "a+b.c/d.e=",
        "!!!.???.***",
    ],
)
def test_garbage(token: str) -> None:
    refused(token, "malformed")


def test_segments_that_are_not_json() -> None:
    good = hs256(claims())
    header, payload, signature = good.split(".")
    refused(f"{b64url(b'not json')}.{payload}.{signature}", "malformed")
    refused(f"{b64json(['HS256'])}.{payload}.{signature}", "malformed")
    # A payload that is valid JSON but not an object, correctly signed.
    signing_input = f"{header}.{b64json([1, 2, 3])}"
    import hashlib
    import hmac

    tag = b64url(hmac.new(KEY, signing_input.encode(), hashlib.sha256).digest())
    refused(f"{signing_input}.{tag}", "malformed")


def test_very_long_token() -> None:
    refused("a" * 100_000 + ".b.c", "malformed")
    # Even correctly signed: the length is checked before any decoding.
    long_token = hs256(claims(permissions=["p"] * 10, padding="x" * 5000))
    refused(long_token, "malformed")


def test_non_string_token() -> None:
    refused(b"abc.def.ghi", "malformed")  # type: ignore[arg-type]


# ---------------------------------------------------------------- keys and set-up


@pytest.mark.parametrize("key", [b"", b"short", b"k" * 31])
def test_short_key_is_a_setup_error(key: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        verify_jwt(hs256(claims()), key, NOW)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_jwt(key, CUSTOMER, [], now=NOW)


def test_key_from_env() -> None:
    assert key_from_env({"JWT_KEY": KEY.decode()}) == KEY
    with pytest.raises(ValueError, match="JWT_KEY is not set"):
        key_from_env({})
    with pytest.raises(ValueError, match="JWT_KEY is not set"):
        key_from_env({"JWT_KEY": ""})
    secret = "s3cret-but-too-short"
    with pytest.raises(ValueError, match="at least 32 bytes") as info:
        key_from_env({"MY_KEY": secret}, "MY_KEY")
    assert secret not in str(info.value)
    assert "MY_KEY" in str(info.value)


def test_bad_setup_values() -> None:
    token = hs256(claims())
    with pytest.raises(ValueError):
        verify_jwt(token, KEY, NOW, leeway=-1)
    with pytest.raises(ValueError):
        verify_jwt(token, KEY, NOW, max_lifetime=0)


def test_mint_refuses_bad_claims() -> None:
    with pytest.raises(ValueError):
        mint_jwt(KEY, "", ["p"], now=NOW)
    with pytest.raises(ValueError):
        mint_jwt(KEY, CUSTOMER, [""], now=NOW)
    with pytest.raises(ValueError):
        mint_jwt(KEY, CUSTOMER, ["p"], agent_id="", now=NOW)
    with pytest.raises(ValueError):
        mint_jwt(KEY, CUSTOMER, ["p"], lifetime=0, now=NOW)


def test_token_error_reasons_are_fixed() -> None:
    with pytest.raises(ValueError):
        TokenError("because the token eyJ... said so")
    assert {
        "malformed",
        "bad_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "missing_claim",
        "bad_claim",
    } == REASONS
