"""Compile the signalling hot path (sip._compiled.MODULES) with mypyc.

    python scripts/build_compiled.py [--out DIR] [--jobs N] [--no-pgo] [--train-python PY]

Writes the extensions into DIR (default: build/compiled, or SIPEDGE_COMPILED_DIR)
with a manifest of the source digests they were built from; sip/_compiled.py
uses them only while every source still matches.  The build goes to a fresh
directory and replaces DIR only when complete, so a failed or interrupted build
leaves the previous one (or none) and never a half-written one.  `make install`
runs it; needs mypy (the test extra) and a C compiler.

With GCC the build is profile-guided, as CPython's own: the C is compiled once
instrumented, scripts/pgo_train.py proxies a few thousand calls through it (run by
PY, default this interpreter: it needs sipedge's dependencies), and the C is
compiled again laid out by those counts: the hot paths straight, the error
branches mypyc puts after every call out of the way.  On this code that is about
5% less user CPU per proxied call live (bench/README.md).  `--no-pgo` (or
SIPEDGE_PGO=0) builds once, without a profile, in half the time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ["SIPEDGE_PURE_PYTHON"] = "1"  # the build must not import what it replaces
from sip import _compiled  # noqa: E402

# -fprofile-update=single: the process is single-threaded, and atomic counters cost.
PGO_GENERATE = ["-fprofile-generate", "-fprofile-update=single"]
# Functions the training run never reached are optimised as without a profile,
# not for size as GCC otherwise treats code it saw run zero times.
PGO_USE = ["-fprofile-use", "-fprofile-partial-training", "-Wno-missing-profile"]


def compiler_is_gcc() -> bool:
    """Whether the compiler setuptools will use is GCC (the PGO flags are GCC's)."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    try:
        version = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in version and "clang" not in version


def compile_group(
    extensions: list[Any],
    base: list[tuple[list[str], list[str]]],
    flags: list[str],
    lib: Path,
    tmp: Path,
    jobs: int,
) -> None:
    """setuptools build_ext of the mypyc group, ``flags`` added to each extension's
    own (``base``: its compile and link arguments as mypyc made them)."""
    from setuptools import setup

    for ext, (compile_args, link_args) in zip(extensions, base, strict=True):
        ext.extra_compile_args = [*compile_args, *flags]
        ext.extra_link_args = [*link_args, *flags]
    setup(
        name="sipedge-compiled",
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(tmp),
            "--parallel",
            str(max(1, jobs)),
            "--force",  # the second (profiled) pass must recompile every file
        ],
    )


def write_manifest(lib: Path, digests: dict[str, str], pgo: str | None) -> None:
    manifest = {"build": _compiled.build_tag(), "sources": digests, "pgo": pgo}
    (lib / _compiled.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def train(python: str, lib: Path) -> tuple[bool, str]:
    """Run scripts/pgo_train.py against the instrumented build in ``lib``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPEDGE_PURE_PYTHON")}
    env["SIPEDGE_COMPILED_DIR"] = str(lib)
    try:
        done = subprocess.run(
            [python, str(ROOT / "scripts" / "pgo_train.py")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    output = (done.stdout + done.stderr).strip()
    return done.returncode == 0, output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=_compiled.directory())
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--no-pgo",
        action="store_true",
        default=os.environ.get("SIPEDGE_PGO") == "0",
        help="one pass without a profile (also SIPEDGE_PGO=0)",
    )
    ap.add_argument(
        "--train-python",
        default=sys.executable,
        help="interpreter for the training run (default: this one)",
    )
    args = ap.parse_args()
    out: Path = args.out.resolve()
    try:
        import setuptools  # noqa: F401
        from mypyc.build import mypycify
    except ImportError as e:
        print(f"build_compiled: {e}; install mypy and setuptools (make install)", file=sys.stderr)
        return 2

    digests = _compiled.source_digests()  # before the build: an edit during it reads stale
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compiled-", dir=out.parent))
    started = time.monotonic()
    try:
        # Its own mypy settings: the project's config warns about sections that
        # do not apply to these files, which mypyc takes as an error.
        config = work / "mypy.ini"
        config.write_text("[mypy]\nignore_missing_imports = True\n")
        sources = [str(_compiled.source_path(m).relative_to(ROOT)) for m in _compiled.MODULES]
        cwd = os.getcwd()
        # setuptools reads pyproject.toml here and warns that its table is beta.
        warnings.filterwarnings("ignore", message=".*is still \\*beta\\*")
        os.chdir(ROOT)  # mypyc names modules by their path relative to here
        try:
            extensions = mypycify(
                ["--config-file", str(config), *sources],
                opt_level="3",
                multi_file=True,  # several C files, compiled in parallel
                group_name=_compiled.GROUP,
                target_dir=str(work / "c"),
            )
            base = [(list(e.extra_compile_args), list(e.extra_link_args)) for e in extensions]
            pgo = not args.no_pgo and compiler_is_gcc()
            if not args.no_pgo and not pgo:
                print("build_compiled: the compiler is not GCC: building without a profile")
            trained: str | None = None
            if pgo:
                instrumented = work / "instrumented"
                compile_group(extensions, base, PGO_GENERATE, instrumented, work / "tmp", args.jobs)
                write_manifest(instrumented, digests, None)
                ok, output = train(args.train_python, instrumented)
                if not ok:
                    print(f"build_compiled: the training run failed:\n{output}", file=sys.stderr)
                    return 1
                # Counts must exist, or -Wno-missing-profile would let a build that
                # never saw them call itself profile-guided.
                if not any((work / "tmp").rglob("*.gcda")):
                    print(
                        "build_compiled: the training run left no profile (.gcda)", file=sys.stderr
                    )
                    return 1
                trained = f"gcc, {output.splitlines()[-1].removeprefix('pgo_train: ')}"
                # The counts (.gcda) sit beside the objects in work/tmp, where the
                # second pass, compiling the same files to the same objects, reads them.
                compile_group(extensions, base, PGO_USE, work / "lib", work / "tmp", args.jobs)
            else:
                compile_group(extensions, base, [], work / "lib", work / "tmp", args.jobs)
        finally:
            os.chdir(cwd)
        lib = work / "lib"
        changed = [m for m, d in _compiled.source_digests().items() if digests.get(m) != d]
        if changed:
            # Installed, this build would never be used (its manifest names the old
            # sources) and make, seeing it newer than the sources, would not redo it.
            print(
                f"build_compiled: {', '.join(changed)} changed during the build; "
                "run it (make) again",
                file=sys.stderr,
            )
            return 1
        write_manifest(lib, digests, trained)
        if out.exists():
            shutil.rmtree(out)
        lib.rename(out)
    except SystemExit as e:  # mypyc and setuptools report failures this way
        print(f"build_compiled: failed ({e.code})", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    how = f"profile-guided ({trained})" if trained else "no profile"
    print(f"build_compiled: {len(_compiled.MODULES)} modules in {out}, {how} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
