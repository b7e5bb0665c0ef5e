"""The paced load's matching of its connections to CONNECT events: by client port and time,
with a port the kernel handed out again soon after."""

from __future__ import annotations

from recorder.workload import PacedLoad

MS = 1_000_000
REUSED = 52050


def load_that_made(made: list[tuple[int, int]]) -> PacedLoad:
    load = PacedLoad(1)
    load.server.close()  # no thread started: only what it made is asked about
    load.made.extend(made)
    return load


def counts(load: PacedLoad, logged: dict[int, list[int]]) -> list[int]:
    return [load.times_logged(logged, port, at) for port, at in load.made]


# Two connections from one port 10 ms apart, as in a run where the restart test counted
# each of them twice.
MADE = [(REUSED, 1000 * MS), (40000, 1005 * MS), (REUSED, 1010 * MS)]


def test_a_reused_port_gives_each_connection_its_own_event() -> None:
    load = load_that_made(MADE)
    logged = {REUSED: [1000 * MS - 200_000, 1010 * MS - 300_000], 40000: [1005 * MS]}
    assert counts(load, logged) == [1, 1, 1]


def test_a_lost_event_is_not_made_up_by_the_other_connection_of_its_port() -> None:
    load = load_that_made(MADE)
    logged = {REUSED: [1010 * MS - 300_000], 40000: [1005 * MS]}
    assert counts(load, logged) == [0, 1, 1]


def test_an_event_logged_twice_is_counted_twice() -> None:
    load = load_that_made(MADE)
    twice = 1000 * MS - 200_000
    logged = {REUSED: [twice, twice, 1010 * MS], 40000: [1005 * MS]}
    assert counts(load, logged) == [2, 1, 1]


def test_an_event_far_from_every_connection_of_its_port_is_none_of_theirs() -> None:
    load = load_that_made(MADE)
    logged = {REUSED: [1000 * MS, 1010 * MS, 5000 * MS], 40000: [1005 * MS]}
    assert counts(load, logged) == [1, 1, 1]
