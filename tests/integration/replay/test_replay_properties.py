"""Property tests on generated logs: checkpoints never change an answer, and answers repeat."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.log.store import Purpose, open_log
from recorder.procfs import TCP_ESTABLISHED, TCP_LISTEN
from replay import checkpoints
from replay.checkpoints import CheckpointPolicy
from replay.connections import connection_table
from replay.engine import Replayer
from replay.table import Moment, TableResult, render
from tests.logbuilder import Builder, built_log, wall

SERVER = "127.0.0.1:8080"

operation = st.one_of(
    st.tuples(st.just("pair"), st.integers(0, 40)),
    st.tuples(st.just("outbound"), st.integers(0, 40)),
    st.tuples(st.just("close"), st.integers(0, 200)),
    st.tuples(st.just("close-unknown"), st.integers(0, 40)),
    st.tuples(st.just("failed"), st.integers(0, 40)),
    st.tuples(st.just("snapshot"), st.integers(0, 200)),
    st.tuples(st.just("exec"), st.integers(1, 6)),
    st.tuples(st.just("exit"), st.integers(1, 6)),
    st.tuples(st.just("flush"), st.just(0)),
)


def build(builder: Builder, operations: list[tuple[str, int]]) -> float:
    """Apply ``operations`` 50 ms apart; return the last time used."""
    open_sockets: list[tuple[int, int, str, str]] = []  # sock, pid, local, remote
    next_sock = 1
    at = 0.0
    for kind, arg in operations:
        at += 0.05
        if kind == "pair":
            client = f"127.0.0.1:{40000 + next_sock}"
            builder.connect(at, next_sock, 100 + arg % 3, f"c{arg % 3}", client, SERVER)
            builder.accept(at, next_sock + 1, 200, "srv", SERVER, client)
            open_sockets += [
                (next_sock, 100 + arg % 3, client, SERVER),
                (next_sock + 1, 200, SERVER, client),
            ]
            next_sock += 2
        elif kind == "outbound":
            local = f"10.0.0.2:{50000 + next_sock}"
            builder.connect(at, next_sock, 300, "out", local, f"93.184.216.{arg}:443")
            open_sockets.append((next_sock, 300, local, f"93.184.216.{arg}:443"))
            next_sock += 1
        elif kind == "close" and open_sockets:
            sock, pid, local, remote = open_sockets.pop(arg % len(open_sockets))
            builder.close(at, sock, pid, "x", local, remote)
        elif kind == "close-unknown":
            builder.close(at, None, None, None, f"10.0.0.2:{30000 + arg}", "10.0.0.3:5432")
        elif kind == "failed":
            builder.failed(
                at, next_sock, 100, "c0", f"127.0.0.1:{45000 + next_sock}", "127.0.0.1:1"
            )
            next_sock += 1
        elif kind == "snapshot":
            shown = [s for i, s in enumerate(open_sockets) if (i + arg) % 4]  # some go missing
            rows: list[tuple[str, str, int, int | None]] = [
                (local, remote, TCP_ESTABLISHED, pid) for _, pid, local, remote in shown
            ]
            rows += [("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 200)]
            rows += [(f"10.9.0.1:{2000 + arg}", f"10.9.0.2:{60000 + arg}", TCP_ESTABLISHED, None)]
            builder.snapshot(at, rows, processes=[(200, "srv"), (300 + arg % 2, "p")])
        elif kind == "exec":
            builder.exec(at, 1000 + arg, f"proc{arg}")
        elif kind == "exit":
            builder.exit(at, 1000 + arg, f"proc{arg}")
        elif kind == "flush":
            builder.flush()
    builder.exec(at + 0.05, 999, "end-marker")
    return at + 0.05


def answer(location: object, at_ns: int, window_ns: int, use: bool, every: int) -> str:
    with open_log(location, Purpose.READ) as store:  # type: ignore[arg-type]
        replayer = Replayer(store, use_checkpoints=use, policy=CheckpointPolicy(every_events=every))
        window = replayer.window(at_ns, window_ns)
        rows = connection_table(replayer.reader, window)
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
