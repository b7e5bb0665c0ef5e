"""A reader in this process while another process appends: never a torn batch, never a gap."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

from eventlog.location import LogLocation
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from tests.append_worker import batch_size

BATCHES = 400
MAX_READS = 4000
READ_PAUSE_S = 0.005  # a read of an empty log takes microseconds: give the writer time to start


def test_reader_sees_whole_batches_while_another_process_appends(
    log_location: LogLocation,
) -> None:
    open_log(log_location, Purpose.RECORD).close()
    text = str(log_location.path) if log_location.path else log_location.text
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.append_worker", text, str(BATCHES)],
        stderr=subprocess.PIPE,
        text=True,
    )
    reads = 0
    seen_heads = set()
    try:
        with open_log(log_location, Purpose.READ) as store:
            reader = LogReader(store, page_size=97)  # pages end mid-batch on purpose
            while reads < MAX_READS:
                finished = writer.poll() is not None
                events = list(reader.events())
                reads += 1
                positions = [e.position for e in events]
                assert positions == list(range(1, len(events) + 1))
                per_batch = Counter(e.sock_id for e in events)
                for batch_number, count in per_batch.items():
                    assert batch_number is not None
                    assert count == batch_size(batch_number), (batch_number, count)
                assert sorted(b for b in per_batch if b is not None) == list(
                    range(1, len(per_batch) + 1)
                )
                seen_heads.add(len(events))
                if finished:
                    break
                time.sleep(READ_PAUSE_S)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    assert finished, f"the writer was still appending after {MAX_READS} reads"
    assert len(per_batch) == BATCHES
    assert len(seen_heads) > 2, "the reader never overlapped the writer"
