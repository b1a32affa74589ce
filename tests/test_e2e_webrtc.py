"""Headless Chromium calls through the edge (issue 6): WSS signaling, ICE-lite, DTLS-SRTP.

The test serves tests/webrtc/sipclient.html (a minimal SIP-over-WebSocket client in plain
JavaScript) from 127.0.0.1 and drives Debian's Chromium with selenium.  The page
registers over wss:// with a Bearer JWT (127.0.0.1 is *not* a trusted trunk here, so the
token is what lets it in), calls the built-in echo endpoint with a fake microphone, and
the test reads ``getStats()``: DTLS connected, packets sent, and packets with audio
energy received -- the echo came back through both legs of the relay (DTLS-SRTP on the
browser's, plain RTP on the echo endpoint's).  Chromium trusts the edge's certificate
through ``--ignore-certificate-errors-spki-list`` (the SPKI pin of the test certificate).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.peers import SipedgeProc, TestCerts, free_port, make_test_certs

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HERE = Path(__file__).parent
JWT_KEY = "c" * 48
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def spki_pin(cert: Path) -> str:
    pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("webrtc-certs"), key_type="ec")


@pytest.fixture
def page_server() -> Iterator[str]:
    """tests/webrtc/ over HTTP on 127.0.0.1 (a secure context: getUserMedia works)."""
    handler = partial(_QuietHandler, directory=str(HERE / "webrtc"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sipclient.html"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def browser(certs: TestCerts) -> Iterator[Any]:
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: apt-get install {package}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install selenium (the test extra)")
    profile = tempfile.mkdtemp(prefix="sipedge-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--disable-dev-shm-usage",
        "--mute-audio",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,DialMediaRouteProvider,"
        "OptimizationHints,Translate",
        f"--ignore-certificate-errors-spki-list={spki_pin(certs.cert)}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def edge(tmp_path: Path, certs: TestCerts) -> Iterator[tuple[SipedgeProc, int]]:
    wss_port = free_port("127.0.0.1", "tcp")
    proc = SipedgeProc(
        workdir=tmp_path / "edge",
        certs=certs,
        # Nobody on loopback is trusted: the browser gets in with its token.
        trunks=[{"name": "elsewhere", "allow": ["192.0.2.0/24"]}],
        extra={
            "listen": {"wss": [f"127.0.0.1:{wss_port}"]},
            "media": {"caller": "as-offered"},
        },
    )
    proc.env = {**(proc.env or {}), "JWT_KEY": JWT_KEY}
    proc.start()
    proc.wait_ready()
    yield proc, wss_port
    proc.stop()


def token(agent: str) -> str:
    now = int(time.time())
    claims = {
        "customer_id": "3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "agent_id": agent,
        "permissions": ["call_create"],
        "iat": now,
        "exp": now + 600,
    }
    return pyjwt.encode(claims, JWT_KEY, algorithm="HS256")


def run_async(driver: Any, script: str, *args: Any) -> Any:
    """Call an async function of the page; its result, or an AssertionError with the page log."""
    result = driver.execute_async_script(
        f"const done = arguments[arguments.length - 1];"
        f"({script})(...Array.from(arguments).slice(0, -1))"
        f".then(r => done({{ok: r}}), e => done({{error: String(e)}}));",
        *args,
    )
    if "error" in result:
        page = driver.execute_script("return window.T")
        raise AssertionError(f"{result['error']}; page: {page}")
    return result["ok"]


def wait_for_audio(browser: Any, packets: int, seconds: float = 20.0) -> dict[str, Any]:
    """The page's getStats() once more than ``packets`` came in with audio energy (or the
    last stats when ``seconds`` pass first)."""
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        stats = run_async(browser, "stats")
        inbound = stats.get("inbound-rtp") or {}
        if (inbound.get("packets") or 0) > packets and (inbound.get("totalAudioEnergy") or 0) > 0:
            break
    return stats


@pytest.mark.timeout(120)
def test_chromium_calls_the_echo_endpoint_over_wss_and_dtls_srtp(
    edge: tuple[SipedgeProc, int], browser: Any, page_server: str
) -> None:
    _, wss_port = edge
    browser.get(page_server)
    url = f"wss://127.0.0.1:{wss_port}/"
    tok = token("agent-7")
    assert run_async(browser, "register", url, "agent-7", tok) == 200
    echo = "sip:echo@sipedge"  # any number: calls from outside go to the default upstream
    assert run_async(browser, "call", echo, tok) == 200, browser.execute_script("return window.T")
    stats = wait_for_audio(browser, packets=50)
    page = browser.execute_script("return window.T")
    assert stats.get("transport", {}).get("dtlsState") == "connected", (stats, page)
    assert stats["transport"]["srtpCipher"] == "SRTP_AES128_CM_HMAC_SHA1_80", stats
    assert (stats.get("outbound-rtp") or {}).get("packets", 0) > 50, stats
    inbound = stats.get("inbound-rtp") or {}
    assert inbound.get("packets", 0) > 50, (stats, page)
    assert inbound.get("totalAudioEnergy", 0) > 0, stats
    # The offer the edge forwarded and the answer the browser got name only the relay.
    assert "a=ice-lite" in page["answer"] and "a=fingerprint:sha-256" in page["answer"]
    assert run_async(browser, "hangup") == 200


@pytest.mark.timeout(120)
def test_the_upstream_calls_a_registered_browser(
    tmp_path: Path, certs: TestCerts, browser: Any, page_server: str
) -> None:
    """sipp on 127.0.0.2 (an upstream target) calls the browser's AOR with G.711 from a
    pcap: the INVITE goes down the browser's WebSocket, the browser answers with DTLS-SRTP,
    and its getStats() shows the upstream's audio arriving decrypted through the relay."""
    from tests.peers import Sipp, sipp_uac

    pcap = Path("/usr/share/sip-tester/g711a.pcap")
    assert pcap.is_file(), f"{pcap} missing: apt-get install sip-tester"
    wss_port = free_port("127.0.0.1", "tcp")
    proc = SipedgeProc(
        workdir=tmp_path / "edge",
        certs=certs,
        upstream={
            "echo": True,
            "default": "echo",
            "sets": [
                {"name": "pbx", "probe_interval": 0, "targets": [{"uri": "sip:127.0.0.2:5999"}]}
            ],
        },
        trunks=[{"name": "elsewhere", "allow": ["192.0.2.0/24"]}],
        extra={"listen": {"wss": [f"127.0.0.1:{wss_port}"]}},
    )
    proc.env = {**(proc.env or {}), "JWT_KEY": JWT_KEY}
    proc.start()
    uac: Sipp | None = None
    try:
        proc.wait_ready()
        browser.get(page_server)
        assert (
            run_async(
                browser, "register", f"wss://127.0.0.1:{wss_port}/", "agent-9", token("agent-9")
            )
            == 200
        )
        browser.execute_script(
            "answerCall().then(r => (T.answered = r), e => (T.answerError = String(e)));"
        )
        edge_udp = proc.addresses.udp
        assert edge_udp is not None
        uac = sipp_uac(
            "media_uac_pcap",
            edge_udp,
            workdir=tmp_path,
            local_ip="127.0.0.2",
            ruri=f"sip:agent-9@{edge_udp[0]}:{edge_udp[1]}",
            hold_ms=7500,
            keys={"pcap": str(pcap)},
            timeout=40,
        )
        uac.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and browser.execute_script("return T.answered") != 200:
            time.sleep(0.5)
        stats = wait_for_audio(browser, packets=100)
        page = browser.execute_script("return window.T")
        assert page.get("answered") == 200, (
            page.get("answerError"),
            page.get("sip"),
            page.get("log"),
        )
        assert "a=fingerprint:sha-256" in page["incomingOffer"], page["incomingOffer"]
        assert "127.0.0.2" not in page["incomingOffer"]  # the upstream's address never shows
        assert stats.get("transport", {}).get("dtlsState") == "connected", (stats, page)
        inbound = stats.get("inbound-rtp") or {}
        assert inbound.get("packets", 0) > 100 and inbound.get("totalAudioEnergy", 0) > 0, stats
        assert uac.wait(timeout=40) == 0, uac.result()
        result = uac.result()
        assert result.successful == 1 and result.failed == 0, result
    finally:
        if uac is not None:
            uac.stop()
        proc.stop()


@pytest.mark.timeout(120)
def test_chromium_calls_a_sipp_uas_on_plain_rtp(
    tmp_path: Path, certs: TestCerts, browser: Any, page_server: str
) -> None:
    """The browser calls through the edge to a sipp UAS (an upstream on 127.0.0.2) that
    speaks plain RTP and echoes it: DTLS-SRTP on the browser's leg, RTP/AVP on sipp's,
    and the browser hears its own audio back."""
    from tests.peers import sipp_uas

    uas = sipp_uas("media_uas_echo", workdir=tmp_path, local_ip="127.0.0.2", extra=("-rtp_echo",))
    uas.start()
    wss_port = free_port("127.0.0.1", "tcp")
    proc = SipedgeProc(
        workdir=tmp_path / "edge",
        certs=certs,
        upstream={
            "echo": False,
            "default": "pbx",
            "sets": [
                {
                    "name": "pbx",
                    "probe_interval": 0,
                    "media": "rtp",
                    "targets": [{"uri": f"sip:127.0.0.2:{uas.port}"}],
                }
            ],
        },
        trunks=[{"name": "elsewhere", "allow": ["192.0.2.0/24"]}],
        extra={"listen": {"wss": [f"127.0.0.1:{wss_port}"]}},
    )
    proc.env = {**(proc.env or {}), "JWT_KEY": JWT_KEY}
    proc.start()
    try:
        uas.wait_ready()
        proc.wait_ready()
        browser.get(page_server)
        tok = token("agent-5")
        assert run_async(browser, "register", f"wss://127.0.0.1:{wss_port}/", "agent-5", tok) == 200
        assert run_async(browser, "call", "sip:1000@sipedge", tok) == 200
        stats = wait_for_audio(browser, packets=50)
        page = browser.execute_script("return window.T")
        assert stats.get("transport", {}).get("dtlsState") == "connected", (stats, page)
        inbound = stats.get("inbound-rtp") or {}
        assert inbound.get("packets", 0) > 50 and inbound.get("totalAudioEnergy", 0) > 0, stats
        assert run_async(browser, "hangup") == 200
        assert uas.wait(timeout=20) == 0, uas.result()
    finally:
        uas.stop()
        proc.stop()
