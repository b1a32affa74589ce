"""Typed values of the headers a proxy reads (RFC 3261 §20, §25).

The value types are slotted dataclasses that callers treat as immutable:
edit with ``replace()``/``with_param()`` and write the result back into the
message.  They are not ``frozen=True`` because a frozen dataclass costs five
times as much to build (2.7 µs against 0.5 µs here), and a message builds a
dozen of them on every parse.

Each type parses one header value (already unfolded, one element of a comma
list) with ``parse()`` and gives it back with ``str()``.  Values that were
parsed and not changed print as their original text.

- :class:`Via`: sent-protocol, sent-by and via-params (branch, received,
  rport, maddr, ttl), RFC 3261 §20.42, RFC 3581.
- :class:`NameAddr`: From, To, Contact, Route, Record-Route, Refer-To, ...
  (name-addr or addr-spec plus header parameters), §20.10/§20.20/§20.39.
- :class:`CSeq`, and integer helpers for Max-Forwards, Expires,
  Content-Length.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from sip._abnf import (
    GENERIC_PARAM_RE,
    GENERIC_PARAMS_RE,
    HOST,
    HOSTNAME,
    QUOTED_STRING,
    SWS,
    TOKEN,
    lower_name,
    quote,
    same_name,
    split_plain_params,
    unquote,
    untracked,
)
from sip.errors import SipError
from sip.uri import URI, check_ipv4_like, format_host, is_ip_literal

Param = tuple[str, str | None]

# A sane bound on every integer header: CSeq numbers are < 2**31 (§8.1.1.5),
# Max-Forwards 0-255 (§20.22); delta-seconds up to 2**32-1 (§25.1).
MAX_CSEQ: Final = 2**31 - 1
MAX_DELTA_SECONDS: Final = 2**32 - 1


def parse_params(text: str, what: str) -> tuple[Param, ...]:
    """Parse ``*( SEMI generic-param )`` to the end of ``text``."""
    if not text or text.isspace():
        return ()
    if GENERIC_PARAMS_RE.fullmatch(text) is None:
        raise SipError(f"malformed {what} parameter")
    # gen-value is never empty, so an empty group means "no value".
    params = tuple((name, value or None) for name, value in GENERIC_PARAM_RE.findall(text))
    if len(params) > 1:
        names = {name.lower() for name, _ in params}
        if len(names) != len(params):
            raise SipError(f"duplicate {what} parameter")
    return params


def format_params(params: tuple[Param, ...]) -> str:
    # The pieces joined once: compiled, a string per parameter (an f-string each)
    # cost more than the join.
    parts: list[str] = []
    for name, value in params:
        parts.append(";")
        parts.append(name)
        if value is not None:
            parts.append("=")
            parts.append(value)
    return "".join(parts)


def get_param(params: tuple[Param, ...], name: str) -> str | None:
    lname = lower_name(name)
    for key, value in params:
        if same_name(key, lname):
            return value
    return None


def has_param(params: tuple[Param, ...], name: str) -> bool:
    lname = lower_name(name)
    for key, _ in params:  # noqa: SIM110 (a plain loop is cheaper than any() here)
        if same_name(key, lname):
            return True
    return False


def set_param(params: tuple[Param, ...], name: str, value: str | None) -> tuple[Param, ...]:
    lname = lower_name(name)
    out = []
    done = False
    for key, old in params:
        if same_name(key, lname):
            if not done:
                out.append((key, value))
                done = True
        else:
            out.append((key, old))
    if not done:
        out.append((name, value))
    return tuple(out)


def parse_int(text: str, what: str, maximum: int) -> int:
    """A ``1*DIGIT`` value, bounded (RFC 4475 §3.1.2.4: overlarge scalars are 400)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise SipError(f"malformed {what}")
    if len(text) > 12 or int(text) > maximum:
        raise SipError(f"{what} out of range")
    return int(text)


# --------------------------------------------------------------------- Via
# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
# SLASH = SWS "/" SWS ; sent-by = host [ COLON port ] ; COLON = SWS ":" SWS
_VIA_RE: Final = re.compile(
    rf"(?P<name>{TOKEN}){SWS}/{SWS}(?P<version>{TOKEN}){SWS}/{SWS}(?P<transport>{TOKEN})"
    rf"[ \t]+(?P<host>{HOST})(?:{SWS}:{SWS}(?P<port>[0-9]{{1,5}}))?"
)


# The common shape: "SIP/2.0/UDP host:port;params" without LWS or IPv6.
_FAST_VIA_RE: Final = re.compile(
    rf"SIP/2\.0/({TOKEN}) ({HOSTNAME})(?::([0-9]{{1,5}}))?"
    rf"((?:;{TOKEN}(?:=(?:{TOKEN}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+))?)*)"
)


@dataclass(slots=True, init=False)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: tuple[Param, ...] = ()
    text: str = dataclasses.field(default="", compare=False, repr=False)

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: tuple[Param, ...] = (),
        text: str = "",
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.text = text

    @classmethod
    def parse(cls, text: str) -> Via:
        fast = _FAST_VIA_RE.fullmatch(text)
        if fast is not None:
            transport, host, port_text, param_text = fast.groups()
            params = split_plain_params(param_text)
            if len(params) > 1 and len({n.lower() for n, _ in params}) != len(params):
                raise SipError("duplicate Via parameter")
            if host[0].isdigit():
                check_ipv4_like(host)
            via = cls(transport.upper(), host, _port(port_text), params, text)
            via._check_params()
            return via
        m = _VIA_RE.match(text)
        if m is None:
            raise SipError("malformed Via")
        if m.group("name").upper() != "SIP" or m.group("version") != "2.0":
            raise SipError("Via is not SIP/2.0")
        host = _strip_brackets(m.group("host"))
        if host[0].isdigit():
            check_ipv4_like(host)
        port = _port(m.group("port"))
        params = parse_params(text[m.end() :], "Via")
        via = cls(m.group("transport").upper(), host, port, params, text)
        via._check_params()
        return via

    def _check_params(self) -> None:
        for name, value in self.params:
            lname = name.lower()
            if lname == "branch":
                if value is None or value.startswith('"'):
                    raise SipError("malformed Via branch")
            elif lname == "received":
                # RFC 5118 §4.5: received may carry an IPv6 address with or
                # without brackets.
                if value is None or not is_ip_literal(_strip_brackets(value)):
                    raise SipError("malformed Via received")
            elif lname == "rport":
                if value is not None:
                    _port(value)
            elif lname == "ttl":
                if value is None:
                    raise SipError("malformed Via ttl")
                parse_int(value, "Via ttl", 255)
            elif lname == "maddr" and value is None:
                raise SipError("malformed Via maddr")

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        value = get_param(self.params, "received")
        return _strip_brackets(value) if value is not None else None

    @property
    def rport(self) -> int | None:
        """The rport value a proxy filled in (RFC 3581 §4); None if absent or empty."""
        value = get_param(self.params, "rport")
        return int(value) if value else None

    @property
    def wants_rport(self) -> bool:
        """True when the client asked for symmetric response routing (RFC 3581)."""
        return has_param(self.params, "rport")

    @property
    def maddr(self) -> str | None:
        return get_param(self.params, "maddr")

    @property
    def ttl(self) -> int | None:
        value = get_param(self.params, "ttl")
        return int(value) if value is not None else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host, self.port)

    def with_param(self, name: str, value: str | None) -> Via:
        return self.with_params(set_param(self.params, name, value))

    def with_params(self, params: tuple[Param, ...]) -> Via:
        """This Via with ``params`` instead of its own, its text written once.

        Built directly: dataclasses.replace costs several µs, and the proxy stamps
        received and rport on every request it gets (RFC 3581), both in one go."""
        via = Via(self.transport, self.host, self.port, params)
        via.text = via._build()
        return untracked(via)

    def stamped(self, received: str | None, rport: str | None) -> Via:
        """This Via with ``received`` (RFC 3261 §18.2.1) and the value of ``rport``
        (RFC 3581 §4) set where given: what a server notes on a request it gets.

        The same Via as ``with_params`` of ``set_param`` for each.  Most clients
        end their Via with a bare ``rport``: its text then takes the value (and a
        new ``received``) at its end, where the parameters would be written out
        again, and the text parses back to this Via.
        """
        params = self.params
        text = self.text
        if rport is not None and params and text:
            name, value = params[-1]
            if (
                value is None
                and lower_name(name) == "rport"
                and text.endswith(name)
                and (received is None or not has_param(params, "received"))
            ):
                if received is None:
                    params = (*params[:-1], (name, rport))
                    text = f"{text}={rport}"
                else:
                    params = (*params[:-1], (name, rport), ("received", received))
                    text = f"{text}={rport};received={received}"
                via = Via(self.transport, self.host, self.port, params)
                via.text = text
                return untracked(via)
        if received is not None:
            params = set_param(params, "received", received)
        if rport is not None:
            params = set_param(params, "rport", rport)
        return self.with_params(params)

    @staticmethod
    def ours(transport: str, host: str, port: int, branch: str) -> Via:
        """The Via a proxy puts on what it sends: its branch and an empty rport
        (RFC 3581 §3), the text written in one step instead of by ``_build``."""
        via = Via(transport, host, port, (("branch", branch), ("rport", None)))
        via.text = f"SIP/2.0/{transport} {format_host(host)}:{port};branch={branch};rport"
        return untracked(via)

    def replace(self, **changes: object) -> Via:
        changed = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(changed, text=changed._build())

    def _build(self) -> str:
        host = format_host(self.host)
        params = format_params(self.params)
        if self.port is None:
            return f"SIP/2.0/{self.transport} {host}{params}"
        return f"SIP/2.0/{self.transport} {host}:{self.port}{params}"

    def __str__(self) -> str:
        return self.text or self._build()


def _strip_brackets(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise SipError("malformed IPv6 reference")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipError("malformed IPv6 reference") from None
        return host[1:-1]
    return host


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    port = parse_int(text, "port", 65535)
    return port


# ---------------------------------------------------------------- NameAddr
# name-addr    = [ display-name ] LAQUOT addr-spec RAQUOT
# display-name = *(token LWS)/ quoted-string
_NAME_ADDR_RE: Final = re.compile(
    rf"{SWS}(?:(?P<quoted>{QUOTED_STRING})|(?P<tokens>{TOKEN}(?:[ \t]+{TOKEN})*))?{SWS}<"
)


@dataclass(slots=True, init=False)
class NameAddr:
    """``( name-addr / addr-spec ) *( SEMI generic-param )``.

    ``display_name`` is unquoted; ``bracketed`` records whether the URI was
    in angle brackets, so that an untouched value prints unchanged.
    """

    uri: URI
    display_name: str | None = None
    params: tuple[Param, ...] = ()
    bracketed: bool = True
    text: str = dataclasses.field(default="", compare=False, repr=False)

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        uri: URI,
        display_name: str | None = None,
        params: tuple[Param, ...] = (),
        bracketed: bool = True,
        text: str = "",
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params = params
        self.bracketed = bracketed
        self.text = text

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        m = _NAME_ADDR_RE.match(text)
        if m is not None:
            end = text.find(">", m.end())
            if end < 0:
                raise SipError("unterminated <URI>")
            uri_text = text[m.end() : end]
            if uri_text != uri_text.strip() or " " in uri_text or "\t" in uri_text:
                # RFC 4475 §3.1.2.14: no LWS inside <addr-spec>.
                raise SipError("whitespace inside <URI>")
            quoted = m.group("quoted")
            display = unquote(quoted) if quoted is not None else m.group("tokens")
            uri = URI.parse(uri_text)
            params = parse_params(text[end + 1 :], "header")
            return cls(uri, display, params, True, text)
        # addr-spec form: the URI ends at the first ";" (its own parameters
        # would need brackets, §20.10), and may not contain "," or "?".
        stripped = text.strip()
        if stripped.startswith('"'):
            raise SipError("unterminated quoted display name")
        semi = stripped.find(";")
        uri_text = stripped if semi < 0 else stripped[:semi].rstrip()
        if not uri_text or any(c in uri_text for c in ' \t,?"<>'):
            raise SipError("malformed addr-spec")
        uri = URI.parse(uri_text)
        params = parse_params(stripped[semi:], "header") if semi >= 0 else ()
        return cls(uri, None, params, False, text)

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        return self.replace(params=set_param(self.params, name, value))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    def replace(self, **changes: object) -> NameAddr:
        changed = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(changed, text=changed._build())

    def _build(self) -> str:
        params = format_params(self.params)
        if not self.bracketed and self.display_name is None and not self.uri.params:
            uri_text = str(self.uri)
            if not any(c in uri_text for c in ";,?"):
                return uri_text + params
        display = ""
        if self.display_name is not None:
            display = quote(self.display_name) + " "
        return f"{display}<{self.uri}>{params}"

    def __str__(self) -> str:
        return self.text.strip() if self.text else self._build()


# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE_RE: Final = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


@dataclass(slots=True)
class Contact:
    """A Contact value: a :class:`NameAddr`, or the ``*`` of a REGISTER (§10.2.2)."""

    address: NameAddr | None
    star: bool = False

    @classmethod
    def parse(cls, text: str) -> Contact:
        if text.strip() == "*":
            return cls(None, True)
        address = NameAddr.parse(text)
        contact = cls(address)
        for name, value in address.params:
            lname = name.lower()
            if lname == "expires":
                if value is None:
                    raise SipError("malformed Contact expires")
                parse_int(value, "Contact expires", MAX_DELTA_SECONDS)
            elif lname == "q" and (value is None or _QVALUE_RE.fullmatch(value) is None):
                raise SipError("malformed Contact q")
        return contact

    @property
    def uri(self) -> URI | None:
        return self.address.uri if self.address is not None else None

    @property
    def expires(self) -> int | None:
        value = self.address.param("expires") if self.address is not None else None
        return int(value) if value is not None else None

    @property
    def q(self) -> float | None:
        value = self.address.param("q") if self.address is not None else None
        return float(value) if value is not None else None

    @property
    def sip_instance(self) -> str | None:
        """``+sip.instance`` (RFC 5626 §4.1), unquoted."""
        value = self.address.param("+sip.instance") if self.address is not None else None
        if value is not None and value.startswith('"'):
            return unquote(value)
        return value

    @property
    def reg_id(self) -> int | None:
        value = self.address.param("reg-id") if self.address is not None else None
        if value is None:
            return None
        return parse_int(value, "reg-id", MAX_CSEQ)

    def __str__(self) -> str:
        return "*" if self.star or self.address is None else str(self.address)


# -------------------------------------------------------------------- CSeq
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method
_CSEQ_RE: Final = re.compile(rf"{SWS}(?P<number>[0-9]+)[ \t]+(?P<method>{TOKEN}){SWS}")


@dataclass(slots=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        m = _CSEQ_RE.fullmatch(text)
        if m is None:
            raise SipError("malformed CSeq")
        number = parse_int(m.group("number"), "CSeq", MAX_CSEQ)
        return cls(number, m.group("method"))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# ------------------------------------------------------------------ others
# callid = word [ "@" word ]
_CALL_ID_RE: Final = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?"
)


def parse_call_id(text: str) -> str:
    value = text.strip()
    if _CALL_ID_RE.fullmatch(value) is None:
        raise SipError("malformed Call-ID")
    return value


_TOKEN_RE: Final = re.compile(TOKEN)


def parse_token_list(values: list[str], what: str) -> tuple[str, ...]:
    """Supported / Require / Proxy-Require / Unsupported: ``[option-tag *(COMMA option-tag)]``.

    The list may be empty (RFC 3261 §25.1: ``Supported:`` alone is how baresip
    says it supports nothing), so empty elements are skipped, not refused.
    """
    out = []
    for value in values:
        if not value:
            continue
        if _TOKEN_RE.fullmatch(value) is None:
            raise SipError(f"malformed {what}")
        out.append(value)
    return tuple(out)


# media-type = m-type SLASH m-subtype *(SEMI m-parameter)
_MEDIA_TYPE_RE: Final = re.compile(rf"{SWS}(?P<type>{TOKEN}){SWS}/{SWS}(?P<subtype>{TOKEN})")


@dataclass(slots=True)
class ContentType:
    type: str
    subtype: str
    params: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ContentType:
        m = _MEDIA_TYPE_RE.match(text)
        if m is None:
            raise SipError("malformed Content-Type")
        params = parse_params(text[m.end() :], "Content-Type")
        return cls(m.group("type").lower(), m.group("subtype").lower(), params)

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}{format_params(self.params)}"


# Date = "Date" HCOLON SIP-date ; SIP-date = rfc1123-date, always "GMT" (§20.17).
_DATE_RE: Final = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def check_date(text: str) -> str:
    value = text.strip()
    if _DATE_RE.fullmatch(value) is None:
        raise SipError("malformed Date")
    return value
