"""Damaging a real SQLite log as a disk can: bytes overwritten inside one page of one table.

Which pages hold a table comes from SQLite's ``dbstat`` table (in key order: its paths sort
as the b-tree does), so a test damages the page it means and knows which rows were on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from tests.capabilities import require

PAGE_HEADER = 0  # an offset inside a page: its header and cell pointers (SQLite says malformed)


class Page(NamedTuple):
    number: int
    kind: str  # "leaf", "internal", "overflow"
    cells: int
    path: str  # "/" for the root, "/000/" for its first child, ...


def table_pages(db: Path, table: str) -> list[Page]:
    """The pages of ``table`` in key order (a leaf's rows follow the leaves before it)."""
    uri = f"file:{quote(str(db))}?immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        try:
            rows = conn.execute(
                "SELECT pageno, pagetype, ncell, path FROM dbstat WHERE name = ? ORDER BY path",
                (table,),
            ).fetchall()
        except sqlite3.OperationalError:
            rows = None
    require(rows is not None, "SQLite's dbstat table (SQLITE_ENABLE_DBSTAT_VTAB)")
    assert rows
    return [Page(*row) for row in rows]


def middle_leaf(db: Path, table: str) -> tuple[Page, range]:
    """A leaf of ``table`` with leaves on both sides, and the rowids it holds (the table's
    rowids run from 1 without a gap)."""
    leaves = [page for page in table_pages(db, table) if page.kind == "leaf"]
    assert len(leaves) >= 3, f"{table} has {len(leaves)} leaves: too few to damage the middle one"
    index = len(leaves) // 2
    first = sum(page.cells for page in leaves[:index]) + 1
    return leaves[index], range(first, first + leaves[index].cells)


def overwrite(db: Path, page: Page, offset: int = PAGE_HEADER, size: int = 256) -> None:
    """Overwrite ``size`` bytes at ``offset`` inside ``page`` with a pattern no page holds."""
    page_size = int.from_bytes(db.read_bytes()[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size  # how the header writes 64 KiB
    assert offset + size <= page_size
    with db.open("r+b") as handle:
        handle.seek((page.number - 1) * page_size + offset)
        handle.write(b"\xa5" * size)
