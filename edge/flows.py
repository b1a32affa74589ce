"""Flow tokens: a Record-Route entry that remembers the connection it faces.

A caller on TCP or TLS (a phone behind NAT, or sipp behind a TLS shim) can only
be reached over the connection it opened: its Contact names an address nobody
can connect to.  When the edge Record-Routes such a request, the entry facing
the caller carries a token naming that connection (the idea of RFC 5626 §5.2),
so that requests coming back along the route set go down the same connection.

The token is authenticated (HMAC over the connection id and the peer address,
with a per-process secret), so a client cannot forge a Route that steers its
request into somebody else's connection.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Final

_TAG_LEN: Final = 16  # hex characters of the HMAC kept: 64 bits, per process lifetime
_TAGS_KEPT: Final = 4096  # connections whose tag is remembered; then it is worked out again


class FlowTokens:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        # conn id -> (peer, tag): a connection's tag never changes, and an HMAC
        # costs ~20k instructions under OpenSSL 3 (the digest is looked up by name
        # every time), on every Record-Routed request and every token checked.
        self._tags: dict[int, tuple[tuple[str, int], str]] = {}

    def make(self, conn_id: int, remote: tuple[str, int]) -> str:
        """A token for ``conn_id``, usable as the user part of a SIP URI."""
        return f"ft{conn_id}x{self._tag(conn_id, remote)}"

    def check(self, token: str, remote_of: Callable[[int], tuple[str, int] | None]) -> int | None:
        """The connection id a token names, if it is authentic and the connection lives.

        ``remote_of`` gives a live connection's peer address, or None.
        """
        if not token.startswith("ft") or "x" not in token:
            return None
        ident, _, tag = token[2:].partition("x")
        if not ident.isdigit() or len(ident) > 12:
            return None
        conn_id = int(ident)
        remote = remote_of(conn_id)
        if remote is None:
            return None
        if not hmac.compare_digest(tag, self._tag(conn_id, remote)):
            return None
        return conn_id

    def _tag(self, conn_id: int, remote: tuple[str, int]) -> str:
        known = self._tags.get(conn_id)
        if known is not None and known[0] == remote:
            return known[1]
        msg = f"{conn_id}|{remote[0]}|{remote[1]}".encode()
        tag = hmac.digest(self._secret, msg, "sha256").hex()[:_TAG_LEN]
        if len(self._tags) >= _TAGS_KEPT:
            self._tags.clear()
        self._tags[conn_id] = (remote, tag)
        return tag
