"""Printing rows as a table, JSON or CSV: one place, the same for every command."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

# One encoder for every item (json.dumps with options builds a new one per call).
_ITEM_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def to_json(document: Any) -> str:
    """Deterministic JSON: keys in the order built, no floats' noise, trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_json_listing(head: dict[str, Any], key: str, items: list[dict[str, Any]]) -> str:
    """A JSON object whose ``key`` holds a long list: one compact item per line.

    Readable in a diff, and fast: the C encoder does each item (it is not used with indent).
    """
    lines = ["{"]
    lines.extend(
        f"  {json.dumps(name)}: {json.dumps(value, ensure_ascii=False)},"
        for name, value in head.items()
    )
    if not items:
        lines.append(f"  {json.dumps(key)}: []")
    else:
        lines.append(f"  {json.dumps(key)}: [")
        encoded = list(map(_ITEM_ENCODER.encode, items))
        lines.extend(f"    {text}," for text in encoded[:-1])
        lines.append(f"    {encoded[-1]}")
        lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


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


# A row is one line: what a value holds on several lines (a process's cgroup file, with a
# line per hierarchy) is written as escapes.
_ONE_LINE = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value).translate(_ONE_LINE)
    return str(value).translate(_ONE_LINE)
