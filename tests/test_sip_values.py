"""The C fast paths of the typed header values (media/sipvalues.c) against the
Python parsers they shortcut (Via.parse, URI.parse, NameAddr.parse, Contact.parse,
CSeq.parse).

Invariant: for any text, the C answer is None ("ask Python"), or it is what the
Python parser returns (the same class, every field equal and of the same type,
``text`` included) and the Python parser does not raise.  The inputs are every
Via, From, To, Contact, Route, Record-Route and CSeq value and Request-URI of the
messages the other tests parse (tests/test_sip_scan.py's corpus: RFC 4475 and
RFC 5118 archives, tests/sipdata.py, the parser and proxy tests' literals), the
string literals of the URI and message tests, hand-picked edges, and seeded
random mutations of all of these.

A missing extension fails these tests: build it with ``make install``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sip import _compiled, message
from sip._abnf import split_list
from sip.errors import SipError
from sip.headers import Contact, CSeq, NameAddr, Via
from sip.message import LIST_HEADERS, clear_parse_caches, parse_message
from sip.uri import URI
from tests.peers import c_part, python_output
from tests.test_sip_scan import CORPUS

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
RANDOM_CASES = 24_000
RANDOM_SECONDS = 8.0  # a bound for slow machines; the count is checked below

PYTHON: dict[str, Callable[[str], Any]] = {
    "via": Via.parse,
    "uri": URI.parse,
    "name_addr": NameAddr.parse,
    "contact": Contact.parse,
    "cseq": CSeq.parse,
}
# Which parsers read the values of which header.
KINDS = {
    "via": ("via",),
    "from": ("name_addr",),
    "to": ("name_addr",),
    "route": ("name_addr",),
    "record-route": ("name_addr",),
    "contact": ("contact", "name_addr"),
    "cseq": ("cseq",),
}


def c_values() -> Any:
    return c_part("SipValueParser", message._load_values)


@pytest.fixture(autouse=True)
def accelerated() -> Iterator[None]:
    """The C fast paths in use during each test (whatever the environment says),
    as they were afterwards."""
    scanner, values = message.accelerated(), message.values_accelerated()
    c_values()
    message.use_accelerator(True)
    yield
    message.use_accelerator(scanner, values=values)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down, compare=False fields too."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check(kind: str, text: str, fast: Callable[[str], Any] | None = None) -> bool:
    """The invariant for one text; True if C answered (not None)."""
    got = (fast or getattr(c_values(), kind))(text)
    try:
        want = PYTHON[kind](text)
    except Exception as exc:  # SipError, or anything else Python may raise
        assert got is None, (kind, text, got, exc)
        return False
    if got is None:
        return False
    assert same(got, want), (kind, text, got, want)
    return True


# ------------------------------------------------------------------ corpus
def _header_values() -> dict[str, dict[str, None]]:
    """Values by parser kind, from the messages of the corpus (tokenized by the
    Python reference, list headers split as _check_headers splits them)."""
    found: dict[str, dict[str, None]] = {kind: {} for kind in PYTHON}
    for data in CORPUS:
        try:
            start, _, pairs, _, _ = message._scan(data, 10_000, 100_000)
        except SipError:
            continue
        parts = start.split(" ")
        if len(parts) == 3:
            found["uri"][parts[1]] = None
        values = message._group(pairs)
        for key, kinds in KINDS.items():
            for value in values.get(key, []):
                for part in split_list(value) if key in LIST_HEADERS else [value]:
                    for kind in kinds:
                        found[kind][part] = None
    # The URIs inside the name-addrs are URIs too.
    for text in list(found["name_addr"]):
        start, end = text.find("<"), text.find(">")
        if 0 <= start < end:
            found["uri"][text[start + 1 : end]] = None
    return found


def _string_literals() -> list[str]:
    out: dict[str, None] = {}
    for name in ("test_uri.py", "test_message.py", "test_proxy.py", "test_rfc5118.py"):
        for node in ast.walk(ast.parse((TESTS / name).read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and len(node.value) < 300
            ):
                out[node.value] = None
    return list(out)


VALUES = _header_values()
LITERALS = _string_literals()

EDGES = {
    "via": [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport",
        "SIP/2.0/udp host",
        "SIP/2.0/TCP host.:0",
        "SIP/2.0/TCP host:65535",
        "SIP/2.0/TCP host:65536",
        "SIP/2.0/TCP host:00080",
        "SIP/2.0/TCP host:123456",
        "SIP/2.0/TCP host:",
        "SIP/2.0/UDP 1.2.3.4",
        "SIP/2.0/UDP 1.2.3.256",
        "SIP/2.0/UDP 01.2.3.4",
        "SIP/2.0/UDP 1.2.3.4.",
        "SIP/2.0/UDP 1.2.3",
        "SIP/2.0/UDP 1-2.3.4",
        "SIP/2.0/UDP 1.2.3.4a",
        "SIP/2.0/UDP -a.b",
        "SIP/2.0/UDP a-.b",
        "SIP/2.0/UDP a..b",
        "SIP/2.0/UDP .a",
        "SIP/2.0/UDP [::1]:5060;branch=z9hG4bKx",
        "SIP/2.0/UDP h;branch",
        "SIP/2.0/UDP h;branch=",
        'SIP/2.0/UDP h;branch="x"',
        "SIP/2.0/UDP h;branch=a;BRANCH=b",
        "SIP/2.0/UDP h;received=1.2.3.4",
        "SIP/2.0/UDP h;received=1.2.3.400",
        "SIP/2.0/UDP h;received=::1",
        "SIP/2.0/UDP h;received=2001:db8::1;rport=1",
        "SIP/2.0/UDP h;received=[::1]",
        "SIP/2.0/UDP h;received=host",
        "SIP/2.0/UDP h;received",
        "SIP/2.0/UDP h;rport=",
        "SIP/2.0/UDP h;rport=65536",
        "SIP/2.0/UDP h;rport=000000000001",
        "SIP/2.0/UDP h;rport=0000000000001",
        "SIP/2.0/UDP h;ttl=255",
        "SIP/2.0/UDP h;ttl=256",
        "SIP/2.0/UDP h;ttl",
        "SIP/2.0/UDP h;maddr",
        "SIP/2.0/UDP h;maddr=224.0.0.1;x=:;y=a:b",
        "SIP/2.0/UDP h;x=1:;y",
        "SIP/2.0/UDP h;x=g:1",
        "SIP/2.0/UDP h ;branch=x",
        "SIP/2.0/UDP  h",
        "SIP/2.0 /UDP h",
        "sip/2.0/UDP h",
        "SIP/2.0/UDP h;" + ";".join(f"p{i}" for i in range(40)),
        "SIP/2.0/UDP h;" + ";".join(f"p{i}" for i in range(32)),
    ],
    "uri": [
        "sip:h",
        "SIPS:h",
        "sip:a@h",
        "sip:a:b@h",
        "sips:a:p,w&=+$@h:5061;lr",
        "sip::b@h",
        "sip:a:@h",
        "sip:a:b:c@h",
        "sip:a:b@c@h",
        "sip:1.2.3.4:5060@h",
        "sip:a:%41@h",
        "sip:a;b:c@h",
        "sip:@h",
        "sip:a@b@h",
        "sip:a,b@h",
        "sip:%41@h",
        "sip:h:5060;lr;transport=TCP;maddr=[::1]",
        "sip:h;a=b=c",
        "sip:h;=b",
        "sip:h;a=",
        "sip:h;",
        "sip:h?x=y",
        "sip:[::1]:5060",
        "sip:1.2.3.4:65536",
        "sip:999.1.1.1",
        "sipx:h",
        "sip:",
        "tel:+1-201-555-0123",
        "sip:" + "a" * 5000,
    ],
    "name_addr": [
        '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        '"A \\"q\\" \\\\ b" <sip:a@h>',
        '"unterminated <sip:a@h>',
        '"bad \\\r" <sip:a@h>',
        '"ctl \x01" <sip:a@h>',
        '"tab\t" <sip:a@h>',
        '"" <sip:a@h>',
        '"x"<sip:a@h>',
        '"x" sip:a@h',
        "Bob Smith <sip:a@h>",
        "Bob  \t Smith\t<sip:a@h>",
        "Bob, Smith <sip:a@h>",
        "  <sip:a@h>",
        "<sip:a@h> ",
        "<sip:a@h>;tag=1;TAG=2",
        "<sip:a@h>;tag",
        "<sip:a@h>;tag=",
        '<sip:a@h>;x="q;v";y',
        '<sip:a@h>;x="q',
        "<sip:a@h>;x=[::1]",
        "<sip:a@h>;x=::1",
        "<sip:a@h>;x=a:1",
        "<sip:a@h> ;tag=1",
        "<sip:a@h>tag=1",
        "<sip:a@h",
        "< sip:a@h>",
        "<sip:a@h;lr>;lr",
        "<sip:a:pw@h>",
        '"x" <sip:a:p,w@h>;tag=1',
        "sip:a:pw@h;tag=1",
        "sip:a:p,w@h;tag=1",
        "<tel:+123>",
        "sip:a@h;tag=x",
        "sip:a@h ;tag=x",
        "sip:a@h;tag=x;lr",
        "sips:a,b@h",
        "sip:a@h?x",
        " sip:a@h",
        "sip:a@h\x0b",
        "*",
        "",
    ],
    "contact": [
        "*",
        " * ",
        "\x0b*",
        "<sip:a@h>;expires=3600;q=0.5",
        "<sip:a@h>;expires=4294967295",
        "<sip:a@h>;expires=4294967296",
        "<sip:a@h>;expires=0000000000001",
        "<sip:a@h>;expires",
        '<sip:a@h>;expires="1"',
        "<sip:a@h>;q=1.000",
        "<sip:a@h>;q=1.001",
        "<sip:a@h>;q=0.",
        "<sip:a@h>;q=0.1234",
        "<sip:a@h>;q=2",
        "<sip:a@h>;Q",
        '<sip:a@h>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
    ],
    "cseq": [
        "1 INVITE",
        " 1 INVITE ",
        "1\tINVITE",
        "1INVITE",
        "INVITE",
        "1 ",
        "2147483647 BYE",
        "2147483648 BYE",
        "000000000001 ACK",
        "0000000000001 ACK",
        "1 IN VITE",
        "-1 BYE",
    ],
}


def test_extension_is_built_and_in_use() -> None:
    parser = c_values()
    assert message.values_accelerated()
    # Writing the slots directly needs plain __slots__ classes; compiled
    # (sip/_compiled.py), the value classes are mypyc classes: C calls them.
    compiled = _compiled.in_use("sip.headers")
    assert all(direct is not compiled for direct in parser.direct.values()), parser.direct
    assert message._via._fast == parser.via


def test_corpus_values_agree() -> None:
    handled: dict[str, int] = {}
    for kind, texts in VALUES.items():
        for text in texts:
            handled[kind] = handled.get(kind, 0) + check(kind, text)
    counts = {kind: len(texts) for kind, texts in VALUES.items()}
    # The corpus has plenty of each, and C takes most of the common ones.
    assert counts["via"] > 80 and counts["name_addr"] > 100 and counts["contact"] > 25, counts
    for kind in PYTHON:
        assert handled[kind] > counts[kind] // 3, (kind, handled, counts)


def test_literals_and_edges_agree() -> None:
    for kind in PYTHON:
        for text in (*LITERALS, *EDGES[kind]):
            check(kind, text)


def test_common_shapes_take_the_c_path() -> None:
    # The proxy's everyday values must not fall back to Python.
    assert check("via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport")
    assert check("via", "SIP/2.0/TLS edge.example.com;branch=z9hG4bK.x;received=192.0.2.1")
    assert check("name_addr", "sipp <sip:sipp@127.0.0.1:5070>;tag=4242SIPpTag001")
    assert check("name_addr", '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774')
    assert check("name_addr", "<sip:127.0.0.1:25060;transport=udp;lr>")
    assert check("name_addr", "sip:alice@atlanta.example.com;tag=x")
    assert check("contact", "<sip:sipp@127.0.0.1:5070;transport=udp>")
    assert check("contact", "*")
    assert check("cseq", "314159 INVITE")
    assert check("uri", "sip:1000@127.0.0.1:25060;transport=udp")


def test_calling_the_types_gives_the_same_objects() -> None:
    from media._srtp import SipValueParser

    slow = SipValueParser(Via, URI, NameAddr, Contact, CSeq, direct=False)
    assert not any(slow.direct.values())
    for kind, texts in VALUES.items():
        for text in (*texts, *EDGES[kind]):
            check(kind, text, getattr(slow, kind))


def test_factories_give_the_same_objects() -> None:
    """The factories sip.message passes, called instead of the classes (direct=False
    makes every class take that path): the same objects; a factory that makes
    something else, or is not callable, is a TypeError."""
    from media._srtp import SipValueParser

    factories = (
        message._new_via,
        message._new_uri,
        message._new_name_addr,
        message._new_contact,
        message._new_cseq,
    )
    made = SipValueParser(Via, URI, NameAddr, Contact, CSeq, direct=False, factories=factories)
    for kind, texts in VALUES.items():
        for text in (*texts, *EDGES[kind]):
            check(kind, text, getattr(made, kind))
    wrong = (None, None, None, None, lambda number, method: (number, method))
    odd = SipValueParser(Via, URI, NameAddr, Contact, CSeq, direct=False, factories=wrong)
    assert odd.via("SIP/2.0/UDP h") == Via.parse("SIP/2.0/UDP h")
    with pytest.raises(TypeError, match="cseq factory"):
        odd.cseq("1 INVITE")
    for bad in ((None,) * 4, [None] * 5, (None, None, None, None, 42)):
        with pytest.raises(TypeError, match="factor"):
            SipValueParser(Via, URI, NameAddr, Contact, CSeq, factories=bad)


def test_arguments() -> None:
    from media._srtp import SipValueParser

    parser = c_values()
    with pytest.raises(TypeError):
        parser.via(b"SIP/2.0/UDP h")
    assert parser.via("SIP/2.0/UDP h\u00e9") is None  # not ASCII: Python decides
    with pytest.raises(RuntimeError):
        SipValueParser.__new__(SipValueParser).via("SIP/2.0/UDP h")
    with pytest.raises(RuntimeError):
        parser.__init__(Via, URI, NameAddr, Contact, CSeq)


def test_whole_parse_gives_the_same_typed_values() -> None:
    # parse_message with the fast paths and without: the same typed headers.
    for data in CORPUS:
        got: list[Any] = []
        for values in (True, False):
            message.use_accelerator(True, values=values)
            clear_parse_caches()
            try:
                got.append(parse_message(data).headers._typed)
            except SipError as exc:
                got.append((exc.reason, exc.status_hint))
        assert same(got[0], got[1]), data
    clear_parse_caches()


# ------------------------------------------------------------------ random
_INSERTS = (
    ";", "=", ":", "@", ",", "<", ">", '"', "\\", " ", "\t", "[", "]", "%41", "?", "&",
    "/", ".", "-", "_", "0", "9", "255", "256", "65535", "65536", "00", "é", "\x00",
    "\x01", "\x7f", "\x0b", "\x1c", ";tag=", ";branch=z9hG4bK", ";received=", ";rport",
    ";rport=", ";ttl=", ";maddr", ";maddr=", ";q=", ";expires=", ";lr", ";transport=tcp",
    "sip:", "sips:", "SIP/2.0/", "::1", "1.2.3.4", "*", '"x"', "a b", "<sip:a@h>",
)  # fmt: skip
_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"


def mutate(rng: random.Random, text: str) -> str:
    s = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(s))
        if op in (0, 1):
            s[pos:pos] = list(rng.choice(_INSERTS))
        elif op == 2 and s:  # replace a character
            s[min(pos, len(s) - 1)] = rng.choice(_CHARS)
        elif op == 3 and s:  # delete a few
            del s[pos : pos + rng.randint(1, 3)]
        elif op == 4 and s:  # flip the case of a letter
            i = min(pos, len(s) - 1)
            s[i] = s[i].swapcase()
        elif op == 5:  # repeat a piece
            piece = s[pos : pos + rng.randint(1, 8)]
            s[pos:pos] = piece
        else:  # truncate
            del s[pos:]
    return "".join(s)


def random_cases(seed: int, cases: int, seconds: float) -> tuple[int, dict[str, int]]:
    rng = random.Random(seed)
    bases = {kind: [*VALUES[kind], *EDGES[kind]] for kind in PYTHON}
    kinds = list(PYTHON)
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    done = 0
    for done in range(1, cases + 1):  # noqa: B007 (done is returned)
        kind = rng.choice(kinds)
        source = kind if rng.random() < 0.9 else rng.choice(kinds)
        text = mutate(rng, rng.choice(bases[source]))
        key = f"{kind}:{'c' if check(kind, text) else 'python'}"
        outcomes[key] = outcomes.get(key, 0) + 1
        if time.monotonic() > deadline:
            break
    return done, outcomes


def test_random_mutations_agree() -> None:
    seed = int(os.environ.get("SIP_VALUES_SEED", "3261"))
    done, outcomes = random_cases(seed, RANDOM_CASES, RANDOM_SECONDS)
    assert done >= 20_000, (done, outcomes)
    # Both answers are common for every parser: the mutations reach the edges.
    for kind in PYTHON:
        for path in ("c", "python"):
            assert outcomes.get(f"{kind}:{path}", 0) >= 200, outcomes


# ------------------------------------------------------------------ switches
def test_switches() -> None:
    code = "from sip import message; print(message.accelerated(), message.values_accelerated())"

    def run(pure: str, values: str) -> str:
        return python_output(code, SIPEDGE_PURE_PYTHON=pure, SIPEDGE_PURE_PYTHON_VALUES=values)

    assert run("", "") == "True True"
    assert run("1", "") == "False False"
    assert run("", "1") == "True False"


def test_c_built_fields_and_values_are_not_tracked_by_the_cyclic_gc() -> None:
    # A proxy keeps a call's parsed messages for the 32 s of its transactions; fields and
    # values hold only strings, numbers, None and tuples of them (no cycle can pass
    # through one), so the C paths untrack them and GC passes do not revisit them.
    import gc

    from tests.sipdata import INVITE

    msg = parse_message(INVITE)
    assert msg.headers.fields and not any(gc.is_tracked(f) for f in msg.headers.fields)
    for value in (msg.top_via, msg.top_via.params, msg.from_, msg.from_.uri, msg.to, msg.cseq):
        assert not gc.is_tracked(value), value
    for field in msg.headers.fields:
        assert all(
            type(getattr(field, a)) in (str, type(None)) for a in ("name", "key", "value", "raw")
        )


def test_the_lists_of_a_parsed_message_are_not_tracked_either() -> None:
    # Its fields and its parsed Via and Contact lists: values only, now and after edits.
    import gc

    from tests.sipdata import INVITE

    msg = parse_message(INVITE)
    assert not gc.is_tracked(msg.headers.fields)
    assert not gc.is_tracked(msg.headers.typed("via"))
    assert all(not gc.is_tracked(c) for c in msg.headers.typed("contact"))
    assert not gc.is_tracked(msg.headers.typed("contact"))


def test_untrack_value_takes_out_only_what_holds_nothing_tracked() -> None:
    import gc

    from media._srtp import untrack_value

    branch = "".join(["z9hG4bK", "1" * 8])  # made at run time: constants are shared
    pair = ("branch", branch)
    params = (pair, ("rport", None))
    via = Via("UDP", "127.0.0.1", 5060, params)
    assert untrack_value(via) is via
    assert not gc.is_tracked(params) and not gc.is_tracked(pair)
    # Compiled, a Via's traverse sees its fields only; interpreted, it sees its class
    # too (a heap type, tracked), so it stays in view: the safe side.
    assert gc.is_tracked(via) is not _compiled.in_use("sip.headers")

    # Anything holding a container stays in the GC's view, and so do containers.
    holder = ("x", [1])
    assert untrack_value(holder) is holder and gc.is_tracked(holder)
    for container in ([1], {"a": [1]}, {1, 2}):
        assert untrack_value(container) is container and gc.is_tracked(container)
    odd = Via("UDP", "127.0.0.1", 5060, (("x", [1]),))  # type: ignore[arg-type]  # on purpose
    assert untrack_value(odd) is odd and gc.is_tracked(odd)


def test_untrack_graph_follows_only_the_given_types() -> None:
    import gc

    from media._srtp import untrack_graph

    class Foreign:  # an object of the application: never to be taken out of view
        def __init__(self, held: list[int]) -> None:
            self.held = held

    behind_foreign = [1]
    foreign = Foreign(behind_foreign)
    inner = [2]
    mid = {"inner": inner, "foreign": foreign}
    top = [mid, (3,)]
    assert all(gc.is_tracked(o) for o in (top, mid, inner, foreign, behind_foreign))
    assert untrack_graph(top, (list, dict)) is top
    assert not any(gc.is_tracked(o) for o in (top, mid, inner))
    # Another type stops the walk: it and what it holds stay in the GC's view.
    assert gc.is_tracked(foreign) and gc.is_tracked(behind_foreign)

    # Only the exact types: a subclass of list is not followed.
    class Sub(list[int]):
        pass

    sub = Sub([1])
    assert untrack_graph([sub], (list,)) is not None and gc.is_tracked(sub)
    # A dict takes itself back into view when a tracked value goes in (CPython).
    mid["new"] = [4]
    assert gc.is_tracked(mid)
    with pytest.raises(TypeError):
        untrack_graph(top, [list])  # type: ignore[arg-type]  # on purpose


def test_a_transaction_keeps_its_messages_out_of_the_gcs_view() -> None:
    # A transaction keeps its request and last response for its life (32 s after a
    # call): the message, its headers and their lists and dicts leave the GC's view.
    # SIPEDGE_PURE_PYTHON=1 (no extension) leaves everything tracked.
    import gc

    from sip.transaction import NonInviteServerTransaction, client_transaction
    from tests.sipdata import INVITE

    tracked = os.environ.get("SIPEDGE_PURE_PYTHON") == "1"
    invite = parse_message(INVITE)
    _ = invite.top_via, invite.from_, invite.to, invite.cseq, invite.contact
    assert gc.is_tracked(invite) and gc.is_tracked(invite.headers)
    client = client_transaction(invite)
    for obj in (invite, invite.headers, invite.headers._typed):
        assert gc.is_tracked(obj) is tracked, obj
    assert not gc.is_tracked(invite.headers._fields) or tracked
    # The lists and dicts among the parsed values too (values of other types are the
    # parsers' to untrack, or shared through their memos).
    containers = [v for v in invite.headers._typed.values() if type(v) in (list, dict)]
    assert containers and (tracked or not any(gc.is_tracked(v) for v in containers))
    assert client.request is invite

    bye = parse_message(INVITE.replace(b"INVITE", b"BYE"))
    server = NonInviteServerTransaction(bye)
    assert gc.is_tracked(bye) is tracked and gc.is_tracked(bye.headers) is tracked
    server.receive_request(bye, 0.0)
    ok = message.make_response(bye, 200, to_tag="a1")
    assert gc.is_tracked(ok)
    server.send_response(ok, 0.0)
    assert gc.is_tracked(ok) is tracked and gc.is_tracked(ok.headers) is tracked


def test_values_made_by_edits_and_addresses_are_not_tracked() -> None:
    # What Python code builds for a call's lifetime: a stamped Via, the proxy's own
    # Via, header fields of edits, sources and destinations.  Compiled, their
    # traverse sees only strings, numbers and tuples of them.
    import gc

    from edge.transport import Destination, Source
    from tests.sipdata import INVITE

    # Interpreted (the reference build), each also refers to its class, a heap type the
    # GC tracks, so each stays in view: the safe side.
    compiled = _compiled.in_use("sip.headers")
    assert _compiled.in_use("edge.transport") is compiled
    msg = parse_message(INVITE)
    stamped = msg.top_via.stamped("192.0.2.1", "5061")
    ours = Via.ours("UDP", "127.0.0.1", 5060, "z9hG4bK-test")
    msg.headers.prepend("Via", str(ours))
    msg.headers.set("Max-Forwards", "69")
    source = Source("udp", ("192.0.2.1", 5061), ("127.0.0.1", 5060))
    dest = Destination("udp", "192.0.2.1", 5061, None, ("127.0.0.1", 5060))
    # (source.remote is no object to check: compiled, the pair is kept unboxed.)
    edited = [f for f in msg.headers.fields if f.key == "max-forwards"] + msg.headers.fields[:1]
    assert edited[1].value == str(ours)
    for value in (stamped, ours, source, dest, *edited):
        assert gc.is_tracked(value) is not compiled, value
    # Tuples go by CPython's own rule; SIPEDGE_PURE_PYTHON=1 leaves everything tracked.
    assert gc.is_tracked(stamped.params) is (os.environ.get("SIPEDGE_PURE_PYTHON") == "1")
