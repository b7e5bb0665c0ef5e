"""Checkpoints: folded replay state saved every so often, so a seek folds only the rest.

Derived data: a checkpoint at position P holds the fold of exactly the events at positions
<= P, with the newest wall time among them. Any of them can be dropped; a checkpoint of
another state format is ignored. Saving is best effort: a read-only log replays without them.

A checkpoint can also carry a hint: the events that opened its open sockets, as the C run
reader keeps them (``RunReader.socket_hint``). Those sockets opened anywhere earlier in the
log, one random read each; with the hint, a seek from the checkpoint reads none of them. A
hint only saves reads: a seek without one (or ignoring a bad one) gives the same answer.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from eventlog.errors import LogError
from eventlog.store import LogStore
from replay.state import FORMAT, MAX_STATE_BYTES, ReplayState, inflate

# A row's blob: the state's length, the state, the compressed hint. The state's FORMAT (the
# row's format column) versions this layout too.
_STATE_LENGTH = struct.Struct("<I")

# ~20 ms of folding. With their hints, a busy host's checkpoints take ~200 KB each: ~80 MB
# for 10M events (a 1.2 GB log).
DEFAULT_EVERY_EVENTS = 25_000
DEFAULT_EVERY_NS = 600 * 1_000_000_000  # or ten minutes of log time, whichever comes first


@dataclass(frozen=True)
class CheckpointPolicy:
    every_events: int = DEFAULT_EVERY_EVENTS
    every_ns: int = DEFAULT_EVERY_NS

    def due(self, events_since: int, wall_since_ns: int) -> bool:
        return events_since >= self.every_events or (
            events_since > 0 and wall_since_ns >= self.every_ns
        )


@dataclass(frozen=True)
class Checkpoint:
    state: ReplayState
    hint: bytes  # see the module's docstring; empty if it has none


def encode(state: ReplayState, hint: bytes | None) -> bytes:
    encoded = state.to_bytes()
    packed_hint = zlib.compress(hint, 1) if hint else b""
    return _STATE_LENGTH.pack(len(encoded)) + encoded + packed_hint


def decode(blob: bytes) -> Checkpoint:
    """ValueError if ``blob`` holds no state; a hint that does not decompress is dropped."""
    if len(blob) < _STATE_LENGTH.size:
        raise ValueError("checkpoint too short")
    (length,) = _STATE_LENGTH.unpack_from(blob)
    end = _STATE_LENGTH.size + length
    state = ReplayState.from_bytes(blob[_STATE_LENGTH.size : end])
    try:
        hint = inflate(blob[end:], MAX_STATE_BYTES) if len(blob) > end else b""
    except (zlib.error, ValueError):
        hint = b""
    return Checkpoint(state, hint)


def newest_before(store: LogStore, wall_ns: int, head: int) -> Checkpoint | None:
    """The newest usable checkpoint whose events all happened at or before ``wall_ns``."""
    with store.connect() as conn:
        row = conn.execute(
            text(
                "SELECT state FROM checkpoints WHERE format = :format AND max_wall_ns <= :wall "
                "AND position <= :head ORDER BY position DESC LIMIT 1"
            ),
            {"format": FORMAT, "wall": wall_ns, "head": head},
        ).first()
    if row is None:
        return None
    try:
        return decode(bytes(row[0]))
    except ValueError:
        return None


def save(store: LogStore, state: ReplayState, hint: bytes | None = None) -> bool:
    """Store ``state`` (and ``hint``) as the checkpoint at its position, in place of one of
    another format; False if the log refused."""
    try:
        blob = encode(state, hint)
    except ValueError:
        return False
    try:
        with store.engine.connect() as conn:
            conn.execute(
                text("DELETE FROM checkpoints WHERE position = :p AND format <> :f"),
                {"p": state.position, "f": FORMAT},
            )
            exists = conn.execute(
                text("SELECT 1 FROM checkpoints WHERE position = :p"), {"p": state.position}
            ).first()
            if exists is None:
                conn.execute(
                    text(
                        "INSERT INTO checkpoints (position, format, max_wall_ns, state) "
                        "VALUES (:p, :f, :w, :s)"
                    ),
                    {
                        "p": state.position,
                        "f": FORMAT,
                        "w": state.max_wall_ns,
                        "s": blob,
                    },
                )
            conn.commit()
    except (SQLAlchemyError, LogError):
        return False
    return True


def drop(store: LogStore) -> int:
    with store.connect() as conn:
        count = conn.execute(text("DELETE FROM checkpoints")).rowcount
        conn.commit()
    return int(count or 0)


def count(store: LogStore) -> int:
    with store.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM checkpoints")).scalar_one())
