"""The timestamps of log and audit lines: ISO 8601 in UTC with milliseconds.

A module of its own so that it is compiled (sip/_compiled.py) while edge/log.py
is not: every audit line and every log line writes one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

# The date and time of the last second asked for: datetime is the slow part, and
# they change once a second.
_last_second = -1
_last_text = ""


def iso_millis(now: float) -> str:
    """``now`` (seconds since the epoch) as ``2024-05-01T12:00:00.123Z``."""
    global _last_second, _last_text
    second = math.floor(now)
    # Rounded to the microsecond first, as datetime.fromtimestamp does.
    micros = round((now - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if second != _last_second:
        _last_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = second
    millis = micros // 1000
    return f"{_last_text}.{millis:03d}Z"
