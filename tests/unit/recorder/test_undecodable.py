"""A ring-buffer record that cannot be decoded: every event the kernel staged in it is
counted as lost, not one for the record."""

from __future__ import annotations

from types import SimpleNamespace

from eventlog.events import Loss
from eventlog.kernel_records import EVENT, HEADER
from recorder.record import _Session
from recorder.reorder import ReorderBuffer

UNKNOWN_KIND = 99


def _event(kind: int, ts: int) -> bytes:
    return EVENT.pack(ts, 1, 0, 0, 100, 1, 0, 1, 2, kind, 2, 0, 0, b"x", b"\0" * 56)


def _drained(records: list[bytes]) -> tuple[list[Loss], SimpleNamespace]:
    losses: list[Loss] = []
    session = SimpleNamespace(
        reorder=ReorderBuffer(0), received_events=0, received_pieces=0, decode_errors=0,
        writer=SimpleNamespace(add_loss=losses.append),
    )  # fmt: skip
    _Session._drain(session, records)  # type: ignore[arg-type]
    return losses, session


def test_every_event_of_an_undecodable_record_is_counted_lost() -> None:
    record = HEADER.pack(3, 0, 10) + _event(1, 10) + _event(UNKNOWN_KIND, 11) + _event(3, 12)
    losses, session = _drained([record])
    assert [(loss.lost, loss.reason.split(":")[0]) for loss in losses] == [
        (3, "undecodable record")
    ]
    assert session.decode_errors == 1 and len(session.reorder) == 0


def test_a_record_cut_short_counts_one() -> None:
    losses, _ = _drained([b"\1\0"])
    assert [loss.lost for loss in losses] == [1]
