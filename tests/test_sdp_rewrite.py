"""media/sdp_rewrite: golden SDP rewrites (tests/data/sdp_rewrite/, format in its README),
SDES choices and keys, profiles, o= versions; pure, no sockets.

The goldens run a :class:`Negotiation` with a fake port allocator that behaves like
edge.media's (a leg per side and stream, made once, the offerer's multiplexing RTCP
when it asked); outputs must match byte for byte once the placeholders are filled.
"""

from __future__ import annotations

import base64
import inspect
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from media.sdp_rewrite import (
    SIDES,
    LegPorts,
    LegSpec,
    Negotiation,
    OriginKeeper,
    SdesKey,
    Side,
    WebRtcLocal,
    choose_crypto,
    crypto_problem,
    other_side,
    rewrite,
    translate_proto,
)
from media.srtp import Context
from sip.errors import SipError
from sip.sdp import Crypto, SessionDescription, parse_sdp
from sip.sdp_attributes import Fingerprint

GOLDEN = Path(__file__).parent / "data" / "sdp_rewrite"
KEY_RE = r"[A-Za-z0-9+/]{40}"  # 30 bytes of key and salt in base64
RELAY = "203.0.113.1"


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


# ---------------------------------------------------------------- golden harness


@dataclass
class Step:
    kind: str  # "offer" or "answer"
    side: Side
    policies: tuple[str, str]
    sdp: bytes
    expect: str | None  # template, or None when an error is expected
    error: int | None


def load(path: Path) -> tuple[str, list[Step]]:
    relay = RELAY
    blocks = re.split(r"^=== ", path.read_text(), flags=re.M)
    for line in blocks[0].splitlines():
        if line.startswith("relay "):
            relay = line.split()[1]
    steps: list[Step] = []
    rest = blocks[1:]
    for head, expect in zip(rest[::2], rest[1::2], strict=True):
        header, _, body = head.partition("\n")
        words = header.split()
        exp_header, _, exp_body = expect.partition("\n")
        exp_words = exp_header.split()
        assert exp_words[0] == "expect", f"{path.name}: 'expect' must follow each step"
        error = int(exp_words[2]) if exp_words[1:2] == ["error"] else None
        side: Side = "caller" if words[1] == "caller" else "callee"
        policies = (words[2], words[3]) if words[0] == "offer" else ("", "")
        steps.append(Step(words[0], side, policies, crlf(body), None if error else exp_body, error))
    return relay, steps


# What a "dtls-srtp" leg facing each side writes (media.webrtc.WebRtcLeg makes them random).
WEBRTC_LOCAL: dict[Side, WebRtcLocal] = {
    side: WebRtcLocal(
        f"{side}Ufr",
        f"{side}PasswordPassword1234",
        Fingerprint("sha-256", ":".join([f"{n:02X}" for n in range(32)])),
    )
    for side in SIDES
}


class FakeCall:
    """A Negotiation and the relay legs edge.media would allocate for it."""

    def __init__(self, relay: str = RELAY) -> None:
        self.neg = Negotiation(relay)
        self.legs: dict[tuple[int, Side], LegPorts] = {}
        self.next_port = 20000

    def offer(self, body: bytes, side: Side, from_policy: str, to_policy: str) -> bytes:
        offer = self.neg.plan_offer(parse_sdp(body), side, from_policy, to_policy)
        ports: dict[int, dict[Side, LegPorts]] = {}
        for d in offer.relayed:
            for s in SIDES:
                if (d.index, s) not in self.legs:
                    mux = d.mux_for(s == side)
                    base, self.next_port = self.next_port, self.next_port + 2
                    webrtc = WEBRTC_LOCAL[s] if d.dtls_for(s == side) else None
                    self.legs[d.index, s] = LegPorts(base, base if mux else base + 1, mux, webrtc)
            ports[d.index] = {s: self.legs[d.index, s] for s in SIDES}
        return bytes(self.neg.write_offer(offer, ports))

    def answer(self, body: bytes, side: Side) -> bytes:
        return bytes(self.neg.answer(parse_sdp(body), side))

    def placeholders(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for (index, side), leg in self.legs.items():
            suffix = "" if index == 0 else f"_{index}"
            out[f"{side.upper()}_RTP{suffix}"] = str(leg.rtp_port)
            out[f"{side.upper()}_RTCP{suffix}"] = str(leg.rtcp_port)
        return out


def match(template: str, out: bytes, ports: dict[str, str], keys: dict[str, str]) -> None:
    """Byte-exact comparison after placeholder substitution; binds ``{KEY_x}``."""
    text = out.decode()
    filled = re.sub(r"\{([A-Z_0-9]+)\}", lambda m: ports.get(m[1], m[0]), template)
    expected = crlf(filled).decode()
    pattern, names = "", []
    for piece in re.split(r"(\{KEY_[a-z0-9_]+\})", expected):
        if piece.startswith("{KEY_"):
            name = piece[5:-1]
            if name in keys:
                pattern += re.escape(keys[name])
            elif name in names:
                pattern += f"(?P={name})"
            else:
                pattern += f"(?P<{name}>{KEY_RE})"
                names.append(name)
        else:
            pattern += re.escape(piece)
    found = re.fullmatch(pattern, text)
    if found is None:
        # Show a readable diff: the template with the keys we know filled in.
        shown = expected
        for name, value in keys.items():
            shown = shown.replace("{KEY_" + name + "}", value)
        assert text == shown
    assert found is not None
    keys.update(found.groupdict())


def our_crypto_lines(out: bytes) -> list[Crypto]:
    sd = parse_sdp(out)
    return [c for m in sd.media for c in m.crypto()]


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.txt")), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    relay, steps = load(path)
    call = FakeCall(relay)
    keys: dict[str, str] = {}
    received: set[str] = set()  # key material the endpoints sent (base64)
    for n, step in enumerate(steps, 1):
        for m in parse_sdp(step.sdp).media:
            received |= {k.key_salt for c in m.crypto() for k in c.keys}
        if step.error is not None:
            with pytest.raises(SipError) as info:
                if step.kind == "offer":
                    call.offer(step.sdp, step.side, *step.policies)
                else:
                    call.answer(step.sdp, step.side)
            assert info.value.status_hint == step.error, f"step {n}"
            continue
        if step.kind == "offer":
            out = call.offer(step.sdp, step.side, *step.policies)
        else:
            out = call.answer(step.sdp, step.side)
        assert step.expect is not None
        match(step.expect, out, call.placeholders(), keys)
        # Every key written is the relay's own towards the receiving side (an offer
        # goes to the other side, an answer back to the offerer: the other side too).
        to = other_side(step.side)
        for crypto in our_crypto_lines(out):
            key = SdesKey.from_crypto(crypto)
            held = [
                k
                for stream in call.neg.streams.values()
                for k in (*stream.sides[to].offered, stream.sides[to].outbound)
                if k is not None
            ]
            assert any(key.same_key(k) and k.tag == key.tag for k in held), f"step {n}"
            assert crypto.keys[0].key_salt not in received
    # Different names, different keys: nothing is reused across sides or suites.
    assert len(set(keys.values())) == len(keys)


def test_golden_files_exist() -> None:
    names = {p.stem for p in GOLDEN.glob("*.txt")}
    assert {
        "plain",
        "sdes_as_offered",
        "sdes_to_carrier",
        "plain_to_srtp_platform",
        "hold_reinvite",
        "video_rejected",
        "ice_stripped",
        "bad_crypto",
        "ipv6",
    } <= names


# ---------------------------------------------------------------- keys and SDES state


BARESIP = (GOLDEN / "sdes_as_offered.txt").read_text()


def golden_step(name: str, index: int) -> bytes:
    return load(GOLDEN / f"{name}.txt")[1][index].sdp


def test_keys_are_fresh_per_call_side_and_suite() -> None:
    seen: set[bytes] = set()
    for _ in range(20):
        call = FakeCall()
        call.offer(golden_step("sdes_as_offered", 0), "caller", "as-offered", "as-offered")
        call.answer(golden_step("sdes_as_offered", 1), "callee")
        stream = call.neg.streams[0]
        caller, callee = stream.sides["caller"], stream.sides["callee"]
        assert caller.outbound is not None and callee.outbound is not None
        ours = [caller.outbound, *callee.offered]
        for k in ours:
            assert len(k.key) == 16 and len(k.salt) == 14
            assert k.key + k.salt not in seen
            seen.add(k.key + k.salt)
    assert len(seen) == 60


def test_keys_come_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def token_bytes(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    neg = Negotiation(RELAY, token_bytes=token_bytes)
    offer = neg.plan_offer(
        parse_sdp(golden_step("plain_to_srtp_platform", 0)), "caller", "as-offered", "srtp"
    )
    neg.write_offer(
        offer, {0: {"caller": LegPorts(20000, 20001), "callee": LegPorts(20002, 20003)}}
    )
    assert calls == [30, 30]
    default = inspect.signature(Negotiation).parameters["token_bytes"].default
    assert default is secrets.token_bytes


def test_keys_per_leg_give_srtp_contexts_that_interoperate() -> None:
    """The state a controller reads: inbound = the far end's key, outbound = ours."""
    call = FakeCall()
    call.offer(golden_step("sdes_as_offered", 0), "caller", "as-offered", "as-offered")
    out = call.answer(golden_step("sdes_as_offered", 1), "callee")
    caller = call.neg.streams[0].sides["caller"]
    assert caller.inbound is not None and caller.outbound is not None
    # The caller's own key (tag 1 of its offer) decrypts what the caller sends.
    assert base64.b64encode(caller.inbound.key + caller.inbound.salt).decode() == (
        "9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j"
    )
    # Our key in the answer to the caller is what the relay protects with.
    (line,) = our_crypto_lines(out)
    assert SdesKey.from_crypto(line).same_key(caller.outbound)
    rtp = bytes.fromhex("80000001000000010000abcd") + b"\x55" * 160
    tx = Context(caller.outbound.key, caller.outbound.salt, line.suite, direction="outbound")
    key, salt = line.key_and_salt()
    rx = Context(key, salt, line.suite, direction="inbound")
    assert rx.unprotect_rtp(tx.protect_rtp(rtp)) == rtp
    assert "key=" not in repr(caller.outbound) and "salt=" not in repr(caller.outbound)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j", None),
        ("1 AES_CM_128_HMAC_SHA1_32 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j|2^48", None),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j"
            "|281474976710656",
            None,
        ),
        ("1 F8_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j", "suite"),
        ("1 AEAD_AES_128_GCM inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==", "suite"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j|2^31", "life"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j|1:1", "MKI"),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j;"
            "inline:EHLfMSxGNDSSJ+JjID1UUWH9KtTtAgzrlB2j0bA4",
            "several",
        ),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j KDR=10",
            "session",
        ),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:short", "malformed"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j", "malformed"),
    ],
)
def test_crypto_problem(value: str, problem: str | None) -> None:
    _, reason = crypto_problem(value)
    if problem is None:
        assert reason is None
    else:
        assert reason is not None and problem in reason
        assert "9L3U" not in reason  # never quotes the key


def test_choose_crypto_takes_the_first_usable_and_lists_the_declined() -> None:
    sd = parse_sdp(golden_step("declined_suites", 0))
    chosen, declined = choose_crypto(sd.media[0])
    assert chosen is not None and chosen.tag == 4
    assert len(declined) == 3


def offer_of(media: str, extra: str = "", conn: str = "IN IP4 192.0.2.10") -> bytes:
    return crlf(
        f"v=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\nc={conn}\nt=0 0\n{media}\n"
        "a=rtpmap:0 PCMU/8000\n" + extra
    )


FP = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\n"
FP1 = "a=fingerprint:sha-1 " + ":".join(["AB"] * 20) + "\n"
KEY80 = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j\n"


@pytest.mark.parametrize(
    ("media", "extra", "from_policy", "to_policy", "verdict"),
    [
        # The offering side's policy decides what it may offer.
        ("m=audio 4000 RTP/SAVP 0", KEY80, "rtp", "rtp", "SRTP offered by a plain-RTP side"),
        ("m=audio 4000 RTP/AVP 0", "", "srtp", "rtp", "no usable SDES crypto"),
        ("m=audio 4000 RTP/SAVP 0", "", "as-offered", "rtp", "no usable SDES crypto"),
        # DTLS-SRTP (WebRTC): needs a sha-256 fingerprint and rtcp-mux; only from an
        # "as-offered" or "dtls-srtp" side; towards a SIP side no feedback profile.
        ("m=audio 4000 UDP/TLS/RTP/SAVPF 0", "", "as-offered", "rtp", "no sha-256 fingerprint"),
        ("m=audio 4000 UDP/TLS/RTP/SAVPF 0", FP + "a=rtcp-mux\n", "rtp", "rtp", "by an rtp side"),
        ("m=audio 4000 UDP/TLS/RTP/SAVPF 0", FP, "as-offered", "rtp", "without rtcp-mux"),
        ("m=audio 4000 UDP/TLS/RTP/SAVPF 0", FP1 + "a=rtcp-mux\n", "dtls-srtp", "rtp", "sha-256"),
        ("m=audio 4000 RTP/AVP 0", "", "dtls-srtp", "rtp", "offered by a DTLS-SRTP side"),
        ("m=video 4000 RTP/AVP 0", "", "rtp", "dtls-srtp", "video is not relayed to or from"),
        (
            "m=audio 4000 UDP/TLS/RTP/SAVPF 0",
            FP + "a=rtcp-mux\n",
            "as-offered",
            "rtp",
            "relay:srtp->RTP/AVP",
        ),
        (
            "m=audio 4000 UDP/TLS/RTP/SAVPF 0",
            FP + "a=rtcp-mux\n",
            "dtls-srtp",
            "srtp",
            "relay:srtp->RTP/SAVP",
        ),
        (
            "m=audio 4000 UDP/TLS/RTP/SAVPF 0",
            FP + "a=rtcp-mux\n",
            "as-offered",
            "as-offered",
            "relay:srtp->UDP/TLS/RTP/SAVPF",
        ),
        ("m=audio 4000 RTP/AVP 0", "", "rtp", "dtls-srtp", "relay:plain->UDP/TLS/RTP/SAVPF"),
        ("m=audio 4000 RTP/AVP 0", "", "as-offered", "rtp", "relay:plain->RTP/AVP"),
        ("m=audio 4000 RTP/SAVP 0", KEY80, "srtp", "as-offered", "relay:srtp->RTP/SAVP"),
        # Best-effort SRTP (RTP/AVP with a=crypto): SRTP for "srtp", plain otherwise.
        ("m=audio 4000 RTP/AVP 0", KEY80, "srtp", "as-offered", "relay:srtp->RTP/SAVP"),
        ("m=audio 4000 RTP/AVP 0", KEY80, "as-offered", "as-offered", "relay:plain->RTP/AVP"),
        ("m=audio 4000 RTP/SAVPF 0", KEY80, "as-offered", "rtp", "relay:srtp->RTP/AVPF"),
        ("m=audio 4000 RTP/AVPF 0", "", "as-offered", "srtp", "relay:plain->RTP/SAVPF"),
    ],
)
def test_policies(media: str, extra: str, from_policy: str, to_policy: str, verdict: str) -> None:
    neg = Negotiation(RELAY)
    sd = parse_sdp(offer_of(media, extra))
    if not verdict.startswith("relay:"):
        with pytest.raises(SipError) as info:
            neg.plan_offer(sd, "caller", from_policy, to_policy)
        assert info.value.status_hint == 488
        assert verdict in info.value.reason
        assert "9L3U" not in info.value.reason
        return
    (d,) = neg.plan_offer(sd, "caller", from_policy, to_policy).streams
    kind, proto = verdict[6:].split("->")
    assert d.action == "relay"
    assert d.from_srtp == (kind == "srtp")
    assert d.to_proto == proto


@pytest.mark.parametrize(
    ("conn", "reason"),
    [
        ("IN IP6 2001:db8::10", "no IPv6 address"),
        ("IN IP4 pbx.example.com", "not an IP address"),
        ("IN IP4 224.2.1.1/127", "multicast"),
    ],
)
def test_unusable_connection_addresses_are_declined(conn: str, reason: str) -> None:
    with pytest.raises(SipError) as info:
        Negotiation(RELAY).plan_offer(
            parse_sdp(offer_of("m=audio 4000 RTP/AVP 0", conn=conn)), "caller", "rtp", "rtp"
        )
    assert info.value.status_hint == 488 and reason in info.value.reason


def test_policies_passthrough_is_not_negotiated() -> None:
    with pytest.raises(ValueError):
        Negotiation(RELAY).plan_offer(
            parse_sdp(offer_of("m=audio 4000 RTP/AVP 0")), "caller", "passthrough", "rtp"
        )


def test_offer_with_only_rejected_streams_is_not_an_error() -> None:
    offer = Negotiation(RELAY).plan_offer(
        parse_sdp(offer_of("m=audio 0 RTP/AVP 0")), "caller", "rtp", "rtp"
    )
    assert offer.relayed == [] and offer.streams[0].action == "rejected"


def test_translate_proto() -> None:
    assert translate_proto("RTP/SAVP", False) == "RTP/AVP"
    assert translate_proto("RTP/AVP", True) == "RTP/SAVP"
    assert translate_proto("RTP/SAVPF", False) == "RTP/AVPF"
    assert translate_proto("RTP/AVPF", True) == "RTP/SAVPF"
    assert translate_proto("RTP/AVPF", False) == "RTP/AVPF"


# ---------------------------------------------------------------- answers


def sdes_call() -> FakeCall:
    call = FakeCall()
    call.offer(golden_step("plain_to_srtp_platform", 0), "caller", "as-offered", "srtp")
    return call


ANSWER = """\
v=0
o=- 5 5 IN IP4 10.20.0.5
s=-
c=IN IP4 10.20.0.5
t=0 0
m=audio 42000 {proto} 0
a=rtpmap:0 PCMU/8000
"""


@pytest.mark.parametrize(
    "crypto",
    [
        "",  # none
        "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\n",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\n",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk|1:1\n",
    ],
    ids=["no-crypto", "unknown-tag", "wrong-suite", "mki"],
)
def test_answer_without_an_acceptable_key_is_488(crypto: str) -> None:
    call = sdes_call()
    with pytest.raises(SipError) as info:
        call.answer(crlf(ANSWER.format(proto="RTP/SAVP") + crypto), "callee")
    assert info.value.status_hint == 488
    assert "QUJD" not in info.value.reason


def test_answer_reflecting_our_key_is_refused() -> None:
    call = sdes_call()
    ours = call.neg.streams[0].sides["callee"].offered[0]
    line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{ours.crypto().keys[0].key_salt}\n"
    with pytest.raises(SipError):
        call.answer(crlf(ANSWER.format(proto="RTP/SAVP") + line), "callee")


def test_answer_changing_the_profile_is_488() -> None:
    call = sdes_call()
    with pytest.raises(SipError) as info:
        call.answer(crlf(ANSWER.format(proto="RTP/AVP")), "callee")
    assert info.value.status_hint == 488


def test_answer_from_the_offering_side_or_without_offer_is_refused() -> None:
    call = sdes_call()
    with pytest.raises(SipError) as info:
        call.answer(crlf(ANSWER.format(proto="RTP/SAVP")), "caller")
    assert info.value.status_hint == 500
    with pytest.raises(SipError):
        FakeCall().answer(crlf(ANSWER.format(proto="RTP/AVP")), "callee")


def test_rejected_answer_is_forwarded_as_rejected() -> None:
    call = FakeCall()
    call.offer(golden_step("plain", 0), "caller", "as-offered", "as-offered")
    out = parse_sdp(
        call.answer(crlf(ANSWER.format(proto="RTP/AVP").replace("42000", "0")), "callee")
    )
    assert out.media[0].port == 0 and out.media[0].proto == "RTP/AVP"
    assert not out.media[0].has("rtcp")
    stream = call.neg.streams[0]
    assert not stream.active and stream.sides["callee"].remote is not None
    assert stream.sides["callee"].remote.rtp_port == 0


def test_short_answer_rejects_the_missing_streams() -> None:
    call = FakeCall()
    call.offer(golden_step("video_rejected", 0), "caller", "as-offered", "as-offered")
    out = parse_sdp(call.answer(crlf(ANSWER.format(proto="RTP/AVP")), "callee"))
    assert [(m.media, m.port, m.proto) for m in out.media] == [
        ("audio", call.legs[0, "caller"].rtp_port, "RTP/AVP"),
        ("video", 0, "RTP/AVP"),
        ("image", 0, "udptl"),
    ]


def test_remote_addresses_from_both_sides() -> None:
    call = FakeCall()
    call.offer(golden_step("plain", 0), "caller", "as-offered", "as-offered")
    call.answer(golden_step("plain", 1), "callee")
    sides = call.neg.streams[0].sides
    assert (sides["caller"].remote.ip, sides["caller"].remote.rtp_port) == ("192.0.2.10", 17238)  # type: ignore[union-attr]
    # No a=rtcp: RTP + 1 (RFC 3550 §11), explicit so a leg's own rtcp-mux cannot change it.
    assert sides["caller"].remote.rtcp_port == 17239  # type: ignore[union-attr]
    assert sides["callee"].remote is not None
    assert (sides["callee"].remote.ip, sides["callee"].remote.rtp_port) == ("198.51.100.5", 11544)
    assert sides["callee"].remote.rtcp_port == 11545
    assert call.neg.streams[0].active and not call.neg.streams[0].on_hold


def test_re_offer_from_the_callee_reuses_the_legs_and_keys() -> None:
    call = FakeCall()
    call.offer(golden_step("sdes_as_offered", 0), "caller", "as-offered", "as-offered")
    call.answer(golden_step("sdes_as_offered", 1), "callee")
    caller = call.neg.streams[0].sides["caller"]
    to_caller = caller.outbound
    # The PBX re-INVITEs the caller (its answer's SDP as an offer, version bumped).
    reoffer = golden_step("sdes_as_offered", 1).replace(b"1706512346", b"1706512347")
    out = parse_sdp(call.offer(reoffer, "callee", "as-offered", "as-offered"))
    assert out.media[0].port == call.legs[0, "caller"].rtp_port
    assert len(call.legs) == 2  # no new legs
    lines = out.media[0].crypto()
    assert [c.suite for c in lines] == ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
    assert to_caller is not None and SdesKey.from_crypto(lines[0]).same_key(to_caller)
    # The caller answers with its key: tag 1; the caller's new inbound is that key.
    answer = golden_step("sdes_as_offered", 0)
    answer_sd = parse_sdp(answer)
    answer_sd.media[0].remove("crypto")
    answer_sd.media[0].add("crypto", "1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40)
    back = parse_sdp(call.answer(bytes(answer_sd), "caller"))
    assert back.media[0].port == call.legs[0, "callee"].rtp_port
    assert caller.inbound is not None and caller.inbound.key == bytes(16)
    assert SdesKey.from_crypto(back.media[0].crypto()[0]).same_key(
        call.neg.streams[0].sides["callee"].outbound
    )


# ---------------------------------------------------------------- the writer


def test_rewrite_rules_on_a_hand_built_section() -> None:
    sd = parse_sdp(
        crlf(
            """
            v=0
            o=- 1 1 IN IP4 192.0.2.10
            s=-
            c=IN IP4 192.0.2.10
            t=0 0
            a=group:BUNDLE 0 1
            a=group:LS 0 1
            a=ice-lite
            a=fingerprint:sha-1 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33
            k=clear:secret
            m=audio 4000/2 RTP/AVP 0
            k=clear:secret
            a=rtcp-fb:0 nack
            a=rtcp-mux
            a=rtcp-mux-only
            a=rtcp:4001
            a=x-unknown:kept
            a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:9L3UWOd037kaFZzVFml7Et3DoluXBYpP1nVkFo9j
            a=remote-candidates:1 192.0.2.10 4000
            a=tls-id:abc
            a=mid:0
            """.replace("            ", "")
        )
    )
    key = SdesKey.generate(7, "AES_CM_128_HMAC_SHA1_32").crypto()
    out = rewrite(sd, [LegSpec(30000, 30001, False, "RTP/SAVP", (key,))], address=RELAY)
    assert bytes(out).decode().splitlines() == [
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.10",  # o= is the OriginKeeper's
        "s=-",
        f"c=IN IP4 {RELAY}",
        "t=0 0",
        "a=group:LS 0 1",
        "m=audio 30000 RTP/SAVP 0",
        "a=rtcp:30001",
        "a=x-unknown:kept",
        f"a=crypto:{key}",
        "a=mid:0",
    ]
    assert bytes(sd).count(b"k=clear:secret") == 2  # the input is untouched


def test_rewrite_ipv6_unspecified_hold_and_trickle_placeholder() -> None:
    sd = parse_sdp(offer_of("m=audio 4000 RTP/AVP 0", conn="IN IP6 ::"))
    out = rewrite(sd, [LegSpec(30000)], address="2001:db8::1")
    assert str(out.connection) == "IN IP6 ::"
    out = rewrite(sd, [LegSpec(30000)], address=RELAY)
    assert str(out.connection) == "IN IP4 0.0.0.0"  # the relay's family
    # With ICE, 0.0.0.0 is a trickle placeholder, not hold: the relay's address.
    ice = parse_sdp(offer_of("m=audio 9 RTP/AVP 0", "a=ice-ufrag:abcd\n", conn="IN IP4 0.0.0.0"))
    out = rewrite(ice, [LegSpec(30000)], address=RELAY)
    assert str(out.connection) == f"IN IP4 {RELAY}" and not out.media[0].has("ice-ufrag")


def test_rewrite_checks_the_number_of_specs() -> None:
    with pytest.raises(ValueError):
        rewrite(parse_sdp(offer_of("m=audio 4000 RTP/AVP 0")), [], address=RELAY)


def test_origin_keeper_bumps_only_on_change() -> None:
    keeper = OriginKeeper()
    sd = parse_sdp(offer_of("m=audio 4000 RTP/AVP 0"))
    versions = []
    for direction in ("sendrecv", "sendrecv", "sendonly", "sendonly", "sendrecv"):
        out = sd.copy()
        out.media[0].replace(direction)
        keeper.stamp(out, sd.origin, RELAY)
        versions.append(out.origin.sess_version)
        assert out.origin.address == RELAY
    assert versions == [1, 1, 2, 2, 3]


def test_a_session_description_is_not_changed_by_the_negotiation() -> None:
    body = golden_step("sdes_as_offered", 0)
    sd: SessionDescription = parse_sdp(body)
    neg = Negotiation(RELAY)
    offer = neg.plan_offer(sd, "caller", "as-offered", "rtp")
    neg.write_offer(offer, {0: {"caller": LegPorts(1024, 1025), "callee": LegPorts(1026, 1027)}})
    assert bytes(sd) == body
