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
state lives in this process (a flow is a socket of this process); the AOR
index could move to the shared state store with the rest once instances
share state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    ) -> None:
        self.clock = clock
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self._by_aor: dict[str, list[Binding]] = {}
        self._by_conn: dict[int, set[str]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

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
        bindings = self._by_aor.get(aor, [])
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
        existing = next((b for b in self._by_aor.get(aor, []) if b.contact == uri), None)
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
        bindings = self._by_aor.setdefault(aor, [])
        if len(bindings) >= MAX_PER_AOR or self._total >= MAX_TOTAL:
            self.expire(now)
            if len(bindings) >= MAX_PER_AOR or self._total >= MAX_TOTAL:
                return Answer(503, [("Retry-After", "60")], "Too Many Registrations")
        binding = Binding(aor, uri, conn_id, remote, now + expires, req.call_id,
                          req.cseq.number, now)  # fmt: skip
        bindings.append(binding)
        self._by_conn.setdefault(conn_id, set()).add(aor)
        self._total += 1
        return None

    def _contact_headers(self, aor: str, now: float) -> list[tuple[str, str]]:
        return [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in self._by_aor.get(aor, [])
            if b.expires_at > now
        ]

    # ------------------------------------------------------------ lookups
    def lookup(self, uri: URI) -> list[Binding]:
        """Live bindings of the AOR ``uri`` names, most recent first."""
        aor = aor_of(uri)
        if aor is None:
            return []
        now = self.clock()
        live = [b for b in self._by_aor.get(aor, []) if b.expires_at > now]
        return sorted(live, key=lambda b: -b.registered_at)

    def bindings(self) -> list[Binding]:
        return [b for bs in self._by_aor.values() for b in bs]

    # ------------------------------------------------------------ going away
    def drop_connection(self, conn_id: int) -> int:
        """The connection closed: its bindings vanish.  Returns how many."""
        dropped = 0
        for aor in self._by_conn.pop(conn_id, set()):
            for b in [b for b in self._by_aor.get(aor, []) if b.conn_id == conn_id]:
                self._remove(b, forget_conn=False)
                dropped += 1
        return dropped

    def expire(self, now: float | None = None) -> int:
        when = self.clock() if now is None else now
        old = [b for bs in self._by_aor.values() for b in bs if b.expires_at <= when]
        for b in old:
            self._remove(b)
        return len(old)

    def _remove(self, binding: Binding, forget_conn: bool = True) -> None:
        bindings = self._by_aor.get(binding.aor)
        if not bindings or binding not in bindings:
            return
        bindings.remove(binding)
        self._total -= 1
        if not bindings:
            del self._by_aor[binding.aor]
        if forget_conn:
            aors = self._by_conn.get(binding.conn_id)
            if aors is not None and not any(
                b.conn_id == binding.conn_id for b in self._by_aor.get(binding.aor, [])
            ):
                aors.discard(binding.aor)
                if not aors:
                    del self._by_conn[binding.conn_id]


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
