"""Fuzz run of the C fast paths of the typed SIP header values (media/sipvalues.c)
against the Python parsers.

Invariant: for any text, ``media._srtp.SipValueParser``'s via/uri/name_addr/
contact/cseq give None or exactly what Via.parse, URI.parse, NameAddr.parse,
Contact.parse and CSeq.parse give, and then the Python parser does not raise
(tests/test_sip_values.py's check); and the parser keeps no reference it should
not: after the run no more Via, URI, NameAddr, Contact or CSeq objects are alive
than before it.  Under fuzz/asan_run.py the process must also end without an
AddressSanitizer or UBSan report and without a leak of the extension's memory.

Inputs, with a fixed ``--seed``: mutations of the test corpus's header values and
edge cases (tests/test_sip_values.py: inserted delimiters, quotes, escapes, CTLs,
digits at the limits, non-ASCII, deletions, case flips, repeats, truncation), and
random printable or arbitrary text.

    python fuzz/fuzz_sipvalues.py --cases 20000 --seed 7
    python fuzz/fuzz_sipvalues.py --ext build/asan/lib/media/_srtp....so   # fuzz/asan_run.py

Prints one JSON line with what it did; exits 1 if the invariant broke.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fuzz"))

from fuzz_sipscan import run_cases_and_text, sip_fuzz_args, type_refs  # noqa: E402


def alive() -> int:
    """References to the types of what this fuzzer builds (see type_refs)."""
    from sip.headers import Contact, CSeq, NameAddr, Via
    from sip.uri import URI

    return type_refs(Via, URI, NameAddr, Contact, CSeq)


def main() -> int:
    args = sip_fuzz_args(__doc__)

    from sip import message
    from tests.test_sip_values import PYTHON, check, random_cases

    if message._load_values() is None:
        print("media._srtp does not import: run `make install`", file=sys.stderr)
        return 1
    kinds = list(PYTHON)

    def random_text(rng: random.Random) -> str:
        return "".join(rng.choice('sip:@;=<>" \t.,0123456789abc/[]\\') for _ in range(40))

    def check_text(rng: random.Random, text: str) -> str | None:
        try:
            check(rng.choice(kinds), text)
        except AssertionError as exc:
            return repr(exc)
        return None

    # Most cases: mutations of real values.
    return run_cases_and_text(
        args,
        share=0.9,
        random_cases=random_cases,
        alive=alive,
        random_text=random_text,
        check_text=check_text,
        refs_key="value_type_refs",
    )


if __name__ == "__main__":
    sys.exit(main())
