"""Who gets in: the edge's admission policy for requests from outside.

Sans-I/O: the proxy asks, this module answers with a :class:`Decision`
(forward with an identity, answer with a status and headers, or drop without a
word) and records what it saw in the shared state and the audit log.  The
order of the checks is the order of their cost, so that a flood pays as little
as possible:

1. a banned source is dropped before its packet is even parsed
   (:meth:`Admission.banned`, called by the proxy on the raw datagram);
2. trunks (source in a carrier allowlist) and upstream targets are trusted
   by address and pass;
3. untrusted sources: the per-source request bucket (over it: dropped, and
   enough drops in a window ban the source), then scanner signatures
   (dropped, and banned);
4. in-dialog requests of calls the edge already admitted pass (the proxy
   tells us whether the dialog is known);
5. everything else must authenticate: Digest (RFC 7616 / 8760, users from
   the SQLite store), Bearer JWT (RFC 8898) or an AccessKey; attempts are
   limited per source, failures counted per source and banned after
   ``bans.auth_failures``; the answer never tells a known user from an
   unknown one;
6. RBAC on what the identity asks for, then the per-customer call bucket
   (503 with Retry-After: 60).

Nothing here logs a credential: audit details carry usernames, key ids and
reasons, never a password, a token or a key.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from edge import audit as events
from edge.audit import AuditLog, call_resource_id, new_request_id
from edge.state import StateStore
from sip.auth import (
    BearerChallenge,
    BearerCredentials,
    DigestCredentials,
    OtherCredentials,
    parse_credentials,
)
from sip.digest import DigestVerifier, NonceFactory, Verdict
from sip.errors import SipError
from sip.message import Request

# What an INVITE (or any other request that starts something) needs; an admin of
# the customer may do everything its customer may.
CALL_CREATE: Final = "call_create"
CUSTOMER_ADMIN: Final = "customer_admin"
# Out-of-dialog methods an authenticated identity may use without call_create.
_HARMLESS: Final = frozenset({"OPTIONS"})
# Headers only the edge may set towards the upstream (RFC 3325 §5: an identity
# asserted by an untrusted source means nothing).
_ASSERTED: Final = ("P-Asserted-Identity", "P-Preferred-Identity")
_CRED_HEADERS: Final = ("Proxy-Authorization", "Authorization")
_UA_AUDIT_LEN: Final = 200


class Action(enum.Enum):
    ALLOW = "allow"
    REPLY = "reply"
    DROP = "drop"


@dataclass(frozen=True, slots=True, init=False)
class Identity:
    """Who sent a request: ``scheme`` says how we know."""

    scheme: str  # "trunk", "upstream", "digest", "bearer", "accesskey", "dialog"
    name: str  # trunk name, username, key id, JWT subject (agent or customer)
    customer_id: str | None = None
    agent_id: str | None = None
    permissions: frozenset[str] = frozenset()

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        scheme: str,
        name: str,
        customer_id: str | None = None,
        agent_id: str | None = None,
        permissions: frozenset[str] = frozenset(),
    ) -> None:
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "customer_id", customer_id)
        object.__setattr__(self, "agent_id", agent_id)
        object.__setattr__(self, "permissions", permissions)

    def may(self, permission: str) -> bool:
        return permission in self.permissions or CUSTOMER_ADMIN in self.permissions


@dataclass(slots=True, init=False)
class Decision:
    action: Action
    identity: Identity | None = None
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""
    # The credential header (name, index among its fields) that was consumed:
    # removed before forwarding, so no token or key travels upstream.
    consumed: tuple[str, int] | None = None

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        action: Action,
        identity: Identity | None = None,
        status: int = 0,
        headers: list[tuple[str, str]] | None = None,
        reason: str = "",
        consumed: tuple[str, int] | None = None,
    ) -> None:
        self.action = action
        self.identity = identity
        self.status = status
        self.headers = [] if headers is None else headers
        self.reason = reason
        self.consumed = consumed


DROP: Final = Decision(Action.DROP)


class Admission:
    """The policy; one per proxy.  ``credentials`` is an ``edge.credentials.CredentialStore``."""

    def __init__(
        self,
        config: Any,
        store: StateStore,
        *,
        credentials: Any | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        nonce_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # The store's ban table, when it shows it (both stores do; a stand-in
        # without one is asked through banned()).
        entries = getattr(store, "ban_entries", None)
        self._ban_entries: dict[str, Any] | None = entries if isinstance(entries, dict) else None
        self.credentials = credentials
        self.audit = audit
        self.clock = clock
        auth = config.auth
        self.realm: str = auth.realm
        self.jwt_key: bytes | None = auth.jwt_key
        self.customer_header: str = auth.customer_header
        self.verifier = DigestVerifier(
            NonceFactory(nonce_secret or secrets.token_bytes(32), auth.nonce_lifetime),
            store,
            algorithms=auth.digest_algorithms,
        )
        self.counters: dict[str, int] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Any) -> None:
        """Take the limits, bans and scanner list of a reloaded configuration.

        The realm, the JWT key and the nonce secret stay: changing them would
        invalidate every nonce and token in flight.  Buckets and bans live on.
        """
        self.config = config
        self.limits = config.ratelimit
        self.bans = config.bans
        scanners = config.scanners
        self.scanner_patterns: tuple[str, ...] = (
            tuple(p.lower() for p in scanners.user_agents) if scanners.enabled else ()
        )
        self.exempt: tuple[Any, ...] = tuple(config.bans.exempt)

    # ------------------------------------------------------------ before parsing
    def banned(self, ip: str) -> bool:
        """True when ``ip`` is banned: the caller drops the packet unparsed."""
        bans = self._ban_entries
        if bans is not None:
            # store.banned, inline: every packet asks, and the store's method
            # runs interpreted (edge.state is not compiled).
            entry = bans.get(ip)
            if entry is None or not self.clock() < entry.until:
                return False
        elif not self.store.banned(ip, self.clock()):
            return False
        self.store.count_drop(ip)
        self._count("dropped_banned")
        return True

    def metered(self, ip: str, trusted: bool) -> bool:
        """Count a packet :meth:`admit` does not see (garbage, ACK, CANCEL) against
        the source's request bucket; False when over it (drop it)."""
        if trusted or self._exempt(ip):
            return True
        return self._within_request_limit(ip, self.clock())

    def expire(self) -> None:
        """Lift bans whose time is up (called about once a second)."""
        if self.audit is not None:
            self.audit.flush_suppressed()
        for ban in self.store.expire(self.clock()):
            self._audit(
                events.BAN_EXPIRED,
                action="delete",
                source_ip=ban.address,
                resource_type="ban",
                details={"reason": ban.reason, "dropped": ban.hits},
            )

    # ------------------------------------------------------------ the decision
    def admit(
        self,
        req: Request,
        ip: str,
        *,
        trusted: Identity | None,
        known_dialog: bool,
    ) -> Decision:
        """Decide about a request that starts a new server transaction.

        ``trusted`` is the identity of a trunk or upstream source (None for
        anyone else); ``known_dialog`` whether the request belongs to a
        dialog the edge admitted earlier (in-dialog requests are not
        re-authenticated: the phone would not know how).
        """
        if trusted is not None:
            return Decision(Action.ALLOW, trusted)
        now = self.clock()
        exempt = self._exempt(ip)
        if not exempt and not self._within_request_limit(ip, now):
            return DROP
        scanner = self._scanner(req)
        if scanner is not None:
            self._count("dropped_scanner")
            self._audit(
                events.SCANNER_DROPPED,
                action="drop",
                source_ip=ip,
                user_agent=req.user_agent,
                details={"method": req.method, "matched": scanner},
            )
            if self.bans.enabled and self.bans.scanners and not exempt:
                self._ban(ip, now, "scanner")
            return DROP
        if known_dialog:
            return Decision(Action.ALLOW, Identity("dialog", ""))
        if req.method in ("ACK", "CANCEL", "OPTIONS") and not _has_credentials(req):
            # Nothing to authenticate (ACK/CANCEL of nothing we know) or a probe:
            # silence tells a scanner nothing, not even that SIP lives here.
            self._count("dropped_unauthenticated")
            return DROP
        found = self._credentials(req)
        if found is None:
            self._count("challenged")
            return self._challenge(req, ip, now)
        header, index, creds = found
        if not exempt and not self.store.take(
            f"au:{ip}", self.limits.auth_attempts_per_minute, now
        ):
            self._count("dropped_auth_rate")
            return DROP
        if isinstance(creds, DigestCredentials):
            decision = self._digest(req, ip, creds, now)
        elif isinstance(creds, BearerCredentials):
            decision = self._bearer(req, ip, header, creds, now)
        else:
            decision = self._access_key(req, ip, creds, now)
        if decision.action is not Action.ALLOW:
            return decision
        decision.consumed = (header, index)
        return self._authorise(req, ip, decision, now)

    # ------------------------------------------------------------ schemes
    def _digest(self, req: Request, ip: str, creds: DigestCredentials, now: float) -> Decision:
        user = ha1 = None
        store = self.credentials
        if store is not None and creds.realm == self.realm:
            user = store.user(creds.username, creds.realm)
            if user is not None:
                ha1 = store.ha1(creds.username, creds.realm, creds.effective_algorithm)
        verdict = self.verifier.verify(
            creds,
            method=req.method,
            request_uri=str(req.uri),
            ha1=ha1,
            now=now,
            client_addr=ip,
            body=req.body,
        )
        if verdict is Verdict.OK and user is not None:
            identity = Identity(
                "digest",
                user.username,
                customer_id=user.customer_id,
                permissions=frozenset(user.permissions),
            )
            return self._authenticated(req, ip, identity)
        if verdict in (Verdict.STALE, Verdict.BAD_NONCE, Verdict.UNSUPPORTED_ALGORITHM):
            # Not a wrong password: an old nonce (stale, or from before a
            # restart) or an algorithm we do not offer.  Challenge afresh.
            return self._challenge(req, ip, now, stale=verdict is Verdict.STALE)
        # Wrong response, replay, missing qop, wrong uri: a failure, answered
        # exactly like an unknown user would be.
        return self._failed(
            req, ip, now, "digest", verdict.value, {"username": creds.username}, challenge=True
        )

    def _bearer(
        self, req: Request, ip: str, header: str, creds: BearerCredentials, now: float
    ) -> Decision:
        from edge.tokens import TokenError, verify_jwt

        reason = "no_key"
        if self.jwt_key is not None:
            try:
                claims = verify_jwt(
                    creds.token,
                    self.jwt_key,
                    now,
                    leeway=self.config.auth.jwt_leeway,
                    max_lifetime=self.config.auth.jwt_max_lifetime,
                )
            except TokenError as error:
                reason = error.reason
            else:
                identity = Identity(
                    "bearer",
                    claims.agent_id or claims.customer_id,
                    customer_id=claims.customer_id,
                    agent_id=claims.agent_id,
                    permissions=frozenset(claims.permissions),
                )
                return self._authenticated(req, ip, identity)
        self._audit(
            events.INVALID_TOKEN,
            action="authenticate",
            source_ip=ip,
            user_agent=req.user_agent,
            details={"scheme": "bearer", "reason": reason, "method": req.method},
        )
        decision = self._failed(req, ip, now, "bearer", reason, {}, challenge=False, audit=False)
        if decision.action is Action.DROP:
            return decision
        # RFC 8898 §2.3 / RFC 6750 §3.1: the challenge says the token is no good.
        status, challenge_header = (
            (401, "WWW-Authenticate") if header == "Authorization" else (407, "Proxy-Authenticate")
        )
        bearer = BearerChallenge(realm=self.realm, error="invalid_token")
        return Decision(Action.REPLY, status=status, headers=[(challenge_header, str(bearer))])

    def _access_key(self, req: Request, ip: str, creds: OtherCredentials, now: float) -> Decision:
        from edge.credentials import KeyStatus

        status_name = "unavailable"
        if self.credentials is not None:
            check = self.credentials.check_key(creds.params.strip(), now)
            status_name = check.status.name.lower()
            if check.status is KeyStatus.VALID and check.record is not None:
                record = check.record
                identity = Identity(
                    "accesskey",
                    record.id,
                    customer_id=record.customer_id,
                    permissions=frozenset(record.permissions),
                )
                return self._authenticated(req, ip, identity)
        # Expired, revoked, unknown and malformed keys all get the same 403.
        return self._failed(req, ip, now, "accesskey", status_name, {}, challenge=False)

    # ------------------------------------------------------------ outcomes
    def _authenticated(self, req: Request, ip: str, identity: Identity) -> Decision:
        self.store.clear(f"af:{ip}")
        self._count(f"auth_ok_{identity.scheme}")
        self._audit(
            events.AUTH_SUCCESS,
            action="authenticate",
            source_ip=ip,
            customer_id=identity.customer_id,
            agent_id=identity.agent_id,
            user_agent=req.user_agent,
            details={"scheme": identity.scheme, "name": identity.name, "method": req.method},
        )
        return Decision(Action.ALLOW, identity)

    def _failed(
        self,
        req: Request,
        ip: str,
        now: float,
        scheme: str,
        reason: str,
        details: dict[str, Any],
        *,
        challenge: bool,
        audit: bool = True,
    ) -> Decision:
        self._count(f"auth_failed_{scheme}")
        if audit:
            self._audit(
                events.AUTH_FAILURE,
                action="authenticate",
                source_ip=ip,
                user_agent=req.user_agent,
                details={"scheme": scheme, "reason": reason, "method": req.method, **details},
            )
        if self.bans.enabled and not self._exempt(ip):
            failures = self.store.hit(f"af:{ip}", self.bans.auth_window, now)
            if failures >= self.bans.auth_failures:
                self._ban(ip, now, "auth-failures")
                return DROP
        if challenge:
            return self._challenge(req, ip, now)
        return Decision(Action.REPLY, status=403)

    def _authorise(self, req: Request, ip: str, decision: Decision, now: float) -> Decision:
        identity = decision.identity
        assert identity is not None
        if req.method not in _HARMLESS and not identity.may(CALL_CREATE):
            self._count("permission_denied")
            self._audit(
                events.PERMISSION_DENIED,
                action="create" if req.method == "INVITE" else req.method.lower(),
                source_ip=ip,
                customer_id=identity.customer_id,
                agent_id=identity.agent_id,
                resource_type="call" if req.method == "INVITE" else None,
                user_agent=req.user_agent,
                details={"method": req.method, "required": CALL_CREATE},
            )
            return Decision(Action.REPLY, identity, status=403, reason="Forbidden")
        if req.method == "INVITE" and identity.customer_id is not None:
            key = f"cu:{identity.customer_id}"
            if not self.store.take(key, self.limits.calls_per_minute, now):
                self._count("rate_limited_customer")
                self._audit(
                    events.RATE_LIMITED,
                    action="create",
                    source_ip=ip,
                    customer_id=identity.customer_id,
                    agent_id=identity.agent_id,
                    resource_type="call",
                    user_agent=req.user_agent,
                    details={"limit": "calls_per_minute", "rate": self.limits.calls_per_minute},
                )
                return Decision(Action.REPLY, identity, status=503, headers=[("Retry-After", "60")])
        return decision

    def _challenge(self, req: Request, ip: str, now: float, stale: bool = False) -> Decision:
        challenges = self.verifier.make_challenge(self.realm, now, ip, stale=stale)
        headers = [("Proxy-Authenticate", str(c)) for c in challenges]
        if self.jwt_key is not None:
            headers.append(("Proxy-Authenticate", str(BearerChallenge(realm=self.realm))))
        return Decision(Action.REPLY, status=407, headers=headers)

    # ------------------------------------------------------------ helpers
    def _within_request_limit(self, ip: str, now: float) -> bool:
        if self.store.take(f"rq:{ip}", self.limits.requests_per_minute, now):
            return True
        self._count("dropped_request_rate")
        if self.bans.enabled:
            drops = self.store.hit(f"fl:{ip}", self.bans.flood_window, now)
            if drops >= self.bans.flood_drops:
                self._ban(ip, now, "flood")
            elif drops == 1:
                self._audit(
                    events.RATE_LIMITED,
                    action="request",
                    source_ip=ip,
                    details={
                        "limit": "requests_per_minute",
                        "rate": self.limits.requests_per_minute,
                    },
                )
        return False

    def _ban(self, ip: str, now: float, reason: str) -> None:
        if self.store.ban(ip, now + self.bans.duration, reason, now):
            self._count("bans_added")
            self._audit(
                events.BAN_ADDED,
                action="create",
                source_ip=ip,
                resource_type="ban",
                details={"reason": reason, "duration": self.bans.duration},
            )

    def _scanner(self, req: Request) -> str | None:
        if not self.scanner_patterns:
            return None
        texts = [req.user_agent or ""]
        with contextlib.suppress(SipError):
            texts.append(req.from_.display_name or "")
        for text in texts:
            lowered = text.lower()
            if lowered:
                for pattern in self.scanner_patterns:
                    if pattern in lowered:
                        return pattern
        return None

    def _credentials(self, req: Request) -> tuple[str, int, Any] | None:
        """The first credentials meant for us: (header name, index, parsed)."""
        for name in _CRED_HEADERS:
            for index, value in enumerate(req.headers.get_all(name)):
                try:
                    creds = parse_credentials(value)
                except SipError:
                    continue
                if isinstance(creds, DigestCredentials):
                    if creds.realm == self.realm:
                        return name, index, creds
                elif isinstance(creds, BearerCredentials) or (
                    isinstance(creds, OtherCredentials) and creds.scheme.lower() == "accesskey"
                ):
                    return name, index, creds
        return None

    def _exempt(self, ip: str) -> bool:
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.exempt)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _audit(
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
        details: Mapping[str, Any] | None = None,
    ) -> None:
        # The fields spelled out, not **fields: compiled, that is a native call
        # into AuditLog.event rather than a generic one with a keyword dict.
        audit = self.audit
        if audit is None:
            return
        audit.event(
            event_type,
            action=action,
            source_ip=source_ip,
            customer_id=customer_id,
            agent_id=agent_id,
            resource_type=resource_type,
            resource_id=resource_id,
            user_agent=str(user_agent)[:_UA_AUDIT_LEN] if user_agent else user_agent,
            request_id=new_request_id(),
            details=details,
        )

    # ------------------------------------------------------------ the forwarded request
    def prepare(self, req: Request, decision: Decision, *, trusted_source: bool) -> None:
        """Strip what only the edge may say and set the customer header, in place."""
        req.headers.remove(self.customer_header)
        if not trusted_source:
            for name in _ASSERTED:
                req.headers.remove(name)
        if decision.consumed is not None:
            name, index = decision.consumed
            values = req.headers.get_all(name)
            req.headers.remove(name)
            for i, value in enumerate(values):
                if i != index:
                    req.headers.add(name, value)
        identity = decision.identity
        if identity is not None and identity.customer_id and identity.scheme != "dialog":
            req.headers.set(self.customer_header, identity.customer_id)

    def call_created(self, req: Request, ip: str, identity: Identity | None) -> None:
        if self.audit is None:
            return  # nothing to say it to: skip the work of saying it
        self._audit(
            events.CALL_CREATED,
            action="create",
            source_ip=ip,
            customer_id=identity.customer_id if identity else None,
            agent_id=identity.agent_id if identity else None,
            resource_type="call",
            resource_id=call_resource_id(req.call_id),
            user_agent=req.user_agent,
            details={
                "source": _number(req.from_.uri),
                "destination": _number(req.uri),
                "authenticated_by": identity.scheme if identity else "",
                "identity": identity.name if identity else "",
            },
        )

    def call_ended(
        self,
        call_id: str,
        reason: str,
        duration: float | None,
        customer_id: str | None,
        source_ip: str | None = None,
    ) -> None:
        if self.audit is None:
            return
        self._audit(
            events.CALL_ENDED,
            action="delete",
            source_ip=source_ip,
            customer_id=customer_id,
            resource_type="call",
            resource_id=call_resource_id(call_id),
            details={
                "reason": reason,
                "duration": None if duration is None else round(duration, 3),
            },
        )


def _has_credentials(req: Request) -> bool:
    return any(name in req.headers for name in _CRED_HEADERS)


def _number(uri: Any) -> str:
    user = getattr(uri, "user", None)
    return str(user) if user else ""


def trusted_identity(role: str | None, name: str = "") -> Identity | None:
    """The identity of a source trusted by address (``Proxy._role``).

    One frozen object per role and name, shared: the server transaction of every
    request from a trunk keeps its identity, and a call's INVITE lives 32 s.
    """
    if role is None:
        return None
    key = (role, name)
    found = _TRUSTED.get(key)
    if found is None:
        found = Identity("trunk" if role == "carrier" else role, name)
        if len(_TRUSTED) >= 1024:  # names come from the config; bounded all the same
            _TRUSTED.clear()
        _TRUSTED[key] = found
    return found


_TRUSTED: Final[dict[tuple[str, str], Identity]] = {}


__all__: Sequence[str] = (
    "Action",
    "Admission",
    "Decision",
    "Identity",
    "trusted_identity",
)
