"""Bearer JWTs for SIP (RFC 8898): HS256 tokens naming a customer and its permissions.

A token is what a customer's backend hands to its agents' phones or WebRTC
clients; they present it as ``Authorization: Bearer <jwt>`` (parsed by
:mod:`sip.auth`).  The claims::

    {"customer_id": "...", "agent_id": "..." (optional),
     "permissions": ["call_create", ...], "iat": 1700000000, "exp": 1700003600}

signed with HMAC-SHA256 under a key shared with the backend (env ``JWT_KEY``).

Verification follows RFC 8725 (JWT best current practices):

* the algorithm is pinned: the header must say ``HS256`` before anything else
  is looked at, and PyJWT is called with ``algorithms=["HS256"]`` only, so
  ``alg: none`` and RS256/HS256 confusion (an HMAC keyed with an RSA public
  key) fail (§2.1, §3.1);
* ``crit`` and ``b64`` headers are refused: we implement no extension;
* the signature is checked by PyJWT, constant-time;
* time is checked here against the caller's ``now`` with a small leeway for
  clock skew, not by PyJWT, which reads the wall clock itself: the proxy and
  its tests pass one clock to every check;
* every claim we use must be present and of the right type, and a token may
  not live longer than ``max_lifetime`` (a leaked long-lived token is a
  standing credential).

Every refusal is a :class:`TokenError` whose ``reason`` is one of
:data:`REASONS`: short, fixed strings that are safe to log and count.  Neither
the token nor the key appears in an error, a ``repr`` or a log line.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

__all__ = [
    "ALGORITHM",
    "DEFAULT_LIFETIME",
    "ENV_KEY",
    "MIN_KEY_LEN",
    "REASONS",
    "Claims",
    "TokenError",
    "key_from_env",
    "mint_jwt",
    "verify_jwt",
]

ALGORITHM = "HS256"
ENV_KEY = "JWT_KEY"
DEFAULT_LIFETIME = 3600.0
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_KEY_LEN = 32
# Far above any token we mint (a few hundred bytes); bounds the work a peer can
# make us do before the signature is checked.
MAX_TOKEN_LEN = 4096
# Bounds on what a claim may hold, for the same reason.
MAX_ID_LEN = 256
MAX_PERMISSIONS = 64

REASONS = frozenset(
    {
        "malformed",
        "bad_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "missing_claim",
        "bad_claim",
    }
)

_REQUIRED = ("customer_id", "permissions", "iat", "exp")
# Headers that change how a token is read; we implement none of them.
_REFUSED_HEADERS = ("crit", "b64")
# JWS compact serialisation (RFC 7515 §7.1): three base64url parts, no
# padding.  The signature may be empty here so that an unsigned token with an
# HS256 header is reported as a bad signature rather than as malformed.
_COMPACT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# What PyJWT also refuses as an HMAC key: a public key or certificate, the
# material of the RS256 -> HS256 confusion attack.
_ASYMMETRIC_PREFIXES = (b"-----BEGIN ", b"ssh-rsa ", b"ssh-ed25519 ", b"ecdsa-sha2-")


class TokenError(Exception):
    """A token was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown token error reason {reason!r}")
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says (times in epoch seconds)."""

    customer_id: str
    agent_id: str | None
    permissions: tuple[str, ...]
    iat: float
    exp: float


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray):
        raise ValueError("JWT key must be bytes")
    if len(key) < MIN_KEY_LEN:
        raise ValueError(
            f"JWT key must be at least {MIN_KEY_LEN} bytes (got {len(key)}): "
            "use e.g. 48 random bytes, base64-encoded"
        )
    if key.lstrip().startswith(_ASYMMETRIC_PREFIXES):
        raise ValueError("JWT key looks like a public key or certificate, not an HMAC secret")


def key_from_env(env: Mapping[str, str], name: str = ENV_KEY) -> bytes:
    """The signing key from environment variable ``name``, as UTF-8 bytes.

    Raises ValueError naming the variable (never its value) when it is unset
    or too short.
    """
    value = env.get(name)
    if not value:
        raise ValueError(f"{name} is not set: it must hold the JWT signing key")
    key = value.encode("utf-8")
    try:
        _check_key(key)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return key


def _is_number(value: object) -> bool:
    # bool is an int subclass: `"exp": true` is not a time.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN and value.isprintable()


def _permissions(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list) or len(value) > MAX_PERMISSIONS:
        return None
    if not all(_is_id(p) for p in value):
        return None
    return tuple(value)


def verify_jwt(
    token: str,
    key: bytes,
    now: float,
    leeway: float = 30.0,
    max_lifetime: float = 86400.0,
) -> Claims:
    """Verify ``token`` and return its claims, or raise :class:`TokenError`.

    ``now`` is epoch seconds.  A token is expired once ``exp <= now - leeway``
    and not yet valid while ``iat`` (or ``nbf``) is more than ``leeway`` in
    the future.  ``exp - iat`` must lie in (0, ``max_lifetime``].  A token
    carrying ``aud`` is refused (bad_claim): it was meant for someone else.
    Raises ValueError for a key shorter than :data:`MIN_KEY_LEN` bytes or
    one that is a public key: a set-up error, not the token's fault.
    """
    _check_key(key)
    if not (math.isfinite(leeway) and leeway >= 0):
        raise ValueError("leeway must be a non-negative number of seconds")
    if not (math.isfinite(max_lifetime) and max_lifetime > 0):
        raise ValueError("max_lifetime must be positive")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
        raise TokenError("malformed")
    if _COMPACT_RE.fullmatch(token) is None:
        raise TokenError("malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed") from None
    # Pinned before PyJWT sees the token (RFC 8725 §3.1); PyJWT checks it again.
    if header.get("alg") != ALGORITHM:
        raise TokenError("bad_algorithm")
    if any(name in header for name in _REFUSED_HEADERS):
        raise TokenError("malformed")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            bytes(key),
            algorithms=[ALGORITHM],
            options={
                "require": list(_REQUIRED),
                # Times are checked below against `now`.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAlgorithmError:
        raise TokenError("bad_algorithm") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature") from None
    except jwt.MissingRequiredClaimError:
        raise TokenError("missing_claim") from None
    except jwt.DecodeError:
        raise TokenError("malformed") from None
    except jwt.PyJWTError:
        # Audience, subject, jti of the wrong shape: well-signed but not for us.
        raise TokenError("bad_claim") from None
    return _claims(payload, now, leeway, max_lifetime)


def _claims(payload: dict[str, Any], now: float, leeway: float, max_lifetime: float) -> Claims:
    customer_id = payload["customer_id"]
    agent_id = payload.get("agent_id")
    permissions = _permissions(payload["permissions"])
    iat, exp, nbf = payload["iat"], payload["exp"], payload.get("nbf")
    if not _is_id(customer_id) or permissions is None:
        raise TokenError("bad_claim")
    if agent_id is not None and not _is_id(agent_id):
        raise TokenError("bad_claim")
    if not (_is_number(iat) and _is_number(exp)) or (nbf is not None and not _is_number(nbf)):
        raise TokenError("bad_claim")
    if not 0 < exp - iat <= max_lifetime:
        raise TokenError("bad_claim")
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        raise TokenError("not_yet_valid")
    if exp <= now - leeway:
        raise TokenError("expired")
    return Claims(
        customer_id=customer_id,
        agent_id=agent_id,
        permissions=permissions,
        iat=float(iat),
        exp=float(exp),
    )


def mint_jwt(
    key: bytes,
    customer_id: str,
    permissions: Iterable[str],
    agent_id: str | None = None,
    lifetime: float = DEFAULT_LIFETIME,
    now: float | None = None,
) -> str:
    """A signed HS256 token that :func:`verify_jwt` accepts until ``now + lifetime``.

    ``now`` defaults to the wall clock; times are whole seconds (RFC 7519
    NumericDate).  Raises ValueError for a bad key, claim or lifetime.
    """
    _check_key(key)
    perms = list(permissions)
    if not _is_id(customer_id):
        raise ValueError("customer_id must be a non-empty printable string")
    if agent_id is not None and not _is_id(agent_id):
        raise ValueError("agent_id must be a non-empty printable string")
    if _permissions(perms) is None:
        raise ValueError(f"permissions must be at most {MAX_PERMISSIONS} non-empty strings")
    if not (math.isfinite(lifetime) and lifetime >= 1):
        raise ValueError("lifetime must be at least one second")
    iat = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "customer_id": customer_id,
        "permissions": perms,
        "iat": iat,
        "exp": iat + int(lifetime),
    }
    if agent_id is not None:
        payload["agent_id"] = agent_id
    return jwt.encode(payload, bytes(key), algorithm=ALGORITHM)
