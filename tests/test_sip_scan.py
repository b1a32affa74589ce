"""The C SIP tokenizer (media/sipscan.c) against its Python reference (sip.message._scan).

Invariant: for any bytes and limits, both give equal results (start line; each
field's name, key, value and raw text; the flat list of keys and values; the first
repeated single header; the body offset) or raise the same SipError (reason and status).  The
inputs are every message the other tests parse (RFC 4475 and RFC 5118 archives,
tests/sipdata.py, the literals of the parser tests) and seeded random mutations
of them, and parse_message as a whole must agree on each.

A missing extension fails these tests: build it with ``make install``.
"""

from __future__ import annotations

import ast
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.sipdata as sipdata
from sip import _compiled, message
from sip.errors import SipError
from sip.message import COMPACT_FORMS, SINGLE_HEADERS, HeaderField, Limits, parse_message
from tests.peers import c_part, python_output

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# Test files whose message literals join the corpus.
SOURCES = (
    "test_message.py",
    "test_rfc4475.py",
    "test_rfc5118.py",
    "test_framing.py",
    "test_properties.py",
    "test_transaction.py",
    "test_proxy.py",
    "test_admission.py",
    "test_wss.py",
    "test_auth_headers.py",
    "test_multipart.py",
)
LIMITS = (Limits(), Limits(max_headers=8, max_line_length=60), Limits(max_line_length=20))
RANDOM_CASES = 20_000


def c_scan() -> Callable[..., Any]:
    return c_part("SipScanner", message._load_scanner)


@pytest.fixture(autouse=True)
def accelerated() -> Iterator[None]:
    """parse_message on the C scanner during each test (whatever SIPEDGE_PURE_PYTHON
    says), as it was afterwards."""
    was = message.accelerated()
    c_scan()
    message.use_accelerator(True)
    yield
    message.use_accelerator(was)


def outcome(scan: Callable[..., Any], data: bytes, limits: Limits) -> tuple[Any, ...]:
    try:
        start, fields, pairs, duplicate, body = scan(
            data, limits.max_headers, limits.max_line_length
        )
    except SipError as exc:
        return ("error", type(exc), exc.reason, exc.status_hint, exc.args)
    # Exact types too: a str subclass or a look-alike field would compare equal.
    for f in fields:
        assert type(f) is HeaderField
        assert all(type(x) is str for x in (f.name, f.key, f.value, f.raw))
    assert type(start) is str and type(body) is int
    assert duplicate is None or type(duplicate) is str
    assert type(pairs) is list and all(type(x) is str for x in pairs)
    assert pairs == [x for f in fields for x in (f.key, f.value)]
    return (
        "ok",
        start,
        [(f.name, f.key, f.value, f.raw) for f in fields],
        pairs,
        duplicate,
        body,
    )


def parsed(data: bytes, limits: Limits) -> tuple[Any, ...]:
    try:
        msg = parse_message(data, limits)
    except SipError as exc:
        return ("error", exc.reason, exc.status_hint)
    return ("ok", repr(msg), bytes(msg), msg.body)


def assert_same(data: bytes, limits: Limits = LIMITS[0]) -> bool:
    """Both tokenizers and both whole parses agree; True if the message parsed."""
    expected = outcome(message._scan, data, limits)
    assert outcome(c_scan(), data, limits) == expected, data
    message.use_accelerator(False)
    try:
        reference = parsed(data, limits)
    finally:
        assert message.use_accelerator(True)
    assert parsed(data, limits) == reference, data
    return reference[0] == "ok"


# ------------------------------------------------------------------ corpus
def _literals(path: Path, namespace: dict[str, Any]) -> Iterator[bytes]:
    """Message-like bytes a test file spells out: bytes literals, build(...) calls,
    edits (``INVITE.replace(...)``, ``+``, joins) and the arguments of parse_message
    that evaluate with constants alone (the rest fail to evaluate and are skipped)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_message":
            candidates: list[ast.expr] = node.args[:1]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, bytes)) or (
            isinstance(node, ast.BinOp | ast.Call | ast.Subscript)
        ):
            candidates = [node]
        else:
            continue
        for expr in candidates:
            try:
                code = compile(ast.Expression(expr), str(path), "eval")
                value = eval(code, dict(namespace))
            except Exception:
                continue
            if isinstance(value, bytes) and b"\r\n" in value:
                yield value


def corpus() -> list[bytes]:
    found: dict[bytes, None] = {}
    for folder in ("data/rfc4475/valid", "data/rfc4475/invalid", "data/rfc5118"):
        for path in sorted((TESTS / folder).glob("*.dat")):
            found[path.read_bytes()] = None
    namespace = {k: v for k, v in vars(sipdata).items() if not k.startswith("__")}
    # Evaluating a test's expression must not reach anything but these.
    namespace["__builtins__"] = {"len": len, "str": str, "bytes": bytes, "range": range}
    for value in namespace.values():
        if isinstance(value, bytes):
            found[value] = None
    for name in SOURCES:
        for value in _literals(TESTS / name, namespace):
            found[value] = None
    return list(found)


CORPUS = corpus()


def test_extension_is_built_and_in_use() -> None:
    c_scan()
    assert message.accelerated()
    assert message._scan_c is not None
    # Writing HeaderField's slots directly needs a plain __slots__ class; compiled
    # (sip/_compiled.py), HeaderField is a mypyc class and C calls its constructor.
    direct = message._scan_c.__self__.direct  # type: ignore[attr-defined]
    assert direct is not _compiled.in_use("sip.message")


def test_corpus_is_the_other_tests_messages() -> None:
    # 49 RFC 4475 messages + 12 RFC 5118 + sipdata + the tests' literals.
    assert len(CORPUS) > 120


@pytest.mark.parametrize("limits", LIMITS, ids=["default", "small", "short-lines"])
def test_corpus_both_paths_agree(limits: Limits) -> None:
    ok = sum(assert_same(data, limits) for data in CORPUS)
    if limits == Limits():
        assert ok > 50  # a good part of the corpus is valid messages


def test_round_trips_agree() -> None:
    # What the proxy parses most: messages it wrote itself.
    for data in CORPUS:
        try:
            msg = parse_message(data)
        except SipError:
            continue
        assert_same(bytes(msg))


def test_header_name_characters() -> None:
    # Every byte inside, before and after a header name: the token set of
    # sip._abnf.TOKEN and the rules around the colon.
    base = sipdata.OK_200
    for c in range(256):
        ch = bytes([c])
        for name in (b"X" + ch + b"Y", ch + b"Y", b"X" + ch, ch):
            assert_same(base.replace(b"Contact:", name + b":", 1))
            assert_same(base.replace(b"Contact:", name + b" :", 1))


def test_every_byte_in_a_value_and_the_start_line() -> None:
    # The C side classifies the head's bytes by a table: every entry of it, plain
    # and after a backslash, in a value, at the end of a value and in the start line.
    base = sipdata.OK_200
    for c in range(256):
        ch = bytes([c])
        for value in (b"a" + ch + b"b", b"a\\" + ch + b"b", b"a" + ch):
            assert_same(base.replace(b"Contact:", b"Subject: " + value + b"\r\nContact:", 1))
        assert_same(base.replace(b"200 OK", b"200 O" + ch + b"K", 1))


def test_compact_forms_and_case() -> None:
    for letter in "abcdefghijklmnopqrstuvwxyz":
        for name in (letter, letter.upper()):
            data = sipdata.OK_200.replace(b"Contact:", name.encode() + b":", 1)
            assert_same(data)
    for name in ("VIA", "via", "Via", "vIa", "CALL-ID", "Call-Id", "content-LENGTH"):
        assert_same(sipdata.OK_200.replace(b"Via:", name.encode() + b":", 1))
    # The table C uses is the one passed in: a compact form that is not single.
    scan = c_scan()
    fields = scan(sipdata.OK_200.replace(b"Contact:", b"M:", 1), 256, 8192)[1]
    assert [f.key for f in fields if f.name == "M"] == [COMPACT_FORMS["m"]]


def test_folding_whitespace_and_ctl() -> None:
    cases = [
        b"Subject: a\r\n b\r\n\tc",
        b"Subject:\r\n b",
        b"Subject: \r\n \r\n\t\r\n x",
        b"Subject:   \t",
        b"Subject: a \t\r\n  \t",
        b"Subject: \\\x01 x",
        b"Subject: \\\\\x01 x",
        b"Subject: \x01",
        b"Subject: \\\x00\\\x7f\\\x0b",
        b"Subject: \\\r\n x",
        b"Subject: \xc3\xa9t\xc3\xa9\r\n \xe2\x82\xac",
        b"Subject: \xc3",
        b"Subject: \xed\xa0\x80",  # a surrogate: not UTF-8 for Python
        b"Subject: \xf4\x90\x80\x80",  # beyond U+10FFFF
        b"Subject: \xc0\xaf",  # overlong
        b" Subject: x",
        b"\tSubject: x",
        b": x",
        b"Subject x",
        b"Sub ject: x",
        b"Subject\t \t: x",
        b"Subject: a\rb",
        b"Subject: a\nb",
        b"Call-ID: again",
        b"Contact: <sip:x@y>",
    ]
    for extra in cases:
        data = sipdata.OK_200.replace(b"Content-Length: 0", extra + b"\r\nContent-Length: 0")
        assert_same(data)
        first = sipdata.OK_200.replace(
            b"SIP/2.0 200 OK\r\n", b"SIP/2.0 200 OK\r\n" + extra + b"\r\n"
        )
        assert_same(first)


def test_framing_edges() -> None:
    for data in (
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
        b"\r\n\r\nX\r\n\r\n",
        b"X\r\n\r\n",
        b"X\r\r\n\r\n",
        b"X\r\n\r\r\n\r\n",
        b"X\r\n\r\n\r\n",
        b"\n\r\n\r\n",
        b"\r\nINVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n\r",
        b"INVITE sip:a@b SIP/2.0\r\n\r\n",
        b"\xff\r\n\r\n",
        sipdata.INVITE[:-1],
        b"\r\n" * 5 + sipdata.INVITE,
    ):
        assert_same(data)


def test_every_odd_byte_at_every_offset_of_a_word() -> None:
    """The scanner tests eight bytes at a time and falls back to one at a time: a
    control byte, DEL, a non-ASCII byte or a lone CR/LF is caught wherever it sits
    in its word, in the last short stretch too, and a backslash before a control
    byte is looked at across a word boundary."""
    base = sipdata.OK_200
    start = base.index(b"Contact:")
    for bad in (
        b"\x00",
        b"\x01",
        b"\x1f",
        b"\x7f",
        b"\x80",
        b"\xff",
        b"\r",
        b"\n",
        b"\t",
        b"\\\x01",
    ):
        for offset in range(start, start + 20):
            assert_same(base[:offset] + bad + base[offset:])
        # In the last bytes before the empty line (less than a word left).
        end = base.index(b"\r\n\r\n")
        for back in range(1, 9):
            assert_same(base[: end - back] + bad + base[end - back :])


def test_limits() -> None:
    lines = [f"X-H{i}: {i}" for i in range(300)]
    data = sipdata.build("OPTIONS sip:a@b SIP/2.0", *lines)
    for max_headers in (0, 1, 299, 300, 301):
        for max_line in (0, 5, 7, 8, 10_000):
            assert_same(data, Limits(max_headers=max_headers, max_line_length=max_line))
    # The line limit counts characters, not bytes.
    long = sipdata.OK_200.replace(b"Content-Length: 0", ("Subject: " + "é" * 20).encode())
    for max_line in (28, 29, 30, 48, 49):
        assert_same(long, Limits(max_line_length=max_line))


def test_name_cache_is_bounded_and_transparent() -> None:
    scanner = c_scan().__self__  # type: ignore[attr-defined]
    for i in range(3000):
        data = sipdata.OK_200.replace(b"Contact:", f"X-Name-{i}:".encode(), 1)
        assert_same(data)
    assert scanner.cached_names <= 1024
    long = "X-" + "n" * 200
    assert_same(sipdata.OK_200.replace(b"Contact:", long.encode() + b":", 1))


def fresh_scanner() -> Any:
    from media._srtp import SipScanner

    c_scan()
    return SipScanner(
        HeaderField, SipError, COMPACT_FORMS, SINGLE_HEADERS, factory=message._new_field
    )


def test_a_repeated_line_gets_the_field_built_for_it_before() -> None:
    scanner = fresh_scanner()
    first = scanner.scan(sipdata.INVITE, 256, 8192)
    assert scanner.line_hits == 0
    second = scanner.scan(sipdata.INVITE, 256, 8192)
    want = outcome(message._scan, sipdata.INVITE, Limits())
    assert outcome(lambda *a: second, sipdata.INVITE, Limits()) == want
    assert scanner.line_hits == len(first[1])
    assert all(a is b for a, b in zip(first[1], second[1], strict=True))
    # The values the checker reads are the fields' own strings.
    assert all(v is f.value for v, f in zip(second[2][1::2], second[1], strict=True))
    # One changed line: only that field is new.
    changed = sipdata.INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 2 INVITE")
    assert changed != sipdata.INVITE
    third = scanner.scan(changed, 256, 8192)
    fresh = [f for f in third[1] if not any(f is g for g in first[1])]
    assert [f.key for f in fresh] == ["cseq"]
    assert fresh[0].value == "2 INVITE"


def test_the_line_cache_stays_transparent() -> None:
    """Lines that evict each other, long, folded and non-ASCII ones: every scan
    still equals the Python reference, and only plain lines are cached."""
    scanner = fresh_scanner()

    def same(data: bytes) -> None:
        for limits in LIMITS:
            assert outcome(scanner.scan, data, limits) == outcome(message._scan, data, limits)

    # Several times the cache's 1024 slots of distinct lines, then the first ones
    # again: each slot was overwritten many times over.
    variants = [
        sipdata.OK_200.replace(b"Content-Length: 0", f"X-Line: {i}\r\nContent-Length: 0".encode())
        for i in range(5000)
    ]
    for data in variants + variants[:50]:
        same(data)
    # A line longer than the cache takes, a folded one and a message with UTF-8:
    # scanned right, twice, and never served from the cache.
    long = sipdata.OK_200.replace(
        b"Content-Length: 0", b"Subject: " + b"x" * 300 + b"\r\nContent-Length: 0"
    )
    folded = sipdata.OK_200.replace(b"Content-Length: 0", b"Subject: a\r\n b\r\nContent-Length: 0")
    utf8 = sipdata.OK_200.replace(b"Content-Length: 0", "Subject: é\r\nContent-Length: 0".encode())
    for data in (long, folded, utf8):
        same(data)
        hits = scanner.line_hits
        fields = scanner.scan(data, 256, 8192)[1]
        served = scanner.line_hits - hits
        subject = next(f for f in fields if f.key == "subject")
        again = next(f for f in scanner.scan(data, 256, 8192)[1] if f.key == "subject")
        assert again is not subject and again.value == subject.value
        if data is utf8:
            assert served == 0  # a message with any non-ASCII byte is not cached at all
        else:
            assert served == len(fields) - 1  # all but the Subject line


def test_calling_the_type_gives_the_same_fields() -> None:
    from media._srtp import SipScanner

    c_scan()
    slow = SipScanner(HeaderField, SipError, COMPACT_FORMS, SINGLE_HEADERS, direct=False)
    assert not slow.direct
    for data in CORPUS:
        for limits in LIMITS:
            got = outcome(slow.scan, data, limits)
            assert got == outcome(message._scan, data, limits)


def test_a_factory_makes_the_same_fields() -> None:
    from media._srtp import SipScanner

    c_scan()
    made: list[str] = []

    def factory(name: str, key: str, value: str, raw: str | None) -> HeaderField:
        made.append(key)
        return HeaderField(name, key, value, raw)

    scanner = SipScanner(
        HeaderField, SipError, COMPACT_FORMS, SINGLE_HEADERS, direct=False, factory=factory
    )
    for data in CORPUS:
        assert outcome(scanner.scan, data, Limits()) == outcome(message._scan, data, Limits())
    assert "call-id" in made
    with pytest.raises(TypeError, match="factory"):
        SipScanner(HeaderField, SipError, COMPACT_FORMS, SINGLE_HEADERS, factory=42)  # type: ignore[arg-type]


def test_scanner_reads_any_buffer() -> None:
    scan = c_scan()
    want = outcome(scan, sipdata.INVITE, Limits())
    assert outcome(scan, bytearray(sipdata.INVITE), Limits()) == want
    assert outcome(scan, memoryview(sipdata.INVITE), Limits()) == want
    with pytest.raises(TypeError):
        scan("INVITE", 256, 8192)


# ------------------------------------------------------------------ random
_INSERTS = (
    b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b"\x01", b"\x0b", b"\x1f", b"\x7f", b"\\",
    b"\\\x00", b" ", b"\t", b"\r\n ", b"\r\n\t", b":", b"::", b",", b";", b"\xc3\xa9",
    b"\xe2\x82\xac", b"\xc3", b"\xff", b"\xed\xa0\x80", b"\"", b"<", b">",
)  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        # Weighted: inserts most, truncation least (it mostly loses the empty line).
        op = rng.choice((0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8))
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op in (1, 2):
            buf[pos:pos] = rng.choice(_INSERTS)
        elif op == 3:  # truncate, mostly in the body
            del buf[max(pos, rng.randint(0, len(buf))) :]
        elif op == 4 and buf:  # delete a few bytes
            del buf[pos : pos + rng.randint(1, 4)]
        elif op == 5:  # duplicate a line
            lines = bytes(buf).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            buf = bytearray(b"\r\n".join(lines))
        elif op == 6:  # a long line
            buf[pos:pos] = rng.choice((b"x", b" ", b"\xc3\xa9", b"a\\\x01")) * rng.randint(10, 3000)
        elif op == 7:  # many headers
            line = rng.choice((b"X-A: b\r\n", b"v: SIP/2.0/UDP h\r\n", b"i: x\r\n", b"A:\r\n"))
            head = bytes(buf).find(b"\r\n") + 2
            buf[head:head] = line * rng.randint(1, 300)
        else:  # CRLF padding in front
            buf[0:0] = b"\r\n" * rng.randint(1, 3)
    return bytes(buf)


def test_random_mutations_agree() -> None:
    rng = random.Random(int(os.environ.get("SIP_SCAN_SEED", "4475")))
    bases = [d for d in CORPUS if len(d) < 4000 and b"\r\n\r\n" in d]
    limits = (*LIMITS, Limits(max_headers=3, max_line_length=30))
    outcomes: dict[str, int] = {}
    for _ in range(RANDOM_CASES):
        data = mutate(rng, rng.choice(bases))
        lim = rng.choice(limits)
        expected = outcome(message._scan, data, lim)
        got = outcome(c_scan(), data, lim)
        assert got == expected, (data, lim)
        kind = expected[0] if expected[0] == "ok" else expected[2]
        outcomes[kind] = outcomes.get(kind, 0) + 1
    # The mutations reach every check, and plenty still tokenize.
    for reason in (
        "ok",
        "no empty line after the headers",
        "headers are not UTF-8",
        "bare CR or LF in the headers",
        "control character in the headers",
        "too many header lines",
        "header line too long",
        "folded line before the first header",
        "header line without a colon",
        "malformed header name",
    ):
        assert outcomes.get(reason, 0) >= 10, (reason, outcomes)


def test_whole_parse_agrees_on_random_mutations() -> None:
    rng = random.Random(5118)
    bases = [d for d in CORPUS if len(d) < 4000 and b"\r\n\r\n" in d]
    for _ in range(2000):
        assert_same(mutate(rng, rng.choice(bases)))


# ------------------------------------------------------------------ switches
def test_pure_python_switch() -> None:
    code = "from sip import message; print(message.accelerated())"
    assert python_output(code, SIPEDGE_PURE_PYTHON="1") == "False"
    assert python_output(code, SIPEDGE_PURE_PYTHON="") == "True"


def test_sip_works_without_the_extension() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'media._srtp': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sip import message\n"
        "from tests.sipdata import INVITE\n"
        "assert not message.use_accelerator(True)\n"
        "print(message.accelerated(), message.parse_message(INVITE).method)\n"
    )
    assert python_output(code) == "False INVITE"


def test_sip_join_gives_the_bytes_of_the_python_expression() -> None:
    """media._srtp.sip_join, serialize's last step, against the expression it
    replaces: ASCII (its own path), UTF-8, a str subclass, and the same error for
    a lone surrogate."""
    c_scan()  # fails the test, saying what to run, without the extension
    import media._srtp

    join = message._load_join()
    assert join is media._srtp.sip_join
    assert message._join_c is join  # serialize uses it with the C paths on

    class Text(str):
        pass

    rng = random.Random(5)
    alphabet = ["a", "Z", ":", " ", "\r\n", "é", "😀", "\t"]
    cases: list[tuple[list[str], bytes]] = [([], b""), ([], b"body"), (["\r\n"], b"")]
    cases += [([Text("x"), "y"], b"z"), (["SIP/2.0 200 OK", "Via: a", "\r\n"], b"v=0\r\n")]
    for _ in range(300):
        lines = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 6))
        ]
        cases.append((lines, rng.randbytes(rng.randint(0, 20))))
    for lines, body in cases:
        got = join(lines, body)
        assert type(got) is bytes
        assert got == "\r\n".join(lines).encode() + body, (lines, body)
    with pytest.raises(UnicodeEncodeError):
        join(["ok", "\udc80"], b"")
    with pytest.raises(TypeError):
        join(("a",), b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        join(["a"], "body")  # type: ignore[arg-type]


def test_the_first_repeated_single_header_past_many_single_names() -> None:
    """A scanner told of more single headers than it keeps apart (16) still names
    the first one repeated, as _pairs would with those names single."""
    c_scan()  # fails the test, saying what to run, without the extension
    from media._srtp import SipScanner

    names = [f"x-{i}" for i in range(20)]
    scanner = SipScanner(
        HeaderField, SipError, COMPACT_FORMS, frozenset(names), factory=message._new_field
    )
    for repeat in ("x-0", "x-17", "x-19"):
        lines = [f"{n}: v" for n in names] + ["Via: SIP/2.0/UDP h", f"{repeat}: again"]
        data = ("OPTIONS sip:a@b SIP/2.0\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
        _, fields, pairs, duplicate, _ = scanner.scan(data, 256, 8192)
        assert duplicate == repeat
        assert pairs == [x for f in fields for x in (f.key, f.value)]
    data = ("OPTIONS sip:a@b SIP/2.0\r\n" + "".join(f"{n}: v\r\n" for n in names) + "\r\n").encode()
    assert scanner.scan(data, 256, 8192)[3] is None
