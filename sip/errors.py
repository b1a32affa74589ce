"""The one error type of the protocol core.

A parser that meets bad input raises :class:`SipError` carrying the status a
server should answer with (``status_hint``) and a short reason.  Callers turn
it into a response or a silent drop; it never escapes into an event loop.
"""

from __future__ import annotations


class SipError(ValueError):
    """Malformed or unacceptable protocol input.

    ``status_hint`` is the SIP status a UAS or proxy should answer with
    (400 Bad Request, 413 Request Entity Too Large, 414 Request-URI Too Long,
    416 Unsupported URI Scheme, 420 Bad Extension, 483 Too Many Hops,
    505 Version Not Supported, ...).  ``reason`` is safe to put in a reason
    phrase or a log line: it never quotes secret material.
    """

    def __init__(
        self,
        reason: str,
        status_hint: int = 400,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint
        # Headers the answer must carry, e.g. Unsupported on a 420 (§20.40).
        self.headers = headers

    def __repr__(self) -> str:
        return f"SipError({self.reason!r}, status_hint={self.status_hint})"
