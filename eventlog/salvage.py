"""Reading what is left of a damaged SQLite log, table by table, window by window of rowids.

SQLite refuses a statement that reaches a page it cannot parse ("database disk image is
malformed"); a page whose cells were overwritten can also hand back fewer rows than it
holds, or rows with impossible rowids or values, without any error. The log's tables are
append-only, so their rowids run from 1 without a gap (the events table's rowid is the
position; ``batches``, keyed by a batch's last position, is the exception). So a table is read
in windows of rowids; a window that fails is narrowed down to the rowids that cannot be read
(one bad page loses only its own rows), and a rowid missing from a window that was read, or
whose row does not hold what its columns hold, is unreadable as well. Nothing is left out
without being counted.

Only Python's sqlite3 reads here, never the log's own store: that refuses a damaged file. The
connection cannot write: ``immutable`` when the file is all there is (SQLite then creates no
file beside it either), read-only when a write-ahead log beside it holds committed
transactions that must be read too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Column, Integer, LargeBinary, Table
from sqlalchemy.types import JSON, String

WINDOW_ROWS = 20_000  # rowids read by one statement, when nothing in them is damaged

Row = tuple[Any, ...]  # the rowid, then the table's columns in schema order


@dataclass(frozen=True)
class Unreadable:
    """Rowids ``first`` to ``last`` could not be read. ``last`` is None when the end of the
    table could not be read either: how many rows were lost is then not known."""

    first: int
    last: int | None

    @property
    def count(self) -> int | None:
        return None if self.last is None else self.last - self.first + 1


class DamagedLog:
    """A SQLite file opened so that it is never written, read range by range."""

    def __init__(self, path: Path) -> None:
        wal = path.with_name(path.name + "-wal")
        mode = "mode=ro" if wal.is_file() and wal.stat().st_size > 0 else "immutable=1"
        self.conn = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True)
        # Text is decoded here, row by row: a damaged cell must make its row unreadable, not
        # fail the whole statement as sqlite3's own decoding would.
        self.conn.text_factory = bytes
        # No table holds more rows than the file has bytes over the smallest cell (4): a
        # larger rowid is one of an overwritten cell, never a real one.
        self.rowid_limit = max(path.stat().st_size // 4, 1)

    def close(self) -> None:
        self.conn.close()

    def tables(self) -> set[str]:
        """The tables the schema names (sqlite3.DatabaseError if page 1 is damaged)."""
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {bytes(name).decode(errors="replace") for (name,) in rows}

    def columns(self, table: str) -> set[str]:
        """The names of ``table``'s columns as its schema gives them (none if it cannot)."""
        try:
            rows = self.conn.execute(f"PRAGMA table_info({table})").fetchall()
        except sqlite3.DatabaseError:
            return set()
        return {bytes(row[1]).decode(errors="replace") if isinstance(row[1], bytes) else str(row[1])
                for row in rows}  # fmt: skip

    def last_rowid(self, table: str) -> int | None:
        """The table's largest rowid (0 if it is empty), None if that cannot be read or
        cannot be real."""
        try:
            (last,) = self.conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()
        except sqlite3.DatabaseError:
            return None
        if last is None:
            return 0
        return last if isinstance(last, int) and 0 < last <= self.rowid_limit else None

    def read(
        self, table: Table, start: int = 1, end: int | None = None, *, gapless: bool = True
    ) -> Iterator[Row | Unreadable]:
        """The rows of ``table`` from rowid ``start`` on, in rowid order, with the ranges that
        could not be read between them (adjacent ranges merged).

        ``end``: the last rowid, if the caller knows it. Otherwise reading goes on while rows
        are found, and the table's largest rowid, as SQLite gives it, says only whether the
        table ended where the rows did: if not, how many rows were lost at the end is not
        known. ``gapless``: every rowid up to the end held a row, so a missing one is
        unreadable (not so for ``batches``).
        """
        pending: Unreadable | None = None
        for item in _Walk(self, table, start, end, gapless):
            if isinstance(item, Unreadable):
                if (
                    pending is not None
                    and pending.last is not None
                    and item.first == pending.last + 1
                ):
                    pending = Unreadable(pending.first, item.last)
                    continue
                if pending is not None:
                    yield pending
                pending = item
                continue
            if pending is not None:
                yield pending
                pending = None
            yield item
        if pending is not None:
            yield pending

    def row(self, table: Table, rowid: int) -> Row | None:
        """The row at ``rowid``, if it can be read and holds what its columns hold."""
        item = next(iter(_Walk(self, table, rowid, rowid, gapless=True)), None)
        return None if isinstance(item, Unreadable) else item


class _Walk:
    """One pass over a table; see ``DamagedLog.read``."""

    def __init__(
        self, log: DamagedLog, table: Table, start: int, end: int | None, gapless: bool
    ) -> None:
        self.log = log
        self.start = start
        self.end = end
        self.largest = log.last_rowid(table.name) if end is None else end
        self.gapless = gapless
        columns = ", ".join(column.name for column in table.columns)
        # Whether each value is of its column's type is asked of SQLite, in the statement:
        # checking millions of values in Python took most of a recovery's time.
        holds = " AND ".join(_holds(column) for column in table.columns)
        self.sql = (
            f"SELECT rowid, {columns}, {holds} FROM {table.name} "
            # The LIMIT stops the scan at the window's last row: without it SQLite steps on
            # to the next row to see the range is over, and fails on the next page if that
            # page is the damaged one.
            "WHERE rowid BETWEEN ? AND ? ORDER BY rowid LIMIT ?"
        )
        self.texts = [
            index
            for index, column in enumerate(table.columns, start=1)
            if isinstance(column.type, (String, JSON))
        ]

    def __iter__(self) -> Iterator[Row | Unreadable]:
        low, end = self.start, self.end
        while end is None or low <= end:
            high = low + WINDOW_ROWS - 1 if end is None else min(low + WINDOW_ROWS - 1, end)
            rows = self._fetch(low, high)
            if rows is None:
                failing = self._first_failing(low, high)
                rows = self._fetch(low, failing - 1) if failing > low else []
                items, missing = self._read_from(rows or [], low, failing - 1)
                yield from items
                bad = failing if missing is None else missing
            else:
                items, missing = self._read_from(rows, low, high)
                yield from items
                if missing is None:
                    if not items and self._past_largest(low):
                        return
                    low = high + 1
                    continue
                if self._past_largest(missing) and not _any_after(rows, missing, high):
                    yield from self._tail(missing)  # no row after it: the end, or lost ones
                    return
                bad = missing
            resume = self._next_readable(bad)
            if resume is None:
                yield from self._tail(bad)
                return
            yield Unreadable(bad, resume - 1)
            low = resume

    def _past_largest(self, rowid: int) -> bool:
        return self.end is None and (self.largest is None or rowid > self.largest)

    def _tail(self, first: int) -> Iterator[Unreadable]:
        """Nothing could be read from rowid ``first`` on. Unless the caller knows the end, how
        many rows that was is known only if the table ends right there, where it says: the
        largest rowid it gives otherwise comes from the damage itself."""
        if self.end is not None:
            yield Unreadable(first, self.end)
        elif self.largest is None or first != self.largest + 1:
            yield Unreadable(first, None)

    def _fetch(self, low: int, high: int) -> list[Row] | None:
        try:
            return self.log.conn.execute(self.sql, (low, high, high - low + 1)).fetchall()
        except sqlite3.DatabaseError:
            return None

    def _read_from(
        self, rows: list[Row], low: int, high: int
    ) -> tuple[list[Row | Unreadable], int | None]:
        """The rows read from ``low`` to ``high`` in order, a row whose values cannot be right
        as unreadable; and, in a gapless table, the first rowid missing (an overwritten cell
        can end a scan early, or hide its row), from where the rest is read again."""
        items: list[Row | Unreadable] = []
        expected = low
        for raw in rows:
            rowid = raw[0]
            if not isinstance(rowid, int) or not expected <= rowid <= high:
                continue  # an overwritten cell's rowid: its row is not one of these
            if self.gapless and rowid > expected:
                return items, expected
            items.append(self._values(raw) or Unreadable(rowid, rowid))
            expected = rowid + 1
        if self.gapless and expected <= high:
            return items, expected
        return items, None

    def _readable(self, rowid: int) -> bool:
        rows = self._fetch(rowid, rowid)
        if rows is None:
            return False
        return not self.gapless or any(row[0] == rowid for row in rows)

    def _first_failing(self, low: int, high: int) -> int:
        """The first rowid whose reading fails, given that reading ``low..high`` does: reading
        ``low..x`` fails from that x on (binary search)."""
        readable, failing = low - 1, high
        while failing - readable > 1:
            middle = (readable + failing) // 2
            if self._fetch(low, middle) is None:
                failing = middle
            else:
                readable = middle
        return failing

    def _next_readable(self, bad: int) -> int | None:
        """The first rowid after ``bad`` that reads again, None if none does up to the end.

        Steps that double from ``bad``, then a binary search back: a damaged page costs a few
        dozen statements, not one per row. A readable stretch shorter than the step between
        two damaged ones is counted unreadable with them (lost, and said so).
        """
        limit = self.end if self.end is not None else self.log.rowid_limit
        if self.end is None and self.largest is not None and self.largest > bad:
            limit = self.largest  # so that the last rows are found, however few
        failing, step = bad, 1
        while failing < limit:
            probe = min(failing + step, limit)
            if self._readable(probe):
                while probe - failing > 1:
                    middle = (failing + probe) // 2
                    if self._readable(middle):
                        probe = middle
                    else:
                        failing = middle
                return probe
            failing, step = probe, step * 2
        return None

    def _values(self, raw: Row) -> Row | None:
        """The row without its last column (whether every value is of its column's type), its
        text decoded; None if a value is not what its column holds."""
        if raw[-1] != 1:
            return None
        if not any(raw[index] is not None for index in self.texts):
            return raw[:-1]
        row = list(raw[:-1])
        try:
            for index in self.texts:
                if row[index] is not None:
                    row[index] = row[index].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return tuple(row)


def _any_after(rows: list[Row], rowid: int, high: int) -> bool:
    return any(isinstance(row[0], int) and rowid < row[0] <= high for row in rows)


def _holds(column: Column[Any]) -> str:
    """SQL that is 1 when ``column``'s value is what the schema says it holds."""
    name, kind = column.name, column.type
    if isinstance(kind, Integer):
        test = f"typeof({name}) = 'integer'"
    elif isinstance(kind, LargeBinary):
        test = f"typeof({name}) = 'blob'"
    elif isinstance(kind, JSON):
        test = f"typeof({name}) = 'text' AND json_valid({name})"
    elif isinstance(kind, String):
        test = f"typeof({name}) = 'text'"
    else:
        raise TypeError(f"no check for {name}'s type {kind}")
    return f"({name} IS NULL OR {test})" if column.nullable else f"({test})"
