"""`scope-replay info`: what a log holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventlog.events import Kind
from eventlog.reader import LogReader, LossRecord, Recording
from eventlog.store import LogStore
from replay import checkpoints
from replay.output import to_json, to_table
from replay.timespec import format_duration, format_ns


@dataclass
class LogInfo:
    location: str
    head: int
    recordings: list[Recording]
    end_ns: dict[int, int]  # recording -> wall time of its last event (or its stop)
    counts: dict[tuple[int, int], int]
    losses: list[LossRecord]
    snapshots: dict[int, list[int]]  # recording -> wall times
    checkpoints: int


def log_info(store: LogStore) -> LogInfo:
    reader = LogReader(store)
    recordings = reader.recordings()
    end_ns = {}
    for recording in recordings:
        clock = reader.clock(recording.id)
        last = recording.stopped_mono_ns or recording.last_mono_ns or recording.started_mono_ns
        end_ns[recording.id] = clock.wall_ns(last) if len(clock) else recording.started_wall_ns
    snapshots: dict[int, list[int]] = {}
    for event in reader.events_of_kind(Kind.SNAPSHOT):
        snapshots.setdefault(event.recording_id, []).append(event.wall_ns)
    return LogInfo(
        location=store.location.display(),
        head=reader.head(),
        recordings=recordings,
        end_ns=end_ns,
        counts=reader.event_counts(),
        losses=reader.losses(),
        snapshots=snapshots,
        checkpoints=checkpoints.count(store),
    )


def _stop(recording: Recording) -> str:
    if recording.stop_reason is None:
        return "running (or ended without closing)"
    return recording.stop_reason + (f": {recording.stop_detail}" if recording.stop_detail else "")


def render(info: LogInfo, fmt: str) -> str:
    if fmt == "json":
        return to_json(_document(info))
    parts = [f"log {info.location}: {info.head} events, {info.checkpoints} checkpoints\n"]
    rows = []
    for r in info.recordings:
        rows.append(
            [r.id, r.host_id, r.mode, format_ns(r.started_wall_ns), format_ns(info.end_ns[r.id]),
             format_duration(info.end_ns[r.id] - r.started_wall_ns), _stop(r)]
        )  # fmt: skip
    parts.append(to_table(["recording", "host", "mode", "started", "ended", "span", "stop"], rows))
    count_rows = [
        [recording, Kind(kind).name.lower(), count]
        for (recording, kind), count in sorted(info.counts.items())
    ]
    parts.append("\n" + to_table(["recording", "kind", "events"], count_rows))
    loss_rows = [
        [
            loss.recording_id,
            loss.lost,
            format_ns(loss.first_wall_ns),
            format_ns(loss.last_wall_ns),
            loss.reason,
        ]
        for loss in info.losses
    ]
    parts.append(
        "\n" + to_table(["recording", "lost", "from", "to", "reason"], loss_rows, "(no losses)")
    )
    snap_rows = []
    for recording, times in sorted(info.snapshots.items()):
        shown = ", ".join(format_ns(t) for t in times[:3]) + (" ..." if len(times) > 3 else "")
        snap_rows.append([recording, len(times), shown])
    parts.append("\n" + to_table(["recording", "snapshots", "at"], snap_rows))
    return "".join(parts)


def _document(info: LogInfo) -> dict[str, Any]:
    return {
        "log": info.location,
        "events": info.head,
        "checkpoints": info.checkpoints,
        "recordings": [
            {
                "id": r.id,
                "host": r.host_id,
                "mode": r.mode,
                "kernel": r.kernel_release,
                "version": r.tool_version,
                "started": format_ns(r.started_wall_ns),
                "ended": format_ns(info.end_ns[r.id]),
                "stop_reason": r.stop_reason,
                "stop_detail": r.stop_detail,
                "conntrack": r.conntrack,
                "counters": r.counters,
                "events": {
                    Kind(kind).name.lower(): count
                    for (recording, kind), count in sorted(info.counts.items())
                    if recording == r.id
                },
                "snapshots": [format_ns(t) for t in info.snapshots.get(r.id, [])],
            }
            for r in info.recordings
        ],
        "losses": [
            {
                "recording": loss.recording_id,
                "lost": loss.lost,
                "from": format_ns(loss.first_wall_ns),
                "to": format_ns(loss.last_wall_ns),
                "reason": loss.reason,
                "after_position": loss.after_position,
            }
            for loss in info.losses
        ],
    }
