"""JSON log lines: format, redaction of credentials, rate limiting of floods."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from edge.log import REDACTED, Logger, is_secret_name, redact, redact_text


class Clock:
    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_line_format() -> None:
    out = io.StringIO()
    log = Logger(out, clock=Clock(1_700_000_000.25))
    log("info", "ready", udp=["127.0.0.1:5060"], n=3, ok=True, none=None)
    (record,) = lines(out)
    assert list(record)[:3] == ["ts", "level", "event"]
    assert record == {
        "ts": "2023-11-14T22:13:20.250Z",
        "level": "info",
        "event": "ready",
        "udp": ["127.0.0.1:5060"],
        "n": 3,
        "ok": True,
        "none": None,
    }
    assert out.getvalue().count("\n") == 1


def test_timestamp_shape_with_real_clock() -> None:
    out = io.StringIO()
    Logger(out)("info", "x")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines(out)[0]["ts"])


def test_one_line_whatever_the_fields() -> None:
    out = io.StringIO()
    log = Logger(out)
    log("warning", "odd", text="a\r\nb\nc", raw=b"\x00\xffSIP", path=io, exc=ValueError("x"))
    (record,) = lines(out)
    assert record["text"] == "a\r\nb\nc"
    assert record["exc"] == "x"
    assert "SIP" in record["raw"]


def test_fields_cannot_overwrite_the_header() -> None:
    out = io.StringIO()
    Logger(out)("info", "real", ts="fake", level="fake")
    record = lines(out)[0]
    assert record["event"] == "real"
    assert record["level"] == "info"
    assert record["ts"] != "fake"


def test_level_filter() -> None:
    out = io.StringIO()
    log = Logger(out, level="warning")
    log("debug", "a")
    log("info", "b")
    log("warning", "c")
    log("error", "d")
    assert [r["event"] for r in lines(out)] == ["c", "d"]
    with pytest.raises(ValueError):
        Logger(level="loud")


def test_writes_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    Logger()("info", "hello")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "hello"
    assert captured.err == ""


def test_broken_stream_does_not_raise() -> None:
    out = io.StringIO()
    out.close()
    Logger(out)("error", "nobody listens")


# ---------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "Password",
        "sip_password",
        "authorization",
        "Authorization",
        "Proxy-Authorization",
        "proxy_authorization",
        "token",
        "api_token",
        "jwt-token",
        "key",
        "tls_key",
        "private_key",
        "apikey",
        "secret",
        "client_secret",
        "key_pem",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)
    assert redact("anything", name) == REDACTED


@pytest.mark.parametrize(
    "name",
    ["keepalive", "monkey", "tokens_left", "event", "call_id", "source", "key_path", "setting"],
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)
    assert redact("value", name) == "value"


def test_empty_secret_fields_stay_empty() -> None:
    # "no password given" is worth seeing as such.
    assert redact("", "password") == ""
    assert redact(None, "password") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A SIP message with credentials (RFC 3261 §20.7, §20.28).
        (
            "INVITE sip:bob@example.com SIP/2.0\r\n"
            'Authorization: Digest username="alice", realm="x", response="6629fae4"\r\n'
            'Proxy-Authorization: Digest username="alice", response="abc"\r\n'
            "Call-ID: 1@x\r\n",
            "INVITE sip:bob@example.com SIP/2.0\r\n"
            "Authorization: [redacted]\r\n"
            "Proxy-Authorization: [redacted]\r\n"
            "Call-ID: 1@x\r\n",
        ),
        ("authorization:Digest x", "authorization: [redacted]"),
        (
            'Digest username="alice", realm="x", response="6629fae4"',
            'Digest username="alice", realm="x", response=[redacted]',
        ),
        (
            "sip:alice:s3cret@example.com;transport=tls",
            "sip:alice:[redacted]@example.com;transport=tls",
        ),
        ("<sips:bob:pw@10.0.0.1:5061>", "<sips:bob:[redacted]@10.0.0.1:5061>"),
        ("password=hunter2&user=bob", "password=[redacted]&user=bob"),
        ('{"token": "abcd1234"}', '{"token": [redacted]}'),
        ("api_key: ZXhhbXBsZQ", "api_key: [redacted]"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "Bearer [redacted]"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln here", "jwt [redacted] here"),
        ("Basic YWxpY2U6c2VjcmV0", "Basic [redacted]"),
        (
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\ntail",
            "[redacted]\ntail",
        ),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com:5060;transport=tls",
        "sip:10.0.0.1:5060;transport=udp",
        "<sip:10.0.0.1:5060;lr>, <sip:bob@10.0.0.2>",
        "SIP/2.0 401 Unauthorized",
        'WWW-Authenticate: Digest realm="x", nonce="abc"',
        "no response from upstream",
        "basic checks passed",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "upstream pbx target 10.0.0.5:5060 down",
    ],
)
def test_redact_text_leaves_ordinary_text(text: str) -> None:
    assert redact_text(text) == text


def test_redact_walks_structures() -> None:
    value = {
        "headers": {"Authorization": "Digest x", "Call-ID": "1@x"},
        "list": ["password=x", 5, {"token": "t"}],
        "raw": b"Proxy-Authorization: Digest y\r\n",
        "n": 7,
    }
    assert redact(value) == {
        "headers": {"Authorization": REDACTED, "Call-ID": "1@x"},
        "list": ["password=[redacted]", 5, {"token": REDACTED}],
        "raw": "Proxy-Authorization: [redacted]\r\n",
        "n": 7,
    }


def test_logger_redacts() -> None:
    out = io.StringIO()
    Logger(out)(
        "info",
        "request",
        password="hunter2",
        message="REGISTER sip:x SIP/2.0\r\nAuthorization: Digest response=1\r\n",
        uri="sip:a:pw@h",
    )
    text = out.getvalue()
    assert "hunter2" not in text
    assert "response=1" not in text
    assert ":pw@" not in text
    record = lines(out)[0]
    assert record["password"] == REDACTED


# ---------------------------------------------------------------- rate limiting


def test_log_limited_per_key_per_second() -> None:
    out = io.StringIO()
    mono = Clock(100.0)
    log = Logger(out, limit=3, monotonic=mono)
    written = [log.log_limited("bad:10.0.0.1", "warning", "malformed", n=i) for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    # Another key has its own budget.
    assert log.log_limited("bad:10.0.0.2", "warning", "malformed", n=99)
    mono.now = 100.9  # same second
    assert not log.log_limited("bad:10.0.0.1", "warning", "malformed", n=10)
    mono.now = 101.0  # next second: the first line says what was left out
    assert log.log_limited("bad:10.0.0.1", "warning", "malformed", n=11)
    records = lines(out)
    assert [r["n"] for r in records] == [0, 1, 2, 99, 11]
    assert records[-1]["suppressed"] == 8
    assert "suppressed" not in records[0]
    assert log.log_limited("bad:10.0.0.1", "warning", "malformed", n=12)
    assert "suppressed" not in lines(out)[-1]


def test_log_limited_respects_level() -> None:
    out = io.StringIO()
    log = Logger(out, level="error")
    assert not log.log_limited("k", "info", "x")
    assert out.getvalue() == ""


def test_flush_suppressed_reports_quiet_floods() -> None:
    out = io.StringIO()
    mono = Clock(100.0)
    log = Logger(out, limit=1, monotonic=mono)
    for _ in range(5):
        log.log_limited("flood", "warning", "malformed")
    log.flush_suppressed()  # same second: the window is still open
    assert len(lines(out)) == 1
    mono.now = 102.0
    log.flush_suppressed()
    records = lines(out)
    assert records[-1]["event"] == "log_suppressed"
    assert records[-1]["topic"] == "flood"
    assert records[-1]["suppressed"] == 4
    log.flush_suppressed()
    assert len(lines(out)) == 2  # reported once


def test_log_limited_table_is_bounded() -> None:
    out = io.StringIO()
    mono = Clock(100.0)
    log = Logger(out, limit=1, monotonic=mono, max_keys=100)
    for i in range(1000):
        log.log_limited(f"source-{i}", "warning", "malformed")
        log.log_limited(f"source-{i}", "warning", "malformed")  # suppressed
    assert len(log._windows) <= 100
    # What was dropped with the table is reported, not silently lost.
    dropped = [r for r in lines(out) if r["event"] == "log_suppressed"]
    assert dropped and all(r["topic"] == "*" for r in dropped)
