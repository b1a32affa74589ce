"""RFC 5118 IPv6 torture messages (tests/data/rfc5118), with the answer of each section."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.errors import SipError
from sip.message import Request, parse_message
from sip.validate import check_proxy_request

DATA = Path(__file__).parent / "data" / "rfc5118"


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


VALID = [
    "ipv6-good",  # 4.1
    "port-ambiguous",  # 4.3
    "port-unambiguous",  # 4.4
    "via-received-param-with-delim",  # 4.5
    "via-received-param-no-delim",  # 4.5
    "ipv6-in-sdp",  # 4.6
    "mult-ip-in-header",  # 4.7
    "mult-ip-in-sdp",  # 4.8
    "ipv4-mapped-ipv6",  # 4.9
    "ipv6-correct-abnf-2-colons",  # 4.10
]


@pytest.mark.parametrize("name", VALID)
def test_valid_ipv6_messages(name: str) -> None:
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    check_proxy_request(msg)
    assert bytes(msg) == load(name)


def test_ipv6_reference_needs_brackets() -> None:
    """§4.2: sip:2001:db8::10 without brackets is refused with 400."""
    with pytest.raises(SipError) as info:
        parse_message(load("ipv6-bad"))
    assert info.value.status_hint == 400


def test_three_colon_form_is_refused() -> None:
    """§4.10: RFC 3261's ABNF let ``2001:db8:::192.0.2.1`` through by mistake;
    it is not an IPv6 address and we refuse it."""
    with pytest.raises(SipError):
        parse_message(load("ipv6-bug-abnf-3-colons"))


def test_hosts_and_ports() -> None:
    good = parse_message(load("ipv6-good"))
    assert isinstance(good, Request)
    assert good.uri.host == "2001:db8::10" and good.uri.port is None
    assert good.top_via.host == "2001:db8::9:1"
    assert good.contact[0].uri is not None and good.contact[0].uri.host == "2001:db8::1"
    ambiguous = parse_message(load("port-ambiguous"))
    assert isinstance(ambiguous, Request)
    # §4.3: inside the brackets, 5070 is part of the address.
    assert ambiguous.uri.host == "2001:db8::10:5070" and ambiguous.uri.port is None
    unambiguous = parse_message(load("port-unambiguous"))
    assert isinstance(unambiguous, Request)
    assert unambiguous.uri.host == "2001:db8::10" and unambiguous.uri.port == 5070


def test_received_with_and_without_brackets() -> None:
    """§4.5: received= may carry the IPv6 address with or without brackets."""
    with_delim = parse_message(load("via-received-param-with-delim"))
    no_delim = parse_message(load("via-received-param-no-delim"))
    assert with_delim.top_via.received == "2001:db8::9:255"
    assert no_delim.top_via.received == "2001:db8::9:255"


def test_mixed_address_families_in_via() -> None:
    """§4.7."""
    msg = parse_message(load("mult-ip-in-header"))
    assert [(v.host, v.port) for v in msg.via] == [
        ("2001:db8::9:1", 6050),
        ("192.0.2.1", None),
        ("2001:db8::9:255", None),
    ]
    assert msg.via[2].received == "192.0.2.200"


def test_ipv4_mapped() -> None:
    """§4.9."""
    msg = parse_message(load("ipv4-mapped-ipv6"))
    assert msg.via[0].host == "::ffff:192.0.2.10" and msg.via[0].port == 19823
    assert b"c=IN IP6 ::ffff:192.0.2.2" in msg.body


def test_rebuilt_via_brackets_ipv6() -> None:
    msg = parse_message(load("ipv6-good"))
    via = msg.top_via.with_param("received", "2001:db8::9:2")
    assert str(via) == "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111;received=2001:db8::9:2"
