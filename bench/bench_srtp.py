"""SRTP cost per packet: the C core, its Python twin and libsrtp, against raw OpenSSL.

Measures, in one process on one core, ns per protect and per unprotect of a
172-byte RTP packet (12-byte header + 160-byte payload, G.711 at 20 ms) under
AES_CM_128_HMAC_SHA1_80:
- the C core ``media._srtp`` called from Python (bytes in, bytes out), and its
  in-place API on a bytearray (the cost includes copying the packet into it);
- the same C core called from a C loop with no Python in between
  (``media._srtp._bench_core``: what the fast path of issue 7 will pay);
- pylibsrtp (libsrtp 2 with its own AES and SHA-1) called from Python;
- the pure-Python twin ``media._srtp_py``;
- the raw OpenSSL work of one protect, measured by the same extension
  (``media._srtp._bench_raw``): AES-128-CTR over the 160-byte payload with its
  IV set per packet, plus HMAC-SHA1 over 182 bytes from precomputed states.
Targets (issue 4): the C core at least as fast as pylibsrtp per packet called
from Python, and within 1.5x of the raw OpenSSL cost.

Times are CPU time of this process (thread CPU time inside C), median of 5
runs; each run uses fresh contexts, protects N packets with rising sequence
numbers, then unprotects them.

    python bench/bench_srtp.py [--packets 50000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylibsrtp

from media import _srtp, _srtp_py

SUITE = "AES_CM_128_HMAC_SHA1_80"
KEY_SALT = bytes(range(30))
RUNS = 5


def packets(n: int, ssrc: int = 0x1234ABCD) -> list[bytes]:
    payload = os.urandom(160)
    return [
        struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, ssrc) + payload
        for i in range(n)
    ]


Pair = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def ours(module: Any) -> Pair:
    key, salt = KEY_SALT[:16], KEY_SALT[16:]
    tx = module.Context(key, salt, SUITE, direction="outbound")
    rx = module.Context(key, salt, SUITE, direction="inbound")
    return tx.protect_rtp, rx.unprotect_rtp


def libsrtp() -> Pair:
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = pylibsrtp.Session(
        pylibsrtp.Policy(
            key=KEY_SALT, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
        )
    )
    rx = pylibsrtp.Session(
        pylibsrtp.Policy(
            key=KEY_SALT, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
        )
    )
    return tx.protect, rx.unprotect


def run_bytes(make: Callable[[], Pair], pkts: list[bytes]) -> tuple[float, float]:
    protect, unprotect = make()
    t0 = time.process_time_ns()
    protected = [protect(p) for p in pkts]
    t1 = time.process_time_ns()
    plain = [unprotect(p) for p in protected]
    t2 = time.process_time_ns()
    if plain[-1] != pkts[-1] or len(protected[0]) != 182:
        raise SystemExit("round trip failed")
    return (t1 - t0) / len(pkts), (t2 - t1) / len(pkts)


def run_in_place(pkts: list[bytes]) -> tuple[float, float]:
    """The C core's *_into API: each packet copied into a bytearray, then transformed."""
    key, salt = KEY_SALT[:16], KEY_SALT[16:]
    tx = _srtp.Context(key, salt, SUITE, direction="outbound")
    rx = _srtp.Context(key, salt, SUITE, direction="inbound")
    bufs = [bytearray(1500) for _ in range(len(pkts))]
    lens = [0] * len(pkts)
    n = len(pkts[0])
    protect, unprotect = tx.protect_rtp_into, rx.unprotect_rtp_into
    t0 = time.process_time_ns()
    for i, p in enumerate(pkts):
        buf = bufs[i]
        buf[:n] = p
        lens[i] = protect(buf, n)
    t1 = time.process_time_ns()
    for i, buf in enumerate(bufs):
        lens[i] = unprotect(buf, lens[i])
    t2 = time.process_time_ns()
    if bytes(bufs[-1][: lens[-1]]) != pkts[-1]:
        raise SystemExit("round trip failed")
    return (t1 - t0) / len(pkts), (t2 - t1) / len(pkts)


def run_c_loop(pkts: list[bytes], n: int) -> tuple[float, float]:
    key, salt = KEY_SALT[:16], KEY_SALT[16:]
    tx = _srtp.Context(key, salt, SUITE, direction="outbound")
    rx = _srtp.Context(key, salt, SUITE, direction="inbound")
    return _srtp._bench_core(tx, rx, pkts[0], n)


def median_of_runs(fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    fn()  # warm-up
    runs = [fn() for _ in range(RUNS)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=50_000, help="per run (C and libsrtp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    n = max(args.packets, 1024)
    pkts = packets(n)
    py_pkts = pkts[: max(n // 10, 1000)]

    raw = _srtp._bench_raw(n)
    rows: list[dict[str, Any]] = []

    def add(name: str, protect: float, unprotect: float) -> None:
        rows.append({"path": name, "protect_ns": protect, "unprotect_ns": unprotect})

    add(
        "raw OpenSSL: AES-128-CTR(160 B) + HMAC-SHA1(182 B), C loop",
        raw["raw_ctr_hmac"],
        raw["raw_ctr_hmac"],
    )
    add("C core media._srtp, C loop (_bench_core)", *median_of_runs(lambda: run_c_loop(pkts, n)))
    add(
        "C core media._srtp from Python, bytes",
        *median_of_runs(lambda: run_bytes(lambda: ours(_srtp), pkts)),
    )
    add("C core media._srtp from Python, in place", *median_of_runs(lambda: run_in_place(pkts)))
    add(
        f"pylibsrtp {pylibsrtp.__version__} from Python",
        *median_of_runs(lambda: run_bytes(libsrtp, pkts)),
    )
    add(
        "Python twin media._srtp_py",
        *median_of_runs(lambda: run_bytes(lambda: ours(_srtp_py), py_pkts)),
    )

    lib = rows[4]
    raw_ns = raw["raw_ctr_hmac"]
    for r in rows:
        r["protect_vs_pylibsrtp"] = r["protect_ns"] / lib["protect_ns"]
        r["unprotect_vs_pylibsrtp"] = r["unprotect_ns"] / lib["unprotect_ns"]
        r["protect_vs_raw"] = r["protect_ns"] / raw_ns
        r["unprotect_vs_raw"] = r["unprotect_ns"] / raw_ns

    if args.json:
        print(json.dumps({"openssl": _srtp.openssl_version(), "raw": raw, "rows": rows}, indent=2))
        return
    print(
        f"SRTP {SUITE}, 172 B RTP -> 182 B SRTP, {n} packets per run "
        f"({len(py_pkts)} for the Python twin), median of {RUNS} runs, CPU time, one core; "
        f"{_srtp.openssl_version()}, python {sys.version.split()[0]}"
    )
    print(f"{'path':<60}{'protect ns':>11}{'unprot. ns':>11}{'x pylibsrtp':>13}{'x raw':>13}")
    for r in rows:
        print(
            f"{r['path']:<60}{r['protect_ns']:>11.0f}{r['unprotect_ns']:>11.0f}"
            f"{r['protect_vs_pylibsrtp']:>6.2f}/{r['unprotect_vs_pylibsrtp']:<6.2f}"
            f"{r['protect_vs_raw']:>6.2f}/{r['unprotect_vs_raw']:<6.2f}"
        )
    print("(x columns: protect/unprotect ratios; x raw against the raw protect cost)")
    print(
        "raw parts, ns: " + ", ".join(f"{k} {v:.0f}" for k, v in raw.items() if k != "raw_ctr_hmac")
    )
    c_loop, c_py = rows[1], rows[2]
    vs_lib = c_py["protect_ns"] <= lib["protect_ns"] and c_py["unprotect_ns"] <= lib["unprotect_ns"]
    loop_raw = max(c_loop["protect_ns"], c_loop["unprotect_ns"]) / raw_ns
    py_raw = max(c_py["protect_ns"], c_py["unprotect_ns"]) / raw_ns
    print(
        f"targets: C core from Python <= pylibsrtp: {'met' if vs_lib else 'MISSED'}; "
        f"C core <= 1.5x raw: {loop_raw:.2f}x in a C loop "
        f"({'met' if loop_raw <= 1.5 else 'MISSED'}), {py_raw:.2f}x called from Python"
    )


if __name__ == "__main__":
    main()
