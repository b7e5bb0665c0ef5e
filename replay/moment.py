"""The moment a user means (``--at``, ``--window``), resolved against the log's extent."""

from __future__ import annotations

from dataclasses import dataclass

from replay.derived.store import Derived
from replay.timespec import LogSpan, check_inside, parse_duration, parse_moment

DEFAULT_WINDOW = "15s"


@dataclass(frozen=True)
class Moment:
    """A resolved ``--at``/``--window`` pair: the window is (at - window, at]."""

    at_ns: int
    window_ns: int
    text: str

    @property
    def start_ns(self) -> int:
        return self.at_ns - self.window_ns


def log_span(derived: Derived) -> LogSpan | None:
    """From the first recording's start (or first event) to the last stop (or last event)."""
    row = derived.con.execute(
        "SELECT (SELECT min(min_wall_ns) FROM batches), (SELECT max(max_wall_ns) FROM batches), "
        "(SELECT min(started_wall_ns) FROM recordings_raw), "
        "(SELECT max(stopped_wall_ns) FROM recordings_raw)"
    ).fetchall()[0]
    first_event, last_event, first_start, last_stop = row
    if first_event is None:
        return None
    start = min(v for v in (first_event, first_start) if v is not None)
    end = max(v for v in (last_event, last_stop) if v is not None)
    return LogSpan(int(start), int(end))


def resolve_moment(derived: Derived, at_text: str, window_text: str) -> Moment:
    span = log_span(derived)
    at_ns = parse_moment(at_text, span)
    check_inside(at_ns, span, at_text)
    return Moment(at_ns, parse_duration(window_text, "window"), at_text)
