"""`scope-replay info`: what a log holds, from its derived store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eventlog.events import Kind
from eventlog.timefmt import format_ns
from replay.derived.store import Derived
from replay.output import to_json, to_table
from replay.table import Loss
from replay.timespec import format_duration


@dataclass(frozen=True)
class RecordingInfo:
    id: int
    host: str
    mode: str
    kernel: str | None
    version: str
    started_ns: int
    ended_ns: int  # its stop, else its last committed batch, else its start
    stop_reason: str | None
    stop_detail: str | None
    conntrack: str | None
    counters: dict[str, Any] | None
    # How its capture programs were held (scope-record --pin): pinned, adopted from an
    # earlier recorder, versions replaced. None when not pinned.
    pinning: dict[str, Any] | None = None

    @property
    def mode_text(self) -> str:
        if not self.pinning:
            return self.mode
        return f"{self.mode} ({'adopted' if self.pinning.get('adopted') else 'pinned'})"


@dataclass
class LogInfo:
    location: str
    head: int
    recordings: list[RecordingInfo]
    counts: dict[tuple[int, int], int]  # (recording, kind) -> events
    losses: list[tuple[int, Loss, int]]  # (recording, loss, after position)
    snapshots: dict[int, list[int]]  # recording -> wall times


def log_info(derived: Derived, location: str, events: bool = True) -> LogInfo:
    """What the log holds. ``events``: also its events counted by kind and its snapshots'
    times (each a scan of every event; a timeline needs neither)."""
    con = derived.con
    recordings = [
        RecordingInfo(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
            json.loads(row[10]) if row[10] else None, json.loads(row[11]) if row[11] else None,
        )
        for row in con.execute(
            "SELECT id, host, mode, kernel, version, started_wall_ns, ended_wall_ns, stop_reason, "
            "stop_detail, conntrack, counters, json_extract(options, '$.pinning') "
            "FROM recordings_raw ORDER BY id"
        ).fetchall()
    ]  # fmt: skip
    counts: dict[tuple[int, int], int] = {}
    snapshots: dict[int, list[int]] = {}
    if events:
        counts = {
            (int(r), int(k)): int(n)
            for r, k, n in con.execute(
                "SELECT recording_id, kind, count(*) FROM ev GROUP BY ALL ORDER BY ALL"
            ).fetchall()
        }
        for recording, wall in con.execute(
            "SELECT recording_id, wall_ns FROM ev "
            f"WHERE kind = {int(Kind.SNAPSHOT)} ORDER BY position"
        ).fetchall():
            snapshots.setdefault(int(recording), []).append(int(wall))
    losses = [
        (int(r), Loss(lost, first, last, reason), int(after))
        for r, lost, first, last, reason, after in con.execute(
            "SELECT recording_id, lost, first_wall_ns, last_wall_ns, reason, after_position "
            "FROM losses_raw ORDER BY id"
        ).fetchall()
    ]
    return LogInfo(location, derived.head, recordings, counts, losses, snapshots)


def _stop(recording: RecordingInfo) -> str:
    if recording.stop_reason is None:
        return "running (or ended without closing)"
    detail = f": {recording.stop_detail}" if recording.stop_detail else ""
    return recording.stop_reason + detail


def render(info: LogInfo, fmt: str) -> str:
    if fmt == "json":
        return to_json(document(info))
    parts = [f"log {info.location}: {info.head} events\n"]
    rows = [
        [r.id, r.host, r.mode_text, format_ns(r.started_ns), format_ns(r.ended_ns),
         format_duration(r.ended_ns - r.started_ns), _stop(r)]
        for r in info.recordings
    ]  # fmt: skip
    parts.append(to_table(["recording", "host", "mode", "started", "ended", "span", "stop"], rows))
    count_rows = [
        [recording, Kind(kind).name.lower(), count]
        for (recording, kind), count in sorted(info.counts.items())
    ]
    parts.append("\n" + to_table(["recording", "kind", "events"], count_rows))
    loss_rows = [
        [recording, loss.lost, format_ns(loss.first_wall_ns), format_ns(loss.last_wall_ns),
         loss.reason]
        for recording, loss, _ in info.losses
    ]  # fmt: skip
    parts.append(
        "\n" + to_table(["recording", "lost", "from", "to", "reason"], loss_rows, "(no losses)")
    )
    snap_rows = []
    for recording, times in sorted(info.snapshots.items()):
        shown = ", ".join(format_ns(t) for t in times[:3]) + (" ..." if len(times) > 3 else "")
        snap_rows.append([recording, len(times), shown])
    parts.append("\n" + to_table(["recording", "snapshots", "at"], snap_rows))
    return "".join(parts)


def document(info: LogInfo) -> dict[str, Any]:
    return {
        "log": info.location,
        "events": info.head,
        "recordings": [
            {
                "id": r.id,
                "host": r.host,
                "mode": r.mode,
                "kernel": r.kernel,
                "version": r.version,
                "started": format_ns(r.started_ns),
                "ended": format_ns(r.ended_ns),
                "stop_reason": r.stop_reason,
                "stop_detail": r.stop_detail,
                "conntrack": r.conntrack,
                "counters": r.counters,
                "pinning": r.pinning,
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
                "recording": recording,
                "lost": loss.lost,
                "from": format_ns(loss.first_wall_ns),
                "to": format_ns(loss.last_wall_ns),
                "reason": loss.reason,
                "after_position": after,
            }
            for recording, loss, after in info.losses
        ],
    }
