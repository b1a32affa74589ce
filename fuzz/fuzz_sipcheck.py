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

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fuzz"))

from fuzz_sipscan import run_cases_and_text, sip_fuzz_args, type_refs  # noqa: E402


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

    def random_text(rng: random.Random) -> str:
        return "".join(rng.choice(' ,"<>\\a\t\u00a0\x85é') for _ in range(rng.randint(0, 40)))

    def check_text(rng: random.Random, text: str) -> str | None:
        return None if split(text) == split_list(text) else repr(text)

    # Most cases: whole checks on mutated messages.
    return run_cases_and_text(
        args,
        share=0.8,
        random_cases=random_cases,
        alive=alive,
        random_text=random_text,
        check_text=check_text,
        top=12,
    )


if __name__ == "__main__":
    sys.exit(main())
