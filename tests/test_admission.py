"""The admission policy (edge/admission.py) with real stores, a real audit log and a fake clock."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest

from edge import audit as events
from edge.admission import Action, Admission, Decision, Identity, trusted_identity
from edge.audit import AuditLog
from edge.config import parse
from edge.credentials import CredentialStore
from edge.state import MemoryStateStore
from sip.auth import DigestChallenge, parse_challenge
from sip.digest import answer_challenge
from sip.message import Request, parse_message

KEY = "k" * 40
CUSTOMER = "3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
OTHER = "9a8b7c6d-5e4f-4a3b-9c1d-0e1f2a3b4c5d"
STRANGER = "127.0.0.3"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, toml: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.config = parse(
            {"upstream": {"echo": True}, **(toml or {})}, check_files=False, env={"JWT_KEY": KEY}
        )
        self.store = MemoryStateStore()
        self.creds = CredentialStore(":memory:")
        self.creds.add_user("alice", "sipedge", "correct horse", CUSTOMER, ["call_create"])
        self.creds.add_user("bob", "sipedge", "battery staple", OTHER, ["call_read"])
        self.out = io.StringIO()
        self.audit = AuditLog(None, stream=self.out, clock=self.clock)
        self.adm = Admission(
            self.config,
            self.store,
            credentials=self.creds,
            audit=self.audit,
            clock=self.clock,
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def types(self) -> list[str]:
        return [e["event_type"] for e in self.events()]

    def admit(self, req: Request, ip: str = STRANGER, known: bool = False) -> Decision:
        return self.adm.admit(req, ip, trusted=None, known_dialog=known)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.creds.close()


def request(
    method: str = "INVITE",
    headers: tuple[str, ...] = (),
    to_tag: str | None = None,
    ua: str = "Phone/1.0",
    cseq: int = 1,
) -> Request:
    to = "<sip:1000@edge.example>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:+15559876543@edge.example SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.3:5070;branch=z9hG4bKabc;rport",
        "Max-Forwards: 70",
        "From: <sip:+15551234567@edge.example>;tag=f1",
        f"To: {to}",
        "Call-ID: call-1@127.0.0.3",
        f"CSeq: {cseq} {method}",
        f"User-Agent: {ua}",
        *headers,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def digest_challenges(decision: Decision) -> list[DigestChallenge]:
    found = [parse_challenge(v) for n, v in decision.headers if n == "Proxy-Authenticate"]
    return [c for c in found if isinstance(c, DigestChallenge)]


def digest_answer(
    env: Env, user: str, password: str, nc: int = 1, algorithm: str = "SHA-256"
) -> tuple[str, str]:
    first = env.admit(request())
    (challenge,) = [c for c in digest_challenges(first) if c.algorithm == algorithm]
    creds = answer_challenge(
        challenge, user, password, "INVITE", "sip:+15559876543@edge.example", "cn0nce", nc
    )
    return ("Proxy-Authorization", str(creds))


def header_line(pair: tuple[str, str]) -> str:
    return f"{pair[0]}: {pair[1]}"


# ---------------------------------------------------------------- trust and silence


def test_trunks_and_upstreams_pass_without_a_question(env: Env) -> None:
    trusted = trusted_identity("carrier", "loopback")
    assert trusted == Identity("trunk", "loopback")
    decision = env.adm.admit(request(), "127.0.0.2", trusted=trusted, known_dialog=False)
    assert decision.action is Action.ALLOW and decision.identity == trusted
    assert trusted_identity(None) is None
    assert env.events() == []


def test_a_stranger_gets_one_digest_challenge_per_algorithm_and_a_bearer_one(env: Env) -> None:
    decision = env.admit(request())
    assert decision.action is Action.REPLY and decision.status == 407
    challenges = digest_challenges(decision)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.realm == "sipedge" and c.qop == ("auth",) for c in challenges)
    assert any(v.startswith("Bearer") for n, v in decision.headers)


def test_probes_and_orphan_acks_from_strangers_get_nothing(env: Env) -> None:
    for method in ("OPTIONS", "ACK", "CANCEL"):
        assert env.admit(request(method)).action is Action.DROP
    # An OPTIONS that authenticates is answered like any request.
    ok = digest_answer(env, "alice", "correct horse")
    req = request("OPTIONS", (header_line(ok),))
    assert env.admit(req).action is not Action.DROP


def test_in_dialog_requests_of_admitted_calls_pass(env: Env) -> None:
    decision = env.admit(request("BYE", to_tag="t1"), known=True)
    assert decision.action is Action.ALLOW
    assert decision.identity is not None and decision.identity.scheme == "dialog"
    # The same BYE for a dialog the edge does not know must authenticate.
    assert env.admit(request("BYE", to_tag="t1")).status == 407


# ---------------------------------------------------------------- digest


def test_digest_user_gets_in_with_customer_and_permissions(env: Env) -> None:
    creds = digest_answer(env, "alice", "correct horse")
    req = request(
        headers=(
            header_line(creds),
            "X-Sipedge-Customer-Id: forged",
            "P-Asserted-Identity: <sip:boss@x>",
        )
    )
    decision = env.admit(req)
    assert decision.action is Action.ALLOW
    identity = decision.identity
    assert identity is not None and identity.scheme == "digest" and identity.name == "alice"
    assert identity.customer_id == CUSTOMER and identity.may("call_create")
    env.adm.prepare(req, decision, trusted_source=False)
    # The credentials stop here, the forged identity headers are gone, ours is set.
    assert "Proxy-Authorization" not in req.headers
    assert "P-Asserted-Identity" not in req.headers
    assert req.headers.get_all("X-Sipedge-Customer-Id") == [CUSTOMER]
    (event,) = env.events()
    assert event["event_type"] == events.AUTH_SUCCESS
    assert event["customer_id"] == CUSTOMER and event["source_ip"] == STRANGER
    assert "correct horse" not in env.out.getvalue()


def test_md5_for_old_phones(env: Env) -> None:
    creds = digest_answer(env, "alice", "correct horse", algorithm="MD5")
    assert env.admit(request(headers=(header_line(creds),))).action is Action.ALLOW


def test_wrong_password_and_unknown_user_get_the_same_answer(env: Env) -> None:
    wrong = env.admit(request(headers=(header_line(digest_answer(env, "alice", "nope")),)))
    unknown = env.admit(request(headers=(header_line(digest_answer(env, "zed", "nope")),)))
    for d in (wrong, unknown):
        assert d.action is Action.REPLY and d.status == 407
    assert [n for n, _ in wrong.headers] == [n for n, _ in unknown.headers]
    assert [(c.algorithm, c.qop, c.stale) for c in digest_challenges(wrong)] == [
        (c.algorithm, c.qop, c.stale) for c in digest_challenges(unknown)
    ]
    failures = [e for e in env.events() if e["event_type"] == events.AUTH_FAILURE]
    assert [e["details"]["username"] for e in failures] == ["alice", "zed"]
    assert "nope" not in env.out.getvalue()


def test_a_replayed_nonce_count_is_a_failure(env: Env) -> None:
    creds = header_line(digest_answer(env, "alice", "correct horse"))
    assert env.admit(request(headers=(creds,))).action is Action.ALLOW
    replay = env.admit(request(headers=(creds,)))
    assert replay.status == 407
    assert env.events()[-1]["details"]["reason"] == "replay"


def test_an_expired_nonce_is_challenged_again_as_stale(env: Env) -> None:
    creds = header_line(digest_answer(env, "alice", "correct horse"))
    env.clock.now += env.config.auth.nonce_lifetime + 1
    decision = env.admit(request(headers=(creds,)))
    assert decision.status == 407
    assert all(c.stale for c in digest_challenges(decision))
    assert events.AUTH_FAILURE not in env.types()


def test_brute_force_is_banned_after_the_configured_failures(env: Env) -> None:
    limit = env.config.bans.auth_failures
    for i in range(limit - 1):
        d = env.admit(request(headers=(header_line(digest_answer(env, "alice", f"guess{i}")),)))
        assert d.status == 407
    last = env.admit(request(headers=(header_line(digest_answer(env, "alice", "guess")),)))
    assert last.action is Action.DROP
    assert env.adm.banned(STRANGER)
    assert events.BAN_ADDED in env.types()
    # Banned: even the right password is not looked at (the proxy drops unparsed).
    assert [b.reason for b in env.store.bans(env.clock.now)] == ["auth-failures"]
    env.clock.now += env.config.bans.duration + 1
    env.adm.expire()
    assert not env.adm.banned(STRANGER)
    assert env.types()[-1] == events.BAN_EXPIRED


def test_banned_reads_the_ban_table_or_asks_a_store_without_one(env: Env) -> None:
    """banned() looks the store's ban table up itself: a ban past its end no longer
    drops, before expire() has run.  A stand-in store that shows no table is asked."""
    env.store.ban(STRANGER, env.clock.now + 10, "test", env.clock.now)
    assert env.adm.banned(STRANGER)
    assert not env.adm.banned("192.0.2.99")
    env.clock.now += 11
    assert not env.adm.banned(STRANGER)

    class Asked:
        """The store, less its ban table; counts the banned() calls."""

        def __init__(self, inner: MemoryStateStore) -> None:
            self.inner = inner
            self.asked: list[str] = []

        def banned(self, address: str, now: float) -> bool:
            self.asked.append(address)
            return self.inner.banned(address, now)

        def __getattr__(self, name: str) -> Any:
            if name == "ban_entries":
                raise AttributeError(name)
            return getattr(self.inner, name)

    store = Asked(MemoryStateStore())
    adm = Admission(env.config, store, clock=env.clock)  # type: ignore[arg-type]
    store.inner.ban(STRANGER, env.clock.now + 10, "test", env.clock.now)
    assert adm.banned(STRANGER)
    assert not adm.banned("192.0.2.99")
    assert store.asked == [STRANGER, "192.0.2.99"]


def test_a_success_resets_the_failure_count(env: Env) -> None:
    for round_ in range(3):
        for i in range(env.config.bans.auth_failures - 1):
            creds = digest_answer(env, "alice", f"typo{round_}{i}")
            env.admit(request(headers=(header_line(creds),)))
        good = digest_answer(env, "alice", "correct horse")
        assert env.admit(request(headers=(header_line(good),))).action is Action.ALLOW
    assert not env.adm.banned(STRANGER)


# ---------------------------------------------------------------- bearer


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


def token(env: Env, **claims: Any) -> str:
    now = int(env.clock.now)
    payload: dict[str, Any] = {
        "customer_id": CUSTOMER,
        "permissions": ["call_create"],
        "iat": now,
        "exp": now + 3600,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, KEY, algorithm="HS256")


def test_a_valid_jwt_gets_in_and_is_not_forwarded(env: Env) -> None:
    req = request(headers=(bearer(token(env, agent_id=OTHER)),))
    decision = env.admit(req)
    assert decision.action is Action.ALLOW
    assert decision.identity is not None
    assert decision.identity.customer_id == CUSTOMER and decision.identity.agent_id == OTHER
    env.adm.prepare(req, decision, trusted_source=False)
    assert "Authorization" not in req.headers


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda e: token(e, iat=int(e.clock.now) - 3720, exp=int(e.clock.now) - 120), "expired"),
        (
            lambda e: token(e, iat=int(e.clock.now) + 600, exp=int(e.clock.now) + 900),
            "not_yet_valid",
        ),
        (
            lambda e: pyjwt.encode(
                {"customer_id": CUSTOMER, "permissions": [], "iat": 1, "exp": 2**40}, "w" * 40
            ),
            "bad_signature",
        ),
        (
            lambda e: (
                _b64({"alg": "none", "typ": "JWT"})
                + "."
                + _b64(
                    {
                        "customer_id": CUSTOMER,
                        "permissions": ["call_create"],
                        "iat": int(e.clock.now),
                        "exp": int(e.clock.now) + 60,
                    }
                )
                + "."
            ),
            "bad_algorithm",
        ),
        (lambda e: token(e, customer_id=None), "missing_claim"),
    ],
)
def test_bad_tokens_are_refused_and_audited(env: Env, make: Any, reason: str) -> None:
    decision = env.admit(request(headers=(bearer(make(env)),)))
    assert decision.action is Action.REPLY and decision.status == 401
    ((name, value),) = decision.headers
    assert name == "WWW-Authenticate" and 'error="invalid_token"' in value
    (event,) = env.events()
    assert event["event_type"] == events.INVALID_TOKEN
    assert event["details"]["reason"] == reason


def test_a_token_without_call_create_may_not_call(env: Env) -> None:
    decision = env.admit(request(headers=(bearer(token(env, permissions=["call_read"])),)))
    assert decision.action is Action.REPLY and decision.status == 403
    assert env.types() == [events.AUTH_SUCCESS, events.PERMISSION_DENIED]
    # customer_admin may do everything of its customer.
    admin = env.admit(request(headers=(bearer(token(env, permissions=["customer_admin"])),)))
    assert admin.action is Action.ALLOW


def test_digest_user_without_call_create_is_denied(env: Env) -> None:
    creds = digest_answer(env, "bob", "battery staple")
    decision = env.admit(request(headers=(header_line(creds),)))
    assert decision.status == 403
    assert env.types()[-1] == events.PERMISSION_DENIED


# ---------------------------------------------------------------- access keys


def test_access_keys_valid_expired_revoked_unknown(env: Env) -> None:
    now = env.clock.now
    _, good = env.creds.create_key(CUSTOMER, ["call_create"], None, now)
    _, expiring = env.creds.create_key(CUSTOMER, ["call_create"], 60.0, now)
    revoked_record, revoked = env.creds.create_key(CUSTOMER, ["call_create"], None, now)
    env.creds.revoke_key(revoked_record.id, now)
    env.clock.now += 120
    ok = env.admit(request(headers=(f"Authorization: AccessKey {good}",)))
    assert ok.action is Action.ALLOW and ok.identity is not None
    assert ok.identity.scheme == "accesskey" and ok.identity.customer_id == CUSTOMER
    unknown = "ak_" + "0" * 32
    for key in (expiring, revoked, unknown):
        d = env.admit(request(headers=(f"Authorization: AccessKey {key}",)))
        assert d.action is Action.REPLY and d.status == 403 and d.headers == []
    reasons = [
        e["details"]["reason"] for e in env.events() if e["event_type"] == events.AUTH_FAILURE
    ]
    assert reasons == ["expired", "revoked", "unknown"]
    for key in (good, expiring, revoked):
        assert key not in env.out.getvalue()


# ---------------------------------------------------------------- limits


def test_customer_call_rate_is_limited_with_retry_after(env: Env) -> None:
    tok = token(env)
    allowed = 0
    for _ in range(250):
        d = env.admit(request(headers=(bearer(tok),)), ip=f"127.0.1.{allowed % 200 + 1}")
        if d.action is Action.ALLOW:
            allowed += 1
        else:
            assert d.status == 503 and ("Retry-After", "60") in d.headers
            break
    # Bucket of twice the rate (100/min), nothing refilled at a frozen clock.
    assert allowed == 200
    assert env.types()[-1] == events.RATE_LIMITED
    env.clock.now += 1.0  # 100/60 tokens a second: one more call a second later
    assert env.admit(request(headers=(bearer(tok),)), ip="127.0.2.1").action is Action.ALLOW


def test_request_flood_is_dropped_then_banned() -> None:
    env = Env({"ratelimit": {"requests_per_minute": 30}, "bans": {"flood_drops": 10}})
    answered = dropped = 0
    for _ in range(200):
        if env.adm.banned(STRANGER):
            break
        d = env.admit(request())
        if d.action is Action.DROP:
            dropped += 1
        else:
            answered += 1
    assert answered == 60  # the bucket: twice the per-minute rate
    assert dropped == 10
    assert env.adm.banned(STRANGER)
    (ban,) = env.store.bans(env.clock.now)
    assert ban.reason == "flood"
    assert events.RATE_LIMITED in env.types() and events.BAN_ADDED in env.types()
    # Another source is not affected.
    assert env.admit(request(), ip="127.0.0.4").status == 407


def test_auth_attempts_are_limited_per_source() -> None:
    env = Env({"ratelimit": {"auth_attempts_per_minute": 2}, "bans": {"auth_failures": 100}})
    outcomes = []
    for i in range(6):
        creds = digest_answer(env, "alice", f"guess{i}")
        outcomes.append(env.admit(request(headers=(header_line(creds),))).action)
    assert outcomes == [Action.REPLY] * 4 + [Action.DROP] * 2


def test_exempt_sources_are_neither_limited_nor_banned() -> None:
    env = Env({"ratelimit": {"requests_per_minute": 1}, "bans": {"exempt": ["127.0.0.0/24"]}})
    for _ in range(50):
        assert env.admit(request()).status == 407
    assert not env.adm.banned(STRANGER)


# ---------------------------------------------------------------- scanners


@pytest.mark.parametrize(
    "headers,ua",
    [
        ((), "friendly-scanner"),
        ((), "Mozilla sipvicious/0.3"),
        ((), "VaxSIPUserAgent/3.1"),
        (('From: "sipvicious" <sip:100@1.1.1.1>;tag=x',), "Phone/1.0"),
    ],
)
def test_scanners_are_dropped_and_banned(env: Env, headers: tuple[str, ...], ua: str) -> None:
    req = request(ua=ua)
    if headers:
        req.headers.set("From", headers[0].split(": ", 1)[1])
    assert env.admit(req).action is Action.DROP
    assert env.adm.banned(STRANGER)
    assert env.types() == [events.SCANNER_DROPPED, events.BAN_ADDED]


def test_scanner_list_is_configurable() -> None:
    env = Env({"scanners": {"user_agents": ["evilbot"]}, "bans": {"scanners": False}})
    assert env.admit(request(ua="EvilBot 2")).action is Action.DROP
    assert not env.adm.banned(STRANGER)
    assert env.admit(request(ua="friendly-scanner")).status == 407


def test_no_bearer_challenge_without_a_key() -> None:
    env = Env()
    adm = Admission(
        parse({"upstream": {"echo": True}}, check_files=False, env={}),
        MemoryStateStore(),
        credentials=env.creds,
    )
    decision = adm.admit(request(), STRANGER, trusted=None, known_dialog=False)
    assert all(not v.startswith("Bearer") for _, v in decision.headers)
    refused = adm.admit(
        request(headers=(bearer(token(env)),)), STRANGER, trusted=None, known_dialog=False
    )
    assert refused.status == 401


def test_call_events_carry_numbers_and_a_stable_resource_id(env: Env) -> None:
    req = request()
    env.adm.call_created(req, STRANGER, Identity("digest", "alice", customer_id=CUSTOMER))
    env.adm.call_ended(req.call_id, "bye", 12.3456, CUSTOMER)
    created, ended = env.events()
    assert created["event_type"] == events.CALL_CREATED and created["resource_type"] == "call"
    assert created["details"]["source"] == "+15551234567"
    assert created["details"]["destination"] == "+15559876543"
    assert ended["event_type"] == events.CALL_ENDED
    assert ended["resource_id"] == created["resource_id"] != req.call_id
    assert ended["details"] == {"reason": "bye", "duration": 12.346}
