"""Fuzz run of the C header checks (media/sipcheck.c) against sip.message._check_headers.

Invariant: for any tokenized message, ``media._srtp.SipHeaderChecker.check`` leaves
the same ``headers._typed`` (values and types) or raises the same SipError as the
Python reference, and leaves the parse memos as it would, cold and warm
(tests/test_sip_check.py's assert_same); its comma split gives what
sip._abnf.split_list gives for any text; and nothing it built stays alive: after
the run no more value, header or message objects are alive than before it.
Under fuzz/asan_run.py the process must also end without an AddressSanitizer or
UBSan report and without a leak of the extension's memory.

Inputs, with a fixed ``--seed``: tests/test_sip_check.py's mutations of the corpus's
header lines (typed names swapped, values replaced or edited with delimiters,
quotes, brackets, Unicode spaces, digits at the limits; a tenth also mutated byte
by byte), and random text for the split.

    python fuzz/fuzz_sipcheck.py --cases 20000 --seed 7
    python fuzz/fuzz_sipcheck.py --ext build/asan/lib/media/_srtp....so   # fuzz/asan_run.py

Prints one JSON line with what it did; exits 1 if the invariant broke.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fuzz"))

from fuzz_sipscan import sip_fuzz_args, type_refs  # noqa: E402


def alive() -> int:
    """References to the types of what this fuzzer builds (see type_refs)."""
    from sip.headers import Contact, ContentType, CSeq, NameAddr, Via
    from sip.message import HeaderField, Headers, Request, Response
    from sip.uri import URI

    types = (Via, URI, NameAddr, Contact, CSeq, ContentType, HeaderField, Headers)
    return type_refs(*types, Request, Response)


def main() -> int:
    args = sip_fuzz_args(__doc__)

    from sip import message
    from sip._abnf import split_list
    from tests.test_sip_check import random_cases

    check = message._load_checker()
    if check is None:
        print("media._srtp does not import: run `make install`", file=sys.stderr)
        return 1
    split = check.__self__.split  # type: ignore[attr-defined]
    message.use_accelerator(True)
    message.clear_parse_caches()
    before = alive()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    mismatches = 0
    first_mismatch = None
    # Most cases: whole checks on mutated messages (random_cases asserts the invariant).
    mutated = int(args.cases * 0.8)
    outcomes: dict[str, int] = {}
    done = 0
    try:
        done, outcomes = random_cases(args.seed, mutated, args.seconds)
    except AssertionError as exc:
        mismatches, first_mismatch = 1, repr(exc)[:300]
    extra = 0
    for extra in range(1, args.cases - mutated + 1):  # noqa: B007 (extra is reported)
        if rng.random() < 0.7:
            text = "".join(rng.choice(' ,"<>\\a\t\u00a0\x85é') for _ in range(rng.randint(0, 40)))
        else:
            text = rng.randbytes(rng.randint(0, 60)).decode("latin-1")
        if split(text) != split_list(text):
            mismatches += 1
            first_mismatch = first_mismatch or repr(text)[:300]
        if time.monotonic() > deadline:
            break
    message.clear_parse_caches()
    after = alive()
    summary = {
        "cases": done + extra,
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])[:12]),
        "mismatches": mismatches,
        "first_mismatch": first_mismatch,
        "type_refs_before": before,
        "type_refs_after": after,
    }
    print(json.dumps(summary))
    return 0 if mismatches == 0 and after <= before else 1


if __name__ == "__main__":
    sys.exit(main())
