"""Digest computation, stateless nonces and verification.

RFC 7616 (HTTP Digest, the algorithms and hashes), RFC 8760 (its use in SIP:
SHA-256 and SHA-512/256, qop required, one challenge per algorithm), RFC 3261
§22.4 (SIP specifics).  Sans-I/O: the time is an argument (``now``, seconds
on a clock shared by every instance that shares the nonce secret, i.e. wall
clock when scaled out); nothing here reads a clock or a socket.

Pieces:

* hashing: :func:`ha1`, :func:`userhash`, :func:`compute_response`.  The
  credential store keeps only HA1 = H(username ":" realm ":" password) per
  hash function, never the password; the ``-sess`` variants are derived from
  that same HA1 at verification time (RFC 7616 §3.4.2).
* :class:`NonceFactory`: stateless nonces.  A nonce carries its issue time and
  an HMAC binding it to the realm and the client address, so the server keeps
  nothing per challenge and any instance sharing the secret can check it.
* :class:`NonceCountStore`: the one piece of state, the highest nonce count
  seen per nonce, so that a replayed request is refused (RFC 7616 §3.4, §5.4).
  :class:`MemoryNonceCountStore` is the bounded in-memory one; a shared store
  (Redis) fits behind the same Protocol.
* :class:`DigestVerifier`: challenges and verdicts for a UAS or proxy.
* :func:`answer_challenge`: the client side, for the edge authenticating to
  upstreams (and for tests).

Algorithms: MD5, SHA-256 and SHA-512-256 and their ``-sess`` variants, each
only if this Python's hashlib provides it (MD5 disappears in FIPS mode,
SHA-512/256 with old OpenSSL); see :data:`SUPPORTED_ALGORITHMS`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from sip.auth import DIGEST_ALGORITHMS, DigestChallenge, DigestCredentials
from sip.errors import SipError

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "DigestVerifier",
    "MemoryNonceCountStore",
    "NonceCountStore",
    "NonceFactory",
    "NonceStatus",
    "Verdict",
    "answer_challenge",
    "compute_response",
    "ha1",
    "userhash",
]


# --------------------------------------------------------------------------
# Algorithms and hashing

_HASHLIB_NAMES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


def _hashlib_has(name: str) -> bool:
    try:
        hashlib.new(name)
    except ValueError:
        return False
    return True


def _algorithm_table() -> dict[str, tuple[str, str, bool]]:
    table: dict[str, tuple[str, str, bool]] = {}
    for name in DIGEST_ALGORITHMS:
        hash_name = _HASHLIB_NAMES[name.removesuffix("-sess")]
        if _hashlib_has(hash_name):
            table[name.lower()] = (name, hash_name, name.endswith("-sess"))
    return table


# Lower-case algorithm name -> (registered name, hashlib name, is -sess).
_ALGORITHMS = _algorithm_table()

#: The registered algorithm names this process can compute, in registry order.
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(entry[0] for entry in _ALGORITHMS.values())


def _lookup(algorithm: str) -> tuple[str, str, bool]:
    entry = _ALGORITHMS.get(algorithm.lower())
    if entry is None:
        raise SipError("unsupported digest algorithm")
    return entry


def _utf8(text: str) -> bytes:
    # RFC 7616 §4; SIP text is UTF-8 anyway (RFC 3261 §25.1).
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise SipError("text cannot be encoded as UTF-8") from None


def _h(hash_name: str, data: bytes) -> str:
    return hashlib.new(hash_name, data).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username ":" realm ":" password) in lower-case hex (RFC 7616 §3.4.2).

    This is what a credential store keeps, one per hash function.  A ``-sess``
    algorithm gives the same value as its base: the session part needs the
    nonce and cnonce and is applied by :func:`compute_response`.
    """
    _, hash_name, _ = _lookup(algorithm)
    return _h(hash_name, _utf8(f"{username}:{realm}:{password}"))


def userhash(username: str, realm: str, algorithm: str) -> str:
    """H(username ":" realm), sent as ``username`` when ``userhash=true`` (RFC 7616 §3.4.4)."""
    _, hash_name, _ = _lookup(algorithm)
    return _h(hash_name, _utf8(f"{username}:{realm}"))


def compute_response(
    ha1_hex: str,
    *,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value, lower-case hex (RFC 7616 §3.4.1, RFC 2069 §2.1.2).

    ``ha1_hex`` is :func:`ha1` of the algorithm's hash; ``nc`` is the 8 hex
    digits as sent.  With ``qop`` "auth" or "auth-int":

        response = KD(H(A1), nonce ":" nc ":" cnonce ":" qop ":" H(A2))

    with A2 = method ":" uri, plus ":" H(body) for "auth-int" (an empty body
    hashes the empty string, RFC 3261 §22.4 item 7).  Without ``qop`` (the RFC
    2069 form): KD(H(A1), nonce ":" H(A2)).  For ``-sess``,
    H(A1) = H(ha1 ":" nonce ":" cnonce).  Raises :class:`SipError` for an
    unsupported algorithm or qop and for a missing nc/cnonce.
    """
    _, hash_name, sess = _lookup(algorithm)
    a1 = ha1_hex.lower()
    if sess:
        if cnonce is None:
            raise SipError("-sess algorithm needs a cnonce")
        a1 = _h(hash_name, _utf8(f"{a1}:{nonce}:{cnonce}"))
    if qop is None:
        ha2 = _h(hash_name, _utf8(f"{method}:{uri}"))
        return _h(hash_name, _utf8(f"{a1}:{nonce}:{ha2}"))
    if qop == "auth":
        ha2 = _h(hash_name, _utf8(f"{method}:{uri}"))
    elif qop == "auth-int":
        ha2 = _h(hash_name, _utf8(f"{method}:{uri}:") + _h(hash_name, body).encode("ascii"))
    else:
        raise SipError("unsupported qop")
    if nc is None or cnonce is None:
        raise SipError("qop needs nc and cnonce")
    return _h(hash_name, _utf8(f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))


# --------------------------------------------------------------------------
# Stateless nonces


class NonceStatus(enum.Enum):
    """What :meth:`NonceFactory.check` found."""

    VALID = "valid"
    #: Authentic and well formed, but older than the lifetime: re-challenge
    #: with ``stale=true`` (RFC 7616 §3.3) if the response was right.
    STALE = "stale"
    #: Garbage, forged, or issued for another client address or realm, or
    #: from too far in the future.
    INVALID = "invalid"


# Nonce layout, before base64url: version (1) | issue time in ms, unsigned
# big-endian (8) | random salt (8) | HMAC-SHA256 tag truncated to 128 bits
# (16).  33 bytes encode to exactly 44 base64url characters without padding,
# so each nonce has one spelling.  The salt makes every nonce distinct, so
# two challenges in the same millisecond do not share nonce-count history.
_NONCE_VERSION = 1
_NONCE_HEAD = struct.Struct(">BQ8s")
_NONCE_TAG_LEN = 16
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{44}")
_NONCE_LABEL = b"sipedge digest nonce v1\x00"


def _length_prefixed(text: str) -> bytes:
    # surrogatepass: never raises, and distinct strings stay distinct.
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


class NonceFactory:
    """Makes and checks stateless nonces (RFC 7616 §3.3, §5.4-5.5).

    nonce = base64url(version || time || salt || HMAC-SHA256(secret, label ||
    version || time || salt || realm || client address)), the tag truncated to
    128 bits (RFC 2104 §5).  Binding the client address (pass the IP alone:
    ports change under NAT and between TCP connections) stops a nonce from
    being harvested at one address and used at another; binding the realm
    stops cross-realm use.  The secret never appears in a nonce, in ``repr``
    or in an error; every tag comparison is constant-time.

    ``lifetime`` is how long a nonce stays VALID; after that it is STALE.
    ``max_skew`` is how far in the future an issue time may lie (clocks of
    instances sharing the secret differ a little); beyond it the nonce is
    INVALID.  ``random`` supplies the salt (tests pass a deterministic one).
    """

    __slots__ = ("_random", "_secret", "lifetime", "max_skew")

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        *,
        max_skew: float = 5.0,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        # 128 bits at least: the secret is the whole strength of the scheme.
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("nonce lifetime must be positive")
        if not (math.isfinite(max_skew) and max_skew >= 0):
            raise ValueError("nonce clock skew must be non-negative")
        self._secret = bytes(secret)
        self._random = random
        self.lifetime = lifetime
        self.max_skew = max_skew

    def __repr__(self) -> str:
        return f"NonceFactory(lifetime={self.lifetime}, max_skew={self.max_skew})"

    def _tag(self, head: bytes, client_addr: str, realm: str) -> bytes:
        msg = _NONCE_LABEL + head + _length_prefixed(realm) + _length_prefixed(client_addr)
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_NONCE_TAG_LEN]

    def make(self, now: float, client_addr: str, realm: str) -> str:
        """A fresh nonce for ``client_addr`` in ``realm``, issued at ``now``."""
        if not (math.isfinite(now) and now >= 0):
            raise ValueError("now must be a finite, non-negative time")
        salt = self._random(8)
        if len(salt) != 8:
            raise ValueError("random source must return the requested length")
        head = _NONCE_HEAD.pack(_NONCE_VERSION, int(now * 1000), salt)
        raw = head + self._tag(head, client_addr, realm)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def check(self, nonce: str, now: float, client_addr: str, realm: str) -> NonceStatus:
        """Is ``nonce`` one of ours, for this client and realm, and still fresh?

        Authenticity is checked before age, so STALE always means "ours".
        """
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        if _NONCE_RE.fullmatch(nonce) is None:
            return NonceStatus.INVALID
        raw = base64.urlsafe_b64decode(nonce)
        head, tag = raw[: _NONCE_HEAD.size], raw[_NONCE_HEAD.size :]
        if not hmac.compare_digest(tag, self._tag(head, client_addr, realm)):
            return NonceStatus.INVALID
        version, issued_ms, _ = _NONCE_HEAD.unpack(head)
        if version != _NONCE_VERSION:
            return NonceStatus.INVALID
        issued = issued_ms / 1000.0
        if issued > now + self.max_skew:
            return NonceStatus.INVALID
        if now - issued > self.lifetime:
            return NonceStatus.STALE
        return NonceStatus.VALID


# --------------------------------------------------------------------------
# Nonce counts


class NonceCountStore(Protocol):
    """Remembers the highest nonce count seen per nonce (RFC 7616 §3.4, §5.4)."""

    def check_and_record(self, nonce: str, nc: int, now: float) -> bool:
        """True, and remember ``nc``, if it is strictly greater than any seen for ``nonce``."""
        ...


class MemoryNonceCountStore:
    """In-memory :class:`NonceCountStore`, bounded in size.

    Entries are kept ``ttl`` seconds after a nonce is first seen: give at
    least the nonce lifetime plus the allowed clock skew, after which the
    nonce is no longer VALID and its count history is not needed.  Beyond
    ``max_entries`` the oldest entry is dropped and counted in ``evictions``.
    Dropping a live entry re-opens replay of that one nonce until it expires,
    which is why :class:`DigestVerifier` records a count only after the
    response proved knowledge of the password: filling the store then takes
    that many authenticated requests, each with a distinct nonce, within one
    ``ttl``.  Watch ``evictions``; it should stay at zero.
    """

    __slots__ = ("_entries", "evictions", "max_entries", "ttl")

    def __init__(self, ttl: float = 305.0, max_entries: int = 100_000) -> None:
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError("ttl must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.evictions = 0
        # nonce -> (highest nc, time first seen), in first-seen order.
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            first_seen = next(iter(entries.values()))[1]
            if now - first_seen < self.ttl:
                return
            entries.popitem(last=False)

    def check_and_record(self, nonce: str, nc: int, now: float) -> bool:
        self._expire(now)
        entry = self._entries.get(nonce)
        if entry is not None:
            if nc <= entry[0]:
                return False
            self._entries[nonce] = (nc, entry[1])
            return True
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[nonce] = (nc, now)
        return True


# --------------------------------------------------------------------------
# Verification


class Verdict(enum.Enum):
    """Outcome of :meth:`DigestVerifier.verify`, in the order the checks run."""

    OK = "ok"
    #: The algorithm is not one this verifier accepts: re-challenge.
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    #: No qop (RFC 2069 form) while policy requires it (RFC 7616 §3.4), an
    #: unknown qop, or a -sess algorithm without qop (RFC 3261 §22.4 item 8).
    QOP_REQUIRED = "qop-required"
    #: The ``uri`` parameter does not match the Request-URI.
    BAD_URI = "bad-uri"
    #: Not a nonce of ours for this client and realm.
    BAD_NONCE = "bad-nonce"
    #: Wrong response, or qop without nc/cnonce (what sipvicious svcrack sends).
    BAD_RESPONSE = "bad-response"
    #: Right response on an expired nonce: re-challenge with stale=true.
    STALE = "stale"
    #: Right response, but the nonce count did not increase: a replay.
    REPLAY = "replay"


_DEFAULT_ALGORITHMS = tuple(name for name in ("SHA-256", "MD5") if name in SUPPORTED_ALGORITHMS)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_QOPS = ("auth", "auth-int")
# HA1 stand-in for unknown users: the work done is the same, so timing does
# not tell which usernames exist; it matches no password.
_UNKNOWN_USER_KEY = secrets.token_bytes(32)


def _normalise_uri(uri: str) -> str:
    # RFC 3261 §19.1.4 compares the scheme without case; everything else is
    # compared as text.  A full URI comparison would also ignore the case of
    # the host and the order of parameters, but the client is meant to copy
    # the Request-URI verbatim (RFC 3261 §22.4 item 3, digest-uri-value =
    # Request-URI), so a plain comparison refuses only broken or replayed
    # requests.
    uri = uri.strip(" \t")
    m = _SCHEME_RE.match(uri)
    return m.group().lower() + uri[m.end() :] if m else uri


class DigestVerifier:
    """The server side: challenges and verification (RFC 3261 §22.4, RFC 8760).

    ``algorithms`` are those accepted and offered by default, most preferred
    first (RFC 8760 §2.3-2.4: one challenge each, the client takes the first it
    supports); by default SHA-256 then MD5 (most phones still know only MD5),
    MD5 left out where hashlib lacks it (FIPS mode).  Naming an algorithm
    this process cannot compute raises ValueError.

    ``allow_rfc2069`` accepts credentials without qop; off by default because
    RFC 7616 §3.3-3.4 (which RFC 8760 brings to SIP) requires qop, and
    without a nonce count there is no replay protection.  When allowed, such
    a nonce is good for one request.

    ``check_uri`` compares the ``uri`` parameter with the Request-URI (see
    :meth:`verify`); RFC 3261 §22.4 item 6 allows a UAS to skip this when a
    proxy may have rewritten the Request-URI.
    """

    __slots__ = ("algorithms", "allow_rfc2069", "check_uri", "nc_store", "nonces")

    def __init__(
        self,
        nonces: NonceFactory,
        nc_store: NonceCountStore | None = None,
        *,
        algorithms: Sequence[str] | None = None,
        allow_rfc2069: bool = False,
        check_uri: bool = True,
    ) -> None:
        self.nonces = nonces
        self.nc_store: NonceCountStore = (
            nc_store
            if nc_store is not None
            else MemoryNonceCountStore(ttl=nonces.lifetime + nonces.max_skew)
        )
        self.algorithms = _canonical_list(_DEFAULT_ALGORITHMS if algorithms is None else algorithms)
        self.allow_rfc2069 = allow_rfc2069
        self.check_uri = check_uri

    def make_challenge(
        self,
        realm: str,
        now: float,
        client_addr: str,
        algorithms: Sequence[str] | None = None,
        stale: bool = False,
        opaque: str | None = None,
    ) -> list[DigestChallenge]:
        """One challenge per algorithm, in the given order, all with qop="auth".

        Serialise each into its own ``WWW-Authenticate`` (UAS, registrar) or
        ``Proxy-Authenticate`` (proxy) header field, in list order: the UAC
        takes the topmost it supports (RFC 8760 §2.3-2.4).  All share one
        nonce: it is not bound to an algorithm.
        """
        names = self.algorithms if algorithms is None else _canonical_list(algorithms)
        nonce = self.nonces.make(now, client_addr, realm)
        return [
            DigestChallenge(
                realm=realm,
                nonce=nonce,
                algorithm=name,
                qop=("auth",),
                opaque=opaque,
                stale=stale,
            )
            for name in names
        ]

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        request_uri: str,
        ha1: str | None,
        now: float,
        client_addr: str,
        body: bytes = b"",
    ) -> Verdict:
        """Check ``credentials`` presented with a request.

        ``ha1`` is the stored HA1 (:func:`ha1`) for the credentials' username,
        realm and hash, looked up by the caller (by userhash when
        ``credentials.userhash``), or None for an unknown user: the verdict is
        then BAD_RESPONSE after the same work.  The realm is vouched for by
        the nonce, which was bound to it.  ``body`` is the message body, for
        qop=auth-int.

        The ``uri`` parameter must equal ``request_uri`` after trimming
        whitespace and lower-casing the scheme: a string comparison, as RFC
        3261 §22.4 allows (see :func:`_normalise_uri`).

        The nonce count is recorded only once the response is right, so
        unauthenticated floods cannot fill the count store.
        """
        entry = _ALGORITHMS.get(credentials.effective_algorithm.lower())
        if entry is None or entry[0] not in self.algorithms:
            return Verdict.UNSUPPORTED_ALGORITHM
        algorithm, _, sess = entry
        qop = credentials.qop
        if qop is None:
            # RFC 3261 §22.4 item 8: -sess depends on the cnonce, hence on qop.
            if not self.allow_rfc2069 or sess:
                return Verdict.QOP_REQUIRED
        elif qop not in _QOPS:
            return Verdict.QOP_REQUIRED
        if self.check_uri and _normalise_uri(credentials.uri) != _normalise_uri(request_uri):
            return Verdict.BAD_URI
        status = self.nonces.check(credentials.nonce, now, client_addr, credentials.realm)
        if status is NonceStatus.INVALID:
            return Verdict.BAD_NONCE
        if qop is not None and (credentials.nc is None or credentials.cnonce is None):
            # RFC 7616 §3.4: cnonce and nc MUST accompany qop.  sipvicious
            # svcrack sends qop=auth over an RFC 2069 response without them.
            return Verdict.BAD_RESPONSE
        known = ha1 if ha1 is not None else _h(entry[1], _UNKNOWN_USER_KEY)
        expected = compute_response(
            known,
            algorithm=algorithm,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            body=body,
        )
        given = credentials.response.lower().encode("utf-8")
        if not hmac.compare_digest(expected.encode("ascii"), given) or ha1 is None:
            return Verdict.BAD_RESPONSE
        # RFC 7616 §3.3: stale only when the digest itself was valid.
        if status is NonceStatus.STALE:
            return Verdict.STALE
        # Without qop there is no count: nc 0 makes the nonce single-use.
        count = credentials.nc_value or 0
        if not self.nc_store.check_and_record(credentials.nonce, count, now):
            return Verdict.REPLAY
        return Verdict.OK


def _canonical_list(algorithms: Sequence[str]) -> tuple[str, ...]:
    names: list[str] = []
    for name in algorithms:
        entry = _ALGORITHMS.get(name.lower())
        if entry is None:
            raise ValueError(f"digest algorithm {name!r} is not supported here")
        if entry[0] not in names:
            names.append(entry[0])
    if not names:
        raise ValueError("at least one digest algorithm is needed")
    return tuple(names)


# --------------------------------------------------------------------------
# Client side


def answer_challenge(
    challenge: DigestChallenge,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> DigestCredentials:
    """Credentials answering ``challenge`` for a request ``method uri``.

    Picks qop "auth" when offered, else "auth-int" (hashing ``body``); when
    the challenge offers no qop, answers in the RFC 2069 form (no cnonce or
    nc; RFC 3261 §22.4 item 8) unless the algorithm is ``-sess``, which
    needs qop.  With ``userhash=true`` the username is sent hashed (RFC 7616
    §3.4.4).  ``cnonce`` should be fresh random text (e.g.
    ``secrets.token_urlsafe(16)``) and ``nc`` count the requests made with
    this nonce from 1.  Raises :class:`SipError` when the challenge cannot be
    answered.
    """
    _, hash_name, sess = _lookup(challenge.effective_algorithm)
    algorithm = challenge.algorithm
    if "auth" in challenge.qop:
        qop: str | None = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise SipError("no supported qop offered")
    else:
        qop = None
    if qop is None and sess:
        raise SipError("-sess algorithm offered without qop")
    if not 0 < nc <= 0xFFFFFFFF:
        raise SipError("nonce count out of range")
    nc_text = f"{nc:08x}" if qop is not None else None
    cnonce_value = cnonce if qop is not None else None
    response = compute_response(
        _h(hash_name, _utf8(f"{username}:{challenge.realm}:{password}")),
        algorithm=challenge.effective_algorithm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce_value,
        body=body,
    )
    sent_username = username
    if challenge.userhash:
        sent_username = _h(hash_name, _utf8(f"{username}:{challenge.realm}"))
    return DigestCredentials(
        username=sent_username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce_value,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc_text,
        userhash=challenge.userhash,
    )
