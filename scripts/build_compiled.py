"""Compile the signalling hot path (sip._compiled.MODULES) with mypyc.

    python scripts/build_compiled.py [--out DIR] [--jobs N]

Writes the extensions into DIR (default: build/compiled, or SIPEDGE_COMPILED_DIR)
with a manifest of the source digests they were built from; sip/_compiled.py
uses them only while every source still matches.  The build goes to a fresh
directory and replaces DIR only when complete, so a failed or interrupted build
leaves the previous one (or none) and never a half-written one.  `make install`
runs it; needs mypy (the test extra) and a C compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ["SIPEDGE_PURE_PYTHON"] = "1"  # the build must not import what it replaces
from sip import _compiled  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=_compiled.directory())
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    out: Path = args.out.resolve()
    try:
        from mypyc.build import mypycify
        from setuptools import setup
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
            setup(
                name="sipedge-compiled",
                ext_modules=extensions,
                script_args=[
                    "--quiet",
                    "build_ext",
                    "--build-lib",
                    str(work / "lib"),
                    "--build-temp",
                    str(work / "tmp"),
                    "--parallel",
                    str(max(1, args.jobs)),
                ],
            )
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
        manifest = {"build": _compiled.build_tag(), "sources": digests}
        (lib / _compiled.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        lib.rename(out)
    except SystemExit as e:  # mypyc and setuptools report failures this way
        print(f"build_compiled: failed ({e.code})", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    print(f"build_compiled: {len(_compiled.MODULES)} modules in {out} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
