"""Fuzz run of the C SIP tokenizer (media/sipscan.c) against its Python reference.

Invariant: for any bytes and limits, ``media._srtp.SipScanner.scan`` and
``sip.message._scan`` give equal results or raise the same SipError (the
comparison of tests/test_sip_scan.py), and the scanner keeps no reference it
should not: after the run no HeaderField is left alive and the name cache is
within its bound.  Under fuzz/asan_run.py the process must also end without an
AddressSanitizer or UBSan report and without a leak of the extension's memory.

Inputs, with a fixed ``--seed``: mutations of the test corpus (tests/test_sip_scan.py:
byte flips, inserted CR/LF/NUL/CTL/backslash/SP/HT/colon/UTF-8 pieces, truncation,
duplicated lines, long lines, many headers), random bytes with a CRLFCRLF, and
messages with thousands of distinct header names (the name cache); random limits.

    python fuzz/fuzz_sipscan.py --cases 20000 --seed 7
    python fuzz/fuzz_sipscan.py --ext build/asan/lib/media/_srtp....so   # fuzz/asan_run.py

Prints one JSON line with what it did; exits 1 if the invariant broke.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_ext(path: str) -> None:
    """media._srtp from ``path`` (the sanitizer build), before sip.message imports it."""
    import media

    spec = importlib.util.spec_from_file_location("media._srtp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["media._srtp"] = module
    spec.loader.exec_module(module)
    media._srtp = module  # type: ignore[attr-defined]


def sip_fuzz_args(description: str) -> argparse.Namespace:
    """The SIP fuzzers' arguments (--cases, --seconds, --seed, --ext); with --ext the
    sanitizer build of media._srtp is loaded before anything imports it."""
    ap = argparse.ArgumentParser(description=description.split("\n")[0])
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--ext", help="load media._srtp from this file")
    args = ap.parse_args()
    if args.ext:
        load_ext(args.ext)
    return args


def live_objects_checked(summary: dict[str, Any], *keys: str) -> bool:
    """Whether references to a type count its live instances, noted in ``summary``
    (and its ``keys``, the counts, emptied when not): not on the compiled core
    (sip/_compiled.py), whose mypyc classes do not give their type's reference back
    when an instance dies (1000 HeaderFields made and dropped in Python: +1000
    references to the type, memory flat).  ``make fuzz-asan`` checks the invariant
    on the plain-Python core."""
    from sip import _compiled

    exact = not _compiled.in_use("sip.message")
    if not exact:
        summary.update(dict.fromkeys(keys))
    summary["live_objects_checked"] = exact
    return exact


def type_refs(*types: type) -> int:
    """References to these (heap) types after a collection.  Every instance holds one
    to its type, so this counts live instances the cyclic GC does not track too (the C
    paths untrack theirs; gc.get_objects() cannot see them)."""
    gc.collect()
    return sum(sys.getrefcount(t) for t in types)


def run_cases_and_text(
    args: argparse.Namespace,
    *,
    share: float,
    random_cases: Callable[[int, int, float], tuple[int, dict[str, int]]],
    alive: Callable[[], int],
    random_text: Callable[[random.Random], str],
    check_text: Callable[[random.Random, str], str | None],
    refs_key: str = "type_refs",
    top: int | None = None,
) -> int:
    """The value and header-check fuzzers' run: ``share`` of ``--cases`` through the
    tests' ``random_cases`` (which assert the C/Python invariant), the rest random
    text (``random_text``, or arbitrary bytes) given to ``check_text`` (None when C
    and Python agree, else what differed); parse caches cleared around it and live
    instances counted by ``alive`` before and after.  Prints one JSON line; 1 if the
    invariant broke or instances leaked."""
    from sip import message

    message.use_accelerator(True)
    message.clear_parse_caches()
    before = alive()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    mismatches = 0
    first_mismatch = None
    mutated = int(args.cases * share)
    outcomes: dict[str, int] = {}
    done = 0
    try:
        done, outcomes = random_cases(args.seed, mutated, args.seconds)
    except AssertionError as exc:
        mismatches, first_mismatch = 1, repr(exc)[:300]
    extra = 0
    for extra in range(1, args.cases - mutated + 1):  # noqa: B007 (extra is reported)
        if rng.random() < 0.7:
            text = random_text(rng)
        else:
            text = rng.randbytes(rng.randint(0, 60)).decode("latin-1")
        problem = check_text(rng, text)
        if problem is not None:
            mismatches += 1
            first_mismatch = first_mismatch or problem[:300]
        if time.monotonic() > deadline:
            break
    message.clear_parse_caches()
    after = alive()
    if top is not None:
        outcomes = dict(sorted(outcomes.items(), key=lambda kv: -kv[1])[:top])
    summary = {
        "cases": done + extra,
        "outcomes": outcomes,
        "mismatches": mismatches,
        "first_mismatch": first_mismatch,
        f"{refs_key}_before": before,
        f"{refs_key}_after": after,
    }
    exact = live_objects_checked(summary, f"{refs_key}_before", f"{refs_key}_after")
    print(json.dumps(summary))
    return 0 if mismatches == 0 and (after <= before or not exact) else 1


def main() -> int:
    args = sip_fuzz_args(__doc__)

    from sip import message
    from sip.message import HeaderField, Limits
    from tests.test_sip_scan import CORPUS, mutate, outcome

    # A scanner of its own: its line cache holds fields (up to 1024) until it goes.
    scan = message._new_scanner()
    if scan is None:
        print("media._srtp does not import: run `make install`", file=sys.stderr)
        return 1
    field_refs = type_refs(HeaderField)
    rng = random.Random(args.seed)
    bases = [d for d in CORPUS if len(d) < 4000 and b"\r\n\r\n" in d]
    deadline = time.monotonic() + args.seconds
    done = ok = mismatches = 0
    first_mismatch = None
    for done in range(1, args.cases + 1):  # noqa: B007 (done is reported)
        kind = rng.random()
        if kind < 0.85:
            data = mutate(rng, rng.choice(bases))
        elif kind < 0.95:
            data = rng.randbytes(rng.randint(0, 200)) + b"\r\n\r\n" + rng.randbytes(8)
        else:  # distinct header names: fills the name cache, then misses it
            names = "".join(f"X-{rng.getrandbits(40):x}: v\r\n" for _ in range(40))
            data = b"OPTIONS sip:a@b SIP/2.0\r\n" + names.encode() + b"\r\n"
        limits = Limits(
            max_headers=rng.choice((0, 3, 64, 256, 10_000)),
            max_line_length=rng.choice((0, 10, 60, 8192)),
        )
        expected = outcome(message._scan, data, limits)
        got = outcome(scan, data, limits)
        if got != expected:
            mismatches += 1
            first_mismatch = first_mismatch or repr(data[:300])
        ok += expected[0] == "ok"
        if time.monotonic() > deadline:
            break
    cached = scan.__self__.cached_names  # type: ignore[attr-defined]
    del scan, expected, got
    message.use_accelerator(False)
    gc.collect()
    alive = type_refs(HeaderField) - field_refs
    summary = {
        "cases": done,
        "tokenized": ok,
        "mismatches": mismatches,
        "first_mismatch": first_mismatch,
        "header_fields_alive": alive,
        "cached_names": cached,
    }
    exact = live_objects_checked(summary, "header_fields_alive")
    print(json.dumps(summary))
    return 0 if mismatches == 0 and (alive <= 0 or not exact) and cached <= 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
