"""Authentication header grammar: sip/auth.py.

Vectors cite their source.  "In the layout of X" marks a header written the
way that stack formats it (parameter order, spacing, quoting), with invented
values: what matters to a parser is the layout.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.auth import (
    MAX_VALUE_LEN,
    BearerChallenge,
    BearerCredentials,
    DigestChallenge,
    DigestCredentials,
    OtherChallenge,
    OtherCredentials,
    parse_challenge,
    parse_credentials,
)
from sip.errors import SipError


def digest_credentials(value: str) -> DigestCredentials:
    parsed = parse_credentials(value)
    assert isinstance(parsed, DigestCredentials)
    return parsed


def digest_challenge(value: str) -> DigestChallenge:
    parsed = parse_challenge(value)
    assert isinstance(parsed, DigestChallenge)
    return parsed


# ---------------------------------------------------------------- RFC vectors

# RFC 7616 §3.9.1, the WWW-Authenticate field (unfolded).
RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)

# RFC 7616 §3.9.1, the MD5 Authorization field (unfolded).
RFC7616_MD5_CREDENTIALS = (
    'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
    'algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
    'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
    'response="8ca523f5e9506fed4657c9700eebdbec", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


def test_rfc7616_challenge() -> None:
    ch = digest_challenge(RFC7616_CHALLENGE)
    assert ch.realm == "http-auth@example.org"
    # "auth, auth-int": whitespace after the comma, in the RFC's own example.
    assert ch.qop == ("auth", "auth-int")
    assert ch.algorithm == "SHA-256"
    assert ch.nonce == "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    assert ch.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert ch.stale is False
    assert ch.extra_params == ()


def test_rfc7616_credentials() -> None:
    cr = digest_credentials(RFC7616_MD5_CREDENTIALS)
    assert cr == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        uri="/dir/index.html",
        response="8ca523f5e9506fed4657c9700eebdbec",
        algorithm="MD5",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        qop="auth",
        nc="00000001",
    )
    assert cr.nc_value == 1


def test_rfc7616_userhash_challenge_and_credentials() -> None:
    # RFC 7616 §3.9.2 (username and response corrected by erratum 4897).
    ch = digest_challenge(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
    )
    assert ch.algorithm == "SHA-512-256"
    assert ch.userhash is True
    assert ch.extra_params == (("charset", "UTF-8"),)
    cr = digest_credentials(
        'Digest username="793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b", '
        'realm="api@example.org", uri="/doe.json", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", nc=00000001, '
        'cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v", qop=auth, '
        'response="3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", userhash=true'
    )
    assert cr.userhash is True
    assert cr.username.startswith("793263ca")
    assert digest_credentials(cr.to_header()) == cr


def test_rfc3261_style_credentials_with_sip_uri() -> None:
    # RFC 3261 §22.4 / RFC 2617 §3.5 values with a SIP Request-URI.
    cr = digest_credentials(
        'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert cr.uri == "sip:bob@biloxi.com"
    assert cr.algorithm is None
    assert cr.effective_algorithm == "MD5"


def test_rfc4475_regaut01_unknown_scheme() -> None:
    # RFC 4475 §3.3.7: well formed; refusing it is policy, not parsing.
    cr = parse_credentials("NoOneKnowsThisScheme opaque-data=here")
    assert cr == OtherCredentials("NoOneKnowsThisScheme", "opaque-data=here")
    assert cr.to_header() == "NoOneKnowsThisScheme opaque-data=here"


# ------------------------------------------------------------ real-world layouts


def test_asterisk_challenge_lowercase_algorithm_no_spaces() -> None:
    # In the layout of Asterisk res_pjsip: no space after commas, algorithm=md5.
    ch = digest_challenge(
        'Digest realm="asterisk",nonce="1700000000/4b6b3a1c0e1f",'
        'opaque="5e0f5f2b1c3d4e5f",algorithm=md5,qop="auth"'
    )
    assert ch.algorithm == "MD5"
    assert ch.nonce == "1700000000/4b6b3a1c0e1f"
    assert ch.qop == ("auth",)


def test_kamailio_and_freeswitch_challenges() -> None:
    # In the layouts of Kamailio auth (no algorithm) and FreeSWITCH.
    k = digest_challenge('Digest realm="example.com", nonce="ZWx3NmVnZWV+Zmw=", qop="auth"')
    assert k.algorithm is None
    assert k.effective_algorithm == "MD5"
    f = digest_challenge(
        'Digest realm="203.0.113.7", nonce="0b8c6b0e-1d4f-4a63-9f5b-6a0c7e1b2d3c", '
        'algorithm=MD5, qop="auth"'
    )
    assert f.realm == "203.0.113.7"


def test_libre_challenge_with_stale() -> None:
    # In the layout of libre (baresip) sip_uas_auth_print.
    ch = digest_challenge(
        'Digest realm="re", nonce="00112233445566778899aabbccddeeff0000000065000000", '
        'algorithm=MD5, qop="auth", stale=true'
    )
    assert ch.stale is True


def test_baresip_credentials() -> None:
    # In the layout of libre (baresip) sip_auth_encode: algorithm last.
    cr = digest_credentials(
        'Digest username="alice", realm="example.com", nonce="abc123", '
        'uri="sip:example.com", response="0123456789abcdef0123456789abcdef", '
        'cnonce="0011223344556677", qop=auth, nc=00000001, algorithm=MD5'
    )
    assert (cr.username, cr.qop, cr.nc, cr.algorithm) == ("alice", "auth", "00000001", "MD5")


def test_linphone_credentials() -> None:
    # In the layout of belle-sip (Linphone): realm first, SHA-256.
    cr = digest_credentials(
        'Digest realm="sip.example.org", nonce="Pp3cGQAAAADkOUqxAAC4tUKDnJQAAAAA", '
        'algorithm=SHA-256, opaque="+GNywA==", username="bob", uri="sip:sip.example.org", '
        'response="' + "a" * 64 + '", cnonce="hEqvDwSHdlj4CC0E", nc=00000001, qop=auth'
    )
    assert cr.algorithm == "SHA-256"
    assert cr.opaque == "+GNywA=="


def test_pjsip_credentials() -> None:
    # In the layout of pjproject (Asterisk chan_pjsip as a client).
    cr = digest_credentials(
        'Digest username="1000", realm="asterisk", nonce="1700000000/4b6b3a1c0e1f", '
        'uri="sip:203.0.113.9", response="00112233445566778899aabbccddeeff", algorithm=MD5, '
        'cnonce="b1c2d3e4f5", opaque="5e0f5f2b1c3d4e5f", qop=auth, nc=00000001'
    )
    assert cr.username == "1000"


def test_svcrack_credentials_parse_without_cnonce_and_nc() -> None:
    # In the layout of sipvicious svcrack (svhelper.challengeResponse): no
    # spaces, qop=auth but neither cnonce nor nc.  Parsing succeeds; the
    # verifier refuses it (tests/test_digest.py).
    cr = digest_credentials(
        'Digest username="100",realm="asterisk",nonce="abc",uri="sip:198.51.100.1",'
        'algorithm=MD5,qop=auth,response="788f225887d6889bd7796c451ffd01c1"'
    )
    assert cr.qop == "auth"
    assert cr.cnonce is None and cr.nc is None


def test_access_key_for_trunks() -> None:
    key = "ak_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
    cr = parse_credentials(f"AccessKey {key}")
    assert isinstance(cr, OtherCredentials)
    assert cr.scheme == "AccessKey"
    assert cr.params == key
    assert parse_credentials(cr.to_header()) == cr


# ------------------------------------------------------------------- Bearer


def test_bearer_credentials() -> None:
    # RFC 8898 §2.3 / RFC 6750 §2.1: Authorization: Bearer <token68>.
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl-_"
    cr = parse_credentials(f"Bearer {jwt}")
    assert cr == BearerCredentials(jwt)
    assert cr.to_header() == f"Bearer {jwt}"
    assert parse_credentials("bearer mF_9.B5f-4.1JqM==") == BearerCredentials("mF_9.B5f-4.1JqM==")


@pytest.mark.parametrize(
    "value",
    ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b", 'Bearer "quoted"', "Bearer =abc"],
)
def test_bearer_credentials_malformed(value: str) -> None:
    with pytest.raises(SipError):
        parse_credentials(value)


def test_bearer_challenge() -> None:
    # RFC 8898 §2.2 example.
    ch = parse_challenge(
        'Bearer realm="atlanta.com", scope="abc", authz_server="https://as.example.com/token"'
    )
    assert ch == BearerChallenge(
        realm="atlanta.com", scope="abc", authz_server="https://as.example.com/token"
    )
    assert parse_challenge(ch.to_header()) == ch
    err = parse_challenge('Bearer realm="x", error="invalid_token", error_description="expired"')
    assert isinstance(err, BearerChallenge)
    assert err.error == "invalid_token"
    assert err.extra_params == (("error_description", "expired"),)
    assert parse_challenge("Bearer") == BearerChallenge()
    assert BearerChallenge().to_header() == "Bearer"


def test_other_challenge() -> None:
    ch = parse_challenge('NewAuth realm="x", foo=bar')
    assert ch == OtherChallenge("NewAuth", 'realm="x", foo=bar')
    assert parse_challenge(ch.to_header()) == ch
    assert parse_challenge("Lonely") == OtherChallenge("Lonely")


# ------------------------------------------------------------------- grammar


def test_scheme_is_case_insensitive() -> None:
    base = RFC7616_MD5_CREDENTIALS.removeprefix("Digest")
    expected = digest_credentials(RFC7616_MD5_CREDENTIALS)
    for scheme in ("digest", "DIGEST", "DiGeSt"):
        assert digest_credentials(scheme + base) == expected
    assert isinstance(parse_challenge("dIgEsT " + RFC7616_CHALLENGE[7:]), DigestChallenge)


def test_param_names_are_case_insensitive_and_order_free() -> None:
    cr = digest_credentials(
        'Digest RESPONSE="r", Uri="sip:a@b", NONCE="n", Realm="x", UserName="u", ALGORITHM=sha-256'
    )
    assert (cr.username, cr.realm, cr.nonce, cr.uri, cr.response) == ("u", "x", "n", "sip:a@b", "r")
    assert cr.algorithm == "SHA-256"


def test_lws_around_equals_and_commas() -> None:
    cr = digest_credentials(
        'Digest \t username \t= "u" ,realm=  "x"\t,\tnonce ="n",uri= "sip:a@b"  ,  response="r"  '
    )
    assert (cr.username, cr.realm, cr.nonce, cr.uri, cr.response) == ("u", "x", "n", "sip:a@b", "r")


def test_empty_list_elements_are_skipped() -> None:
    # RFC 7230 §7: recipients accept empty list elements.
    cr = digest_credentials('Digest ,username="u",, realm="x", nonce="n", uri="s", response="r",')
    assert cr.username == "u"


def test_quoted_pair_escapes() -> None:
    cr = digest_credentials(
        r'Digest username="a\"b\\c\d", realm="x,y=z", nonce="n", uri="s", response="r"'
    )
    # RFC 3261 §25.1 quoted-pair: a backslash escapes any character.
    assert cr.username == 'a"b\\cd'
    assert cr.realm == "x,y=z"
    assert r'username="a\"b\\cd"' in cr.to_header()
    assert digest_credentials(cr.to_header()) == cr


def test_utf8_in_quoted_strings() -> None:
    cr = digest_credentials(
        'Digest username="Jäsøn Doe", realm="x", nonce="n", uri="s", response="r"'
    )
    assert cr.username == "J\u00e4s\u00f8n Doe"


def test_lenient_quoting_of_token_fields() -> None:
    # Some clients quote algorithm, qop and nc; the meaning is not in doubt.
    cr = digest_credentials(
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", '
        'algorithm="md5-SESS", qop="auth", nc="0000000A", cnonce="c"'
    )
    assert (cr.algorithm, cr.qop, cr.nc, cr.nc_value) == ("MD5-sess", "auth", "0000000A", 10)
    ch = digest_challenge('Digest realm="x", nonce="n", qop=auth, stale="TRUE"')
    assert ch.qop == ("auth",)
    assert ch.stale is True


def test_unknown_algorithm_is_kept_verbatim() -> None:
    cr = digest_credentials(
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", algorithm=AKAv1-MD5'
    )
    assert cr.algorithm == "AKAv1-MD5"


def test_unknown_params_are_kept_in_lower_case() -> None:
    cr = digest_credentials(
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", '
        'X-Vendor="a b", Token-Ish=abc'
    )
    assert cr.extra_params == (("x-vendor", "a b"), ("token-ish", "abc"))
    assert cr.to_header().endswith('x-vendor="a b", token-ish=abc')


def test_domain_list() -> None:
    ch = digest_challenge('Digest realm="x", nonce="n", domain="sip:a.example  sip:b.example\t"')
    assert ch.domain == ("sip:a.example", "sip:b.example")
    assert 'domain="sip:a.example sip:b.example"' in ch.to_header()


def test_stale_and_userhash_other_values_read_false() -> None:
    # RFC 2617 §3.2.1: anything but "true" means false.
    ch = digest_challenge('Digest realm="x", nonce="n", stale=maybe, userhash=FALSE')
    assert ch.stale is False and ch.userhash is False


# ---------------------------------------------------------------- serialising


def test_credentials_serialisation_quotes_what_must_be_quoted() -> None:
    cr = DigestCredentials(
        username="u",
        realm="r",
        nonce="n",
        uri="sip:a@b",
        response="abc",
        algorithm="SHA-256",
        cnonce="c",
        opaque="o",
        qop="auth",
        nc="00000002",
        userhash=True,
    )
    assert cr.to_header() == (
        'Digest username="u", realm="r", nonce="n", uri="sip:a@b", response="abc", '
        'algorithm=SHA-256, cnonce="c", opaque="o", qop=auth, nc=00000002, userhash=true'
    )
    assert str(cr) == cr.to_header()


def test_challenge_serialisation_quotes_what_must_be_quoted() -> None:
    ch = DigestChallenge(
        realm="r",
        nonce="n",
        algorithm="MD5",
        qop=("auth", "auth-int"),
        opaque="o",
        stale=True,
        domain=("sip:a", "sip:b"),
    )
    # RFC 3261 §25.1: qop-options quoted, stale and algorithm bare.
    assert ch.to_header() == (
        'Digest realm="r", domain="sip:a sip:b", nonce="n", opaque="o", stale=true, '
        'algorithm=MD5, qop="auth,auth-int"'
    )
    assert str(ch) == ch.to_header()


@pytest.mark.parametrize(
    "value",
    [
        RFC7616_CHALLENGE,
        'Digest realm="asterisk",nonce="1/2",opaque="o",algorithm=md5,qop="auth"',
        'Digest realm="x", nonce="n", domain="sip:a sip:b", stale=true, userhash=true, foo="a\\"b"',
    ],
)
def test_challenge_round_trip(value: str) -> None:
    ch = digest_challenge(value)
    assert digest_challenge(ch.to_header()) == ch


# ------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "=",
        '"Digest" username="u"',
        'Digest,username="u", realm="x", nonce="n", uri="s", response="r"',
        'Digest username="u" realm="x", nonce="n", uri="s", response="r"',  # no comma
        'Digest username="u, realm="x", nonce="n", uri="s", response="r"',  # unterminated
        'Digest username="u", realm="x", nonce="n", uri="s", response="r\\"',  # escaped end
        'Digest username="u", realm="x", nonce="n", uri="s", response=',
        'Digest username="u", realm="x", nonce="n", uri="s", response',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", ="v"',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", a b=c',
        # duplicates, also differing only in case
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", username="v"',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", USERNAME="u"',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", foo=1, Foo=2',
        # nc must be exactly 8 hex digits
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", nc=0000001',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", nc=000000001',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", nc=0000000g',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", nc=\u0661' + "0" * 7,
        # qop in credentials is one token
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", qop="auth,auth-int"',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", qop=""',
        'Digest username="u", realm="x", nonce="n", uri="s", response="r", algorithm="M D5"',
    ],
)
def test_malformed_credentials(value: str) -> None:
    with pytest.raises(SipError) as info:
        parse_credentials(value)
    assert info.value.status_hint == 400


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response"])
def test_missing_required_credential_param(missing: str) -> None:
    params = {"username": "u", "realm": "x", "nonce": "n", "uri": "s", "response": "r"}
    del params[missing]
    value = "Digest " + ", ".join(f'{k}="{v}"' for k, v in params.items())
    with pytest.raises(SipError, match=missing):
        parse_credentials(value)


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="x"',
        'Digest nonce="n"',
        "Digest",
        'Digest realm="x", nonce="n", qop=""',
        'Digest realm="x", nonce="n", qop=" , "',
        'Digest realm="x", nonce="n", qop="auth int"',
        'Digest realm="x", nonce="n", realm="y"',
        'Digest realm="x, nonce="n"',
        'Digest realm="x", nonce="n", Basic realm="y"',  # one challenge per value
    ],
)
def test_malformed_challenges(value: str) -> None:
    with pytest.raises(SipError):
        parse_challenge(value)


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\n ", "\x01", "\x7f", "\ud800"])
def test_control_characters_and_surrogates_refused(bad: str) -> None:
    value = f'Digest username="u{bad}", realm="x", nonce="n", uri="s", response="r"'
    with pytest.raises(SipError):
        parse_credentials(value)
    with pytest.raises(SipError):
        parse_challenge(f'Digest realm="x{bad}", nonce="n"')
    with pytest.raises(SipError):
        parse_credentials(f"AccessKey ak_{bad}")


def test_tab_inside_quoted_string_is_allowed() -> None:
    cr = digest_credentials('Digest username="a\tb", realm="x", nonce="n", uri="s", response="r"')
    assert cr.username == "a\tb"


def test_size_bound() -> None:
    head = 'Digest username="u", realm="x", nonce="n", uri="s", response="r", opaque="'
    fits = head + "o" * (MAX_VALUE_LEN - len(head) - 1) + '"'
    assert len(fits) == MAX_VALUE_LEN
    assert digest_credentials(fits).opaque is not None
    too_long = head + "o" * (MAX_VALUE_LEN - len(head)) + '"'
    with pytest.raises(SipError) as info:
        parse_credentials(too_long)
    assert info.value.status_hint == 400
    with pytest.raises(SipError):
        parse_challenge("X " + "a" * MAX_VALUE_LEN)
    with pytest.raises(SipError):
        parse_credentials("Bearer " + "a" * MAX_VALUE_LEN)


def test_construction_is_validated() -> None:
    ok = DigestCredentials(username="u", realm="x", nonce="n", uri="s", response="r")
    # dataclasses.replace runs __init__, hence the validation.
    with pytest.raises(SipError):
        replace(ok, username="a\r\nVia: evil")
    with pytest.raises(SipError):
        replace(ok, nc="1")
    with pytest.raises(SipError):
        replace(ok, qop="auth,auth-int")
    with pytest.raises(SipError):
        replace(ok, algorithm="MD 5")
    with pytest.raises(SipError):
        replace(ok, extra_params=(("realm", "y"),))
    with pytest.raises(SipError):
        replace(ok, extra_params=(("Foo", "y"),))
    with pytest.raises(SipError):
        replace(ok, extra_params=(("foo", "y"), ("foo", "z")))
    with pytest.raises(SipError):
        DigestChallenge(realm="x", nonce="n", qop=("auth int",))
    with pytest.raises(SipError):
        DigestChallenge(realm="x", nonce="n", domain=("sip:a sip:b",))
    with pytest.raises(SipError):
        DigestChallenge(realm="x", nonce="n", domain=("",))
    with pytest.raises(SipError):
        BearerCredentials("a b")
    with pytest.raises(SipError):
        OtherCredentials("AccessKey", " padded")
    with pytest.raises(SipError):
        OtherChallenge("Bad Scheme")


# ------------------------------------------------------------ property tests

# Plain alphabets rather than st.from_regex: the same sets, generated faster.
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdefABCDEF"
_TOKEN = st.text(alphabet=_ALNUM + "-.!%*_+`'~", min_size=1, max_size=12)
_TEXT = st.text(
    alphabet=st.one_of(
        st.just("\t"),
        st.characters(min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=["Cs"]),
    ),
    max_size=30,
)
_OPT_TEXT = st.none() | _TEXT
_EXTRA_NAME = st.text(alphabet=_ALNUM[26:] + "-.!%*_+`'~#$&^|", min_size=1, max_size=8).map(
    lambda s: "x-" + s
)
_EXTRA = st.lists(st.tuples(_EXTRA_NAME, _TEXT), max_size=3, unique_by=lambda p: p[0]).map(tuple)
_ALGORITHM = (
    st.none()
    | st.sampled_from(["MD5", "MD5-sess", "SHA-256", "SHA-512-256-sess"])
    | (st.text(alphabet=_ALNUM + "-", max_size=8).map(lambda s: "X" + s))
)


@st.composite
def credentials(draw: st.DrawFn) -> DigestCredentials:
    return DigestCredentials(
        username=draw(_TEXT),
        realm=draw(_TEXT),
        nonce=draw(_TEXT),
        uri=draw(_TEXT),
        response=draw(_TEXT),
        algorithm=draw(_ALGORITHM),
        cnonce=draw(_OPT_TEXT),
        opaque=draw(_OPT_TEXT),
        qop=draw(st.none() | _TOKEN),
        nc=draw(st.none() | st.text(alphabet=_HEX, min_size=8, max_size=8)),
        userhash=draw(st.booleans()),
        extra_params=draw(_EXTRA),
    )


@st.composite
def challenges(draw: st.DrawFn) -> DigestChallenge:
    uri = st.text(alphabet=_ALNUM[26:] + ".;=", min_size=1, max_size=10).map(lambda s: "sip:" + s)
    domain = st.lists(uri, max_size=3)
    return DigestChallenge(
        realm=draw(_TEXT),
        nonce=draw(_TEXT),
        algorithm=draw(_ALGORITHM),
        qop=tuple(draw(st.lists(_TOKEN, max_size=3))),
        opaque=draw(_OPT_TEXT),
        stale=draw(st.booleans()),
        domain=tuple(draw(domain)),
        userhash=draw(st.booleans()),
        extra_params=draw(_EXTRA),
    )


@given(credentials())
def test_credentials_round_trip_property(cr: DigestCredentials) -> None:
    assert parse_credentials(cr.to_header()) == cr


@given(challenges())
def test_challenge_round_trip_property(ch: DigestChallenge) -> None:
    assert parse_challenge(ch.to_header()) == ch


@given(
    st.builds(
        BearerChallenge,
        realm=_OPT_TEXT,
        scope=_OPT_TEXT,
        authz_server=_OPT_TEXT,
        error=_OPT_TEXT,
        extra_params=_EXTRA,
    )
)
def test_bearer_challenge_round_trip_property(ch: BearerChallenge) -> None:
    assert parse_challenge(ch.to_header()) == ch


@given(
    st.text(alphabet=_ALNUM + "-._~+/", min_size=1, max_size=40),
    st.integers(min_value=0, max_value=2),
)
def test_bearer_credentials_round_trip_property(token: str, padding: int) -> None:
    cr = BearerCredentials(token + "=" * padding)
    assert parse_credentials(cr.to_header()) == cr


def _only_sip_error(value: str) -> None:
    # The invariant: a parser returns an object or raises SipError, nothing else.
    for parse in (parse_credentials, parse_challenge):
        with contextlib.suppress(SipError):
            parse(value)


@given(st.text(max_size=200))
def test_fuzz_any_text_raises_only_sip_error(value: str) -> None:
    _only_sip_error(value)


@given(
    st.sampled_from(["Digest ", "digest\t", "Bearer ", "X "]),
    st.text(alphabet='ausernmrlcoqpdithgv=",\\ \t-8:/0*', max_size=120),
)
def test_fuzz_grammar_alphabet_raises_only_sip_error(scheme: str, rest: str) -> None:
    _only_sip_error(scheme + rest)


@pytest.mark.parametrize("value", [RFC7616_CHALLENGE, RFC7616_MD5_CREDENTIALS])
def test_every_prefix_parses_or_raises_sip_error(value: str) -> None:
    for end in range(len(value) + 1):
        _only_sip_error(value[:end])
