"""Printing rows as a table, JSON or CSV: one place, the same for every command."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any


def to_json(document: Any) -> str:
    """Deterministic JSON: keys in the order built, no floats' noise, trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if value is None else _cell(value) for value in row])
    return buffer.getvalue()


def to_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> str:
    """Left-aligned columns separated by two spaces, headed by the column names."""
    cells = [[_cell(value) for value in row] for row in rows]
    if not cells:
        return "  ".join(columns) + "\n" + empty + "\n"
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)
