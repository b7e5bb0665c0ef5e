"""Running a real recorder (in a thread of the test process) around a block of test code."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventlog.events import Kind, LoggedEvent
from eventlog.location import LogLocation
from eventlog.reader import LogReader, Recording
from eventlog.store import Purpose, open_log
from recorder.record import Progress, Recorder, RecordOptions
from tests.cli import BIN
from tests.load import committed


@dataclass
class RecordingRun:
    location: LogLocation
    recorder: Recorder
    progress: Progress | None = None
    error: BaseException | None = None
    notes: list[str] = field(default_factory=list)

    def events(self) -> list[LoggedEvent]:
        with open_log(self.location, Purpose.READ) as store:
            return [
                e
                for e in LogReader(store).events()
                if e.recording_id == self.recorder.progress.recording_id
            ]

    def recording(self) -> Recording:
        with open_log(self.location, Purpose.READ) as store:
            return next(
                r
                for r in LogReader(store).recordings()
                if r.id == self.recorder.progress.recording_id
            )


def wait_for(condition: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def db_argument(location: LogLocation) -> str:
    """``--db`` for ``location``: the file's path, or the URL as it was written."""
    return str(location.path) if location.path is not None else location.text


def start_recorder(
    db: str, progress: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``scope-record --db db --progress-file progress *options`` in a process of its own
    (with ``env`` added to this one's), returned once it has committed its first batch
    (stderr is a pipe, as text)."""
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", db, "--progress-file", str(progress), *options],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    try:
        wait_for(lambda: committed(progress) > 0 or recorder.poll() is not None, timeout=60)
        assert recorder.poll() is None, recorder.stderr.read() if recorder.stderr else ""
    except BaseException:
        recorder.kill()
        recorder.wait()
        raise
    return recorder


@contextmanager
def recording(location: LogLocation, **options: Any) -> Iterator[RecordingRun]:
    """Record while the block runs; the initial snapshot is committed when it starts."""
    notes: list[str] = []
    recorder = Recorder(RecordOptions(location=location, **options), notify=notes.append)
    run = RecordingRun(location, recorder, notes=notes)

    def target() -> None:
        try:
            run.progress = recorder.run()
        except BaseException as exc:
            run.error = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def started() -> bool:
        if run.error is not None:
            raise run.error
        return recorder.progress.snapshots > 0 and recorder.progress.committed_events > 0

    wait_for(started, timeout=60)
    try:
        yield run
    finally:
        recorder.request_stop()
        thread.join(timeout=60)
    if run.error is not None:
        raise run.error


def by_kind(events: list[LoggedEvent], kind: Kind, pid: int | None = None) -> list[LoggedEvent]:
    return [e for e in events if e.kind == kind and (pid is None or e.pid == pid)]
