"""JSON log lines on stdout: one object per line, secrets redacted, floods limited.

A line is ``{"ts": "2024-05-01T12:00:00.123Z", "level": "info", "event": "ready", ...}``:
``ts`` in UTC with milliseconds, ``event`` a short snake_case name a log query can
match on, then the fields the caller gave.  Components take the logger as a plain
callable ``log(level, event, **fields)`` (:class:`LogFn`), so a test can pass a
list's ``append``-like function instead.

Redaction happens here, once, for every line, so that a component that logs a
header or a URI cannot leak credentials by accident (see :func:`redact`).

``log_limited`` is for events a peer can trigger at will (malformed packets, a
flood of bad requests): at most ``limit`` lines per key per second, and the next
line that gets through says how many were suppressed.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from edge.timestamps import iso_millis

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
REDACTED = "[redacted]"


class LogFn(Protocol):
    """What components take as ``log=``."""

    def __call__(self, level: str, event: str, /, **fields: Any) -> None: ...


# ---------------------------------------------------------------- redaction

# Field names that hold secrets, matched per word (``tls_key``, ``api-token``,
# ``Proxy-Authorization``), so that ``keepalive`` or ``monkey`` are left alone.
_SECRET_WORDS = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "cookie",
        "pem",
    }
)
# Field names that contain "key" or "token" but hold no secret.
_NOT_SECRET = frozenset({"key_path", "event", "level", "ts"})

# Patterns inside values.  Each keeps what identifies the thing (the header name,
# the parameter name, the URI's user and host) and drops only the secret.
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A header line, as in a logged SIP message: "Authorization: Digest ..."
    # (RFC 3261 §20.7, §20.28; no compact forms exist for these).
    (
        re.compile(r"(?im)^([ \t]*(?:proxy-)?authorization[ \t]*:)[^\r\n]*"),
        rf"\1 {REDACTED}",
    ),
    # PEM private keys, whole.
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
        ),
        REDACTED,
    ),
    # name=value secrets in query strings, URI parameters, JSON and config dumps.
    (
        re.compile(
            r"(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
            r"[\"']?\s*[=:]\s*)(\"[^\"]*\"|[^\s&;,\"]+)"
        ),
        rf"\1{REDACTED}",
    ),
    # Digest response values anywhere (RFC 7616 §3.4): response="…"
    (re.compile(r"(?i)\b(response\s*=\s*)(\"[^\"]*\"|[0-9a-f]+)"), rf"\1{REDACTED}"),
    # The password of a sip:/sips: URI (RFC 3261 §19.1.1 allows and discourages it).
    (re.compile(r"(?i)\b(sips?:[^:@\s;<>\"]+:)[^@\s<>\"]*@"), rf"\1{REDACTED}@"),
    # Bearer, Basic and AccessKey credentials, and JSON Web Tokens and access keys
    # ("ak_" and 32 random characters) on their own.
    # (Capitalised as in a header, so that prose such as "basic checks" is left alone.)
    (re.compile(r"\b((?:Bearer|Basic|AccessKey) +)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\bak_[A-Za-z0-9]{16,}"), REDACTED),
)
# A quick pre-check so that ordinary values skip the patterns.
_SUSPECT = re.compile(
    r"(?i)authoriz|private key|passw|pwd|secret|token|key\s*[=:]|response|sips?:[^@\s]*:[^@\s]*@"
    r"|bearer|basic|eyJ|accesskey|\bak_"
)


@functools.lru_cache(maxsize=1024)
def is_secret_name(name: str) -> bool:
    """True when a field name says it holds a secret (``password``, ``tls_key``, ...)."""
    # Cached: field names are few and every log and audit line asks again.
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    words = re.split(r"[^a-z0-9]+|(?<=[a-z])(?=[0-9])", lowered)
    return any(w in _SECRET_WORDS for w in words) or "authorization" in lowered


def redact_text(text: str) -> str:
    """``text`` with credentials replaced by ``[redacted]`` (the rest kept)."""
    if len(text) <= _CACHED_LEN:
        # Short values repeat (event names, numbers, user agents): remember them.
        return _redact_short(text)
    return _redact(text)


_CACHED_LEN = 128


@functools.lru_cache(maxsize=8192)
def _redact_short(text: str) -> str:
    return _redact(text)


# Lower-case words at least one of which every _SUSPECT alternative contains: a
# substring test per word costs a fraction of the case-insensitive regex scan, and
# most logged values (UUIDs, addresses, numbers) contain none of them.
_SUSPECT_WORDS = (
    "authoriz", "private key", "passw", "pwd", "secret", "token", "key",
    "response", "sip", "bearer", "basic", "eyj", "ak_",
)  # fmt: skip


def _redact(text: str) -> str:
    lowered = text.lower()
    for word in _SUSPECT_WORDS:
        if word in lowered:
            break
    else:
        return text
    if not _SUSPECT.search(text):
        return text
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` safe to log.

    A value under a secret-looking ``name`` becomes ``[redacted]`` whole; strings
    are scrubbed of Authorization headers, private keys, passwords, tokens and
    Digest responses; mappings and lists are walked (their keys are names too).
    """
    if name and is_secret_name(name) and value not in (None, "", b""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


# ---------------------------------------------------------------- the logger


def _json_default(value: Any) -> Any:
    # Paths, addresses, exceptions: their text is what a reader wants.
    return str(value)


class Logger:
    """Writes JSON lines to ``stream`` (stdout by default, looked up at each write).

    ``level`` is the lowest level written.  ``clock`` (wall time, for ``ts``) and
    ``monotonic`` (for rate limiting) are there for tests.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        level: str = "info",
        limit: int = 10,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        self._stream = stream
        self._min = LEVELS[level]
        self._limit = limit
        self._clock = clock
        self._monotonic = monotonic
        self._max_keys = max_keys
        # key -> [window start (whole second), lines written, lines suppressed]
        self._windows: dict[str, list[int]] = {}

    def __call__(self, level: str, event: str, /, **fields: Any) -> None:
        self.log(level, event, **fields)

    def enabled(self, level: str) -> bool:
        return LEVELS.get(level, LEVELS["error"]) >= self._min

    def log(self, level: str, event: str, /, **fields: Any) -> None:
        if not self.enabled(level):
            return
        record: dict[str, Any] = {"ts": iso_millis(self._clock()), "level": level, "event": event}
        for name, value in fields.items():
            if name not in record:  # a field cannot overwrite ts/level/event
                record[name] = redact(value, name)
        try:
            line = json.dumps(record, default=_json_default, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            # A field json cannot encode (a circular structure): say so rather than lose the line.
            line = json.dumps(
                {"ts": record["ts"], "level": level, "event": event, "log_error": str(e)}
            )
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            # stdout closed or broken pipe: logging must never take the proxy down.
            pass

    def log_limited(self, key: str, level: str, event: str, /, **fields: Any) -> bool:
        """Log at most ``limit`` lines per ``key`` per second; True if this one was written.

        The first line written after some were suppressed carries
        ``suppressed=N`` (the count since the last line written for the key).
        """
        if not self.enabled(level):
            return False
        second = int(self._monotonic())
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys:
                self._evict(second)
            window = self._windows[key] = [second, 0, 0]
        elif window[0] != second:
            window[0], window[1] = second, 0
        if window[1] >= self._limit:
            window[2] += 1
            return False
        window[1] += 1
        if window[2]:
            fields["suppressed"] = window[2]
            window[2] = 0
        self.log(level, event, **fields)
        return True

    def flush_suppressed(self) -> None:
        """Report keys whose lines were suppressed and that have gone quiet since.

        Call it now and then (the application does, every few seconds), so that
        the end of a flood is not the one thing the log never says.
        """
        second = int(self._monotonic())
        for key, window in list(self._windows.items()):
            if window[0] == second:
                continue
            if window[2]:
                self.log("warning", "log_suppressed", topic=key, suppressed=window[2])
            del self._windows[key]

    def _evict(self, second: int) -> None:
        """Bound the table when a flood uses many keys (one per source address, say)."""
        for key, window in list(self._windows.items()):
            if window[0] != second and not window[2]:
                del self._windows[key]
        if len(self._windows) >= self._max_keys:
            dropped = sum(w[2] for w in self._windows.values())
            self._windows.clear()
            if dropped:
                self.log("warning", "log_suppressed", topic="*", suppressed=dropped)
