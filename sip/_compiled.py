"""The compiled build of the signalling hot path: mypyc output, used only while fresh.

The protocol core and the proxy spend their time in the interpreter: calls,
attribute lookups and small objects, about a thousand Python calls per proxied
call (issue 3).  mypyc compiles these modules, from the same typed source, into
C extensions whose calls and attribute accesses skip the interpreter.  The
source stays the one implementation and the reference: every module works
uncompiled, and the test suite runs a set of tests against both builds.

``scripts/build_compiled.py`` (run by ``make install``) writes the extensions
into ``build/compiled/`` with a manifest of the source digests they were built
from.  ``sip`` and ``edge`` put that directory at the front of their package
path only when every listed module's source still matches the manifest: a
compiled module calls the others natively, so it is all the listed modules or
none, and a stale build must never shadow an edited source.  Otherwise, or with
``SIPEDGE_PURE_PYTHON=1`` (all of sipedge's C paths off) or
``SIPEDGE_PURE_PYTHON_COMPILED=1`` (just this one), these modules run as plain Python.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Compiled together (one mypyc group): the modules a proxied call runs through.
MODULES = (
    "sip.errors",
    "sip._abnf",
    "sip.uri",
    "sip.headers",
    "sip.message",
    "sip.transaction",
    "sip.framing",
    "sip.validate",
    "sip.random_tokens",
    "edge.timestamps",
    "edge.timer_wheel",
    "edge.audit",
    "edge.dialogs",
    "edge.routing",
    "edge.admission",
    "edge.proxy_state",
    "edge.proxy_media",
    "edge.proxy",
    "edge.flows",
    "edge.transport",
    "edge.metrics",
)

#: The mypyc group: its shared library is the top-level module ``sipedge_core__mypyc``.
GROUP = "sipedge_core"

MANIFEST = "manifest.json"

_ROOT = Path(__file__).resolve().parent.parent


def directory() -> Path:
    """Where the compiled modules live (``SIPEDGE_COMPILED_DIR`` overrides)."""
    configured = os.environ.get("SIPEDGE_COMPILED_DIR")
    return Path(configured) if configured else _ROOT / "build" / "compiled"


def source_path(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_digests() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in MODULES}


def build_tag() -> str:
    """What an extension must have been built for: this interpreter's ABI."""
    return f"{sys.implementation.cache_tag}-{sys.platform}"


@functools.cache
def _manifest() -> Any:
    """The build's manifest as parsed, read once per process; None when unreadable."""
    try:
        return json.loads((directory() / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@functools.cache
def status() -> tuple[bool, str]:
    """(in use, why): decided once per process, for all compiled modules at once."""
    for switch in ("SIPEDGE_PURE_PYTHON", "SIPEDGE_PURE_PYTHON_COMPILED"):
        if os.environ.get(switch) == "1":
            return False, f"{switch}=1"
    manifest = directory() / MANIFEST
    built = _manifest()
    try:
        digests = source_digests()
    except OSError:
        digests = None
    if built is None or digests is None:
        return False, f"not built ({manifest} missing; make install builds it)"
    if not isinstance(built, dict) or built.get("build") != build_tag():
        return False, f"built for another Python ({manifest})"
    stale = [m for m in MODULES if built.get("sources", {}).get(m) != digests[m]]
    if stale:
        return False, f"stale: {', '.join(stale)} changed since the build (make install rebuilds)"
    return True, str(directory())


def profile() -> str | None:
    """How the build in use was profile-guided (its manifest's ``pgo``), or None."""
    if not status()[0]:
        return None
    pgo = _manifest().get("pgo")  # in use: the manifest is a dict
    return pgo if isinstance(pgo, str) else None


def activate(package: str, path: list[str]) -> None:
    """Put the compiled modules of ``package`` first on its ``__path__`` if fresh."""
    in_use, _ = status()
    if not in_use:
        return
    top = str(directory())
    if top not in sys.path:
        sys.path.append(top)  # the group's shared library, a top-level module
    path.insert(0, os.path.join(top, package))


def in_use(module: str) -> bool:
    """Whether ``module`` was imported from the compiled build (tests ask)."""
    loaded = sys.modules.get(module)
    origin = getattr(getattr(loaded, "__spec__", None), "origin", None) or ""
    return origin.startswith(str(directory())) and not origin.endswith(".py")
