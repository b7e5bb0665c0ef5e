"""The replay state's encoding (checkpoints) and the checkpoint row around it."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay import checkpoints
from replay.state import FORMAT, ReplayState, inflate

int64 = st.integers(-(1 << 63), (1 << 63) - 1)
recording = st.integers(1, 4)
address = st.sampled_from([b"", b"\x7f\x00\x00\x01", b"\n\x00\x00\x02", bytes(15) + b"\x01"])


@st.composite
def states(draw: st.DrawFn) -> ReplayState:
    state = ReplayState(position=draw(int64), max_wall_ns=draw(int64))
    for rec, key, position in draw(st.lists(st.tuples(recording, int64, int64), max_size=30)):
        state.sockets_of(rec)[key] = position
    for rec, key, opened, missed in draw(
        st.lists(st.tuples(recording, int64, int64, int64), max_size=10)
    ):
        state.missing_of(rec)[key] = (opened, missed)
    tuple_key = st.tuples(recording, int64, address, int64, address, int64)
    state.snapshot_sockets = draw(st.dictionaries(tuple_key, int64, max_size=10))
    state.processes = draw(st.dictionaries(st.tuples(recording, int64), int64, max_size=20))
    state.conntrack = draw(st.dictionaries(st.tuples(recording, int64, int64), int64, max_size=5))
    return state


@given(states())
def test_a_state_comes_back_equal_and_encodes_the_same(state: ReplayState) -> None:
    encoded = state.to_bytes()
    back = ReplayState.from_bytes(encoded)
    assert back == state
    assert back.to_bytes() == encoded


@given(states(), st.randoms(use_true_random=False))
def test_equal_states_give_equal_bytes_whatever_their_order(
    state: ReplayState, rng: random.Random
) -> None:
    shuffled = ReplayState(position=state.position, max_wall_ns=state.max_wall_ns)
    for rec, sockets in reversed(list(state.open_sockets.items())):
        items = list(sockets.items())
        rng.shuffle(items)
        shuffled.open_sockets[rec] = dict(items)
    shuffled.missing = {rec: dict(reversed(list(e.items()))) for rec, e in state.missing.items()}
    shuffled.snapshot_sockets = dict(reversed(list(state.snapshot_sockets.items())))
    shuffled.processes = dict(reversed(list(state.processes.items())))
    shuffled.conntrack = dict(reversed(list(state.conntrack.items())))
    assert shuffled.to_bytes() == state.to_bytes()


def sample_state() -> ReplayState:
    state = ReplayState(position=9, max_wall_ns=10)
    state.sockets_of(1).update({5: 3, -7: 7})
    state.snapshot_sockets[(1, 4026531840, b"\x7f\x00\x00\x01", 80, b"\x7f\x00\x00\x01", 9)] = 2
    state.processes[(1, 100)] = 1
    return state


def test_what_is_not_an_encoded_state_is_a_value_error() -> None:
    encoded = sample_state().to_bytes()
    raw = zlib.decompress(encoded)
    for bad in (
        b"",
        b"not zlib",
        zlib.compress(raw[:-1]),  # truncated
        zlib.compress(raw + b"\x00"),  # trailing bytes
        zlib.compress((FORMAT + 1).to_bytes(4, "little") + raw[4:]),  # another format
    ):
        with pytest.raises(ValueError):
            ReplayState.from_bytes(bad)


def test_a_state_holding_a_float_socket_id_is_not_encoded() -> None:
    """A foreign writer's log can hold a REAL socket id; the fold keys the socket by it, and
    such a state is folded again rather than saved."""
    state = sample_state()
    state.sockets_of(1)[2.5] = 8  # type: ignore[index]
    with pytest.raises(ValueError, match="cannot be encoded"):
        state.to_bytes()
    assert checkpoints.encode(sample_state(), None)  # the plain state still encodes


def test_a_state_with_a_time_that_is_not_an_int_is_not_encoded() -> None:
    state = sample_state()
    state.max_wall_ns = 1.5e19  # type: ignore[assignment]  # a foreign log's REAL batch time
    with pytest.raises(ValueError, match="cannot be encoded"):
        state.to_bytes()


def test_inflating_stops_at_its_limit() -> None:
    """A crafted row cannot make a seek inflate it into memory it does not have."""
    packed = zlib.compress(bytes(10_000))
    assert inflate(packed, 10_000) == bytes(10_000)
    for bad in (packed[:-2], packed + b"tail"):
        with pytest.raises((ValueError, zlib.error)):
            inflate(bad, 10_000)
    with pytest.raises(ValueError, match="too large"):
        inflate(packed, 9_999)


def test_a_checkpoint_keeps_its_hint_and_drops_a_broken_one() -> None:
    state = sample_state()
    kept = checkpoints.decode(checkpoints.encode(state, b"records"))
    assert kept.state == state and kept.hint == b"records"
    assert checkpoints.decode(checkpoints.encode(state, None)).hint == b""
    broken = checkpoints.encode(state, None) + b"not zlib"
    assert checkpoints.decode(broken) == checkpoints.Checkpoint(state, b"")
    with pytest.raises(ValueError):
        checkpoints.decode(b"\x01")


def test_a_checkpoint_of_another_format_is_replaced(tmp_path: Path) -> None:
    """Checkpoints of an older format are ignored, and the seek that folds past their
    positions saves new ones there (rather than finding the position taken)."""
    with open_log(resolve(str(tmp_path / "c.db")), Purpose.RECORD) as store:
        state = sample_state()
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO checkpoints (position, format, max_wall_ns, state) "
                "VALUES (?, ?, ?, ?)",
                (state.position, FORMAT - 1, state.max_wall_ns, b"old"),
            )
        assert checkpoints.newest_before(store, state.max_wall_ns, state.position) is None
        assert checkpoints.save(store, state, b"hint")
        found = checkpoints.newest_before(store, state.max_wall_ns, state.position)
        assert found == checkpoints.Checkpoint(state, b"hint")
        assert checkpoints.count(store) == 1
