"""SRTP and SRTCP (RFC 3711) for the media plane: one API, two backends.

    from media.srtp import Context, SrtpError

    tx = Context(key, salt, "AES_CM_128_HMAC_SHA1_80", direction="outbound")
    rx = Context(key, salt, "AES_CM_128_HMAC_SHA1_80", direction="inbound")
    assert rx.unprotect_rtp(tx.protect_rtp(rtp)) == rtp

A :class:`Context` is one direction of one master key (SDES gives one key per
sender; DTLS-SRTP one per side): ``"outbound"`` contexts protect, ``"inbound"``
ones unprotect, each tracking the roll-over counter and replay windows of up to
``max_ssrcs`` SSRCs.  ``protect_rtp`` / ``unprotect_rtp`` / ``protect_rtcp`` /
``unprotect_rtcp`` take any bytes-like packet and return new bytes; the
``*_into(buffer, length)`` variants transform a writable buffer in place and
return the new length.  A refused packet raises :class:`SrtpError` whose
``reason`` is ``"short"``, ``"format"``, ``"auth"``, ``"replay"`` or
``"ssrc_limit"``; ``counters()`` counts transformed and refused packets.

The backend is the C core ``media._srtp`` unless ``SIPEDGE_SRTP_BACKEND`` says
otherwise: ``python`` selects the pure-Python twin ``media._srtp_py`` (same
verdicts, same bytes, about 13x the CPU per packet), ``c`` insists on the C core (an import
error if it is missing), empty or ``auto`` takes the C core when it imports and
otherwise falls back to Python with one warning, which :data:`FALLBACK_WARNING`
keeps for the application's own log.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING, Final

from media.suites import REASONS, SUITES, SrtpError, SrtpSuite, get_suite

__all__ = [
    "ENV_VAR",
    "FALLBACK_WARNING",
    "REASONS",
    "SUITES",
    "Context",
    "SrtpError",
    "SrtpSuite",
    "backend",
    "get_suite",
]

ENV_VAR: Final = "SIPEDGE_SRTP_BACKEND"

_log = logging.getLogger("sipedge.media.srtp")


def _load() -> tuple[ModuleType, str | None]:
    choice = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if choice not in ("auto", "c", "python"):
        raise ValueError(f"{ENV_VAR} must be 'c', 'python' or 'auto', not {choice!r}")
    if choice == "python":
        from media import _srtp_py

        return _srtp_py, None
    try:
        from media import _srtp
    except ImportError as exc:
        if choice == "c":
            raise
        from media import _srtp_py

        warning = (
            f"the C SRTP core media._srtp cannot be imported ({exc}); falling back to the "
            "pure-Python SRTP, which costs about 13x more CPU per packet: rebuild the "
            "extension (make install) before carrying real media"
        )
        _log.warning(warning)
        return _srtp_py, warning
    return _srtp, None


_impl, FALLBACK_WARNING = _load()

if TYPE_CHECKING:
    from media._srtp import Context
else:
    Context = _impl.Context


def backend() -> str:
    """The active backend: ``"c"`` or ``"python"``."""
    name: str = _impl.backend()
    return name
