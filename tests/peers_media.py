"""Real media peers for the relay's end-to-end tests: RTP/SRTP endpoints, SDP, sipp traces,
baresip, tshark.

Everything here runs on loopback only (127.0.0.x) and on ports from
:func:`tests.peers.free_port`; processes are :class:`tests.peers.Proc` (ended by PID).

- :class:`RtpEndpoint`: a UDP RTP socket and the RTCP one after it, in Python, with a
  receiver thread that keeps every datagram and its source.  It stands in for a phone's
  media when a test needs to see or forge packets (sipp signals, the endpoint speaks).
- :func:`srtp_session`: a pylibsrtp (libsrtp) session from an SDES inline key, the
  independent reference the relay's own SRTP is checked against.
- :class:`SdpMedia` / :func:`sdp_media`: the first audio stream of an SDP body (address,
  ports, profile, a=crypto) as the other side will use it.
- :func:`sipp_message`: a message sipp sent or received, from its ``-trace_msg`` file.
- :class:`Baresip` and :class:`BaresipCtl`: baresip 1.0.0 (Debian ``baresip-core``)
  headless with a config in the shape of ``shared/peers/baresip/mkconf.sh``, driven over
  ctrl_tcp (netstring JSON), as ``shared/peers/baresip/bsctl.py`` does.
- :class:`Capture`: tshark on ``lo`` with a capture filter, read back as UDP datagrams.
- :func:`relay_port_range`: a free range of even/odd pairs inside 20000-29999 for
  ``[media] port_range``.
"""

from __future__ import annotations

import array
import base64
import contextlib
import json
import math
import random
import re
import secrets
import signal
import socket
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import PeerError, Proc, Sipp, find_binary, free_port, wait_for_port

# ---------------------------------------------------------------- ports

RELAY_LOW, RELAY_HIGH = 20000, 29999


def relay_port_range(pairs: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """``pairs`` consecutive RTP/RTCP port pairs (an even start) free on ``host`` inside
    20000-29999, handed out by :func:`tests.peers.free_port` so no other peer of this
    process takes one.  For ``[media] port_range = "start-end"``."""
    for _ in range(200):
        first = free_port(host, "udp", count=2 * pairs + 1)
        start = first + (first & 1)
        end = start + 2 * pairs - 1
        if start >= RELAY_LOW and end <= RELAY_HIGH:
            return start, end
    raise PeerError(f"no {pairs} free port pairs on {host} in {RELAY_LOW}-{RELAY_HIGH}")


# ---------------------------------------------------------------- RTP and RTCP packets

PCMA = 8
PCMU = 0


def rtp_packet(
    seq: int, ts: int, ssrc: int, payload: bytes, pt: int = PCMA, marker: bool = False
) -> bytes:
    """An RTP packet (RFC 3550 section 5.1): V=2, no padding, extension or CSRC."""
    return struct.pack(
        "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
    ) + bytes(payload)


def rtp_fields(packet: bytes) -> tuple[int, int, int, int]:
    """(payload type, sequence number, timestamp, SSRC) of an RTP packet."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    _, m_pt, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return m_pt & 0x7F, seq, ts, ssrc


def rtcp_sender_report(ssrc: int, rtp_ts: int = 0, packets: int = 0, octets: int = 0) -> bytes:
    """An RTCP sender report without report blocks (RFC 3550 section 6.4.1): 28 bytes."""
    ntp = int(time.time() + 2208988800) << 32
    return struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets, octets)


def rtcp_ssrc(packet: bytes) -> int:
    return int(struct.unpack("!I", packet[4:8])[0])


@dataclass
class RtpStream:
    """One RTP source: SSRC, sequence numbers and timestamps of 20 ms PCMA packets whose
    payload names the stream and the sequence number (so a receiver can tell exactly
    which packet it got)."""

    ssrc: int = field(default_factory=lambda: random.getrandbits(32) | 1)
    seq: int = field(default_factory=lambda: random.randrange(0, 30000))
    ts: int = field(default_factory=lambda: random.getrandbits(31))
    pt: int = PCMA
    sent: list[bytes] = field(default_factory=list)

    def next_packet(self) -> bytes:
        tag = struct.pack("!II", self.ssrc, self.seq)
        packet = rtp_packet(self.seq, self.ts, self.ssrc, (tag * 20)[:160], self.pt)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFFFFFF
        self.sent.append(packet)
        return packet


# ---------------------------------------------------------------- SRTP (libsrtp)

SUITE_80 = "AES_CM_128_HMAC_SHA1_80"
SUITE_32 = "AES_CM_128_HMAC_SHA1_32"


def new_inline_key() -> str:
    """A fresh SDES inline key: 16-byte master key + 14-byte salt, base64 (RFC 4568 6.1)."""
    return base64.b64encode(secrets.token_bytes(30)).decode()


def srtp_session(inline_key: str, *, outbound: bool, suite: str = SUITE_80) -> Any:
    """A pylibsrtp Session for one direction, from an SDES inline key+salt."""
    try:
        import pylibsrtp
    except ImportError:
        import pytest

        pytest.fail("pylibsrtp not importable: pip install pylibsrtp (the test extra)")
    profiles = {
        SUITE_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        SUITE_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    }
    policy = pylibsrtp.Policy(
        key=base64.b64decode(inline_key),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        if outbound
        else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profiles[suite],
    )
    return pylibsrtp.Session(policy=policy)


# ---------------------------------------------------------------- SDP


@dataclass(frozen=True)
class Crypto:
    tag: int
    suite: str
    key: str  # the inline key+salt, base64, without lifetime or MKI


@dataclass(frozen=True)
class SdpMedia:
    """The first audio stream of an SDP body, as the far side uses it."""

    address: str
    port: int
    rtcp_port: int
    proto: str
    formats: tuple[str, ...]
    cryptos: tuple[Crypto, ...]
    rtcp_mux: bool
    lines: tuple[str, ...]  # the media section's lines

    def crypto(self, suite: str = SUITE_80) -> Crypto:
        for c in self.cryptos:
            if c.suite == suite:
                return c
        raise AssertionError(f"no a=crypto with {suite} in {self.lines}")


_CRYPTO = re.compile(r"^a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)")


def sdp_body(message: str) -> str:
    """The body of a SIP message (text as sipp traces it, LF or CRLF)."""
    text = message.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1] if "\n\n" in text else ""


def sdp_media(sdp: str) -> SdpMedia:
    """Parse the first ``m=audio`` section of ``sdp`` (a body, or a whole message)."""
    if not sdp.lstrip().startswith("v="):
        sdp = sdp_body(sdp)
    session_c: str | None = None
    media: list[str] | None = None
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            if media is not None:
                break
            if line.startswith("m=audio "):
                media = [line]
            continue
        if media is not None:
            media.append(line)
        elif line.startswith("c="):
            session_c = line
    if media is None:
        raise AssertionError(f"no m=audio in SDP:\n{sdp}")
    _, port, proto, *formats = media[0][2:].split()
    c_line = next((x for x in media if x.startswith("c=")), session_c)
    if c_line is None:
        raise AssertionError(f"no c= line for m=audio in SDP:\n{sdp}")
    address = c_line.split()[-1]
    rtcp_mux = "a=rtcp-mux" in media
    rtcp_port = int(port) if rtcp_mux else int(port) + 1
    cryptos = []
    for line in media:
        if line.startswith("a=rtcp:"):
            rtcp_port = int(line.split(":", 1)[1].split()[0])
        m = _CRYPTO.match(line)
        if m:
            cryptos.append(Crypto(int(m.group(1)), m.group(2), m.group(3)))
    return SdpMedia(
        address=address,
        port=int(port),
        rtcp_port=rtcp_port,
        proto=proto,
        formats=tuple(formats),
        cryptos=tuple(cryptos),
        rtcp_mux=rtcp_mux,
        lines=tuple(media),
    )


# ---------------------------------------------------------------- sipp traces

_TRACE_SEPARATOR = "-----------------------------------------------"


def sipp_messages(sipp: Sipp, direction: str = "received") -> list[str]:
    """Messages sipp sent or received ("sent"/"received"), in order, from its trace."""
    out = []
    for block in sipp.sent_and_received().split(_TRACE_SEPARATOR):
        head, _, message = block.partition(":\n\n")
        if f"message {direction}" in head:
            out.append(message.strip("\n"))
    return out


def sipp_message(
    sipp: Sipp,
    first_line: str,
    *,
    direction: str = "received",
    contains: str = "",
    timeout: float = 15.0,
) -> str:
    """Wait for the first message sipp ``direction`` whose first line starts with
    ``first_line`` (e.g. "INVITE ", "SIP/2.0 200") and that contains ``contains``."""
    deadline = time.monotonic() + timeout
    while True:
        for message in sipp_messages(sipp, direction):
            if message.startswith(first_line) and contains in message:
                return message
        if sipp.poll() is not None or time.monotonic() > deadline:
            # One last read: sipp may have written it just before exiting.
            for message in sipp_messages(sipp, direction):
                if message.startswith(first_line) and contains in message:
                    return message
            raise PeerError(
                f"{sipp.name} {direction} no {first_line!r} message"
                f"\n{sipp.result().describe()}\n{sipp.sent_and_received()[-4000:]}"
            )
        time.sleep(0.05)


# ---------------------------------------------------------------- a Python RTP endpoint


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() of arrival
    data: bytes
    source: tuple[str, int]
    rtcp: bool  # arrived on the RTCP socket


class RtpEndpoint:
    """A UDP RTP socket on ``host`` and the RTCP socket on the next port, with a receiver
    thread that records every datagram (with its source).  A context manager.

    ``port`` is even by default (RFC 3550 section 11), found free with
    :func:`tests.peers.free_port`.
    """

    def __init__(self, host: str, port: int | None = None) -> None:
        self.host = host
        if port is None:
            first = free_port(host, "udp", count=3)
            port = first + (first & 1)
        self.port = port
        self.rtp = self._bind(port)
        self.rtcp = self._bind(port + 1)
        self._lock = threading.Lock()
        self._received: list[Datagram] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp-{host}:{port}", daemon=True)
        self._thread.start()

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((self.host, port))
        sock.setblocking(False)
        return sock

    @property
    def rtcp_port(self) -> int:
        return self.port + 1

    def _run(self) -> None:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.rtp, selectors.EVENT_READ, False)
            sel.register(self.rtcp, selectors.EVENT_READ, True)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    sock = self.rtcp if key.data else self.rtp
                    while True:
                        try:
                            data, source = sock.recvfrom(4096)
                        except BlockingIOError:
                            break
                        except OSError:  # ICMP errors of earlier sends, or closed
                            if self._stop.is_set():
                                return
                            break
                        with self._lock:
                            self._received.append(
                                Datagram(time.monotonic(), data, source[:2], bool(key.data))
                            )

    def send(self, data: bytes, destination: tuple[str, int], *, rtcp: bool = False) -> None:
        sock = self.rtcp if rtcp else self.rtp
        for _ in range(1000):
            try:
                sock.sendto(data, destination)
                return
            except BlockingIOError:  # the send buffer is full: a flood outpaces the kernel
                time.sleep(0.001)
        raise PeerError(f"cannot send from {self.host}:{self.port}: send buffer stays full")

    def received(self, *, rtcp: bool | None = False, since: float = 0.0) -> list[Datagram]:
        """Datagrams received so far (``rtcp=None``: on both sockets)."""
        with self._lock:
            return [d for d in self._received if (rtcp is None or d.rtcp == rtcp) and d.at >= since]

    def wait_for(
        self, count: int, *, rtcp: bool = False, timeout: float = 5.0, since: float = 0.0
    ) -> list[Datagram]:
        """Wait until ``count`` datagrams arrived (RTP or RTCP socket); return them all."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(rtcp=rtcp, since=since)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.rtp.close()
        self.rtcp.close()

    def __enter__(self) -> RtpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pacer:
    """Calls ``send()`` every ``interval`` seconds in a thread until stopped (a steady
    media stream while a test does other things)."""

    def __init__(self, send: Callable[[], None], interval: float = 0.02) -> None:
        self._send = send
        self.interval = interval
        self.errors: list[BaseException] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._send()
                self.count += 1
            except BaseException as exc:  # reported by stop()
                self.errors.append(exc)
                return
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Pacer:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5.0)
        if self.errors:
            raise self.errors[0]
        return self.count


# ---------------------------------------------------------------- sipedge's log


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log (other lines skipped)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def events(proc: Proc, event: str) -> list[dict[str, Any]]:
    """sipedge's log records named ``event`` so far."""
    return [r for r in log_records(proc.read_stdout()) if r.get("event") == event]


def wait_for_event(
    proc: Proc, event: str, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] = bool
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in events(proc, event):
            if where(record):
                return record
        if time.monotonic() > deadline or proc.poll() is not None:
            raise PeerError(f"sipedge logged no {event!r} in {timeout}s\n{proc.log_tail(30)}")
        time.sleep(0.05)


# ---------------------------------------------------------------- tshark


@dataclass(frozen=True)
class UdpPacket:
    src: tuple[str, int]
    dst: tuple[str, int]
    length: int  # UDP length: 8 + payload
    payload: bytes


class Capture(Proc):
    """tshark capturing UDP on ``lo`` with a BPF ``capture_filter`` into a pcapng file.

    ``start()`` then :meth:`wait_ready` (tshark says "Capturing on"); :meth:`stop`
    (SIGINT, so the file is complete) and :meth:`udp` to read the datagrams back.
    """

    def __init__(
        self, *, workdir: Path, capture_filter: str, name: str = "tshark", limit_s: int = 120
    ) -> None:
        binary = find_binary("tshark") or "tshark"
        self.binary = binary
        self.path = workdir / f"{name}.pcapng"
        argv = [binary, "-n", "-i", "lo", "-q", "-w", str(self.path)]
        argv += ["-f", capture_filter, "-a", f"duration:{limit_s}"]
        super().__init__(argv, workdir=workdir, name=name)

    def wait_ready(self, timeout: float = 15.0) -> Capture:
        deadline = time.monotonic() + timeout
        while "Capturing on" not in self.read_stderr():
            if self.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"tshark did not start capturing\n{self.log_tail()}")
            time.sleep(0.05)
        time.sleep(0.2)  # "Capturing on" is printed just before the first read
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.running:
            self.signal(signal.SIGINT)
            with contextlib.suppress(PeerError):
                self.wait(timeout)
        return super().stop(timeout)

    def udp(self) -> list[UdpPacket]:
        import subprocess

        fields = ["ip.src", "udp.srcport", "ip.dst", "udp.dstport", "udp.length", "udp.payload"]
        argv = [self.binary, "-n", "-r", str(self.path), "-Y", "udp", "-T", "fields"]
        argv += ["-E", "separator=|"]
        for f in fields:
            argv += ["-e", f]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        packets = []
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) != 6 or not parts[1]:
                continue
            payload = bytes.fromhex(parts[5].replace(":", ""))
            packets.append(
                UdpPacket(
                    (parts[0], int(parts[1])), (parts[2], int(parts[3])), int(parts[4]), payload
                )
            )
        return packets


# ---------------------------------------------------------------- baresip


class BaresipCtl:
    """A client of baresip's ctrl_tcp module: netstring-framed JSON commands
    ``{"command","params","token"}``; responses carry the token, events arrive any time."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.seen: list[dict[str, Any]] = []  # every event, in arrival order
        self._taken: dict[str, int] = {}  # events of each type wait_event returned
        self._token = 0

    def close(self) -> None:
        self.sock.close()

    def _send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data + b",")

    def _recv_one(self, deadline: float) -> dict[str, Any]:
        while True:
            colon = self.buf.find(b":")
            if colon > 0:
                n = int(self.buf[:colon])
                if len(self.buf) >= colon + 1 + n + 1:
                    payload = self.buf[colon + 1 : colon + 1 + n]
                    self.buf = self.buf[colon + 2 + n :]
                    msg: dict[str, Any] = json.loads(payload)
                    if msg.get("event"):
                        self.seen.append(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from baresip")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("baresip closed its ctrl_tcp connection")
            self.buf += chunk

    def command(self, cmd: str, params: str = "", timeout: float = 10.0) -> dict[str, Any]:
        self._token += 1
        token = str(self._token)
        self._send({"command": cmd, "params": params, "token": token})
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv_one(deadline)
            if msg.get("response") and msg.get("token") == token:
                return msg

    def wait_event(
        self, etype: str, timeout: float = 10.0, fail_on: str | None = None
    ) -> dict[str, Any]:
        """The next event of type ``etype`` not returned yet (in arrival order, whenever it
        arrived: CALL_MENC may come before or after CALL_ESTABLISHED).  A ``fail_on``
        event not returned yet (e.g. CALL_CLOSED) ends the wait with PeerError."""
        deadline = time.monotonic() + timeout
        while True:
            for kind in (etype, fail_on):
                if kind is None:
                    continue
                matching = [e for e in self.seen if e.get("type") == kind]
                taken = self._taken.get(kind, 0)
                if len(matching) > taken:
                    self._taken[kind] = taken + 1
                    if kind != etype:
                        raise PeerError(f"{kind} ({matching[taken].get('param')}) before {etype}")
                    return matching[taken]
            self._recv_one(deadline)


class Baresip(Proc):
    """A headless baresip 1.0.0 (Debian ``baresip-core``): config in ``workdir/name``
    (the shape of shared/peers/baresip/mkconf.sh: ausine 440 Hz source, ALSA's null sink,
    no ICE/STUN/TURN, ``rtp_stats``, the sndfile dump of every call, ctrl_tcp), one
    account line, ``net_interface`` = ``host``.

    ``sip_listen P`` binds UDP P, TCP P and TLS P+1, so two ports are taken for it.
    ``-t`` bounds the process's life.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        name: str,
        host: str,
        account: str,
        max_seconds: int = 90,
        rtcp_mux: bool = False,
    ) -> None:
        self.host = host
        self.sip_port = free_port(host, "both", count=2)
        self.ctrl_port = free_port("127.0.0.1", "tcp")
        rtp_low = free_port(host, "udp", count=40)
        self.rtp_range = (rtp_low + (rtp_low & 1), rtp_low + 39)
        self.confdir = workdir / name
        self.dumpdir = self.confdir / "dump"
        self.dumpdir.mkdir(parents=True, exist_ok=True)
        self.account = account.format(host=host, port=self.sip_port)
        config = {
            "poll_method": "epoll",
            "sip_listen": f"{host}:{self.sip_port}",
            "call_local_timeout": "120",
            "call_max_calls": "4",
            "audio_player": "alsa,null",
            "audio_source": "ausine,440",
            "audio_alert": "alsa,null",
            "ausrc_srate": "48000",
            "ausrc_channels": "2",
            "rtp_ports": f"{self.rtp_range[0]}-{self.rtp_range[1]}",
            "rtp_stats": "yes",
            "rtcp_mux": "yes" if rtcp_mux else "no",
            "jitter_buffer_delay": "5-10",
            "net_interface": host,
            "module_path": "/usr/lib/baresip/modules",
        }
        lines = [f"{k}\t\t{v}" for k, v in config.items()]
        for module in ("g711", "ausine", "aufile", "alsa", "sndfile", "srtp", "dtls_srtp"):
            lines.append(f"module\t\t{module}.so")
        lines += [
            "module_tmp\t\taccount.so",
            "module_app\t\tmenu.so",
            "module_app\t\tctrl_tcp.so",
            f"ctrl_tcp_listen\t\t127.0.0.1:{self.ctrl_port}",
            f"snd_path\t\t{self.dumpdir}",
        ]
        (self.confdir / "config").write_text("\n".join(lines) + "\n")
        (self.confdir / "accounts").write_text(self.account + "\n")
        (self.confdir / "contacts").write_text("")
        binary = find_binary("baresip") or "baresip"
        argv = [binary, "-4", "-f", str(self.confdir), "-t", str(max_seconds)]
        super().__init__(argv, workdir=workdir, name=name)
        self.ctl: BaresipCtl | None = None

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.host, self.sip_port)

    def wait_ready(self, timeout: float = 10.0) -> Baresip:
        wait_for_port(self.host, self.sip_port, "udp", timeout, proc=self)
        wait_for_port("127.0.0.1", self.ctrl_port, "tcp", timeout, proc=self)
        self.ctl = BaresipCtl(self.ctrl_port)
        return self

    def command(self, cmd: str, params: str = "", timeout: float = 10.0) -> dict[str, Any]:
        assert self.ctl is not None, "wait_ready() first"
        return self.ctl.command(cmd, params, timeout)

    def wait_event(
        self, etype: str, timeout: float = 10.0, fail_on: str | None = None
    ) -> dict[str, Any]:
        assert self.ctl is not None, "wait_ready() first"
        try:
            return self.ctl.wait_event(etype, timeout, fail_on)
        except (TimeoutError, OSError, PeerError) as exc:
            seen = "\n".join(json.dumps(e) for e in self.ctl.seen)
            raise PeerError(
                f"{self.name}: no {etype} event ({exc})\nevents:\n{seen}\n{self.log_tail(30)}"
            ) from None

    def quit(self, timeout: float = 10.0) -> None:
        if self.ctl is not None and self.running:
            with contextlib.suppress(OSError, TimeoutError):
                self.ctl.command("quit", timeout=2.0)
            with contextlib.suppress(PeerError):
                self.wait(timeout)
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None

    def stop(self, timeout: float = 5.0) -> int | None:
        self.quit(timeout)
        return super().stop(timeout)

    def dumps(self, kind: str = "dec") -> list[Path]:
        """The sndfile dumps of its calls: ``*-dec.wav`` (what it received and decoded)
        or ``*-enc.wav`` (what it sent)."""
        return sorted(self.dumpdir.glob(f"*-{kind}.wav"))


def tone_frequency(path: Path, skip: float = 1.0) -> tuple[float, float, float]:
    """(dominant frequency by zero crossings, RMS, seconds) of a 16-bit PCM wav after
    ``skip`` seconds (shared/peers/baresip/wavfreq.py)."""
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        samples = array.array("h", w.readframes(w.getnframes()))
    mono = samples[int(skip * rate) * channels :: channels]
    if not mono:
        return 0.0, 0.0, 0.0
    crossings = sum(1 for i in range(1, len(mono)) if (mono[i - 1] < 0) != (mono[i] < 0))
    seconds = len(mono) / rate
    rms = math.sqrt(sum(x * x for x in mono) / len(mono))
    return crossings / 2 / seconds, rms, seconds


# ---------------------------------------------------------------- misc


@contextlib.contextmanager
def bound_socket(host: str) -> Iterator[socket.socket]:
    """A UDP socket on ``host`` at a free port (an attacker's, for instance)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, free_port(host, "udp")))
        sock.settimeout(0.05)
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket, seconds: float) -> list[bytes]:
    """What arrives on ``sock`` within ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(4096)
        except (TimeoutError, BlockingIOError):
            continue
        got.append(data)
    return got


__all__ = [
    "PCMA",
    "PCMU",
    "SUITE_32",
    "SUITE_80",
    "Baresip",
    "BaresipCtl",
    "Capture",
    "Crypto",
    "Datagram",
    "Pacer",
    "RtpEndpoint",
    "RtpStream",
    "SdpMedia",
    "UdpPacket",
    "bound_socket",
    "drain",
    "events",
    "log_records",
    "new_inline_key",
    "relay_port_range",
    "rtcp_sender_report",
    "rtcp_ssrc",
    "rtp_fields",
    "rtp_packet",
    "sdp_body",
    "sdp_media",
    "sipp_message",
    "sipp_messages",
    "srtp_session",
    "tone_frequency",
    "wait_for_event",
]


class SettableClock:
    """A clock the test sets (``clock.now = ...``); the C data planes in ``planes``
    follow it, so that media timeouts and RTCP buckets run on the same time."""

    def __init__(self, start: float) -> None:
        self.planes: list[Any] = []
        self._now = start

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value
        for plane in self.planes:
            plane.set_clock(value)

    def __call__(self) -> float:
        return self._now


class Logs:
    """A component's ``log=`` that keeps every line: (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, event: str, /, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [f for _, e, f in self.lines if e == event]
