"""``make fuzz-asan``: fuzz/fuzz_fastpath.py, fuzz_sipscan.py, fuzz_sipvalues.py and
fuzz_sipcheck.py against media._srtp built with AddressSanitizer and UBSan, failing
on any sanitizer report.

    .venv/bin/python fuzz/asan_run.py                        # build, canaries, fuzz
    .venv/bin/python fuzz/asan_run.py --datagrams 200000 --seconds 120 --seed 3
    .venv/bin/python fuzz/asan_run.py --no-canaries --datagrams 0 --sip-cases 20000

1. Builds the extension with ``-fsanitize=address,undefined -fno-omit-frame-pointer -g``
   into build/asan/ (``setup.py build_ext --build-lib``): the in-place build the tests
   and ``make run`` use is not touched.  The harness loads it with ``--ext`` ahead of
   the package's Python modules.
2. Runs Python (not instrumented) with the runtime first: ``LD_PRELOAD`` of gcc's
   libasan, ``PYTHONMALLOC=malloc`` (every Python object a malloc block the sanitizer
   sees: an overrun of a Python buffer from C is caught, and LeakSanitizer can follow
   pointers through Python objects), ``ASAN_OPTIONS=detect_leaks=1``,
   ``UBSAN_OPTIONS=halt_on_error=1``.
3. Judges the output.  Fails on any AddressSanitizer error, any UBSan "runtime error",
   any leak LeakSanitizer reports at exit that fuzz/lsan.supp does not suppress, or a
   harness failure (its invariants: books balanced; fds, threads and SRTP Context
   objects back to the baseline, the last catching a lost reference in the binding,
   which LSan cannot see: CPython's GC lists keep such an object reachable).  Leaks
   are listed as in the extension (a frame in media._srtp: its file, sources or
   ``se_*`` functions) or elsewhere.  The suppression list is empty: with
   ``PYTHONMALLOC=malloc`` CPython 3.11 leaves nothing unreachable at exit here.
4. Then the SIP tokenizer (media/sipscan.c) the same way: fuzz/fuzz_sipscan.py
   compares it with the Python reference on ``--sip-cases`` hostile messages
   (its invariants: equal results and errors, no HeaderField left alive, the
   name cache within bounds), judged as above; and the fast paths of the typed
   header values (media/sipvalues.c) with fuzz/fuzz_sipvalues.py (None or the
   Python parser's very result, no value object left alive); and the header
   checks after tokenizing (media/sipcheck.c) with fuzz/fuzz_sipcheck.py (the
   reference's typed values, errors and memo contents, no object left alive).
   ``--sip-cases 0`` skips the three; ``--datagrams 0`` skips the data plane's run.
   Each of the three runs twice: on the plain-Python core
   (``SIPEDGE_PURE_PYTHON_COMPILED=1``), where references to a type count its live
   instances, and on the compiled core, whose mypyc classes the C code builds through
   their constructors but whose instances do not give their type's reference back
   (so there the live-object count is reported as not checked).
5. First, three canaries prove the judge sees what it is for: a use-after-free
   (through the runtime's memset interceptor), a lost malloc() (LSan at exit) and a
   lost reference to an SRTP Context must each fail their run.  ``--no-canaries``
   skips them.

Exit status 0 only if the fuzz run is clean and both canaries were caught.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "asan"
SUPPRESSIONS = ROOT / "fuzz" / "lsan.supp"
SANITIZE = "-fsanitize=address,undefined -fno-omit-frame-pointer"
OURS = re.compile(r"_srtp\.cpython|media/\w+\.[ch]\b|\bin se_\w+|build/asan/")
LEAK = re.compile(r"^(Direct|Indirect) leak of (\d+) byte", re.M)


def build() -> Path:
    env = dict(os.environ, SIPEDGE_STRICT_BUILD="1", CFLAGS=f"{SANITIZE} -g -O1",
               LDFLAGS=SANITIZE)  # fmt: skip
    cmd = [sys.executable, "setup.py", "--quiet", "build_ext", "--force",
           f"--build-lib={BUILD / 'lib'}", f"--build-temp={BUILD / 'tmp'}"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    ext = BUILD / "lib" / "media" / f"_srtp{suffix}"
    nm = subprocess.run(["nm", "-D", str(ext)], capture_output=True, text=True, check=True)
    if "__asan_" not in nm.stdout or "__ubsan_" not in nm.stdout:
        raise SystemExit(f"{ext} is not instrumented")
    return ext


def runtime() -> str:
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit("gcc has no libasan.so (Debian: libasan8)")
    return path


def sanitized_env(libasan: str) -> dict[str, str]:
    return dict(
        os.environ,
        LD_PRELOAD=libasan,
        PYTHONMALLOC="malloc",
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0"
        ":allocator_may_return_null=1:verify_asan_link_order=0",
        LSAN_OPTIONS=f"suppressions={SUPPRESSIONS}:print_suppressions=0:max_leaks=200",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
    )


def leaks(stderr: str) -> tuple[list[str], list[str]]:
    """(ours, others): the leak reports, each block from its "... leak of" line."""
    ours: list[str] = []
    others: list[str] = []
    starts = [m.start() for m in LEAK.finditer(stderr)] + [len(stderr)]
    for a, b in itertools.pairwise(starts):
        block = stderr[a:b].split("\n\n")[0]
        (ours if OURS.search(block) else others).append(block)
    return ours, others


def first_frames(block: str) -> str:
    frames = [ln.strip() for ln in block.splitlines()[1:4] if ln.strip().startswith("#")]
    return " <- ".join(re.sub(r"^#\d+ 0x[0-9a-f]+ in ", "", f) for f in frames[1:3])


def judge(proc: subprocess.CompletedProcess[str]) -> tuple[bool, dict[str, object]]:
    err = proc.stderr
    asan = "ERROR: AddressSanitizer" in err
    ubsan = "runtime error:" in err
    ours, others = leaks(err)
    summary = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
    verdict: dict[str, object] = {
        "exit": proc.returncode,
        "asan_errors": asan,
        "ubsan_errors": ubsan,
        "leaks_in_extension": len(ours),
        "leaks_elsewhere": len(others),
        "harness": json.loads(summary) if summary else None,
    }
    clean = (
        proc.returncode == 0 and not asan and not ubsan and not ours and not others
        and summary is not None
    )  # fmt: skip
    if others:
        kinds: dict[str, int] = {}
        for block in others:
            key = first_frames(block)
            kinds[key] = kinds.get(key, 0) + 1
        verdict["elsewhere_by_frames"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])
    if not clean:
        report = err[err.find("=================") :] if asan else err[-6000:]
        verdict["report"] = ("\n\n".join(ours + others) if ours or others else report)[:8000]
    return clean, verdict


def run(
    ext: Path, env: dict[str, str], extra: list[str], timeout: float,
    harness: str = "fuzz_fastpath.py",
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = [sys.executable, str(ROOT / "fuzz" / harness), "--ext", str(ext), *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datagrams", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sip-cases", type=int, default=20_000)
    ap.add_argument("--no-canaries", action="store_true")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        raise SystemExit("needs gcc")
    ext = build()
    env = sanitized_env(runtime())
    print(f"fuzz-asan: {ext.relative_to(ROOT)}, LD_PRELOAD={env['LD_PRELOAD']}", flush=True)
    ok = True
    if not args.no_canaries:
        for canary in ("uaf", "leak", "refleak"):
            proc = run(ext, env, ["--canary", canary, "--datagrams", "200", "--seconds", "5"], 120)
            caught, verdict = judge(proc)
            caught = not caught
            left = (verdict["harness"] or {}).get("objects")  # type: ignore[attr-defined]
            print(f"canary {canary}: {'caught' if caught else 'NOT CAUGHT'} "
                  f"(exit {proc.returncode}, asan {verdict['asan_errors']}, "
                  f"leaks {verdict['leaks_in_extension']}+{verdict['leaks_elsewhere']}, "
                  f"objects left {left})", flush=True)  # fmt: skip
            ok &= caught
    runs = []
    if args.datagrams > 0:
        fuzz = ["--datagrams", str(args.datagrams), "--seconds", str(args.seconds),
                "--seed", str(args.seed)]  # fmt: skip
        runs.append(("fuzz", "fuzz_fastpath.py", fuzz, env))
    if args.sip_cases > 0:
        sip = ["--cases", str(args.sip_cases), "--seconds", str(args.seconds),
               "--seed", str(args.seed)]  # fmt: skip
        # Each twice: on the plain-Python core, where references to a type count its
        # live instances (the harnesses' check for a reference the C code lost), and
        # on the compiled one, whose mypyc objects the C code builds another way
        # (through their constructors) but whose types' references do not count them.
        for core, pure in (("plain core", "1"), ("compiled core", "0")):
            core_env = dict(env, SIPEDGE_PURE_PYTHON_COMPILED=pure)
            for name in ("sipscan", "sipvalues", "sipcheck"):
                runs.append((f"fuzz {name} ({core})", f"fuzz_{name}.py", sip, core_env))
    for label, harness, extra, run_env in runs:
        proc = run(ext, run_env, extra, args.seconds * 3 + 120, harness)
        clean, verdict = judge(proc)
        report = verdict.pop("report", None)
        print(f"{label}:", json.dumps(verdict, indent=1), flush=True)
        if report:
            print(report, file=sys.stderr)
        ok &= clean
    print(f"fuzz-asan: {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
