"""Bounded fuzz runs: atheris on fuzz/fuzz_sip.py, seeded with the RFC 4475 messages,
and fuzz/fuzz_fastpath.py on the C data plane (the normal build; ``make fuzz-asan``
runs it longer under AddressSanitizer and UBSan).

Each target's invariant is in its docstring.  The run is bounded in count and
time and uses a fixed seed, so it is repeatable; a failure leaves the input
that broke it in the pytest tmp dir (libFuzzer's crash-* file).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10000


@pytest.mark.fuzz
@pytest.mark.timeout(300)
def test_fuzz_sip_parser_and_framer(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in (ROOT / "tests" / "data").glob("rfc*/*/*.dat"):
        shutil.copy(path, corpus / path.name)
    for path in (ROOT / "tests" / "data" / "rfc5118").glob("*.dat"):
        shutil.copy(path, corpus / path.name)
    assert len(list(corpus.iterdir())) >= 49
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_sip.py"),
            f"-runs={RUNS}",
            "-seed=4475",
            "-max_len=4096",
            "-max_total_time=240",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert f"Done {RUNS} runs" in proc.stderr, tail


@pytest.mark.fuzz
@pytest.mark.timeout(60)
def test_fuzz_fastpath_c_plane() -> None:
    """fuzz/fuzz_fastpath.py on the normal build, bounded (a few seconds): random and
    mutated datagrams into the C loops while the table changes; the invariants are in
    its docstring (``make fuzz-asan`` runs it longer under AddressSanitizer)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_fastpath.py"),
            "--datagrams=30000",
            "--seconds=6",
            "--seed=3711",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["loop_read"] > 1000, summary
    assert summary["packets_in"] > 0 and summary["forwarded"] > 0, summary
    assert summary["legs_removed"] > 12 and summary["rekeys"] > 12, summary
    assert all(summary["drops"].values()), summary  # every drop reason was reached
    assert summary["fds"] == summary["threads"] == summary["objects"] == 0, summary
