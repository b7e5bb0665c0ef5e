"""The log writer: buffers what capture hands it and commits it in batches.

A batch is committed when it holds ``max_events`` events or its oldest pending item is
``max_age_ns`` old, whichever comes first, and always on ``flush()``. ``flush`` returns only
after the transaction committed (with SQLite's default ``synchronous=FULL``, after fsync), so
``committed_events`` is what survives a crash of the recorder; a crash loses at most what was
pending, never what was acknowledged.

A batch whose commit failed is kept as it was and committed again, alone, before anything
that came after it: a central store that went away may have committed it all the same
before the connection broke, and its appender then finds it there instead of writing it
twice (eventlog.postgres).
"""

from __future__ import annotations

from typing import Protocol

from eventlog import native
from eventlog.batch import AppendResult, Batch
from eventlog.clock import ClockModel, monotonic_ns
from eventlog.events import ClockSample, Event, Loss, Snapshot
from eventlog.snapshots import KEY_EVERY, SnapshotEncoder
from eventlog.sqlite import SqliteAppender
from eventlog.store import LogStore

DEFAULT_MAX_BATCH_EVENTS = 50_000
DEFAULT_MAX_AGE_NS = 200_000_000


class Appender(Protocol):
    """A backend's way of committing one batch in one transaction."""

    def append(
        self,
        recording_id: int,
        batch: Batch,
        clock: ClockModel,
        snapshots: SnapshotEncoder | None = None,
    ) -> AppendResult: ...

    def close(self) -> None: ...


def make_appender(store: LogStore) -> Appender:
    if store.dialect == "sqlite":
        return SqliteAppender(store)
    # Imported here: its driver costs a long-running recorder of a SQLite log ~9 MB.
    from eventlog.postgres import PostgresAppender  # noqa: PLC0415

    return PostgresAppender(store)


class LogWriter:
    """Appends one recording's events, snapshots, losses and clock samples to a log."""

    def __init__(
        self,
        store: LogStore,
        recording_id: int,
        clock: ClockModel,
        *,
        max_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_age_ns: int = DEFAULT_MAX_AGE_NS,
        snapshot_key_every: int = KEY_EVERY,
    ) -> None:
        self.recording_id = recording_id
        self.clock = clock
        self.max_events = max_events
        self.max_age_ns = max_age_ns
        self.committed_events = 0
        self.committed_batches = 0
        self.last_position = 0
        self._appender = make_appender(store)
        self._snapshots = SnapshotEncoder(snapshot_key_every)
        self._pending = Batch()
        self._pending_count = 0  # positions the pending batch takes
        self._pending_since: int | None = None
        self._failed: Batch | None = None  # a batch whose commit failed: committed again first
        self._failed_count = 0

    # -- buffering -------------------------------------------------------------------------
    def add(self, event: Event) -> None:
        self._touch()
        self._pending.events.append(event)
        self._pending_count += 1

    def add_events(self, events: list[Event] | native.RawRun) -> None:
        if not events:
            return
        self._touch()
        if isinstance(events, list):
            self._pending.events.extend(events)
        else:
            self._pending.events.append(events)
        self._pending_count += len(events)

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None:
        self._touch()
        self._pending.snapshots[self._pending_count] = snapshot
        self.add(event)

    def add_loss(self, loss: Loss) -> None:
        self._touch()
        self._pending.losses.append(loss)

    def add_clock_sample(self, sample: ClockSample) -> None:
        """Use ``sample`` for events from its time on; it is stored with the pending batch."""
        self._touch()
        self.clock.add(sample)
        self._pending.clock_samples.append(sample)

    def _touch(self) -> None:
        if self._pending_since is None:
            self._pending_since = monotonic_ns()

    @property
    def pending_events(self) -> int:
        """Events not committed yet: a batch whose commit failed and those since."""
        return self._pending_count + self._failed_count

    def due(self, now_mono_ns: int | None = None) -> bool:
        """Whether the pending batch should be committed now."""
        if self._failed is not None:
            return True
        if self._pending_since is None:
            return False
        if self._pending_count >= self.max_events:
            return True
        now = monotonic_ns() if now_mono_ns is None else now_mono_ns
        return now - self._pending_since >= self.max_age_ns

    def next_due_ns(self) -> int | None:
        """Monotonic time at which the pending batch becomes due by age."""
        if self._failed is not None:
            return monotonic_ns()
        return None if self._pending_since is None else self._pending_since + self.max_age_ns

    # -- committing ------------------------------------------------------------------------
    def flush(self) -> AppendResult | None:
        """Commit everything pending in one transaction; return once it is durable.

        On failure the batch is kept as it is, and the next ``flush`` commits it again, alone,
        before what was added since (see the module doc). Returns what the last commit
        appended (None: nothing was pending).
        """
        result = None
        if self._failed is not None:
            result = self._commit(self._failed)
            self._failed, self._failed_count = None, 0
        if not self._pending:
            self._pending_since = None
            return result
        batch, count = self._pending, self._pending_count
        self._pending, self._pending_count, self._pending_since = Batch(), 0, None
        try:
            return self._commit(batch)
        except BaseException:
            self._failed, self._failed_count = batch, count
            raise

    def append(self, batch: Batch) -> AppendResult:
        """Commit ``batch`` on its own (after anything pending); durable on return."""
        self.flush()
        for sample in batch.clock_samples:
            self.clock.add(sample)
        return self._commit(batch)

    def commit_alone(self, batch: Batch) -> AppendResult:
        """Commit ``batch`` on its own, what is pending left as it is: a loss said after the
        log failed a commit, before the recorder stops."""
        return self._commit(batch)

    def _commit(self, batch: Batch) -> AppendResult:
        result = self._appender.append(self.recording_id, batch, self.clock, self._snapshots)
        self.committed_events += result.event_count
        self.committed_batches += 1
        if result.event_count:
            self.last_position = result.last_position
        return result

    def close(self) -> None:
        self._appender.close()
