"""Moments and durations as users write them, and as replay prints them.

Moments (``--at``): RFC 3339 (``2026-11-25T12:00:00.123Z``; without a zone it is UTC), Unix
seconds (``1764072000`` or ``1764072000.25``), Unix nanoseconds (16 digits or more), or an
offset from the end of the log (``-30s``, ``-5m``) or from its start (``+10s``).
Durations (``--window``): ``15s``, ``500ms``, ``2m``, ``1h``, ``0``; a bare number is seconds.
All times are integer nanoseconds since the Unix epoch; nothing here reads a clock.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from eventlog.errors import UsageError
from eventlog.timefmt import format_ns

DEFAULT_WINDOW = "15s"  # what --window is when not given

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_OFFSET = re.compile(r"^\s*([+-])\s*(\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|s|m|h|d)?)\s*$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)
_NS_DIGITS = 16  # an integer this long is nanoseconds; shorter ones are seconds
LONGEST_NS = 100 * 365 * 86_400 * 1_000_000_000  # keeps every sum inside 64-bit integers
LATEST_NS = 253_402_300_799_999_999_999  # 9999-12-31T23:59:59.999999999Z, as far as we print


@dataclass(frozen=True)
class LogSpan:
    """The wall-time range a log covers, for offsets and range checks."""

    start_ns: int
    end_ns: int


def parse_duration(text: str, what: str = "duration") -> int:
    match = _DURATION.match(text)
    if not match:
        raise UsageError(
            f"invalid {what} {text!r}: use a number and a unit, e.g. 15s, 500ms, 2m, 1h"
        )
    number, unit = match.groups()
    value = _scaled(number, _UNITS_NS[unit or "s"])
    if value > LONGEST_NS:
        raise UsageError(f"invalid {what} {text!r}: longer than 100 years")
    return value


def _scaled(number: str, unit_ns: int) -> int:
    whole, _, fraction = number.partition(".")
    value = int(whole) * unit_ns
    if fraction:
        value += int(fraction.ljust(18, "0")[:18]) * unit_ns // 10**18
    return value


def parse_moment(text: str, span: LogSpan | None = None) -> int:
    """Nanoseconds since the epoch for ``text``; offsets need the log's ``span``."""
    raw = text.strip()
    offset = _OFFSET.match(raw)
    if offset and not raw.lstrip("+-").replace(".", "").isdigit():
        sign, amount = offset.groups()
        delta = parse_duration(amount, "offset")
        if span is None:
            raise UsageError(f"{text!r} is relative to the log, which has no events")
        return span.end_ns - delta if sign == "-" else span.start_ns + delta
    if re.fullmatch(r"\d+", raw):
        moment = int(raw) if len(raw) >= _NS_DIGITS else int(raw) * 1_000_000_000
    elif re.fullmatch(r"\d+\.\d+", raw):
        moment = _scaled(raw, 1_000_000_000)
    else:
        return _parse_rfc3339(text)
    if moment > LATEST_NS:
        raise UsageError(f"invalid time {text!r}: after the year 9999")
    return moment


def _parse_rfc3339(text: str) -> int:
    match = _RFC3339.match(text.strip())
    if not match:
        raise UsageError(
            f"invalid time {text!r}: use RFC 3339 (2026-11-25T12:00:00.5Z), Unix seconds or "
            "nanoseconds, or an offset like -30s (from the end) or +10s (from the start)"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError as exc:
        raise UsageError(f"invalid time {text!r}: {exc}") from exc
    # In whole seconds, not datetime's arithmetic: an offset from the first or the last
    # day datetime knows would leave its range.
    seconds = calendar.timegm(moment.timetuple())
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise UsageError(f"invalid time {text!r}: the zone offset {zone} is not a time of day")
        seconds -= sign * (hours * 3600 + minutes * 60)
    nanos = int((fraction or "").ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def check_inside(moment_ns: int, span: LogSpan | None, text: str) -> None:
    if span is None:
        raise UsageError("the log holds no events yet")
    if moment_ns < span.start_ns or moment_ns > span.end_ns:
        raise UsageError(
            f"{text} ({format_ns(moment_ns)}) is outside the log, which covers "
            f"{format_ns(span.start_ns)} to {format_ns(span.end_ns)}"
        )


def format_duration(ns: int | None) -> str:
    if ns is None:
        return ""
    if ns == 0:
        return "0s"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.3f}ms"
    return f"{ns / 1_000_000_000:.3f}s"
