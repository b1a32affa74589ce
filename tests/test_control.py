"""The control socket (edge/control.py) and the CLI commands that use it.

Servers listen on Unix sockets under tmp_path.  The synchronous client
(``control.request``) runs in a worker thread when the server shares its event
loop; the CLI tests run the server in a background thread's loop instead and
call ``cli.main`` in the test's thread, the way a person runs ``sipedge``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge import cli, control
from edge.control import ControlError, ControlServer

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

BANS = [
    {"address": "127.0.0.3", "reason": "flood", "since": NOW - 60, "until": NOW + 540, "hits": 42},
    {"address": "2001:db8::7", "reason": "auth_failures", "since": NOW, "until": NOW + 3600.5},
]

MEDIA = {
    "call": "c1",
    "passthrough": False,
    "answered": True,
    "streams": [
        {
            "index": 0,
            "media": "audio",
            "session": "c1-0",
            "active": True,
            "on_hold": False,
            "legs": {
                "caller": {
                    "proto": "RTP/SAVP",
                    "srtp": True,
                    "local": "127.0.0.1:30000",
                    "remote": "127.0.0.1:4000",
                    "packets_in": 100,
                    "bytes_in": 17200,
                    "packets_out": 98,
                    "bytes_out": 16856,
                    "drops": {"auth_failed": 2, "replay": 0},
                    "hold": False,
                },
                "callee": {
                    "proto": "RTP/AVP",
                    "srtp": False,
                    "local": "127.0.0.1:30002",
                    "remote": None,
                    "packets_in": 98,
                    "bytes_in": 16856,
                    "packets_out": 100,
                    "bytes_out": 17200,
                    "drops": {"unknown_source": 1},
                    "hold": False,
                },
            },
        }
    ],
}

CALLS = [
    {
        "call_id": "c1@host",
        "from_uri": "sip:+15551234567@carrier.example;user=phone",
        "to_uri": "sip:+442079460123@edge.example",
        "caller": "udp:127.0.0.2:5060",
        "callee": "tls:127.0.0.9:5061",
        "state": "confirmed",
        "created": NOW - 3723,
        "answered": NOW - 3700,
        "media": MEDIA,
    },
    {
        "call_id": "c2@host",
        "from_uri": "sip:alice@example.org",
        "to_uri": "tel:+15559876543",
        "caller": "wss:127.0.0.5:40000",
        "callee": "udp:127.0.0.2:5060",
        "state": "early",
        "created": NOW - 5,
        "answered": None,
        "media": None,
    },
]


class FakeProcess:
    """What the lead's handlers do, on fixed data; records each call's arguments."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.bans = {b["address"]: b for b in BANS}

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        def record(name: str, fn: Callable[[dict[str, Any]], Any]) -> Any:
            def handler(args: dict[str, Any]) -> Any:
                self.seen.append((name, args))
                return fn(args)

            return handler

        return {
            "bans.list": record("bans.list", lambda a: list(self.bans.values())),
            "bans.remove": record(
                "bans.remove", lambda a: {"removed": self.bans.pop(a["address"], None) is not None}
            ),
            "calls.list": record("calls.list", lambda a: CALLS),
            "calls.show": record("calls.show", self._show),
            "reload": record("reload", lambda a: {"reloaded": ["tls", "trunks"]}),
        }

    def _show(self, args: dict[str, Any]) -> Any:
        for call in CALLS:
            if call["call_id"] == args["call_id"]:
                return {**call, "customer_id": "0b5e4b63", "to_tag": "t9"}
        raise ControlError("no such call")


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, event: str, /, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "c.sock")


async def ask(path: str, command: str, **args: Any) -> Any:
    """control.request from a worker thread, so this loop can answer it."""
    return await asyncio.to_thread(control.request, path, command, **args)


async def raw(path: str, data: bytes, *, close_write: bool = False) -> bytes:
    """Send ``data`` as is; everything the server answers until it closes."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    if close_write:
        writer.write_eof()
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def answer_of(data: bytes) -> dict[str, Any]:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("bans.list", {}, BANS),
        ("bans.remove", {"address": "127.0.0.3"}, {"removed": True}),
        ("bans.remove", {"address": "127.0.0.99"}, {"removed": False}),
        ("calls.list", {}, CALLS),
        (
            "calls.show",
            {"call_id": "c2@host"},
            {**CALLS[1], "customer_id": "0b5e4b63", "to_tag": "t9"},
        ),
        ("reload", {}, {"reloaded": ["tls", "trunks"]}),
    ],
)
async def test_round_trip(
    sock_path: str, command: str, args: dict[str, Any], expected: Any
) -> None:
    process = FakeProcess()
    server = ControlServer(sock_path, process.handlers())
    await server.start()
    try:
        assert await ask(sock_path, command, **args) == expected
    finally:
        await server.close()
    # The handler gets the request's members other than "command".
    assert process.seen == [(command, args)]


async def test_async_handler(sock_path: str) -> None:
    async def reload(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"reloaded": ["tls"], "args": args}

    server = ControlServer(sock_path, {"reload": reload})
    await server.start()
    try:
        assert await ask(sock_path, "reload", dry_run=True) == {
            "reloaded": ["tls"],
            "args": {"dry_run": True},
        }
    finally:
        await server.close()


async def test_one_line_each_way_then_closed(sock_path: str) -> None:
    server = ControlServer(sock_path, {"reload": lambda a: {"reloaded": []}})
    await server.start()
    try:
        data = await raw(sock_path, b'{"command": "reload"}\n')
        assert answer_of(data) == {"ok": True, "result": {"reloaded": []}}
        # A last line without "\n" before the client's EOF is still a request.
        data = await raw(sock_path, b'{"command": "reload"}', close_write=True)
        assert answer_of(data)["ok"] is True
    finally:
        await server.close()


def test_round_trip_under_uvloop(sock_path: str) -> None:
    """sipedge runs on uvloop: the same exchange on that loop."""
    import uvloop

    async def scenario() -> Any:
        server = ControlServer(sock_path, FakeProcess().handlers())
        await server.start()
        try:
            return await ask(sock_path, "bans.list")
        finally:
            await server.close()

    assert uvloop.run(scenario()) == BANS
    assert not os.path.exists(sock_path)


# ---------------------------------------------------------------- errors


async def test_unknown_command_lists_the_known_ones(sock_path: str) -> None:
    server = ControlServer(sock_path, FakeProcess().handlers())
    await server.start()
    try:
        with pytest.raises(ControlError) as e:
            await ask(sock_path, "bans.flush")
    finally:
        await server.close()
    assert str(e.value) == (
        "unknown command 'bans.flush' "
        "(known: bans.list, bans.remove, calls.list, calls.show, reload)"
    )


async def test_handler_error_reaches_the_client_without_traceback(sock_path: str) -> None:
    def broken(args: dict[str, Any]) -> Any:
        raise RuntimeError("table corrupt")

    log = Log()
    server = ControlServer(sock_path, {"calls.list": broken}, log=log)
    await server.start()
    try:
        data = await raw(sock_path, b'{"command": "calls.list"}\n')
        with pytest.raises(ControlError, match=r"^calls.list failed: RuntimeError: table corrupt$"):
            await ask(sock_path, "calls.list")
    finally:
        await server.close()
    assert answer_of(data) == {
        "ok": False,
        "error": "calls.list failed: RuntimeError: table corrupt",
    }
    assert b"Traceback" not in data
    failures = [f for _, event, f in log.lines if event == "control_handler_failed"]
    assert len(failures) == 2
    assert "Traceback" in failures[0]["traceback"] and "broken" in failures[0]["traceback"]


async def test_handler_control_error_is_the_answer(sock_path: str) -> None:
    server = ControlServer(sock_path, FakeProcess().handlers())
    await server.start()
    try:
        with pytest.raises(ControlError, match=r"^no such call$"):
            await ask(sock_path, "calls.show", call_id="nope")
        # A handler's KeyError (a missing argument) is an error line, not a crash.
        with pytest.raises(ControlError, match=r"^calls.show failed: KeyError: 'call_id'$"):
            await ask(sock_path, "calls.show")
        # The server still answers after both.
        assert await ask(sock_path, "reload") == {"reloaded": ["tls", "trunks"]}
    finally:
        await server.close()


async def test_unserialisable_result(sock_path: str) -> None:
    server = ControlServer(sock_path, {"calls.list": lambda a: {"x": object()}})
    await server.start()
    try:
        with pytest.raises(ControlError, match=r"^calls.list failed: TypeError: .*JSON"):
            await ask(sock_path, "calls.list")
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"bans.list\n", "bad request: not JSON"),
        (b'{"command": "bans.list"\n', "bad request: not JSON"),
        (b"\xff\xfe{}\n", "bad request: not JSON"),
        (b'["bans.list"]\n', "bad request: not a JSON object"),
        (b'{"cmd": "bans.list"}\n', 'bad request: no "command" string'),
        (b'{"command": 7}\n', 'bad request: no "command" string'),
        (b"\n", "bad request: not JSON"),
    ],
)
async def test_bad_requests(sock_path: str, line: bytes, error: str) -> None:
    process = FakeProcess()
    server = ControlServer(sock_path, process.handlers())
    await server.start()
    try:
        answer = answer_of(await raw(sock_path, line))
    finally:
        await server.close()
    assert answer["ok"] is False
    assert answer["error"].startswith(error)
    assert process.seen == []


async def test_oversized_line(sock_path: str) -> None:
    server = ControlServer(sock_path, FakeProcess().handlers())
    await server.start()
    try:
        big = b'{"command": "bans.list", "pad": "' + b"x" * control.MAX_LINE + b'"}\n'
        answer = answer_of(await raw(sock_path, big))
        # Without a newline at all, the limit applies just the same.
        endless = answer_of(await raw(sock_path, b"x" * (control.MAX_LINE + 10)))
    finally:
        await server.close()
    assert answer == {"ok": False, "error": "request too long (at most 65536 bytes)"}
    assert endless == answer


async def test_line_limit_boundary(sock_path: str) -> None:
    """max_line counts the bytes before the newline: exactly max_line is served."""
    server = ControlServer(sock_path, {"reload": lambda a: {"reloaded": []}}, max_line=100)
    await server.start()
    try:
        head = b'{"command": "reload", "pad": "'
        fit = head + b"x" * (100 - len(head) - 2) + b'"}'
        assert len(fit) == 100
        ok = answer_of(await raw(sock_path, fit + b"\n"))
        over = head + b"x" * (101 - len(head) - 2) + b'"}'
        too_long = answer_of(await raw(sock_path, over + b"\n"))
    finally:
        await server.close()
    assert ok["ok"] is True
    assert too_long == {"ok": False, "error": "request too long (at most 100 bytes)"}


@pytest.mark.parametrize("sent", [b"", b'{"command": "bans.list"'])
async def test_silent_client_is_timed_out_and_closed(sock_path: str, sent: bytes) -> None:
    log = Log()
    server = ControlServer(sock_path, FakeProcess().handlers(), log=log, read_timeout=0.05)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(sock_path)
        writer.write(sent)
        # The client never finishes its line: the server answers and closes.
        data = await reader.read()
        writer.close()
    finally:
        await server.close()
    assert answer_of(data) == {"ok": False, "error": "timed out: no request line within 0.05 s"}
    assert "control_timeout" in log.events()


async def test_too_many_clients_are_told_busy(sock_path: str) -> None:
    log = Log()
    server = ControlServer(
        sock_path, {"reload": lambda a: {"reloaded": []}}, log=log, max_clients=2
    )
    await server.start()
    try:
        idle = [await asyncio.open_unix_connection(sock_path) for _ in range(2)]
        while server.clients < 2:
            await asyncio.sleep(0.001)
        busy = answer_of(await raw(sock_path, b'{"command": "reload"}\n'))
        # The idle clients still get their answers.
        for reader, writer in idle:
            writer.write(b'{"command": "reload"}\n')
            assert answer_of(await reader.read())["ok"] is True
            writer.close()
        while server.clients:
            await asyncio.sleep(0.001)
        after = answer_of(await raw(sock_path, b'{"command": "reload"}\n'))
    finally:
        await server.close()
    assert busy == {"ok": False, "error": "busy: too many control clients, try again"}
    assert "control_busy" in log.events()
    assert after["ok"] is True


async def test_close_ends_idle_clients(sock_path: str) -> None:
    server = ControlServer(sock_path, {}, read_timeout=3600)
    await server.start()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    while server.clients < 1:
        await asyncio.sleep(0.001)
    await server.close()
    assert await reader.read() == b""
    writer.close()
    assert server.clients == 0
    assert not os.path.exists(sock_path)


# ---------------------------------------------------------------- the socket file


async def test_socket_mode_and_directory(sock_path: str) -> None:
    log = Log()
    server = ControlServer(sock_path, {}, log=log)
    await server.start()
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o700
        assert ("info", "control_listening", {"path": sock_path}) in log.lines
    finally:
        await server.close()
    assert not os.path.exists(sock_path)
    # The directory stays: it may hold other state (.sipedge/credentials.sqlite3).
    assert os.path.isdir(os.path.dirname(sock_path))


async def test_writable_directory_is_warned_about(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    log = Log()
    server = ControlServer(str(shared / "c.sock"), {}, log=log)
    await server.start()
    await server.close()
    assert "control_directory_writable" in log.events()
    # An existing directory's mode is the operator's; it is left alone.
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777


def _stale_socket(path: str) -> None:
    """A socket file nobody listens on: what a killed process leaves behind."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


async def test_stale_socket_file_is_replaced(sock_path: str) -> None:
    _stale_socket(sock_path)
    log = Log()
    server = ControlServer(sock_path, FakeProcess().handlers(), log=log)
    await server.start()
    try:
        assert await ask(sock_path, "reload") == {"reloaded": ["tls", "trunks"]}
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    finally:
        await server.close()
    assert "control_stale_socket_removed" in log.events()


async def test_second_server_on_a_live_path_is_refused(sock_path: str) -> None:
    first = ControlServer(sock_path, FakeProcess().handlers())
    await first.start()
    try:
        second = ControlServer(sock_path, {})
        with pytest.raises(ControlError, match="another process answers on the control socket"):
            await second.start()
        await second.close()  # a server that never started closes as a no-op
        # The first one still owns and serves the socket.
        assert await ask(sock_path, "reload") == {"reloaded": ["tls", "trunks"]}
    finally:
        await first.close()
    assert not os.path.exists(sock_path)


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    Path(sock_path).write_text("precious")
    server = ControlServer(sock_path, {})
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await server.start()
    assert Path(sock_path).read_text() == "precious"


async def test_close_leaves_a_successors_socket(sock_path: str) -> None:
    first = ControlServer(sock_path, {})
    await first.start()
    # Someone removed our file and another process now listens there.
    os.unlink(sock_path)
    second = ControlServer(sock_path, {"reload": lambda a: {"reloaded": []}})
    await second.start()
    try:
        await first.close()
        assert await ask(sock_path, "reload") == {"reloaded": []}
    finally:
        await second.close()


async def test_path_too_long(tmp_path: Path) -> None:
    server = ControlServer(str(tmp_path / ("d" * 120) / "c.sock"), {})
    with pytest.raises(ControlError, match="too long"):
        await server.start()


def test_default_path() -> None:
    assert control.default_path(object()) == ".sipedge/control.sock"
    assert control.default_path(SimpleNamespace(control=None)) == ".sipedge/control.sock"
    cfg = SimpleNamespace(control=SimpleNamespace(path="/run/sipedge/ctl.sock"))
    assert control.default_path(cfg) == "/run/sipedge/ctl.sock"


# ---------------------------------------------------------------- the client alone


def test_request_without_a_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(ControlError) as e:
        control.request(path, "bans.list")
    assert str(e.value) == f"sipedge is not running (no control socket at {path})"


def test_request_on_a_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "stale" / "c.sock")
    _stale_socket(path)
    with pytest.raises(ControlError) as e:
        control.request(path, "bans.list")
    assert str(e.value) == f"sipedge is not running (no control socket at {path})"


def test_request_times_out(tmp_path: Path) -> None:
    """A listener that never answers (a hung process): the client gives up."""
    path = str(tmp_path / "hung.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        with pytest.raises(ControlError, match=r"^no answer from sipedge on .* within 0.05 s$"):
            control.request(path, "bans.list", timeout=0.05)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "closed the control connection"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a sipedge answer"),
        (b'{"result": 1}\n', "not a sipedge answer"),
        (b'{"ok": false}\n', "unknown error"),
    ],
)
def test_request_odd_answers(tmp_path: Path, reply: bytes, error: str) -> None:
    path = str(tmp_path / "odd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

        t = threading.Thread(target=answer)
        t.start()
        try:
            with pytest.raises(ControlError, match=error):
                control.request(path, "bans.list")
        finally:
            t.join()


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15551234567", "+1555***4567"),
        ("+442079460123", "+4420***0123"),
        ("5551234567", "555***4567"),
        ("+1-555-123-4567", "+1555***4567"),
        ("1234567", "12***67"),
        ("12345", "1***5"),
        ("1234", "***4"),
        ("123", "***"),
        ("+", "+***"),
        ("+123456789012345", "+1234***2345"),
    ],
)
def test_mask_number(number: str, masked: str) -> None:
    assert control.mask_number(number) == masked


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        (
            "sip:+15551234567@carrier.example;user=phone",
            "sip:+1555***4567@carrier.example;user=phone",
        ),
        ("sips:5551234567@10.0.0.1:5061", "sips:555***4567@10.0.0.1:5061"),
        ("tel:+15551234567", "tel:+1555***4567"),
        ("tel:+1-555-123-4567;ext=1001", "tel:+1555***4567;ext=1001"),
        (
            '"+15551234567" <sip:+15551234567@pbx.example>',
            '"+1555***4567" <sip:+1555***4567@pbx.example>',
        ),
        # No number, or a host and port only: nothing to hide.
        ("sip:alice@example.org", "sip:alice@example.org"),
        ("sip:1001@pbx.example", "sip:1001@pbx.example"),
        ("sip:127.0.0.1:5060", "sip:127.0.0.1:5060"),
        ("sip:edge.example;transport=tcp", "sip:edge.example;transport=tcp"),
        ("", ""),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert control.mask_uri(uri) == masked


# ---------------------------------------------------------------- the CLI


class ServerThread:
    """A ControlServer in its own thread's event loop, as the running process would be."""

    def __init__(self, path: str, handlers: Mapping[str, Callable[[dict[str, Any]], Any]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = ControlServer(path, handlers)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def process(sock_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProcess]:
    # The CLI computes ages and time left against the clock: pin it.
    monkeypatch.setattr(cli.time, "time", lambda: NOW)
    fake = FakeProcess()
    with ServerThread(sock_path, fake.handlers()):
        yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv), env={})
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_bans_list(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, err = run(capsys, "bans", "list", "--socket", sock_path)
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "ADDRESS      REASON         SINCE                 UNTIL                 "
        "REMAINING  DROPPED",
        "127.0.0.3    flood          2023-11-14T22:12:20Z  2023-11-14T22:22:20Z  540s       42",
        "2001:db8::7  auth_failures  2023-11-14T22:13:20Z  2023-11-14T23:13:20Z  3601s      0",
    ]
    status, out, _ = run(capsys, "bans", "list", "--json", "--socket", sock_path)
    assert status == 0
    assert json.loads(out) == [
        {
            "address": "127.0.0.3",
            "reason": "flood",
            "since": "2023-11-14T22:12:20Z",
            "until": "2023-11-14T22:22:20Z",
            "remaining": 540,
            "dropped": 42,
        },
        {
            "address": "2001:db8::7",
            "reason": "auth_failures",
            "since": "2023-11-14T22:13:20Z",
            "until": "2023-11-14T23:13:20Z",
            "remaining": 3601,
            "dropped": 0,
        },
    ]


def test_cli_bans_remove(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    # The address is sent as the proxy keys it (lower case, compressed).
    status, out, err = run(capsys, "bans", "remove", "2001:DB8:0::7", "--socket", sock_path)
    assert (status, out, err) == (0, "removed the ban on 2001:db8::7\n", "")
    status, out, err = run(capsys, "bans", "remove", "2001:db8::7", "--socket", sock_path)
    assert (status, out, err) == (1, "", "sipedge: no ban on 2001:db8::7\n")
    status, out, err = run(capsys, "bans", "remove", "::ffff:127.0.0.3", "--socket", sock_path)
    assert status == 1 and "no ban on ::ffff:127.0.0.3" in err
    assert [args for _, args in process.seen] == [
        {"address": "2001:db8::7"},
        {"address": "2001:db8::7"},
        {"address": "::ffff:127.0.0.3"},
    ]
    # Not an address: a usage error, and the process is not asked.
    status, _, err = run(capsys, "bans", "remove", "example.org", "--socket", sock_path)
    assert (status, err) == (2, "sipedge: not an IP address: 'example.org'\n")
    assert len(process.seen) == 3


def test_cli_calls_list_masks_numbers(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, err = run(capsys, "calls", "--socket", sock_path)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "CALL-ID",
        "FROM",
        "TO",
        "STATE",
        "AGE",
        "CALLER",
        "CALLEE",
        "MEDIA",
        "PKTS_FROM_CALLER",
        "PKTS_FROM_CALLEE",
        "DROPS",
    ]
    assert lines[1].split() == [
        "c1@host",
        "sip:+1555***4567@carrier.example;user=phone",
        "sip:+4420***0123@edge.example",
        "confirmed",
        "1h02m03s",
        "udp:127.0.0.2:5060",
        "tls:127.0.0.9:5061",
        "sdes/rtp",
        "100",
        "98",
        "3",
    ]
    assert lines[2].split() == [
        "c2@host",
        "sip:alice@example.org",
        "tel:+1555***6543",
        "early",
        "5s",
        "wss:127.0.0.5:40000",
        "udp:127.0.0.2:5060",
        "-",
        "-",
        "-",
        "-",
    ]
    assert "5551234567" not in out and "2079460123" not in out
    # `calls list` is the same command.
    assert run(capsys, "calls", "list", "--socket", sock_path)[1] == out


def test_cli_calls_show_numbers_and_json(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, _ = run(capsys, "calls", "--show-numbers", "--socket", sock_path)
    assert status == 0
    assert "sip:+15551234567@carrier.example;user=phone" in out
    assert "tel:+15559876543" in out

    status, out, _ = run(capsys, "calls", "--json", "--socket", sock_path)
    assert status == 0
    listed = json.loads(out)
    assert [c["from_uri"] for c in listed] == [
        "sip:+1555***4567@carrier.example;user=phone",
        "sip:alice@example.org",
    ]
    assert listed[0]["media"] == MEDIA and listed[0]["created"] == NOW - 3723

    status, out, _ = run(capsys, "calls", "list", "--json", "--show-numbers", "--socket", sock_path)
    assert json.loads(out) == CALLS


def test_cli_calls_show(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, err = run(capsys, "calls", "show", "c1@host", "--socket", sock_path)
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "call_id:     c1@host",
        "from_uri:    sip:+1555***4567@carrier.example;user=phone",
        "to_uri:      sip:+4420***0123@edge.example",
        "state:       confirmed",
        "created:     2023-11-14T21:11:17Z (1h02m03s ago)",
        "answered:    2023-11-14T21:11:40Z (1h01m40s ago)",
        "caller:      udp:127.0.0.2:5060",
        "callee:      tls:127.0.0.9:5061",
        "customer_id: 0b5e4b63",
        "to_tag:      t9",
        "media:",
        "  stream 0 audio (active)",
        "    caller: sdes RTP/SAVP, local 127.0.0.1:30000, remote 127.0.0.1:4000, "
        "in 100 pkts/17200 B, out 98 pkts/16856 B, drops auth_failed 2",
        "    callee: rtp RTP/AVP, local 127.0.0.1:30002, remote -, "
        "in 98 pkts/16856 B, out 100 pkts/17200 B, drops unknown_source 1",
    ]
    assert process.seen == [("calls.show", {"call_id": "c1@host"})]

    status, out, _ = run(capsys, "calls", "show", "c2@host", "--socket", sock_path)
    assert status == 0
    assert "answered:    -" in out and "media:       -" in out
    assert "tel:+1555***6543" in out

    status, out, _ = run(
        capsys, "calls", "show", "c2@host", "--json", "--show-numbers", "--socket", sock_path
    )
    assert json.loads(out)["to_uri"] == "tel:+15559876543"


def test_cli_calls_show_unknown_call(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, err = run(capsys, "calls", "show", "nope", "--socket", sock_path)
    assert (status, out, err) == (1, "", "sipedge: no such call\n")


def test_cli_reload(
    capsys: pytest.CaptureFixture[str], process: FakeProcess, sock_path: str
) -> None:
    status, out, err = run(capsys, "reload", "--socket", sock_path)
    assert (status, out, err) == (0, "reloaded: tls, trunks\n", "")


def test_cli_process_answers_with_an_error(
    capsys: pytest.CaptureFixture[str], sock_path: str
) -> None:
    def broken(args: dict[str, Any]) -> Any:
        raise OSError("disk gone")

    with ServerThread(sock_path, {"reload": broken, "calls.list": lambda a: "nonsense"}):
        status, out, err = run(capsys, "reload", "--socket", sock_path)
        assert (status, out) == (1, "")
        assert err == "sipedge: reload failed: OSError: disk gone\n"
        status, _, err = run(capsys, "bans", "list", "--socket", sock_path)
        assert status == 1 and err.startswith("sipedge: unknown command 'bans.list'")
        status, _, err = run(capsys, "calls", "--socket", sock_path)
        assert (status, err) == (1, "sipedge: unexpected answer to calls.list\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["bans", "list"],
        ["bans", "remove", "127.0.0.3"],
        ["calls"],
        ["calls", "show", "c1@host"],
        ["reload"],
    ],
)
def test_cli_not_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    path = str(tmp_path / "none.sock")
    status, out, err = run(capsys, *argv, "--socket", path)
    assert (status, out) == (1, "")
    assert err == f"sipedge: sipedge is not running (no control socket at {path})\n"


def test_cli_socket_from_config(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--config FILE: the socket is the config's control.path, relative to the cwd
    (.sipedge/control.sock until the key exists)."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "sipedge.toml"
    cfg.write_text("[upstream]\necho = true\n")
    with ServerThread(".sipedge/control.sock", FakeProcess().handlers()):
        status, out, err = run(capsys, "reload", "--config", str(cfg))
        assert (status, out, err) == (0, "reloaded: tls, trunks\n", "")
        # Without either option the default path is asked too.
        assert run(capsys, "reload")[0] == 0
    status, _, err = run(capsys, "reload", "--config", str(tmp_path / "missing.toml"))
    assert status == 2 and "missing.toml" in err


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in (["bans"], ["bans", "flush"], ["calls", "show"], ["reload", "extra"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv, env={})
        assert e.value.code == 2
    capsys.readouterr()
    status, _, err = run(capsys, "reload", "--timeout", "0", "--socket", str(tmp_path / "s"))
    assert (status, err) == (2, "sipedge: --timeout must be more than 0 and at most 3600 seconds\n")
