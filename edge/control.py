"""The control socket: ``sipedge bans|calls|reload`` asking the running process.

A Unix stream socket, not a network port: the file's permissions (0600, in a
0700 directory when sipedge makes it) decide who may talk to the process, so
no authentication scheme is needed and nothing is exposed to the network.

The protocol is one line each way.  The client connects and sends one JSON
object ending in ``\\n``::

    {"command": "bans.remove", "address": "127.0.0.3"}

the server answers with one JSON object line and closes::

    {"ok": true, "result": {"removed": true}}
    {"ok": false, "error": "unknown command 'x' (known: bans.list, reload)"}

Every member of the request other than ``command`` is passed to the command's
handler as its arguments.  A handler is a plain callable (sync or async) taking
that dict and returning JSON-able data; it raises :class:`ControlError` for an
answer the operator should read ("no such call").  Any other exception is
logged with its traceback and the client gets only its type and message.

The server is bounded, because even a local peer can be a stuck script: a
request line of at most 64 KiB, 5 s to send it, 16 clients at a time (the
seventeenth is answered "busy" at once rather than queued).

:func:`request` is the synchronous client the CLI uses; :func:`mask_number`
and :func:`mask_uri` hide the middle of telephone numbers in what it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import socket
import stat
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from edge.log import LogFn

__all__ = [
    "DEFAULT_PATH",
    "ControlError",
    "ControlServer",
    "default_path",
    "mask_number",
    "mask_uri",
    "request",
]

DEFAULT_PATH = ".sipedge/control.sock"
MAX_LINE = 64 * 1024
READ_TIMEOUT = 5.0
# An async handler (a reload reading files) may take a while, but not forever:
# the client gives up after its own timeout anyway.
HANDLER_TIMEOUT = 30.0
MAX_CLIENTS = 16
# What the client accepts back: a calls.list of thousands of calls is a few
# MiB; anything far bigger is not an answer from sipedge.
MAX_RESPONSE = 64 * 1024 * 1024
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SUN_PATH = 107

Handler = Callable[[dict[str, Any]], Any]


class ControlError(Exception):
    """A control request failed; the message is for the operator, as is."""


def default_path(config: Any) -> str:
    """The control socket of ``config`` (``[control] path``), relative to the cwd."""
    path = getattr(getattr(config, "control", None), "path", DEFAULT_PATH)
    return str(path) if path else DEFAULT_PATH


def _noop_log(level: str, event: str, /, **fields: Any) -> None:
    pass


def _error_line(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


class ControlServer:
    """Answers control requests on the Unix socket ``path`` with ``handlers``.

    ``handlers`` maps a command name ("bans.list") to its handler; it is read
    on each request, so a mutable mapping may gain commands later.
    """

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        log: LogFn | None = None,
        read_timeout: float = READ_TIMEOUT,
        handler_timeout: float = HANDLER_TIMEOUT,
        max_line: int = MAX_LINE,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.log: LogFn = log if log is not None else _noop_log
        self.read_timeout = read_timeout
        self.handler_timeout = handler_timeout
        self.max_line = max_line
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        # Every connection's task (to cancel them on close) and how many of
        # them are being served (the "busy" answers do not count).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active = 0
        # (st_dev, st_ino) of the socket file we bound: close() removes the
        # file only if it is still ours, not a successor's.
        self._inode: tuple[int, int] | None = None

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return self._active

    async def start(self) -> None:
        """Listen on ``path``; raises ControlError if it cannot (another sipedge
        answering there, a file that is not a socket, a path too long) or OSError."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        if len(os.fsencode(self.path)) > _MAX_SUN_PATH:
            raise ControlError(
                f"control socket path {self.path!r} is too long "
                f"(a Unix socket path holds at most {_MAX_SUN_PATH} bytes)"
            )
        self._make_directory()
        await self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # umask, not just chmod after: between bind and chmod the socket would
            # exist with the process's default mode, connectable by others.
            old_umask = os.umask(0o177)
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=self.max_line
            )
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise
        self.log("info", "control_listening", path=self.path)

    async def close(self) -> None:
        """Stop listening, end the connections being served, remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._remove_socket_file()

    # ------------------------------------------------------------ start-up

    def _make_directory(self) -> None:
        parent = os.path.dirname(self.path)
        if not parent:
            return
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            return
        mode = os.stat(parent).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            # Whoever may write the directory may replace the socket with their
            # own and answer the CLI in sipedge's name.
            self.log("warning", "control_directory_writable", path=parent, mode=oct(mode & 0o777))

    async def _clear_stale(self) -> None:
        """Remove a socket file nobody answers on; refuse a live one or a non-socket."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path!r} exists and is not a socket; not replacing it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 1.0)
        except (ConnectionRefusedError, FileNotFoundError):
            # Left behind by a process that died without close(): nobody listens.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.log("info", "control_stale_socket_removed", path=self.path)
            return
        except TimeoutError:
            # A listener with a full backlog is alive, just busy.
            pass
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        raise ControlError(
            f"another process answers on the control socket {self.path!r} "
            "(is sipedge already running from this directory?)"
        )

    def _remove_socket_file(self) -> None:
        if self._inode is None:
            return
        inode, self._inode = self._inode, None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    # ------------------------------------------------------------ one client

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._active >= self.max_clients:
                self.log("warning", "control_busy", clients=self._active)
                await self._answer(writer, _error_line("busy: too many control clients, try again"))
                return
            self._active += 1
            try:
                line = await self._read_request(reader)
                answer = _error_line(line) if isinstance(line, str) else await self._execute(line)
                await self._answer(writer, answer)
            finally:
                self._active -= 1
        except asyncio.CancelledError:
            # close() ends this connection.  Nobody awaits this task (asyncio's
            # stream callback only inspects it, and logs a cancellation as an
            # error on 3.11), so the cancellation ends here, with the connection.
            writer.close()
        finally:
            self._tasks.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | str:
        """The request line, or the error message to answer with."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\n"), self.read_timeout)
        except TimeoutError:
            self.log("info", "control_timeout", seconds=self.read_timeout)
            return f"timed out: no request line within {self.read_timeout:g} s"
        except asyncio.LimitOverrunError:
            self.log("info", "control_request_too_long", limit=self.max_line)
            return f"request too long (at most {self.max_line} bytes)"
        except asyncio.IncompleteReadError as e:
            # The client closed its side without a newline: take what it sent.
            return e.partial if e.partial.strip() else "empty request"
        except OSError as e:
            return f"read failed: {e.strerror or e}"

    async def _execute(self, line: bytes) -> bytes:
        # The stream's limit already bounds the line to max_line bytes before "\n".
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            return _error_line(f"bad request: not JSON ({e})")
        if not isinstance(req, dict):
            return _error_line("bad request: not a JSON object")
        command = req.pop("command", None)
        if not isinstance(command, str):
            return _error_line('bad request: no "command" string')
        handler = self.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return _error_line(f"unknown command {command!r} (known: {known})")
        try:
            result = handler(req)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.handler_timeout)
            answer = json.dumps({"ok": True, "result": result}).encode() + b"\n"
        except ControlError as e:
            self.log("debug", "control_command", command=command, ok=False, error=str(e))
            return _error_line(str(e))
        except Exception as e:
            # The traceback is for the log; the client gets one line.
            problem = f"{type(e).__name__}: {e}"
            self.log(
                "error",
                "control_handler_failed",
                command=command,
                problem=problem,
                traceback=traceback.format_exc(),
            )
            return _error_line(f"{command} failed: {problem}")
        self.log("debug", "control_command", command=command, ok=True)
        return answer

    async def _answer(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
            # A client that does not read its answer must not hold a slot forever.
            await asyncio.wait_for(writer.drain(), self.read_timeout)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.read_timeout)


# ---------------------------------------------------------------- the client


def request(path: str, command: str, timeout: float = 5.0, **args: Any) -> Any:
    """Send ``command`` with ``args`` to the process listening on ``path``.

    Returns the ``result``; raises ControlError with a message for the operator
    if the process is not running, answers with an error, or does not answer
    within ``timeout`` seconds (in all).
    """
    line = json.dumps({"command": command, **args}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            # Refused: a socket file left by a process that is gone.
            raise ControlError(f"sipedge is not running (no control socket at {path})") from None
        except PermissionError:
            raise ControlError(
                f"permission denied on the control socket {path}: "
                "run this as the user sipedge runs as"
            ) from None
        except TimeoutError:
            raise ControlError(f"no answer from sipedge on {path} within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        data = _exchange(sock, line, deadline, path, timeout)
    try:
        answer = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"not a sipedge answer on {path}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"not a sipedge answer on {path}")
    if answer["ok"] is not True:
        raise ControlError(str(answer.get("error") or "unknown error"))
    return answer.get("result")


def _exchange(
    sock: socket.socket, line: bytes, deadline: float, path: str, timeout: float
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        sock.sendall(line)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
            if size > MAX_RESPONSE:
                raise ControlError(f"answer from {path} too long")
    except TimeoutError:
        raise ControlError(f"no answer from sipedge on {path} within {timeout:g} s") from None
    except OSError as e:
        if not chunks:
            raise ControlError(f"connection to {path} failed: {e.strerror or e}") from None
    if not chunks:
        raise ControlError(f"sipedge closed the control connection on {path} without answering")
    return b"".join(chunks)


# ---------------------------------------------------------------- masking

# A telephone number as people write it: digits with visual separators
# (RFC 3966 §3: "-" / "." / "(" / ")"), optionally after a "+".
_PHONE = re.compile(r"\+?\d(?:[\d\-.()]*\d)?")
# Runs of fewer digits stay visible: extensions ("1001") identify no one.
_MIN_MASKED_DIGITS = 5


def mask_number(number: str) -> str:
    """``+15551234567`` -> ``+1555***4567``: at least three digits always hidden.

    Keeps a leading ``+``, up to four leading and four trailing digits, and
    drops separators; the hidden part is always ``***``, so the mask does not
    tell the number's length either.
    """
    plus = "+" if number.startswith("+") else ""
    digits = "".join(c for c in number if c.isdigit())
    n = len(digits)
    head = min(4, max(0, (n - 3) // 2))
    tail = min(4, max(0, n - 3 - head))
    return f"{plus}{digits[:head]}***{digits[n - tail :] if tail else ''}"


def _mask_match(m: re.Match[str]) -> str:
    text = m.group()
    if sum(c.isdigit() for c in text) < _MIN_MASKED_DIGITS:
        return text
    return mask_number(text)


def mask_uri(uri: str) -> str:
    """Mask the telephone numbers of a SIP/tel URI or name-addr, not its host.

    ``sip:+15551234567@carrier.example;user=phone`` ->
    ``sip:+1555***4567@carrier.example;user=phone``; a number in a display name
    is masked too; ``sip:alice@example.org`` and a URI without a user part are
    left as they are (their digits are a host or a port, not a person).
    """
    at = uri.find("@")
    if at < 0:
        if not re.search(r"(?i)\btel:", uri):
            return uri
        return _PHONE.sub(_mask_match, uri)
    return _PHONE.sub(_mask_match, uri[:at]) + uri[at:]
