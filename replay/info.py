"""`scope-replay info`: what a log holds, from its derived store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eventlog.events import Kind
from eventlog.retention import StorageStatus
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


@dataclass(frozen=True)
class ClockOffset:
    """How far ``other_host``'s clock reads ahead of ``host``'s (negative: behind), as the
    median over the connections paired between them (replay.derived.views clock_offsets)."""

    host: str
    other_host: str
    connections: int
    offset_ns: int


@dataclass
class LogInfo:
    location: str
    head: int
    recordings: list[RecordingInfo]
    counts: dict[tuple[int, int], int]  # (recording, kind) -> events
    losses: list[tuple[int, Loss, int]]  # (recording, loss, after position)
    snapshots: dict[int, list[int]]  # recording -> wall times
    storage: StorageStatus | None = None
    offsets: list[ClockOffset] = field(default_factory=list)


def log_info(
    derived: Derived, location: str, events: bool = True, storage: StorageStatus | None = None
) -> LogInfo:
    """What the log holds. ``events``: also its events counted by kind and its snapshots'
    times, and the clock offsets between hosts (each a scan of every event; a timeline needs
    none of them). ``storage``: the live log's and the archive's state, when the caller read
    it."""
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
    offsets = _clock_offsets(derived) if events and _hosts(recordings) > 1 else []
    return LogInfo(location, derived.head, recordings, counts, losses, snapshots, storage, offsets)


def _hosts(recordings: list[RecordingInfo]) -> int:
    return len({r.host for r in recordings})


def _clock_offsets(derived: Derived) -> list[ClockOffset]:
    rows = derived.con.execute(
        "SELECT host, other_host, connections, offset_ns FROM clock_offsets"
    ).fetchall()
    return [ClockOffset(str(h), str(o), int(n), int(ns)) for h, o, n, ns in rows]


def _signed_duration(ns: int) -> str:
    return ("-" if ns < 0 else "+") + format_duration(abs(ns))


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
    if info.offsets:
        offset_rows = [
            [o.host, o.other_host, o.connections, _signed_duration(o.offset_ns)]
            for o in info.offsets
        ]
        parts.append(
            "\n"
            + to_table(["host", "other host", "paired connections", "other's clock ahead by"],
                       offset_rows)
        )  # fmt: skip
    if info.storage is not None:
        storage = _storage_document(info.storage)
        parts.append(
            "\n" + to_table(["storage", "value"], [[k, _text(v)] for k, v in storage.items()])
        )
    return "".join(parts)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _storage_document(status: StorageStatus) -> dict[str, Any]:
    """The live log, the archive, the retention in force and the last commit."""
    policy = status.policy or {}
    retain = policy.get("retain_ns")
    live = status.live_positions
    return {
        "live_log_bytes": status.live_file_bytes
        if status.live_file_bytes is not None
        else status.live_bytes,
        "live_rows_bytes": status.live_bytes,
        "live_positions": f"{live[0]}..{live[1]}" if live else None,
        # The setting in force: a directory, none (dropped: eventlog.seed), or none yet.
        "archive": str(status.archive)
        if status.archive
        else ("none" if status.dropped_wall_ns is not None else None),
        "dropped_to": format_ns(status.dropped_wall_ns) if status.dropped_wall_ns else None,
        "archive_bytes": status.archive_bytes,
        "archive_segments": status.archive_segments,
        "archived_upto_position": status.archived_upto,
        "archive_from": format_ns(status.archive_wall[0]) if status.archive_wall else None,
        "archive_to": format_ns(status.archive_wall[1]) if status.archive_wall else None,
        "retain": format_duration(retain) if retain else None,
        "max_log_bytes": policy.get("max_log_bytes"),
        "retention_archive": policy.get("archive"),
        "last_commit": format_ns(status.last_commit_wall_ns),
    }


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
        "clock_offsets": [
            {
                "host": o.host,
                "other_host": o.other_host,
                "connections": o.connections,
                "offset_ns": o.offset_ns,
            }
            for o in info.offsets
        ],
        "storage": _storage_document(info.storage) if info.storage else None,
    }
