"""The log's rows as Arrow columns, read in bulk: what the derived store is built from.

``scan`` runs one SELECT over ranges of positions and returns an Arrow table. On a SQLite log
it reads through ``eventlog/_scan.c`` (threads, each with its own read-only connection; about
four times faster than Python's sqlite3, which is the fallback where the module is not built,
and the reference it is tested against). On PostgreSQL the server sends the rows as CSV
(``COPY ... TO STDOUT``) and Arrow parses them.

Columns are typed ``INT`` (64-bit integers), ``BLOB`` or ``TEXT`` (both read as bytes); NULL
is a null. A value of another storage class (only a log edited by hand has one) is a
``LogOpenError``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from eventlog.errors import LogOpenError
from eventlog.native import shares_sqlite
from eventlog.store import LogStore, map_driver_error

try:
    from eventlog import _scan

    AVAILABLE = True
except ImportError:  # built where a C compiler was found (pyproject.toml)
    AVAILABLE = False

INT = "int"
BLOB = "blob"
TEXT = "text"
_C_TYPES = {INT: "i", BLOB: "b", TEXT: "b"}
_ARROW_TYPES = {INT: pa.int64(), BLOB: pa.binary(), TEXT: pa.binary()}
THREADS = 2  # the machines this runs on have few cores; more threads only contend


@dataclass(frozen=True)
class Select:
    """Columns of one of the log's tables, for the rows whose position is in a range."""

    table: str
    columns: tuple[tuple[str, str], ...]  # (column, INT, BLOB or TEXT)

    @property
    def types(self) -> str:
        return "".join(_C_TYPES[kind] for _, kind in self.columns)

    @property
    def sql(self) -> str:
        """The SQLite statement: positions after ?1, up to ?2."""
        names = ", ".join(name for name, _ in self.columns)
        return f"SELECT {names} FROM {self.table} WHERE position > ?1 AND position <= ?2"

    def postgres_sql(self, after: int, upto: int) -> str:
        """The PostgreSQL statement, bytes hex-encoded for the CSV it is sent as."""
        expressions = []
        for name, kind in self.columns:
            if kind == BLOB:
                expressions.append(f"encode({name}, 'hex')")
            elif kind == TEXT:
                expressions.append(f"encode(convert_to({name}::text, 'UTF8'), 'hex')")
            else:
                expressions.append(name)
        return (
            f"SELECT {', '.join(expressions)} FROM {self.table} "
            f"WHERE position > {int(after)} AND position <= {int(upto)} ORDER BY position"
        )

    def schema(self) -> pa.Schema:
        return pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in self.columns])


def split(after: int, upto: int, parts: int) -> list[tuple[int, int]]:
    """``(after, upto]`` in ``parts`` ranges of about equal length (none empty)."""
    length = upto - after
    if length <= 0:
        return []
    parts = max(1, min(parts, length))
    bounds = [after + length * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def scan_live(
    store: LogStore, select: Select, after: int, upto: int, threads: int = THREADS
) -> pa.Table:
    """The rows of ``select`` for positions ``after < p <= upto`` in the live log (not its
    archive: eventlog.archive.scan reads both), in the order each range's statement gives
    them (ranges in position order), read by ``threads`` threads."""
    if upto <= after:
        return select.schema().empty_table()
    if store.dialect == "postgresql":
        return _scan_postgres(store, select, after, upto)
    assert store.location.path is not None
    path = str(store.location.path)
    ranges = split(after, upto, threads)
    if native_scan_usable():
        return scan_sqlite_native(path, select, ranges, store.sqlite.busy_timeout_ms, threads)
    return scan_sqlite_python(path, select, ranges)


@cache
def native_scan_usable() -> bool:
    """Whether the C reader is built and shares Python's SQLite library: a copy of its own
    would drop the locks of this process's other connections to the log whenever it closes
    one of its own (eventlog.native.shares_sqlite)."""
    return AVAILABLE and shares_sqlite(_scan.soft_heap_limit)


def scan_sqlite_native(
    path: str, select: Select, ranges: Sequence[tuple[int, int]], busy_timeout_ms: int = 10_000,
    threads: int = THREADS,
) -> pa.Table:  # fmt: skip
    try:
        results = _scan.scan(path, select.sql, select.types, list(ranges), threads, busy_timeout_ms)
    except _scan.ScanError as exc:
        raise LogOpenError(f"{path}: cannot read the log: {exc}") from exc
    batches = [
        pa.RecordBatch.from_arrays(
            [
                _array(kind, rows, column)
                for (_, kind), column in zip(select.columns, columns, strict=True)
            ],
            schema=select.schema(),
        )
        for rows, columns in results
    ]
    return pa.Table.from_batches(batches, schema=select.schema())


def _array(kind: str, rows: int, column: tuple[Any, ...]) -> pa.Array:
    nulls, validity = column[0], column[1]
    bitmap = _buffer(validity) if nulls else None
    if kind == INT:
        return pa.Array.from_buffers(pa.int64(), rows, [bitmap, _buffer(column[2])], nulls)
    offsets, data = column[2], column[3]
    return pa.Array.from_buffers(
        pa.binary(), rows, [bitmap, _buffer(offsets), _buffer(data)], nulls
    )


def _buffer(handed: tuple[int, int, Any]) -> pa.Buffer:
    """The memory _scan read into, as an Arrow buffer that keeps it (its owner) alive."""
    address, size, owner = handed
    if owner is None:
        return pa.py_buffer(b"")
    return pa.foreign_buffer(address, size, base=owner)


def scan_sqlite_python(path: str, select: Select, ranges: Sequence[tuple[int, int]]) -> pa.Table:
    """``scan_sqlite_native`` through Python's sqlite3: the reference, and the fallback."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LogOpenError(f"{path}: cannot read the log: {exc}") from exc
    batches = []
    with contextlib.closing(conn):
        for low, high in ranges:
            try:
                rows = conn.execute(select.sql, (low, high)).fetchall()
            except sqlite3.Error as exc:
                raise LogOpenError(f"{path}: cannot read the log: {exc}") from exc
            arrays = []
            for index, (name, kind) in enumerate(select.columns):
                values = [row[index] for row in rows]
                arrays.append(_python_array(path, name, kind, values))
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=select.schema()))
    return pa.Table.from_batches(batches, schema=select.schema())


def _python_array(path: str, name: str, kind: str, values: list[Any]) -> pa.Array:
    wanted = (int,) if kind == INT else (bytes, str)
    for value in values:
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            raise LogOpenError(
                f"{path}: cannot read the log: column {name} holds {type(value).__name__}"
            )
    if kind != INT:
        values = [v.encode() if isinstance(v, str) else v for v in values]
    return pa.array(values, type=_ARROW_TYPES[kind])


def _scan_postgres(store: LogStore, select: Select, after: int, upto: int) -> pa.Table:
    """The rows as CSV from the server (bytes hex-encoded there), parsed by Arrow."""
    names = [name for name, _ in select.columns]
    sql = select.postgres_sql(after, upto)
    chunks: list[bytes] = []
    try:
        raw = store.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            with (
                driver.cursor() as cursor,
                cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy,
            ):
                chunks.extend(bytes(data) for data in copy)
            driver.rollback()
        finally:
            raw.close()
    except Exception as exc:
        raise map_driver_error(exc, store.location) from exc
    if not any(chunks):  # no rows (Arrow reads no table from an empty CSV)
        return select.schema().empty_table()
    text_types = {name: pa.int64() if kind == INT else pa.string() for name, kind in select.columns}
    table = pacsv.read_csv(
        pa.BufferReader(b"".join(chunks)),
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(
            column_types=text_types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    arrays = [
        table.column(name) if kind == INT else _unhex(table.column(name))
        for name, kind in select.columns
    ]
    return pa.Table.from_arrays(arrays, schema=select.schema())


def _unhex(column: pa.ChunkedArray) -> pa.Array:
    return pa.array(
        [None if value is None else bytes.fromhex(value) for value in column.to_pylist()],
        type=pa.binary(),
    )
