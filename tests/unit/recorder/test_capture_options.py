"""How the capture programs are specialised: wake-ups of the consumer per ring buffer size,
and the spans of kernel structs read in one go."""

from __future__ import annotations

import ctypes
import os

import pytest

from recorder.bpfsys import _TestRunAttr
from recorder.btf import BtfError
from recorder.capture import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_WAKEUP,
    MAX_SPAN_BYTES,
    READ_SPANS,
    SEPARABLE_SPANS,
    CaptureOptions,
    program_cflags,
    read_spans,
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


def _members(layout: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Every member READ_SPANS names, at (offset, size) from ``layout`` or packed at 0."""
    return {macro: layout.get(macro, (0, 2)) for macros in READ_SPANS.values() for macro in macros}


def test_a_span_starts_8_byte_aligned_and_covers_every_member_of_its_group() -> None:
    layout = {
        "OFF_TCP_BYTES_RECEIVED": (1752, 8),
        "OFF_TCP_BYTES_ACKED": (1824, 8),
        "OFF_FDTABLE_MAX_FDS": (4, 4),
        "OFF_FDTABLE_FD": (16, 8),
    }
    spans = read_spans(_members(layout))
    assert (spans["TCP_BYTES_SPAN_START"], spans["TCP_BYTES_SPAN_BYTES"]) == (1752, 80)
    assert (spans["FDT_SPAN_START"], spans["FDT_SPAN_BYTES"]) == (0, 24)
    for group, macros in READ_SPANS.items():
        start, length = spans[f"{group}_SPAN_START"], spans[f"{group}_SPAN_BYTES"]
        assert start % 8 == 0
        for offset, size in (_members(layout)[macro] for macro in macros):
            assert start <= offset and offset + size <= start + length


def test_members_too_far_apart_are_read_one_by_one_where_the_programs_can() -> None:
    layout = {
        "OFF_TCP_BYTES_RECEIVED": (1000, 8),
        "OFF_TCP_BYTES_ACKED": (1000 + MAX_SPAN_BYTES, 8),
    }
    assert "TCP_BYTES" in SEPARABLE_SPANS
    assert read_spans(_members(layout))["TCP_BYTES_SPAN_BYTES"] == 0
    too_far = {"OFF_FDTABLE_MAX_FDS": (0, 4), "OFF_FDTABLE_FD": (MAX_SPAN_BYTES, 8)}
    with pytest.raises(BtfError, match="FDT span 136 bytes"):
        read_spans(_members(too_far))


def test_a_member_not_aligned_to_its_size_cannot_be_read_from_a_span() -> None:
    # The verifier refuses a stack read not aligned to its size: say so before loading.
    misaligned = {"OFF_FDTABLE_MAX_FDS": (0, 4), "OFF_FDTABLE_FD": (12, 8)}
    with pytest.raises(BtfError, match="FDT is not aligned"):
        read_spans(_members(misaligned))
    assert read_spans(_members({"OFF_TCP_BYTES_ACKED": (4, 8)}))["TCP_BYTES_SPAN_BYTES"] == 0


def test_the_test_run_attributes_are_laid_out_as_the_kernel_reads_them() -> None:
    # union bpf_attr's `test` member (include/uapi/linux/bpf.h), 8-byte aligned
    assert (_TestRunAttr.prog_fd.offset, _TestRunAttr.retval.offset) == (0, 4)
    assert (_TestRunAttr.ctx_in.offset, _TestRunAttr.flags.offset) == (48, 64)
    assert (_TestRunAttr.cpu.offset, _TestRunAttr.batch_size.offset) == (68, 72)
    assert ctypes.sizeof(_TestRunAttr) == 80
