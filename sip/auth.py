"""Authentication header grammar: credentials and challenges.

Parses and serialises the value (the text after ``Name:``, already unfolded,
one header field value) of the four authentication headers:

* ``Authorization`` and ``Proxy-Authorization`` carry *credentials*
  (:func:`parse_credentials`);
* ``WWW-Authenticate`` and ``Proxy-Authenticate`` carry a *challenge*
  (:func:`parse_challenge`).

Schemes understood: ``Digest`` (RFC 3261 §25.1 / §22.4, RFC 7616 §3.3-3.5,
RFC 8760), ``Bearer`` (RFC 8898 §2.2-2.3, RFC 6750 §2.1 and §3); any other
scheme (``AccessKey ak_...`` used by the edge for trunks, RFC 4475 §3.3.7
``NoOneKnowsThisScheme``) is returned with its raw parameter text so that the
caller decides.  Scheme names are compared without case (RFC 3261 §25.1:
tokens are case-insensitive unless stated otherwise).

Rules of this file:

* every malformed input raises :class:`~sip.errors.SipError` (status 400),
  never another exception; values longer than :data:`MAX_VALUE_LEN` or
  holding control characters other than HTAB are refused outright;
* the objects are frozen and validated on construction, so anything that
  exists can be serialised, and ``parse(x.to_header()) == x``;
* parsing is lenient where real peers are sloppy and the meaning is not in
  doubt (a quoted ``algorithm``, an unquoted ``qop`` list, empty list
  elements), strict where ambiguity could hide an attack (duplicate
  parameters, unterminated quotes, missing commas).

One challenge per header value: SIP repeats the header field for several
challenges (RFC 3261 §20.44, RFC 8760 §2.3) instead of using the HTTP
comma-separated challenge list.

Deliberately not supported: the RFC 7616 §3.4.4 ``username*`` extended
notation (no SIP stack sends it; it is kept as an unknown parameter and the
credentials then lack ``username``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip.errors import SipError

__all__ = [
    "DIGEST_ALGORITHMS",
    "MAX_VALUE_LEN",
    "BearerChallenge",
    "BearerCredentials",
    "DigestChallenge",
    "DigestCredentials",
    "OtherChallenge",
    "OtherCredentials",
    "parse_challenge",
    "parse_credentials",
]

#: Longest header value accepted.  Real Digest credentials are a few hundred
#: characters; a JWT bearer token a few thousand at most.
MAX_VALUE_LEN = 4096

#: Digest algorithm names of the IANA "HTTP Digest Hash Algorithms" registry
#: (RFC 7616 §6.1), in their registered spelling.  Parsing maps any case
#: variant (Asterisk sends ``algorithm=md5``) to these; an unknown algorithm
#: token is kept as sent so the verifier can refuse it by name.
DIGEST_ALGORITHMS: tuple[str, ...] = (
    "MD5",
    "MD5-sess",
    "SHA-256",
    "SHA-256-sess",
    "SHA-512-256",
    "SHA-512-256-sess",
)
_ALGORITHM_BY_LOWER = {name.lower(): name for name in DIGEST_ALGORITHMS}

# RFC 3261 §25.1:
#   token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
# This is what we emit unquoted.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# RFC 7230 §3.2.6 tchar adds "#" "$" "&" "^" "|"; accepted in names and schemes
# because SIP stacks share HTTP parsers.
_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~#$&^|]+")
# Unquoted values: tokens plus the characters sloppy peers leave unquoted in
# base64 nonces and URIs.  A value still ends at whitespace or a comma.
_BARE_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~#$&^|/=:@]+")
# RFC 3261 §25.1:
#   quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
#   quoted-pair   = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# The two alternatives are disjoint, so the match is linear.
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
# RFC 3261 §25.1: nc-value = 8LHEX.  Upper-case hex is tolerated; the text is
# kept as sent because it is an input of the response hash.
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")
# RFC 7235 §2.1 / RFC 6750 §2.1:
#   token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Everything below SP except HTAB, and DEL.  CR, LF and NUL are the dangerous
# ones (header injection, C-string truncation downstream); the others have no
# business in these headers either.
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_WS = " \t"
_WS_RUN_RE = re.compile(r"[ \t]+")


# --------------------------------------------------------------------------
# Low-level helpers


def _check_text(text: str, what: str) -> None:
    """Refuse control characters and text that cannot be encoded as UTF-8."""
    if _CTL_RE.search(text):
        raise SipError(f"control character in {what}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: would blow up later when hashing.
            raise SipError(f"invalid character in {what}") from None


def _check_value(value: str) -> str:
    if len(value) > MAX_VALUE_LEN:
        raise SipError("authentication header value too long")
    _check_text(value, "authentication header")
    return value.strip(_WS)


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _quote(text: str) -> str:
    # RFC 3261 §25.1 quoted-pair: only '"' and '\' need escaping; CR and LF
    # cannot be escaped at all and are refused on construction.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


def _split_scheme(value: str) -> tuple[str, str]:
    """Split ``scheme 1*LWS rest`` into (scheme, rest)."""
    m = _NAME_RE.match(value)
    if m is None:
        raise SipError("missing authentication scheme")
    scheme = value[: m.end()]
    rest = value[m.end() :]
    if rest and rest[0] not in _WS:
        raise SipError("authentication scheme must be followed by whitespace")
    return scheme, rest.strip(_WS)


def _parse_params(text: str) -> list[tuple[str, str]]:
    """Parse ``auth-param *(COMMA auth-param)`` into (lower-case name, value).

    RFC 3261 §25.1: auth-param = auth-param-name EQUAL ( token / quoted-string ),
    with LWS allowed around "=" and ",".  Quoted values come back unescaped.
    Empty list elements are skipped (RFC 7230 §7); duplicate names are refused
    because two differing values for one parameter have no safe reading.
    """
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    n = len(text)
    pos = 0
    while True:
        pos = _skip_ws(text, pos)
        if pos >= n:
            return params
        if text[pos] == ",":
            pos += 1
            continue
        m = _NAME_RE.match(text, pos)
        if m is None:
            raise SipError("expected an auth-param name")
        name = m.group().lower()
        pos = _skip_ws(text, m.end())
        if pos >= n or text[pos] != "=":
            raise SipError("auth-param without '='")
        pos = _skip_ws(text, pos + 1)
        if pos < n and text[pos] == '"':
            q = _QUOTED_RE.match(text, pos)
            if q is None:
                raise SipError("unterminated quoted string in auth-param")
            value = _UNESCAPE_RE.sub(r"\1", q.group(1))
            pos = q.end()
        else:
            b = _BARE_VALUE_RE.match(text, pos)
            if b is None:
                raise SipError("auth-param without a value")
            value = b.group()
            pos = b.end()
        if name in seen:
            raise SipError("duplicate auth-param")
        seen.add(name)
        params.append((name, value))
        pos = _skip_ws(text, pos)
        if pos < n and text[pos] != ",":
            raise SipError("auth-params must be separated by commas")


def _canonical_algorithm(value: str) -> str:
    if not _is_token(value):
        raise SipError("algorithm is not a token")
    return _ALGORITHM_BY_LOWER.get(value.lower(), value)


def _flag(value: str | None) -> bool:
    # RFC 7616 §3.3 stale / §3.4 userhash: "true" without case; RFC 2617 §3.2.1
    # reads anything else as false.
    return value is not None and value.lower() == "true"


def _check_extra(extra: tuple[tuple[str, str], ...], known: frozenset[str]) -> None:
    seen: set[str] = set()
    for name, value in extra:
        if _NAME_RE.fullmatch(name) is None or name != name.lower():
            raise SipError("extra auth-param name must be a lower-case token")
        if name in known or name in seen:
            raise SipError("extra auth-param duplicates another parameter")
        seen.add(name)
        _check_text(value, "auth-param value")


def _format_extra(extra: tuple[tuple[str, str], ...]) -> list[str]:
    # RFC 7235 §2.1: the token and quoted-string forms are equivalent, so
    # emit bare only what is certainly a token.
    return [f"{name}={value if _is_token(value) else _quote(value)}" for name, value in extra]


def _extra(params: list[tuple[str, str]], known: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in params if name not in known)


# --------------------------------------------------------------------------
# Digest


_CREDENTIAL_FIELDS = frozenset(
    {
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "algorithm",
        "cnonce",
        "opaque",
        "qop",
        "nc",
        "userhash",
    }
)


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """``Digest`` credentials (RFC 3261 §25.1 digest-response, RFC 7616 §3.4).

    ``algorithm`` is ``None`` when absent (meaning MD5, RFC 7616 §3.3; see
    :attr:`effective_algorithm`), a registered name in its registered spelling,
    or an unknown token as sent.  ``nc`` is the 8 hex digits as sent, because
    they are hashed as text.  ``qop`` is the single token chosen by the client.
    When ``userhash`` is true, ``username`` is H(username ":" realm) (RFC 7616
    §3.4.4).  ``extra_params`` keeps unknown parameters, names in lower case.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    userhash: bool = False
    extra_params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for field in (self.username, self.realm, self.nonce, self.uri, self.response):
            _check_text(field, "Digest credentials")
        for opt in (self.cnonce, self.opaque):
            if opt is not None:
                _check_text(opt, "Digest credentials")
        if self.algorithm is not None and not _is_token(self.algorithm):
            raise SipError("algorithm is not a token")
        if self.qop is not None and not _is_token(self.qop):
            raise SipError("qop in credentials must be a single token")
        if self.nc is not None and _NC_RE.fullmatch(self.nc) is None:
            raise SipError("nc must be exactly 8 hex digits")
        _check_extra(self.extra_params, _CREDENTIAL_FIELDS)

    @property
    def effective_algorithm(self) -> str:
        """The algorithm in force: MD5 when the parameter is absent (RFC 7616 §3.3)."""
        return self.algorithm if self.algorithm is not None else "MD5"

    @property
    def nc_value(self) -> int | None:
        """The nonce count as a number."""
        return int(self.nc, 16) if self.nc is not None else None

    def to_header(self) -> str:
        """The header value, ``Digest username="...", ...``."""
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        # RFC 3261 §25.1 message-qop and nonce-count are bare tokens.
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        if self.userhash:
            parts.append("userhash=true")
        parts.extend(_format_extra(self.extra_params))
        return "Digest " + ", ".join(parts)

    def __str__(self) -> str:
        return self.to_header()


_CHALLENGE_FIELDS = frozenset(
    {"realm", "domain", "nonce", "opaque", "stale", "algorithm", "qop", "userhash"}
)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A ``Digest`` challenge (RFC 3261 §25.1 digest-cln, RFC 7616 §3.3).

    ``qop`` is the offered list (empty: no qop, the RFC 2069 form); ``domain``
    the space-separated URI list, split.  ``algorithm`` as in
    :class:`DigestCredentials`.  ``extra_params`` keeps the rest (``charset``
    among them), names in lower case.
    """

    realm: str
    nonce: str
    algorithm: str | None = None
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: tuple[str, ...] = ()
    userhash: bool = False
    extra_params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_text(self.realm, "Digest challenge")
        _check_text(self.nonce, "Digest challenge")
        if self.opaque is not None:
            _check_text(self.opaque, "Digest challenge")
        if self.algorithm is not None and not _is_token(self.algorithm):
            raise SipError("algorithm is not a token")
        for qop in self.qop:
            if not _is_token(qop):
                raise SipError("qop option is not a token")
        for uri in self.domain:
            # The list is space-separated inside one quoted string.
            if not uri or any(c in _WS for c in uri):
                raise SipError("domain URI must be non-empty without whitespace")
            _check_text(uri, "Digest challenge")
        _check_extra(self.extra_params, _CHALLENGE_FIELDS)

    @property
    def effective_algorithm(self) -> str:
        """The algorithm in force: MD5 when the parameter is absent (RFC 7616 §3.3)."""
        return self.algorithm if self.algorithm is not None else "MD5"

    def to_header(self) -> str:
        """The header value, ``Digest realm="...", ...``."""
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain:
            parts.append(f"domain={_quote(' '.join(self.domain))}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        # RFC 3261 §25.1: qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        if self.userhash:
            parts.append("userhash=true")
        parts.extend(_format_extra(self.extra_params))
        return "Digest " + ", ".join(parts)

    def __str__(self) -> str:
        return self.to_header()


def _digest_credentials(params: list[tuple[str, str]]) -> DigestCredentials:
    d = dict(params)
    # RFC 3261 §22.4 / RFC 7616 §3.4: without these no response can be checked.
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in d:
            raise SipError(f"Digest credentials without {required}")
    algorithm = d.get("algorithm")
    return DigestCredentials(
        username=d["username"],
        realm=d["realm"],
        nonce=d["nonce"],
        uri=d["uri"],
        response=d["response"],
        algorithm=None if algorithm is None else _canonical_algorithm(algorithm),
        cnonce=d.get("cnonce"),
        opaque=d.get("opaque"),
        # Some clients quote it (RFC 2617 errata); a quoted list is still refused
        # by the token check on construction.
        qop=d.get("qop"),
        nc=d.get("nc"),
        userhash=_flag(d.get("userhash")),
        extra_params=_extra(params, _CREDENTIAL_FIELDS),
    )


def _digest_challenge(params: list[tuple[str, str]]) -> DigestChallenge:
    d = dict(params)
    for required in ("realm", "nonce"):
        if required not in d:
            raise SipError(f"Digest challenge without {required}")
    qop: tuple[str, ...] = ()
    if "qop" in d:
        # Quoted comma list per RFC 3261; some servers send a bare token.
        # Whitespace after the comma appears in RFC 7616 §3.9.1 itself.
        qop = tuple(item.strip(_WS) for item in d["qop"].split(",") if item.strip(_WS))
        if not qop:
            raise SipError("empty qop in Digest challenge")
    algorithm = d.get("algorithm")
    return DigestChallenge(
        realm=d["realm"],
        nonce=d["nonce"],
        algorithm=None if algorithm is None else _canonical_algorithm(algorithm),
        qop=qop,
        opaque=d.get("opaque"),
        stale=_flag(d.get("stale")),
        # Split on SP/HTAB only: str.split() would also cut at Unicode spaces.
        domain=tuple(uri for uri in _WS_RUN_RE.split(d.get("domain", "")) if uri),
        userhash=_flag(d.get("userhash")),
        extra_params=_extra(params, _CHALLENGE_FIELDS),
    )


# --------------------------------------------------------------------------
# Bearer (RFC 8898)


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """``Bearer <token68>`` credentials (RFC 8898 §2.3, RFC 6750 §2.1)."""

    token: str

    def __post_init__(self) -> None:
        if len(self.token) > MAX_VALUE_LEN or _TOKEN68_RE.fullmatch(self.token) is None:
            raise SipError("Bearer token is not a token68")

    def to_header(self) -> str:
        return f"Bearer {self.token}"

    def __str__(self) -> str:
        return self.to_header()


_BEARER_FIELDS = frozenset({"realm", "scope", "authz_server", "error"})


@dataclass(frozen=True, slots=True)
class BearerChallenge:
    """A ``Bearer`` challenge (RFC 8898 §2.2, RFC 6750 §3).

    ``authz_server`` is where the UA gets a token; ``error`` is the RFC 6750
    §3.1 code (``invalid_token`` ...).  Nothing is required: a bare
    ``Bearer`` challenge is accepted.
    """

    realm: str | None = None
    scope: str | None = None
    authz_server: str | None = None
    error: str | None = None
    extra_params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for opt in (self.realm, self.scope, self.authz_server, self.error):
            if opt is not None:
                _check_text(opt, "Bearer challenge")
        _check_extra(self.extra_params, _BEARER_FIELDS)

    def to_header(self) -> str:
        parts = [
            f"{name}={_quote(value)}"
            for name, value in (
                ("realm", self.realm),
                ("scope", self.scope),
                ("authz_server", self.authz_server),
                ("error", self.error),
            )
            if value is not None
        ]
        parts.extend(_format_extra(self.extra_params))
        return "Bearer " + ", ".join(parts) if parts else "Bearer"

    def __str__(self) -> str:
        return self.to_header()


def _bearer_challenge(params: list[tuple[str, str]]) -> BearerChallenge:
    d = dict(params)
    return BearerChallenge(
        realm=d.get("realm"),
        scope=d.get("scope"),
        authz_server=d.get("authz_server"),
        error=d.get("error"),
        extra_params=_extra(params, _BEARER_FIELDS),
    )


# --------------------------------------------------------------------------
# Other schemes


def _check_other(scheme: str, params: str) -> None:
    if _NAME_RE.fullmatch(scheme) is None:
        raise SipError("authentication scheme is not a token")
    if params != params.strip(_WS):
        raise SipError("parameter text must not start or end with whitespace")
    if len(params) > MAX_VALUE_LEN:
        raise SipError("authentication header value too long")
    _check_text(params, "authentication parameters")


@dataclass(frozen=True, slots=True)
class OtherCredentials:
    """Credentials of a scheme this module does not interpret.

    ``scheme`` is as sent (compare it with ``.lower()``); ``params`` is the raw
    text after it, stripped, e.g. ``ak_...`` for ``AccessKey ak_...``.
    """

    scheme: str
    params: str = ""

    def __post_init__(self) -> None:
        _check_other(self.scheme, self.params)

    def to_header(self) -> str:
        return f"{self.scheme} {self.params}" if self.params else self.scheme

    def __str__(self) -> str:
        return self.to_header()


@dataclass(frozen=True, slots=True)
class OtherChallenge:
    """A challenge of a scheme this module does not interpret (see :class:`OtherCredentials`)."""

    scheme: str
    params: str = ""

    def __post_init__(self) -> None:
        _check_other(self.scheme, self.params)

    def to_header(self) -> str:
        return f"{self.scheme} {self.params}" if self.params else self.scheme

    def __str__(self) -> str:
        return self.to_header()


# --------------------------------------------------------------------------
# Entry points


def parse_credentials(value: str) -> DigestCredentials | BearerCredentials | OtherCredentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` header value.

    RFC 3261 §25.1: credentials = ("Digest" LWS digest-response) / other-response;
    RFC 8898 §2.3: ``Bearer`` token68.  Raises :class:`SipError` (400) on
    anything malformed.
    """
    scheme, rest = _split_scheme(_check_value(value))
    lower = scheme.lower()
    if lower == "digest":
        return _digest_credentials(_parse_params(rest))
    if lower == "bearer":
        if _TOKEN68_RE.fullmatch(rest) is None:
            raise SipError("Bearer credentials need exactly one token68")
        return BearerCredentials(rest)
    return OtherCredentials(scheme, rest)


def parse_challenge(value: str) -> DigestChallenge | BearerChallenge | OtherChallenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` header value.

    RFC 3261 §25.1: challenge = ("Digest" LWS digest-cln *(COMMA digest-cln))
    / other-challenge; RFC 8898 §2.2 for ``Bearer``.  Raises
    :class:`SipError` (400) on anything malformed.
    """
    scheme, rest = _split_scheme(_check_value(value))
    lower = scheme.lower()
    if lower == "digest":
        return _digest_challenge(_parse_params(rest))
    if lower == "bearer":
        return _bearer_challenge(_parse_params(rest))
    return OtherChallenge(scheme, rest)
