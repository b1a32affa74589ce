"""media/stun: the ICE-lite responder, with aioice.stun building the full agent's checks.

The full agent's side is aioice's STUN encoder (what aiortc's ICE sends); the vector
of RFC 5769 §2.1 checks integrity and fingerprint against bytes no Python wrote.
"""

from __future__ import annotations

import pytest
from aioice import stun

from media.stun import ICE_CHARS, PWD_LENGTH, UFRAG_LENGTH, IceLite

SOURCE = ("192.0.2.7", 50000)

# RFC 5769 §2.1 "Sample Request": USERNAME "evtj:h6vY", password
# "VOkJxbRl1RmTxUk/WvJxBt", SOFTWARE, PRIORITY, ICE-CONTROLLED, MESSAGE-INTEGRITY,
# FINGERPRINT.
RFC5769_REQUEST = (
    b"\x00\x01\x00\x58"
    b"\x21\x12\xa4\x42"
    b"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae"
    b"\x80\x22\x00\x10"
    b"STUN test client"
    b"\x00\x24\x00\x04"
    b"\x6e\x00\x01\xff"
    b"\x80\x29\x00\x08"
    b"\x93\x2f\xf9\xb1\x51\x26\x3b\x36"
    b"\x00\x06\x00\x09"
    b"\x65\x76\x74\x6a\x3a\x68\x36\x76\x59\x20\x20\x20"
    b"\x00\x08\x00\x14"
    b"\x9a\xea\xa7\x0c\xbf\xd8\xcb\x56\x78\x1e\xf2\xb5"
    b"\xb2\xd3\xf2\x49\xc1\xb5\x71\xa2"
    b"\x80\x28\x00\x04"
    b"\xe5\x7a\x3b\xcf"
)
RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"


def check(
    ice: IceLite,
    username: str | None = None,
    pwd: str | None = None,
    *,
    nominate: bool = False,
    controlled: bool = False,
) -> bytes:
    """A Binding request as a controlling full agent (aiortc's aioice) sends it."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = username or f"{ice.local_ufrag}:brws"
    request.attributes["PRIORITY"] = 1853824767
    if controlled:
        request.attributes["ICE-CONTROLLED"] = 0x1122334455667788
    else:
        request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if nominate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity((pwd or ice.local_pwd).encode())
    return bytes(request)


def test_credentials_are_random_ice_chars() -> None:
    a, b = IceLite(), IceLite()
    assert len(a.local_ufrag) == UFRAG_LENGTH and len(a.local_pwd) == PWD_LENGTH
    assert set(a.local_ufrag + a.local_pwd) <= set(ICE_CHARS)
    assert (a.local_ufrag, a.local_pwd) != (b.local_ufrag, b.local_pwd)
    with pytest.raises(ValueError):
        IceLite("abc", "x" * 22)  # ufrag shorter than 4
    with pytest.raises(ValueError):
        IceLite("abcd", "bad pwd with spaces and more")


def test_good_check_is_answered_with_mapped_address_integrity_and_fingerprint() -> None:
    ice = IceLite()
    ice.set_remote("brws", "p" * 22)
    request = check(ice)
    result = ice.receive(request, SOURCE, 1.0)
    assert result.verdict == "answered" and not result.nominated
    assert result.reply is not None
    reply = stun.parse_message(result.reply)  # raises on a bad FINGERPRINT
    assert reply.message_class == stun.Class.RESPONSE
    assert reply.transaction_id == stun.parse_message(request).transaction_id
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == SOURCE
    assert "FINGERPRINT" in reply.attributes
    assert reply.check_message_integrity(ice.local_pwd.encode())
    assert not reply.check_message_integrity(b"another password")
    assert ice.is_verified(SOURCE) and ice.nominated is None and ice.selected == SOURCE


def test_use_candidate_nominates_the_source_and_a_later_one_moves_it() -> None:
    ice = IceLite()
    result = ice.receive(check(ice, nominate=True), SOURCE, 2.0)
    assert result.verdict == "answered" and result.nominated
    assert ice.nominated == SOURCE and ice.nominated_at == 2.0
    other = ("192.0.2.8", 40000)
    assert ice.receive(check(ice, nominate=True), other, 3.0).nominated
    assert ice.nominated == other and ice.selected == other
    assert ice.counters["nominations"] == 2


def test_bad_integrity_gets_401_and_never_nominates() -> None:
    ice = IceLite()
    result = ice.receive(check(ice, pwd="w" * 22, nominate=True), SOURCE, 1.0)
    assert result.verdict == "unauthorized" and not result.nominated
    assert result.reply is not None
    reply = stun.parse_message(result.reply)
    assert reply.message_class == stun.Class.ERROR
    assert reply.attributes["ERROR-CODE"][0] == 401
    assert "MESSAGE-INTEGRITY" not in reply.attributes
    assert len(result.reply) < len(check(ice))  # no amplification
    assert ice.nominated is None and not ice.is_verified(SOURCE)
    assert ice.counters["unauthorized"] == 1 and ice.counters["answered"] == 0


@pytest.mark.parametrize(
    "username",
    ["nope:brws", "brws", "{ours}:other", "{ours}"],
    ids=["other-ufrag", "no-colon", "their-ufrag-wrong", "ours-only"],
)
def test_wrong_username_gets_401(username: str) -> None:
    ice = IceLite()
    ice.set_remote("brws", "p" * 22)
    result = ice.receive(check(ice, username.format(ours=ice.local_ufrag)), SOURCE, 1.0)
    assert result.verdict == "unauthorized"
    assert result.reply is not None
    assert stun.parse_message(result.reply).attributes["ERROR-CODE"][0] == 401
    assert not ice.is_verified(SOURCE)


def test_their_ufrag_is_not_checked_before_their_sdp_came() -> None:
    # The browser may check before its answer reaches us through SIP.
    ice = IceLite()
    assert ice.receive(check(ice, f"{ice.local_ufrag}:anything"), SOURCE, 1.0).reply is not None
    assert ice.counters["answered"] == 1


def test_unauthenticated_malformed_and_other_messages_are_dropped_silently() -> None:
    ice = IceLite()
    bare = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    no_integrity = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    no_integrity.attributes["USERNAME"] = f"{ice.local_ufrag}:brws"
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    indication.add_fingerprint()
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    good = check(ice)
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    no_cookie = good[:4] + b"\x00\x00\x00\x00" + good[8:]
    cases = {
        "unauthenticated": [bare, bytes(no_integrity)],
        "ignored": [bytes(indication), bytes(response)],
        "malformed": [b"", b"\x00\x01", good[:-4], bad_fingerprint, no_cookie, b"\x00" * 40],
    }
    for verdict, datagrams in cases.items():
        for data in datagrams:
            result = ice.receive(data, SOURCE, 1.0)
            assert (result.verdict, result.reply) == (verdict, None), data
    assert ice.counters["answered"] == 0 and not ice.verified


def test_role_conflict_with_another_controlled_agent_is_487_with_integrity() -> None:
    ice = IceLite()
    result = ice.receive(check(ice, controlled=True), SOURCE, 1.0)
    assert result.verdict == "role_conflict" and result.reply is not None
    reply = stun.parse_message(result.reply)
    assert reply.attributes["ERROR-CODE"][0] == 487
    assert reply.check_message_integrity(ice.local_pwd.encode())


def test_rfc5769_sample_request_verifies() -> None:
    """RFC 5769 §2.1: integrity and fingerprint of a request no Python wrote.  It carries
    ICE-CONTROLLED, so the lite agent (controlled too) answers 487 with integrity."""
    ice = IceLite("evtj", RFC5769_PASSWORD)
    ice.set_remote("h6vY", "x" * 22)
    result = ice.receive(RFC5769_REQUEST, ("192.0.2.1", 32853), 0.0)
    assert result.verdict == "role_conflict"
    assert result.reply is not None and result.reply[8:20] == RFC5769_REQUEST[8:20]
    wrong = IceLite("evtj", "VOkJxbRl1RmTxUk/WvJxBT")  # one character off
    assert wrong.receive(RFC5769_REQUEST, ("192.0.2.1", 32853), 0.0).verdict == "unauthorized"


def test_new_remote_credentials_forget_the_nomination() -> None:
    ice = IceLite()
    ice.set_remote("brws", "p" * 22)
    ice.receive(check(ice, nominate=True), SOURCE, 1.0)
    ice.set_remote("brws", "p" * 22)  # the same SDP again: nothing changes
    assert ice.nominated == SOURCE
    ice.set_remote("new1", "q" * 22)  # an ICE restart
    assert ice.nominated is None and not ice.verified


def test_byte_by_byte_garbage_never_raises() -> None:
    ice = IceLite()
    good = check(ice, nominate=True)
    for n in range(len(good)):
        assert ice.receive(good[:n], SOURCE, 1.0).reply is None
        flipped = bytearray(good)
        flipped[n] ^= 0xFF
        ice.receive(bytes(flipped), SOURCE, 1.0)  # any verdict, never an exception
