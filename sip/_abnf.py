"""Regular expressions for the RFC 3261 §25 grammar, shared by the parsers.

Each pattern quotes the ABNF it implements.  Patterns are written so that they
never backtrack more than linearly: every repetition is over a character class
that cannot also match what follows it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Final, TypeVar

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
TOKEN_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN: Final = rf"[{TOKEN_CHARS}]+"

# word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" /
#        "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}" )
WORD: Final = rf"[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+"

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext        = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair   = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED_STRING: Final = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'

# escaped = "%" HEXDIG HEXDIG
ESCAPED: Final = r"%[0-9A-Fa-f]{2}"

# unreserved = alphanum / mark ; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
UNRESERVED: Final = r"A-Za-z0-9\-_.!~*'()"

# hostname = *( domainlabel "." ) toplabel [ "." ]
# domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
# IPv4address and IPv6reference ("[" IPv6address "]") are checked further by
# the ipaddress module where it matters (uri.parse_host).
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
HOSTNAME: Final = rf"{_LABEL}(?:\.{_LABEL})*\.?"
IPV6_REFERENCE: Final = r"\[[0-9A-Fa-f:.]+\]"
HOST: Final = rf"(?:{IPV6_REFERENCE}|{HOSTNAME})"

# SWS = [LWS]; LWS after unfolding is plain SP / HTAB.
SWS: Final = r"[ \t]*"

# generic-param = token [ EQUAL gen-value ] ; gen-value = token / host / quoted-string
# EQUAL = SWS "=" SWS ; SEMI = SWS ";" SWS
# An IPv6 address without brackets is accepted too: RFC 5118 §4.5 says
# received= carries one either way.
_BARE_IPV6: Final = r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]+"
GEN_VALUE: Final = rf"(?:{_BARE_IPV6}|{TOKEN}|{IPV6_REFERENCE}|{QUOTED_STRING})"
_GENERIC_PARAM: Final = rf"{SWS};{SWS}(?P<name>{TOKEN})(?:{SWS}={SWS}(?P<value>{GEN_VALUE}))?"
GENERIC_PARAM_RE: Final = re.compile(_GENERIC_PARAM)
# The whole ``*( SEMI generic-param )`` tail, trailing LWS allowed.
GENERIC_PARAMS_RE: Final = re.compile(rf"(?:{SWS};{SWS}{TOKEN}(?:{SWS}={SWS}{GEN_VALUE})?)*{SWS}")

# IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT, each octet
# 0-255 without leading zeros (as Python's ipaddress reads it, but in C).
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")

TOKEN_RE: Final = re.compile(TOKEN)
WORD_RE: Final = re.compile(WORD)
QUOTED_STRING_RE: Final = re.compile(QUOTED_STRING)
HOST_RE: Final = re.compile(HOST)
DIGITS_RE: Final = re.compile(r"[0-9]+")

# Characters that may never appear raw in a header value: a CR or LF would
# let a value smuggle a header of its own (header injection); NUL is legal
# only inside a quoted-pair, which QUOTED_STRING checks where it applies.
FORBIDDEN_IN_VALUE_RE: Final = re.compile(r"[\r\n]")

_UNQUOTE_RE: Final = re.compile(r"\\(.)", re.S)


_K = TypeVar("_K")
_V = TypeVar("_V")


# SIPEDGE_PURE_PYTHON=1 turns off every C path of sip/ (read at import).
ENV_PURE_PYTHON: Final = "SIPEDGE_PURE_PYTHON"


def env_on(name: str) -> bool:
    """Whether the switch ``name`` is set to 1 in the environment."""
    return os.environ.get(name, "").strip() == "1"


def _keep_tracked(obj: object) -> object:
    return obj


def _keep_graph_tracked(obj: object, types: tuple[type, ...]) -> object:
    return obj


def _gc_helpers() -> tuple[
    Callable[[object], object], Callable[[object, tuple[type, ...]], object]
]:
    """media/sipscan.c's untrack_value and untrack_graph, or no-ops without it."""
    if not env_on(ENV_PURE_PYTHON):
        try:
            from media._srtp import untrack_graph, untrack_value
        except ImportError:
            pass
        else:
            return untrack_value, untrack_graph
    return _keep_tracked, _keep_graph_tracked


_GC_HELPERS: Final = _gc_helpers()
_untrack: Final = _GC_HELPERS[0]
_untrack_graph: Final = _GC_HELPERS[1]


def untracked_graph(obj: _V, types: tuple[type, ...]) -> _V:
    """``obj`` and what it holds of the exact ``types``, out of the cyclic GC's sight
    (media/sipscan.c ``untrack_graph``).  Only for graphs with no cycle by
    construction; without the extension it changes nothing."""
    _untrack_graph(obj, types)
    return obj


def untracked(value: _V) -> _V:
    """``value``, out of the cyclic GC's sight if it holds nothing the GC tracks.

    For the value objects a proxy keeps while a call's transactions live (32 s):
    a Via, a header field, an address, and the tuples in them.  Nothing of theirs
    can take part in a reference cycle, yet while calls accumulate every gen-0
    pass walks each one (media/sipscan.c ``untrack_value``; the C parsers make
    their values untracked already).  Without the extension it changes nothing.
    """
    _untrack(value)
    return value


def remember(cache: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """``cache[key] = value`` for the bounded caches of the hot path: plain dicts
    emptied when full, so that a flood of distinct keys (they come from the
    network) only costs refills, and the keys that matter come back at once."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


_LOWER_NAMES_MAX: Final = 512
_lower_names: Final[dict[str, str]] = {}


def lower_name(name: str) -> str:
    """``name.lower()`` for a parameter name, remembered (bounded).

    Parameter lookups (a Via's branch and rport, a URI's transport and lr) run
    dozens of times per proxied call: ``str.lower()`` makes a new string each
    time, the lookup of a name seen before does not."""
    found = _lower_names.get(name)
    if found is None:
        found = name.lower()
        remember(_lower_names, name, found, _LOWER_NAMES_MAX)
    return found


def same_name(key: str, lname: str) -> bool:
    """``key.lower() == lname`` for a lower-case ASCII ``lname`` (a parameter name
    we look for): only a key of the same length can match (lower() keeps an ASCII
    name's length, and a non-ASCII key never lowers to ASCII of another length)."""
    return key == lname or (len(key) == len(lname) and lower_name(key) == lname)


def split_plain_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """``;name[=value]...`` that a regex has already validated (no quoting, no
    empty values), as (name, value-or-None) pairs, in order."""
    if not text:
        return ()
    out = []
    for item in text[1:].split(";"):
        name, _, value = item.partition("=")
        out.append((name, value or None))
    return tuple(out)


def unquote(text: str) -> str:
    """Strip the DQUOTEs of a quoted-string and undo its quoted-pairs."""
    return _UNQUOTE_RE.sub(r"\1", text[1:-1])


def quote(text: str) -> str:
    """Make a quoted-string whose :func:`unquote` is ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1).

    Commas inside quoted strings and inside ``<...>`` are not separators.
    Elements are stripped; empty elements are kept (as ``""``) so that callers
    can refuse them where the grammar forbids them.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [part.strip() for part in value.split(",")]
    # Usual case in C: elements made of quoted strings, <...> and other text.
    parts: list[str] = []
    pos = 0
    n = len(value)
    match = _LIST_ELEMENT_RE.match
    while True:
        m = match(value, pos)
        end = m.end() if m is not None else pos
        if end == n:
            parts.append(value[pos:].strip())
            return parts
        if value[end] != ",":
            break  # an unterminated quote or bracket: let the scanner below decide
        parts.append(value[pos:end].strip())
        pos = end + 1
    return _split_list_slow(value)


def split_first(value: str) -> tuple[str, str | None]:
    """The first element of a comma-separated header value, stripped, and the text
    after its comma (None when there is no other element): for a caller that takes
    one element off the top (a Via, a Route) and keeps the rest as written.

    The same first element as ``split_list``, and the rest splits into the same
    remaining elements; without splitting and re-joining every one of them in the
    usual case, a line of <...> elements.
    """
    if "," not in value:
        return value.strip(), None
    if '"' not in value:
        if "<" not in value:
            cut = value.index(",")
            return value[:cut].strip(), value[cut + 1 :].strip()
        # Without quotes, split_list's element regex fails (and it falls back to
        # its scanner) only on a "<" that no ">" follows.
        if value.rfind("<") < value.rfind(">"):
            m = _LIST_ELEMENT_RE.match(value)
            end = m.end() if m is not None else 0
            if end == len(value):
                return value.strip(), None
            return value[:end].strip(), value[end + 1 :].strip()
    parts = split_list(value)
    return parts[0], ", ".join(parts[1:]) if len(parts) > 1 else None


# list element = *( quoted-string / "<" *not-">" ">" / any other char but , " < )
_LIST_ELEMENT_RE: Final = re.compile(r'(?:"(?:[^"\\]|\\.)*"|<[^>]*>|[^,"<])*', re.S)


def _split_list_slow(value: str) -> list[str]:
    parts: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts
