"""Sampling the host's clocks: wall time minus monotonic time, as narrowly as it can be read.

What the samples mean, and how replay converts with them, is ``eventlog.clock``.
"""

from __future__ import annotations

import os
import time

from eventlog.errors import UsageError
from eventlog.events import ClockSample

SAMPLE_ROUNDS = 25
# A test seam: this recorder reads its host's wall clock this many ns later (negative:
# earlier), as on a host whose clock is off. It shows that replay pairs the sockets of hosts
# whose clocks disagree within the skew tolerance, and not beyond it.
SKEW_ENV = "SCOPE_CLOCK_SKEW_NS"


def skew_ns() -> int:
    text = os.environ.get(SKEW_ENV, "0")
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"{SKEW_ENV} must be a whole number of nanoseconds, not {text!r}"
        ) from None


def sample_clock(rounds: int = SAMPLE_ROUNDS) -> ClockSample:
    """Measure wall - mono, keeping the narrowest REALTIME/MONOTONIC/REALTIME bracket."""
    skew = skew_ns()
    best: ClockSample | None = None
    for _ in range(max(1, rounds)):
        wall_before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        wall_after = time.clock_gettime_ns(time.CLOCK_REALTIME)
        width = wall_after - wall_before
        if width < 0:  # the wall clock stepped between the reads: try again
            continue
        midpoint = wall_before + width // 2
        sample = ClockSample(mono, midpoint - mono + skew, uncertainty_ns=width // 2)
        if best is None or sample.uncertainty_ns < best.uncertainty_ns:
            best = sample
    if best is None:  # pragma: no cover - needs a wall clock stepping backwards every round
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        best = ClockSample(mono, time.time_ns() - mono + skew, 0)
    return best
