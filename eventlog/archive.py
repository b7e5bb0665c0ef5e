"""A log's archive: the rows the live log no longer holds, in Parquet files beside it.

Retention (eventlog.retention) moves the oldest positions of the live log here, a segment at
a time. A segment holds a range of positions ``(after, upto]``: one Parquet file per table of
the log that is keyed by position (events, the snapshot tables, batches), compressed
with zstd, holding the columns and values the live log had (so that what is read back from
an archive is what was read from the log: integers as int64, blobs and text as bytes, as
eventlog.scan gives them). Two encodings make them smaller and are undone on reading: an
event's values that repeat its socket's event before are stored as nulls with a flag
(INHERITED), and the snapshot tables are stored by socket (by process), not by position
(STORED_ORDER). ``manifest.json`` lists the segments, with their positions, wall times, rows
and bytes; it is replaced whole (written beside, then renamed), so a reader sees the
segments before or after a cut, never half of one. A small last segment is merged with the
next cut's rows into a larger one, which replaces it (see Archive.list_segment).

The live log says how far its archive goes (``log_meta`` keys ``archived_upto`` and
``archive_dir``, see eventlog.retention): positions up to ``archived_upto`` are read from the
archive, the rest from the log. A segment listed in the manifest beyond ``archived_upto``
(a cut that was interrupted before the log said so) is not read, and the next cut replaces
it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
from sqlalchemy import Connection, text

from eventlog.errors import LogOpenError
from eventlog.scan import BLOB, INT, TEXT, THREADS, Select, scan_live
from eventlog.seed import DROPPED, SEED, Seed
from eventlog.store import LogStore

MANIFEST = "manifest.json"
# What a cut writes besides the manifest: a segment's directory, that directory while it is
# written, the manifest while it is written.
_LEFT_BY_A_CUT = re.compile(
    r"(?P<after>\d{12,})-(?P<upto>\d{12,})"
    r"|\.\d{12,}-\d{12,}\.partial|\.manifest\.json\.partial"
)
ARCHIVE_FORMAT = 3  # 3: snapshots stored as changes; 2: events' INHERITED values (all read)
ZSTD_LEVEL = 3  # higher levels: 4% smaller at 9, at half the speed
ROW_GROUP_ROWS = 1_000_000
# _PARQUET: pyarrow.parquet is imported where it is used. Every reader of the log imports
# this module, most never read an archive, and the import costs 0.1-0.25 s on these machines.

# Every column of each positioned table, in the log's order: an archive keeps all of them.
TABLES: dict[str, Select] = {
    "events": Select(
        "events",
        (("position", INT), ("recording_id", INT), ("kind", INT), ("mono_ns", INT),
         ("pid", INT), ("comm_id", INT), ("netns_id", INT), ("laddr", BLOB), ("lport", INT),
         ("raddr", BLOB), ("rport", INT), ("sock_id", INT), ("bytes_sent", INT),
         ("bytes_received", INT), ("extra", TEXT)),
    ),
    "snapshot_connections": Select(
        "snapshot_connections",
        (("position", INT), ("netns", INT), ("laddr", BLOB), ("lport", INT), ("raddr", BLOB),
         ("rport", INT), ("state", INT), ("inode", INT), ("uid", INT), ("pid", INT),
         ("gone", INT)),
    ),
    "snapshot_processes": Select(
        "snapshot_processes",
        (("position", INT), ("pid", INT), ("ppid", INT), ("comm", TEXT), ("cmdline", TEXT),
         ("cgroup", TEXT), ("netns", INT), ("start_mono_ns", INT), ("gone", INT)),
    ),
    "snapshot_conntrack": Select(
        "snapshot_conntrack",
        (("position", INT), ("netns", INT), ("orig_src", BLOB), ("orig_dst", BLOB),
         ("orig_sport", INT), ("orig_dport", INT), ("reply_src", BLOB), ("reply_dst", BLOB),
         ("reply_sport", INT), ("reply_dport", INT), ("status", INT), ("tcp_state", INT),
         ("ct_id", INT), ("zone", INT), ("mark", INT), ("gone", INT)),
    ),
    "snapshot_deltas": Select(
        "snapshot_deltas", (("position", INT), ("base_position", INT))
    ),
}  # fmt: skip
BATCH_SCHEMA = pa.schema(
    [(name, pa.int64()) for name in ("first_position", "last_position", "recording_id",
                                     "min_mono_ns", "max_mono_ns", "min_wall_ns", "max_wall_ns")]
)  # fmt: skip
# Columns whose values are near the row before's (times, counters, ids given in order):
# delta-encoded before zstd. Measured on bench/synthetic.py's log, in bytes an event:
# sock_id 2.4 -> 1.0, bytes_received 2.5 -> 1.4, mono_ns 3.7 -> 2.5. Ports and pids of
# events are smaller as they are (a dictionary), and so is every column of the snapshot
# tables as STORED_ORDER stores them (runs of one value).
_DELTA_COLUMNS = {
    "events": ("position", "mono_ns", "sock_id", "bytes_sent", "bytes_received"),
    "snapshot_connections": (),
    "snapshot_processes": (),
    "snapshot_conntrack": ("position",),
    "snapshot_deltas": ("position", "base_position"),
    "batches": ("first_position", "last_position", "min_mono_ns", "max_mono_ns",
                "min_wall_ns", "max_wall_ns"),
}  # fmt: skip
# The order a snapshot table's rows are read back in (a stable sort of the rows as the log
# gave them, so rows alike in these keys keep the order they were written in): a snapshot's
# sockets as LogReader.snapshot reads them, processes by pid. What reads them in another
# order reads them into sets.
SNAPSHOT_SOCKET_ORDER = ("position", "netns", "lport", "rport", "inode")
READ_ORDER = {
    "snapshot_connections": SNAPSHOT_SOCKET_ORDER,
    "snapshot_processes": ("position", "pid"),
}
# The order they are stored in: the same keys, the position last. Each snapshot repeats most
# of the one before, and so a socket's (a process's) rows of successive snapshots, stored
# together, are runs of one value in every column: 2.5 -> 0.45 bytes an event for the
# sockets of the synthetic log, 0.3 -> 0.04 for its processes. Both sorts are stable, so
# the stable sort by READ_ORDER of what is stored is READ_ORDER's sort of the log's rows.
STORED_ORDER = {table: (*keys[1:], keys[0]) for table, keys in READ_ORDER.items()}


# What a segment of an older format lacks: the table of snapshots stored as changes (a
# snapshot table's ``gone`` column, which it lacks too, is null in all of its rows).
_SINCE_FORMAT_3 = ("snapshot_deltas",)


# Columns of an event that are most often those of its socket's event before it (a close
# repeats its connect's process, namespace and addresses). In the archive such a value is
# stored as a null, and bit i of INHERITED_FLAGS says that INHERITED[i] is the one of the
# socket's event before, in the same segment (bench/synthetic.py's log: 12.1 -> 10 bytes an
# event). A null of the log stays a null, its bit clear.
INHERITED = ("pid", "comm_id", "netns_id", "laddr", "lport", "raddr", "rport")
INHERITED_FLAGS = "inherited"


@dataclass(frozen=True)
class Segment:
    """One range of archived positions, ``(after, upto]``, and the files that hold it."""

    name: str
    after: int
    upto: int
    min_wall_ns: int
    max_wall_ns: int
    events: int
    bytes: int


# The manifest last read, by its file's identity: it is replaced (a new inode) at each cut,
# and read at every range a sync reads.
_MANIFESTS: dict[tuple[str, int, int, int], list[Segment]] = {}


class Archive:
    """The archive directory of a log (it may not exist yet: then it holds nothing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # -- reading ---------------------------------------------------------------------------
    def segments(self, upto: int | None = None) -> list[Segment]:
        """The segments in position order (only those within ``upto``, if given), but those
        merged into another one of them."""
        return _outermost([s for s in self._listed() if upto is None or s.upto <= upto])

    def _listed(self) -> list[Segment]:
        """Every segment the manifest lists."""
        path = self.directory / MANIFEST
        try:
            stat = path.stat()
            key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            segments = _MANIFESTS.get(key)
            if segments is None:
                document = json.loads(path.read_text())
                segments = [Segment(**row) for row in document.get("segments", [])]
                _MANIFESTS.clear()  # one archive at a time is read
                _MANIFESTS[key] = segments
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as exc:
            raise LogOpenError(f"cannot read the archive manifest {path}: {exc}") from exc
        return segments

    def require_whole(self, archived: int) -> None:
        """Raise LogOpenError unless the segments hold every position up to ``archived``
        (the log's boundary): a log moved or copied without its archive, say, names a
        directory that holds part of it or none."""
        if not _covered(self.segments(archived), 0, archived):
            raise LogOpenError(
                f"the archive {self.directory} lacks positions of (0, {archived}]: its "
                "segments were moved or removed (a log moved or copied without its archive?)"
            )

    def read(self, select: Select, after: int, upto: int, archived: int) -> pa.Table:
        """The rows of ``select`` (columns of one of ``TABLES``) for positions in
        ``(after, upto]``, all archived (``upto <= archived``), in position order."""
        wanted = [s for s in self.segments(archived) if s.upto > after and s.after < upto]
        covered = sum(min(s.upto, upto) - max(s.after, after) for s in wanted)
        if covered != upto - after:
            raise LogOpenError(
                f"the archive {self.directory} lacks positions of ({after}, {upto}]: "
                "its segments were moved or removed"
            )
        parts = [self._read_file(s, select.table, select, after, upto) for s in wanted]
        if not parts:
            return select.schema().empty_table()
        return pa.concat_tables(parts)

    def _read_file(
        self, segment: Segment, table: str, select: Select, after: int, upto: int
    ) -> pa.Table:
        import pyarrow.parquet as pq  # noqa: PLC0415 - see _PARQUET

        key = "last_position" if table == "batches" else "position"
        path = self.directory / segment.name / f"{table}.parquet"
        columns = [name for name, _ in select.columns]
        order = READ_ORDER.get(table, ())
        try:
            if table == "events":
                rows = self._read_events(path, select, after, upto)
            elif table in _SINCE_FORMAT_3 and not path.exists():
                return select.schema().empty_table()  # written before snapshots were changes
            else:
                wanted = [*columns, *(c for c in order if c not in columns)]
                lacks_gone = "gone" in wanted and "gone" not in pq.read_schema(path).names
                rows = pq.read_table(
                    path,
                    columns=[c for c in wanted if not (lacks_gone and c == "gone")],
                    filters=[(key, ">", after), (key, "<=", upto)],
                )
                if lacks_gone:  # an older segment's: null in all of its rows
                    rows = rows.append_column("gone", pa.nulls(rows.num_rows, pa.int64()))
        except (OSError, pa.ArrowException) as exc:
            raise LogOpenError(f"cannot read the archive file {path}: {exc}") from exc
        if order:
            rows = rows.take(_stable_order(rows, order)).select(columns)
        return rows.cast(select.schema())

    def _read_events(self, path: Path, select: Select, after: int, upto: int) -> pa.Table:
        """The events of ``(after, upto]`` in ``path``: values stored as their socket's
        event's before (INHERITED) are given back, from the file's rows up to ``upto`` (the
        event they repeat may be before ``after``)."""
        import pyarrow.parquet as pq  # noqa: PLC0415 - see _PARQUET

        columns = [name for name, _ in select.columns]
        inherited = [c for c in INHERITED if c in columns]
        if inherited:
            wanted = [*dict.fromkeys([*columns, "position", "sock_id"]), INHERITED_FLAGS]
            rows = restore_inherited(
                pq.read_table(path, columns=wanted, filters=[("position", "<=", upto)])
            )
            position = rows.column("position")
            keep = pa.compute.and_(pa.compute.greater(position, after),
                                   pa.compute.less_equal(position, upto))  # fmt: skip
            return rows.filter(keep).select(columns)
        return pq.read_table(
            path, columns=columns, filters=[("position", ">", after), ("position", "<=", upto)]
        )

    def batches(self, after: int, upto: int, archived: int) -> list[tuple[int, ...]]:
        """The archived batches whose last position is in ``(after, upto]``, as the log's
        batches rows (first, last, recording, min mono, max mono, min wall, max wall)."""
        select = Select("batches", tuple((name, INT) for name in BATCH_SCHEMA.names))
        rows: list[tuple[int, ...]] = []
        for segment in self.segments(archived):
            if segment.upto > after and segment.after < upto:
                table = self._read_file(segment, "batches", select, after, upto)
                rows.extend(zip(*(c.to_pylist() for c in table.columns), strict=True))
        return rows

    def size_bytes(self) -> int:
        return sum(s.bytes for s in self.segments())

    # -- writing ---------------------------------------------------------------------------
    def write_segment(
        self,
        after: int,
        upto: int,
        tables: dict[str, pa.Table],
        batches: pa.Table,
        wall: tuple[int, int],
        archived: int | None = None,
    ) -> Segment:
        """Write the rows of ``(after, upto]`` as a new segment, durably, and list it
        (``write_files``, then ``list_segment``)."""
        return self.list_segment(self.write_files(after, upto, tables, batches, wall), archived)

    def write_files(
        self,
        after: int,
        upto: int,
        tables: dict[str, pa.Table],
        batches: pa.Table,
        wall: tuple[int, int],
    ) -> Segment:
        """Write the files of a new segment of ``(after, upto]``, durably, in a directory of
        their own, not listed yet: no reader sees them before ``list_segment``, and segments
        of different positions may be written at once.

        The files are written in a staging directory, synced, then renamed into place: an
        error (no space) leaves nothing behind, and is raised as ``OSError``."""
        name = f"{after + 1:012d}-{upto:012d}"
        target = self.directory / name
        staging = self.directory / f".{name}.partial"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_tree(staging)
        staging.mkdir(mode=0o700)
        try:
            # The events' file on a thread of its own, the others here meanwhile: it is
            # most of a segment's writing.
            with ThreadPoolExecutor(1, thread_name_prefix="scope-archive-write") as writer:
                events = writer.submit(_write_table, staging, "events", tables["events"])
                for table, rows in [*tables.items(), ("batches", batches)]:
                    if table != "events":
                        _write_table(staging, table, rows)
                events.result()
            _fsync_directory(staging)
            _remove_tree(target)  # one an interrupted cut left
            staging.rename(target)
        except BaseException:
            _remove_tree(staging)
            raise
        size = sum(f.stat().st_size for f in target.iterdir())
        return Segment(name, after, upto, wall[0], wall[1], tables["events"].num_rows, size)

    def list_segment(self, segment: Segment, archived: int | None = None) -> Segment:
        """List a segment ``write_files`` wrote, replacing the manifest.

        A new segment may hold the positions of segments already archived (``archived``, the
        log's boundary, at or beyond their end): merged into a larger one. They stay listed
        (and are read: the new one is beyond the boundary until the log says otherwise), and
        leave the manifest and the disk at a later write, when the larger one is within the
        boundary."""
        listed = self._listed()
        kept = [s for s in self.segments(archived) if s.name != segment.name]
        kept = [s for s in kept if s.upto <= segment.after or s.after >= segment.after]
        self._write_manifest([*kept, segment])
        for gone in {s.name for s in listed} - {s.name for s in [*kept, segment]}:
            _remove_tree(self.directory / gone)
        return segment

    def discard(self, segment: Segment) -> None:
        """Remove the files of a segment ``write_files`` wrote and that will not be listed."""
        _remove_tree(self.directory / segment.name)

    def remove_unlisted(self, archived: int) -> list[str]:
        """Remove what a cut that was killed left: files half written, and segments written
        and not listed (the log's boundary at ``archived``), only while no other cut runs
        (eventlog.cutlock): another's are unlisted while it writes them. A segment is
        removed only where its positions up to the boundary are in segments listed: one the
        manifest lacks for another reason (a manifest lost, or restored from an older copy)
        stays, as does anything else in the directory. The names removed."""
        if not self.directory.is_dir():
            return []
        listed = self._listed()
        names = {s.name for s in listed}
        removed = []
        for entry in sorted(self.directory.iterdir()):
            found = _LEFT_BY_A_CUT.fullmatch(entry.name)
            if found is None or entry.name in names:
                continue
            if found["after"] is not None:  # a segment's directory, whole
                after, upto = int(found["after"]) - 1, int(found["upto"])
                if not _covered(listed, after, min(upto, archived)):
                    continue
            if entry.is_dir():
                _remove_tree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        return removed

    def _write_manifest(self, segments: Sequence[Segment]) -> None:
        document: dict[str, Any] = {
            "format": ARCHIVE_FORMAT,
            "segments": [asdict(s) for s in sorted(segments, key=lambda s: s.upto)],
        }
        partial = self.directory / f".{MANIFEST}.partial"
        with _private(partial) as out:
            out.write((json.dumps(document, indent=1) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.directory / MANIFEST)
        _fsync_directory(self.directory)


def _write_table(directory: Path, table: str, rows: pa.Table) -> None:
    """``rows`` of ``table`` as its Parquet file in ``directory``, encoded for the archive."""
    order = STORED_ORDER.get(table, ())
    ordered = rows.take(_stable_order(rows, order)) if order else rows
    if table == "events":
        ordered = store_inherited(ordered)
    _write_parquet(ordered, directory / f"{table}.parquet", _DELTA_COLUMNS[table])


def _stable_order(rows: pa.Table, keys: Sequence[str]) -> Any:
    """The indices that sort ``rows`` by ``keys`` (ascending), rows alike in all of them in
    the order they are in. numpy's lexsort when no key has a null (the snapshot tables'
    keys never do): about three times as fast as Arrow's sort of a table by several keys."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET (numpy with it)
    import pyarrow.compute as pc  # noqa: PLC0415 - see _PARQUET

    columns = [rows.column(key) for key in keys]
    if any(column.null_count for column in columns):
        return pc.sort_indices(rows, [(key, "ascending") for key in keys])
    # lexsort sorts by its last key first
    return np.lexsort([column.to_numpy() for column in reversed(columns)])


def _covered(segments: list[Segment], after: int, upto: int) -> bool:
    """Whether ``segments`` hold every position of ``(after, upto]``."""
    for segment in sorted(segments, key=lambda s: s.after):
        if after >= upto:
            break
        if segment.after <= after < segment.upto:
            after = segment.upto
    return after >= upto


def _outermost(segments: list[Segment]) -> list[Segment]:
    """``segments`` without those inside another (merged into it), in position order."""
    outermost: list[Segment] = []
    for segment in sorted(segments, key=lambda s: (s.after, -s.upto)):
        if outermost and segment.upto <= outermost[-1].upto:
            continue
        outermost.append(segment)
    return outermost


def _write_parquet(rows: pa.Table, path: Path, delta: Sequence[str]) -> None:
    import pyarrow.parquet as pq  # noqa: PLC0415 - see _PARQUET

    with _private(path) as out:
        pq.write_table(
            rows,
            out,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=[c for c in rows.column_names if c not in delta],
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
        )
        out.flush()
        os.fsync(out.fileno())


def _by_socket(sock_ids: pa.ChunkedArray) -> tuple[Any, Any]:
    """The rows (in position order) ordered by socket, each socket's in position order; and
    for each row so ordered, whether it follows an event of its socket (never a row without
    a socket)."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET (numpy with it)

    valid = sock_ids.is_valid().to_numpy(zero_copy_only=False)
    keys = sock_ids.fill_null(0).to_numpy()
    order = np.argsort(keys, kind="stable")
    follows = np.zeros(len(keys), dtype=bool)
    follows[1:] = (keys[order[1:]] == keys[order[:-1]]) & valid[order[1:]] & valid[order[:-1]]
    return order, follows


def store_inherited(events: pa.Table) -> pa.Table:
    """``events`` (position order) with INHERITED values equal to their socket's event
    before's stored as nulls, and the INHERITED_FLAGS column saying which."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET

    order, follows = _by_socket(events.column("sock_id"))
    rows = order[follows]  # each has an event of its socket before it: that one
    before = order[np.flatnonzero(follows) - 1]
    flags = np.zeros(events.num_rows, dtype=np.int32)
    for bit, name in enumerate(INHERITED):
        column = events.column(name).combine_chunks()
        valid = _validity(column)
        same = np.zeros(events.num_rows, dtype=bool)
        same[rows] = _equal(column, rows, before) & valid[rows] & valid[before]
        flags |= same.astype(np.int32) << bit
        index = events.schema.get_field_index(name)
        events = events.set_column(index, name, _with_validity(column, valid & ~same))
    return events.append_column(INHERITED_FLAGS, pa.array(flags))


def _validity(column: pa.Array) -> Any:
    """Whether each value of ``column`` is set, as a numpy array of bools."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET

    if column.null_count == 0:
        return np.ones(len(column), dtype=bool)
    return column.is_valid().to_numpy(zero_copy_only=False)


def _equal(column: pa.Array, rows: Any, before: Any) -> Any:
    """Whether the value of each of ``rows`` equals that of the row of ``before`` beside it
    (whatever either holds where it is null). Integers compared in numpy, in place."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET
    import pyarrow.compute as pc  # noqa: PLC0415 - see _PARQUET

    if pa.types.is_int64(column.type):
        values = np.frombuffer(column.buffers()[1], dtype=np.int64)
        values = values[column.offset : column.offset + len(column)]
        return values[rows] == values[before]
    equal = pc.equal(column.take(rows), column.take(before))
    return equal.fill_null(False).to_numpy(zero_copy_only=False)


def _with_validity(column: pa.Array, valid: Any) -> pa.Array:
    """``column`` (not a slice: its buffers start at its first value, as combine_chunks
    makes them) with the values where ``valid`` is false made nulls: its value buffers as
    they are (a null's bytes are never read), a new validity bitmap."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET

    assert column.offset == 0, "a slice: its buffers do not start at its first value"
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(column.type, len(column), [bitmap, *column.buffers()[1:]])


def restore_inherited(events: pa.Table) -> pa.Table:
    """``store_inherited`` undone, on all the rows it stored: the values given back, the
    flags column left out."""
    import numpy as np  # noqa: PLC0415 - see _PARQUET

    if INHERITED_FLAGS not in events.column_names:  # written before values were inherited
        return events
    flags = events.column(INHERITED_FLAGS).to_numpy()
    events = events.drop_columns([INHERITED_FLAGS])
    if not flags.any():
        return events
    order, _ = _by_socket(events.column("sock_id"))
    for bit, name in enumerate(INHERITED):
        flagged = ((flags[order] >> bit) & 1).astype(bool)
        if name not in events.column_names or not flagged.any():
            continue
        # Ordered by socket, an inherited value is the one of the nearest row before it
        # whose value was stored: its socket's (a socket's first row never inherits).
        stored_at = np.maximum.accumulate(np.where(flagged, 0, np.arange(len(order))))
        source = np.empty(len(order), dtype=np.int64)
        source[order] = order[stored_at]
        index = events.schema.get_field_index(name)
        events = events.set_column(index, name, events.column(name).take(source))
    return events


def _private(path: Path) -> BinaryIO:
    """``path`` opened for writing, readable by its owner only (it holds what the log
    holds)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


# -- where the live log begins ------------------------------------------------------------
@dataclass(frozen=True)
class Boundary:
    """How far a log's archive goes: positions up to ``archived_upto`` are in ``archive``,
    or, after a cut that dropped them (``--archive none``), only what ``seed`` kept of them
    (eventlog.seed)."""

    archived_upto: int
    archive: Archive | None
    seed: Seed | None = None

    @property
    def dropped(self) -> bool:
        return self.seed is not None

    def require(self) -> Archive | Seed:
        """What holds the positions up to ``archived_upto``: the archive or the seed."""
        if self.seed is not None:
            return self.seed
        if self.archive is None:
            raise LogOpenError(
                f"positions up to {self.archived_upto} were cut from the log without an archive"
            )
        return self.archive


ARCHIVED_UPTO = "archived_upto"
ARCHIVE_DIR = "archive_dir"
# The seed last read, by the log, its boundary and the seed's length: a seed is written with
# its boundary, in one transaction, and every reader's scan asks for the boundary.
_SEEDS: dict[tuple[str, int, int], Seed] = {}


def boundary(store: LogStore) -> Boundary:
    """What the log says of its archive (nothing archived: position 0, no archive)."""
    with store.connect() as conn:
        meta: dict[str, str] = dict(
            conn.execute(
                text("SELECT key, value FROM log_meta WHERE key IN (:upto, :dir)"),
                {"upto": ARCHIVED_UPTO, "dir": ARCHIVE_DIR},
            ).all()
        )
        upto = int(meta.get(ARCHIVED_UPTO) or 0)
        directory = meta.get(ARCHIVE_DIR)
        if directory == DROPPED:
            return Boundary(upto, None, _seed(store, conn, upto))
    return Boundary(upto, Archive(Path(directory)) if directory else None)


def _seed(store: LogStore, conn: Connection, upto: int) -> Seed:
    length = conn.execute(
        text("SELECT length(value) FROM log_meta WHERE key = :k"), {"k": SEED}
    ).scalar()
    if length is None:
        raise LogOpenError(
            f"positions up to {upto} were dropped from the log, but the state at the cut is missing"
        )
    key = (store.location.display(), upto, int(length))
    seed = _SEEDS.get(key)
    if seed is None:
        value = conn.execute(
            text("SELECT value FROM log_meta WHERE key = :k"), {"k": SEED}
        ).scalar()
        seed = Seed.decode(str(value))
        if seed.upto != upto:
            raise LogOpenError(
                f"the log's state at its cut is of position {seed.upto}, its boundary {upto}"
            )
        _SEEDS.clear()  # one log at a time is read
        _SEEDS[key] = seed
    return seed


def scan(
    store: LogStore, select: Select, after: int, upto: int, threads: int = THREADS
) -> pa.Table:
    """The rows of ``select`` for positions ``after < p <= upto``, in position order, from
    the archive for those it holds and from the live log for the rest.

    A cut may commit while the live rows are read, and delete them: the boundary is read
    again after, and the read done again if it moved (the rows are deleted only after the
    cut that archived them committed, so an unchanged boundary means none were missed)."""
    while True:
        before = boundary(store)
        parts = []
        split_at = min(max(before.archived_upto, after), upto)
        if split_at > after:
            parts.append(before.require().read(select, after, split_at, before.archived_upto))
        if upto > split_at:
            parts.append(scan_live(store, select, split_at, upto, threads))
        if boundary(store).archived_upto == before.archived_upto:
            break
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts) if parts else select.schema().empty_table()
