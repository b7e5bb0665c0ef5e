"""A snapshot leaves out connections whose open events came while the walk ran, and names
the processes beyond a row's pid that hold a connection (not a listener) it keeps."""

from __future__ import annotations

from eventlog.events import Event, Kind, SnapshotConnection
from recorder.procfs import ParseStats, ProcWalk
from recorder.record import snapshot_of

NS = 4026531833
LO = bytes([127, 0, 0, 1])


def test_connections_opened_during_the_walk_are_left_to_their_events() -> None:
    old = SnapshotConnection(NS, LO, 8080, LO, 40000, 1, 11, 0, 7)
    new = SnapshotConnection(NS, LO, 40001, LO, 8080, 1, 12, 0, 8)
    listener = SnapshotConnection(NS, LO, 8080, bytes(4), 0, 10, 13, 0, 7)
    walk = ProcWalk(
        processes=[],
        connections=[old, new, listener],
        holders={11: [7, 9, 21], 12: [8, 10], 13: [7, 9]},
        namespaces={NS},
        stats=ParseStats(),
        started_mono_ns=100,
        finished_mono_ns=160,
    )
    during = [
        Event(Kind.CONNECT, 120, 8, "c", NS, LO, 40001, LO, 8080, 5),
        Event(Kind.EXEC, 130, 9, "x", NS),
    ]
    marker, snapshot = snapshot_of(walk, 100, initial=True, opened_meanwhile=during)
    assert snapshot.connections == (old, listener)
    assert marker.mono_ns == 100
    assert marker.extra == {
        "initial": True,
        "walk_ns": 60,
        "namespace_list": [NS],
        "opened_during_walk": 1,
        "unreadable": 0,
        "bad_lines": 0,
        "conntrack": False,
        "more_holders": [[11, 9], [11, 21]],
    }
