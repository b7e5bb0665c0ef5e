"""Moments as every command prints them: RFC 3339 in UTC with nanoseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache


def format_ns(ns: int | None) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2026-11-25T12:00:00.123456789Z``."""
    if ns is None:
        return ""
    seconds, nanos = divmod(ns, 1_000_000_000)
    whole = _format_second(seconds)
    if whole is None:  # a moment a user computed far outside any log
        return f"{ns}ns since the epoch"
    return f"{whole}.{nanos:09d}Z"


@lru_cache(maxsize=4096)  # a table's times fall in few seconds: format each one once
def _format_second(seconds: int) -> str | None:
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    except OverflowError:
        return None
    return f"{moment:%Y-%m-%dT%H:%M:%S}"
