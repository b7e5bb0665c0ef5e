"""The fold's C loops (replay/_fold.c) give the states the Python fold gives.

Logs are written through the real log writer into SQLite files, from event streams where the
unusual is common: socket ids that repeat, opens without an id, closes before their opens or
of sockets never seen, snapshots that show some sockets, miss others and add strangers, and
batches (so runs) that end anywhere. Every state and window is folded twice, with and without
the module, and must come out equal, state for state.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventlog.clock import ClockModel
from eventlog.events import (
    TCP_ESTABLISHED,
    TCP_FIN_WAIT1,
    TCP_LISTEN,
    Event,
    Kind,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
)
from eventlog.location import resolve
from eventlog.recordings import RecordingStart, begin_recording
from eventlog.store import Purpose, open_log
from eventlog.writer import LogWriter
from replay import native
from replay.engine import Replayer
from replay.fold import Fold
from replay.state import ReplayState
from tests.capabilities import require
from tests.factories import MONO_BASE_NS, ROOT_NETNS, clock_sample, make_host

LO = bytes([127, 0, 0, 1])
OTHER_NETNS = 4026532100


@pytest.fixture(autouse=True)
def _module_built() -> None:
    require(native.AVAILABLE, "the C fold module (make setup builds replay/_fold.c)")


def test_kinds_agree_with_the_log() -> None:
    assert {kind.name: int(kind) for kind in Kind} == native.KINDS


def test_the_module_shares_pythons_sqlite() -> None:
    assert native.reads_sqlite()


step = st.tuples(
    st.sampled_from([*Kind, Kind.CLOSE, Kind.CLOSE]),  # closes of unknown sockets too
    st.one_of(st.none(), st.integers(1, 12)),  # socket ids collide and repeat on purpose
    st.integers(40000, 40008),  # the local port: few, so addresses are shared too
    st.integers(1, 4),  # pid
    st.booleans(),  # a batch ends after this event
)


def write_log(path: Path, steps: list[tuple[Kind, int | None, int, int, bool]]) -> int:
    """A one-recording log of ``steps``, 1 ms apart, with the wall clock stepping now and then
    (so wall order is not log order); returns the last event's mono time."""
    store = open_log(resolve(str(path)), Purpose.RECORD)
    start = clock_sample()
    recording = begin_recording(store, RecordingStart(make_host(), "ebpf", start, ROOT_NETNS))
    writer = LogWriter(store, recording, ClockModel([start]))
    mono = MONO_BASE_NS
    for index, (kind, sock, port, pid, flush) in enumerate(steps):
        mono += 1_000_000
        if index >= 10 and index % 9 == 4:  # the clock steps by 8 ms, back or forth
            jump = ((index // 9) % 3 - 1) * 8_000_000
            writer.add_clock_sample(clock_sample(mono, start.offset_ns + jump))
        if kind == Kind.SNAPSHOT:
            writer.add_snapshot(*snapshot(mono, index, port, pid))
        else:
            netns = OTHER_NETNS if port == 40008 else ROOT_NETNS
            laddr, lport = (None, None) if port == 40007 else (LO, port)  # no local address
            extra = {"ct_id": pid} if kind in (Kind.CT_NEW, Kind.CT_DESTROY) else None
            writer.add_events(
                [Event(kind, mono, pid, "p", netns, laddr, lport, LO, 80, sock, extra=extra)]
            )
        if flush:
            writer.flush()
    writer.flush()
    writer.close()
    store.close()
    return mono


def snapshot(mono: int, index: int, port: int, pid: int) -> tuple[Event, Snapshot]:
    """A snapshot showing some of the generated addresses, in several TCP states."""
    states = (TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LISTEN)
    connections = tuple(
        SnapshotConnection(ROOT_NETNS, LO, p, LO, 80, states[(p + index) % 3], p, 0, pid)
        for p in range(40000, 40008)
        if (p * 7 + index) % 3
    )
    walked = [ROOT_NETNS] if index % 2 else [ROOT_NETNS, OTHER_NETNS]
    marker = Event(Kind.SNAPSHOT, mono, extra={"namespace_list": walked})
    processes = tuple(
        SnapshotProcess(p, 1, "p", "p", "/", ROOT_NETNS, 0) for p in range(1, 5) if p != pid
    )
    return marker, Snapshot(connections=connections, processes=processes)


def folds(
    path: Path, mono_moments: list[int], window_ns: int = 5_000_000
) -> list[list[tuple[ReplayState, str]]]:
    """For each moment: the state then, and what the window before it retained."""
    answers = []
    with open_log(resolve(str(path)), Purpose.READ) as store:
        for use_native in (True, False):
            replayer = Replayer(store, use_checkpoints=False, use_native=use_native)
            assert (replayer.runs is not None) == use_native
            offset = replayer.reader.clock(1).offset_at(MONO_BASE_NS)
            moments = []
            for mono in mono_moments:
                window = replayer.window(mono + offset, window_ns)
                retained = window.retained
                kept = (
                    sorted(retained.pairs),
                    sorted(retained.closed, key=repr),
                    sorted(retained.failed),
                    sorted(retained.exited),
                    replayer.stats.events_folded,
                )
                moments.append((window.state, repr(kept)))
            answers.append(moments)
    return answers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=70), st.lists(st.floats(0.0, 1.0), max_size=4))
# Sockets opened (without ids) at addresses that an earlier snapshot showed alone.
@example(
    [(Kind.SNAPSHOT, None, 40000, 1, False)]
    + [(Kind.CONNECT, None, 40000, 1, False)] * 3
    + [(Kind.SNAPSHOT, None, 40000, 1, False)],
    [],
)
# A close exactly at the window's start (5 ms before the last event), in a batch that goes
# on past it: folded before the window, not in it.
@example(
    [(Kind.CONNECT, 1, 40001, 1, False), (Kind.CLOSE, 1, 40001, 1, False)]
    + [(Kind.CONNECT, sock, 40002, 1, sock == 2) for sock in range(2, 7)],
    [],
)
def test_the_c_fold_gives_the_python_folds_states(
    steps: list[tuple[Kind, int | None, int, int, bool]], fractions: list[float]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fold.db"
        last = write_log(path, steps)
        span = last - MONO_BASE_NS
        moments = [MONO_BASE_NS + int(span * f) for f in fractions] + [last]
        with_module, without = folds(path, moments)
        assert with_module == without


def test_a_row_the_reader_does_not_expect_is_folded_in_python(tmp_path: Path) -> None:
    """A socket id stored as a float (a foreign writer) makes the reader decline the rest of the
    span, which the Python fold then reads: the answer does not change."""
    path = tmp_path / "odd.db"
    steps = [(Kind.CONNECT, 1, 40001, 1, False), (Kind.CONNECT, 2, 40002, 1, True)]
    last = write_log(path, [*steps, (Kind.CLOSE, 1, 40001, 1, False)])
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE events SET sock_id = 2.5 WHERE sock_id = 2")
    conn.close()
    with_module, without = folds(path, [last])
    assert with_module == without


def test_the_address_cache_is_pruned_without_changing_the_state(tmp_path: Path) -> None:
    """Sockets with addresses of their own live across a few of 120 snapshots that show them
    (all but every 17th), so that the reader's cache of addresses outgrows what recent
    snapshots used and is pruned, several times, while most of what it holds stays in use."""
    path = tmp_path / "many.db"
    store = open_log(resolve(str(path)), Purpose.RECORD)
    start = clock_sample()
    recording = begin_recording(store, RecordingStart(make_host(), "ebpf", start, ROOT_NETNS))
    writer = LogWriter(store, recording, ClockModel([start]))
    mono, open_socks = MONO_BASE_NS, set[int]()
    for wave in range(120):
        new = range(1 + wave * 150, 151 + wave * 150)
        gone = sorted(sock for sock in open_socks if sock <= (wave - 3) * 150)
        batch = [(Kind.CLOSE, sock) for sock in gone] + [(Kind.CONNECT, sock) for sock in new]
        for kind, sock in batch:
            mono += 10_000
            port = 1024 + sock % 60000
            writer.add_events([Event(kind, mono, 1, "p", ROOT_NETNS, LO, port, LO, 80, sock)])
        open_socks.difference_update(gone)
        open_socks.update(new)
        mono += 10_000
        shown = tuple(
            SnapshotConnection(ROOT_NETNS, LO, 1024 + sock % 60000, LO, 80, TCP_ESTABLISHED,
                               sock, 0, 1)
            for sock in sorted(open_socks)
            if sock % 17
        )  # fmt: skip
        marker = Event(Kind.SNAPSHOT, mono, extra={"namespace_list": [ROOT_NETNS]})
        writer.add_snapshot(marker, Snapshot(connections=shown))
        writer.flush()
    writer.close()
    store.close()
    # One window over the whole log: every socket the snapshots settled is in the answer.
    with_module, without = folds(path, [mono], window_ns=mono - MONO_BASE_NS + 10**9)
    assert with_module == without


def test_reconcile_declines_keys_it_cannot_read() -> None:
    state = ReplayState()
    odd_key = (1, ROOT_NETNS, "127.0.0.1", 40001, LO, 80)  # text where bytes belong
    assert native.reconcile_sockets([odd_key], [], state.sockets_of(1), {}, {}, 1, None) is None


def test_reconcile_refuses_what_could_run_python_code_midway() -> None:
    """Positions that are not ints decline; namespaces that are not ints are refused."""
    state = ReplayState()
    state.sockets_of(1)[7] = "3"  # type: ignore[assignment]
    assert native.reconcile_sockets([], [], state.sockets_of(1), {}, {}, 1, None) is None
    with pytest.raises(TypeError):
        native.reconcile_sockets([], [], {}, {}, {}, 1, {"4026531833"})  # type: ignore[arg-type]


def test_reconcile_needs_the_addresses_of_every_open_socket() -> None:
    state = ReplayState()
    state.sockets_of(1)[7] = 3
    with pytest.raises(KeyError):
        native.reconcile_sockets([], [], state.sockets_of(1), {}, {}, 1, None)


def test_fold_defaults_to_the_module_when_built() -> None:
    assert Fold(ReplayState(), lookup=None).use_native is True  # type: ignore[arg-type]


def test_wall_bounds_need_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "bounds.db"
    last = write_log(path, [(Kind.CONNECT, 1, 40001, 1, False)])
    with open_log(resolve(str(path)), Purpose.READ) as store:
        runs = Replayer(store).runs
        assert runs is not None
        with pytest.raises(TypeError, match="segments"):
            runs.fold_run(0, 10, {}, False, None, None, last)
        assert runs.fold_run(0, 10, {}, False, [], None, last) is None  # no clock: declined
