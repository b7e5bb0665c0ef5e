"""Property tests on generated logs: checkpoints never change an answer, and answers repeat."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.store import Purpose, open_log
from replay import checkpoints
from replay.checkpoints import CheckpointPolicy
from replay.connections import connection_table
from replay.engine import Replayer
from replay.table import Moment, TableResult, render
from tests.logbuilder import build_workload, built_log, wall, workload_operation

# Shared with tests/integration/query/test_query.py: the workload both replay and SQL answer.
operation = workload_operation(
    "pair", "outbound", "close", "close-unknown", "failed", "snapshot", "exec", "exit", "flush"
)
build = build_workload


def answer(location: object, at_ns: int, window_ns: int, use: bool, every: int) -> str:
    with open_log(location, Purpose.READ) as store:  # type: ignore[arg-type]
        replayer = Replayer(store, use_checkpoints=use, policy=CheckpointPolicy(every_events=every))
        window = replayer.window(at_ns, window_ns)
        rows = connection_table(replayer.reader, window, replayer.runs)
    return render(TableResult(Moment(at_ns, window_ns, "t"), rows), "json")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation, min_size=1, max_size=60),
    moments=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    window_s=st.sampled_from([0.0, 0.1, 0.5, 15.0]),
    every=st.integers(1, 9),
)
def test_checkpoints_never_change_the_answer(
    operations: list[tuple[str, int]], moments: list[float], window_s: float, every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with built_log(Path(tmp) / "p.db") as (location, builder):
            end = build(builder, operations)
        window_ns = int(window_s * 1e9)
        for fraction in moments:
            at_ns = wall(end * fraction)
            plain = answer(location, at_ns, window_ns, use=False, every=every)
            # The first checkpointed run saves checkpoints, later ones start from them.
            assert answer(location, at_ns, window_ns, use=True, every=every) == plain
            assert answer(location, at_ns, window_ns, use=True, every=every) == plain
        with open_log(location, Purpose.READ) as store:
            saved = checkpoints.count(store)
        assert saved >= 0


def test_property_setup_does_save_checkpoints(tmp_path: Path) -> None:
    """Guard for the property above: its checkpointed runs do go through checkpoints."""
    with built_log(tmp_path / "g.db") as (location, builder):
        end = build(
            builder, [("pair", i) for i in range(20)] + [("flush", 0)] + [("close", 0)] * 10
        )
    answer(location, wall(end), 0, use=True, every=2)
    with open_log(location, Purpose.READ) as store:
        assert checkpoints.count(store) >= 2
        replayer = Replayer(store, policy=CheckpointPolicy(every_events=2))
        replayer.state_at(wall(end))
        assert replayer.stats.checkpoint_position > 0
        # and its checkpoints carry their open sockets' records (the C reader's hint)
        assert replayer.stats.hinted_sockets > 0


def test_checkpoints_fall_every_so_many_events(tmp_path: Path) -> None:
    """Consecutive batches are folded as one range until it holds the policy's count: a
    checkpoint every ``every_events`` events (give or take a batch), not every other range."""
    with built_log(tmp_path / "s.db") as (location, builder):
        build(builder, [op for i in range(60) for op in (("pair", i), ("close", 0), ("flush", 0))])
    with open_log(location, Purpose.READ) as store:
        saved = Replayer(store, policy=CheckpointPolicy(every_events=20)).rebuild_checkpoints()
        with store.connect() as conn:
            positions = [p for (p,) in conn.exec_driver_sql("SELECT position FROM checkpoints")]
            (batch,) = conn.exec_driver_sql(
                "SELECT MAX(last_position - first_position + 1) FROM batches"
            ).one()
    assert saved == len(positions) >= 5
    gaps = [b - a for a, b in zip([0, *sorted(positions)], sorted(positions), strict=False)]
    assert all(20 <= gap < 20 + batch for gap in gaps), (gaps, batch)
