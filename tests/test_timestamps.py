"""edge/timestamps.py: what datetime would write, at a fraction of its cost."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from edge.timestamps import iso_millis


def reference(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_matches_datetime_across_seconds_and_rounding() -> None:
    rng = random.Random(7)
    cases = [0.0, 1.0, 1700000000.25, 1700000000.9999996, 1700000000.9995, 1767225599.999]
    cases += [rng.uniform(0, 4e9) for _ in range(2000)]
    # Back and forth across second boundaries: the cached date must follow.
    cases += [1767225599.5, 1767225600.0005, 1767225599.9, 1767225600.1]
    for now in cases:
        assert iso_millis(now) == reference(now), now


def test_shape() -> None:
    assert iso_millis(1767225600.25) == "2026-01-01T00:00:00.250Z"
