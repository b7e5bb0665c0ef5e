"""The state at a cut that dropped its history (``--archive none``).

A cut with an archive moves positions up to ``P`` to Parquet, and readers read them there
(eventlog.archive). A cut with ``--archive none`` drops them, and keeps in their place, in
the live log, a seed: what an answer for a moment after the cut still needs of them.

- The rows still referred to at ``P``: the events that opened the sockets and processes
  still open at ``P``, and those that describe the NAT entries still open at ``P`` (a
  CT_NEW or CT_UPDATE event, or a snapshot's dump); every snapshot (its event and all its
  rows) that such an interval or a later moment's process table reads; the forks, exits
  and OWNER events that say who held a socket still open at ``P``; and the container
  records.
- The derived store's fold state at ``P`` (replay.derived), as its own tables: what is open,
  and since which position. Folding the kept rows alone would not give it (a snapshot kept
  would close what was opened and closed in the history dropped around it), so it is kept
  as it was folded from the whole history.

The seed takes the archive's place for every reader: the log's boundary (``log_meta``
``archived_upto``) is ``P`` as after an archived cut, ``archive_dir`` says ``none``, and
``archive_seed`` holds the seed, all written in one transaction; positions up to ``P`` are
read from the seed (only the kept rows are there), the rest from the live log, and the rows
below the boundary are deleted from the live log as after an archived cut. The derived store
copies the seed's rows and takes its state instead of folding them. Which rows and state a
seed holds is decided where the state is folded (replay.derived.seed); this module only
keeps them.

A moment whose answer would read what was dropped (``dropped_wall_ns``: the newest event
dropped; with a window, the window's start) is refused, not answered from what is left.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from eventlog.errors import LogOpenError
from eventlog.scan import Select

SEED = "archive_seed"  # the log_meta key that holds it
DROPPED = "none"  # archive_dir's value after such a cut
SEED_FORMAT = 1


@dataclass(frozen=True)
class Seed:
    """The kept rows of positions up to ``upto`` and the fold state at ``upto``."""

    upto: int
    dropped_wall_ns: int  # the newest wall time of the events dropped
    tables: dict[str, pa.Table]  # eventlog.archive.TABLES' tables and "batches"
    state: dict[str, pa.Table]  # the fold state (replay.derived.derive.exported_state)

    def read(self, select: Select, after: int, upto: int, archived: int) -> pa.Table:
        """The kept rows of ``select`` for positions in ``(after, upto]``, in the order the
        log gave them (as Archive.read does for all of them)."""
        del archived  # a seed is of one boundary
        rows = self.tables.get(select.table)
        if rows is None:  # a table that a seed of an older version had not (snapshot_deltas)
            return select.schema().empty_table()
        wanted = [name for name, _ in select.columns]
        if "gone" in wanted and "gone" not in rows.column_names:  # nor this: null in all rows
            rows = rows.append_column("gone", pa.nulls(rows.num_rows, pa.int64()))
        position = rows.column("position")
        keep = pc.and_(pc.greater(position, after), pc.less_equal(position, upto))
        return rows.filter(keep).select(wanted).cast(select.schema())

    def batches(self, after: int, upto: int, archived: int) -> list[tuple[int, ...]]:
        """The kept batches whose last position is in ``(after, upto]``."""
        del archived
        rows = self.tables["batches"]
        return [
            tuple(row.values())
            for row in rows.to_pylist()
            if after < int(row["last_position"]) <= upto
        ]

    def encode(self) -> str:
        return json.dumps(
            {
                "format": SEED_FORMAT,
                "upto": self.upto,
                "dropped_wall_ns": self.dropped_wall_ns,
                "tables": {name: _ipc(table) for name, table in self.tables.items()},
                "state": {name: _ipc(table) for name, table in self.state.items()},
            }
        )

    @classmethod
    def decode(cls, text: str) -> Seed:
        try:
            document = json.loads(text)
            if document.get("format") != SEED_FORMAT:
                raise ValueError(f"format {document.get('format')!r}")
            return cls(
                int(document["upto"]),
                int(document["dropped_wall_ns"]),
                {name: _table(data) for name, data in document["tables"].items()},
                {name: _table(data) for name, data in document["state"].items()},
            )
        except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise LogOpenError(f"the log's state at its cut cannot be read: {exc}") from exc


def _ipc(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def _table(data: str) -> pa.Table:
    with pa.ipc.open_stream(base64.b64decode(data)) as reader:
        return reader.read_all()
