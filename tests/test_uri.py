"""URIs: SIP/SIPS/tel/absolute parsing, building and RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import pytest

from sip.errors import SipError
from sip.headers import Contact, NameAddr, Via
from sip.uri import URI

# RFC 3261 §19.1.4: "The URIs within each of the following sets are equivalent".
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

# §19.1.4: "The URIs within each of the following sets are not equivalent".
NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    # §19.1.4: equality is not transitive through parameters one side lacks.
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent(a: str, b: str) -> None:
    assert URI.parse(a).equivalent(URI.parse(b))
    assert URI.parse(b).equivalent(URI.parse(a))


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent(a: str, b: str) -> None:
    assert not URI.parse(a).equivalent(URI.parse(b))
    assert not URI.parse(b).equivalent(URI.parse(a))


def test_sip_uri_fields() -> None:
    uri = URI.parse("sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr;maddr=192.0.2.1?x=y")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("2001:db8::1", 5061)
    assert uri.transport == "tls" and uri.lr and uri.maddr == "192.0.2.1"
    assert uri.headers == (("x", "y"),)
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr;maddr=192.0.2.1?x=y"


def test_tel_uri() -> None:
    """RFC 3966: global and local numbers with parameters."""
    uri = URI.parse("tel:+1-201-555-0123;ext=1234")
    assert uri.scheme == "tel" and uri.user == "+1-201-555-0123"
    assert uri.param("ext") == "1234"
    local = URI.parse("tel:7042;phone-context=example.com")
    assert local.param("phone-context") == "example.com"
    with pytest.raises(SipError):
        URI.parse("tel:")


def test_absolute_uris_are_opaque() -> None:
    uri = URI.parse("http://www.example.com/a?b=c")
    assert uri.scheme == "http" and uri.opaque == "//www.example.com/a?b=c"
    assert str(uri) == "http://www.example.com/a?b=c"


def test_building_rewrites_the_text() -> None:
    uri = URI.parse("sip:Bob@Example.com;transport=UDP")
    routed = uri.with_param("lr").replace(host="192.0.2.7", port=5070)
    assert str(routed) == "sip:Bob@192.0.2.7:5070;transport=UDP;lr"
    assert str(uri) == "sip:Bob@Example.com;transport=UDP"  # the original is untouched
    assert str(routed.without_param("transport")) == "sip:Bob@192.0.2.7:5070;lr"
    assert str(URI.parse("sip:h.example.com").replace(host="2001:db8::5")) == "sip:[2001:db8::5]"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:port",
        "sip:user@[2001:db8::1",
        "sip:user@[not-an-ip]",
        "sip:user@999.1.1.1",
        "sip:user@host;",
        "sip:user@host;a=b=c",
        "sip:user@host?",
        "sip:us er@host",
        "sip:user@host name",
        "sip:user\x00@host",
        "1sip:user@host",
        ":nothing",
        "sip:user@-host.example.com",
    ],
)
def test_malformed_uris(text: str) -> None:
    with pytest.raises(SipError):
        URI.parse(text)


def test_overlong_uri_is_414() -> None:
    with pytest.raises(SipError) as info:
        URI.parse("sip:" + "a" * 5000 + "@example.com")
    assert info.value.status_hint == 414


def test_name_addr_forms() -> None:
    bracketed = NameAddr.parse('"A \\"B\\"" <sip:a@example.com;lr>;tag=x;foo')
    assert bracketed.display_name == 'A "B"' and bracketed.tag == "x"
    assert bracketed.uri.lr and bracketed.has_param("foo")
    bare = NameAddr.parse("sip:a@example.com;tag=y")
    assert not bare.bracketed and bare.tag == "y" and bare.uri.params == ()
    assert str(bare.with_tag("z")) == "sip:a@example.com;tag=z"
    tokens = NameAddr.parse("Alice Smith <sip:a@example.com>")
    assert tokens.display_name == "Alice Smith"
    built = NameAddr(URI.parse("sip:a@example.com;transport=tcp"), "Al", (("tag", "1"),))
    assert str(built) == '"Al" <sip:a@example.com;transport=tcp>;tag=1'
    with pytest.raises(SipError):
        NameAddr.parse("<sip:a@example.com>;tag=1;tag=2")


def test_contact_parameters() -> None:
    contact = Contact.parse(
        '<sip:a@192.0.2.1;ob>;expires=3600;q=0.7;+sip.instance="<urn:uuid:1-2>";reg-id=1'
    )
    assert contact.expires == 3600 and contact.q == pytest.approx(0.7)
    assert contact.sip_instance == "<urn:uuid:1-2>" and contact.reg_id == 1
    assert Contact.parse("*").star
    for bad in ["<sip:a@b>;q=2", "<sip:a@b>;expires", "<sip:a@b>;expires=-1"]:
        with pytest.raises(SipError):
            Contact.parse(bad)


def test_via_params() -> None:
    via = Via.parse("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa;received=192.0.2.9;rport=6000")
    assert via.rport == 6000 and via.received == "192.0.2.9" and via.wants_rport
    assert Via.parse("SIP/2.0/UDP h;ttl=16;maddr=224.0.1.75").ttl == 16
    for bad in [
        "SIP/2.0/UDP",
        "SIP/2.0/UDP h;ttl=256",
        "SIP/2.0/UDP h;received=not-an-ip",
        "SIP/2.0/UDP h;rport=70000",
        "SIP/2.0/UDP h;branch",
        "SIP/3.0/UDP h",
        "SIP/2.0/UDP h;branch=a;branch=b",
    ]:
        with pytest.raises(SipError):
            Via.parse(bad)


def test_parameter_names_match_case_insensitively_through_the_bounded_memo() -> None:
    from sip import _abnf
    from sip.headers import get_param, has_param, set_param

    params = (("Branch", "z9hG4bK1"), ("RPORT", None), ("received", "192.0.2.1"))
    assert get_param(params, "branch") == "z9hG4bK1"
    assert get_param(params, "BRANCH") == "z9hG4bK1"
    assert has_param(params, "rport") and not has_param(params, "rpor")
    assert get_param(params, "maddr") is None
    assert set_param(params, "RECEIVED", "192.0.2.2")[2] == ("received", "192.0.2.2")
    uri = URI.parse("sip:a@b;Transport=TCP;LR")
    assert uri.param("transport") == "TCP" and uri.has_param("lr") and not uri.has_param("l")
    # A flood of invented names: the memo stays bounded and the answers stay right.
    for i in range(3000):
        assert get_param(((f"X-{i}", "v"),), f"x-{i}") == "v"
    assert len(_abnf._lower_names) <= _abnf._LOWER_NAMES_MAX
    assert get_param(params, "Branch") == "z9hG4bK1"
