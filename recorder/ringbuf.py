"""The consumer side of a BPF ring buffer, read through its memory mapping.

The kernel's layout (include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c): the map's first page
holds the consumer's position, which only user space writes; the next page the producer's
position; then the data area. Each record starts with an 8-byte header, a u32 length whose
top bits say the producer is still writing it (BUSY) or dropped it (DISCARD), and is padded
to 8 bytes. Positions only grow; a position's place in the area is position modulo its size.

The data area is not mapped whole: the kernel maps every page of a mapping at once, so a
32 MiB ring mapped whole (twice, as readers that want wrapped records contiguous do) counts
64 MiB in the recorder's resident memory. A window of WINDOW_BYTES follows the consumer
instead; a record that wraps is copied in two parts.
"""

from __future__ import annotations

import mmap
import os
import select
import struct

from recorder.bpfsys import map_max_entries

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
WINDOW_BYTES = 1 << 20  # moved about 20 times a second at 20 MB/s of events: cheap


class RingReader:
    """Records from a ring buffer map fd: ``wait`` for data, ``read`` what is there."""

    def __init__(self, map_fd: int) -> None:
        self._fd = map_fd
        self.size = map_max_entries(map_fd)
        self._mask = self.size - 1
        self._consumer = mmap.mmap(
            map_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._producer = mmap.mmap(
            map_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE
        )
        self._window: mmap.mmap | None = None
        self._window_start = 0
        self._window_end = 0
        self._poll = select.epoll()
        self._poll.register(map_fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Until the programs wake the consumer or ``timeout_ms`` passes."""
        if not self._pending():
            self._poll.poll(timeout_ms / 1000)

    def _pending(self) -> bool:
        producer: int = _U64.unpack_from(self._producer, 0)[0]
        consumer: int = _U64.unpack_from(self._consumer, 0)[0]
        return producer != consumer

    def read(self) -> list[bytes]:
        """Every committed record, in the order they were reserved; stops at one the producer
        is still writing."""
        records: list[bytes] = []
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        while consumer < producer:
            at = consumer & self._mask
            length = _U32.unpack_from(self._bytes(at, _HEADER))[0]
            if length & _BUSY:
                break
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                records.append(self._record(at + _HEADER, size))
            consumer += (_HEADER + size + 7) & ~7
        _U64.pack_into(self._consumer, 0, consumer)
        return records

    def _record(self, at: int, size: int) -> bytes:
        at &= self._mask
        if at + size <= self.size:
            return self._bytes(at, size)
        first = self.size - at
        return self._bytes(at, first) + self._bytes(0, size - first)

    def _bytes(self, at: int, size: int) -> bytes:
        """``size`` bytes of the data area from ``at`` (not wrapping), through the window."""
        if not (self._window_start <= at and at + size <= self._window_end):
            self._move_window(at, size)
        assert self._window is not None
        start = at - self._window_start
        return self._window[start : start + size]

    def _move_window(self, at: int, size: int) -> None:
        if self._window is not None:
            self._window.close()
        start = at - at % PAGE_SIZE
        end = min(self.size, max(start + WINDOW_BYTES, -(-(at + size) // PAGE_SIZE) * PAGE_SIZE))
        self._window = mmap.mmap(
            self._fd, end - start, mmap.MAP_SHARED, mmap.PROT_READ, offset=2 * PAGE_SIZE + start
        )
        self._window_start, self._window_end = start, end

    def close(self) -> None:
        self._poll.close()
        if self._window is not None:
            self._window.close()
        self._producer.close()
        self._consumer.close()
