"""The log a server reads, and its derived store kept open between requests.

Opening the derived store costs more than most answers (the log's state is read, DuckDB
opens its file), so the server keeps one open. Requests use it one at a time (a DuckDB
connection is not for concurrent use, and the machine's cores go to DuckDB's own threads
inside a query). Before a request, at most every ``refresh_s``, the log's committed head is
read, with its recordings' ends: if a recorder has written since (events, or only its stop),
the store is brought up to date (replay.derived.store) and reopened, so a page in live mode
follows a running recording and sees it stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from eventlog.location import LogLocation
from eventlog.reader import LogReader
from eventlog.store import LogStore, Purpose, open_log
from replay.derived.store import Derived, open_derived

REFRESH_S = 1.0
# Answers kept while the log has not moved (the span, the maps of the moments last asked
# for): the oldest asked for goes first. A map of a busy moment is a few hundred kB.
REMEMBERED = 32
# The log's committed head, and each recording's stop reason (None: not stopped).
_Mark = tuple[int, tuple[tuple[int, str | None], ...]]


class LogSession:
    """A log and its derived store, open for the server's lifetime; see the module doc."""

    def __init__(self, location: LogLocation, refresh_s: float = REFRESH_S) -> None:
        self.location = location
        self.refresh_s = refresh_s
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self.log: LogStore = self._stack.enter_context(open_log(location, Purpose.READ))
        self._derived: Derived | None = None
        self._read_mark: _Mark | None = None
        self._checked = 0.0
        # Answers that depend only on the log's state and the question (the span, a map):
        # kept until it moves, the REMEMBERED last asked for.
        self._by_mark: dict[str, tuple[_Mark | None, Any]] = {}
        self.notices: list[str] = []
        with self.reading():  # the first build, before the first client waits for it
            pass

    @contextmanager
    def reading(self) -> Iterator[Derived]:
        """The derived store, current within ``refresh_s``, for this thread alone."""
        with self._lock:
            derived = self._current()
            yield derived

    def cached(self, key: str) -> Any | None:
        """What ``remember`` kept under ``key``, if the log has not moved since (call it
        inside ``reading``)."""
        hit = self._by_mark.pop(key, None)
        if hit is None or hit[0] != self._read_mark:
            return None
        self._by_mark[key] = hit  # asked for again: the last to go
        return hit[1]

    def remember(self, key: str, value: Any) -> None:
        self._by_mark.pop(key, None)
        self._by_mark[key] = (self._read_mark, value)
        while len(self._by_mark) > REMEMBERED:
            del self._by_mark[next(iter(self._by_mark))]

    def _current(self) -> Derived:
        now = time.monotonic()
        if self._derived is not None and now - self._checked < self.refresh_s:
            return self._derived
        self._checked = now
        mark = self._log_mark()
        if self._derived is not None and mark == self._read_mark:
            return self._derived
        if self._derived is not None:
            self._derived.close()
            self._derived = None
        derived = self._open_read_only()
        self._read_mark = mark
        # DuckDB draws a progress bar on stdout for a long query: not on a server's output.
        derived.con.execute("SET enable_progress_bar = false")
        self.notices.extend(n for n in derived.notices if n not in self.notices)
        self._derived = derived
        return derived

    def _open_read_only(self) -> Derived:
        """The derived store, current, open for reading only. The command that syncs a
        store reads on through its connection for writing, which locks every other process
        out of the store's file: a server would hold that for its lifetime, and every
        scope-replay and scope-query of the log would wait for it, and fail."""
        derived = open_derived(self.log)
        try:
            derived.read_only()
        except BaseException:
            derived.close()
            raise
        return derived

    def _log_mark(self) -> _Mark:
        """The log's committed head, and how each recording ended (None: not yet): a
        recording that stops without a further event changes only the latter."""
        reader = LogReader(self.log)
        try:
            stops = tuple((r.id, r.stop_reason) for r in reader.recordings())
            return reader.head(), stops
        finally:
            reader.close()

    def close(self) -> None:
        with self._lock:
            if self._derived is not None:
                self._derived.close()
                self._derived = None
            self._stack.close()
