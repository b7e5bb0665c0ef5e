"""How the capture programs are specialised: wake-ups of the consumer per ring buffer size."""

from __future__ import annotations

import os

from recorder.capture import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_WAKEUP,
    CaptureOptions,
    program_cflags,
    records_per_wakeup,
    ringbuf_pages,
)


def test_a_large_ring_buffer_wakes_the_consumer_every_few_records() -> None:
    assert records_per_wakeup(32 << 20) == MAX_RECORDS_PER_WAKEUP


def test_records_pending_between_wake_ups_fit_in_an_eighth_of_the_ring_buffer() -> None:
    cpus = len(os.sched_getaffinity(0))
    for size in (32 << 10, 256 << 10, 1 << 20, 4 << 20, 32 << 20):
        every = records_per_wakeup(size)
        ring_bytes = ringbuf_pages(size) * os.sysconf("SC_PAGE_SIZE")
        assert every == 1 or every * cpus * MAX_RECORD_BYTES <= ring_bytes // 8


def test_a_tiny_ring_buffer_wakes_the_consumer_for_every_record() -> None:
    assert records_per_wakeup(32 << 10) == 1


def test_the_wake_up_interval_is_passed_to_the_programs() -> None:
    flags = program_cflags({}, CaptureOptions(ringbuf_bytes=32 << 10))
    assert "-DWAKEUP_EVERY_RECORDS=1" in flags
