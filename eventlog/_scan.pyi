"""Columns of the log's rows, read by threads without the GIL (see eventlog/scan.py)."""

from collections.abc import Sequence
from typing import Any

# Per column: (nulls, validity, int64 values) for 'i'; (nulls, validity, offsets, bytes) for 'b'.
# Each buffer is (address, size, owner): the memory lives as long as ``owner`` (None if empty).
Column = tuple[Any, ...]

sqlite_version: str

class ScanError(Exception): ...

def soft_heap_limit() -> int: ...
def scan(
    path: str,
    sql: str,
    types: str,
    ranges: Sequence[tuple[int, int]],
    threads: int,
    busy_timeout_ms: int,
) -> list[tuple[int, list[Column]]]: ...
