"""End to end: who gets in (issue 5), against a real ``sipedge run`` process.

The hosts are loopback addresses: the carrier 127.0.0.2 (a trunk allowlisting
127.0.0.2/32), attackers 127.0.0.3 (the scanners' own User-Agent) and 127.0.0.5 (the
same tools disguised with a benign User-Agent), a phone 127.0.0.4, a control
attacker 127.0.0.6 and a raw upstream 127.0.0.7.  The upstream is the edge's echo
endpoint unless a test needs to read what is forwarded.

The attackers are the real sipvicious 0.3.8 tools (svmap, svwar, svcrack; see
``tests.peers.sipvicious`` for the two defaults changed around them), the clients
sipp (Digest computed by sipp itself) and raw UDP sockets (Bearer JWT minted with
PyJWT, access keys from ``sipedge keys create``).  What the edge did is read from its
audit log (one JSON object per line, edge/audit.py).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers import (
    PeerError,
    Proc,
    ProcGroup,
    SipedgeProc,
    Sipp,
    SippResult,
    TestCerts,
    free_port,
    make_test_certs,
    require_binary,
    sip_uri,
    sipedge_admin,
    sipedge_with_env,
    sipp_uac,
    sipvicious,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

EDGE = "127.0.0.1"
CARRIER = "127.0.0.2"
ATTACKER = "127.0.0.3"  # sipvicious as shipped: User-Agent friendly-scanner
PHONE = "127.0.0.4"
DISGUISED = "127.0.0.5"  # sipvicious with a benign User-Agent
CONTROL = "127.0.0.6"
UPSTREAM = "127.0.0.7"

BENIGN_UA = "Linphone/5.1.65 (belle-sip/5.1.0)"
CUSTOMER = str(uuid.uuid4())
# Fresh per run, so that finding one in a log or an output means it leaked.
PASSWORD = "pw-" + secrets.token_hex(10)
JWT_KEY = secrets.token_urlsafe(48)
AUTH_FAILURES = 5  # bans.auth_failures


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def procs() -> Iterator[ProcGroup]:
    with ProcGroup() as group:
        yield group


# ---------------------------------------------------------------- the edge under test


@dataclass
class Edge:
    proc: SipedgeProc
    audit_path: Path

    @property
    def addr(self) -> tuple[str, int]:
        return self.proc.addresses.of("udp")

    def events(self, event_type: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Audit events of ``event_type`` whose fields (or details) equal ``match``."""
        found = []
        try:
            lines = self.audit_path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            if event_type is not None and event["event_type"] != event_type:
                continue
            details = event.get("details") or {}
            if all(event.get(k, details.get(k)) == v for k, v in match.items()):
                found.append(event)
        return found

    def wait_event(self, event_type: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(event_type, **match)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(
            f"no audit event {event_type} {match} within {timeout}s\n{self.audit_text()[-4000:]}"
        )

    def audit_text(self) -> str:
        try:
            return self.audit_path.read_text()
        except OSError:
            return ""

    def output(self) -> str:
        return self.proc.read_stdout() + self.proc.read_stderr()


def start_edge(
    workdir: Path,
    procs: ProcGroup,
    certs: TestCerts,
    *,
    users: tuple[str, ...] = ("alice",),
    digest_algorithms: list[str] | None = None,
    upstream: dict[str, Any] | None = None,
) -> Edge:
    """``sipedge run`` with the carrier trunk, the credential database holding ``users``
    (password PASSWORD, customer CUSTOMER, call_create), the audit log in a file, bans
    after AUTH_FAILURES failures and the JWT key in its environment."""
    audit_path = workdir / "audit.jsonl"
    auth: dict[str, Any] = {"database": str(workdir / "credentials.sqlite3")}
    if digest_algorithms is not None:
        auth["digest_algorithms"] = digest_algorithms
    proc = sipedge_with_env(
        {"JWT_KEY": JWT_KEY},
        workdir=workdir,
        certs=certs,
        upstream=upstream,
        trunks=[{"name": "carrier", "allow": [f"{CARRIER}/32"]}],
        extra={
            "auth": auth,
            # Each line at once (no batching): the checks that an event is absent
            # must see every line the moment they look.
            "audit": {"path": str(audit_path), "flush_interval": 0},
            "bans": {"auth_failures": AUTH_FAILURES},
            "proxy": {"timer_t1": 0.1},
        },
    )
    for user in users:
        sipedge_admin(
            [
                *("users", "add", user, "--customer-id", CUSTOMER),
                *("--permission", "call_create", "--password-stdin"),
            ],
            config=proc.config_path,
            stdin=PASSWORD + "\n",
        )
    procs.add(proc).start()
    try:
        proc.wait_ready()
    except PeerError as e:
        pytest.fail(f"sipedge did not start: {e}\n--- config\n{proc.config_text}")
    return Edge(proc, audit_path)


def assert_no_secret(edge: Edge, *outputs: str) -> None:
    """The password, the JWT key and any token never appear in the edge's output or audit."""
    for label, text in (("edge output", edge.output()), ("audit log", edge.audit_text())):
        assert PASSWORD not in text, f"the password leaked into the {label}"
        assert JWT_KEY not in text, f"the JWT key leaked into the {label}"
        assert "eyJ" not in text, f"a JWT leaked into the {label}"
    # svcrack writes the password it tries into the From tag, hex-encoded.
    hexed = PASSWORD.encode().hex()
    for label, text in (("edge output", edge.output()), ("audit log", edge.audit_text())):
        assert hexed not in text, f"a From tag carrying the password leaked into the {label}"
    for text in outputs:
        assert PASSWORD not in text


# ---------------------------------------------------------------- a raw UDP SIP peer


@dataclass
class Message:
    first: str
    headers: list[tuple[str, str]]
    body: str

    @property
    def status(self) -> int:
        return int(self.first.split()[1]) if self.first.startswith("SIP/2.0 ") else 0

    @property
    def method(self) -> str:
        return "" if self.first.startswith("SIP/2.0 ") else self.first.split()[0]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def cseq_method(self) -> str:
        return (self.get("CSeq") or " ").split()[-1]


def parse(data: bytes) -> Message:
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Message(lines[0], headers, body)


class UdpPeer:
    """A UDP socket on one loopback host speaking just enough SIP for a call."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, free_port(host, "udp")))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str, dest: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), dest)

    def recv(self, timeout: float) -> tuple[Message, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            data, src = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return parse(data), src

    def wait_for(
        self, pred: Callable[[Message], bool], timeout: float = 5.0
    ) -> tuple[Message, tuple[str, int]] | None:
        """The first message matching ``pred`` within ``timeout`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is None:
                return None
            if pred(got[0]):
                return got
        return None

    def silent_for(self, seconds: float) -> list[Message]:
        """Everything that arrives within ``seconds`` (a silent edge: nothing)."""
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            one = self.recv(left)
            if one is None:
                break
            got.append(one[0])
        return got

    def request(
        self,
        method: str,
        ruri: str,
        *,
        call_id: str,
        from_tag: str = "ft1",
        to_tag: str | None = None,
        cseq: int = 1,
        headers: tuple[tuple[str, str], ...] = (),
        user_agent: str = "sipedge-test-raw",
        sdp: bool = False,
        branch: str | None = None,
        to: str | None = None,
    ) -> str:
        body = ""
        extra = list(headers)
        if sdp:
            body = (
                f"v=0\r\no=- 1 1 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\n"
                f"t=0 0\r\nm=audio {self.port + 2} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
            )
            extra.append(("Content-Type", "application/sdp"))
        to = f"<{to or ruri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch="
            f"{branch or 'z9hG4bK' + secrets.token_hex(8)};rport",
            f"From: <sip:4930123456@{self.host}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:phone@{self.host}:{self.port}>",
            "Max-Forwards: 70",
            f"User-Agent: {user_agent}",
            *[f"{n}: {v}" for n, v in extra],
            f"Content-Length: {len(body.encode())}",
        ]
        return "\r\n".join(lines) + "\r\n\r\n" + body


def of_call(call_id: str, method: str | None = None) -> Callable[[Message], bool]:
    """A ``wait_for`` predicate: a message of this call (a ``method`` request if given)."""

    def pred(msg: Message) -> bool:
        return msg.get("Call-ID") == call_id and (method is None or msg.method == method)

    return pred


def ruri_at(edge: Edge, user: str = "1000") -> str:
    return f"sip:{user}@{edge.addr[0]}:{edge.addr[1]}"


def call_through(
    peer: UdpPeer, edge: Edge, headers: tuple[tuple[str, str], ...], timeout: float = 8.0
) -> Message:
    """INVITE with ``headers`` (the credentials); the final response.  A 2xx is ACKed and
    the call hung up (BYE answered 200); a non-2xx final response is ACKed (same branch)."""
    call_id = secrets.token_hex(8) + "@sec"
    branch = "z9hG4bK" + secrets.token_hex(8)
    invite = peer.request(
        "INVITE", ruri_at(edge), call_id=call_id, headers=headers, sdp=True, branch=branch
    )
    peer.send(invite, edge.addr)
    final = peer.wait_for(
        lambda m: m.status >= 200 and m.get("Call-ID") == call_id and m.cseq_method == "INVITE",
        timeout,
    )
    assert final is not None, f"no final response to the INVITE within {timeout}s"
    resp = final[0]
    to_tag = re.search(r";tag=([^;>\s]+)", resp.get("To") or "")
    if resp.status >= 300:
        ack = peer.request(
            "ACK",
            ruri_at(edge),
            call_id=call_id,
            to_tag=to_tag.group(1) if to_tag else None,
            branch=branch,
        )
        peer.send(ack, edge.addr)
        return resp
    assert to_tag is not None, resp
    contact = re.search(r"<([^>]+)>", resp.get("Contact") or "")
    assert contact is not None, resp
    routes = [r.strip() for v in resp.all("Record-Route") for r in v.split(",")][::-1]
    route_headers = tuple(("Route", r) for r in routes)
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        peer.send(
            peer.request(
                method,
                contact.group(1),
                call_id=call_id,
                to_tag=to_tag.group(1),
                cseq=cseq,
                headers=route_headers,
            ),
            edge.addr,
        )
    bye_ok = peer.wait_for(
        lambda m: m.status == 200 and m.cseq_method == "BYE" and m.get("Call-ID") == call_id,
        timeout,
    )
    assert bye_ok is not None, "the BYE of an admitted call was not answered 200"
    return resp


# ---------------------------------------------------------------- sipvicious


def run_tool(
    workdir: Path,
    procs: ProcGroup,
    tool: str,
    args: list[str],
    *,
    bind: str,
    name: str,
    user_agent: str | None = None,
) -> Proc:
    proc = sipvicious(
        tool,  # type: ignore[arg-type]
        args,
        workdir=workdir,
        name=name,
        bind=bind,
        port=free_port(bind, "udp"),
        user_agent=user_agent,
    )
    procs.add(proc).start()
    return proc


def tool_output(proc: Proc, timeout: float = 40.0) -> str:
    """Wait (bounded) for a sipvicious tool and return what it printed."""
    proc.wait(timeout)
    return proc.read_stdout() + proc.read_stderr()


def assert_found_nothing(output: str) -> None:
    assert "found nothing" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


# ================================================================ 1. svmap


def test_svmap_finds_nothing(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> None:
    edge = start_edge(tmp_path, procs, certs)
    host, port = edge.addr
    target = ["-p", str(port), host]
    scanner = run_tool(tmp_path, procs, "svmap", target, bind=ATTACKER, name="svmap")
    disguised = run_tool(
        tmp_path,
        procs,
        "svmap",
        [*target, "--fromname", "bob"],
        bind=DISGUISED,
        name="svmap-ua",
        user_agent=BENIGN_UA,
    )
    assert_found_nothing(tool_output(scanner))
    assert_found_nothing(tool_output(disguised))
    # The scanner was recognised and banned; the disguised one only met silence.
    edge.wait_event("scanner_dropped", source_ip=ATTACKER, method="OPTIONS")
    edge.wait_event("ban_added", source_ip=ATTACKER, reason="scanner")
    assert not edge.events(source_ip=DISGUISED), edge.audit_text()
    # Silence is the answer to any stranger's OPTIONS, not a dead edge: the carrier's
    # OPTIONS to the edge itself is answered.
    for host_ip, expect_answer in ((PHONE, False), (CARRIER, True)):
        peer = UdpPeer(host_ip)
        try:
            peer.send(
                peer.request("OPTIONS", f"sip:{host}:{port}", call_id=f"o-{host_ip}"), edge.addr
            )
            got = peer.silent_for(1.0) if not expect_answer else None
            if expect_answer:
                answer = peer.wait_for(lambda m: m.status > 0, 5.0)
                assert answer is not None and answer[0].status == 200, answer
            else:
                assert got == [], [m.first for m in got or []]
        finally:
            peer.close()


# ================================================================ 2. svwar


def _challenge_shape(msg: Message) -> tuple[Any, ...]:
    """What a 407 says, minus what must differ per request (nonce, tags, Via, Call-ID)."""
    challenges = tuple(re.sub(r'nonce="[^"]*"', "nonce", v) for v in msg.all("Proxy-Authenticate"))
    names = tuple(sorted({n.lower() for n, _ in msg.headers}))
    return msg.status, challenges, names, msg.body


def test_svwar_enumerates_no_extension(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> None:
    edge = start_edge(tmp_path, procs, certs, users=("alice", "1000"))
    host, port = edge.addr
    words = tmp_path / "extensions.txt"
    words.write_text("admin\nalice\nbob\n1000\n100\n")
    url = f"udp://{host}:{port}"
    runs = {
        "svwar-scanner": run_tool(
            tmp_path,
            procs,
            "svwar",
            ["-e", "995-1005", "-m", "INVITE", "--maximumtime", "3", url],
            bind=ATTACKER,
            name="svwar-scanner",
        )
    }
    # The disguised runs one after the other from one address (the tool's own sanity
    # check stops it at the first 407; --force makes it try every extension).
    for i, args in enumerate(
        (
            ["-e", "995-1005", "-m", "INVITE"],
            ["-e", "995-1005", "-m", "REGISTER"],
            ["-d", str(words), "-m", "INVITE"],
            ["-e", "995-1005", "-m", "INVITE", "--force"],
            ["-e", "995-1005", "-m", "REGISTER", "--force"],
        )
    ):
        name = f"svwar-ua{i}"
        proc = run_tool(
            tmp_path,
            procs,
            "svwar",
            [*args, "--maximumtime", "3", url],
            bind=DISGUISED,
            name=name,
            user_agent=BENIGN_UA,
        )
        runs[name] = proc
        tool_output(proc)
    for name, proc in runs.items():
        output = tool_output(proc)
        assert_found_nothing(output)
        for user in ("alice", "1000"):
            assert not re.search(rf"\|\s*{user}\s*\|", output), f"{name} listed {user}\n{output}"
    edge.wait_event("ban_added", source_ip=ATTACKER, reason="scanner")
    assert not edge.events("ban_added", source_ip=DISGUISED), edge.audit_text()
    # Known and unknown users, INVITE and REGISTER: one and the same answer.
    peer = UdpPeer(PHONE)
    shapes: dict[tuple[str, str], tuple[Any, ...]] = {}
    try:
        for method in ("INVITE", "REGISTER"):
            for user in ("alice", "1000", "1003", "nobody"):
                call_id = f"{method}-{user}"
                ruri = ruri_at(edge, user) if method == "INVITE" else f"sip:{host}:{port}"
                req = peer.request(
                    method,
                    ruri,
                    call_id=call_id,
                    to=f"sip:{user}@{host}",  # REGISTER: the user being registered
                    sdp=method == "INVITE",
                )
                peer.send(req, edge.addr)
                got = peer.wait_for(of_call(call_id), 5.0)
                assert got is not None, f"{method} for {user}: no answer"
                shapes[(method, user)] = _challenge_shape(got[0])
    finally:
        peer.close()
    first = shapes[("INVITE", "alice")]
    assert first[0] == 407 and len(first[1]) >= 2, first
    for key, shape in shapes.items():
        assert shape == first, f"{key} answered differently: {shape} vs {first}"


# ================================================================ 3. svcrack


def test_svcrack_never_finds_the_password(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    # svcrack 0.3.8 computes MD5 only: offered SHA-256 first it crashes on its first guess.
    # The edge offers MD5 alone here (the old-phones setting), so that the password would
    # be found if the edge let svcrack try long enough; the control run proves it.
    edge = start_edge(tmp_path, procs, certs, digest_algorithms=["MD5"])
    host, port = edge.addr
    url = f"udp://{host}:{port}"
    wordlist = (
        [f"guess{i:02d}" for i in range(29)] + [PASSWORD] + [f"more{i:02d}" for i in range(20)]
    )
    assert len(wordlist) == 50 and wordlist[29] == PASSWORD
    words = tmp_path / "words.txt"
    words.write_text("\n".join(wordlist) + "\n")
    control_words = tmp_path / "control.txt"
    control_words.write_text(PASSWORD + "\n")
    args = ["-u", "alice", "--maximumtime", "3"]
    scanner = run_tool(
        tmp_path, procs, "svcrack", [*args, "-d", str(words), url], bind=ATTACKER, name="crack"
    )
    disguised = run_tool(
        tmp_path,
        procs,
        "svcrack",
        [*args, "-d", str(words), url],
        bind=DISGUISED,
        name="crack-ua",
        user_agent=BENIGN_UA,
    )
    control = run_tool(
        tmp_path,
        procs,
        "svcrack",
        [*args, "-d", str(control_words), url],
        bind=CONTROL,
        name="crack-control",
        user_agent=BENIGN_UA,
    )
    # The control's right guess passes the edge (its REGISTER then goes to the echo
    # endpoint, which does not answer 200, so svcrack itself reports an unknown response).
    control_out = tool_output(control)
    assert "Traceback" not in control_out, control_out
    edge.wait_event("authentication_succeeded", source_ip=CONTROL, scheme="digest")
    for proc in (scanner, disguised):
        output = tool_output(proc)
        assert_found_nothing(output)
        assert PASSWORD not in output, output
    # The scanner: dropped and banned at its first request, no password ever checked.
    edge.wait_event("ban_added", source_ip=ATTACKER, reason="scanner")
    assert not edge.events("authentication_failed", source_ip=ATTACKER)
    # The disguised one: banned after AUTH_FAILURES wrong passwords, never a success.
    edge.wait_event("ban_added", source_ip=DISGUISED, reason="auth-failures")
    failures = edge.events("authentication_failed", source_ip=DISGUISED)
    assert 0 < len(failures) <= AUTH_FAILURES, edge.audit_text()
    assert all(f["details"]["username"] == "alice" for f in failures)
    assert not edge.events("authentication_succeeded", source_ip=DISGUISED)
    assert_no_secret(edge)


# ================================================================ 4. trunk vs stranger


def _uac(
    scenario: str,
    edge: Edge,
    workdir: Path,
    procs: ProcGroup,
    *,
    local_ip: str,
    name: str,
    calls: int = 1,
    rate: float | None = None,
    hold_ms: int = 200,
    keys: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Sipp:
    require_binary("sipp", "sip-tester")
    sipp = sipp_uac(
        scenario,
        edge.addr,
        workdir=workdir,
        name=name,
        local_ip=local_ip,
        ruri=sip_uri(edge.addr[0], edge.addr[1], "udp", "1000"),
        calls=calls,
        rate=rate,
        hold_ms=hold_ms,
        keys={"caller": "4930123456", **(keys or {})},
        timeout=40.0,
        trace_msg=True,
        extra=extra,
    )
    procs.add(sipp).start()
    return sipp


def assert_calls_ok(result: SippResult, calls: int) -> None:
    context = result.describe()
    assert result.failed == 0, context
    assert result.successful == calls, context
    assert result.returncode == 0, context


def test_carrier_by_address_stranger_challenged(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    edge = start_edge(tmp_path, procs, certs)
    carrier = _uac("proxy_uac", edge, tmp_path, procs, local_ip=CARRIER, name="carrier")
    assert_calls_ok(carrier.run(), 1)
    stranger = _uac("security_uac_407_auth", edge, tmp_path, procs, local_ip=PHONE, name="stranger")
    assert_calls_ok(stranger.run(), 1)
    assert not edge.events("authentication_failed"), edge.audit_text()
    created = edge.wait_event("resource_created", source_ip=CARRIER)
    assert created["details"]["authenticated_by"] == "trunk", created
    assert not edge.events("resource_created", source_ip=PHONE)


# ================================================================ 5. Digest with sipp


def test_sipp_digest_call(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> None:
    # sipp 3.6 answers the first Digest challenge only and computes MD5 only ("authentication
    # must use MD5 or AKAv1-MD5" on the SHA-256 one the edge offers first): the edge offers
    # MD5 alone here.  Its digest-uri is remote_ip:port unless -auth_uri says the
    # Request-URI, which the edge checks against the request (RFC 2617 section 3.2.2.5).
    edge = start_edge(tmp_path, procs, certs, digest_algorithms=["MD5"])
    host, port = edge.addr
    phone = _uac(
        "security_uac_digest_auth",
        edge,
        tmp_path,
        procs,
        local_ip=PHONE,
        name="phone",
        extra=("-au", "alice", "-ap", PASSWORD, "-auth_uri", f"1000@{host}:{port};transport=udp"),
    )
    result = phone.run()
    assert_calls_ok(result, 1)
    ok = edge.wait_event("authentication_succeeded", source_ip=PHONE, scheme="digest")
    assert ok["details"]["name"] == "alice" and ok["customer_id"] == CUSTOMER, ok
    created = edge.wait_event("resource_created", source_ip=PHONE)
    assert created["customer_id"] == CUSTOMER, created
    assert created["details"]["source"] == "4930123456", created
    assert created["details"]["destination"] == "1000", created
    assert created["details"]["authenticated_by"] == "digest", created
    deleted = edge.wait_event("resource_deleted", resource_id=created["resource_id"])
    assert deleted["customer_id"] == CUSTOMER, deleted
    assert not edge.events("authentication_failed"), edge.audit_text()
    assert_no_secret(edge)


# ================================================================ 6. Bearer JWT and access keys


def _jwt(claims: dict[str, Any], *, key: str = JWT_KEY, alg: str = "HS256") -> str:
    import jwt

    now = int(time.time())
    payload = {
        "customer_id": CUSTOMER,
        "permissions": ["call_create"],
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    if alg == "none":
        return jwt.encode(payload, "", algorithm="none")
    return jwt.encode(payload, key, algorithm=alg)


def _key(edge: Edge, permission: str = "call_create") -> tuple[str, str]:
    out = sipedge_admin(
        ["keys", "create", "--customer-id", CUSTOMER, "--permission", permission],
        config=edge.proc.config_path,
    ).stdout
    key_id = re.search(r"^id:\s+(\S+)", out, re.M)
    key = re.search(r"^key:\s+(ak_\S+)", out, re.M)
    assert key_id and key, out
    return key_id.group(1), key.group(1)


def test_bearer_and_access_keys_over_the_wire(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    edge = start_edge(tmp_path, procs, certs)
    now = int(time.time())
    key_id, key = _key(edge)
    revoked_id, revoked = _key(edge)
    sipedge_admin(["keys", "revoke", revoked_id], config=edge.proc.config_path)
    cases: list[tuple[str, str, int]] = [
        ("valid", f"Bearer {_jwt({'agent_id': 'agent-7'})}", 200),
        ("expired", f"Bearer {_jwt({'iat': now - 7200, 'exp': now - 3600})}", 401),
        ("alg-none", f"Bearer {_jwt({}, alg='none')}", 401),
        ("other-key", f"Bearer {_jwt({}, key=secrets.token_urlsafe(48))}", 401),
        ("no-call-create", f"Bearer {_jwt({'permissions': ['customer_read']})}", 403),
        ("access-key", f"AccessKey {key}", 200),
        ("revoked-key", f"AccessKey {revoked}", 403),
    ]
    answers: dict[str, Message] = {}
    # One phone per case: the per-source limits (auth attempts, failures) are not the
    # subject here.
    for i, (label, credentials, expected) in enumerate(cases):
        peer = UdpPeer(f"127.0.1.{10 + i}")
        try:
            answers[label] = call_through(peer, edge, (("Authorization", credentials),))
        finally:
            peer.close()
        assert answers[label].status == expected, f"{label}: {answers[label].first}"
    for label in ("expired", "alg-none", "other-key"):
        challenge = answers[label].get("WWW-Authenticate") or ""
        assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge, (
            label,
            answers[label].headers,
        )
    ok = edge.wait_event("authentication_succeeded", scheme="bearer")
    assert ok["customer_id"] == CUSTOMER and ok["agent_id"] == "agent-7", ok
    edge.wait_event("authentication_succeeded", scheme="accesskey", name=key_id)
    for reason in ("expired", "bad_algorithm"):
        edge.wait_event("invalid_token", reason=reason)
    denied = edge.wait_event("permission_denied", required="call_create")
    assert denied["customer_id"] == CUSTOMER, denied
    edge.wait_event("authentication_failed", scheme="accesskey", reason="revoked")
    created = edge.events("resource_created", customer_id=CUSTOMER)
    assert {c["details"]["authenticated_by"] for c in created} == {"bearer", "accesskey"}, created
    edge.wait_event("resource_deleted", resource_id=created[0]["resource_id"])
    assert key not in edge.audit_text() and key not in edge.output()
    assert_no_secret(edge)


# ================================================================ 7. flood


FLOOD_COUNT = 10_000
FLOOD_MAX_SECONDS = 20.0


def _flood(edge: Edge, make: Callable[[int], bytes]) -> int:
    """Send up to FLOOD_COUNT datagrams from ATTACKER as fast as possible (bounded by
    FLOOD_MAX_SECONDS too); how many went out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ATTACKER, free_port(ATTACKER, "udp")))
        port = sock.getsockname()[1]
        deadline = time.monotonic() + FLOOD_MAX_SECONDS
        sent = 0
        for i in range(FLOOD_COUNT):
            if time.monotonic() > deadline:
                break
            try:
                sock.sendto(make(i).replace(b"PORT", str(port).encode()), edge.addr)
            except BlockingIOError:
                continue
            sent += 1
    return sent


def _flood_invite(edge: Edge) -> Callable[[int], bytes]:
    host, port = edge.addr

    def make(i: int) -> bytes:
        return (
            f"INVITE sip:1000@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ATTACKER}:PORT;branch=z9hG4bKfl{i};rport\r\n"
            f"From: <sip:flood@{ATTACKER}>;tag=f{i}\r\nTo: <sip:1000@{host}>\r\n"
            f"Call-ID: flood-{i}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            "User-Agent: flood\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    return make


def test_flood_banned_while_the_carrier_calls(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    edge = start_edge(tmp_path, procs, certs)
    carrier = _uac(
        "proxy_uac", edge, tmp_path, procs, local_ip=CARRIER, name="carrier", calls=20, rate=10
    )
    time.sleep(0.3)  # the carrier's first calls are under way when the flood starts
    sent = _flood(edge, _flood_invite(edge))
    assert sent > 2000, f"only {sent} datagrams went out"
    assert_calls_ok(carrier.run(), 20)
    ban = edge.wait_event("ban_added", source_ip=ATTACKER, reason="flood")
    assert ban["details"]["duration"] > 0
    # Still responsive: the carrier's OPTIONS is answered, a phone is still challenged.
    for host_ip in (CARRIER, PHONE):
        peer = UdpPeer(host_ip)
        try:
            if host_ip == CARRIER:
                req = peer.request("OPTIONS", f"sip:{edge.addr[0]}:{edge.addr[1]}", call_id="o")
            else:
                req = peer.request("INVITE", ruri_at(edge), call_id="i", sdp=True)
            peer.send(req, edge.addr)
            got = peer.wait_for(lambda m: m.status >= 200, 5.0)
            assert got is not None, f"no answer to {host_ip} after the flood"
            assert got[0].status == (200 if host_ip == CARRIER else 407), got[0].first
        finally:
            peer.close()


def test_ack_flood_is_limited_too(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> None:
    """ACKs are requests too (docs/configuration.md, ``requests_per_minute``: requests per
    untrusted source address): a stranger's flood of out-of-dialog ACKs must meet the
    per-source bucket and end in a flood ban like a flood of INVITEs."""
    edge = start_edge(tmp_path, procs, certs)
    host, port = edge.addr

    def make(i: int) -> bytes:
        return (
            f"ACK sip:1000@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ATTACKER}:PORT;branch=z9hG4bKack{i};rport\r\n"
            f"From: <sip:flood@{ATTACKER}>;tag=f{i}\r\nTo: <sip:1000@{host}>;tag=t{i}\r\n"
            f"Call-ID: ackflood-{i}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            "User-Agent: flood\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    sent = _flood(edge, make)
    assert sent > 2000, f"only {sent} datagrams went out"
    edge.wait_event("ban_added", timeout=5.0, source_ip=ATTACKER, reason="flood")


# ================================================================ 8. forged identity


def test_forged_identity_headers_are_replaced(
    tmp_path: Path, procs: ProcGroup, certs: TestCerts
) -> None:
    upstream = UdpPeer(UPSTREAM)
    try:
        edge = start_edge(
            tmp_path,
            procs,
            certs,
            upstream={
                "echo": False,
                "default": "pbx",
                "sets": [
                    {
                        "name": "pbx",
                        "algorithm": "round-robin",
                        "probe_interval": 0,
                        "targets": [{"uri": sip_uri(UPSTREAM, upstream.port, "udp")}],
                    }
                ],
            },
        )
        forged = (
            ("X-Sipedge-Customer-Id", "forged"),
            ("P-Asserted-Identity", "<sip:+15550000000@evil.example>"),
            ("P-Preferred-Identity", "<sip:+15550000001@evil.example>"),
        )
        cases = [
            (PHONE, (("Authorization", f"Bearer {_jwt({})}"), *forged)),
            (CARRIER, forged),
        ]
        for source, headers in cases:
            peer = UdpPeer(source)
            try:
                call_id = f"forged-{source}"
                peer.send(
                    peer.request(
                        "INVITE", ruri_at(edge), call_id=call_id, headers=headers, sdp=True
                    ),
                    edge.addr,
                )
                got = upstream.wait_for(of_call(call_id, "INVITE"), 8.0)
                if got is None:
                    answer = peer.silent_for(0.5)
                    pytest.fail(
                        f"the INVITE from {source} never reached the upstream; "
                        f"the phone got {[m.first for m in answer]}"
                    )
                invite, edge_addr = got
                customer = invite.all("X-Sipedge-Customer-Id")
                assert "forged" not in customer, invite.headers
                assert invite.get("Authorization") is None, invite.headers
                if source == PHONE:
                    assert customer == [CUSTOMER], invite.headers
                    assert invite.get("P-Asserted-Identity") is None, invite.headers
                    assert invite.get("P-Preferred-Identity") is None, invite.headers
                else:
                    # A trunk has no customer; its asserted identity is its own to assert.
                    assert customer == [], invite.headers
                    assert invite.get("P-Asserted-Identity") is not None, invite.headers
                # Refuse the call (486), ACK comes back hop by hop.
                busy = "\r\n".join(
                    [
                        "SIP/2.0 486 Busy Here",
                        *[f"Via: {v}" for v in invite.all("Via")],
                        f"From: {invite.get('From')}",
                        f"To: {invite.get('To')};tag=up1",
                        f"Call-ID: {invite.get('Call-ID')}",
                        f"CSeq: {invite.get('CSeq')}",
                        "Content-Length: 0",
                    ]
                )
                upstream.send(busy + "\r\n\r\n", edge_addr)
                final = peer.wait_for(lambda m: m.status == 486, 5.0)
                assert final is not None, f"the 486 did not reach {source}"
            finally:
                peer.close()
    finally:
        upstream.close()
