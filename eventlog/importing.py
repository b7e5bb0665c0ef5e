"""`scope-replay db import SRC --db DST`: every recording of one log appended to another.

Logs copied from the hosts of an incident combine into one, on a laptop, without a server.
Each recording is known in any log by its identity (``recording_identity``: its host, boot,
recorder and start, which no two recordings share), so an import is idempotent: a recording
DST already holds whole is left alone, one it holds a part of (an import that was stopped, or
a recording that went on in SRC since) is carried on from where DST's copy ends.

What a recording is made of is copied as the recorder wrote it: the recording's row, its clock
samples (so every event keeps its wall time), its events with their snapshots, and its loss
records, each after the event it followed. Positions are DST's own: appended after whatever
DST holds, in SRC's order, through the appender every recorder uses (one transaction per
batch, so a stop loses at most the batch being written, which the next import writes again).
SRC is only read. Replay of DST gives, for an imported recording, what replay of SRC gave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, null, select, update

from eventlog import schema
from eventlog.clock import ClockModel
from eventlog.errors import UsageError
from eventlog.events import ClockSample, Event, Kind, LoggedEvent, Loss
from eventlog.location import LogLocation
from eventlog.reader import LogReader, LossRecord, Recording
from eventlog.store import LogStore, Purpose, open_log
from eventlog.writer import LogWriter

BATCH_EVENTS = 50_000
# What of a recording's row changes while it records (and so is brought up to date).
_PROGRESS_COLUMNS = (
    "last_mono_ns", "stopped_mono_ns", "stop_reason", "stop_detail", "conntrack", "counters",
)  # fmt: skip


@dataclass
class ImportedRecording:
    identity: str
    host_id: str
    source_id: int
    target_id: int
    events: int = 0  # appended by this import
    already: int = 0  # held by DST before it


@dataclass
class ImportReport:
    source: str
    target: str
    recordings: list[ImportedRecording] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.recordings)

    def document(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "log": self.target,
            "events": self.events,
            "recordings": [vars(r) for r in self.recordings],
        }


def import_log(source: LogLocation, target: LogLocation) -> ImportReport:
    """Append every recording of ``source`` that ``target`` lacks (or lacks a part of)."""
    if source.text == target.text or (source.path is not None and source.path == target.path):
        raise UsageError("db import: SRC and --db are the same log")
    with open_log(source, Purpose.READ) as src, open_log(target, Purpose.RECORD) as dst:
        reader = LogReader(src)
        try:
            archived = reader.boundary().archived_upto
            if archived:
                raise UsageError(
                    f"db import: {source.display()} has moved events up to position {archived} "
                    "to its archive, and import reads the live log only: import it into the "
                    "combined log before its retention cuts, or export the range"
                )
            return _Import(reader, dst, ImportReport(source.display(), target.display())).run()
        finally:
            reader.close()


class _Import:
    def __init__(self, reader: LogReader, dst: LogStore, report: ImportReport) -> None:
        self.reader = reader
        self.dst = dst
        self.report = report
        self.writers: dict[int, LogWriter] = {}  # source recording id -> its DST writer
        self.skip: dict[int, int] = {}  # source recording id -> events DST holds already
        self.losses: dict[int, list[LossRecord]] = {}  # source recording id -> still to write

    def run(self) -> ImportReport:
        held = _held_recordings(self.dst)
        losses = self.reader.losses()
        for recording in self.reader.recordings():
            self._begin(
                recording, held, [loss for loss in losses if loss.recording_id == recording.id]
            )
        try:
            self._copy_events()
            for source_id, writer in self.writers.items():
                self._write_losses(source_id, writer, None)
                writer.flush()
            self._bring_rows_up_to_date()
        finally:
            for writer in self.writers.values():
                writer.close()
        return self.report

    def _begin(self, recording: Recording, held: dict[str, int], losses: list[LossRecord]) -> None:
        identity = recording.identity
        target_id = held.get(identity)
        samples = _clock_samples(self.reader, recording.id)
        if target_id is None:
            target_id = _insert_recording(self.dst, recording)
            already, losses_held = 0, 0
            new_samples = samples
        else:
            already, losses_held = _held_counts(self.dst, target_id)
            known = {s.mono_ns for s in _clock_samples_of(self.dst, target_id)}
            new_samples = [s for s in samples if s.mono_ns not in known]
        item = ImportedRecording(identity, recording.host_id, recording.id, target_id, 0, already)
        self.report.recordings.append(item)
        writer = LogWriter(self.dst, target_id, ClockModel(samples), max_events=BATCH_EVENTS)
        for sample in new_samples:  # stored with the first batch; the model has them all
            writer.add_clock_sample(sample)
        self.writers[recording.id] = writer
        self.skip[recording.id] = already
        self.losses[recording.id] = sorted(losses, key=lambda loss: (loss.after_position, loss.id))[
            losses_held:
        ]

    def _copy_events(self) -> None:
        by_id = {r.source_id: r for r in self.report.recordings}
        current: LogWriter | None = None
        for event in self.reader.events():
            writer = self.writers[event.recording_id]
            if writer is not current:
                # One writer's batch at a time, so DST's positions run in SRC's order.
                if current is not None:
                    current.flush()
                current = writer
            if self.skip[event.recording_id] > 0:
                self.skip[event.recording_id] -= 1
                continue
            self._write_losses(event.recording_id, writer, event.position)
            if event.kind == Kind.SNAPSHOT:
                writer.add_snapshot(_event(event), self.reader.snapshot(event.position))
            else:
                writer.add(_event(event))
            by_id[event.recording_id].events += 1
            if writer.pending_events >= BATCH_EVENTS:
                writer.flush()

    def _write_losses(self, source_id: int, writer: LogWriter, before: int | None) -> None:
        """The recording's loss records that came before source position ``before`` (all
        that are left: None), each after the event it followed in SRC."""
        pending = self.losses[source_id]
        while pending and (before is None or pending[0].after_position < before):
            loss = pending.pop(0)
            writer.flush()  # a loss follows the events committed before it
            writer.add_loss(Loss(loss.lost, loss.first_mono_ns, loss.last_mono_ns, loss.reason))
            writer.flush()

    def _bring_rows_up_to_date(self) -> None:
        rows = {r.id: r for r in self.reader.recordings()}
        with self.dst.connect() as conn:
            for item in self.report.recordings:
                recording = rows[item.source_id]
                values = _row_values(recording, _PROGRESS_COLUMNS)
                conn.execute(
                    update(schema.recordings)
                    .where(schema.recordings.c.id == item.target_id)
                    .values(**values)
                )
            conn.commit()


def _event(event: LoggedEvent) -> Event:
    return Event(
        event.kind, event.mono_ns, event.pid, event.comm, event.netns, event.laddr,
        event.lport, event.raddr, event.rport, event.sock_id, event.bytes_sent,
        event.bytes_received, event.extra,
    )  # fmt: skip


def _row_values(recording: Recording, names: Iterable[str]) -> dict[str, Any]:
    """Columns of a recording's row as SRC holds them: a JSON column SRC left NULL stays NULL
    (not the JSON document ``null``, which reads back as something)."""
    values = {name: getattr(recording, name) for name in names}
    return {name: null() if value is None else value for name, value in values.items()}


def _held_recordings(store: LogStore) -> dict[str, int]:
    """DST's recordings by identity."""
    reader = LogReader(store)
    try:
        return {r.identity: r.id for r in reader.recordings()}
    finally:
        reader.close()


def _held_counts(store: LogStore, recording_id: int) -> tuple[int, int]:
    """How many events and loss records of a recording a log holds."""
    with store.connect() as conn:
        events = conn.execute(
            select(func.count()).where(schema.events.c.recording_id == recording_id)
        ).scalar_one()
        losses = conn.execute(
            select(func.count()).where(schema.losses.c.recording_id == recording_id)
        ).scalar_one()
    return int(events), int(losses)


def _clock_samples(reader: LogReader, recording_id: int) -> list[ClockSample]:
    return _clock_samples_of(reader.store, recording_id)


def _clock_samples_of(store: LogStore, recording_id: int) -> list[ClockSample]:
    samples = schema.clock_samples
    with store.connect() as conn:
        rows = conn.execute(
            select(samples.c.mono_ns, samples.c.offset_ns, samples.c.uncertainty_ns)
            .where(samples.c.recording_id == recording_id)
            .order_by(samples.c.mono_ns)
        ).all()
    return [ClockSample(int(m), int(o), int(u)) for m, o, u in rows]


def _insert_recording(store: LogStore, recording: Recording) -> int:
    """The recording's row in DST, as it was when it began (brought up to date at the end:
    until then, an import that stops leaves it open, as a recorder that stops would)."""
    names = [n for n in Recording.__dataclass_fields__ if n not in ("id", *_PROGRESS_COLUMNS)]
    columns = _row_values(recording, names)
    columns["last_mono_ns"] = recording.started_mono_ns
    with store.connect() as conn:
        target_id = conn.execute(
            insert(schema.recordings).values(**columns).returning(schema.recordings.c.id)
        ).scalar_one()
        conn.commit()
    return int(target_id)
