"""sipedge's application layer: configuration, listeners, guard, proxy, CLI.

It composes the sans-I/O protocol core (``sip``) and the media plane (``media``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sip._compiled import activate

activate(__name__, __path__)  # the compiled proxy hot path, if built and fresh

try:
    __version__ = version("sipedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
