"""SIP messages: parse, typed access, edit, serialise (RFC 3261 §7, §20, §25).

Bytes in, objects out, bytes back::

    msg = parse_message(data)          # Request | Response, or SipError
    msg.top_via.branch, msg.cseq.method, msg.from_.tag, msg.call_id
    msg.headers.prepend("Via", str(via)); msg.headers.remove_first("Route")
    bytes(msg)                         # untouched headers keep their exact text

Rules of this module:

- Parsing is strict where a proxy depends on the value: the start line, Via,
  From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type,
  Contact, Route, Record-Route, Expires, Date and the option-tag lists are
  parsed when the message is parsed, so a message either parses whole or is
  refused (:class:`~sip.errors.SipError` with the status to answer).  Other
  headers are checked for a token name and a clean value and kept as text.
- Every header keeps the text it arrived with (including folding); a header
  the proxy sets or edits is written as ``Name: value``.
- Content-Length framing for datagrams follows RFC 3261 §18.3: bytes beyond
  Content-Length are discarded, fewer bytes than it says is an error.  Stream
  framing lives in :mod:`sip.framing`.
- Tokenizing (finding the head, the CR/LF/CTL/UTF-8 checks, splitting the
  header lines) has two implementations with equal results and equal errors:
  :func:`_scan` here, the reference, and its C twin in the media._srtp
  extension (media/sipscan.c), used when it imports unless
  ``SIPEDGE_PURE_PYTHON=1`` (or :func:`use_accelerator`) says otherwise.
  tests/test_sip_scan.py holds them to each other.
- The typed values of Via, From/To/Route/Record-Route, Contact, CSeq and the
  Request-URI have a C fast path too (media/sipvalues.c): for their common
  shapes it builds the very objects sip.headers / sip.uri build, for anything
  else it answers None and the Python parser (the reference) decides.  It sits
  behind the memos, so a memo hit costs what it did.  tests/test_sip_values.py
  holds it to the Python parsers; SIPEDGE_PURE_PYTHON_VALUES=1 turns off this
  half alone.
- What follows tokenizing (repeated single and missing required headers, the
  comma split of list headers, the typed values through the same memos, the
  CSeq method) is :func:`_check_headers`, the reference, and its C twin
  (media/sipcheck.c), which calls back into the _TYPED parsers it does not
  mirror.  tests/test_sip_check.py holds them to each other;
  SIPEDGE_PURE_PYTHON_CHECK=1 turns off this part alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from sip._abnf import (
    ENV_PURE_PYTHON,
    TOKEN,
    env_on,
    remember,
    split_first,
    split_list,
    untracked,
    untracked_graph,
)
from sip.errors import SipError
from sip.headers import (
    MAX_DELTA_SECONDS,
    Contact,
    ContentType,
    CSeq,
    NameAddr,
    Via,
    check_date,
    parse_call_id,
    parse_int,
    parse_token_list,
)
from sip.uri import URI

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS: Final = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose values are comma-separated lists (RFC 3261 §7.3.1).  Others,
# e.g. WWW-Authenticate or Date, may contain commas inside one value.
LIST_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "contact",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "proxy-require",
        "record-route",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

# Headers that may appear at most once (RFC 3261 §7.3.1, RFC 4475 §3.3.8).
SINGLE_HEADERS: Final = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type", "expires"}
)
REQUIRED_HEADERS: Final = ("via", "from", "to", "call-id", "cseq")

_TOKEN_RE: Final = re.compile(TOKEN)
# Request-Line = Method SP Request-URI SP SIP-Version CRLF (exactly one SP each).
_REQUEST_LINE_RE: Final = re.compile(rf"({TOKEN}) ([^ \t]+) ([Ss][Ii][Pp]/[0-9]+\.[0-9]+)")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
_STATUS_LINE_RE: Final = re.compile(
    r"([Ss][Ii][Pp]/[0-9]+\.[0-9]+) ([0-9]{3}) ([^\x00-\x08\x0a-\x1f\x7f]*)"
)
_VERSION: Final = "SIP/2.0"
#: The methods of RFC 3261 and its extensions: tokens all (a set lookup spares
#: Request() the regex for the methods nearly every message has).
STANDARD_METHODS: Final = frozenset(
    [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "UPDATE",
        "INFO",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "REFER",
        "MESSAGE",
    ]
)
# Control characters are legal only inside a quoted-pair (§25.1); HT is LWS.
_CTL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNESCAPED_CTL_RE: Final = re.compile(r"(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_WSP: Final = " \t"

_CANON_CACHE: Final[dict[str, str]] = {}


def canonical_name(name: str) -> str:
    """Lower-case long form of a header name: ``"v"`` and ``"VIA"`` give ``"via"``."""
    key = _CANON_CACHE.get(name)
    if key is None:
        lower = name.lower()
        key = COMPACT_FORMS.get(lower, lower)
        if len(_CANON_CACHE) < 1024:  # bounded: names come from the network
            _CANON_CACHE[name] = key
    return key


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what the parser accepts; every limit has a status to answer."""

    max_message_size: int = 65536  # 413
    max_headers: int = 256  # 400
    max_line_length: int = 8192  # 400
    max_uri_length: int = 4096  # 414


DEFAULT_LIMITS: Final = Limits()


class HeaderField:
    """One header line: ``name`` as written, ``key`` canonical, ``value`` unfolded.

    ``raw`` is the original text (with any folding) or None once edited.  A field
    never changes (an edit replaces it): the C scanner hands the same field to every
    message with the same line (its line cache).
    """

    __slots__ = ("name", "key", "value", "raw")

    def __init__(self, name: str, key: str, value: str, raw: str | None) -> None:
        self.name: Final = name
        self.key: Final = key
        self.value: Final = value
        self.raw: Final = raw

    def line(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"

    def __repr__(self) -> str:
        return f"HeaderField({self.name!r}, {self.value!r})"


HeaderValue: TypeAlias = "str | int | URI | Via | NameAddr | Contact | CSeq | ContentType"


def _made_field(name: str, key: str, value: str) -> HeaderField:
    """A field an edit makes (a new Via, Max-Forwards, Record-Route), untracked like
    those the C scanner makes: a call's messages live as long as its transactions."""
    return untracked(HeaderField(name, key, value, None))


def _clean_value(value: HeaderValue) -> str:
    text = str(value)
    if "\r" in text or "\n" in text or "\x00" in text:
        # Header injection: a value may never carry a line break of its own.
        raise SipError("CR, LF or NUL in header value")
    return text.strip(" \t")


_GOOD_NAMES: Final[set[str]] = set()

# List headers whose parsed view is one value per element, each parsed on its own:
# adding or removing the first element adds or removes the first value (Contact is
# not among them: its "*" is checked against the whole list).
_INCREMENTAL: Final = frozenset({"via", "route", "record-route"})


def _check_name(name: str) -> None:
    if name in _GOOD_NAMES:
        return  # the proxy writes the same few names on every message
    if _TOKEN_RE.fullmatch(name) is None:
        raise SipError("malformed header name")
    if len(_GOOD_NAMES) < 1024:  # bounded: names may come from the network
        _GOOD_NAMES.add(name)


class _Memo:
    """Parsed header values by their exact text, bounded.

    The messages of one call repeat From, To, Contact, Record-Route, CSeq and
    most Vias, and calls repeat Content-Type and CSeq lines: a value that
    parsed once is known good, so the same text gets the same (immutable by
    convention) object.  Strictness is unchanged: text that fails to parse is
    never cached and fails again.  Full means start over, so hostile churn
    only costs misses.
    """

    __slots__ = ("_parse", "_fast", "_cache", "_limit")

    def __init__(self, parse: Callable[[str], Any], limit: int = 4096) -> None:
        self._parse = parse
        # The C fast path (use_accelerator): the same value, or None for "ask _parse".
        self._fast: Callable[[str], Any] | None = None
        self._cache: dict[str, Any] = {}
        self._limit = limit

    def __call__(self, text: str) -> Any:
        try:
            return self._cache[text]
        except KeyError:
            pass
        fast = self._fast
        value = fast(text) if fast is not None else None
        if value is None:
            value = self._parse(text)
        remember(self._cache, text, value, self._limit)
        return value

    def clear(self) -> None:
        self._cache.clear()

    def remember(self, text: str, value: Any) -> None:
        """Cache a value we built ourselves (it must be what parsing ``text`` gives)."""
        remember(self._cache, text, value, self._limit)


_via: Final = _Memo(Via.parse)
_name_addr: Final = _Memo(NameAddr.parse)
_contact: Final = _Memo(Contact.parse)
_cseq: Final = _Memo(CSeq.parse)
_content_type: Final = _Memo(ContentType.parse, 256)
_request_uri: Final = _Memo(URI.parse)
_MEMOS: Final = (_via, _name_addr, _contact, _cseq, _content_type, _request_uri)


def own_via(via: Via) -> str:
    """The text of a Via we write, remembered so that parsing it back (in the
    responses that return through us) costs a lookup."""
    text = via.text or via._build()  # str(via), as a direct call when compiled
    _via.remember(text, via)
    return text


def clear_parse_caches() -> None:
    """Forget every memoised header value and start line (benchmarks measure the
    cold path with it)."""
    for memo in _MEMOS:
        memo.clear()
    _request_lines.clear()
    _status_lines.clear()


def _parse_list(values: list[str], parser: Callable[[str], Any], what: str) -> list[Any]:
    out = []
    for value in values:
        if value == "":
            raise SipError(f"empty {what} element")
        out.append(parser(value))
    return out


def _single(values: list[str], what: str) -> str:
    if len(values) != 1:
        raise SipError(f"{what} must appear once" if values else f"missing {what}")
    return values[0]


def _route_list(values: list[str]) -> list[NameAddr]:
    routes = _parse_list(values, _name_addr, "Route")
    for route in routes:
        if not route.bracketed:
            raise SipError("Route and Record-Route values need <>")
    return routes


def _contacts(values: list[str]) -> list[Contact]:
    contacts = _parse_list(values, _contact, "Contact")
    if len(contacts) > 1 and any(c.star for c in contacts):
        raise SipError("Contact * must stand alone")
    return contacts


_MISS: Final = object()  # "not cached", where None could be a value


def _drop_typed(typed: dict[str, Any], key: str) -> Any:
    """``typed.pop(key, None)``: compiled, a get and a del are native dict
    operations, and pop with a default a generic method call (an edit makes one)."""
    cached = typed.get(key, _MISS)
    if cached is _MISS:
        return None
    del typed[key]
    return cached


# key -> parser of the (comma-split for list headers) values of that header.
_TYPED: Final[dict[str, Callable[[list[str]], Any]]] = {
    "via": lambda v: _parse_list(v, _via, "Via"),
    "from": lambda v: _name_addr(_single(v, "From")),
    "to": lambda v: _name_addr(_single(v, "To")),
    "call-id": lambda v: parse_call_id(_single(v, "Call-ID")),
    "cseq": lambda v: _cseq(_single(v, "CSeq")),
    "max-forwards": lambda v: parse_int(_single(v, "Max-Forwards"), "Max-Forwards", 255),
    "content-length": lambda v: parse_int(
        _single(v, "Content-Length"), "Content-Length", 2**31 - 1
    ),
    "content-type": lambda v: _content_type(_single(v, "Content-Type")),
    "contact": _contacts,
    "route": _route_list,
    "record-route": _route_list,
    "expires": lambda v: parse_int(_single(v, "Expires"), "Expires", MAX_DELTA_SECONDS),
    "date": lambda v: [check_date(x) for x in v],
    "require": lambda v: parse_token_list(v, "Require"),
    "proxy-require": lambda v: parse_token_list(v, "Proxy-Require"),
    "supported": lambda v: parse_token_list(v, "Supported"),
    "unsupported": lambda v: parse_token_list(v, "Unsupported"),
    "retry-after": lambda v: parse_int(
        _single(v, "Retry-After").split(";")[0].split("(")[0], "Retry-After", MAX_DELTA_SECONDS
    ),
}


class Headers:
    """The ordered header list of a message, with typed views cached per header.

    Lookups take any case and the compact forms.  Editing a header drops its
    cached typed view, so typed access always reflects the current text.
    """

    __slots__ = ("_fields", "_typed")

    def __init__(self, fields: Iterable[tuple[str, HeaderValue]] = ()) -> None:
        self._fields: list[HeaderField] = []
        self._typed: dict[str, Any] = {}
        for name, value in fields:
            self.add(name, value)

    @classmethod
    def _from_fields(cls, fields: list[HeaderField]) -> Headers:
        # Headers(), not cls(): compiled, that is a direct constructor call, where
        # cls() goes through the type's generic call and argument parsing.
        self = Headers()
        self._fields = fields
        return self

    # -- reading -----------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((f.name, f.value) for f in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        # The fields decide, not the parsed views: reading .route of a message
        # without one leaves an empty view behind.
        for f in self._fields:  # noqa: SIM110 (a plain loop is cheaper than any() here)
            if f.key == key:
                return True
        return False

    @property
    def fields(self) -> list[HeaderField]:
        return self._fields

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (a whole line's value, not split), or None."""
        key = canonical_name(name)
        for f in self._fields:
            if f.key == key:
                return f.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; list headers are split at commas."""
        key = canonical_name(name)
        values = [f.value for f in self._fields if f.key == key]
        if key in LIST_HEADERS:
            out: list[str] = []
            for value in values:
                out.extend(split_list(value))
            return out
        return values

    def typed(self, name: str) -> Any:
        """The parsed view of a header known to :mod:`sip.headers` (cached)."""
        # get() with a sentinel, not try/except KeyError: compiled, a caught
        # exception costs more than the rest of this method (12 misses per call).
        typed = self._typed
        value = typed.get(name, _MISS)  # already parsed, asked for by its key
        if value is not _MISS:
            return value
        key = canonical_name(name)
        value = typed.get(key, _MISS)
        if value is not _MISS:
            return value
        parser = _TYPED[key]
        value = parser(self.get_all(key))
        self._typed[key] = value
        return value

    # -- editing -----------------------------------------------------------
    def add(self, name: str, value: HeaderValue) -> None:
        """Append a header at the end."""
        _check_name(name)
        key = canonical_name(name)
        self._fields.append(_made_field(name, key, _clean_value(value)))
        _drop_typed(self._typed, key)

    def prepend(self, name: str, value: HeaderValue) -> None:
        """Insert above the first header of the same name (a new top Via or
        Record-Route), or at the top if there is none."""
        _check_name(name)
        key = canonical_name(name)
        self._insert_first(_made_field(name, key, _clean_value(value)))
        _drop_typed(self._typed, key)

    def prepend_parsed(self, name: str, text: str, parsed: Any) -> None:
        """:meth:`prepend` of ``text`` where ``parsed`` is what parsing ``text``
        gives (one element): a parsed view of the header stays valid, so the next
        reader (a proxy's new top Via) does not parse the whole list again."""
        _check_name(name)
        key = canonical_name(name)
        self._insert_first(_made_field(name, key, _clean_value(text)))
        cached = _drop_typed(self._typed, key)
        if cached is not None and key in _INCREMENTAL:
            self._typed[key] = [parsed, *cached]

    def replace_first_parsed(self, name: str, text: str, parsed: Any) -> None:
        """:meth:`remove_first` then :meth:`prepend_parsed`, in one step: the top
        element of ``name`` (a Via the proxy stamps) becomes ``text``, parsed as
        ``parsed``, where the old one was."""
        _check_name(name)
        key = canonical_name(name)
        fields = self._fields
        for i, f in enumerate(fields):
            if f.key != key:
                continue
            new = _made_field(name, key, _clean_value(text))
            rest = split_first(f.value)[1] if key in LIST_HEADERS else None
            if rest is None:
                fields[i] = new
            else:
                fields[i] = _made_field(f.name, key, rest)
                fields.insert(i, new)
            cached = _drop_typed(self._typed, key)
            if cached is not None and key in _INCREMENTAL:
                self._typed[key] = [parsed, *cached[1:]]
            return
        self.prepend_parsed(name, text, parsed)

    def _insert_first(self, field: HeaderField) -> None:
        """Above the first field of its header, or at the top if there is none."""
        index = 0
        for i, f in enumerate(self._fields):
            if f.key == field.key:
                index = i
                break
        self._fields.insert(index, field)

    def set(self, name: str, value: HeaderValue) -> None:
        """Replace every header of this name by one, where the first one was."""
        _check_name(name)
        key = canonical_name(name)
        field = _made_field(name, key, _clean_value(value))
        fields = self._fields
        index = -1
        count = 0
        for i, f in enumerate(fields):
            if f.key == key:
                if index < 0:
                    index = i
                count += 1
        if index < 0:
            fields.append(field)
        elif count == 1:
            fields[index] = field  # the usual case (Max-Forwards): no new list
        else:
            self._fields = [f for f in fields if f.key != key]
            self._fields.insert(index, field)
        _drop_typed(self._typed, key)

    def remove(self, name: str) -> int:
        """Remove every header of this name; return how many lines went."""
        key = canonical_name(name)
        for f in self._fields:
            if f.key == key:
                break
        else:
            _drop_typed(self._typed, key)
            return 0  # the usual case (headers the edge strips): nothing to rebuild
        before = len(self._fields)
        self._fields = [f for f in self._fields if f.key != key]
        _drop_typed(self._typed, key)
        return before - len(self._fields)

    def remove_first(self, name: str) -> str | None:
        """Remove the first element of a header (the top Via or Route) and return it.

        For a line holding a comma list only its first element goes.
        """
        key = canonical_name(name)
        for i, f in enumerate(self._fields):
            if f.key != key:
                continue
            cached = _drop_typed(self._typed, key)
            if cached is not None and len(cached) > 1 and key in _INCREMENTAL:
                # The parsed list is the elements in order: without the first, it is
                # what parsing the rest gives.  (None left: no view, as "in" expects.)
                self._typed[key] = cached[1:]
            first, rest = split_first(f.value) if key in LIST_HEADERS else (f.value, None)
            if rest is not None:
                self._fields[i] = _made_field(f.name, key, rest)
            else:
                del self._fields[i]
            return first
        return None

    def copy(self) -> Headers:
        """A copy whose edits do not touch this one (typed views are immutable)."""
        # Fields are shared: after parsing, edits replace a field, never change one.
        other = Headers._from_fields(list(self._fields))
        other._typed = dict(self._typed)
        return other

    def lines(self) -> list[str]:
        # HeaderField.line() inlined: this runs for every field of every message sent.
        return [f.raw if f.raw is not None else f"{f.name}: {f.value}" for f in self._fields]


class Message:
    """What requests and responses share: headers, body and typed accessors."""

    __slots__ = ("headers", "_body")

    def __init__(self, headers: Headers | Iterable[tuple[str, HeaderValue]], body: bytes) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._body = body

    # -- body --------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, body: bytes) -> None:
        """Set the body and keep Content-Length true to it."""
        self._body = body
        self.headers.set("Content-Length", str(len(body)))

    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        lines = [self._start_line()]
        lines += self.headers.lines()
        if "content-length" not in self.headers._typed and "Content-Length" not in self.headers:
            # Stream transports need it (§18.3); we always send it.
            lines.append(f"Content-Length: {len(self._body)}")
        lines.append("\r\n")
        if _join_c is not None:
            return _join_c(lines, self._body)
        return "\r\n".join(lines).encode() + self._body

    def __bytes__(self) -> bytes:
        return self.serialize()

    # -- typed accessors -----------------------------------------------------
    @property
    def via(self) -> list[Via]:
        result: list[Via] = self.headers.typed("via")
        return result

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise SipError("missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        result: NameAddr = self.headers.typed("from")
        return result

    @property
    def to(self) -> NameAddr:
        result: NameAddr = self.headers.typed("to")
        return result

    @property
    def call_id(self) -> str:
        result: str = self.headers.typed("call-id")
        return result

    @property
    def cseq(self) -> CSeq:
        result: CSeq = self.headers.typed("cseq")
        return result

    @property
    def max_forwards(self) -> int | None:
        if "max-forwards" not in self.headers:
            return None
        result: int = self.headers.typed("max-forwards")
        return result

    @property
    def content_length(self) -> int | None:
        if "content-length" not in self.headers:
            return None
        result: int = self.headers.typed("content-length")
        return result

    @property
    def content_type(self) -> ContentType | None:
        if "content-type" not in self.headers:
            return None
        result: ContentType = self.headers.typed("content-type")
        return result

    @property
    def contact(self) -> list[Contact]:
        result: list[Contact] = self.headers.typed("contact")
        return result

    @property
    def route(self) -> list[NameAddr]:
        result: list[NameAddr] = self.headers.typed("route")
        return result

    @property
    def record_route(self) -> list[NameAddr]:
        result: list[NameAddr] = self.headers.typed("record-route")
        return result

    @property
    def expires(self) -> int | None:
        if "expires" not in self.headers:
            return None
        result: int = self.headers.typed("expires")
        return result

    @property
    def supported(self) -> tuple[str, ...]:
        result: tuple[str, ...] = self.headers.typed("supported")
        return result

    @property
    def require(self) -> tuple[str, ...]:
        result: tuple[str, ...] = self.headers.typed("require")
        return result

    @property
    def proxy_require(self) -> tuple[str, ...]:
        result: tuple[str, ...] = self.headers.typed("proxy-require")
        return result

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("user-agent")

    def credentials(self, name: str = "Authorization") -> list[Any]:
        """Parsed Authorization or Proxy-Authorization values (:mod:`sip.auth`)."""
        from sip.auth import parse_credentials

        return [parse_credentials(v) for v in self.headers.get_all(name)]

    def challenges(self, name: str = "WWW-Authenticate") -> list[Any]:
        """Parsed WWW-Authenticate or Proxy-Authenticate values (:mod:`sip.auth`)."""
        from sip.auth import parse_challenge

        return [parse_challenge(v) for v in self.headers.get_all(name)]


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | Iterable[tuple[str, HeaderValue]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        if method not in STANDARD_METHODS and _TOKEN_RE.fullmatch(method) is None:
            raise SipError("malformed method")
        self.method = method
        self.uri = uri if isinstance(uri, URI) else URI.parse(uri)

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


# Response status lines by status: (reason, line).
_status_texts: Final[dict[int, tuple[str, str]]] = {}


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | Iterable[tuple[str, HeaderValue]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        if not 100 <= status <= 699:
            raise SipError("status code out of range")
        self.status = status
        self.reason = reason or REASON_PHRASES.get(status, "")

    def _start_line(self) -> str:
        # A proxy writes the same few status lines over and over: each is put
        # together once (bounded: reasons are free text from the wire).
        known = _status_texts.get(self.status)
        if known is not None and known[0] == self.reason:
            return known[1]
        line = f"{_VERSION} {self.status} {self.reason}"
        remember(_status_texts, self.status, (self.reason, line), _START_LINES_MAX)
        return line

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ------------------------------------------------------------------ parsing
def parse_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, stream: bool = False
) -> Request | Response:
    """Parse one message.

    ``stream=False`` (UDP): bytes past Content-Length are discarded (§18.3).
    ``stream=True`` (a frame from :class:`sip.framing.StreamFramer`): the body
    must be exactly Content-Length bytes.
    """
    if len(data) > limits.max_message_size:
        raise SipError("message too large", 413)
    scan = _scan_c if _scan_c is not None else _scan
    start_line, fields, pairs, duplicate, body_start = scan(
        data, limits.max_headers, limits.max_line_length
    )
    headers = Headers._from_fields(fields)
    msg = _parse_start_line(start_line, headers, limits)
    check = _check_c if _check_c is not None else _check_headers
    check(msg, pairs, duplicate)
    if "content-length" in headers._typed:
        length: int = headers._typed["content-length"]
        available = len(data) - body_start
        if available < length:
            raise SipError("Content-Length larger than the message")
        if stream and available > length:
            raise SipError("bytes after the body")
        msg._body = data[body_start : body_start + length]
    elif stream:
        raise SipError("missing Content-Length on a stream transport")
    else:
        msg._body = data[body_start:]
    return msg


# What tokenizing one message gives: start line, header fields, each field's key
# and value in one flat list (key, value, key, value, ...: the C scanner builds
# it in one allocation, where values grouped by key cost a dict and a list per
# header), the first repeated single header (or None) and where the body starts.
_Scan: TypeAlias = tuple[str, list[HeaderField], list[str], str | None, int]


def _scan(data: bytes, max_headers: int, max_line_length: int) -> _Scan:
    """Tokenize one message: the Python reference of ``media._srtp.SipScanner.scan``.

    Both give equal results and raise the same SipError for the same input, their
    checks in the same order (tests/test_sip_scan.py compares them).
    """
    # §7.5: CRLFs before the start line are ignored (keep-alives, padding).
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipError("no empty line after the headers")
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("headers are not UTF-8") from None
    lines = text.split("\r\n")
    crlfs = len(lines) - 1
    if text.count("\r") != crlfs or text.count("\n") != crlfs:
        raise SipError("bare CR or LF in the headers")
    if _CTL_RE.search(text) is not None and _UNESCAPED_CTL_RE.search(text) is not None:
        raise SipError("control character in the headers")
    if len(lines) - 1 > max_headers:
        raise SipError("too many header lines")

    first_end = text.find("\r\n")
    fields = None
    if first_end > 0:
        fields = _parse_fields_fast(text[first_end + 2 :], len(lines) - 1, max_line_length)
    if fields is None:
        fields = _parse_fields(lines, max_line_length)
    pairs, duplicate = _pairs(fields)
    return lines[0], fields, pairs, duplicate, end + 4


def _pairs(fields: list[HeaderField]) -> tuple[list[str], str | None]:
    """Each field's key and value, flat, and the first header that may appear
    once but did not."""
    pairs: list[str] = []
    seen: set[str] = set()
    duplicate: str | None = None
    for f in fields:
        pairs.append(f.key)
        pairs.append(f.value)
        if duplicate is None and f.key in SINGLE_HEADERS:
            if f.key in seen:
                duplicate = f.key
            seen.add(f.key)
    return pairs, duplicate


def _group(pairs: list[str]) -> dict[str, list[str]]:
    """Values by key, keys in the order they first appear."""
    values: dict[str, list[str]] = {}
    for i in range(0, len(pairs), 2):
        values.setdefault(pairs[i], []).append(pairs[i + 1])
    return values


# One header line and its CRLF: (line, name, value).  findall resumes where
# the last match ended, so when the matched lines add up to the whole block,
# every line matched from its start.
# (A lazy value group would cost a backtracking step per character.)
_FIELD_RE: Final = re.compile(rf"(({TOKEN})[ \t]*:[ \t]*([^\r\n]*))(?:\r\n|\Z)")


def _parse_fields_fast(block: str, nlines: int, max_line: int) -> list[HeaderField] | None:
    """All header lines in one regex pass, or None to take the line-by-line path.

    Only for blocks without folding; every line must match, which the count
    and total length of the matches prove.
    """
    if "\r\n " in block or "\r\n\t" in block or len(block) > max_line:
        return None
    found = _FIELD_RE.findall(block)
    if len(found) != nlines or sum(len(raw) for raw, _, _ in found) + 2 * (nlines - 1) != len(
        block
    ):
        return None
    canon = canonical_name
    return [HeaderField(name, canon(name), value.rstrip(_WSP), raw) for raw, name, value in found]


def _parse_fields(lines: list[str], max_line: int) -> list[HeaderField]:
    fields: list[HeaderField] = []
    canon = canonical_name
    token_match = _TOKEN_RE.fullmatch
    for line in lines[1:]:
        if len(line) > max_line:
            raise SipError("header line too long")
        first = line[:1]
        if first == " " or first == "\t":
            # Folding (§7.3.1): the continuation joins the line above.
            if not fields:
                raise SipError("folded line before the first header")
            prev = fields[-1]
            fields[-1] = HeaderField(
                prev.name,
                prev.key,
                (prev.value + " " + line.strip(_WSP)).strip(_WSP),
                f"{prev.raw}\r\n{line}",
            )
            continue
        colon = line.find(":")
        if colon <= 0:
            raise SipError("header line without a colon")
        name = line[:colon].rstrip(" \t")
        if token_match(name) is None:
            raise SipError("malformed header name")
        fields.append(HeaderField(name, canon(name), line[colon + 1 :].strip(" \t"), line))
    return fields


# Start lines that parsed, by their text: a call's messages and calls' responses
# repeat them ("SIP/2.0 180 Ringing", the Request-URI of every in-dialog
# request), and a hit spares two regex calls.  Only good lines get in, as the
# memos above; emptied when full.
_request_lines: Final[dict[str, tuple[str, URI, int]]] = {}
_status_lines: Final[dict[str, tuple[int, str]]] = {}
_START_LINES_MAX: Final = 4096


def _parse_start_line(line: str, headers: Headers, limits: Limits) -> Request | Response:
    known = _status_lines.get(line)
    if known is not None:
        response = Response(known[0], "", headers)
        response.reason = known[1]
        return response
    seen = _request_lines.get(line)
    if seen is not None:
        if seen[2] > limits.max_uri_length:  # limits differ per caller: asked every time
            raise SipError("Request-URI too long", 414)
        return Request(seen[0], seen[1], headers)
    # One groups() call per line rather than a group() call per field: each is a
    # method call on a Python object, the dearest thing here once compiled.
    if line[:1] in ("S", "s") and line[:4].upper() == "SIP/":
        m = _STATUS_LINE_RE.fullmatch(line)
        if m is None:
            raise SipError("malformed Status-Line")
        version, code, reason = m.groups()
        if version != _VERSION and version.upper() != _VERSION:
            raise SipError("SIP version not supported", 505)
        response = Response(int(code), "", headers)  # 100-699 (§7.2), else SipError
        response.reason = reason  # as received, even empty
        remember(_status_lines, line, (response.status, reason), _START_LINES_MAX)
        return response
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        raise SipError("malformed Request-Line")
    method, uri_text, version = m.groups()
    if version != _VERSION and version.upper() != _VERSION:
        raise SipError("SIP version not supported", 505)
    if len(uri_text) > limits.max_uri_length:
        raise SipError("Request-URI too long", 414)
    if uri_text.startswith("<"):
        raise SipError("Request-URI in <>")
    uri = _request_uri(uri_text)
    if uri.headers:
        # RFC 4475 §3.1.2.11: headers in a Request-URI are refused, never
        # forwarded or turned into real headers.
        raise SipError("headers in the Request-URI")
    remember(_request_lines, line, (method, uri, len(uri_text)), _START_LINES_MAX)
    return Request(method, uri, headers)


def _check_headers(msg: Request | Response, pairs: list[str], duplicate: str | None) -> None:
    """Refuse repeated single and missing required headers, parse the typed ones
    into ``msg.headers._typed``: the Python reference of
    ``media._srtp.SipHeaderChecker.check`` (tests/test_sip_check.py compares them).
    """
    if duplicate is not None:
        raise SipError(f"{duplicate} must appear once")
    values = _group(pairs)
    for key in REQUIRED_HEADERS:
        if key not in values:
            raise SipError(f"missing {key} header")
    typed = msg.headers._typed
    for key, found in values.items():
        parser = _TYPED.get(key)
        if parser is not None and key not in typed:
            if key in LIST_HEADERS:
                found = [part for value in found for part in split_list(value)]
            typed[key] = parser(found)
    if isinstance(msg, Request) and typed["cseq"].method != msg.method:
        raise SipError("CSeq method does not match the request method")


# ------------------------------------------------------------------ accelerator
# The C twin of _scan (media/sipscan.c, in the media._srtp extension) does the
# same for a fraction of the CPU.  sip/ must work without it: a missing
# extension means the Python reference, and SIPEDGE_PURE_PYTHON=1
# (sip._abnf.ENV_PURE_PYTHON) asks for it.
_ScanFn: TypeAlias = Callable[[bytes, int, int], _Scan]
_scan_c: _ScanFn | None = None


@functools.cache  # one scanner per process: it holds the name and line caches
def _load_scanner() -> _ScanFn | None:
    return _new_scanner()


def _new_scanner() -> _ScanFn | None:
    """A scanner of its own (fuzz/fuzz_sipscan.py: its caches go when it does)."""
    try:
        from media._srtp import SipScanner
    except ImportError:
        return None
    scan: _ScanFn = SipScanner(
        HeaderField, SipError, COMPACT_FORMS, SINGLE_HEADERS, factory=_new_field
    ).scan
    return scan


# serialize's last step in C (media/sipscan.c sip_join, the same bytes as the
# expression it replaces): one bytes object, where join, encode and + made three.
_join_c: Callable[[list[str], bytes], bytes] | None = None


@functools.cache
def _load_join() -> Callable[[list[str], bytes], bytes] | None:
    try:
        from media._srtp import sip_join
    except ImportError:
        return None
    return sip_join


def _new_field(name: str, key: str, value: str, raw: str | None) -> HeaderField:
    """What the C scanner calls for each field when it cannot write HeaderField's
    slots (the compiled build): compiled, a function call from C reaches the native
    constructor for about a third of what calling the class from C costs."""
    return HeaderField(name, key, value, raw)


ENV_PURE_PYTHON_VALUES: Final = "SIPEDGE_PURE_PYTHON_VALUES"


@functools.cache
def _load_values() -> Any:
    """The media._srtp.SipValueParser, or None without the extension."""
    try:
        from media._srtp import SipValueParser
    except ImportError:
        return None
    factories = (_new_via, _new_uri, _new_name_addr, _new_contact, _new_cseq)
    return SipValueParser(Via, URI, NameAddr, Contact, CSeq, factories=factories)


# What the value parser calls (for the classes whose slots it cannot write, the
# compiled build) with each class's arguments, as _new_field for the scanner.
_Params: TypeAlias = tuple[tuple[str, str | None], ...]


def _new_via(transport: str, host: str, port: int | None, params: _Params, text: str) -> Via:
    return Via(transport, host, port, params, text)


def _new_uri(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: _Params,
    headers: tuple[tuple[str, str], ...],
    opaque: str | None,
    text: str,
) -> URI:
    return URI(scheme, user, password, host, port, params, headers, opaque, text)


def _new_name_addr(
    uri: URI, display_name: str | None, params: _Params, bracketed: bool, text: str
) -> NameAddr:
    return NameAddr(uri, display_name, params, bracketed, text)


def _new_contact(address: NameAddr | None, star: bool) -> Contact:
    return Contact(address, star)


def _new_cseq(number: int, method: str) -> CSeq:
    return CSeq(number, method)


ENV_PURE_PYTHON_CHECK: Final = "SIPEDGE_PURE_PYTHON_CHECK"
_CheckFn: TypeAlias = Callable[[Request | Response, list[str], str | None], None]
_check_c: _CheckFn | None = None


@functools.cache
def _load_checker() -> _CheckFn | None:
    """media._srtp.SipHeaderChecker.check on this module's tables and memos, or None."""
    try:
        from media._srtp import SipHeaderChecker
    except ImportError:
        return None
    checker = SipHeaderChecker(
        SipError,
        Request,
        _TYPED,
        LIST_HEADERS,
        REQUIRED_HEADERS,
        _via,
        _name_addr,
        _contact,
        _cseq,
        _content_type,
    )
    check: _CheckFn = checker.check
    return check


def use_accelerator(
    enabled: bool, *, values: bool | None = None, check: bool | None = None
) -> bool:
    """Tokenize with the C scanner (when it imports) or with the Python reference,
    parse typed values with their C fast paths or not (``values``), and run the
    header checks after tokenizing in C or not (``check``); both by default as
    ``enabled``.

    Returns whether the C scanner is in use now.
    """
    global _scan_c, _check_c, _join_c
    _scan_c = _load_scanner() if enabled else None
    _join_c = _load_join() if enabled else None
    _check_c = _load_checker() if (enabled if check is None else check) else None
    parser = _load_values() if (enabled if values is None else values) else None
    for memo, name in (
        (_via, "via"),
        (_name_addr, "name_addr"),
        (_contact, "contact"),
        (_cseq, "cseq"),
        (_request_uri, "uri"),
    ):
        memo._fast = getattr(parser, name) if parser is not None else None
    return _scan_c is not None


def accelerated() -> bool:
    """True if parse_message tokenizes in C."""
    return _scan_c is not None


def values_accelerated() -> bool:
    """True if typed header values try their C fast paths first."""
    return _via._fast is not None


def check_accelerated() -> bool:
    """True if the header checks after tokenizing run in C."""
    return _check_c is not None


use_accelerator(
    not env_on(ENV_PURE_PYTHON),
    values=not env_on(ENV_PURE_PYTHON) and not env_on(ENV_PURE_PYTHON_VALUES),
    check=not env_on(ENV_PURE_PYTHON) and not env_on(ENV_PURE_PYTHON_CHECK),
)


# ------------------------------------------------------------------ building
REASON_PHRASES: Final = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


_COPIED_TO_RESPONSES: Final = frozenset({"via", "from", "call-id", "cseq"})

# A kept message's own objects: the message, its headers and their lists and dicts
# (the values in them are untracked already: media/sipvalues.c, sip/_abnf.py).
_KEPT: Final = (Request, Response, Headers, list, dict)


def untrack_kept(message: Request | Response) -> None:
    """Take a message that will be kept a while out of the cyclic GC's view.

    A transaction keeps its request and last response for as long as it lives, RFC
    6026's 32 s after a call is answered and after it ends, so live messages grow
    with the call rate, and every pass of the collector walks each of their
    containers: they were about two thirds of the objects it walked per live call.
    A message refers to nothing but its own headers and values, so it can be in no
    reference cycle; a container added to it later is tracked as usual.
    """
    untracked_graph(message, _KEPT)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, HeaderValue]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    Via (all values, in order), From, Call-ID and CSeq are copied verbatim;
    To is copied and gets ``to_tag`` if it has no tag yet (a 100 Trying never
    gets one, §8.2.6.2).
    """
    src = request.headers
    out = Headers()
    out._fields = [f for f in src.fields if f.key in _COPIED_TO_RESPONSES]
    to_value = src.get("to") or ""
    if to_tag is not None and status > 100 and request.to.tag is None:
        to_value = str(request.to.with_tag(to_tag))
    out.add("To", to_value)
    for name, value in headers:
        out.add(name, value)
    out.add("Content-Length", str(len(body)))
    return Response(status, reason or REASON_PHRASES.get(status, ""), out, body)


def error_response(request: Request, error: SipError, *, to_tag: str | None = None) -> Response:
    """The answer to a request the core refused (a :class:`SipError` from the checks)."""
    return make_response(
        request,
        error.status_hint,
        REASON_PHRASES.get(error.status_hint),
        to_tag=to_tag,
        headers=error.headers,
    )


def salvage_response(data: bytes, error: SipError) -> bytes | None:
    """Best-effort answer to a request that failed to parse, or None to drop it.

    Copies the raw Via, From, To, Call-ID and CSeq lines when they can be
    found, so that the sender can match the answer (§8.2.6.2).  Responses
    are never answered, and neither is a message without a Via: there would
    be nowhere to route the answer and answering only helps a scanner.
    """
    head = data.split(b"\r\n\r\n", 1)[0].lstrip(b"\r\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if not lines or lines[0][:4].upper() == "SIP/" or " " not in lines[0]:
        return None
    keep: list[str] = []
    for line in lines[1:]:
        if _CTL_RE.search(line) is not None or "\n" in line or "\r" in line:
            continue
        colon = line.find(":")
        if colon <= 0:
            continue
        key = canonical_name(line[:colon].strip(_WSP))
        if key in ("via", "from", "to", "call-id", "cseq"):
            keep.append(line.strip(_WSP))
    if not any(canonical_name(line.split(":", 1)[0].strip(_WSP)) == "via" for line in keep):
        return None
    status = error.status_hint
    reason = REASON_PHRASES.get(status, "Bad Request")
    out = [f"{_VERSION} {status} {reason}", *keep]
    out += [f"{name}: {value}" for name, value in error.headers]
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()
