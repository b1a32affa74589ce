"""The training run of the compiled core's profile-guided build (scripts/build_compiled.py).

    python scripts/pgo_train.py [--calls N]

Run by the build against the instrumented extensions (``SIPEDGE_COMPILED_DIR``
points at them): it proxies N calls in-process, the sipp call of the load-test
harness (INVITE with SDP / 100 / 180 / 200 with SDP / ACK / BYE / 200, through
bench/bench_proxy_core.py's Run, audit log on), so that the branch and call
counts GCC lays the code out by are those of a proxied call.  Code the run does
not reach is compiled as without a profile (-fprofile-partial-training).

Exits non-zero when the calls went wrong or the compiled modules were not the
ones loaded: a profile of the wrong run is worse than none.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()

    import bench_proxy_core

    from sip import _compiled

    if not _compiled.in_use("edge.proxy"):
        why = _compiled.status()[1]
        print(f"pgo_train: the compiled modules are not loaded: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sipedge-pgo-") as tmp:
        # Only the C parsing path: the Python fallbacks are the cold paths live.
        asyncio.run(bench_proxy_core.measure(args.calls, 1, Path(tmp), paths=("c",)))
    print(f"pgo_train: {args.calls} calls proxied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
