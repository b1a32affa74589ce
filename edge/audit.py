"""The audit log: JSON lines for security events and calls, apart from the operational log.

One object per line, with the fields of the reference document's "Audit Log
Entry", always all of them and in this order::

    {"timestamp": "2026-01-20T12:00:00.000Z", "event_type": "resource_created",
     "customer_id": "uuid", "agent_id": null, "resource_type": "call",
     "resource_id": "uuid", "action": "create", "source_ip": "192.0.2.10",
     "user_agent": "Zoiper 5", "request_id": null,
     "details": {"source": "+15551234567", "destination": "+15559876543"}}

``timestamp`` is UTC with milliseconds; absent fields are ``null``, absent
details ``{}``.

Event types (module constants).  Where the reference names one it is used
(``resource_created`` / ``resource_deleted`` with ``resource_type`` "call",
``rate_limit_exceeded`` as in its RATE_LIMIT_EXCEEDED reason); its other
events are prose ("login success/failure", "permission denied attempts",
"invalid token attempts", "suspicious activity patterns"), made snake_case:

======================  ============================  ==================
constant                event_type                    suggested action
======================  ============================  ==================
AUTH_SUCCESS            authentication_succeeded      authenticate
AUTH_FAILURE            authentication_failed         authenticate
INVALID_TOKEN           invalid_token                 authenticate
PERMISSION_DENIED       permission_denied             the denied method
RATE_LIMITED            rate_limit_exceeded           reject
BAN_ADDED               ban_added                     ban
BAN_EXPIRED             ban_expired                   unban
SCANNER_DROPPED         scanner_dropped               drop
CALL_CREATED            resource_created (call)       create
CALL_ENDED              resource_deleted (call)       delete
SUPPRESSED              audit_events_suppressed       suppress
WRITE_FAILED            audit_events_lost             lose
======================  ============================  ==================

A call's ``resource_id`` is :func:`call_resource_id` of its Call-ID, the same
for its "created" and "ended" lines.

Nothing secret gets in: every value goes through :func:`edge.log.redact`
(Authorization headers, passwords, tokens, JWTs, access keys, Digest
responses), peer-supplied text is clipped (``user_agent`` to 256 characters),
and JSON escaping (ASCII only) keeps CR, LF, NUL and U+2028 from breaking a
line.

Floods.  The events in :data:`FLOODABLE` are those an attacker can trigger at
will.  Each is admitted at most ``per_source`` times per second per (event
type, source address), and ``per_type`` times per second over all sources
(many spoofed sources).  What is held back is counted, not lost silently: when
the second is over, a ``audit_events_suppressed`` line gives the event type,
the source (``null`` for the all-sources cap), the count and the first and
last times.  That line is written when the next event of that kind arrives
or when :meth:`AuditLog.flush_suppressed` runs (the application calls it
every few seconds), so a flood that stops is still reported.  Successful
authentications, calls and bans are bounded by the policy itself (rate
limits, one ban per address) and are never held back per source.

Batching.  With ``flush_interval`` above 0 and an event loop running, a line is
put together and written at most that long after its event, in one write(2)
with the other lines of that interval (its ``timestamp`` is still the event's).
A proxy writes a line when a call starts and one when it ends, each after an
idle spell: alone, a line cost about 75 µs of CPU with cold caches, most of it
formatting code and the file system's write path loaded again for one line; in
a batch the lines after the first run warm.  What this gives up: lines held
back when the process is killed outright (SIGKILL, the OOM killer) are lost.
A crash loses the "ended" line of every live call anyway; a stop by signal,
:meth:`AuditLog.close`, :meth:`AuditLog.reopen` and :meth:`AuditLog.flush`
write them.  Without a running loop (the command line tools), or with 0, every
line is written at once.

Failures.  A write that fails (disk full, closed stdout) never raises into
the caller: it is counted in ``write_errors``, reported on stderr once per run
of failures, and the first line that gets through afterwards is followed by
an ``audit_events_lost`` line with the count.

The file is opened for append (created with mode 0600: the log holds phone
numbers and addresses) and each line is a single write(2) on that
descriptor (one for a batch of whole lines), so lines of several processes
never interleave and a full disk never leaves half a line in a buffer.
:meth:`AuditLog.reopen` opens the path again after log rotation (SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from edge.log import REDACTED, is_secret_name, redact, redact_text
from edge.timestamps import iso_millis as _timestamp
from sip._abnf import remember
from sip.random_tokens import token_bytes

__all__ = [
    "AUTH_FAILURE",
    "AUTH_SUCCESS",
    "BAN_ADDED",
    "BAN_EXPIRED",
    "CALL_CREATED",
    "CALL_ENDED",
    "CALL_NAMESPACE",
    "FLOODABLE",
    "INVALID_TOKEN",
    "PERMISSION_DENIED",
    "RATE_LIMITED",
    "RESOURCE_CALL",
    "SCANNER_DROPPED",
    "SUPPRESSED",
    "WRITE_FAILED",
    "AuditLog",
    "call_resource_id",
]

AUTH_SUCCESS: Final = "authentication_succeeded"
AUTH_FAILURE: Final = "authentication_failed"
INVALID_TOKEN: Final = "invalid_token"
PERMISSION_DENIED: Final = "permission_denied"
RATE_LIMITED: Final = "rate_limit_exceeded"
BAN_ADDED: Final = "ban_added"
BAN_EXPIRED: Final = "ban_expired"
SCANNER_DROPPED: Final = "scanner_dropped"
CALL_CREATED: Final = "resource_created"
CALL_ENDED: Final = "resource_deleted"
SUPPRESSED: Final = "audit_events_suppressed"
WRITE_FAILED: Final = "audit_events_lost"

#: ``resource_type`` of call events.
RESOURCE_CALL: Final = "call"

#: Events a peer can trigger at will, hence capped.  Ban events are here for
#: the all-sources cap (a spoofed flood bans many addresses); one address is
#: banned once per ban time, so the per-source cap never bites them.
FLOODABLE: Final = frozenset(
    {
        AUTH_FAILURE,
        INVALID_TOKEN,
        PERMISSION_DENIED,
        RATE_LIMITED,
        SCANNER_DROPPED,
        BAN_ADDED,
        BAN_EXPIRED,
    }
)

#: Namespace of :func:`call_resource_id`.  Fixed for good: changing it would
#: break correlation with lines written by earlier versions.
CALL_NAMESPACE = uuid.UUID("6d1c4f0e-8a52-5b7e-9c3d-2f4a1e0b7c91")
_NAMESPACE_BYTES: Final = CALL_NAMESPACE.bytes
_NAMESPACE_SHA1: Final = hashlib.sha1(_NAMESPACE_BYTES, usedforsecurity=False)

_USER_AGENT_MAX: Final = 256
_FIELD_MAX: Final = 256
_DETAIL_MAX: Final = 1024
_FILE_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(slots=True)
class _Event:
    """One event's fields, from the call to the line: held back by flush_interval."""

    now: float
    event_type: str
    action: str
    source_ip: str | None = None
    customer_id: str | None = None
    agent_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    details: Mapping[str, Any] | None = None

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        now: float,
        event_type: str,
        action: str,
        source_ip: str | None = None,
        customer_id: str | None = None,
        agent_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.now = now
        self.event_type = event_type
        self.action = action
        self.source_ip = source_ip
        self.customer_id = customer_id
        self.agent_id = agent_id
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.user_agent = user_agent
        self.request_id = request_id
        self.details = details


def call_resource_id(call_id: str) -> str:
    """A stable UUID for a SIP Call-ID: the ``resource_id`` of its call events.

    A name-based UUID (version 5), so the "created" and "ended" lines of a
    call correlate, on any instance, without the raw Call-ID (which may carry
    a host name or address) in the audit log.  It is a pseudonym, not a
    secret: whoever holds the Call-ID can compute it and find the call.
    """
    # A call asks twice (created, ended), usually within seconds: the second
    # time is a lookup instead of a SHA-1 through OpenSSL.  Bounded like the
    # other caches here: a flood of Call-IDs only costs refills.
    found = _resource_ids.get(call_id)
    if found is not None:
        return found
    # uuid.uuid5 by hand (RFC 4122 §4.3): the same value, a third of the work.
    # A copy of a hasher that has read the namespace: no digest fetch per call
    # (OpenSSL 3 looks the algorithm up again for each new hasher).
    hasher = _NAMESPACE_SHA1.copy()
    hasher.update(call_id.encode("utf-8"))
    # Version 5 and the variant set in the text, as new_request_id does: compiled,
    # a bytearray's items are generic calls.
    h = hasher.hexdigest()
    found = _issue(f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}")
    if len(call_id) <= _RESOURCE_ID_KEY_MAX:  # the cache's memory stays bounded too
        remember(_resource_ids, call_id, found, _RESOURCE_IDS_MAX)
    return found


_RESOURCE_IDS_MAX: Final = 4096
_RESOURCE_ID_KEY_MAX: Final = 256
_resource_ids: Final[dict[str, str]] = {}


def new_request_id() -> str:
    """A random (version 4) UUID as text, cheaper than ``str(uuid.uuid4())``."""
    # Version 4 in the 13th digit, the variant (binary 10) in the top bits of the
    # 17th: the same values as setting the bits of the bytes, in string operations
    # (compiled, a bytearray's items are generic calls).
    h = token_bytes(16).hex()
    return _issue(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")


# A hex digit with its top two bits set to 10 (RFC 4122 §4.1.1).
_VARIANT: Final = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


# The ids this module made (request ids, call resource ids): UUID text by
# construction, so a line writes them without the character check of _is_uuid
# (a fifth of a line's formatting).  Bounded; an id that fell out is checked.
_ISSUED_MAX: Final = 8192
_issued: Final[dict[str, None]] = {}


def _issue(value: str) -> str:
    remember(_issued, value, None, _ISSUED_MAX)
    return value


_encode_str: Final = json.encoder.encode_basestring_ascii  # C, what json.dumps uses by default
_REDACTED_JSON: Final = _encode_str(REDACTED)
_dumps: Final = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _json(value: Any) -> str:
    """``value`` as json.dumps(value, default=str, separators=(",", ":")) writes it."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if value is None:
        return "null"
    if kind is dict and all(type(k) is str for k in value):
        return "{" + ",".join(f"{_encode_str(k)}:{_json(v)}" for k, v in value.items()) + "}"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return _dumps(value)  # floats, bools, lists, anything else: the encoder's rules


def _clip(value: Any, limit: int) -> Any:
    # Redact first, clip second: clipping first could cut a secret short of
    # the length its pattern needs and leave its head in the log.
    if value is None:
        return None
    value = redact_text(value) if type(value) is str else redact(value)
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def _field(value: Any, limit: int) -> str:
    """One top-level field, redacted, clipped and JSON-encoded."""
    if value is None:
        return "null"
    if type(value) is str:
        if len(value) <= _SHORT:
            if len(value) == 36 and (value in _issued or _is_uuid(value)):
                return f'"{value}"'  # request and resource ids: nothing to redact or escape
            return _short_str(value)
        return _str(value, limit)
    return _json(_clip(value, limit))


def _str(value: str, limit: int) -> str:
    value = redact_text(value)
    return _encode_str(value if len(value) <= limit else value[:limit] + "...")


# Short values repeat (event types, actions, addresses, user agents, numbers): their
# finished JSON text is remembered, redaction included (what redact_text caches too).
# Every limit is above _SHORT, so a short value's text does not depend on the limit.
# Plain dicts emptied when full, not lru_cache: compiled, a dict lookup is a
# fraction of a call through the cache wrapper, and a flood of distinct values
# only costs a refill either way.
_SHORT: Final = 128
assert min(_FIELD_MAX, _USER_AGENT_MAX, _DETAIL_MAX) > _SHORT
_CACHE_MAX: Final = 8192
_short_texts: Final[dict[str, str]] = {}
_HEX_AND_DASH: Final = b"0123456789abcdef-"


def _is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID as text (lower-case hex, dashes at 8, 13, 18, 23):
    the regex [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} by hand.

    Compiled, the dash checks are a few instructions each; what is left of the
    text after deleting hex digits and dashes is one C loop over its bytes.
    ``str.strip`` with a set of characters searches the set once per character:
    with it, the four ids of a call's two events took 17.8k instructions, with
    this 9.6k (callgrind).
    """
    return (
        len(value) == 36
        and value[8] == "-"
        and value[13] == "-"
        and value[18] == "-"
        and value[23] == "-"
        and value.count("-") == 4
        and value.isascii()
        and not value.encode().translate(None, _HEX_AND_DASH)
    )


def _short_str(value: str) -> str:
    """:func:`_str` of a value of at most ``_SHORT`` characters, remembered."""
    text = _short_texts.get(value)
    if text is None:
        text = _encode_str(redact_text(value))
        remember(_short_texts, value, text, _CACHE_MAX)
    return text


# The fields around resource_id repeat from line to line (a call's two events, a
# trunk's calls): their JSON text, redacted and clipped, by the values' tuple.
_who_texts: Final[dict[tuple[str, str | None, str | None, str | None], str]] = {}
_how_texts: Final[dict[tuple[str, str | None, str | None], str]] = {}


def _who(
    event_type: str, customer_id: str | None, agent_id: str | None, resource_type: str | None
) -> str:
    """``,"event_type":...,"resource_type":...`` of a line."""
    key = (event_type, customer_id, agent_id, resource_type)
    text = _who_texts.get(key)
    if text is None:
        text = (
            f',"event_type":{_field(event_type, _FIELD_MAX)}'
            f',"customer_id":{_field(customer_id, _FIELD_MAX)}'
            f',"agent_id":{_field(agent_id, _FIELD_MAX)}'
            f',"resource_type":{_field(resource_type, _FIELD_MAX)}'
        )
        remember(_who_texts, key, text, _CACHE_MAX)
    return text


def _how(action: str, source_ip: str | None, user_agent: str | None) -> str:
    """``,"action":...,"user_agent":...`` of a line."""
    key = (action, source_ip, user_agent)
    text = _how_texts.get(key)
    if text is None:
        text = (
            f',"action":{_field(action, _FIELD_MAX)}'
            f',"source_ip":{_field(source_ip, _FIELD_MAX)}'
            f',"user_agent":{_field(user_agent, _USER_AGENT_MAX)}'
        )
        remember(_how_texts, key, text, _CACHE_MAX)
    return text


_detail_keys: Final[dict[str, tuple[str, bool]]] = {}


def _detail_key(key: str) -> tuple[str, bool]:
    """A details key's JSON text with its colon, and whether it names a secret."""
    found = _detail_keys.get(key)
    if found is None:
        found = (_encode_str(key) + ":", is_secret_name(key))
        remember(_detail_keys, key, found, _CACHE_MAX)
    return found


def _flat_details(details: Mapping[Any, Any]) -> str | None:
    """The JSON of a flat ``details`` mapping (what call events carry) in one pass,
    the same text as the general path; None for anything else (nested, odd types)."""
    # A dict as such (what callers pass): compiled, its items are walked natively.
    items: dict[Any, Any] = details if type(details) is dict else dict(details)
    parts = []
    for key, value in items.items():
        if type(key) is not str:
            return None
        head, secret = _detail_key(key)
        if value is None:
            text = "null"
        elif secret and value not in ("", b""):
            text = _REDACTED_JSON
        elif type(value) is str:
            text = _short_str(value) if len(value) <= _SHORT else _str(value, _DETAIL_MAX)
        elif type(value) is int:
            text = int.__repr__(value)
        elif type(value) is float and math.isfinite(value):
            text = float.__repr__(value)  # what the encoder writes for a finite float
        else:
            return None
        parts.append(head + text)
    return "{" + ",".join(parts) + "}"


def _clip_all(value: Any) -> Any:
    """``value`` (already redacted) with every string in it clipped."""
    if isinstance(value, str):
        return value if len(value) <= _DETAIL_MAX else value[:_DETAIL_MAX] + "..."
    if isinstance(value, dict):
        return {k: _clip_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_all(v) for v in value]
    return value


class _Window:
    """One second of one cap: lines admitted, lines held back and when."""

    __slots__ = ("second", "written", "suppressed", "first", "last")

    def __init__(self, second: int) -> None:
        self.second = second
        self.written = 0
        self.suppressed = 0
        self.first = 0.0
        self.last = 0.0

    def hold(self, now: float) -> None:
        if not self.suppressed:
            self.first = now
        self.suppressed += 1
        self.last = now


class AuditLog:
    """Writes audit lines to ``path`` (a file, appended to) or, for None or "-", stdout.

    ``stream`` replaces stdout (tests); it cannot be combined with a file
    path.  ``clock`` gives wall time, for the timestamps and the per-second
    caps.  ``per_source``, ``per_type`` and ``limited`` set the flood caps
    (see the module docstring); ``max_keys`` bounds the per-source table: when
    it is full of keys active this second, new sources are held only by the
    all-sources cap.  ``flush_interval`` (seconds, 0 for none) and
    ``max_pending`` (lines) bound how long and how many lines wait to be
    written together (see the module docstring).  Opening the file may raise
    OSError (a bad path should stop start-up); nothing after that raises.
    """

    def __init__(
        self,
        path: str | None,
        *,
        clock: Callable[[], float] = time.time,
        stream: TextIO | None = None,
        per_source: int = 10,
        per_type: int = 1000,
        limited: Collection[str] = FLOODABLE,
        max_keys: int = 10_000,
        flush_interval: float = 0.0,
        max_pending: int = 256,
    ) -> None:
        if path == "-":
            path = None
        if path is not None and stream is not None:
            raise ValueError("an audit log goes to a file or to a stream, not both")
        if per_source < 1 or per_type < 1 or max_keys < 1:
            raise ValueError("audit caps must be at least 1")
        if not 0.0 <= flush_interval <= 60.0 or max_pending < 1:
            raise ValueError("flush_interval must be 0-60 s and max_pending at least 1")
        self._path = path
        self._stream = stream
        self._clock = clock
        self._per_source = per_source
        self._per_type = per_type
        self._limited = frozenset(limited)
        self._max_keys = max_keys
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        # Events held back by flush_interval, oldest first.
        self._pending: list[_Event] = []
        self._fd: int | None = os.open(path, _FILE_FLAGS, 0o600) if path is not None else None
        # A short write left a line without its newline; the next line ends it.
        self._torn = False
        self._failing = False
        self._lost = 0
        # (event type, source) -> window; event type -> window (all sources).
        self._windows: dict[tuple[str, str], _Window] = {}
        self._types: dict[str, _Window] = {}
        self._swept = -1
        self.lines_written = 0
        self.write_errors = 0
        self.full_table_sweeps = 0

    # ------------------------------------------------------------ events

    def event(
        self,
        event_type: str,
        *,
        action: str,
        source_ip: str | None = None,
        customer_id: str | None = None,
        agent_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one audit line (or count it as held back, for a flood)."""
        now = self._clock()
        if event_type in self._limited and not self._admit(event_type, source_ip, now):
            return
        self._emit(
            _Event(
                now,
                event_type,
                action,
                source_ip,
                customer_id,
                agent_id,
                resource_type,
                resource_id,
                user_agent,
                request_id,
                details,
            )
        )

    def flush_suppressed(self, *, final: bool = False) -> None:
        """Write the summaries of seconds that are over (all of them if ``final``).

        Also forgets the windows written out, which keeps the table small.
        """
        second = math.floor(self._clock())
        for key, window in list(self._windows.items()):
            if final or window.second != second:
                self._summarise(key[0], key[1] or None, window)
                del self._windows[key]
        for event_type, window in list(self._types.items()):
            if final or window.second != second:
                self._summarise(event_type, None, window)
                del self._types[event_type]

    # ------------------------------------------------------------ the file

    def reopen(self) -> bool:
        """Open the path again (after rotation); False, still writing to the old file, on error.

        Lines held back go to the old file first: they are older than any after the reopen.
        """
        self.flush()
        if self._path is None:
            return True
        try:
            fd = os.open(self._path, _FILE_FLAGS, 0o600)
        except OSError as e:
            self._stderr(f"sipedge: cannot reopen audit log {self._path}: {e}")
            return False
        old, self._fd = self._fd, fd
        self._torn = False
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)
        return True

    def close(self) -> None:
        """Write pending summaries and held lines, and close the file (stdout is left open)."""
        self.flush_suppressed(final=True)
        self.flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------ internals

    def _admit(self, event_type: str, source_ip: str | None, now: float) -> bool:
        second = math.floor(now)
        key = (event_type, source_ip or "")
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys and self._swept != second:
                # Once a second at most: a full table during a wide flood must
                # not cost a scan per event.
                self._swept = second
                self.full_table_sweeps += 1
                self.flush_suppressed()
            if len(self._windows) < self._max_keys:
                window = self._windows[key] = _Window(second)
        elif window.second != second:
            self._summarise(event_type, source_ip, window)
            self._windows[key] = window = _Window(second)
        if window is not None and window.written >= self._per_source:
            window.hold(now)
            return False
        overall = self._types.get(event_type)
        if overall is None or overall.second != second:
            if overall is not None:
                self._summarise(event_type, None, overall)
            overall = self._types[event_type] = _Window(second)
        if overall.written >= self._per_type:
            overall.hold(now)
            return False
        if window is not None:
            window.written += 1
        overall.written += 1
        return True

    def _summarise(self, event_type: str, source_ip: str | None, window: _Window) -> None:
        if not window.suppressed:
            return
        self._emit(
            _Event(
                self._clock(),
                SUPPRESSED,
                "suppress",
                source_ip,
                details={
                    "event_type": event_type,
                    "suppressed": window.suppressed,
                    "first": _timestamp(window.first),
                    "last": _timestamp(window.last),
                    "scope": "source" if source_ip is not None else "all_sources",
                },
            )
        )
        window.suppressed = 0

    def _emit(self, event: _Event) -> None:
        """Hold ``event`` for the next batch, or write its line now."""
        if self._flush_interval > 0.0 and self._hold(event):
            return
        self._write([self._format(event)])

    def _hold(self, event: _Event) -> bool:
        """Keep ``event`` for the next flush; False when no loop can run one."""
        # Asked for every event, not only the first of a batch: a thread without a
        # loop (a tool, a helper thread) writes at once and never touches the list
        # the loop's flush swaps out.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if not self._pending:
            loop.call_later(self._flush_interval, self.flush)
        self._pending.append(event)
        if len(self._pending) >= self._max_pending:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the lines held back by ``flush_interval`` now, in one write."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._write([self._format(event) for event in pending])

    def _format(self, event: _Event) -> str:
        # The reference document's order.  Every field is redacted (short repeated
        # values hit redact_text's cache) and the line is put together by hand: the
        # same text json.dumps gives, at a fraction of its cost per line.
        # _field by its name, not through a local: compiled, that is a direct C call.
        head = (
            f'{{"timestamp":"{_timestamp(event.now)}"'
            f"{_who(event.event_type, event.customer_id, event.agent_id, event.resource_type)}"
            f',"resource_id":{_field(event.resource_id, _FIELD_MAX)}'
            f"{_how(event.action, event.source_ip, event.user_agent)}"
            f',"request_id":{_field(event.request_id, _FIELD_MAX)}'
        )
        details = event.details
        body = _flat_details(details) if details else "{}"
        if body is None:
            try:
                body = _json(_clip_all(redact(dict(details or {}))))
            except (RecursionError, TypeError, ValueError) as e:
                # Details that cannot be walked or encoded (a cycle): keep the event, say why.
                body = _json({"audit_error": f"details not logged: {type(e).__name__}"})
        return f'{head},"details":{body}}}'

    def _write(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        complete = 0  # lines of a short write that got out whole
        try:
            if self._fd is None:
                stream = self._stream if self._stream is not None else sys.stdout
                stream.write(text)
                stream.flush()
            else:
                data = ("\n" if self._torn else "").encode() + text.encode()
                written = os.write(self._fd, data)
                if written < len(data):
                    complete = data.count(b"\n", 1 if self._torn else 0, written)
                    self._torn = self._torn or written > 0
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
                self._torn = False
        except (OSError, ValueError) as e:
            self.write_errors += 1
            self.lines_written += complete
            self._lost += len(lines) - complete
            if not self._failing:
                self._failing = True
                self._stderr(
                    f"sipedge: audit log write failed ({e}); "
                    "audit events are lost and counted until writing works again"
                )
            return
        self.lines_written += len(lines)
        if self._failing:
            self._failing = False
            lost, self._lost = self._lost, 0
            # Written now, not held: the record of a loss must not wait on a flush
            # that may already be the last one (close).
            loss = _Event(self._clock(), WRITE_FAILED, "lose", details={"lost": lost})
            self._write([self._format(loss)])

    @staticmethod
    def _stderr(message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr, flush=True)
