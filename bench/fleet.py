"""Benchmark: a fleet in one store. Four network namespaces on one bridge act as hosts; each
calls the next one's server (a ring, no loopback), a bounded number of connections per
client. The load runs alone, then again while four recorders (``scope-record --netns NS
--host-id NAME``) append to one PostgreSQL store; then replay reads that store.

- ``ratio``: connections per second recorded / alone (one run each, side by side).
- ``lost``: events the store holds as lost; ``events``: events it holds.
- ``cross_host_rows``: the load's connections that are one row with both hosts' processes;
  ``one_sided_rows``: those that are not (every connection is between recorded hosts, so
  the target is 0).
- ``seek_median_s``: the connection table at random moments of the recording, median.

The PostgreSQL server is the tests' (tests.postgres: initdb and postgres as an unprivileged
user on a loopback port, removed after); the namespaces are the tests' (tests.netns).

RESULT hosts=<n> conns_per_s_alone=<n> conns_per_s_recorded=<n> ratio=<n> events=<n>
       lost=<n> cross_host_rows=<n> one_sided_rows=<n> seek_median_s=<n>
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.workload import Server, run_client, running_server
from replay.derived.store import open_derived
from replay.table import connection_table
from tests.capabilities import postgres_bindir
from tests.fleet import record_host, stop
from tests.netns import Namespace, bridged
from tests.postgres import postgres_server

CLIENT = "fleet-bench"
SERVER = "fleet-bench-srv"


@contextmanager
def servers(hosts: list[Namespace], workdir: Path) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_server(SERVER, hosts=(h.address,), netns=h.name, workdir=workdir)
            )
            for h in hosts
        ]


def run_ring(hosts: list[Namespace], ports: list[int], count: int) -> float:
    """Each host's client calls the next host's server ``count`` times; connections/s."""
    started = time.monotonic()
    nexts = [(i + 1) % len(hosts) for i in range(len(hosts))]
    clients = [
        run_client(CLIENT, hosts[n].address, ports[n], count, netns=host.name)
        for host, n in zip(hosts, nexts, strict=True)
    ]
    for client in clients:
        if client.wait(timeout=600) != 0:
            raise RuntimeError("a bench client failed")
    return count * len(hosts) / (time.monotonic() - started)


def store_counts(url: str) -> tuple[int, int]:
    """Events the store holds, and events it holds as lost."""
    with open_log(resolve(url), Purpose.READ) as store:
        reader = LogReader(store)
        try:
            return reader.head(), sum(loss.lost for loss in reader.losses())
        finally:
            reader.close()


def rows_and_seeks(url: str, start_ns: int, end_ns: int, seeks: int) -> tuple[int, int, float]:
    """The load's connections over the whole recording (one table whose window covers it):
    paired across hosts, and not; and the median time of a table at a random moment."""
    with open_log(resolve(url), Purpose.READ) as log, open_derived(log) as derived:
        rows = connection_table(derived, end_ns, end_ns - start_ns)
        ours = [r for r in rows if r.client_comm == CLIENT or r.server_comm == SERVER]
        paired = [
            r for r in ours
            if r.client_pid is not None and r.server_pid is not None
            and r.client_host != r.server_host
        ]  # fmt: skip
        rng = random.Random(17)
        times = []
        for _ in range(seeks):
            at = rng.randrange(start_ns, end_ns)
            began = time.perf_counter()
            connection_table(derived, at, 15_000_000_000)
            times.append(time.perf_counter() - began)
    return len(paired), len(ours) - len(paired), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--count", type=int, default=1500, help="connections per client")
    parser.add_argument("--seeks", type=int, default=20)
    args = parser.parse_args()
    bindir = postgres_bindir()
    if os.geteuid() != 0 or bindir is None:
        sys.exit("bench/fleet.py needs root (eBPF, namespaces) and PostgreSQL's server binaries")
    with (
        tempfile.TemporaryDirectory(prefix="scope-fleet-") as tmp,
        postgres_server(bindir) as pg,
        bridged(args.hosts, "10.231") as hosts,
        servers(hosts, Path(tmp)) as running,
    ):
        url = pg.create_database("scope_fleet")
        ports = [server.port for server in running]
        alone = run_ring(hosts, ports, args.count)
        print(f"alone: {alone:,.0f} conn/s", flush=True)
        recorders = [
            record_host(url, Path(tmp), f"fleet-{i}", host) for i, host in enumerate(hosts)
        ]
        try:
            start_ns = time.time_ns()
            recorded = run_ring(hosts, ports, args.count)
            time.sleep(1.0)
            end_ns = time.time_ns()
        finally:
            codes = [stop(recorder) for recorder in recorders]
        if codes != [0] * len(recorders):
            raise RuntimeError(f"recorders exited with {codes}")
        print(f"recorded: {recorded:,.0f} conn/s", flush=True)
        events, lost = store_counts(url)
        cross, one_sided, seek = rows_and_seeks(url, start_ns, end_ns, args.seeks)
    print(
        f"RESULT hosts={args.hosts} conns_per_s_alone={alone:.0f} "
        f"conns_per_s_recorded={recorded:.0f} ratio={recorded / alone:.3f} events={events} "
        f"lost={lost} cross_host_rows={cross} one_sided_rows={one_sided} "
        f"seek_median_s={seek:.3f}"
    )


if __name__ == "__main__":
    main()
