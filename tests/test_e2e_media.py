"""End to end: media through sipedge's relay with real peers (issue 4, "Tests with real peers").

sipedge (``sipedge run``, generated config) sits between a caller on 127.0.0.1 (trusted by
the "loopback" trunk) and an upstream set whose one target is on 127.0.0.2.  Its relay
binds 127.0.0.1 on a small port range inside 20000-29999 (``[media] port_range``).  The
peers:

- sipp (Debian ``sip-tester``) signals, and plays a pcap or echoes RTP (``-rtp_echo``);
- a Python RTP endpoint (tests/peers_media.py) speaks the media where a test must see or
  forge packets, with pylibsrtp (libsrtp) as the independent SRTP reference;
- baresip (Debian ``baresip-core``) makes real calls with SDES-SRTP on one side;
- tshark (Debian ``tshark``) captures what crosses ``lo`` on the relay's ports.

The relay's own counters are read from sipedge's log: ``media_ended`` (packets in and out
and drops of the call when it ends) and ``media_drop`` (one line per drop reason and
second, with the source).

A missing peer FAILS the test naming the package to install; nothing is skipped.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import (
    NotRunnable,
    PeerError,
    ProcGroup,
    ProxyAddresses,
    SipedgeProc,
    Sipp,
    TestCerts,
    make_test_certs,
    require_binary,
    sip_uri,
    sipp_uac,
    sipp_uas,
)
from tests.peers_media import (
    Baresip,
    Capture,
    Pacer,
    RtpEndpoint,
    RtpStream,
    SdpMedia,
    UdpPacket,
    bound_socket,
    drain,
    events,
    new_inline_key,
    relay_port_range,
    rtcp_sender_report,
    rtcp_ssrc,
    rtp_fields,
    sdp_media,
    sipp_message,
    srtp_session,
    tone_frequency,
    wait_for_event,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CALLER = "127.0.0.1"  # the caller's host, the edge and its relay
UPSTREAM = "127.0.0.2"  # the upstream set's target
STRANGER = "127.0.0.9"  # an attacker on another host
SECURE_HOST = "127.0.0.2"  # the SRTP baresip (test 3)
PCAP = Path("/usr/share/sip-tester/g711a.pcap")  # 236 PCMA packets, 30 ms each
PCAP_PACKETS = 236
SIPEDGE_T1 = 0.1
# The caller's sipp goes on past a provisional response overtaken by the final one.
LENIENT_UAC = ("-default_behaviors", "all,-abortunexp")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def procs() -> Iterator[ProcGroup]:
    with ProcGroup() as group:
        yield group


class Call:
    """The peers of one test: the edge, sipp on either side, captures.  Everything it starts
    is stopped by ``procs`` (the last started first)."""

    def __init__(self, workdir: Path, procs: ProcGroup, certs: TestCerts) -> None:
        self.workdir = workdir
        self.procs = procs
        self.certs = certs
        self.edge: SipedgeProc | None = None
        self.relay_range = (0, 0)
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def sipp(self) -> None:
        require_binary("sipp", "sip-tester")

    # ------------------------------------------------------------ sipedge

    def start_edge(
        self,
        targets: list[str],
        *,
        pairs: int = 8,
        set_media: str = "as-offered",
        trunk_media: str = "rtp",
        trunk_allow: str = "127.0.0.1/32",
        quarantine: float = 1.0,
        limits: dict[str, Any] | None = None,
    ) -> ProxyAddresses:
        """sipedge routing new calls to ``targets`` (set "pbx", media policy ``set_media``),
        the caller's ``trunk_allow`` trusted as trunk "loopback" (media ``trunk_media``), the
        relay on 127.0.0.1 with ``pairs`` RTP/RTCP port pairs; ``limits``: a [limits] table."""
        self.relay_range = relay_port_range(pairs)
        low, high = self.relay_range
        upstream: dict[str, Any] = {
            "echo": False,
            "default": "pbx",
            "sets": [
                {
                    "name": "pbx",
                    "probe_interval": 0,
                    "media": set_media,
                    "targets": [{"uri": t} for t in targets],
                }
            ],
        }
        edge = SipedgeProc(
            workdir=self.workdir,
            certs=self.certs,
            upstream=upstream,
            trunks=[{"name": "loopback", "allow": [trunk_allow], "media": trunk_media}],
            extra={
                "proxy": {"timer_t1": SIPEDGE_T1},
                "media": {
                    "enabled": True,
                    "port_range": f"{low}-{high}",
                    "quarantine": quarantine,
                    "timeout": 0,
                },
                **({"limits": limits} if limits else {}),
            },
        )
        self.procs.add(edge).start()
        try:
            edge.wait_ready()
        except NotRunnable as e:
            pytest.fail(f"sipedge did not start: {e}\n--- config\n{edge.config_text}")
        self.edge = edge
        return edge.addresses

    def in_relay_range(self, port: int) -> bool:
        return self.relay_range[0] <= port <= self.relay_range[1]

    def edge_events(self, event: str) -> list[dict[str, Any]]:
        assert self.edge is not None
        return events(self.edge, event)

    def media_ended(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The ``media_ended`` lines of ``count`` calls (the relay's totals per call)."""
        assert self.edge is not None
        deadline = time.monotonic() + timeout
        while len(found := self.edge_events("media_ended")) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(found)} media_ended lines, wanted {count}\n{self.log()}")
            time.sleep(0.05)
        return found

    def drop_reasons(self) -> Counter[str]:
        """Drop reasons the relay logged (one line per reason and second at most)."""
        return Counter(str(r.get("reason")) for r in self.edge_events("media_drop"))

    def log(self) -> str:
        assert self.edge is not None
        return self.edge.log_tail(40)

    # ------------------------------------------------------------ sipp

    def uas(
        self, scenario: str, *, calls: int = 1, keys: dict[str, str] | None = None, **kw: Any
    ) -> Sipp:
        self.sipp()
        uas = sipp_uas(
            scenario,
            workdir=self.workdir,
            name=self._name("uas"),
            local_ip=UPSTREAM,
            calls=calls,
            trace_msg=True,
            keys=keys,
            **kw,
        )
        self.procs.add(uas).start()
        uas.wait_ready()
        return uas

    def uac(
        self,
        scenario: str,
        target: tuple[str, int],
        *,
        calls: int = 1,
        hold_ms: int = 1000,
        keys: dict[str, str] | None = None,
        timeout: float = 40.0,
        local_ip: str = CALLER,
        **kw: Any,
    ) -> Sipp:
        """A sipp UAC (on 127.0.0.1 unless ``local_ip``) calling the edge; started, not
        waited for."""
        self.sipp()
        uac = sipp_uac(
            scenario,
            target,
            workdir=self.workdir,
            name=self._name("uac"),
            local_ip=local_ip,
            ruri=sip_uri(target[0], target[1], "udp", "1000"),
            calls=calls,
            hold_ms=hold_ms,
            keys=keys,
            timeout=timeout,
            trace_msg=True,
            extra=LENIENT_UAC,
            **kw,
        )
        self.procs.add(uac).start()
        return uac

    # ------------------------------------------------------------ tshark

    def capture(self, capture_filter: str) -> Capture:
        require_binary("tshark", "tshark")
        cap = Capture(workdir=self.workdir, capture_filter=capture_filter, name=self._name("cap"))
        self.procs.add(cap).start()
        return cap.wait_ready()


@pytest.fixture
def call(tmp_path: Path, procs: ProcGroup, certs: TestCerts) -> Call:
    return Call(tmp_path, procs, certs)


def assert_sipp_ok(
    sipp: Sipp, calls: int, timeout: float | None = None, *, uas: bool = False
) -> None:
    result = sipp.finish(timeout or 20.0) if uas else sipp.run(timeout)
    context = result.describe()
    assert result.failed == 0, context
    assert result.successful == calls, context
    if not uas:
        assert result.returncode == 0, context


def flows(packets: list[UdpPacket]) -> Counter[tuple[tuple[str, int], tuple[str, int]]]:
    return Counter((p.src, p.dst) for p in packets)


# ================================================================ 1. sipp pcap <-> sipp echo


@pytest.mark.timeout(90)
def test_sipp_pcap_call_through_relay_rtp_both_ways(call: Call) -> None:
    """A sipp UAC plays the G.711a pcap through the edge to a sipp UAS that echoes RTP.

    Proves: the call completes on both sipps; each sipp's SDP names a relay port (in the
    configured range) and never the other sipp's address or port; the relay forwards the
    RTP both ways unchanged (tshark on lo: caller -> relay -> callee and the echo back,
    each hop carrying the same payloads), and its own counters agree (``media_ended``).
    """
    assert PCAP.is_file(), f"{PCAP} missing: install Debian package sip-tester"
    uas = call.uas("media_uas_echo", extra=("-rtp_echo",))
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], set_media="rtp")
    low, high = call.relay_range
    cap = call.capture(f"udp portrange {low}-{high}")
    uac = call.uac("media_uac_pcap", edge.udp or ("", 0), hold_ms=7500, keys={"pcap": str(PCAP)})
    assert_sipp_ok(uac, 1, 60)
    assert_sipp_ok(uas, 1, uas=True)
    time.sleep(0.3)
    cap.stop()

    # The SDP each side received names the relay, never the other side.
    offer_msg = sipp_message(uas, "INVITE ")
    offer = sdp_media(offer_msg)
    answer_msg = sipp_message(uac, "SIP/2.0 200", contains="CSeq: 1 INVITE")
    answer = sdp_media(answer_msg)
    assert offer.address == CALLER and call.in_relay_range(offer.port), offer.lines
    assert offer.port != uac.media_port, offer.lines
    assert answer.address == CALLER and call.in_relay_range(answer.port), answer.lines
    assert answer.port != uas.media_port, answer.lines
    assert UPSTREAM not in answer_msg.split("\n\n", 1)[1], answer_msg
    assert offer.proto == answer.proto == "RTP/AVP"

    # RTP both ways through the relay, seen on lo.
    packets = [p for p in cap.udp() if p.payload[:1] and p.payload[0] >> 6 == 2]
    counts = flows(packets)
    caller_media = (CALLER, uac.media_port)
    callee_media = (UPSTREAM, uas.media_port)
    caller_leg = (CALLER, answer.port)  # the relay port facing the caller
    callee_leg = (CALLER, offer.port)  # the relay port facing the callee
    hops = {
        "caller->relay": (caller_media, caller_leg),
        "relay->callee": (callee_leg, callee_media),
        "callee echo->relay": (callee_media, callee_leg),
        "relay->caller": (caller_leg, caller_media),
    }
    report = {name: counts[hop] for name, hop in hops.items()}
    context = f"{report}\nall flows: {dict(counts)}\n{call.log()}"
    for name, n in report.items():
        assert n >= PCAP_PACKETS * 0.95, f"{name}: {n} packets\n{context}"
    assert sum(counts.values()) == sum(report.values()), f"stray media flows\n{context}"

    def payloads(hop: tuple[tuple[str, int], tuple[str, int]]) -> set[bytes]:
        return {p.payload for p in packets if (p.src, p.dst) == hop}

    # The relay forwards plain RTP byte for byte; the echo comes back the same way.
    sent = payloads(hops["caller->relay"])
    assert payloads(hops["relay->callee"]) <= sent
    assert payloads(hops["relay->caller"]) <= payloads(hops["callee echo->relay"])
    assert payloads(hops["relay->caller"]) <= sent

    (ended,) = call.media_ended()
    assert ended["packets_in"] >= 2 * PCAP_PACKETS * 0.95, ended
    assert ended["packets_out"] == ended["packets_in"], ended
    assert ended["dropped"] == 0, ended


# ================================================================ 2. the SRTP leg vs libsrtp


def srtp_call(
    call: Call, a: RtpEndpoint, b: RtpEndpoint, key_b: str, hold_ms: int
) -> tuple[Sipp, Sipp, SdpMedia, SdpMedia]:
    """A plain caller (sipp signalling for ``a``) to an upstream set with ``media =
    "srtp"`` (sipp signalling for ``b``, answering with ``key_b``).  Returns the sipps, the
    offer the callee got and the answer the caller got."""
    uas = call.uas("media_uas_srtp", keys={"rtp_port": str(b.port), "crypto_key": key_b})
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], set_media="srtp")
    uac = call.uac(
        "media_uac", edge.udp or ("", 0), hold_ms=hold_ms, keys={"rtp_port": str(a.port)}
    )
    offer = sdp_media(sipp_message(uas, "INVITE "))
    answer = sdp_media(sipp_message(uac, "SIP/2.0 200", contains="CSeq: 1 INVITE"))
    sipp_message(uas, "ACK ")
    return uac, uas, offer, answer


@pytest.mark.timeout(90)
def test_srtp_leg_verified_with_libsrtp(call: Call) -> None:
    """Plain caller, SRTP upstream (``media = "srtp"``): the edge offers the callee
    RTP/SAVP with its own a=crypto; pylibsrtp decrypts what the relay sends with exactly
    that key (RTP and SRTCP, byte for byte the caller's packets); SRTP and SRTCP sent with
    the callee's answered key reach the plain caller as the original plain packets."""
    key_b = new_inline_key()
    with RtpEndpoint(CALLER) as a, RtpEndpoint(UPSTREAM) as b:
        uac, uas, offer, answer = srtp_call(call, a, b, key_b, hold_ms=5000)

        # The offer to the SRTP side: the relay's address and port, SAVP, its own keys.
        assert offer.proto == "RTP/SAVP", offer.lines
        assert offer.address == CALLER and call.in_relay_range(offer.port), offer.lines
        relay_key = offer.crypto("AES_CM_128_HMAC_SHA1_80").key
        assert relay_key != key_b
        # The answer to the plain caller: plain RTP at the relay, no keys.
        assert answer.proto == "RTP/AVP" and not answer.cryptos, answer.lines
        assert answer.address == CALLER and call.in_relay_range(answer.port), answer.lines

        caller_leg = (answer.address, answer.port)
        callee_leg = (offer.address, offer.port)
        from_relay = srtp_session(relay_key, outbound=False)
        to_relay = srtp_session(key_b, outbound=True)

        # caller -> relay (RTP) -> callee (SRTP with the relay's offered key)
        stream_a = RtpStream()
        for _ in range(50):
            a.send(stream_a.next_packet(), caller_leg)
            time.sleep(0.01)
        got = b.wait_for(50)
        assert len(got) == 50, f"{len(got)} SRTP packets at the callee\n{call.log()}"
        for d, original in zip(got, stream_a.sent, strict=True):
            assert d.source == callee_leg
            assert len(d.data) == len(original) + 10  # the 80-bit tag
            assert d.data[12:] != original[12:]  # encrypted
            assert from_relay.unprotect(d.data) == original

        # callee -> relay (SRTP with the answered key) -> caller (plain RTP)
        stream_b = RtpStream()
        for _ in range(50):
            b.send(to_relay.protect(stream_b.next_packet()), callee_leg)
            time.sleep(0.01)
        got = a.wait_for(50)
        assert [d.data for d in got] == stream_b.sent, call.log()
        assert all(d.source == caller_leg for d in got)

        # RTCP both ways: plain SR -> SRTCP at the callee; SRTCP -> plain SR at the caller.
        sr_a = [rtcp_sender_report(stream_a.ssrc, i) for i in range(3)]
        for sr in sr_a:
            a.send(sr, (answer.address, answer.rtcp_port), rtcp=True)
        got = b.wait_for(3, rtcp=True)
        assert [from_relay.unprotect_rtcp(d.data) for d in got] == sr_a, call.log()
        sr_b = [rtcp_sender_report(stream_b.ssrc, i) for i in range(3)]
        for sr in sr_b:
            b.send(to_relay.protect_rtcp(sr), (offer.address, offer.rtcp_port), rtcp=True)
        got = a.wait_for(3, rtcp=True)
        assert [d.data for d in got] == sr_b, call.log()

        assert_sipp_ok(uac, 1, 30)
        assert_sipp_ok(uas, 1, uas=True)
    (ended,) = call.media_ended()
    assert ended["packets_in"] == 106 and ended["dropped"] == 0, ended


# ================================================================ 3. baresip SRTP <-> RTP


@pytest.mark.timeout(120)
@pytest.mark.parametrize("srtp_side", ["caller", "callee"])
def test_baresip_sdes_srtp_bridged_to_plain_rtp(call: Call, srtp_side: str) -> None:
    """Two baresip UAs call through the edge, one with ``mediaenc=srtp-mand`` and one with
    plain RTP; the edge's policies (the caller's trunk and the upstream set) make it bridge
    SRTP <-> RTP.  ``srtp_side`` says which of caller and callee speaks SRTP.

    Proves: the call connects; the SRTP side negotiates SDES with the relay (CALL_MENC);
    on lo the SRTP side's datagrams are 190 bytes (PCMU + 10-byte tag) both ways and the
    plain side's 180; each baresip decodes the other's 440 Hz tone (its -dec.wav dump), so
    audio crossed the bridge both ways, decrypted and re-encrypted correctly.

    Hosts: the SRTP UA is on 127.0.0.2 and the plain one on 127.0.0.1 (the caller on a
    trunk allowing its address, the callee an upstream target).  baresip 1.0.0 binds its
    RTP sockets to 0.0.0.0, so whatever it sends to the relay on 127.0.0.1 leaves from
    127.0.0.1 even when its SDP says 127.0.0.2.  SRTP proves itself by its tag from any
    address, but plain RTP from a host that is neither the signalled one nor the SIP
    source is (rightly) refused by the relay's strict latching, so the plain UA must be
    on the host it signals.
    """
    require_binary("baresip", "baresip-core")
    srtp = ";mediaenc=srtp-mand"
    caller_host = SECURE_HOST if srtp_side == "caller" else CALLER
    callee_host = SECURE_HOST if srtp_side == "callee" else CALLER
    b = Baresip(
        workdir=call.workdir,
        name="bob",
        host=callee_host,
        account="<sip:b@{host}:{port}>;regint=0;answermode=auto"
        + (srtp if srtp_side == "callee" else ""),
    )
    call.procs.add(b).start()
    b.wait_ready()
    a = Baresip(
        workdir=call.workdir,
        name="alice",
        host=caller_host,
        account="<sip:a@{host}:{port}>;regint=0" + (srtp if srtp_side == "caller" else ""),
    )
    call.procs.add(a).start()
    a.wait_ready()
    edge = call.start_edge(
        [sip_uri(callee_host, b.sip_port, "udp")],
        set_media="srtp" if srtp_side == "callee" else "rtp",
        trunk_media="srtp" if srtp_side == "caller" else "rtp",
        trunk_allow=f"{caller_host}/32",
    )
    low, high = call.relay_range
    host, port = edge.udp or ("", 0)
    # The relay's ports, and the SIP to and from the edge (for the report of a failure).
    cap = call.capture(f"udp portrange {low}-{high} or udp port {port}")
    a.command("dial", f"sip:b@{host}:{port}")
    a.wait_event("CALL_ESTABLISHED", 15, fail_on="CALL_CLOSED")
    b.wait_event("CALL_ESTABLISHED", 5, fail_on="CALL_CLOSED")
    secure, plain = (a, b) if srtp_side == "caller" else (b, a)
    menc = secure.wait_event("CALL_MENC", 5)
    assert "AES_CM_128_HMAC_SHA1" in str(menc.get("param")), menc
    time.sleep(4.0)
    a.command("hangup")
    a.wait_event("CALL_CLOSED", 10)
    b.wait_event("CALL_CLOSED", 10)
    a.quit()
    b.quit()
    cap.stop()

    # On the wire: SRTP (190) between the relay and the SRTP side, RTP (180) on the other.
    # A UA's datagrams are told by its RTP port (its source address may be 127.0.0.1).
    rtp = [p for p in cap.udp() if p.payload[:1] and p.payload[0] >> 6 == 2]
    rtp = [p for p in rtp if not 64 <= p.payload[1] & 0x7F <= 95]  # RTCP out

    def lengths(ua: Baresip, *, to: bool) -> Counter[int]:
        ua_low, ua_high = ua.rtp_range
        return Counter(
            p.length
            for p in rtp
            if ua_low <= (p.dst if to else p.src)[1] <= ua_high
            and call.in_relay_range((p.src if to else p.dst)[1])
        )

    sizes = {
        "to srtp side": lengths(secure, to=True),
        "from srtp side": lengths(secure, to=False),
        "to plain side": lengths(plain, to=True),
        "from plain side": lengths(plain, to=False),
    }
    context = (
        f"{json.dumps({k: dict(v) for k, v in sizes.items()})}\n"
        f"{a.log_tail(20)}\n{b.log_tail(20)}\n{call.log()}"
    )
    for name, expected in (
        ("to srtp side", 190),
        ("from srtp side", 190),
        ("to plain side", 180),
        ("from plain side", 180),
    ):
        counted = sizes[name]
        assert counted[expected] >= 100, f"{name}: {dict(counted)}\n{context}"
        assert counted[expected] >= 0.95 * sum(counted.values()), f"{name}\n{context}"

    # Each side decoded the other's tone: audio crossed the bridge both ways.
    for ua in (a, b):
        dumps = ua.dumps("dec")
        assert dumps, f"{ua.name}: no decoded audio dump\n{context}"
        freq, rms, seconds = tone_frequency(dumps[-1])
        assert seconds >= 2.0 and rms > 500, f"{ua.name}: {freq} Hz rms {rms} {seconds} s"
        assert 420 <= freq <= 460, f"{ua.name}: {freq} Hz rms {rms}\n{context}"
    (ended,) = call.media_ended()
    assert ended["dropped"] <= 4, ended  # baresip's early SRTCP (shared/peers/README.md)


@pytest.mark.timeout(120)
def test_baresip_dtls_srtp_caller_through_the_relay_to_plain_rtp(call: Call) -> None:
    """baresip with ``mediaenc=dtls_srtp`` (issue 6: a non-browser DTLS-SRTP peer: no
    ICE, an RSA/SHA-1 certificate, UDP/TLS/RTP/SAVPF with ``a=setup:actpass``) calls a
    sipp UAS that echoes plain RTP.  The relay answers ``active`` and completes DTLS as
    client against baresip's RSA server, keys SRTP from it, and bridges to RTP/AVP: baresip
    logs "DTLS-SRTP complete" and decodes its own 440 Hz tone, echoed through both legs.

    Hosts: baresip binds its RTP to 0.0.0.0, so it must sit on 127.0.0.1, the address its
    packets leave from, to match its SDP (without ICE the relay hears DTLS only from the
    address the SDP names); the relay's DTLS legs need rtcp-mux, hence ``rtcp_mux yes``.
    """
    require_binary("baresip", "baresip-core")
    uas = call.uas("media_uas_echo", extra=("-rtp_echo",))
    a = Baresip(
        workdir=call.workdir,
        name="alice",
        host=CALLER,
        account="<sip:a@{host}:{port}>;regint=0;mediaenc=dtls_srtp",
        rtcp_mux=True,
    )
    call.procs.add(a).start()
    a.wait_ready()
    edge = call.start_edge(
        [sip_uri(UPSTREAM, uas.port, "udp")], set_media="rtp", trunk_media="dtls-srtp"
    )
    host, port = edge.udp or ("", 0)
    a.command("dial", f"sip:b@{host}:{port}")
    try:
        a.wait_event("CALL_ESTABLISHED", 15, fail_on="CALL_CLOSED")
    except PeerError as e:
        pytest.fail(f"{e}\n--- edge\n{call.log()}")
    time.sleep(5.0)
    a.command("hangup")
    a.wait_event("CALL_CLOSED", 10)
    a.quit()
    context = f"{a.log_tail(40)}\n{call.log()}"
    assert "DTLS-SRTP complete" in a.log_tail(400), context
    (ended,) = call.media_ended()
    assert ended["packets_in"] >= 200 and ended["packets_out"] >= 200, (ended, context)
    dumps = a.dumps("dec")
    assert dumps, f"no decoded audio dump\n{context}"
    freq, rms, seconds = tone_frequency(dumps[-1])
    assert seconds >= 1.5 and rms > 500 and 420 <= freq <= 460, (freq, rms, seconds, context)
    assert_sipp_ok(uas, 1, uas=True)


@pytest.mark.timeout(120)
def test_baresip_dtls_srtp_callee_offered_by_the_relay(call: Call) -> None:
    """The other direction: a sipp UAC on 127.0.0.2 (the carrier) plays G.711 from a pcap
    to baresip (``mediaenc=dtls_srtp``, an upstream target on 127.0.0.1).  The edge offers
    baresip DTLS-SRTP with ``a=setup:actpass``; baresip answers ``active``, so the relay is
    DTLS server to its RSA client.  Proves: baresip logs "DTLS-SRTP complete" and decodes
    audio with energy, and the relay counted the call's packets both ways."""
    require_binary("baresip", "baresip-core")
    assert PCAP.is_file(), f"{PCAP} missing: install Debian package sip-tester"
    b = Baresip(
        workdir=call.workdir,
        name="bob",
        host=CALLER,
        account="<sip:1000@{host}:{port}>;regint=0;answermode=auto;mediaenc=dtls_srtp",
        rtcp_mux=True,
    )
    call.procs.add(b).start()
    b.wait_ready()
    edge = call.start_edge(
        [sip_uri(CALLER, b.sip_port, "udp")],
        set_media="dtls-srtp",
        trunk_media="rtp",
        trunk_allow=f"{UPSTREAM}/32",
    )
    uac = call.uac(
        "media_uac_pcap",
        edge.udp or ("", 0),
        hold_ms=4000,
        keys={"pcap": str(PCAP)},
        local_ip=UPSTREAM,
    )
    assert_sipp_ok(uac, 1, 60)
    b.wait_event("CALL_CLOSED", 10)
    b.quit()
    context = f"{b.log_tail(40)}\n{call.log()}"
    assert "DTLS-SRTP complete" in b.log_tail(400), context
    (ended,) = call.media_ended()
    assert ended["packets_in"] >= 100, (ended, context)
    dumps = b.dumps("dec")
    assert dumps, f"no decoded audio dump\n{context}"
    _, rms, seconds = tone_frequency(dumps[-1])
    assert seconds >= 1.5 and rms > 100, (rms, seconds, context)


# ================================================================ 4. bad media input


@pytest.mark.timeout(120)
def test_bad_media_dropped_while_call_media_flows(call: Call) -> None:
    """While a plain caller and an SRTP callee exchange media through the relay (50 packets
    a second each way), send the relay garbage, truncated and malformed RTP, RTP and SRTP
    from an unsignalled host (127.0.0.9, an RTP bleed attempt), replayed SRTP, SRTP with a
    bad tag, and an RTCP flood of 1000 packets.

    Proves: every bad packet is dropped (the relay logs each reason, the stranger's source
    included, and its drop counter covers them all), nothing reaches the wrong party (every
    packet each endpoint gets is one the other legitimately sent, the stranger gets
    nothing, the flood reaches the callee only within the relay's RTCP budget), and the
    call's media keeps flowing both ways after the attacks.
    """
    key_b = new_inline_key()
    with (
        RtpEndpoint(CALLER) as a,
        RtpEndpoint(UPSTREAM) as b,
        bound_socket(STRANGER) as stranger,
    ):
        uac, uas, offer, answer = srtp_call(call, a, b, key_b, hold_ms=12000)
        relay_key = offer.crypto("AES_CM_128_HMAC_SHA1_80").key
        caller_leg = (answer.address, answer.port)
        caller_leg_rtcp = (answer.address, answer.rtcp_port)
        callee_leg = (offer.address, offer.port)
        to_relay = srtp_session(key_b, outbound=True)
        stream_a, stream_b = RtpStream(), RtpStream()
        protected_b: list[bytes] = []

        def send_a() -> None:
            a.send(stream_a.next_packet(), caller_leg)

        def send_b() -> None:
            packet = to_relay.protect(stream_b.next_packet())
            protected_b.append(packet)
            b.send(packet, callee_leg)

        pacers = [Pacer(send_a).start(), Pacer(send_b).start()]
        try:
            assert a.wait_for(10) and b.wait_for(10), f"no media before the attacks\n{call.log()}"
            bad: Counter[str] = Counter()

            # Garbage (not RTP by its first byte) from the legitimate sources.
            for _ in range(20):
                a.send(b"\xff" + random.randbytes(59), caller_leg)
                b.send(b"\xff" + random.randbytes(99), callee_leg)
                bad["not_rtp"] += 2
            # Truncated: shorter than the RTP header; and a CSRC list past the end.
            for i in range(20):
                a.send(b"\x80\x08\x00" + bytes([i]), caller_leg)
                a.send(b"\x8f\x08" + struct.pack("!HII", i, 0, 0xBAD) + b"\0" * 8, caller_leg)
                bad["too_short"] += 1
                bad["malformed"] += 1
            # RTP bleed: plain RTP and SRTP-looking packets from an unsignalled host.
            evil = RtpStream(ssrc=0xE011E011)
            for _ in range(20):
                stranger.sendto(evil.next_packet(), caller_leg)
                stranger.sendto(evil.next_packet() + random.randbytes(10), callee_leg)
                bad["unknown_source"] += 2
            # Replayed SRTP: recent packets of the callee's own stream, sent again.
            for packet in protected_b[-20:]:
                b.send(packet, callee_leg)
                bad["replay"] += 1
            # Bad tag: fresh SRTP under the callee's key with its tag's last byte flipped.
            forger = srtp_session(key_b, outbound=True)
            forged = RtpStream()
            for _ in range(20):
                packet = bytearray(forger.protect(forged.next_packet()))
                packet[-1] ^= 0x01
                b.send(bytes(packet), callee_leg)
                bad["auth_failed"] += 1
            # RTCP flood from the caller's RTCP socket.
            flood_start = time.monotonic()
            flood = 1000
            for i in range(flood):
                a.send(rtcp_sender_report(stream_a.ssrc, i), caller_leg_rtcp, rtcp=True)
            flood_seconds = time.monotonic() - flood_start

            # The media goes on after all that.
            after = time.monotonic() + 0.3
            time.sleep(1.5)
        finally:
            for p in pacers:
                p.stop()
        time.sleep(0.3)
        leaked = drain(stranger, 0.3)

        got_b = b.received()
        got_a = a.received()
        from_relay = srtp_session(relay_key, outbound=False)
        decrypted = [from_relay.unprotect(d.data) for d in got_b]
        sent_a, sent_b = set(stream_a.sent), set(stream_b.sent)
        context = (
            f"callee got {len(got_b)} of {len(stream_a.sent)}, caller got {len(got_a)} of "
            f"{len(stream_b.sent)}; drops logged {dict(call.drop_reasons())}\n{call.log()}"
        )
        # Nothing reaches the wrong party.
        assert not leaked, f"the stranger received {len(leaked)} packets\n{context}"
        assert all(p in sent_a for p in decrypted), (
            f"a foreign packet reached the callee\n{context}"
        )
        assert all(d.data in sent_b for d in got_a), (
            f"a foreign packet reached the caller\n{context}"
        )
        assert all(d.source == callee_leg for d in got_b)
        assert all(d.source == caller_leg for d in got_a)
        srtcp = b.received(rtcp=True)
        budget = 200 + 100 * (flood_seconds + 1.0) + 10  # the relay's RTCP bucket and rate
        assert 0 < len(srtcp) <= budget, f"{len(srtcp)} SRTCP of a {flood} flood\n{context}"
        assert {rtcp_ssrc(from_relay.unprotect_rtcp(d.data)) for d in srtcp} == {stream_a.ssrc}

        # The media kept flowing, both ways, after the attacks.
        late_b = [p for p, d in zip(decrypted, got_b, strict=True) if d.at > after]
        late_a = [d for d in got_a if d.at > after]
        assert len(late_b) >= 40 and len(late_a) >= 40, context
        assert len(got_b) >= 0.9 * len(stream_a.sent), context
        assert len(got_a) >= 0.9 * len(stream_b.sent), context
        assert {rtp_fields(p)[3] for p in decrypted} == {stream_a.ssrc}

        assert_sipp_ok(uac, 1, 40)
        assert_sipp_ok(uas, 1, uas=True)

    # Each kind of bad packet was dropped and counted, with its reason.
    reasons = call.drop_reasons()
    for reason in (*bad, "rtcp_flood"):
        assert reasons[reason] >= 1, f"no media_drop with reason {reason}\n{context}"
    sources = {
        r.get("source", "").split(":")[0]
        for r in call.edge_events("media_drop")
        if r.get("reason") == "unknown_source"
    }
    assert STRANGER in sources, sources
    (ended,) = call.media_ended()
    # Every bad packet counted once (the kernel may lose some of the flood before the relay
    # reads it, so the flood's share is bounded, not exact), no legitimate one.
    assert ended["dropped"] > sum(bad.values()), (ended, bad)
    assert ended["dropped"] <= sum(bad.values()) + flood - len(srtcp), (ended, bad, len(srtcp))


# ================================================================ 5. port exhaustion


@pytest.mark.timeout(90)
def test_relay_port_exhaustion_refuses_the_third_call_with_503(call: Call) -> None:
    """A relay range with room for two calls (4 RTP/RTCP pairs: each call takes a pair for
    the caller's leg and one for the callee's) and three concurrent calls: the two first
    complete, the third INVITE is answered 503 (and never reaches the upstream), the edge
    logs ``media_ports_exhausted``; once the two calls have ended (quarantine 0) the ports
    are back and a new call completes."""
    uas = call.uas("media_uas_echo", calls=3)
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], pairs=4, quarantine=0.0)
    target = edge.udp or ("", 0)
    first = call.uac("media_uac", target, calls=2, hold_ms=4000, rate=10)
    assert call.edge is not None
    deadline = time.monotonic() + 10
    while len(call.edge_events("media_session_created")) < 2:
        assert time.monotonic() < deadline, f"two calls not set up\n{call.log()}"
        time.sleep(0.05)
    third = call.uac("media_uac_503", target, calls=1)
    assert_sipp_ok(third, 1, 30)
    wait_for_event(call.edge, "media_ports_exhausted", 5)
    assert_sipp_ok(first, 2, 40)
    call.media_ended(2)
    fourth = call.uac("media_uac", target, calls=1, hold_ms=500)
    assert_sipp_ok(fourth, 1, 30)
    assert_sipp_ok(uas, 3, uas=True)
    assert len(call.edge_events("media_session_created")) == 3


# ================================================================ 6. offer in a reliable 183


@pytest.mark.timeout(90)
def test_late_offer_in_reliable_183_answered_in_prack_through_relay(call: Call) -> None:
    """RFC 3262 (RFC 6337 §2.1 pattern 4) with real peers: a sipp UAC sends an INVITE
    without SDP; the sipp UAS offers in a reliable 183; the UAC answers in the PRACK; the
    200 carries no SDP; the UAC then plays the G.711a pcap and the UAS echoes it.

    Proves: the offer in the 183 and the answer in the PRACK each reach the other side
    rewritten (naming only a relay port in the configured range); the RTP goes through the
    relay both ways (tshark on lo, all four hops) and the relay's counters agree."""
    assert PCAP.is_file(), f"{PCAP} missing: install Debian package sip-tester"
    uas = call.uas("media_uas_reliable_offer", extra=("-rtp_echo",))
    edge = call.start_edge([sip_uri(UPSTREAM, uas.port, "udp")], set_media="rtp")
    low, high = call.relay_range
    cap = call.capture(f"udp portrange {low}-{high}")
    uac = call.uac(
        "media_uac_late_offer_prack",
        edge.udp or ("", 0),
        hold_ms=7500,
        keys={"pcap": str(PCAP)},
    )
    assert_sipp_ok(uac, 1, 60)
    assert_sipp_ok(uas, 1, uas=True)
    time.sleep(0.3)
    cap.stop()

    invite = sipp_message(uas, "INVITE ")
    assert "Content-Length: 0" in invite and "m=audio" not in invite, invite  # a late offer
    progress = sipp_message(uac, "SIP/2.0 183")
    offer = sdp_media(progress)  # what the caller was offered: the relay's caller leg
    prack = sipp_message(uas, "PRACK ")
    answer = sdp_media(prack)  # what the callee got as answer: the relay's callee leg
    for m, own in ((offer, uas), (answer, uac)):
        assert m.address == CALLER and call.in_relay_range(m.port), m.lines
        assert m.port != own.media_port, m.lines
    assert UPSTREAM not in progress.split("\n\n", 1)[1], progress
    assert offer.port != answer.port

    packets = [p for p in cap.udp() if p.payload[:1] and p.payload[0] >> 6 == 2]
    counts = flows(packets)
    caller_media = (CALLER, uac.media_port)
    callee_media = (UPSTREAM, uas.media_port)
    caller_leg = (CALLER, offer.port)
    callee_leg = (CALLER, answer.port)
    hops = {
        "caller->relay": (caller_media, caller_leg),
        "relay->callee": (callee_leg, callee_media),
        "callee echo->relay": (callee_media, callee_leg),
        "relay->caller": (caller_leg, caller_media),
    }
    report = {name: counts[hop] for name, hop in hops.items()}
    context = f"{report}\nall flows: {dict(counts)}\n{call.log()}"
    for name, n in report.items():
        assert n >= PCAP_PACKETS * 0.95, f"{name}: {n} packets\n{context}"
    assert sum(counts.values()) == sum(report.values()), f"stray media flows\n{context}"

    (ended,) = call.media_ended()
    assert ended["packets_in"] >= 2 * PCAP_PACKETS * 0.95, ended
    assert ended["dropped"] == 0, ended
