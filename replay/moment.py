"""The moment a user means (``--at``, ``--window``), resolved against the log's extent."""

from __future__ import annotations

from dataclasses import dataclass

from eventlog.errors import UsageError
from eventlog.recordings import STOP_CRASHED, STOP_DURATION, STOP_ERROR, STOP_SIGNAL
from eventlog.timefmt import format_ns
from replay.derived.store import Derived
from replay.timespec import LogSpan, check_inside, parse_duration, parse_moment


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
    moment = Moment(at_ns, parse_duration(window_text, "window"), at_text)
    check_kept(derived, moment.start_ns, f"{at_text} ({format_ns(at_ns)}) with its window")
    return moment


def check_kept(derived: Derived, from_ns: int, what: str) -> None:
    """Refuse what would read history the log dropped (``--archive none``, eventlog.seed):
    an answer from what is left of it would be wrong, not short. What reads from ``from_ns``
    on is answered as the uncut log answered it once ``from_ns`` is after the newest event
    dropped (every interval that ended in the dropped history ended by then)."""
    dropped = derived.dropped_wall_ns
    if dropped is not None and from_ns <= dropped:
        raise UsageError(
            f"{what} reads the log's history up to {format_ns(dropped)}, which was dropped "
            "(--archive none): ask for a later moment (or a shorter window)"
        )


# A recording that adopted pinned capture programs holds what they captured while no recorder
# ran: it covers the host from its predecessor's last read, before it started itself.
COVERS_FROM = (
    "least(started_wall_ns, coalesce(TRY_CAST(json_extract(options, "
    "'$.pinning.covers_from_wall_ns') AS BIGINT), started_wall_ns))"
)

_STOPS = {  # a recording's stop reason, as said of a gap after it
    STOP_CRASHED: "its recorder crashed",
    STOP_ERROR: "stopped on an error",
    STOP_SIGNAL: "stopped by a signal",
    STOP_DURATION: "its duration was over",
}


def uncovered(derived: Derived, at_ns: int) -> list[str]:
    """For each host that has recordings but none running at ``at_ns``, what the log knows
    around that moment: it holds nothing of the host then, which is not a quiet moment."""
    rows = derived.con.execute(
        f"SELECT id, host, {COVERS_FROM}, ended_wall_ns, stop_reason FROM recordings_raw "
        "ORDER BY host, started_wall_ns, id"
    ).fetchall()
    hosts: dict[str, list[tuple[int, int, int, str | None]]] = {}
    for recording, host, started, ended, reason in rows:
        hosts.setdefault(host, []).append((recording, started, ended, reason))
    notes = []
    for host, recordings in hosts.items():
        if any(started <= at_ns <= ended for _, started, ended, _ in recordings):
            continue
        before = [r for r in recordings if r[2] < at_ns]
        after = [r for r in recordings if r[1] > at_ns]
        around = []
        if before:
            recording, _, ended, reason = max(before, key=lambda r: (r[2], r[0]))
            how = f" ({_STOPS.get(reason, reason)})" if reason else ""
            around.append(f"recording {recording} ended at {format_ns(ended)}{how}")
        if after:
            recording, started, _, _ = min(after, key=lambda r: (r[1], r[0]))
            around.append(f"recording {recording} began at {format_ns(started)}")
        notes.append(
            f"no recording of host {host} covers {format_ns(at_ns)}: {' and '.join(around)}; "
            "the log holds nothing of that host then"
        )
    return notes
