"""Replay state: what is open at a moment, held as references into the log.

The state never copies event contents; it holds log positions (the open event of a socket,
the snapshot that showed a connection, the exec that started a process). That keeps the fold
fast and the checkpoints small, and every row replay prints can say which positions made it.
Rows are read back by position when a table or topology is rendered.

Sockets are keyed per recording by their socket id (ids are unique within a recording; an
open without an id is keyed by minus its position).
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FORMAT = 3  # bump when the meaning or encoding of the state changes: old checkpoints are ignored

# (recording_id, netns, laddr, lport, raddr, rport): a socket as /proc shows it
TupleKey = tuple[int, int, bytes, int, bytes, int]
ProcessKey = tuple[int, int]  # (recording_id, pid)


@dataclass
class ReplayState:
    """Everything open after folding a prefix of the log (see ``replay.fold``)."""

    position: int = 0  # the last position folded
    max_wall_ns: int = 0  # the newest wall time among the events folded
    # recording -> socket key -> position of the socket's open event
    open_sockets: dict[int, dict[int, int]] = field(default_factory=dict)
    snapshot_sockets: dict[TupleKey, int] = field(default_factory=dict)  # -> snapshot position
    # Sockets open by their events but absent from a later snapshot: (open pos, snapshot pos).
    # They are closed as of that snapshot unless their own close event still comes.
    missing: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    processes: dict[ProcessKey, int] = field(default_factory=dict)  # -> exec or snapshot position
    conntrack: dict[tuple[int, int, int], int] = field(default_factory=dict)  # see replay.nat

    def sockets_of(self, recording: int) -> dict[int, int]:
        return self.open_sockets.setdefault(recording, {})

    def missing_of(self, recording: int) -> dict[int, tuple[int, int]]:
        return self.missing.setdefault(recording, {})

    def open_positions(self) -> Iterator[int]:
        for sockets in self.open_sockets.values():
            yield from sockets.values()

    def missing_entries(self) -> Iterator[tuple[int, int]]:
        for entries in self.missing.values():
            yield from entries.values()

    def open_count(self) -> int:
        return sum(len(sockets) for sockets in self.open_sockets.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplayState) and self._document() == other._document()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def copy(self) -> ReplayState:
        return ReplayState.from_bytes(self.to_bytes())

    # -- checkpoints -----------------------------------------------------------------------
    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "position": self.position,
            "max_wall_ns": self.max_wall_ns,
            "open_sockets": sorted(
                [recording, key, position]
                for recording, sockets in self.open_sockets.items()
                for key, position in sockets.items()
            ),
            "snapshot_sockets": sorted(
                [key[0], key[1], key[2].hex(), key[3], key[4].hex(), key[5], value]
                for key, value in self.snapshot_sockets.items()
            ),
            "missing": sorted(
                [recording, key, *value]
                for recording, entries in self.missing.items()
                for key, value in entries.items()
            ),
            "processes": sorted([*key, value] for key, value in self.processes.items()),
            "conntrack": sorted([*key, value] for key, value in self.conntrack.items()),
        }

    def to_bytes(self) -> bytes:
        """A deterministic encoding: equal states give equal bytes.

        Every table is its sorted rows as columns of 64-bit integers (addresses apart), so
        that a checkpoint loads with array copies instead of a parse per value: a busy host's
        state (tens of thousands of sockets and processes) loads in a few milliseconds.
        ValueError if a value is not a 64-bit integer (a foreign writer's log can hold a
        socket id that is a float): such a state is not saved, only folded again.
        """
        try:
            return self._encode()
        except (OverflowError, TypeError, struct.error) as error:
            raise ValueError(f"the state cannot be encoded: {error}") from None

    def _encode(self) -> bytes:
        document = self._document()
        snapshot = sorted(self.snapshot_sockets.items())
        parts = [
            _HEADER.pack(FORMAT, self.position, self.max_wall_ns),
            _columns(document["open_sockets"], 3),
            _columns(document["missing"], 4),
            _columns(document["processes"], 3),
            _columns(document["conntrack"], 4),
            _columns([[r, ns, lp, rp, p] for (r, ns, _, lp, _, rp), p in snapshot], 5),
            b"".join(_address(key[2]) + _address(key[4]) for key, _ in snapshot),
        ]
        return zlib.compress(b"".join(parts), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayState:
        """The state ``to_bytes`` encoded; ValueError if ``data`` is not such an encoding."""
        try:
            return _decode(memoryview(inflate(data, MAX_STATE_BYTES)))
        except (zlib.error, struct.error, IndexError) as error:
            raise ValueError(f"not a replay state: {error}") from None


# Far more than a host's state (a million sockets and processes take ~60 MB): a checkpoint
# row that inflates past it is not one this code wrote.
MAX_STATE_BYTES = 1 << 30


def inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompressed ``data``; ValueError (not an exhausted memory) past ``limit`` bytes."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit)
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise ValueError("compressed data too large, or truncated")
    return out


_HEADER = struct.Struct("<iqq")  # format, position, max_wall_ns
_COUNT = struct.Struct("<i")


def _columns(rows: list[list[int]], width: int) -> bytes:
    """``rows`` (sorted, each ``width`` integers) as a row count and then column after column."""
    values = array("q", (row[i] for i in range(width) for row in rows))
    if sys.byteorder == "big":
        values.byteswap()
    return _COUNT.pack(len(rows)) + values.tobytes()


def _address(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


class _Cursor:
    """Reads back what ``to_bytes`` wrote, in order."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("truncated replay state")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def columns(self, width: int) -> list[list[int]]:
        (count,) = _COUNT.unpack(self.take(_COUNT.size))
        values = array("q")
        values.frombytes(self.take(8 * width * count))
        if sys.byteorder == "big":
            values.byteswap()
        flat = values.tolist()
        return [flat[i * count : (i + 1) * count] for i in range(width)]

    def address(self) -> bytes:
        return bytes(self.take(self.take(1)[0]))


def _by_recording(recordings: list[int]) -> Iterator[tuple[int, int, int]]:
    """(recording, start, end) of each run of one recording in ``recordings`` (sorted)."""
    start = 0
    while start < len(recordings):
        recording = recordings[start]
        end = bisect_right(recordings, recording, start)
        yield recording, start, end
        start = end


def _decode(data: memoryview) -> ReplayState:
    cursor = _Cursor(data)
    format_, position, max_wall_ns = _HEADER.unpack(cursor.take(_HEADER.size))
    if format_ != FORMAT:
        raise ValueError(f"replay state format {format_} is not {FORMAT}")
    state = ReplayState(position=position, max_wall_ns=max_wall_ns)
    recordings, keys, positions = cursor.columns(3)
    for recording, start, end in _by_recording(recordings):
        state.open_sockets[recording] = dict(
            zip(keys[start:end], positions[start:end], strict=True)
        )
    recordings, keys, opened, missed = cursor.columns(4)
    for recording, start, end in _by_recording(recordings):
        entries = zip(opened[start:end], missed[start:end], strict=True)
        state.missing[recording] = dict(zip(keys[start:end], entries, strict=True))
    recordings, pids, positions = cursor.columns(3)
    state.processes = dict(zip(zip(recordings, pids, strict=True), positions, strict=True))
    recordings, namespaces, ids, positions = cursor.columns(4)
    state.conntrack = dict(
        zip(zip(recordings, namespaces, ids, strict=True), positions, strict=True)
    )
    recordings, namespaces, lports, rports, positions = cursor.columns(5)
    for i in range(len(recordings)):
        laddr, raddr = cursor.address(), cursor.address()
        key = (recordings[i], namespaces[i], laddr, lports[i], raddr, rports[i])
        state.snapshot_sockets[key] = positions[i]
    if cursor.at != len(data):
        raise ValueError("trailing bytes after a replay state")
    return state
