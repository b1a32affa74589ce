"""CPU per call of the proxy core in-process: the C parsing paths against pure Python.

One process, no sockets: a Proxy with the bench's configuration (a trusted caller,
an upstream set, the audit log on) and a transport that only keeps the bytes.  Each
call is the sipp scenario of bench_proxy.py, INVITE (SDP) / 100 / 180 / 200 (SDP) /
ACK / BYE / 200, with the answers built from what the proxy forwarded.  Only
``Proxy.on_message`` is timed (process CPU time), so the number is the proxy's own
work per call, without the kernel, the event loop or timers firing: the part the
sip/ and edge/ code decides, and what a profile of it should be run on.

The reference is the same run with every C parsing path off (``use_accelerator
(False)``: the Python parsers), in alternating rounds so that a machine whose speed
drifts treats both alike; the report gives the medians and their ratio, and the cost
per message type.

    python bench/bench_proxy_core.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import config as config_mod
from edge.app import GC_THRESHOLDS, open_admission
from edge.proxy import Proxy
from edge.routing import Router
from edge.transport import Destination, Source
from sip import message
from sip.message import Request, Response, parse_message

CALLER = ("127.0.0.1", 5070)
UPSTREAM = ("127.0.0.2", 25070)
EDGE = ("127.0.0.1", 25060)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
)
CONFIG = """
[listen]
udp = ["127.0.0.1:25060"]
tcp = []
tls = []
[upstream]
default = "pbx"
[[upstream.sets]]
name = "pbx"
probe_interval = 0
media = "passthrough"
[[upstream.sets.targets]]
uri = "sip:127.0.0.2:25070"
[media]
enabled = false
[[trunks]]
name = "loopback"
allow = ["127.0.0.1/32"]
[auth]
database = "{dir}/credentials.sqlite3"
[audit]
path = "{dir}/audit.jsonl"
"""


class KeepBytes:
    """The transport the proxy sees: sends are kept, nothing goes on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Destination]] = []

    def send(self, data: bytes, dest: Destination, on_error: Any = None) -> None:
        self.sent.append((data, dest))

    def local_address(self, transport: str, family: int = 2) -> tuple[str, int]:
        return EDGE

    def register_alias(self, conn_id: int, host: str, port: int) -> None:
        pass

    def connection_remote(self, conn_id: int) -> tuple[str, int] | None:
        return None

    def take(self) -> list[Request | Response]:
        out, self.sent = self.sent, []
        return [parse_message(data) for data, _ in out]


def build(lines: list[str], body: str = "") -> bytes:
    return ("\r\n".join([*lines, f"Content-Length: {len(body)}", "", ""]) + body).encode()


def answer(req: Request | Response, status: int, reason: str, tag: str, body: str = "") -> bytes:
    h = req.headers
    to = h.get("To") or ""
    if status > 100 and "tag=" not in to:
        to += f";tag={tag}"
    lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in h.get_all("Via")]
    lines += [f"Record-Route: {v}" for v in h.get_all("Record-Route")]
    lines += [f"From: {h.get('From')}", f"To: {to}", f"Call-ID: {h.get('Call-ID')}"]
    lines += [f"CSeq: {h.get('CSeq')}"]
    if status > 100:
        lines.append("Contact: <sip:127.0.0.2:25070;transport=udp>")
    if body:
        lines.append("Content-Type: application/sdp")
    return build(lines, body)


class Run:
    def __init__(self, proxy: Proxy, transport: KeepBytes, gap: float = 0.0) -> None:
        self.proxy = proxy
        self.transport = transport
        self.gap = gap
        self.spent: dict[str, float] = {}

    def on(self, kind: str, data: bytes, remote: tuple[str, int]) -> list[Request | Response]:
        if self.gap:
            time.sleep(self.gap)  # untimed: the CPU idles, as between datagrams live
        t0 = time.process_time()
        self.proxy.on_message(data, Source("udp", remote, EDGE))
        self.spent[kind] = self.spent.get(kind, 0.0) + time.process_time() - t0
        return self.transport.take()

    def call(self, i: int) -> None:
        tag = f"4242SIPpTag00{i}"
        common = [f"From: sipp <sip:sipp@127.0.0.1:5070>;tag={tag}", f"Call-ID: {i}-4242@127.0.0.1"]
        out = self.on("INVITE", build([
            "INVITE sip:1000@127.0.0.1:25060;transport=udp SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}-1-0;rport",
            *common, "To: <sip:1000@127.0.0.1:25060;transport=udp>", "CSeq: 1 INVITE",
            "Contact: <sip:sipp@127.0.0.1:5070;transport=udp>", "Max-Forwards: 70",
            "User-Agent: sipedge-bench", "Content-Type: application/sdp",
        ], SDP), CALLER)  # fmt: skip
        fwd = next(m for m in out if isinstance(m, Request))
        self.on("100", answer(fwd, 100, "Trying", ""), UPSTREAM)
        self.on("180", answer(fwd, 180, "Ringing", f"uas{i}"), UPSTREAM)
        out = self.on("200 INVITE", answer(fwd, 200, "OK", f"uas{i}", SDP), UPSTREAM)
        ok = next(m for m in out if isinstance(m, Response))
        routes = [f"Route: {r}" for r in reversed(ok.headers.get_all("Record-Route"))]
        to = f"To: {ok.headers.get('To')}"
        contact = "Contact: <sip:sipp@127.0.0.1:5070;transport=udp>"
        self.on("ACK", build([
            "ACK sip:127.0.0.2:25070;transport=udp SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}-5-0;rport",
            *routes, *common, to, "CSeq: 1 ACK", contact, "Max-Forwards: 70",
        ]), CALLER)  # fmt: skip
        out = self.on("BYE", build([
            "BYE sip:127.0.0.2:25070;transport=udp SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}-7-0;rport",
            *routes, *common, to, "CSeq: 2 BYE", contact, "Max-Forwards: 70",
        ]), CALLER)  # fmt: skip
        bye = next(m for m in out if isinstance(m, Request))
        self.on("200 BYE", answer(bye, 200, "OK", f"uas{i}"), UPSTREAM)


async def measure(
    calls: int,
    rounds: int,
    workdir: Path,
    gap: float = 0.0,
    audit: bool = True,
    paths: tuple[str, ...] = ("c", "python"),
) -> dict[str, Any]:
    path = workdir / "bench.toml"
    path.write_text(CONFIG.format(dir=workdir))
    cfg = config_mod.load(str(path))
    admission, close = open_admission(cfg, log=lambda *a, **k: None)
    if not audit:
        admission.audit = None  # what the proxy skips without a log: a call's two lines
    transport = KeepBytes()
    proxy = Proxy(cfg, transport, Router(cfg, log=lambda *a, **k: None), admission=admission)
    await proxy.start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)  # as edge/app.py tune_gc()
    results: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    number = 0
    try:
        for r in range(rounds):
            for path_name in paths if r % 2 == 0 else paths[::-1]:
                message.use_accelerator(path_name == "c")
                message.clear_parse_caches()
                run = Run(proxy, transport, gap)
                for _ in range(max(50, calls // 10)):  # warm-up: memos, caches
                    run.call(number)
                    number += 1
                run.spent.clear()
                for _ in range(calls):
                    run.call(number)
                    number += 1
                results[path_name].append({k: v / calls * 1e6 for k, v in run.spent.items()})
    finally:
        message.use_accelerator(True)
        close()
    if proxy.counters.get("parse_errors") or proxy.counters.get("internal_errors"):
        raise SystemExit(f"calls went wrong: {proxy.counters}")
    if proxy.counters.get("requests_bye_udp") != number:
        raise SystemExit(f"{number} calls placed, counters say {proxy.counters}")
    return {"results": results, "counters": dict(proxy.counters)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--gap-us",
        type=float,
        default=0.0,
        help="idle this long before each message (untimed), as a live proxy does between "
        "datagrams: at 200 cps about 800",
    )
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="without the audit log (each call writes two lines): what it costs per call",
    )
    parser.add_argument(
        "--paths",
        default="c,python",
        help="which parsing paths to run: c,python (default) or one of them; with c alone, "
        "valgrind --tool=callgrind --toggle-collect=CPyDef_proxy___Proxy___on_message counts "
        "the instructions of the compiled path only",
    )
    args = parser.parse_args()
    paths = tuple(p for p in args.paths.split(",") if p)
    if not paths or any(p not in ("c", "python") for p in paths):
        parser.error("--paths takes c, python or both")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    if not message.use_accelerator(True):
        print("media._srtp does not import: run `make install`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sipedge-bench-core-") as tmp:
        out = asyncio.run(
            measure(args.calls, args.rounds, Path(tmp), args.gap_us / 1e6, not args.no_audit, paths)
        )
    results = out["results"]
    print(
        f"proxy core, in-process, {args.calls} calls x {args.rounds} rounds per path "
        f"(INVITE/100/180/200/ACK/BYE/200, audit {'off' if args.no_audit else 'on'}), "
        f"{args.gap_us:.0f} µs idle before each message, µs CPU in Proxy.on_message, medians:"
    )
    totals = {p: statistics.median(sum(r.values()) for r in rs) for p, rs in results.items()}
    kinds = list(results[paths[0]][0])
    print("path     per call  " + "  ".join(f"{k:>10}" for k in kinds))
    for p, rs in results.items():
        per = [statistics.median(r[k] for r in rs) for k in kinds]
        print(f"{p:8} {totals[p]:8.0f}  " + "  ".join(f"{v:10.0f}" for v in per))
    if len(paths) == 2:
        print(f"C paths / pure Python: {totals['c'] / totals['python']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
