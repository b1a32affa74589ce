"""A registrar for clients on connections the edge holds (browsers over WebSocket).

RFC 3261 §10.3 on a small scale, with RFC 5626's idea of a *flow*: a
binding is an address-of-record tied to the live connection the REGISTER came
on, because a browser's Contact (``sip:x@df7jal23ls0d.invalid;transport=ws``,
RFC 7118 §5.2) cannot be reached any other way.  A call to that AOR goes down
that connection; when the connection closes, its bindings go with it.

Sans-I/O apart from what it is handed: :meth:`Registrar.register` takes the
REGISTER and answers with a status and headers; :meth:`lookup` says where an
AOR is.  Memory is bounded (bindings per AOR and in total).

Who may register what: a trusted source (a trunk, an upstream) any AOR; a
Digest user only its own username; a Bearer identity its ``agent_id`` (or its
``customer_id`` without one); an access key any AOR of its customer.  The
bindings live in the state store's registration table
(``StateStore.registrations``), next to bans and buckets; it stays per process
even with the Redis store, because a flow is a socket of this process: sharing
it means routing a call to the instance that holds the WebSocket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.state import RegistrationTable
from sip.errors import SipError
from sip.headers import Contact
from sip.message import Request
from sip.uri import URI

DEFAULT_EXPIRES = 600
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
MAX_PER_AOR = 10
MAX_TOTAL = 100_000


@dataclass(slots=True)
class Binding:
    aor: str  # "user" (the edge serves one domain)
    contact: URI
    conn_id: int
    remote: tuple[str, int]
    expires_at: float
    call_id: str
    cseq: int
    registered_at: float


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    reason: str | None = None


def aor_of(uri: URI) -> str | None:
    """The key of an address-of-record: its user part (None for a URI without one)."""
    return uri.user if uri.user else None


class Registrar:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        table: RegistrationTable | None = None,
    ) -> None:
        """``table``: where the bindings live, the state store's (``store.registrations``)."""
        self.clock = clock
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self._table = table if table is not None else RegistrationTable()

    def __len__(self) -> int:
        return len(self._table)

    # ------------------------------------------------------------ REGISTER
    def register(
        self, req: Request, conn_id: int, remote: tuple[str, int], identity: Any | None
    ) -> Answer:
        """Apply a REGISTER that arrived on connection ``conn_id``; the answer to send."""
        now = self.clock()
        aor = aor_of(req.to.uri)
        if aor is None:
            return Answer(404, [], "No Address-of-Record")
        if not _may_register(identity, aor):
            return Answer(403, [], "Not Your Address-of-Record")
        try:
            contacts = req.contact
        except SipError as error:
            return Answer(400, [], error.reason)
        header_expires = req.expires
        bindings = self._table.of(aor)
        if contacts:
            if any(c.star for c in contacts):
                # §10.3 step 6: "*" only alone and with Expires: 0.
                if len(contacts) != 1 or header_expires != 0:
                    return Answer(400, [], "Invalid Wildcard")
                for b in list(bindings):
                    self._remove(b)
                return Answer(200, [])
            for contact in contacts:
                answer = self._bind(req, aor, contact, header_expires, conn_id, remote, now)
                if answer is not None:
                    return answer
        return Answer(200, self._contact_headers(aor, now))

    def _bind(
        self,
        req: Request,
        aor: str,
        contact: Contact,
        header_expires: int | None,
        conn_id: int,
        remote: tuple[str, int],
        now: float,
    ) -> Answer | None:
        uri = contact.uri
        assert uri is not None
        expires = contact.expires
        if expires is None:
            expires = header_expires if header_expires is not None else self.default_expires
        existing = next((b for b in self._table.of(aor) if b.contact == uri), None)
        stale = existing is not None and existing.call_id == req.call_id
        if stale and existing is not None and req.cseq.number <= existing.cseq:
            return Answer(500, [("Retry-After", "1")], "Out Of Order")  # §10.3 step 7
        if expires == 0:
            if existing is not None:
                self._remove(existing)
            return None
        if expires < self.min_expires:
            return Answer(423, [("Min-Expires", str(self.min_expires))])
        expires = min(expires, self.max_expires)
        if existing is not None:
            self._remove(existing)
        if len(self._table.of(aor)) >= MAX_PER_AOR or len(self._table) >= MAX_TOTAL:
            self.expire(now)
            if len(self._table.of(aor)) >= MAX_PER_AOR or len(self._table) >= MAX_TOTAL:
                return Answer(503, [("Retry-After", "60")], "Too Many Registrations")
        binding = Binding(aor, uri, conn_id, remote, now + expires, req.call_id,
                          req.cseq.number, now)  # fmt: skip
        self._table.add(binding)
        return None

    def _contact_headers(self, aor: str, now: float) -> list[tuple[str, str]]:
        return [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in self._table.of(aor)
            if b.expires_at > now
        ]

    # ------------------------------------------------------------ lookups
    def lookup(self, uri: URI) -> list[Binding]:
        """Live bindings of the AOR ``uri`` names, most recent first."""
        aor = aor_of(uri)
        if aor is None:
            return []
        now = self.clock()
        live = [b for b in self._table.of(aor) if b.expires_at > now]
        return sorted(live, key=lambda b: -b.registered_at)

    def bindings(self) -> list[Binding]:
        return self._table.all()

    # ------------------------------------------------------------ going away
    def drop_connection(self, conn_id: int) -> int:
        """The connection closed: its bindings vanish.  Returns how many."""
        return self._table.drop_conn(conn_id)

    def expire(self, now: float | None = None) -> int:
        when = self.clock() if now is None else now
        old = [b for b in self._table.all() if b.expires_at <= when]
        for b in old:
            self._table.remove(b)
        return len(old)

    def _remove(self, binding: Binding) -> None:
        self._table.remove(binding)


def _may_register(identity: Any | None, aor: str) -> bool:
    if identity is None:
        return False
    scheme = identity.scheme
    if scheme in ("trunk", "upstream", "accesskey"):
        return True
    if scheme == "digest":
        return bool(identity.name == aor)
    if scheme == "bearer":
        return bool(aor == (identity.agent_id or identity.customer_id))
    return False
