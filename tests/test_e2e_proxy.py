"""End to end: real sipp UAC and UAS around the proxy, over UDP, TCP and TLS (issue 3).

The caller is sipp on 127.0.0.1 (trusted by the "loopback" trunk); the upstream servers are
sipp UAS instances on 127.0.0.2 and 127.0.0.3, standing for other hosts.  Debian's sipp has
no TLS, so TLS legs go through stunnel (tests/peers.py explains the catch).  Every test
asserts sipp's own verdict: 0 failed calls and every call successful, on both sides.

Two groups:
- ``test_harness_*``: the scenarios and wrappers driven sipp against sipp with no proxy
  between them (TLS through a stunnel client and server).  They prove the harness, so that
  when a proxy test fails, the proxy is what is wrong.
- The proxy tests: sipedge (``sipedge run`` with a generated config) in the middle.
  ``SIPEDGE_E2E_PROXY=kamailio`` puts Kamailio (bench/kamailio/proxy.cfg, an equivalent
  stateful record-routing proxy) there instead, to validate the harness through a real
  proxy (Record-Route, Via stacks, CANCEL, failover); in that mode the echo endpoint is
  stood in for by a sipp UAS that echoes RTP.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.peers import (
    KamailioProc,
    NotRunnable,
    PeerError,
    ProcGroup,
    ProxyAddresses,
    SipedgeProc,
    Sipp,
    SippResult,
    Stunnel,
    TestCerts,
    free_port,
    make_test_certs,
    port_is_bound,
    require_binary,
    sip_uri,
    sipp_uac,
    sipp_uas,
    to_toml,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PROXY_KIND = os.environ.get("SIPEDGE_E2E_PROXY", "sipedge")
Transport = Literal["udp", "tcp", "tls"]

# The caller's host and the upstream hosts (loopback addresses standing for machines).
CALLER = "127.0.0.1"
UPSTREAM_A = "127.0.0.2"
UPSTREAM_B = "127.0.0.3"

# Short timers so that a silent upstream fails over within seconds: sipedge's Timer B is
# 64*T1 (RFC 3261 section 17.1.1.2), 6.4 s here; Kamailio's fr_timer is given directly.
SIPEDGE_T1 = 0.1
KAMAILIO_FR_TIMER_MS = 3000
HOLD_MS = 500


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def procs() -> Iterator[ProcGroup]:
    with ProcGroup() as group:
        yield group


@dataclass
class Upstream:
    """A sipp UAS (behind a stunnel server for TLS) and the URI the proxy should use."""

    sipp: Sipp
    uri: str
    stunnel: Stunnel | None = None


class Harness:
    """Starts the peers of one test; everything it starts is stopped by ``procs``."""

    def __init__(self, workdir: Path, procs: ProcGroup, certs: TestCerts) -> None:
        self.workdir = workdir
        self.procs = procs
        self.certs = certs
        self.sipp_bin = require_binary("sipp", "sip-tester")
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    # ------------------------------------------------------------ upstream side

    def uas(
        self,
        scenario: str,
        *,
        host: str = UPSTREAM_A,
        transport: Transport = "udp",
        calls: int = 1,
        hold_ms: int = HOLD_MS,
        extra: tuple[str, ...] = (),
    ) -> Upstream:
        """A sipp UAS; over "tls" a stunnel server accepts TLS on host:P and hands plain TCP
        to sipp, whose Contact then names the stunnel (``;transport=tls``)."""
        name = self._name("uas")
        if transport != "tls":
            sipp = sipp_uas(
                scenario,
                workdir=self.workdir,
                name=name,
                transport=transport,
                local_ip=host,
                calls=calls,
                hold_ms=hold_ms,
                trace_msg=True,
                extra=extra,
            )
            self.procs.add(sipp).start()
            sipp.wait_ready()
            return Upstream(sipp, sip_uri(host, sipp.port, transport))
        require_binary("stunnel4", "stunnel4")
        tls_port = free_port(host, "tcp")
        contact = sip_uri(host, tls_port, "tls")
        sipp = sipp_uas(
            scenario,
            workdir=self.workdir,
            name=name,
            transport="tcp",
            local_ip=host,
            contact=contact,
            calls=calls,
            hold_ms=hold_ms,
            trace_msg=True,
            extra=extra,
        )
        self.procs.add(sipp).start()
        sipp.wait_ready()
        tunnel = Stunnel.server(
            workdir=self.workdir,
            name=f"stunnel-{name}",
            accept=(host, tls_port),
            connect=sipp.address,
            cert=self.certs.cert,
            key=self.certs.key,
        )
        self.procs.add(tunnel).start()
        tunnel.wait_ready()
        return Upstream(sipp, contact, tunnel)

    # ------------------------------------------------------------ the proxy

    def proxy(
        self,
        targets: list[str] | None = None,
        *,
        echo: bool = False,
        echo_standin: Upstream | None = None,
    ) -> ProxyAddresses:
        """Start the proxy under test routing new calls to ``targets`` (round-robin, in
        order), or to its echo endpoint; return where it listens."""
        if PROXY_KIND == "kamailio":
            require_binary("kamailio", "kamailio")
            if echo:
                assert echo_standin is not None, "kamailio mode needs a stand-in echo UAS"
                targets = [echo_standin.uri]
            kam = KamailioProc(
                workdir=self.workdir,
                certs=self.certs,
                targets=targets or [],
                fr_timer_ms=KAMAILIO_FR_TIMER_MS,
                children=2,
            )
            self.procs.add(kam).start()
            return kam.wait_ready().addresses
        upstream: dict[str, Any]
        if echo:
            upstream = {"echo": True}
        else:
            upstream = {
                "echo": False,
                "default": "pbx",
                "sets": [
                    {
                        "name": "pbx",
                        "algorithm": "round-robin",
                        "probe_interval": 0,
                        "targets": [{"uri": t} for t in targets or []],
                    }
                ],
            }
        edge = SipedgeProc(
            workdir=self.workdir,
            certs=self.certs,
            upstream=upstream,
            extra={"proxy": {"timer_t1": SIPEDGE_T1}},
        )
        self.procs.add(edge).start()
        try:
            return edge.wait_ready().addresses
        except NotRunnable as e:
            pytest.fail(f"sipedge did not start: {e}\n--- config\n{edge.config_text}")

    # ------------------------------------------------------------ caller side

    def uac(
        self,
        scenario: str,
        target: tuple[str, int],
        *,
        transport: Transport = "udp",
        calls: int = 1,
        rate: float | None = None,
        limit: int | None = None,
        hold_ms: int = HOLD_MS,
        keys: dict[str, str] | None = None,
        timeout: float = 40.0,
    ) -> Sipp:
        """A sipp UAC calling ``target``; over "tls", sipp's TCP goes to a stunnel client
        that carries it over TLS to ``target`` (verifying its certificate with the test CA).
        Started, not waited for."""
        name = self._name("uac")
        sipp_transport: Literal["udp", "tcp"] = "udp" if transport == "udp" else "tcp"
        remote = target
        if transport == "tls":
            require_binary("stunnel4", "stunnel4")
            tunnel = Stunnel.client(
                workdir=self.workdir,
                name=f"stunnel-{name}",
                accept=(CALLER, free_port(CALLER, "tcp")),
                connect=target,
                ca=self.certs.ca,
            )
            self.procs.add(tunnel).start()
            tunnel.wait_ready()
            remote = tunnel.accept
        sipp = sipp_uac(
            scenario,
            remote,
            workdir=self.workdir,
            name=name,
            transport=sipp_transport,
            local_ip=CALLER,
            ruri=sip_uri(target[0], target[1], transport, "1000"),
            calls=calls,
            rate=rate,
            limit=limit,
            hold_ms=hold_ms,
            keys=keys,
            timeout=timeout,
            trace_msg=True,
            extra=LENIENT_UAC,
        )
        self.procs.add(sipp).start()
        return sipp


@pytest.fixture
def h(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> Harness:
    return Harness(tmp_path, procs, certs)


# The caller's sipp goes on past an unexpected message instead of failing the call, so that
# a provisional response overtaken by the final one (legal: the two may travel apart, and a
# multi-process proxy such as Kamailio can reorder them) is dropped as RFC 3261 section
# 17.1.1.2 says.  assert_all_ok then fails on any other unexpected message.
LENIENT_UAC = ("-default_behaviors", "all,-abortunexp")
_UNEXPECTED = re.compile(r"Continuing call on unexpected message .*?received '([^\r\n']*)")
_LATE_PROVISIONAL = re.compile(r"SIP/2\.0 1\d\d ")


def unexpected_messages(result: SippResult) -> list[str]:
    """First lines of the messages sipp took as unexpected (and went on past)."""
    return _UNEXPECTED.findall(result.errors)


def assert_all_ok(result: SippResult, calls: int, *others: SippResult) -> None:
    """sipp's verdict: exit status 0, ``calls`` successful calls, none failed; and nothing
    unexpected arrived but late provisional responses."""
    context = "\n\n".join(r.describe() for r in (result, *others))
    assert result.failed == 0, context
    assert result.successful == calls, context
    assert result.returncode == 0, context
    odd = [m for m in unexpected_messages(result) if not _LATE_PROVISIONAL.match(m)]
    assert not odd, f"unexpected messages: {odd}\n{context}"


def finish_uas(up: Upstream, calls: int, timeout: float = 15.0) -> SippResult:
    result = up.sipp.finish(timeout)
    assert result.failed == 0, result.describe()
    assert result.successful == calls, result.describe()
    return result


# ---------------------------------------------------------------- reading sipp's trace

_TRACE_SEPARATOR = "-----------------------------------------------"


def received_request(sipp: Sipp, method: str) -> str:
    """The first ``method`` request in sipp's message trace that sipp received."""
    for block in sipp.sent_and_received().split(_TRACE_SEPARATOR):
        head, _, message = block.partition(":\n\n")
        if "message received" in head and message.startswith(f"{method} "):
            return message
    raise AssertionError(f"{sipp.name} received no {method}\n{sipp.sent_and_received()}")


def via_count(message: str) -> int:
    """How many Via entries (``Via:``/``v:`` lines, comma-separated values) a message has."""
    head = message.split("\n\n", 1)[0]
    vias = [
        line.split(":", 1)[1]
        for line in head.splitlines()
        if line.lower().startswith(("via:", "v:"))
    ]
    return sum(len(re.findall(r"SIP\s*/\s*2\.0\s*/", v, re.I)) for v in vias)


# ---------------------------------------------------------------- RTP through the echo


def _rtp(seq: int, ssrc: int, payload: bytes) -> bytes:
    # RFC 3550 section 5.1: V=2, PT 8 (PCMA), 20 ms of 8 kHz audio per packet.
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, ssrc) + payload


_SDP_C = re.compile(r"^c=IN IP4 (\S+)", re.M)
_SDP_M = re.compile(r"^m=audio (\d+) ", re.M)


def answer_media_address(uac: Sipp, timeout: float = 20.0) -> tuple[str, int]:
    """The c=/m= address in the 200 OK the UAC received (from sipp's message trace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trace = uac.sent_and_received()
        for block in trace.split(_TRACE_SEPARATOR):
            if (
                "message received" in block
                and "SIP/2.0 200 OK" in block
                and "CSeq: 1 INVITE" in block
            ):
                c, m = _SDP_C.search(block), _SDP_M.search(block)
                if c and m:
                    return c.group(1), int(m.group(1))
        if uac.poll() is not None:
            break
        time.sleep(0.05)
    raise PeerError(f"no 200 OK with SDP seen by the UAC\n{uac.result().describe()}")


def rtp_echo_roundtrip(
    sock: socket.socket, dest: tuple[str, int], count: int = 10, timeout: float = 5.0
) -> list[bytes]:
    """Send ``count`` RTP packets from ``sock`` to ``dest``; return the payloads that came
    back (an echo sends each packet back to where it came from)."""
    sent = [bytes([i]) * 160 for i in range(count)]
    for i, payload in enumerate(sent):
        sock.sendto(_rtp(1000 + i, 0x5EED, payload), dest)
        time.sleep(0.02)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            break
        if len(data) >= 12 and data[0] >> 6 == 2:
            got.append(data[12:])
    return got


# ================================================================ the harness itself


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_harness_basic_call_direct(h: Harness, transport: Transport) -> None:
    up = h.uas("proxy_uas", transport=transport, calls=2)
    target = (UPSTREAM_A, up.stunnel.accept[1] if up.stunnel else up.sipp.port)
    uac = h.uac("proxy_uac", target, transport=transport, calls=2, rate=10)
    assert_all_ok(uac.run(), 2)
    finish_uas(up, 2)
    if up.stunnel is not None:
        # The call really went through the TLS tunnel (stunnel in server mode passes only
        # what arrived as TLS).
        assert "accepted connection from" in up.stunnel.log(), up.stunnel.log()


def test_harness_bye_from_uas_direct(h: Harness) -> None:
    up = h.uas("proxy_uas_bye")
    uac = h.uac("proxy_uac_bye_from_uas", (UPSTREAM_A, up.sipp.port))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)
    # Direct, the BYE carries the sender's Via only (the proxy test expects two).
    assert via_count(received_request(uac, "BYE")) == 1, uac.sent_and_received()


def test_harness_cancel_direct(h: Harness) -> None:
    up = h.uas("proxy_uas_cancel")
    uac = h.uac("proxy_uac_cancel", (UPSTREAM_A, up.sipp.port))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)


def test_harness_503_direct(h: Harness) -> None:
    up = h.uas("proxy_uas_503")
    uac = h.uac("proxy_uac_503", (UPSTREAM_A, up.sipp.port))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)


def test_harness_silent_uas_takes_the_invite(h: Harness) -> None:
    """The silent UAS counts the INVITE and never answers: the UAC gives up (its
    -recv_timeout-free run ends by the global sipp timeout, counted as failed)."""
    up = h.uas("proxy_uas_silent", hold_ms=60_000)
    uac = h.uac("proxy_uac", (UPSTREAM_A, up.sipp.port), timeout=3)
    result = uac.run()
    assert result.successful == 0, result.describe()
    assert result.returncode != 0, result.describe()
    silent = up.sipp.stop_and_result()
    assert silent.incoming == 1, silent.describe()


def test_harness_rtp_echo_check(h: Harness) -> None:
    """The RTP check of the echo test, against sipp's own RTP echo (-rtp_echo)."""
    up = h.uas("proxy_uas", extra=("-rtp_echo",))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CALLER, free_port(CALLER, "udp")))
        uac = h.uac(
            "proxy_uac",
            (UPSTREAM_A, up.sipp.port),
            hold_ms=4000,
            keys={"rtp_port": str(sock.getsockname()[1])},
        )
        dest = answer_media_address(uac)
        assert dest == (UPSTREAM_A, up.sipp.media_port)
        got = rtp_echo_roundtrip(sock, dest)
    assert got == [bytes([i]) * 160 for i in range(10)]
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)


def test_harness_helpers(tmp_path: Path, certs: TestCerts, procs: ProcGroup) -> None:
    import ssl
    import tomllib

    data = {
        "listen": {"udp": ["127.0.0.1:1"], "tls": []},
        "proxy": {"timer_t1": 0.1, "record_route": True},
        "upstream": {"sets": [{"name": "a", "targets": [{"uri": "sip:x"}, {"uri": "sip:y"}]}]},
        "trunks": [{"name": "t", "allow": ["127.0.0.1/32"]}],
    }
    assert tomllib.loads(to_toml(data)) == data
    # The test certificate verifies against the test CA for every loopback host.
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(certs.cert, certs.key)
    # Ports handed out are distinct and bindable; a bound port is seen as bound.
    ports = {free_port(CALLER, "both") for _ in range(20)}
    assert len(ports) == 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((UPSTREAM_B, 0))
        assert port_is_bound(UPSTREAM_B, s.getsockname()[1], "udp")


# ================================================================ through the proxy


def test_udp_to_udp(h: Harness) -> None:
    up = h.uas("proxy_uas", calls=3)
    proxy = h.proxy([up.uri])
    uac = h.uac("proxy_uac", proxy.of("udp"), calls=3, rate=10)
    assert_all_ok(uac.run(), 3)
    finish_uas(up, 3)


def test_tls_to_udp(h: Harness) -> None:
    """The caller speaks TLS (sipp TCP through a stunnel client that verifies the proxy's
    certificate); responses and the BYE's 200 come back over that connection."""
    up = h.uas("proxy_uas", calls=3)
    proxy = h.proxy([up.uri])
    uac = h.uac("proxy_uac", proxy.of("tls"), transport="tls", calls=3, rate=10)
    assert_all_ok(uac.run(), 3)
    finish_uas(up, 3)


def test_tcp_to_tls(h: Harness) -> None:
    """The caller speaks TCP; the upstream is ``sip:127.0.0.2:P;transport=tls``, a stunnel
    server in front of a TCP sipp UAS whose Contact names the stunnel."""
    up = h.uas("proxy_uas", transport="tls", calls=3)
    proxy = h.proxy([up.uri])
    uac = h.uac("proxy_uac", proxy.of("tcp"), transport="tcp", calls=3, rate=10)
    assert_all_ok(uac.run(), 3)
    finish_uas(up, 3)
    assert up.stunnel is not None
    assert "accepted connection from" in up.stunnel.log(), up.stunnel.log()


def test_cancel_before_answer(h: Harness) -> None:
    """The caller cancels while the upstream rings: 200 for the CANCEL, 487 for the
    INVITE, the proxy ACKs the 487 upstream and the caller ACKs it to the proxy."""
    up = h.uas("proxy_uas_cancel")
    proxy = h.proxy([up.uri])
    uac = h.uac("proxy_uac_cancel", proxy.of("udp"))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)


@pytest.mark.parametrize("side", ["caller", "callee"])
def test_bye_from_either_side(h: Harness, side: str) -> None:
    """BYE from the caller, or from the upstream through the caller's route set: either
    way it follows the Record-Route through the proxy and both ends see 200."""
    uas_scenario, uac_scenario = {
        "caller": ("proxy_uas", "proxy_uac"),
        "callee": ("proxy_uas_bye", "proxy_uac_bye_from_uas"),
    }[side]
    up = h.uas(uas_scenario)
    proxy = h.proxy([up.uri])
    uac = h.uac(uac_scenario, proxy.of("udp"))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)
    # The BYE went through the proxy (Route to it), not around it: it arrived with the
    # proxy's Via on top of the sender's.
    receiver = uac if side == "callee" else up.sipp
    assert via_count(received_request(receiver, "BYE")) == 2, receiver.sent_and_received()


@pytest.mark.timeout(120)
def test_failover_silent_target(h: Harness) -> None:
    """Target A takes the INVITE and never answers; after Timer B the call goes to B and
    completes.  Two calls in turn, so round-robin meets A whichever target it starts at."""
    silent = h.uas("proxy_uas_silent", calls=2, hold_ms=120_000)
    good = h.uas("proxy_uas", host=UPSTREAM_B, calls=2)
    proxy = h.proxy([silent.uri, good.uri])
    uac = h.uac("proxy_uac", proxy.of("udp"), calls=2, rate=1, limit=1, timeout=80)
    result = uac.run()
    silent_result = silent.sipp.stop_and_result()
    assert_all_ok(result, 2, silent_result)
    finish_uas(good, 2)
    assert silent_result.incoming >= 1, silent_result.describe()


def test_failover_on_503(h: Harness) -> None:
    """Target A answers 503; the proxy ACKs it and tries B, where the call completes.  Two
    calls in turn, so round-robin meets A whichever target it starts at."""
    busy = h.uas("proxy_uas_503", calls=2)
    good = h.uas("proxy_uas", host=UPSTREAM_B, calls=2)
    proxy = h.proxy([busy.uri, good.uri])
    uac = h.uac("proxy_uac", proxy.of("udp"), calls=2, rate=1, limit=1)
    result = uac.run()
    busy_result = busy.sipp.stop_and_result()
    assert_all_ok(result, 2, busy_result)
    finish_uas(good, 2)
    assert busy_result.incoming >= 1, busy_result.describe()
    # Every 503 it sent was ACKed (by the proxy, hop by hop).
    assert busy_result.failed == 0, busy_result.describe()
    assert busy_result.successful == busy_result.incoming, busy_result.describe()


def test_503_with_one_target_reaches_the_caller(h: Harness) -> None:
    up = h.uas("proxy_uas_503")
    proxy = h.proxy([up.uri])
    uac = h.uac("proxy_uac_503", proxy.of("udp"))
    assert_all_ok(uac.run(), 1)
    finish_uas(up, 1)


def test_echo_endpoint_answers_through_the_edge(h: Harness) -> None:
    """``upstream.echo = true``: a sipp call through the edge is answered by the built-in
    echo endpoint, and RTP sent to the address in its answer comes back."""
    standin = h.uas("proxy_uas", extra=("-rtp_echo",)) if PROXY_KIND == "kamailio" else None
    proxy = h.proxy(echo=True, echo_standin=standin)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CALLER, free_port(CALLER, "udp")))
        uac = h.uac(
            "proxy_uac",
            proxy.of("udp"),
            hold_ms=4000,
            keys={"rtp_port": str(sock.getsockname()[1])},
        )
        dest = answer_media_address(uac)
        got = rtp_echo_roundtrip(sock, dest)
    assert got == [bytes([i]) * 160 for i in range(10)], f"echoed {len(got)} of 10 to {dest}"
    assert_all_ok(uac.run(), 1)
    if standin is not None:
        finish_uas(standin, 1)
