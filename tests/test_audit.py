"""The audit log: reference format, redaction, files and rotation, flood caps, failures,
batched writes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge import audit
from edge.audit import (
    AUTH_FAILURE,
    AUTH_SUCCESS,
    BAN_ADDED,
    CALL_CREATED,
    CALL_ENDED,
    RESOURCE_CALL,
    SCANNER_DROPPED,
    SUPPRESSED,
    WRITE_FAILED,
    AuditLog,
    call_resource_id,
)
from edge.log import REDACTED, redact_text

FIELDS = [
    "timestamp",
    "event_type",
    "customer_id",
    "agent_id",
    "resource_type",
    "resource_id",
    "action",
    "source_ip",
    "user_agent",
    "request_id",
    "details",
]
T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def memory_log(**kwargs: Any) -> tuple[AuditLog, io.StringIO, Clock]:
    out = io.StringIO()
    clock = Clock()
    return AuditLog(None, clock=clock, stream=out, **kwargs), out, clock


# ---------------------------------------------------------------- format


def test_reference_fields_in_order() -> None:
    log, out, _ = memory_log()
    rid = call_resource_id("a84b4c76e66710@pc33.example.com")
    log.event(
        CALL_CREATED,
        action="create",
        source_ip="192.0.2.10",
        customer_id="c0ffee00-0000-4000-8000-000000000001",
        agent_id="a9e00000-0000-4000-8000-000000000002",
        resource_type=RESOURCE_CALL,
        resource_id=rid,
        user_agent="VoIPBIN-SDK/1.0",
        request_id="5e5e0000-0000-4000-8000-000000000003",
        details={"source": "+15551234567", "destination": "+15559876543"},
    )
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    (record,) = lines(text)
    assert list(record) == FIELDS
    assert record == {
        "timestamp": "2023-11-14T22:13:20.250Z",
        "event_type": "resource_created",
        "customer_id": "c0ffee00-0000-4000-8000-000000000001",
        "agent_id": "a9e00000-0000-4000-8000-000000000002",
        "resource_type": "call",
        "resource_id": rid,
        "action": "create",
        "source_ip": "192.0.2.10",
        "user_agent": "VoIPBIN-SDK/1.0",
        "request_id": "5e5e0000-0000-4000-8000-000000000003",
        "details": {"source": "+15551234567", "destination": "+15559876543"},
    }


def test_absent_fields_are_null_and_details_empty() -> None:
    log, out, _ = memory_log()
    log.event(AUTH_SUCCESS, action="authenticate")
    (record,) = lines(out.getvalue())
    assert list(record) == FIELDS
    assert record["details"] == {}
    assert all(record[name] is None for name in FIELDS[2:-1] if name != "action")


def test_timestamp_is_utc_with_milliseconds() -> None:
    out = io.StringIO()
    AuditLog(None, stream=out).event(AUTH_SUCCESS, action="authenticate")
    (record,) = lines(out.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])


@pytest.mark.parametrize("path", [None, "-"])
def test_stdout_by_default(path: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog(path, clock=Clock()).event(AUTH_SUCCESS, action="authenticate")
    (record,) = lines(capsys.readouterr().out)
    assert record["event_type"] == "authentication_succeeded"


def test_file_and_stream_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(str(tmp_path / "audit.log"), stream=io.StringIO())


def test_details_json_cannot_encode_are_stringified_or_reported() -> None:
    log, out, _ = memory_log()
    log.event(AUTH_SUCCESS, action="authenticate", details={"id": uuid.UUID(int=1), "raw": b"x"})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = [cyclic]
    log.event(AUTH_SUCCESS, action="authenticate", details={"nested": {"a": (1, 2)}})
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1", details=cyclic)
    first, second, third = lines(out.getvalue())
    assert first["details"] == {"id": "00000000-0000-0000-0000-000000000001", "raw": "x"}
    assert second["details"] == {"nested": {"a": [1, 2]}}
    assert third["source_ip"] == "192.0.2.1"
    assert "audit_error" in third["details"]


def test_call_resource_id_is_a_stable_pseudonym() -> None:
    call_id = "a84b4c76e66710@pc33.example.com"
    rid = call_resource_id(call_id)
    assert rid == call_resource_id(call_id)
    assert uuid.UUID(rid).version == 5
    assert rid != call_resource_id(call_id + "x")
    assert "pc33" not in rid
    # Fixed for good: lines written by earlier versions must still correlate.
    assert rid == str(uuid.uuid5(uuid.UUID("6d1c4f0e-8a52-5b7e-9c3d-2f4a1e0b7c91"), call_id))


def test_call_resource_ids_are_remembered_within_bounds() -> None:
    """A call's two events compute its id once; the memory that takes is bounded
    in entries and in the length of what is kept (Call-IDs come from the network)."""
    namespace = uuid.UUID("6d1c4f0e-8a52-5b7e-9c3d-2f4a1e0b7c91")
    audit._resource_ids.clear()
    ids = [f"{i}-bound@192.0.2.{i % 250}" for i in range(audit._RESOURCE_IDS_MAX + 500)]
    for call_id in ids:
        assert call_resource_id(call_id) == str(uuid.uuid5(namespace, call_id))
        assert len(audit._resource_ids) <= audit._RESOURCE_IDS_MAX
    assert ids[-1] in audit._resource_ids  # remembered for the call's second event
    assert call_resource_id(ids[-1]) == str(uuid.uuid5(namespace, ids[-1]))
    long_id = "x" * (audit._RESOURCE_ID_KEY_MAX + 1) + "@example.com"
    assert call_resource_id(long_id) == str(uuid.uuid5(namespace, long_id))
    assert long_id not in audit._resource_ids


def test_call_created_and_ended_correlate() -> None:
    log, out, _ = memory_log()
    rid = call_resource_id("1-2@192.0.2.10")
    details = {"source": "+15551234567", "destination": "+15559876543"}
    log.event(CALL_CREATED, action="create", resource_type=RESOURCE_CALL, resource_id=rid)
    log.event(
        CALL_ENDED, action="delete", resource_type=RESOURCE_CALL, resource_id=rid, details=details
    )
    created, ended = lines(out.getvalue())
    assert (created["event_type"], ended["event_type"]) == ("resource_created", "resource_deleted")
    assert created["resource_id"] == ended["resource_id"] == rid
    assert "1-2@192.0.2.10" not in out.getvalue()


# ---------------------------------------------------------------- redaction

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwiY3VzdG9tZXJfaWQiOiJ4In0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
ACCESS_KEY = "ak_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"
DIGEST_RESPONSE = "6629fae49393a05397450978507c4ef1"


def test_no_secret_reaches_the_audit_log() -> None:
    log, out, _ = memory_log()
    message = (
        "REGISTER sip:example.com SIP/2.0\r\n"
        'Authorization: Digest username="alice", realm="example.com", '
        f'nonce="abc", uri="sip:example.com", response="{DIGEST_RESPONSE}"\r\n'
        "Content-Length: 0\r\n\r\n"
    )
    log.event(
        audit.INVALID_TOKEN,
        action="authenticate",
        source_ip="192.0.2.10",
        user_agent=f"curl/8 Bearer {JWT}",
        request_id=f"AccessKey {ACCESS_KEY}",
        details={
            "message": message,
            "header": f"Authorization: AccessKey {ACCESS_KEY}",
            "note": f"client sent AccessKey {ACCESS_KEY} twice",
            "bare_key": ACCESS_KEY,
            "jwt_seen": JWT,
            "password": "hunter2-secret",
            "form": {"username": "alice", "passwd": "hunter2-secret"},
            "query": f"accesskey={ACCESS_KEY}&x=1",
            "token": "opaque-token-value",
        },
    )
    text = out.getvalue()
    for secret in (JWT, ACCESS_KEY, "hunter2-secret", DIGEST_RESPONSE, "opaque-token-value"):
        assert secret not in text
    assert "eyJ" not in text and "ak_a1b2" not in text
    (record,) = lines(text)
    details = record["details"]
    assert details["header"] == f"Authorization: {REDACTED}"
    assert details["note"] == f"client sent AccessKey {REDACTED} twice"
    assert details["bare_key"] == REDACTED
    assert details["form"] == {"username": "alice", "passwd": REDACTED}
    # What identifies the request stays readable.
    assert "username=" not in details["header"]
    assert "REGISTER sip:example.com SIP/2.0" in details["message"]
    assert "Content-Length: 0" in details["message"]


def test_log_redacts_the_access_key_scheme_and_bare_keys() -> None:
    # The edge.log extension for the reference document's "AccessKey ak_..." form.
    assert redact_text(f"AccessKey {ACCESS_KEY}") == f"AccessKey {REDACTED}"
    assert redact_text(f"key is {ACCESS_KEY}.") == f"key is {REDACTED}."
    # Short or embedded look-alikes are left alone.
    assert redact_text("peak_hours ak_short") == "peak_hours ak_short"
    assert redact_text("the accesskey table") == "the accesskey table"


def test_peer_text_cannot_break_a_line() -> None:
    log, out, _ = memory_log()
    evil = 'x\r\n{"event_type":"authentication_succeeded"}\n\x00\x1b[2J\u2028\u2029"\\'
    log.event(AUTH_FAILURE, action="authenticate", user_agent=evil, details={"to": evil})
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.isascii()
    (record,) = lines(text)
    assert record["user_agent"] == evil
    assert record["details"]["to"] == evil
    assert record["event_type"] == "authentication_failed"


def test_long_peer_text_is_clipped() -> None:
    log, out, _ = memory_log()
    log.event(
        SCANNER_DROPPED, action="drop", user_agent="A" * 10_000, details={"to": "B" * 100_000}
    )
    (record,) = lines(out.getvalue())
    assert record["user_agent"] == "A" * 256 + "..."
    assert record["details"]["to"] == "B" * 1024 + "..."


# ---------------------------------------------------------------- files


def test_file_is_created_with_mode_0600_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        log = AuditLog(str(path), clock=Clock())
        log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
        log.close()
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    again = AuditLog(str(path), clock=Clock())
    again.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.2")
    again.close()
    assert [r["source_ip"] for r in lines(path.read_text())] == ["192.0.2.1", "192.0.2.2"]


def test_reopen_after_rename(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), clock=Clock())
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
    path.rename(tmp_path / "audit.log.1")
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.2")  # still the old file
    assert log.reopen()
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.3")
    log.close()
    rotated = lines((tmp_path / "audit.log.1").read_text())
    assert [r["source_ip"] for r in rotated] == ["192.0.2.1", "192.0.2.2"]
    assert [r["source_ip"] for r in lines(path.read_text())] == ["192.0.2.3"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_failed_reopen_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = AuditLog(str(logs / "audit.log"), clock=Clock())
    logs.rename(tmp_path / "gone")
    assert not log.reopen()
    assert "cannot reopen audit log" in capsys.readouterr().err
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.9")
    log.close()
    assert lines((tmp_path / "gone" / "audit.log").read_text())[0]["source_ip"] == "192.0.2.9"


def test_reopen_on_stdout_is_harmless() -> None:
    log, out, _ = memory_log()
    assert log.reopen()
    log.event(AUTH_SUCCESS, action="authenticate")
    assert len(lines(out.getvalue())) == 1


# ---------------------------------------------------------------- floods


def test_flood_from_one_source_is_capped_and_summarised() -> None:
    log, out, clock = memory_log(per_source=10)
    for i in range(50):
        clock.now = T0 + i * 0.01
        log.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.66")
    for _ in range(5):
        log.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.7")
    records = lines(out.getvalue())
    assert [r["source_ip"] for r in records] == ["192.0.2.66"] * 10 + ["192.0.2.7"] * 5
    # The next second: the summary comes first, then the event.
    clock.now = T0 + 1
    log.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.66")
    summary, event = lines(out.getvalue())[15:]
    assert list(summary) == FIELDS
    assert summary["event_type"] == SUPPRESSED == "audit_events_suppressed"
    assert summary["source_ip"] == "192.0.2.66"
    assert summary["details"] == {
        "event_type": "authentication_failed",
        "suppressed": 40,
        "first": "2023-11-14T22:13:20.350Z",
        "last": "2023-11-14T22:13:20.740Z",
        "scope": "source",
    }
    assert event["event_type"] == AUTH_FAILURE


def test_a_flood_that_stops_is_reported_by_flush() -> None:
    log, out, clock = memory_log(per_source=3)
    for _ in range(10):
        log.event(
            SCANNER_DROPPED, action="drop", source_ip="203.0.113.5", user_agent="friendly-scanner"
        )
    log.flush_suppressed()  # same second: nothing to report yet
    assert len(lines(out.getvalue())) == 3
    clock.now = T0 + 5
    log.flush_suppressed()
    summary = lines(out.getvalue())[-1]
    assert summary["event_type"] == SUPPRESSED
    assert summary["details"]["suppressed"] == 7
    assert summary["details"]["event_type"] == "scanner_dropped"
    log.flush_suppressed()
    assert len(lines(out.getvalue())) == 4  # reported once


def test_close_reports_what_is_pending() -> None:
    log, out, _ = memory_log(per_source=1)
    for _ in range(3):
        log.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.1")
    log.close()
    assert lines(out.getvalue())[-1]["details"]["suppressed"] == 2


def test_many_sources_are_capped_overall() -> None:
    log, out, clock = memory_log(per_source=10, per_type=20)
    for i in range(100):
        log.event(AUTH_FAILURE, action="authenticate", source_ip=f"2001:db8::{i:x}")
    assert len(lines(out.getvalue())) == 20
    clock.now = T0 + 1
    log.flush_suppressed()
    summary = lines(out.getvalue())[-1]
    assert summary["source_ip"] is None
    assert summary["details"]["scope"] == "all_sources"
    assert summary["details"]["suppressed"] == 80


def test_source_table_stays_bounded() -> None:
    log, out, clock = memory_log(per_source=1, per_type=10_000, max_keys=50)
    for second in range(3):
        clock.now = T0 + second
        for i in range(1000):
            log.event(BAN_ADDED, action="ban", source_ip=f"10.0.{i >> 8}.{i & 255}")
            assert len(log._windows) <= 50
    # Sources beyond the table are held by the overall cap only: none lost.
    assert len([r for r in lines(out.getvalue()) if r["event_type"] == BAN_ADDED]) == 3000


def test_a_full_source_table_is_swept_once_a_second() -> None:
    log, _, clock = memory_log(per_source=1, max_keys=10)
    for second in range(3):
        clock.now = T0 + second
        for i in range(500):
            log.event(AUTH_FAILURE, action="authenticate", source_ip=f"10.1.{i >> 8}.{i & 255}")
    assert log.full_table_sweeps == 3


def test_events_that_are_not_floodable_are_never_held_back() -> None:
    log, out, _ = memory_log(per_source=1, per_type=1)
    for i in range(100):
        log.event(
            CALL_CREATED,
            action="create",
            source_ip="192.0.2.10",
            resource_type=RESOURCE_CALL,
            resource_id=call_resource_id(str(i)),
        )
        log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.10")
    assert len(lines(out.getvalue())) == 200


# ---------------------------------------------------------------- failures


class BrokenStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def write(self, s: str) -> int:
        if self.broken:
            raise OSError(28, "No space left on device")
        return super().write(s)


def test_write_failure_is_counted_and_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = BrokenStream()
    log = AuditLog(None, clock=Clock(), stream=out)
    for _ in range(3):
        log.event(AUTH_SUCCESS, action="authenticate")  # must not raise
    assert log.write_errors == 3
    err = capsys.readouterr().err
    assert err.count("audit log write failed") == 1
    # Writing works again: the loss is on record.
    out.broken = False
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
    event, lost = lines(out.getvalue())
    assert event["source_ip"] == "192.0.2.1"
    assert lost["event_type"] == WRITE_FAILED == "audit_events_lost"
    assert lost["details"] == {"lost": 3}


def test_disk_full_does_not_raise(capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog("/dev/full", clock=Clock())  # every write fails with ENOSPC
    for _ in range(5):
        log.event(AUTH_FAILURE, action="authenticate", source_ip="192.0.2.1")
    log.close()
    assert log.write_errors == 5
    assert log.lines_written == 0
    assert capsys.readouterr().err.count("No space left on device") == 1


def test_a_short_write_does_not_glue_two_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), clock=Clock())
    real_write = os.write
    calls = 0

    def short_once(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        return real_write(fd, data[:10] if calls == 1 else data)

    monkeypatch.setattr(audit.os, "write", short_once)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")  # torn
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.2")
    log.close()
    torn, *rest = path.read_text().splitlines()
    assert torn == '{"timestam'
    records = [json.loads(line) for line in rest]
    assert records[0]["source_ip"] == "192.0.2.2"
    assert records[1]["details"] == {"lost": 1}


def test_resource_and_request_ids_are_real_uuids() -> None:
    import uuid as uuidlib

    from edge.audit import CALL_NAMESPACE, new_request_id

    for call_id in ("a84b4c76e66710@pc33.atlanta.com", "", "ünïcode@host", "x" * 500):
        assert call_resource_id(call_id) == str(uuidlib.uuid5(CALL_NAMESPACE, call_id))
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:20]:
        parsed = uuidlib.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuidlib.RFC_4122 and str(parsed) == text


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'quote " backslash \\ newline \n tab \t nul \x00 del \x7f',
        "unicode é ☎ \U0001f4de \ud800",
        "",
        None,
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        0.1 + 0.2,
        float("nan"),
        float("inf"),
        [1, "a", None, {"k": [2.5]}],
        {"a": 1, "b": {"c": None, "d": ["x", {"e": True}]}, "": "empty key"},
        {1: "int key", "s": 2},
        ("tuple", 1),
        Path("/some/path"),
        ValueError("boom"),
    ],
)
def test_hand_built_json_is_what_json_dumps_writes(value: Any) -> None:
    # The audit line is assembled by hand for speed; it must stay byte-for-byte
    # what json.dumps(default=str, compact separators) produces.
    want = json.dumps(value, default=str, separators=(",", ":"))
    assert audit._json(value) == want


def test_whole_line_is_what_json_dumps_writes() -> None:
    stream = io.StringIO()
    log = AuditLog(None, stream=stream, clock=lambda: 1_767_225_600.25)
    details = {"number": "+4930\u00e91234", "n": 3, "ratio": 0.5, "nested": {"k": [1, None]}}
    log.event("auth.failure", action="login", source_ip="192.0.2.1", user_agent='ua "x"',
              request_id="r", customer_id="c", details=details)  # fmt: skip
    line = stream.getvalue().rstrip("\n")
    record = json.loads(line)
    assert json.dumps(record, separators=(",", ":")) == line
    assert record["timestamp"] == "2026-01-01T00:00:00.250Z"
    assert record["details"] == details


def test_lines_stay_what_json_dumps_writes_when_their_fields_repeat() -> None:
    """The fields around resource_id are remembered by their values, and ids this
    module made skip the UUID check: each line must still be the reference text,
    the first time and every time after, with secrets redacted and long text clipped."""
    stream = io.StringIO()
    log = AuditLog(None, stream=stream, clock=lambda: 1_767_225_600.25)
    secret_ua = "sipp Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"
    variants = [
        dict(source_ip="192.0.2.1", customer_id="c1", agent_id=None, user_agent="sipp"),
        dict(source_ip=None, customer_id=None, agent_id="a", user_agent=secret_ua),
        dict(source_ip="2001:db8::1", customer_id='q"uote', agent_id=None, user_agent="u" * 900),
    ]
    ids = [audit.new_request_id(), call_resource_id("x@y"), str(uuid.uuid4()), "not-a-uuid"]
    for _ in range(3):
        for fields in variants:
            for rid in ids:
                log.event(
                    "call.created",
                    action="create",
                    resource_type="call",
                    resource_id=rid,
                    request_id=ids[0],
                    **fields,  # type: ignore[arg-type]
                )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 36
    for i, line in enumerate(lines):
        record = json.loads(line)
        assert json.dumps(record, separators=(",", ":")) == line
        fields = variants[(i // 4) % 3]
        assert record["resource_id"] == ids[i % 4] and record["request_id"] == ids[0]
        assert record["source_ip"] == fields["source_ip"]
        assert record["customer_id"] == fields["customer_id"]
        assert "eyJhbGciOiJIUzI1NiJ9" not in line
    assert len(json.loads(lines[8])["user_agent"]) < 900  # clipped, from the cache too
    assert lines[0:12] == lines[12:24] == lines[24:36]


@pytest.mark.parametrize(
    "details",
    [
        {"source": "+4930123", "destination": "1000", "authenticated_by": "trunk", "identity": ""},
        {"reason": "bye", "duration": 12.345, "count": 3, "none": None},
        {"password": "hunter2", "token": "", "api_key": 0, "secret": None},
        {"note": "Authorization: Digest response=abc", "long": "x" * 5000},
        {"é": "ü ☎", "quote": 'a"b\\c'},
    ],
)
def test_flat_details_fast_path_matches_the_general_path(details: dict[str, Any]) -> None:
    general = audit._json(audit._clip_all(audit.redact(dict(details))))
    assert audit._flat_details(details) == general


def test_flat_details_leaves_nested_and_odd_values_to_the_general_path() -> None:
    assert audit._flat_details({"nested": {"a": 1}}) is None
    assert audit._flat_details({"flag": True}) is None
    assert audit._flat_details({1: "int key"}) is None


def test_uuid_check_is_the_regex() -> None:
    pattern = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    rng = random.Random(11)
    samples = [audit.new_request_id() for _ in range(50)] + [
        call_resource_id("x@y") for _ in range(5)
    ]
    for base in list(samples):
        for _ in range(20):
            chars = list(base)
            i = rng.randrange(len(chars) + 1)
            op = rng.randrange(3)
            if op == 0 and i < len(chars):
                chars[i] = rng.choice("0123456789abcdefABCDEF-g x\\n")
            elif op == 1:
                chars.insert(i, rng.choice("0a-F"))
            elif i < len(chars):
                del chars[i]
            samples.append("".join(chars))
    samples += ["", "-" * 36, "0" * 36, "00000000-0000-0000-0000-00000000000-"]
    for text in samples:
        assert audit._is_uuid(text) == (pattern.fullmatch(text) is not None), text


# ---------------------------------------------------------------- batched writes


class CountingStream(io.StringIO):
    """A stream that counts its writes: one per batch is what batching is for."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def test_held_lines_go_out_together_within_the_interval_with_their_own_times() -> None:
    out = CountingStream()
    clock = Clock()
    log = AuditLog(None, clock=clock, stream=out, flush_interval=0.05)
    for i in range(3):
        clock.now = T0 + i
        log.event(CALL_CREATED, action="create", source_ip=f"192.0.2.{i}")
    assert out.getvalue() == ""  # held back, not written yet
    assert log.lines_written == 0
    clock.now = T0 + 60
    # The loop's timer for the interval is due before this sleep's: it has run.
    await asyncio.sleep(0.2)
    records = lines(out.getvalue())
    assert [r["source_ip"] for r in records] == ["192.0.2.0", "192.0.2.1", "192.0.2.2"]
    assert [r["timestamp"] for r in records] == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:21.250Z",
        "2023-11-14T22:13:22.250Z",
    ]
    assert out.writes == 1
    assert log.lines_written == 3
    # The next event starts a new interval.
    log.event(CALL_ENDED, action="delete", source_ip="192.0.2.9")
    assert out.writes == 1
    await asyncio.sleep(0.2)
    assert out.writes == 2
    assert lines(out.getvalue())[-1]["source_ip"] == "192.0.2.9"


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    # The command line tools write audit lines with no event loop to flush later.
    log, out, _ = memory_log(flush_interval=0.05)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
    assert lines(out.getvalue())[0]["source_ip"] == "192.0.2.1"


async def test_a_thread_without_a_loop_writes_at_once_while_the_loop_holds() -> None:
    import threading

    out = io.StringIO()
    log = AuditLog(None, clock=Clock(), stream=out, flush_interval=30.0)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")  # held
    helper = threading.Thread(
        target=log.event, args=(AUTH_SUCCESS,), kwargs={"action": "a", "source_ip": "192.0.2.2"}
    )
    helper.start()
    helper.join()
    assert [r["source_ip"] for r in lines(out.getvalue())] == ["192.0.2.2"]
    log.flush()
    assert [r["source_ip"] for r in lines(out.getvalue())] == ["192.0.2.2", "192.0.2.1"]


async def test_max_pending_lines_are_written_at_once() -> None:
    out = CountingStream()
    log = AuditLog(None, clock=Clock(), stream=out, flush_interval=30.0, max_pending=3)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.2")
    assert out.getvalue() == ""
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.3")
    assert [r["source_ip"] for r in lines(out.getvalue())] == [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
    ]
    assert out.writes == 1


async def test_close_and_reopen_write_what_is_held(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), clock=Clock(), flush_interval=30.0)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.1")
    assert path.read_text() == ""
    # Rotation: the held line is older than the reopen, so it ends the old file.
    path.rename(tmp_path / "audit.log.1")
    assert log.reopen()
    assert lines((tmp_path / "audit.log.1").read_text())[0]["source_ip"] == "192.0.2.1"
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.2")
    assert path.read_text() == ""
    log.close()  # a clean stop writes what is held
    assert [r["source_ip"] for r in lines(path.read_text())] == ["192.0.2.2"]
    assert log.lines_written == 2


async def test_a_short_write_of_a_batch_counts_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), clock=Clock(), flush_interval=30.0)
    real_write = os.write
    calls = 0

    # Only the audit file's writes are cut short: os.write is patched for the
    # whole process, and the event loop may write too.
    (audit_fd,) = [
        int(f.name)
        for f in Path("/proc/self/fd").iterdir()
        if os.path.realpath(f) == str(path.resolve())
    ]

    def short_once(fd: int, data: bytes) -> int:
        nonlocal calls
        if fd == audit_fd:
            calls += 1
            if calls == 1:  # the first line and the head of the second get out
                return real_write(fd, data[: data.index(b"\n") + 11])
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "write", short_once)
    for i in range(3):
        log.event(AUTH_SUCCESS, action="authenticate", source_ip=f"192.0.2.{i}")
    log.flush()
    assert (log.lines_written, log.write_errors) == (1, 1)
    log.event(AUTH_SUCCESS, action="authenticate", source_ip="192.0.2.9")
    log.close()
    first, torn, *rest = path.read_text().splitlines()
    assert json.loads(first)["source_ip"] == "192.0.2.0"
    assert torn == '{"timestam'
    records = [json.loads(line) for line in rest]
    assert records[0]["source_ip"] == "192.0.2.9"
    assert records[1]["details"] == {"lost": 2}  # the torn line and the one after it


def test_flush_interval_is_checked() -> None:
    with pytest.raises(ValueError):
        AuditLog(None, stream=io.StringIO(), flush_interval=-1.0)
    with pytest.raises(ValueError):
        AuditLog(None, stream=io.StringIO(), max_pending=0)
