"""ICE-lite responder for one relay leg (RFC 8445 §2.5, RFC 5389/8489 STUN), sans-I/O.

    ice = IceLite()                       # our ufrag/pwd go into the SDP
    ice.set_remote("brws", "...")         # the browser's, from its SDP (pwd unused by lite)
    result = ice.receive(datagram, source, now)
    if result.reply is not None:
        send(result.reply, source)
    if result.nominated:
        ...                               # latch the leg to ``source``

An ICE-lite agent never sends checks; it answers the full agent's Binding requests
on its host candidate (the relay leg's port) and follows its nomination.  Encoding and
integrity are :mod:`aioice.stun`'s (``parse_message``, ``add_message_integrity``,
``check_message_integrity``): no STUN crypto of our own.

Rules of this file:

- A request is answered only when its USERNAME is ``<our ufrag>:<their ufrag>``
  (RFC 8445 §7.2.2; their ufrag checked once we know it from their SDP) and its
  MESSAGE-INTEGRITY verifies with our pwd (RFC 5389 §10.1.2, short-term credential).
  The success response carries XOR-MAPPED-ADDRESS (the request's source),
  MESSAGE-INTEGRITY with our pwd and FINGERPRINT.
- Failures, each counted (:attr:`IceLite.counters`):

  - ``unauthorized``: a USERNAME naming another ufrag or a MESSAGE-INTEGRITY that does
    not verify gets **401** (RFC 5389 §10.1.2), without integrity of its own.  Such a
    request carries USERNAME and a 20-byte HMAC, so it is always longer than our 40-byte
    answer: the relay port is no amplifier.
  - ``unauthenticated``: a Binding request without USERNAME or MESSAGE-INTEGRITY is
    **dropped silently** (RFC 5389 §10.1.2 would answer 400; an ICE agent never sends
    one, so it is a scan, and a 20-byte request must not buy a 40-byte answer).
  - ``malformed``: not STUN (bad length, magic cookie or FINGERPRINT, an unknown method):
    dropped silently.
  - ``role_conflict``: ICE-CONTROLLED in a request (two controlled agents; a lite agent
    cannot take the controlling role, RFC 8445 §6.1.1): **487** with integrity
    (RFC 8445 §7.3.1.1), the request having proved it knows our pwd.
  - ``ignored``: indications (keepalives, RFC 8445 §11), responses (a lite agent sends
    no requests), other methods: dropped silently.

- Nomination: a request that verified and carries USE-CANDIDATE (RFC 8445 §7.3.1.5;
  regular or aggressive) nominates its source; :attr:`nominated` remembers it and the
  result says so, so that the relay latches the leg there.  A later nomination of
  another source (an ICE restart without new credentials, or a NAT rebinding) moves it.
- :attr:`verified` keeps the most recent sources whose checks verified (a few): the
  DTLS layer talks to a verified source before the nomination comes.
- ``now`` is passed in and only recorded; nothing here reads a clock.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Final

from aioice import stun

Address = tuple[str, int]

# RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"; ufrag 4-256, pwd 22-256 chars.
ICE_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
UFRAG_LENGTH: Final = 8  # 48 bits of randomness
PWD_LENGTH: Final = 24  # 144 bits, above the 128 RFC 8445 §5.3 asks for
MAGIC_COOKIE: Final = 0x2112A442
MAX_VERIFIED: Final = 4  # sources remembered for DTLS before the nomination

COUNTERS: Final = (
    "requests",
    "answered",
    "nominations",
    "unauthorized",
    "unauthenticated",
    "malformed",
    "role_conflict",
    "ignored",
)


def random_ice_string(length: int) -> str:
    """``length`` random ice-chars from :mod:`secrets`."""
    return "".join(secrets.choice(ICE_CHARS) for _ in range(length))


@dataclass(frozen=True, slots=True)
class StunResult:
    """What one datagram gave: an answer to send back to its source (or None), and
    whether it nominated that source.  ``verdict`` is the counter it went to."""

    reply: bytes | None
    verdict: str
    nominated: bool = False


class IceLite:
    """The ICE-lite agent of one relay leg (see the module docstring)."""

    __slots__ = (
        "local_ufrag",
        "local_pwd",
        "remote_ufrag",
        "remote_pwd",
        "nominated",
        "nominated_at",
        "verified",
        "counters",
    )

    def __init__(self, ufrag: str | None = None, pwd: str | None = None) -> None:
        self.local_ufrag = ufrag or random_ice_string(UFRAG_LENGTH)
        self.local_pwd = pwd or random_ice_string(PWD_LENGTH)
        for name, value, low in (("ufrag", self.local_ufrag, 4), ("pwd", self.local_pwd, 22)):
            if not low <= len(value) <= 256 or any(c not in ICE_CHARS for c in value):
                raise ValueError(f"ice-{name} must be {low}-256 ice-chars")
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.nominated: Address | None = None
        self.nominated_at: float | None = None
        self.verified: list[Address] = []
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def set_remote(self, ufrag: str | None, pwd: str | None) -> None:
        """The far agent's credentials from its SDP.  New ones (an ICE restart, RFC 8445
        §9) forget the nomination and the verified sources."""
        if (ufrag, pwd) != (self.remote_ufrag, self.remote_pwd):
            if self.remote_ufrag is not None:
                self.nominated = None
                self.nominated_at = None
                self.verified.clear()
            self.remote_ufrag, self.remote_pwd = ufrag, pwd

    def is_verified(self, source: Address) -> bool:
        return source == self.nominated or source in self.verified

    @property
    def selected(self) -> Address | None:
        """Where to send: the nominated source, else the last verified one."""
        if self.nominated is not None:
            return self.nominated
        return self.verified[-1] if self.verified else None

    # ---------------------------------------------------------------- per packet

    def receive(self, data: bytes, source: Address, now: float) -> StunResult:
        """One STUN datagram from ``source``; never raises for what the network sends."""
        try:
            if len(data) < 20 or struct.unpack_from("!I", data, 4)[0] != MAGIC_COOKIE:
                raise ValueError("no STUN magic cookie")
            message = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, struct.error, IndexError ...
            return self._count(None, "malformed")
        if message.message_method != stun.Method.BINDING:
            return self._count(None, "ignored")
        if message.message_class != stun.Class.REQUEST:
            return self._count(None, "ignored")
        self.counters["requests"] += 1
        attributes = message.attributes
        username = attributes.get("USERNAME")
        if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in attributes:
            return self._count(None, "unauthenticated")
        ours, colon, theirs = username.partition(":")
        good_name = (
            colon == ":"
            and ours == self.local_ufrag
            and (self.remote_ufrag is None or theirs == self.remote_ufrag)
        )
        if not good_name or not message.check_message_integrity(self.local_pwd.encode()):
            return self._count(self._error(message, 401, "Unauthorized", False), "unauthorized")
        if "ICE-CONTROLLED" in attributes:
            return self._count(self._error(message, 487, "Role Conflict", True), "role_conflict")
        source = (source[0], source[1])
        if source in self.verified:
            self.verified.remove(source)
        self.verified.append(source)
        del self.verified[:-MAX_VERIFIED]
        nominated = "USE-CANDIDATE" in attributes
        if nominated:
            self.counters["nominations"] += 1
            self.nominated = source
            self.nominated_at = now
        reply = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id
        )
        reply.attributes["XOR-MAPPED-ADDRESS"] = source
        reply.add_message_integrity(self.local_pwd.encode())  # adds FINGERPRINT too
        return self._count(bytes(reply), "answered", nominated)

    def _error(self, request: stun.Message, code: int, reason: str, integrity: bool) -> bytes:
        reply = stun.Message(
            stun.Method.BINDING, stun.Class.ERROR, transaction_id=request.transaction_id
        )
        reply.attributes["ERROR-CODE"] = (code, reason)
        if integrity:
            reply.add_message_integrity(self.local_pwd.encode())
        return bytes(reply)

    def _count(self, reply: bytes | None, verdict: str, nominated: bool = False) -> StunResult:
        self.counters[verdict] += 1
        return StunResult(reply, verdict, nominated)
