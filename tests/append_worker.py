"""A separate process that appends numbered batches, for concurrency tests.

Batch ``k`` (from 1) holds ``k % 13 + 1`` events, each with ``sock_id = k`` and
``lport = size of batch k``: a reader can tell from any event whether it saw all of its batch.

    python -m tests.append_worker DB_LOCATION BATCHES
"""

from __future__ import annotations

import sys

from eventlog.location import resolve
from tests.factories import MONO_BASE_NS, conn_event, recording_writer


def batch_size(batch_number: int) -> int:
    return batch_number % 13 + 1


def main(location_text: str, batches: int) -> int:
    with recording_writer(resolve(location_text)) as (_, writer):
        mono = MONO_BASE_NS
        for k in range(1, batches + 1):
            size = batch_size(k)
            for _ in range(size):
                mono += 1000
                writer.add(conn_event(mono_ns=mono, sock_id=k, lport=size))
            writer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
