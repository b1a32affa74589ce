"""Parse and serialise cost of typical SIP messages, per core.

Measures, in one process and on one core:
- parse of a ~900-byte INVITE with SDP and of a ~400-byte 200 OK
  (every header the proxy needs parsed and checked, as the edge does),
  cold (no header value seen before: the first message of a call) and warm
  (the memo of header values hit, as for the later messages of a call);
- parse + serialise (the proxy's minimum per forwarded message);
- a floor: decode + split into lines + split each line at ':' in plain
  Python, i.e. what any Python parser must pay before checking anything.
The ratio to the floor says how much the checks cost on top of touching
the bytes at all.

Each message is measured four ways: all pure Python (``python``, what
SIPEDGE_PURE_PYTHON=1 selects); the C scanner of media._srtp with the rest in
Python (``C scan``); the C scanner plus the C fast paths of the typed values
(``C vals``, SIPEDGE_PURE_PYTHON_CHECK=1); and that plus the header checks in
C (``C``, media/sipcheck.c: the default when the extension is built).  The
cold parse is where the value fast paths show: warm, the memos answer.
``tok µs`` is the tokenizing step alone (sip.message._scan or the scanner).

    python bench/bench_sip_parse.py [--seconds 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip import message
from sip.message import DEFAULT_LIMITS, clear_parse_caches, parse_message
from tests.sipdata import INVITE, OK_200

MAX_HEADERS = DEFAULT_LIMITS.max_headers
MAX_LINE = DEFAULT_LIMITS.max_line_length


def floor(data: bytes) -> object:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return [line.split(":", 1) for line in lines[1:]], body


def measure(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-5 nanoseconds per call, each round about seconds/5 long."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - t0
        if elapsed > seconds * 1e9 / 50:
            break
        n *= 2
    per_round = max(1, int(n * (seconds * 1e9 / 5) / max(elapsed, 1)))
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time_ns()
        for _ in range(per_round):
            fn()
        best = min(best, (time.process_time_ns() - t0) / per_round)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    rows = []
    paths = ["python", "C scan", "C vals", "C"] if message.use_accelerator(True) else ["python"]
    for name, data in (("INVITE+SDP", INVITE), ("200 OK", OK_200)):
        floor_ns = measure(lambda d=data: floor(d), args.seconds)
        for path in paths:
            message.use_accelerator(
                path != "python", values=path in ("C vals", "C"), check=path == "C"
            )
            scan = message._scan_c or message._scan

            def cold(d: bytes = data) -> object:
                clear_parse_caches()
                return parse_message(d)

            clear_ns = measure(clear_parse_caches, args.seconds)
            parse_ns = measure(cold, args.seconds) - clear_ns
            warm_ns = measure(lambda d=data: parse_message(d), args.seconds)
            both_ns = measure(lambda d=data: bytes(parse_message(d)), args.seconds)
            tok_ns = measure(
                lambda d=data, s=scan: s(d, MAX_HEADERS, MAX_LINE),
                args.seconds,
            )
            rows.append(
                {
                    "message": name,
                    "tokenizer": path,
                    "bytes": len(data),
                    "tokenize_us": tok_ns / 1000,
                    "parse_us": parse_ns / 1000,
                    "parse_warm_us": warm_ns / 1000,
                    "parse_serialise_us": both_ns / 1000,
                    "msgs_per_s_per_core": 1e9 / both_ns,
                    "floor_us": floor_ns / 1000,
                    "ratio_to_floor": parse_ns / floor_ns,
                }
            )
    message.use_accelerator(True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"python {sys.version.split()[0]}, one core (process CPU time, best of 5)")
    print(
        f"{'message':<12}{'tok':>8}{'bytes':>6}{'tok µs':>8}{'parse µs':>10}{'warm µs':>9}"
        f"{'warm+ser µs':>13}{'msg/s/core':>12}{'floor µs':>10}{'x floor':>8}"
    )
    for r in rows:
        print(
            f"{r['message']:<12}{r['tokenizer']:>8}{r['bytes']:>6}{r['tokenize_us']:>8.1f}"
            f"{r['parse_us']:>10.1f}{r['parse_warm_us']:>9.1f}"
            f"{r['parse_serialise_us']:>13.1f}{r['msgs_per_s_per_core']:>12,.0f}"
            f"{r['floor_us']:>10.2f}{r['ratio_to_floor']:>8.1f}"
        )


if __name__ == "__main__":
    main()
