"""Sampling the host's clocks: wall time minus monotonic time, as narrowly as it can be read.

What the samples mean, and how replay converts with them, is ``eventlog.clock``.
"""

from __future__ import annotations

import time

from eventlog.events import ClockSample

SAMPLE_ROUNDS = 25


def sample_clock(rounds: int = SAMPLE_ROUNDS) -> ClockSample:
    """Measure wall - mono, keeping the narrowest REALTIME/MONOTONIC/REALTIME bracket."""
    best: ClockSample | None = None
    for _ in range(max(1, rounds)):
        wall_before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        wall_after = time.clock_gettime_ns(time.CLOCK_REALTIME)
        width = wall_after - wall_before
        if width < 0:  # the wall clock stepped between the reads: try again
            continue
        midpoint = wall_before + width // 2
        sample = ClockSample(mono_ns=mono, offset_ns=midpoint - mono, uncertainty_ns=width // 2)
        if best is None or sample.uncertainty_ns < best.uncertainty_ns:
            best = sample
    if best is None:  # pragma: no cover - needs a wall clock stepping backwards every round
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        best = ClockSample(mono, time.time_ns() - mono, 0)
    return best
