"""The C header checks (media/sipcheck.c) against their Python reference
(sip.message._check_headers).

Invariant: for any tokenized message, both leave equal ``headers._typed`` (the
same keys in the same order, values equal and of the same types, list and tuple
elements too) or raise the same SipError (reason and status), and both leave the
same entries in the parse memos, cold or warm.  The inputs are
tests/test_sip_scan.py's corpus (RFC 4475 and RFC 5118 archives, tests/sipdata.py,
the tests' message literals), hand-picked edges of each check, and seeded random
mutations of the corpus's header lines (names swapped among the typed headers,
values replaced or edited with delimiters, quotes, brackets, Unicode spaces and
digits at the limits).  The comma split is compared with sip._abnf.split_list on
its own too.

A missing extension fails these tests: build it with ``make install``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.sipdata as sipdata
from sip import message
from sip._abnf import split_list
from sip.errors import SipError
from sip.message import Headers, Limits, parse_message
from tests.peers import c_part, python_output
from tests.test_sip_scan import CORPUS
from tests.test_sip_scan import assert_same as scan_same
from tests.test_sip_scan import mutate as mutate_bytes

ROOT = Path(__file__).resolve().parent.parent
RANDOM_CASES = 20_000
RANDOM_SECONDS = float(os.environ.get("SIP_CHECK_SECONDS", "120"))
DEFAULT_LIMITS = Limits()

Check: Any = Callable[[Any, dict[str, list[str]], "str | None"], None]


def c_check() -> Any:
    return c_part("SipHeaderChecker", message._load_checker)


@pytest.fixture(autouse=True)
def accelerated() -> Iterator[None]:
    """Every C path on during each test (whatever the environment says), as it was
    afterwards."""
    was = (message.accelerated(), message.values_accelerated(), message.check_accelerated())
    c_check()
    message.use_accelerator(True)
    yield
    message.use_accelerator(was[0], values=was[1], check=was[2])


def shape(value: Any) -> Any:
    """The value with its exact type, and its elements' for lists and tuples: a str
    subclass or a tuple for a list would compare equal."""
    if isinstance(value, list | tuple):
        return (type(value), [shape(v) for v in value])
    return (type(value), value)


def memos() -> list[list[tuple[str, Any]]]:
    return [list(memo._cache.items()) for memo in message._MEMOS]


def run(check: Check, data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, ...] | None:
    """What ``check`` makes of a message that tokenizes and has a good start line
    (None for the others: they never reach the checks)."""
    try:
        start, fields, values, duplicate, _ = message._scan(
            data, limits.max_headers, limits.max_line_length
        )
        headers = Headers._from_fields(fields)
        msg = message._parse_start_line(start, headers, limits)
    except SipError:
        return None
    try:
        check(msg, values, duplicate)
    except SipError as exc:
        return ("error", type(exc), exc.reason, exc.status_hint, exc.args, exc.headers)
    return ("ok", [(k, shape(v)) for k, v in headers._typed.items()])


def assert_same(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, ...] | None:
    """Both checks agree, from cold memos (and fill them alike) and from memos the
    other one filled; the reference outcome."""
    message.clear_parse_caches()
    expected = run(message._check_headers, data, limits)
    filled = memos()
    message.clear_parse_caches()
    assert run(c_check(), data, limits) == expected, data
    assert memos() == filled, data
    if expected is None:
        return None
    # Warm: each reads what the other remembered (the memo hits are shared), and
    # leaves the memos as the reference would have left them.
    assert run(message._check_headers, data, limits) == expected, data
    message.clear_parse_caches()
    run(message._check_headers, data, limits)
    run(message._check_headers, data, limits)
    twice = memos()
    message.clear_parse_caches()
    run(message._check_headers, data, limits)
    assert run(c_check(), data, limits) == expected, data
    assert memos() == twice, data
    return expected


def parsed(data: bytes) -> tuple[Any, ...]:
    try:
        msg = parse_message(data)
    except SipError as exc:
        return ("error", exc.reason, exc.status_hint)
    return (
        "ok",
        repr(msg),
        bytes(msg),
        msg.body,
        [(k, shape(v)) for k, v in msg.headers._typed.items()],
    )


def assert_same_parse(data: bytes) -> None:
    message.use_accelerator(True, check=False)
    try:
        reference = parsed(data)
    finally:
        message.use_accelerator(True)
    assert parsed(data) == reference, data


def kind(outcome: tuple[Any, ...] | None) -> str:
    if outcome is None:
        return "not checked"
    return "ok" if outcome[0] == "ok" else outcome[2]


# ------------------------------------------------------------------ corpus
def test_extension_is_built_and_in_use() -> None:
    check = c_check()
    assert message.check_accelerated()
    assert message._check_c == check
    # C stands in for the common parsers; Date and Retry-After stay in Python.
    handled = set(check.__self__.handled)
    assert {"via", "from", "to", "call-id", "cseq", "contact", "route"} <= handled
    assert handled < set(message._TYPED)


def test_corpus_both_paths_agree() -> None:
    outcomes = [assert_same(data) for data in CORPUS]
    assert sum(o is not None and o[0] == "ok" for o in outcomes) > 50
    for data in CORPUS:
        assert_same_parse(data)


def test_round_trips_agree() -> None:
    for data in CORPUS:
        try:
            msg = parse_message(data)
        except SipError:
            continue
        assert assert_same(bytes(msg)) is not None


def _with(data: bytes, *lines: str, drop: tuple[str, ...] = ()) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    kept = [
        line
        for line in head.decode().split("\r\n")
        if not any(line.lower().startswith(d.lower() + ":") for d in drop)
    ]
    return ("\r\n".join(kept[:1] + list(lines) + kept[1:])).encode() + sep + body


EDGES: list[tuple[str, ...]] = [
    ("Max-Forwards: 0",),
    ("Max-Forwards: 255",),
    ("Max-Forwards: 256",),
    ("Max-Forwards: 000000000070",),
    ("Max-Forwards: 0000000000070",),
    ("Max-Forwards: -1",),
    ("Max-Forwards: 7 0",),
    ("Max-Forwards: \u0667",),  # an Arabic-Indic digit: isdigit, not ASCII
    ("Max-Forwards: 70\\\x0b",),
    ("Max-Forwards: 70 \u00a0",),
    ("Max-Forwards: \u3000 70",),
    ("Max-Forwards:",),
    ("Expires: 4294967295",),
    ("Expires: 4294967296",),
    ("Expires: 999999999999",),
    ("Expires: 1000000000000",),
    ("Retry-After: 120 (lunch);duration=5",),
    ("Retry-After: x",),
    ("Retry-After: 1", "Retry-After: 2"),
    ("Date: Sat, 13 Nov 2010 23:29:00 GMT",),
    ("Date: Sat, 13 Nov 2010 23:29:00 GMT", "Date: yesterday"),
    ("Supported:",),
    ("Supported: ,, ,",),
    ("Supported: timer, 100rel", "k: path"),
    ("Supported: tim er",),
    ("Supported: é",),
    ("Require: a,b\u00a0",),
    ('Proxy-Require: "x"',),
    ("Unsupported: <a,b>",),
    ("Route: <sip:a@b;lr>, <sip:c@d>",),
    ("Route: <sip:a@b>, sip:c@d",),
    ("Route: sip:c@d, <sip:a@b>, ,",),
    ("Route: <sip:a@b>,",),
    ("Record-Route: sip:c@d",),
    ('Record-Route: "a, b" <sip:a@b>, <sip:x,y@z>',),
    ('Record-Route: "a, b <sip:a@b>, <sip:x@z>',),
    ("Record-Route: <sip:a@b, <sip:x@z>",),
    ("Route: <sip:a@b>\u2003,\u2003<sip:c@d>",),
    ("Contact: *",),
    ("Contact: *, <sip:a@b>",),
    ("Contact: <sip:a@b>, *",),
    ("Contact: *", "Contact: *"),
    ('m: <sip:a@b>;expires=5, "x\\"," <sip:c@d>',),
    ("Call-ID: a@b@c",),
    ("Call-ID: @b",),
    ("Call-ID: a@",),
    ("Call-ID: \u00a0x@y\u00a0",),
    ("Call-ID: a b",),
    ("Call-ID: é",),
    ('Call-ID: <{[x]}>:\\"/?@()',),
    ("Content-Type: application/sdp;charset=utf-8",),
    ("Content-Type: garbage",),
    ("Content-Length: 2147483648",),
    ("Content-Length: 99999999999999",),
    ("Via: SIP/2.0/UDP a;branch=z9hG4bKx,,SIP/2.0/UDP b",),
    ('Via: SIP/2.0/UDP a, "q,"',),
    ("v: ,",),
    ("CSeq: 1 NOTIFY",),
    ("CSeq: 1",),
    ("X-Other: a, b, , c",),
    ("Accept: a/b, , c/d",),
]


@pytest.mark.parametrize("base", ["INVITE", "OK_200"])
def test_edges_of_each_check(base: str) -> None:
    data: bytes = getattr(sipdata, base)
    seen: set[str] = set()
    for lines in EDGES:
        name = lines[0].split(":")[0]
        seen.add(kind(assert_same(_with(data, *lines))))
        seen.add(kind(assert_same(_with(data, *lines, drop=(name,)))))
        assert_same_parse(_with(data, *lines, drop=(name,)))
    for required in ("Via", "From", "To", "Call-ID", "CSeq"):
        seen.add(kind(assert_same(_with(data, drop=(required,)))))
    assert "ok" in seen and "missing via header" in seen
    assert "Contact * must stand alone" in seen


def test_split_agrees_with_split_list() -> None:
    split = c_check().__self__.split
    texts = [
        "",
        ",",
        " , ",
        "a",
        " a ",
        "a,b",
        'a,"b,c",d',
        '"unterminated, x',
        "<a,b>,c",
        "<a,b,c",
        '<a"b>,c',  # the regex path: a quote inside <> is text
        '"a\\",b",c',
        '"a\\',
        '"a\\"',
        "a>,b<,c",
        "\u00a0a\u00a0,\u2003b\x85",
        "é,ü\u3000,€",
        "\U0001f600,<\U0001f600,>",
    ]
    rng = random.Random(7118)
    for _ in range(20_000):
        texts.append("".join(rng.choice(' ,"<>\\a\u00a0\t') for _ in range(rng.randint(0, 12))))
    for text in texts:
        got = split(text)
        assert got == split_list(text), text
        assert all(type(part) is str for part in got)
    with pytest.raises(TypeError):
        split(b"a,b")


def test_switches_and_the_parsers_they_leave_to_python() -> None:
    # A parser swapped in _TYPED after the checker was made is called, not shadowed.
    calls: list[list[str]] = []

    def supported(values: list[str]) -> tuple[str, ...]:
        calls.append(values)
        return ("mine",)

    was = message._TYPED["supported"]
    message._TYPED["supported"] = supported
    try:
        data = _with(sipdata.OK_200, "Supported: a, b")
        assert parse_message(data).supported == ("mine",)
        assert calls == [["a", "b"]]
        assert "supported" not in c_check().__self__.handled
    finally:
        message._TYPED["supported"] = was
    assert "supported" in c_check().__self__.handled


def _append(data: bytes, *lines: str) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    return b"\r\n".join([head, *(line.encode() for line in lines)]) + sep + body


def test_many_distinct_and_repeated_headers_agree() -> None:
    """More fields than the C scanner and check keep on their stacks (48, 64),
    most of them distinct names and some repeated, after the typed ones: the same
    tokens, typed values and order as the references."""
    extra = [f"X-Extension-{i}: {i}" for i in range(90)]
    extra += [f"Record-Route: <sip:p{i}.example.com;lr>" for i in range(12)]
    extra += ["Supported: a, b", "Supported: c", "Require: d"]
    for base in (sipdata.INVITE, sipdata.OK_200):
        data = _append(base, *extra)
        assert scan_same(data)
        expected = assert_same(data)
        assert expected is not None and expected[0] == "ok", expected
        assert_same_parse(data)
        # A single header repeated past the first 64 fields.
        twice = _append(data, "Expires: 60", "X-Other: 1", "Expires: 60")
        assert not scan_same(twice)
        assert_same_parse(twice)
        assert parsed(twice)[1] == "expires must appear once"


def test_typed_values_already_there_are_kept() -> None:
    """A key whose typed value headers._typed already holds is not parsed again,
    on either path (the checker skips it as the reference does)."""
    start, fields, pairs, duplicate, _ = message._scan(sipdata.INVITE, 256, 8192)
    outcomes = []
    for check in (message._check_headers, c_check()):
        headers = Headers._from_fields(list(fields))
        msg = message._parse_start_line(start, headers, DEFAULT_LIMITS)
        headers._typed["user-agent"] = "kept"
        headers._typed["max-forwards"] = 7
        check(msg, pairs, duplicate)
        outcomes.append([(k, shape(v)) for k, v in headers._typed.items()])
    assert outcomes[0] == outcomes[1]
    assert dict(outcomes[1])["max-forwards"] == (int, 7)


def test_a_parser_that_changes_the_pairs_changes_nothing() -> None:
    """The C check owns what it reads: a Python parser that empties the list it
    was handed the pairs in leaves the check's results as the reference's."""
    start, fields, pairs, duplicate, _ = message._scan(
        _with(sipdata.OK_200, "Date: Sat, 13 Nov 2010 23:29:00 GMT"), 256, 8192
    )
    date = message._TYPED["date"]
    outcomes = []
    try:
        for check in (message._check_headers, c_check()):
            mine = list(pairs)

            def emptying(values: list[str], mine: list[str] = mine) -> Any:
                mine.clear()
                return date(values)

            message._TYPED["date"] = emptying
            headers = Headers._from_fields(list(fields))
            msg = message._parse_start_line(start, headers, DEFAULT_LIMITS)
            check(msg, mine, duplicate)
            assert mine == []
            outcomes.append([(k, shape(v)) for k, v in headers._typed.items()])
    finally:
        message._TYPED["date"] = date
    assert outcomes[0] == outcomes[1]
    assert "date" in dict(outcomes[1]) and "via" in dict(outcomes[1])


@pytest.mark.parametrize(
    "pairs",
    [{"via": ["x"]}, ("via", "x"), ["via"], ["via", b"x"], [1, "x"]],
    ids=["dict", "tuple", "odd", "bytes value", "int key"],
)
def test_pairs_of_the_wrong_shape_are_a_type_error(pairs: Any) -> None:
    start, fields, _, _, _ = message._scan(sipdata.OK_200, 256, 8192)
    msg = message._parse_start_line(start, Headers._from_fields(fields), DEFAULT_LIMITS)
    with pytest.raises(TypeError):
        c_check()(msg, pairs, None)


def test_memo_policy_is_shared() -> None:
    # A full memo starts over on the C path as on the Python one.
    memo = message._via
    was = memo._limit
    memo._limit = 3
    try:
        vias = [f"Via: SIP/2.0/UDP h{i};branch=z9hG4bK{i}" for i in range(7)]
        for i in range(len(vias)):
            assert_same(_with(sipdata.INVITE, *vias[: i + 1], drop=("Via",)))
        assert len(memo._cache) <= 3
    finally:
        memo._limit = was


# ------------------------------------------------------------------ random
_NAMES = (
    "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Max-Forwards",
    "Content-Length", "l", "Content-Type", "c", "Contact", "m", "Route", "Record-Route",
    "Expires", "Date", "Retry-After", "Require", "Proxy-Require", "Supported", "k",
    "Unsupported", "Accept", "X-Other",
)  # fmt: skip
_VALUES = (
    "", " ", "*", "0", "70", " 70 ", "255", "256", "4294967295", "4294967296",
    "000000000001", "0000000000001", "abc", "x@y", "x@y@z", "@x", "x@", "a b", "é",
    "replaces, timer", "replaces,,timer", ",", "<sip:a@b>, <sip:c@d>", "sip:a@b",
    "*, <sip:a@b>", "<sip:a@b>, *", '"a,b" <sip:x@y>, <sip:z@w>', "<sip:a,b@c>",
    '"unterminated, <sip:a@b>', "<sip:a@b, c", "1 INVITE", "1 BYE", "2 ACK",
    "SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/TCP [::1]:5060", "application/sdp",
    "Sat, 13 Nov 2010 23:29:00 GMT", "120 (x);duration=5", "\u00a0", "\u3000x\u3000",
)  # fmt: skip
_INSERTS = (
    ",", ", ", ",,", '"', "<", ">", "\\", " ", "\t", "\u00a0", "\u2003", "\x85", "\\\x0b",
    "\\\x1c", "@", ";", "*", "0", "9", "99999999999999", "-", "é", "<sip:a@b>", '"x,y"',
    "sip:x@h", ":", "/",
)  # fmt: skip
# Lines for the checks that need a name and a value to meet.
_LINES = (
    "Route: sip:a@b;lr", "Route: <sip:p@q;lr>", "Record-Route: <sip:a@b>, sip:c@d",
    "Contact: *", "m: *, <sip:a@b>", "Contact: <sip:a@b>;expires=0", "Expires: 0",
    "Supported: timer, 100rel", "Require: 100rel", "Max-Forwards: 70",
)  # fmt: skip
_METHODS = ("INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "invite")


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Edits of the header lines that mostly still tokenize, aimed at the checks."""
    head, sep, body = data.partition(b"\r\n\r\n")
    try:
        lines = head.decode().split("\r\n")
    except UnicodeDecodeError:
        return data
    for _ in range(rng.randint(1, 3)):
        # Weighted: edits of values most, repeats (mostly a refused single header) least.
        op = rng.choice((0, 0, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8, 9))
        i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
        line = lines[i]
        name, colon, value = line.partition(":")
        if op in (0, 1) and colon:  # edit a value
            pos = rng.randint(0, len(value))
            value = value[:pos] + rng.choice(_INSERTS) + value[pos:]
            lines[i] = f"{name}:{value}"
        elif op == 2 and colon:  # replace a value
            lines[i] = f"{name}: {rng.choice(_VALUES)}"
        elif op == 3 and colon:  # another typed name for this value
            lines[i] = f"{rng.choice(_NAMES)}:{value}"
        elif op == 4:  # repeat a line
            lines.insert(i, line)
        elif op == 5 and len(lines) > 2:  # drop a line
            del lines[i]
        elif op == 6:  # a new line
            lines.insert(i, f"{rng.choice(_NAMES)}: {rng.choice(_VALUES)}")
        elif op == 7 and lines and " " in lines[0] and not lines[0].startswith("SIP/"):
            lines[0] = rng.choice(_METHODS) + lines[0][lines[0].index(" ") :]
        elif op == 8 and colon:  # join values into one comma list
            lines[i] = f"{name}: {value.strip()}, {rng.choice(_VALUES)}"
        elif op == 9:
            lines.insert(i, rng.choice(_LINES))
    return "\r\n".join(lines).encode() + sep + body


def checked_bases() -> list[bytes]:
    """The corpus messages that reach the checks (tokenize, good start line)."""
    return [d for d in CORPUS if len(d) < 4000 and run(message._check_headers, d) is not None]


def random_cases(seed: int, cases: int, seconds: float) -> tuple[int, dict[str, int]]:
    """Mutations checked both ways (assert_same); (cases done, outcomes by kind)."""
    rng = random.Random(seed)
    bases = checked_bases()
    deadline = time.monotonic() + seconds
    outcomes: dict[str, int] = {}
    done = 0
    for done in range(1, cases + 1):  # noqa: B007 (done is returned)
        data = mutate(rng, rng.choice(bases))
        if rng.random() < 0.1:
            data = mutate_bytes(rng, data)
        outcome = assert_same(data)
        outcomes[kind(outcome)] = outcomes.get(kind(outcome), 0) + 1
        if time.monotonic() > deadline:
            break
    return done, outcomes


def test_random_mutations_agree() -> None:
    seed = int(os.environ.get("SIP_CHECK_SEED", "3261"))
    done, outcomes = random_cases(seed, RANDOM_CASES, RANDOM_SECONDS)
    assert done == RANDOM_CASES, f"only {done} cases in {RANDOM_SECONDS} s"
    # The mutations reach every check, and plenty still pass them.
    assert outcomes.get("ok", 0) > 1500, outcomes
    for reason in (
        "from must appear once",
        "missing via header",
        "empty Via element",
        "malformed Max-Forwards",
        "Max-Forwards out of range",
        "malformed Call-ID",
        "Route and Record-Route values need <>",
        "Contact * must stand alone",
        "malformed Supported",
        "CSeq method does not match the request method",
    ):
        assert outcomes.get(reason, 0) >= 10, (reason, outcomes)


def test_whole_parse_agrees_on_random_mutations() -> None:
    rng = random.Random(4475)
    bases = checked_bases()
    for _ in range(2000):
        assert_same_parse(mutate(rng, rng.choice(bases)))


# ------------------------------------------------------------------ switches
def test_environment_switches() -> None:
    code = (
        "from sip import message as m; "
        "print(m.accelerated(), m.values_accelerated(), m.check_accelerated())"
    )
    clean = {
        "SIPEDGE_PURE_PYTHON": "",
        "SIPEDGE_PURE_PYTHON_VALUES": "",
        "SIPEDGE_PURE_PYTHON_CHECK": "",
    }
    assert python_output(code, **clean) == "True True True"
    assert python_output(code, **{**clean, "SIPEDGE_PURE_PYTHON": "1"}) == "False False False"
    assert python_output(code, **{**clean, "SIPEDGE_PURE_PYTHON_CHECK": "1"}) == "True True False"
    assert python_output(code, **{**clean, "SIPEDGE_PURE_PYTHON_VALUES": "1"}) == "True False True"
