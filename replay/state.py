"""Replay state: what is open at a moment, held as references into the log.

The state never copies event contents; it holds log positions (the open event of a socket,
the snapshot that showed a connection, the exec that started a process). That keeps the fold
fast and the checkpoints small, and every row replay prints can say which positions made it.
Rows are read back by position when a table or topology is rendered.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

FORMAT = 1  # bump when the meaning or encoding of the state changes: old checkpoints are ignored

SocketKey = tuple[int, int]  # (recording_id, sock_id); sock_id < 0: -position of an unkeyed open
# (recording_id, netns, laddr, lport, raddr, rport): a socket as /proc shows it
TupleKey = tuple[int, int, bytes, int, bytes, int]
ProcessKey = tuple[int, int]  # (recording_id, pid)


@dataclass
class ReplayState:
    """Everything open after folding a prefix of the log (see ``replay.fold``)."""

    position: int = 0  # the last position folded
    max_wall_ns: int = 0  # the newest wall time among the events folded
    open_sockets: dict[SocketKey, int] = field(default_factory=dict)  # -> open event position
    snapshot_sockets: dict[TupleKey, int] = field(default_factory=dict)  # -> snapshot position
    # Sockets open by their events but absent from a later snapshot: (open pos, snapshot pos).
    # They are closed as of that snapshot unless their own close event still comes.
    missing: dict[SocketKey, tuple[int, int]] = field(default_factory=dict)
    processes: dict[ProcessKey, int] = field(default_factory=dict)  # -> exec or snapshot position
    conntrack: dict[tuple[int, int, int], int] = field(default_factory=dict)  # see replay.nat

    def copy(self) -> ReplayState:
        return ReplayState(
            self.position,
            self.max_wall_ns,
            dict(self.open_sockets),
            dict(self.snapshot_sockets),
            dict(self.missing),
            dict(self.processes),
            dict(self.conntrack),
        )

    # -- checkpoints -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A deterministic encoding: equal states give equal bytes."""
        document = {
            "format": FORMAT,
            "position": self.position,
            "max_wall_ns": self.max_wall_ns,
            "open_sockets": sorted([*key, value] for key, value in self.open_sockets.items()),
            "snapshot_sockets": sorted(
                [key[0], key[1], key[2].hex(), key[3], key[4].hex(), key[5], value]
                for key, value in self.snapshot_sockets.items()
            ),
            "missing": sorted([*key, *value] for key, value in self.missing.items()),
            "processes": sorted([*key, value] for key, value in self.processes.items()),
            "conntrack": sorted([*key, value] for key, value in self.conntrack.items()),
        }
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        return zlib.compress(text.encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayState:
        document: dict[str, Any] = json.loads(zlib.decompress(data))
        if document.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {document.get('format')} is not {FORMAT}")
        return cls(
            position=document["position"],
            max_wall_ns=document["max_wall_ns"],
            open_sockets={(r, s): p for r, s, p in document["open_sockets"]},
            snapshot_sockets={
                (r, ns, bytes.fromhex(la), lp, bytes.fromhex(ra), rp): p
                for r, ns, la, lp, ra, rp, p in document["snapshot_sockets"]
            },
            missing={(r, s): (o, p) for r, s, o, p in document["missing"]},
            processes={(r, pid): p for r, pid, p in document["processes"]},
            conntrack={(r, ns, ct): p for r, ns, ct, p in document["conntrack"]},
        )
