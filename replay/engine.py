"""Seeking: the replay state at any moment, from the nearest checkpoint and the log.

``state(T)`` is the fold, in position order, of every event whose wall time is at or before
T. ``window(T, W)`` is ``state(T - W)`` folded on with the events in (T - W, T] while keeping
what ended among them. Both read the log up to the head fixed when the ``Replayer`` was made,
so a replay over a log that is being written sees whole batches and a stable end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from eventlog.batch import gc_paused
from eventlog.reader import BatchSpan, LogReader
from eventlog.store import LogStore
from replay import checkpoints, native
from replay.checkpoints import CheckpointPolicy
from replay.fold import Fold, NarrowRow, Retained
from replay.state import ReplayState
from replay.timespec import LogSpan


@dataclass
class Window:
    """What replay knows at ``at_ns``: the state then, and what ended in the window."""

    at_ns: int
    start_ns: int  # the window is (start_ns, at_ns]
    state: ReplayState
    retained: Retained


@dataclass
class SeekStats:
    checkpoint_position: int = 0
    events_folded: int = 0
    checkpoints_saved: int = 0
    hinted_sockets: int = 0  # open sockets' events the checkpoint's hint spared reading


class Replayer:
    def __init__(
        self,
        store: LogStore,
        *,
        use_checkpoints: bool = True,
        save_checkpoints: bool = True,
        policy: CheckpointPolicy | None = None,
        use_native: bool = True,
    ) -> None:
        self.store = store
        self.reader = LogReader(store)
        # The fold's hot loops in C, where the module is built (replay/_fold.c); the runs it
        # reads itself only from a SQLite log.
        self.use_native = use_native and native.AVAILABLE
        self.runs = native.open_run_reader(store) if self.use_native else None
        self.head = self.reader.head()
        self.use_checkpoints = use_checkpoints
        self.save_checkpoints = save_checkpoints and use_checkpoints
        self.policy = policy or CheckpointPolicy()
        self.stats = SeekStats()

    # -- the log's extent ------------------------------------------------------------------
    def log_span(self) -> LogSpan | None:
        extent = self.reader.wall_extent()
        if extent is None:
            return None
        recordings = self.reader.recordings()
        starts = [r.started_wall_ns for r in recordings]
        ends = [
            self.reader.clock(r.id).wall_ns(r.stopped_mono_ns)
            for r in recordings
            if r.stopped_mono_ns is not None and len(self.reader.clock(r.id))
        ]
        start = min([*starts, extent[0]])
        return LogSpan(start, max([*ends, extent[1]]))

    # -- seeking ---------------------------------------------------------------------------
    @gc_paused()  # the fold allocates millions of short-lived, acyclic tuples
    def state_at(self, at_ns: int) -> ReplayState:
        checkpoint = None
        if self.use_checkpoints:
            checkpoint = checkpoints.newest_before(self.store, at_ns, self.head)
        state = checkpoint.state if checkpoint is not None else ReplayState()
        self.stats = SeekStats(checkpoint_position=state.position)
        if checkpoint is not None:
            self._load_hint(checkpoint.hint)
        fold = Fold(state, self.reader, use_native=self.use_native, runs=self.runs)
        complete = True  # every event up to state.position folded, none skipped
        since_checkpoint, wall_at_checkpoint = 0, state.max_wall_ns
        spans = self.reader.batches_where(state.position, self.head, at_ns)
        expected_first = state.position + 1
        for span in self._merged(spans, state.position, at_ns):
            if span.first_position > expected_first:
                complete = False  # the batches between held only later events
            expected_first = span.last_position + 1
            whole = complete and span.max_wall_ns <= at_ns
            folded = self._fold_span(fold, span, None if whole else (None, at_ns))
            self.stats.events_folded += folded
            since_checkpoint += folded
            if not whole:
                complete = False
                continue
            state.position = span.last_position
            state.max_wall_ns = max(state.max_wall_ns, span.max_wall_ns)
            if self.save_checkpoints and self.policy.due(
                since_checkpoint, state.max_wall_ns - wall_at_checkpoint
            ):
                if checkpoints.save(self.store, state, self._hint(state)):
                    self.stats.checkpoints_saved += 1
                since_checkpoint, wall_at_checkpoint = 0, state.max_wall_ns
        return state

    def _hint(self, state: ReplayState) -> bytes | None:
        """What a checkpoint of ``state`` carries so that seeks from it skip reading its open
        sockets' events (None without the C reader)."""
        if self.runs is None:
            return None
        hint: bytes | None = self.runs.socket_hint(list(state.open_positions()))
        return hint

    def _load_hint(self, hint: bytes) -> None:
        if self.runs is None or not hint:
            return
        with suppress(ValueError):  # a bad hint only costs reads: the seek reads the log
            self.stats.hinted_sockets = self.runs.load_hint(hint)

    def _merged(self, spans: list[BatchSpan], after: int, at_ns: int) -> Iterator[BatchSpan]:
        """Consecutive batches of one recording that are wholly at or before ``at_ns``, read as
        one range (until it holds a checkpoint's worth of events), so that the fold works in big
        pages. A range ends once it reaches the policy's count, not just short of it, so that
        checkpoints fall every ``every_events`` events rather than every other range.
        """
        limit = max(1, self.policy.every_events)

        def joinable(pending: BatchSpan, span: BatchSpan) -> bool:
            return (
                span.max_wall_ns <= at_ns
                and pending.max_wall_ns <= at_ns
                and pending.last_position - pending.first_position + 1 < limit
            )

        return _joined((span for span in spans if span.last_position > after), joinable)

    @gc_paused()
    def window(self, at_ns: int, window_ns: int) -> Window:
        start_ns = at_ns - window_ns
        state = self.state_at(start_ns)
        fold = Fold(state, self.reader, retain=True, use_native=self.use_native, runs=self.runs)
        # A window filters every event by its time anyway, and each span costs a call into the
        # fold (and a look-up of its process events' pids): its batches are read as one.
        spans = self.reader.batches_where(0, self.head, at_ns, start_ns)
        for span in _joined(spans, lambda pending, span: True):
            self._fold_span(fold, span, (start_ns, at_ns))
        return Window(at_ns, start_ns, state, fold.retained)

    def rebuild_checkpoints(self) -> int:
        """Fold the whole log from nothing, saving checkpoints by the policy."""
        self.use_checkpoints = False
        self.save_checkpoints = True
        extent = self.reader.wall_extent()
        self.state_at(extent[1] if extent else 0)
        return self.stats.checkpoints_saved

    # -- reading ---------------------------------------------------------------------------
    def _fold_span(
        self, fold: Fold, span: BatchSpan, wall_range: tuple[int | None, int] | None
    ) -> int:
        """Fold the events of ``span`` (only those in ``wall_range``, if given); returns how
        many were folded. They go through the C run reader where there is one."""
        after, folded = span.first_position - 1, 0
        if self.runs is not None and native.fits_int64(*(wall_range or ())):
            clock = None if wall_range is None else self.reader.clock(span.recording_id).segments()
            folded, after = fold.apply_runs(
                span.recording_id, self.runs, after, span.last_position, wall_range, clock
            )
        for rows in self._rows(span, wall_range, after):
            fold.apply(span.recording_id, rows)
            folded += len(rows)
        return folded

    def _rows(
        self, span: BatchSpan, wall_range: tuple[int | None, int] | None, after: int
    ) -> Iterator[list[NarrowRow]]:
        """Narrow rows of ``span`` after position ``after``; with ``wall_range`` (exclusive
        start, inclusive end) only those whose wall time falls in it."""
        upto = span.last_position
        if wall_range is None:
            yield from self.reader.narrow_pages(after, upto)
            return
        low, high = wall_range
        offset_at = self.reader.clock(span.recording_id).offset_at
        for page in self.reader.narrow_pages(after, upto, with_mono=True):
            yield [
                (position, kind, sock_id)
                for position, kind, sock_id, mono in page
                if (wall := mono + offset_at(mono)) <= high and (low is None or wall > low)
            ]


def _joined(
    spans: Iterable[BatchSpan], joinable: Callable[[BatchSpan, BatchSpan], bool]
) -> Iterator[BatchSpan]:
    """Consecutive batches of one recording as one span, for as long as ``joinable(span so
    far, next batch)``."""
    pending: BatchSpan | None = None
    for span in spans:
        if (
            pending is not None
            and span.recording_id == pending.recording_id
            and span.first_position == pending.last_position + 1
            and joinable(pending, span)
        ):
            pending = BatchSpan(
                pending.first_position,
                span.last_position,
                span.recording_id,
                min(pending.min_wall_ns, span.min_wall_ns),
                max(pending.max_wall_ns, span.max_wall_ns),
            )
            continue
        if pending is not None:
            yield pending
        pending = span
    if pending is not None:
        yield pending
