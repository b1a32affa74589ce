"""The timestamps of log and audit lines: ISO 8601 in UTC with milliseconds.

A module of its own so that it is compiled (sip/_compiled.py) while edge/log.py
is not: every audit line and every log line writes one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final


class _Second:
    """The date and time of the last second asked for: datetime is the slow part,
    and they change once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""


_LAST: Final = _Second()


def iso_millis(now: float) -> str:
    """``now`` (seconds since the epoch) as ``2024-05-01T12:00:00.123Z``."""
    second = math.floor(now)
    # Rounded to the microsecond first, as datetime.fromtimestamp does.  Half up
    # rather than its half-even: a tie needs a fraction of the form n/2e6 that a
    # binary float holds exactly, and none of those sits at a millisecond or second
    # boundary, so the milliseconds written are the same.
    micros = int((now - second) * 1e6 + 0.5)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    last = _LAST
    if second != last.second:
        last.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        last.second = second
    # str(1000 + n)[1:] is n on three digits, without a format-spec call.
    return f"{last.text}.{str(1000 + micros // 1000)[1:]}Z"
