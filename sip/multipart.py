"""multipart/* message bodies (RFC 2046 §5.1, RFC 5621 for SIP), sans-I/O.

    mp = Multipart.parse(body, content_type)   # SipError 400 when malformed
    part = mp.parts[i]; part.content_type; part.body
    body = bytes(mp.replace(i, part.with_body(new)))

Rules of this file:

- Byte-exact round trip: ``bytes(Multipart.parse(b, ct)) == b``.  The preamble, each
  delimiter line as it was (CRLF or bare LF, transport padding), each part's header
  block and the epilogue are kept as raw bytes; only what a caller replaces changes.
  The boundary is never changed, so the message's Content-Type stays true.
- The grammar, RFC 2046 §5.1.1::

      multipart-body := [preamble CRLF] dash-boundary transport-padding CRLF
                        body-part *encapsulation close-delimiter transport-padding
                        [CRLF epilogue]
      encapsulation  := delimiter transport-padding CRLF body-part
      delimiter      := CRLF dash-boundary        ; dash-boundary := "--" boundary
      close-delimiter := delimiter "--"
      body-part      := MIME-part-headers [CRLF *OCTET]

  A bare LF is accepted where CRLF is due (some SIP stacks write bodies that way).
- Malformed means: no usable ``boundary`` parameter, no opening or no closing
  delimiter, a part without the blank line after its headers, or a header line that
  is not ``name: value``.  All raise ``SipError`` 400; the caller decides (the proxy
  treats such a body as one without SDP).
- Bounded work: one forward scan of the body, at most :data:`MAX_PARTS` parts.
- Part header names are matched case-insensitively; a part without Content-Type is
  ``text/plain`` (RFC 2046 §5.1) and so never SDP.  Nested multiparts are parts like
  any other: parse the part's body again with its own Content-Type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Final

from sip.errors import SipError
from sip.headers import ContentType, get_param

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "Multipart",
    "Part",
    "SdpInBody",
    "boundary_of",
    "find_sdp",
    "set_body",
]

MAX_PARTS: Final = 64

# boundary := 0*69<bchars> bcharsnospace (RFC 2046 §5.1.1)
_BCHARS: Final = r"0-9A-Za-z'()+_,\-./:=? "
_BOUNDARY_RE: Final = re.compile(rf"[{_BCHARS}]{{0,69}}[{_BCHARS[:-1]}]")
_CONTENT_LENGTH_RE: Final = re.compile(rb"(?im)^(content-length[ \t]*:[ \t]*)[0-9]+")
_HEADER_RE: Final = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)


def boundary_of(content_type: ContentType) -> str:
    """The boundary of a multipart Content-Type (unquoted); SipError 400 if unusable."""
    if content_type.type != "multipart":
        raise SipError(f"{content_type.mime} is not multipart", 400)
    value = get_param(content_type.params, "boundary")
    if value is None:
        raise SipError("multipart Content-Type without a boundary", 400)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if _BOUNDARY_RE.fullmatch(value) is None:
        raise SipError("malformed multipart boundary", 400)
    return value


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its header block exactly as received (with the blank line that
    ends it) and its body."""

    header_block: bytes
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value), unfolded

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> ContentType | None:
        """The part's Content-Type; None when absent (text/plain) or malformed."""
        value = self.get("content-type")
        if value is None:
            return None
        try:
            return ContentType.parse(value)
        except SipError:
            return None

    def with_body(self, body: bytes) -> Part:
        """The same part carrying ``body``; a Content-Length header in the part (some
        gateways write one) is kept true to it."""
        block = self.header_block
        if self.get("content-length") is not None:
            block = _CONTENT_LENGTH_RE.sub(rb"\g<1>%d" % len(body), block, count=1)
        return replace(self, header_block=block, body=body)

    def __bytes__(self) -> bytes:
        return self.header_block + self.body


@dataclass(frozen=True, slots=True)
class Multipart:
    """A parsed multipart body.  ``delimiters[i]`` is the raw delimiter line before
    ``parts[i]`` (the line break that precedes it included), ``close`` the closing
    delimiter line and ``epilogue`` everything after it."""

    boundary: str
    preamble: bytes
    delimiters: tuple[bytes, ...]
    parts: tuple[Part, ...]
    close: bytes
    epilogue: bytes

    @classmethod
    def parse(cls, body: bytes, content_type: ContentType) -> Multipart:
        dash = b"--" + boundary_of(content_type).encode("ascii")
        pos = 0
        start = _find_delimiter(body, dash, 0, first=True)
        if start is None:
            raise SipError("multipart body without its opening delimiter", 400)
        preamble = body[: start[0]]
        delimiters: list[bytes] = []
        parts: list[Part] = []
        line_start, line_end, closing = start
        while True:
            if closing:
                if not parts:
                    raise SipError("multipart body without a part", 400)
                return cls(
                    dash[2:].decode("ascii"),
                    preamble,
                    tuple(delimiters),
                    tuple(parts),
                    body[line_start:line_end],
                    body[line_end:],
                )
            if len(parts) >= MAX_PARTS:
                raise SipError("too many parts in a multipart body", 400)
            delimiters.append(body[line_start:line_end])
            pos = line_end
            found = _find_delimiter(body, dash, pos, first=False)
            if found is None:
                raise SipError("multipart body without its closing delimiter", 400)
            parts.append(_parse_part(body[pos : found[0]]))
            line_start, line_end, closing = found

    def replace(self, index: int, part: Part) -> Multipart:
        parts = list(self.parts)
        parts[index] = part
        return replace(self, parts=tuple(parts))

    def without(self, index: int) -> Multipart | None:
        """This body without part ``index``; None when no part would be left."""
        if len(self.parts) == 1:
            return None
        parts = list(self.parts)
        delimiters = list(self.delimiters)
        del parts[index]
        # The first delimiter may have no line break before it (empty preamble):
        # the part that becomes first takes that one.
        first = delimiters[0]
        del delimiters[index]
        if index == 0:
            delimiters[0] = first
        return replace(self, parts=tuple(parts), delimiters=tuple(delimiters))

    def __bytes__(self) -> bytes:
        out = [self.preamble]
        for delimiter, part in zip(self.delimiters, self.parts, strict=True):
            out += (delimiter, part.header_block, part.body)
        out += (self.close, self.epilogue)
        return b"".join(out)


def _find_delimiter(
    body: bytes, dash: bytes, pos: int, *, first: bool
) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after ``pos``: (start with its leading line
    break, end after its own line break, closing?).  The opening one may also start
    the body."""
    if first and body.startswith(dash):
        found = _delimiter_line(body, dash, 0, 0)
        if found is not None:
            return found
    while True:
        at = body.find(b"\n" + dash, pos)
        if at < 0:
            return None
        line_start = at - 1 if at > 0 and body[at - 1] == 0x0D else at
        found = _delimiter_line(body, dash, line_start, at + 1)
        if found is not None:
            return found
        pos = at + 1


def _delimiter_line(
    body: bytes, dash: bytes, line_start: int, at: int
) -> tuple[int, int, bool] | None:
    """Check the line at ``at`` (which starts with ``dash``): a delimiter needs only
    transport padding after it, a close delimiter ``--`` first.  Else it is a line of
    a part that merely starts like the boundary."""
    end = at + len(dash)
    closing = body.startswith(b"--", end)
    if closing:
        end += 2
    while end < len(body) and body[end] in b" \t":
        end += 1
    if closing:
        # The epilogue starts after the padding (its line break is the epilogue's).
        return line_start, end, True
    if body.startswith(b"\r\n", end):
        return line_start, end + 2, False
    if body.startswith(b"\n", end):
        return line_start, end + 1, False
    return None


def _parse_part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):
        return Part(raw[:2], raw[2:])
    if raw.startswith(b"\n"):
        return Part(raw[:1], raw[1:])
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        split, sep = crlf, 4
    elif lf >= 0:
        split, sep = lf, 2
    else:
        raise SipError("multipart body part without a blank line after its headers", 400)
    block = raw[: split + sep]
    headers: list[tuple[str, str]] = []
    for line in re.split(rb"\r?\n(?![ \t])", raw[:split]):
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            raise SipError("malformed header in a multipart body part", 400)
        value = re.sub(rb"\r?\n[ \t]+", b" ", m.group(2)).strip(b" \t")
        headers.append((m.group(1).decode("ascii").lower(), value.decode("utf-8", "replace")))
    return Part(block, raw[split + sep :], tuple(headers))


# ---------------------------------------------------------------- SDP in a body

MAX_DEPTH: Final = 3  # multipart inside multipart: deeper bodies are opaque


@dataclass(frozen=True, slots=True)
class SdpInBody:
    """The SDP of a message body (``application/sdp`` itself, or the first such part
    of a multipart, nested or not) and how to put a rewritten one back.

    :meth:`put` returns the whole body with ``sdp`` in place of the original and
    every other ``application/sdp`` part removed (an alternative the relay did not
    rewrite must not reach the far end); ``put(None)`` removes the SDP, and gives
    ``b""`` when nothing else is left."""

    sdp: bytes
    _put: _Put

    def put(self, sdp: bytes | None) -> bytes:
        out = self._put(sdp)
        return b"" if out is None else out


class _Put:
    __slots__ = ("extra", "index", "inner", "multipart")

    def __init__(
        self,
        multipart: Multipart | None = None,
        index: int = 0,
        inner: _Put | None = None,
        extra: tuple[int, ...] = (),
    ) -> None:
        self.multipart, self.index, self.inner, self.extra = multipart, index, inner, extra

    def __call__(self, sdp: bytes | None) -> bytes | None:
        mp = self.multipart
        if mp is None:  # the application/sdp body itself
            return sdp
        assert self.inner is not None
        new = self.inner(sdp)
        out: Multipart | None = mp
        # Highest index first, so the lower indexes stay valid.
        for i in sorted((*self.extra, self.index), reverse=True):
            if out is None:
                break
            if i == self.index and new is not None:
                out = out.replace(i, out.parts[i].with_body(new))
            else:
                out = out.without(i)
        return None if out is None else bytes(out)


def find_sdp(body: bytes, content_type: ContentType | None) -> SdpInBody | None:
    """The SDP of a body with ``content_type``; None when there is none, or when the
    multipart that would hold it is malformed (RFC 5621 §3: a body the proxy cannot
    read is not one it rewrites)."""
    try:
        found = _locate(body, content_type, 0)
    except SipError:
        return None
    if found is None:
        return None
    return SdpInBody(found[0], found[1])


def _locate(body: bytes, ctype: ContentType | None, depth: int) -> tuple[bytes, _Put] | None:
    if ctype is None:
        return None
    if ctype.mime == "application/sdp":
        return body, _Put()
    if ctype.type != "multipart" or depth >= MAX_DEPTH:
        return None
    mp = Multipart.parse(body, ctype)
    found: tuple[int, bytes, _Put] | None = None
    extra: list[int] = []
    for i, part in enumerate(mp.parts):
        try:
            inner = _locate(part.body, part.content_type, depth + 1)
        except SipError:
            inner = None  # a malformed nested multipart is an opaque part
        if inner is None:
            continue
        if found is None:
            found = (i, *inner)
        else:
            extra.append(i)
    if found is None:
        return None
    index, sdp, put = found
    return sdp, _Put(mp, index, put, tuple(extra))


def set_body(message: Any, body: bytes) -> None:
    """Replace a message's body; an emptied body takes its Content-Type with it.

    A Content-Type over an empty body would announce a zero-length SDP
    (RFC 3261 §20.15), which some peers try to parse.
    """
    message.body = body
    if not body:
        message.headers.remove("Content-Type")
