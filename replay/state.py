"""Replay state: what is open at a moment, held as references into the log.

The state never copies event contents; it holds log positions (the open event of a socket,
the snapshot that showed a connection, the exec that started a process). That keeps the fold
fast and the checkpoints small, and every row replay prints can say which positions made it.
Rows are read back by position when a table or topology is rendered.

Sockets are keyed per recording by their socket id (ids are unique within a recording; an
open without an id is keyed by minus its position).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FORMAT = 2  # bump when the meaning or encoding of the state changes: old checkpoints are ignored

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
        """A deterministic encoding: equal states give equal bytes."""
        text = json.dumps(self._document(), separators=(",", ":"), sort_keys=True)
        return zlib.compress(text.encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayState:
        document: dict[str, Any] = json.loads(zlib.decompress(data))
        if document.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {document.get('format')} is not {FORMAT}")
        state = cls(position=document["position"], max_wall_ns=document["max_wall_ns"])
        for recording, key, position in document["open_sockets"]:
            state.sockets_of(recording)[key] = position
        for recording, key, opened, missed_at in document["missing"]:
            state.missing_of(recording)[key] = (opened, missed_at)
        state.snapshot_sockets = {
            (r, ns, bytes.fromhex(la), lp, bytes.fromhex(ra), rp): p
            for r, ns, la, lp, ra, rp, p in document["snapshot_sockets"]
        }
        state.processes = {(r, pid): p for r, pid, p in document["processes"]}
        state.conntrack = {(r, ns, ct): p for r, ns, ct, p in document["conntrack"]}
        return state
