"""Monotonic-to-wall clock conversion, from the clock samples a recording stores.

Kernel timestamps (``bpf_ktime_get_ns``) are CLOCK_MONOTONIC. The recorder samples
``wall - mono`` at start and periodically (``recorder.clock``), keeps each sample with its
uncertainty, and stores all of them in the log. Replay converts with ``ClockModel`` from those
stored samples and never reads a clock itself.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from eventlog.events import ClockSample

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class ClockModel:
    """Wall time of monotonic timestamps, from one recording's samples.

    A sample taken at monotonic time ``m`` applies from ``m`` until the next sample; times
    before the first sample use the first sample. Samples are stored with the batch that is
    open when they are taken, so every event already in the log keeps the wall time it had.
    """

    __slots__ = ("_monos", "_offsets")

    def __init__(self, samples: Iterable[ClockSample] = ()) -> None:
        self._monos: list[int] = []
        self._offsets: list[int] = []
        for sample in sorted(samples):
            self.add(sample)

    def add(self, sample: ClockSample) -> None:
        if self._monos and sample.mono_ns <= self._monos[-1]:
            index = bisect.bisect_left(self._monos, sample.mono_ns)
            if index < len(self._monos) and self._monos[index] == sample.mono_ns:
                return
            self._monos.insert(index, sample.mono_ns)
            self._offsets.insert(index, sample.offset_ns)
            return
        self._monos.append(sample.mono_ns)
        self._offsets.append(sample.offset_ns)

    def __len__(self) -> int:
        return len(self._monos)

    def offset_at(self, mono_ns: int) -> int:
        if not self._monos:
            raise ValueError("no clock samples")
        index = bisect.bisect_right(self._monos, mono_ns) - 1
        return self._offsets[max(index, 0)]

    def wall_ns(self, mono_ns: int) -> int:
        return mono_ns + self.offset_at(mono_ns)

    def wall_ns_array(self, monos: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """``wall_ns`` of every element of ``monos``, at once (the same rule as
        ``offset_at``: the last sample at or before each time, else the first)."""
        import numpy as np  # noqa: PLC0415 (the reading side's; a recorder spares ~15 MB)

        if not self._monos:
            raise ValueError("no clock samples")
        index = np.searchsorted(np.asarray(self._monos, dtype=np.int64), monos, side="right") - 1
        offsets = np.asarray(self._offsets, dtype=np.int64)
        walls: npt.NDArray[np.int64] = monos + offsets[np.maximum(index, 0)]
        return walls

    def mono_ns(self, wall_ns: int) -> int:
        """The monotonic time that converts to ``wall_ns`` (the earliest, if offsets jump)."""
        if not self._monos:
            raise ValueError("no clock samples")
        for index, start in enumerate(self._monos):
            end = self._monos[index + 1] if index + 1 < len(self._monos) else None
            candidate = wall_ns - self._offsets[index]
            if (index == 0 or candidate >= start) and (end is None or candidate < end):
                return candidate
        return wall_ns - self._offsets[-1]

    def segments(self) -> list[tuple[int, int]]:
        """(first mono_ns, offset_ns) of every stretch with one offset, in order."""
        return list(zip(self._monos, self._offsets, strict=True))


def wall_bounds(clock: ClockModel, first_mono_ns: int, last_mono_ns: int) -> tuple[int, int]:
    """Bounds on the wall time of any event between two monotonic times (inclusive)."""
    offsets = [clock.offset_at(first_mono_ns)]
    offsets.extend(
        offset for start, offset in clock.segments() if first_mono_ns < start <= last_mono_ns
    )
    return first_mono_ns + min(offsets), last_mono_ns + max(offsets)
