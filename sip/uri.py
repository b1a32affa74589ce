"""SIP, SIPS and tel URIs, and opaque absolute URIs (RFC 3261 §19.1, §25; RFC 3966).

A :class:`URI` keeps the text it was parsed from, so that an untouched URI
serialises to exactly its original bytes; :meth:`URI.replace` and the
``with_*`` helpers give a new URI whose text is rebuilt.

Comparison follows RFC 3261 §19.1.4 (:meth:`URI.equivalent`): escapes are
undone, scheme, host and parameter names compare case-insensitively, user and
password case-sensitively, and ``user``/``ttl``/``method``/``maddr``/
``transport`` must match when either side has them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote as _pct_decode

from sip._abnf import (
    ESCAPED,
    HOST,
    HOSTNAME,
    IPV4_RE,
    UNRESERVED,
    lower_name,
    remember,
    same_name,
    split_plain_params,
)
from sip.errors import SipError

MAX_URI_LENGTH: Final = 4096

Param = tuple[str, str | None]

# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
_USER_RE: Final = re.compile(rf"(?:[{UNRESERVED}&=+$,;?/]|{ESCAPED})+")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD_RE: Final = re.compile(rf"(?:[{UNRESERVED}&=+$,]|{ESCAPED})*")
# hostport = host [ ":" port ]
_HOSTPORT_RE: Final = re.compile(rf"(?P<host>{HOST})(?::(?P<port>[0-9]{{1,5}}))?")
# uri-parameter = pname [ "=" pvalue ]; pname/pvalue = 1*paramchar
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
_PARAMCHARS: Final = rf"(?:[{UNRESERVED}\[\]/:&+$]|{ESCAPED})+"
_URI_PARAM_RE: Final = re.compile(rf";(?P<name>{_PARAMCHARS})(?:=(?P<value>{_PARAMCHARS}))?")
# header = hname "=" hvalue ; hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNV: Final = rf"(?:[{UNRESERVED}\[\]/?:+$]|{ESCAPED})"
_URI_HEADER_RE: Final = re.compile(rf"(?P<name>{_HNV}+)=(?P<value>{_HNV}*)")
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# uric = reserved / unreserved / escaped (RFC 2396), for opaque absolute URIs
_URIC_RE: Final = re.compile(rf"(?:[{UNRESERVED};/?:@&=+$,]|{ESCAPED})+")
# RFC 3966: telephone-subscriber, kept loose on the number itself (visual
# separators vary by country) but strict on the character set.
_TEL_NUMBER_RE: Final = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_TEL_PARAM_RE: Final = re.compile(
    rf";(?P<name>[A-Za-z0-9\-]+)(?:=(?P<value>(?:[{UNRESERVED}\[\]/:&+$]|{ESCAPED})+))?"
)

# The common shape of a SIP URI (user@host:port;params, no escapes, no IPv6,
# no headers) in one regex.  It accepts a subset of what the full path
# accepts, never more; anything else takes the full path.
_FAST_PCHARS: Final = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
_FAST_SIP_RE: Final = re.compile(
    rf"([Ss][Ii][Pp][Ss]?):(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?({HOSTNAME})(?::([0-9]{{1,5}}))?"
    rf"((?:;{_FAST_PCHARS}(?:={_FAST_PCHARS})?)*)"
)

# Parameters that must match when present on either side (§19.1.4).
_MUST_MATCH_PARAMS: Final = ("user", "ttl", "method", "maddr", "transport")


def _params_tuple(text: str, pattern: re.Pattern[str], what: str) -> tuple[Param, ...]:
    params: list[Param] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = pattern.match(text, pos)
        if m is None:
            raise SipError(f"malformed {what} parameter")
        params.append((m.group("name"), m.group("value")))
        pos = m.end()
    return tuple(params)


def _check_host(host: str) -> str:
    """Return the host without IPv6 brackets, checking IP literals."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipError("malformed IPv6 reference") from None
        return host[1:-1]
    if host[0].isdigit():
        check_ipv4_like(host)
    return host


def check_ipv4_like(host: str) -> None:
    """A host of digits and dots must be an IPv4 address, not a hostname
    (RFC 3261: a toplabel starts with a letter)."""
    if IPV4_RE.fullmatch(host) is None and host.rstrip(".").replace(".", "").isdigit():
        raise SipError("malformed IPv4 address")


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 address or an IPv6 address without brackets."""
    # Asked for every next hop and every stamped Via: the same few upstream and
    # peer addresses, over and over.  A regex match costs about twenty times the
    # lookup; the cache is bounded like the parse memos (emptied when full).
    known = _ip_literals.get(host)
    if known is not None:
        return known
    literal = _is_ip_literal(host)
    remember(_ip_literals, host, literal, _IP_LITERALS_MAX)
    return literal


_IP_LITERALS_MAX: Final = 1024
_ip_literals: Final[dict[str, bool]] = {}


def _is_ip_literal(host: str) -> bool:
    if IPV4_RE.fullmatch(host) is not None:
        return True
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def format_host(host: str) -> str:
    """Put an IPv6 address in brackets (an IPv6reference); leave others as they are."""
    return f"[{host}]" if ":" in host else host


@dataclass(slots=True, init=False)
class URI:
    """A parsed URI.

    For ``sip``/``sips``: ``user``, ``password``, ``host`` (IPv6 without
    brackets), ``port``, ``params`` and ``headers`` as written (escapes kept).
    For ``tel``: ``user`` is the number, ``params`` its parameters.  For any
    other scheme only ``opaque`` (the text after ``scheme:``) is set.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[Param, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None
    text: str = dataclasses.field(default="", compare=False, repr=False)

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: tuple[Param, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        opaque: str | None = None,
        text: str = "",
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers
        self.opaque = opaque
        self.text = text

    # -- parsing ---------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> URI:
        if len(text) > MAX_URI_LENGTH:
            raise SipError("URI too long", 414)
        m = _FAST_SIP_RE.fullmatch(text)
        if m is not None:
            scheme, user, host, port_text, param_text = m.groups()
            if host[0].isdigit():
                _check_host(host)
            port = None
            if port_text is not None:
                port = int(port_text)
                if port > 65535:
                    raise SipError("URI port out of range")
            params = split_plain_params(param_text)
            return cls(scheme.lower(), user, None, host, port, params, (), None, text)
        colon = text.find(":")
        if colon <= 0 or _SCHEME_RE.fullmatch(text, 0, colon) is None:
            raise SipError("malformed URI scheme")
        scheme = text[:colon].lower()
        rest = text[colon + 1 :]
        if scheme in ("sip", "sips"):
            return cls._parse_sip(scheme, rest, text)
        if scheme == "tel":
            return cls._parse_tel(rest, text)
        if not rest or _URIC_RE.fullmatch(rest) is None:
            raise SipError("malformed URI")
        return cls(scheme=scheme, opaque=rest, text=text)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str, text: str) -> URI:
        user: str | None = None
        password: str | None = None
        # "@" appears nowhere in a SIP URI but as the end of userinfo: user,
        # password, params and headers may only carry it escaped.
        at = rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            colon = userinfo.find(":")
            if colon >= 0:
                user, password = userinfo[:colon], userinfo[colon + 1 :]
                if _PASSWORD_RE.fullmatch(password) is None:
                    raise SipError("malformed URI password")
            else:
                user = userinfo
            if _USER_RE.fullmatch(user) is None:
                raise SipError("malformed URI user")
        m = _HOSTPORT_RE.match(rest)
        if m is None:
            raise SipError("malformed URI host")
        host = _check_host(m.group("host"))
        port_text = m.group("port")
        port = int(port_text) if port_text is not None else None
        if port is not None and port > 65535:
            raise SipError("URI port out of range")
        tail = rest[m.end() :]
        headers: tuple[tuple[str, str], ...] = ()
        q = tail.find("?")
        if q >= 0:
            header_text = tail[q + 1 :]
            tail = tail[:q]
            items = []
            for part in header_text.split("&"):
                hm = _URI_HEADER_RE.fullmatch(part)
                if hm is None:
                    raise SipError("malformed URI header")
                items.append((hm.group("name"), hm.group("value")))
            headers = tuple(items)
        params = _params_tuple(tail, _URI_PARAM_RE, "URI") if tail else ()
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=params,
            headers=headers,
            text=text,
        )

    @classmethod
    def _parse_tel(cls, rest: str, text: str) -> URI:
        m = _TEL_NUMBER_RE.match(rest)
        if m is None:
            raise SipError("malformed tel URI")
        params = _params_tuple(rest[m.end() :], _TEL_PARAM_RE, "tel URI")
        return cls(scheme="tel", user=m.group(), params=params, text=text)

    # -- access ----------------------------------------------------------
    def param(self, name: str) -> str | None:
        """Value of a parameter (name case-insensitive); None if absent or valueless."""
        lname = lower_name(name)
        for key, value in self.params:
            if same_name(key, lname):
                return value
        return None

    def has_param(self, name: str) -> bool:
        lname = lower_name(name)
        for key, _ in self.params:  # noqa: SIM110 (a plain loop is cheaper than any() here)
            if same_name(key, lname):
                return True
        return False

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value is not None else None

    @property
    def lr(self) -> bool:
        """True for a loose-routing URI (RFC 3261 §19.1.1 ``lr``)."""
        return self.has_param("lr")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    # -- building --------------------------------------------------------
    def replace(self, **changes: object) -> URI:
        """A copy with fields changed and its text rebuilt."""
        changed = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(changed, text=changed._build())

    def with_param(self, name: str, value: str | None = None) -> URI:
        """A copy with ``name`` set (replacing any existing value)."""
        lname = name.lower()
        params = (*(p for p in self.params if p[0].lower() != lname), (name, value))
        return self.replace(params=params)

    def without_param(self, name: str) -> URI:
        lname = name.lower()
        return self.replace(params=tuple(p for p in self.params if p[0].lower() != lname))

    def _build(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.scheme == "tel":
            out.append(self.user or "")
        else:
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out += [":", self.password]
                out.append("@")
            out.append(format_host(self.host))
            if self.port is not None:
                out.append(f":{self.port}")
        for name, value in self.params:
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            out.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)

    def __str__(self) -> str:
        return self.text or self._build()

    # -- comparison (RFC 3261 §19.1.4) --------------------------------------
    def equivalent(self, other: URI) -> bool:
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if _dec(self.user) != _dec(other.user) or _dec(self.password) != _dec(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = {_pct_decode(k).lower(): _dec(v) for k, v in self.params}
        theirs = {_pct_decode(k).lower(): _dec(v) for k, v in other.params}
        for name in _MUST_MATCH_PARAMS:
            if (name in mine or name in theirs) and _lower(mine.get(name)) != _lower(
                theirs.get(name)
            ):
                return False
        for name in mine.keys() & theirs.keys():
            if _lower(mine[name]) != _lower(theirs[name]):
                return False
        mine_h = {_pct_decode(k).lower(): _pct_decode(v) for k, v in self.headers}
        theirs_h = {_pct_decode(k).lower(): _pct_decode(v) for k, v in other.headers}
        return mine_h == theirs_h


def _dec(text: str | None) -> str | None:
    return None if text is None else _pct_decode(text)


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


def parse_uri(text: str) -> URI:
    """Parse a URI, raising :class:`SipError` if it is malformed."""
    return URI.parse(text)
