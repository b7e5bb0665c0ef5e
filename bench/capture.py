"""Benchmark: connection rate of a loopback workload alone and while scope-record records it.

A C load generator (bench/loadgen.c, compiled here) runs a server and several clients for a
fixed time at their maximum connection rate: alone, then with `scope-record` writing to a
SQLite log (the other way round every other round), for ``--rounds`` rounds. The ratio is
the median of the rounds' side-by-side ratios; rates, the recorder's CPU and the whole
machine's CPU time per completed connection are medians too (11 rounds by default: a
round's ratio moves by +-0.05 on this kind of machine). Every connection the clients
completed must be in the log as four events (connect, accept, two closes).

``--conntrack-active``: as on a host with Docker, Kubernetes or any NAT rule, conntrack
tracks every connection (a rule that only counts new connections is added for the run, and
removed); each round then also records with ``--no-conntrack``, so that the cost of
following conntrack is measured beside the rest (``ratio_no_conntrack``,
``recorder_cpu_pct_no_conntrack``).

``--containers SOCKET``: the recorder follows the container runtime API on SOCKET (e.g.
``podman system service``'s) and each round also records with ``--no-containers``, so that
the cost of following the runtime is measured beside the rest (``ratio_no_containers``,
``recorder_cpu_pct_no_containers``).

``--forks``: each round also records with ``--no-follow-forks`` (no FORK events, no OWNER
events: replay attributes sockets to their opener), so that the cost of following sockets
through forks is measured beside the rest (``ratio_no_follow_forks``,
``recorder_cpu_pct_no_follow_forks``). The load generator's processes fork only at start, as
most servers' do: this measures what following costs a workload, not a fork per connection.

Last line:
RESULT conns_per_s_alone=<n> conns_per_s_recorded=<n> ratio=<n> events_captured=<n>
       events_expected=<n> lost=<n> recorder_cpu_pct=<n> cpu_us_per_conn_alone=<n>
       cpu_us_per_conn_recorded=<n> conntrack_active=<0|1>
       [ratio_no_conntrack=<n> recorder_cpu_pct_no_conntrack=<n>]
       [ratio_no_containers=<n> recorder_cpu_pct_no_containers=<n>]
       [ratio_no_follow_forks=<n> recorder_cpu_pct_no_follow_forks=<n>]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.events import Kind
from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    completed: int
    failed: int
    seconds: float
    busy_ticks: int  # the whole machine's, while the clients ran

    @property
    def cpu_us_per_conn(self) -> float:
        return self.busy_ticks * 1e6 / CLOCK_TICKS / max(1, self.completed)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


def build_loadgen(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    compiler = shutil.which("cc") or shutil.which("gcc") or "cc"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(HERE / "loadgen.c")], check=True)
    return binary


def run_load(loadgen: Path, port: int, clients: int, seconds: float) -> LoadResult:
    server = subprocess.Popen([str(loadgen), "server", str(port), "1", str(seconds + 2)])
    time.sleep(0.3)
    started, busy_before = time.monotonic(), machine_busy_ticks()
    procs = [
        subprocess.Popen(
            [str(loadgen), "client", str(port), f"127.0.0.{index + 2}", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(clients)
    ]
    completed = failed = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        done, bad = (int(x) for x in out.split())
        completed, failed = completed + done, failed + bad
    elapsed, busy = time.monotonic() - started, machine_busy_ticks() - busy_before
    server.send_signal(signal.SIGKILL)
    server.wait()
    subprocess.run(["pkill", "-KILL", "-f", f"loadgen server {port} "], check=False)
    return LoadResult(completed, failed, elapsed, busy)


def machine_busy_ticks() -> int:
    """CPU time the whole machine spent busy (user, system, interrupts), in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def snapshot_committed(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with open_log(resolve(str(db)), Purpose.READ) as store:
            return any(kind == Kind.SNAPSHOT for _, kind in LogReader(store).event_counts())
    except Exception:
        return False


def count_captured(db: Path, port: int) -> tuple[int, int]:
    """Connection events touching ``port`` in the log, and events recorded as lost."""
    with open_log(resolve(str(db)), Purpose.READ) as store:
        reader = LogReader(store)
        captured = sum(
            1
            for event in reader.events()
            if event.kind in (Kind.CONNECT, Kind.ACCEPT, Kind.CLOSE)
            and port in (event.lport, event.rport)
        )
        lost = sum(loss.lost for loss in reader.losses())
    return captured, lost


# A rule that looks at conntrack's state makes conntrack track every connection of the
# namespace, as Docker's and Kubernetes' rules do; this one has no target (it only counts),
# so it changes nothing else.
_CONNTRACK_RULE = ["OUTPUT", "-m", "conntrack", "--ctstate", "NEW"]


@contextlib.contextmanager
def conntrack_active(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    subprocess.run(["iptables", "-I", *_CONNTRACK_RULE], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *_CONNTRACK_RULE], check=False)


def start_recorder(db: Path, *options: str) -> subprocess.Popen[bytes]:
    """``scope-record --quiet *options`` into ``db``, once its first snapshot is committed."""
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", str(db), "--quiet", *options],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not snapshot_committed(db):
        if time.monotonic() > deadline or recorder.poll() is not None:
            raise RuntimeError("scope-record did not start")
        time.sleep(0.1)
    return recorder


def run_recorded(
    loadgen: Path, port: int, clients: int, seconds: float, workdir: Path, *options: str
) -> tuple[LoadResult, int, int, float]:
    db = workdir / f"bench-{port}.db"
    recorder = start_recorder(db, *options)
    cpu_before, wall_before = cpu_seconds(recorder.pid), time.monotonic()
    result = run_load(loadgen, port, clients, seconds)
    time.sleep(0.5)  # let the last events reach the log before measuring CPU and stopping
    cpu_pct = 100 * (cpu_seconds(recorder.pid) - cpu_before) / (time.monotonic() - wall_before)
    recorder.send_signal(signal.SIGTERM)
    if recorder.wait(timeout=120) != 0:
        raise RuntimeError(f"scope-record exited with {recorder.returncode}")
    captured, lost = count_captured(db, port)
    for leftover in workdir.glob(f"bench-{port}.db*"):
        leftover.unlink()
    return result, captured, lost, cpu_pct


@dataclass
class Variant:
    """A recording run beside the rest in each round, with one thing turned off: its options,
    its port (the round's port plus ``port_offset``), and its figures (RESULT's
    ``ratio_<key>``, ``recorder_cpu_pct_<key>``)."""

    key: str
    port_offset: int
    options: tuple[str, ...]
    ratios: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--conntrack-active", action="store_true")
    parser.add_argument("--containers", metavar="SOCKET", help="a runtime API to follow")
    parser.add_argument(
        "--forks", action="store_true", help="also record with --no-follow-forks each round"
    )
    args = parser.parse_args()
    # What every recorded run follows: the given runtime, or none (the default sockets
    # may be anyone's).
    follow = ("--container-api", args.containers) if args.containers else ("--no-containers",)
    if os.geteuid() != 0:
        sys.exit("bench/capture.py needs root (eBPF)")
    alone, recorded, ratios, cpu, cost_alone, cost_recorded = [], [], [], [], [], []
    variants = [
        variant
        for wanted, variant in (
            (args.conntrack_active, Variant("no_conntrack", 2, ("--no-conntrack", *follow))),
            (bool(args.containers), Variant("no_containers", 3, ("--no-containers",))),
            (args.forks, Variant("no_follow_forks", 4, ("--no-follow-forks", *follow))),
        )
        if wanted
    ]
    captured_total = expected_total = lost_total = 0
    with (
        tempfile.TemporaryDirectory(prefix="scope-bench-") as tmp,
        conntrack_active(args.conntrack_active),
    ):
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        for round_number in range(args.rounds):
            port = 20000 + round_number * 5

            # Alternate which goes first, so that a drift of the machine's speed within a
            # round does not always favour the same side.
            if round_number % 2:
                result, captured, lost, cpu_pct = run_recorded(
                    loadgen, port + 1, args.clients, args.seconds, workdir, *follow
                )
                time.sleep(1)
                base = run_load(loadgen, port, args.clients, args.seconds)
            else:
                base = run_load(loadgen, port, args.clients, args.seconds)
                time.sleep(1)
                result, captured, lost, cpu_pct = run_recorded(
                    loadgen, port + 1, args.clients, args.seconds, workdir, *follow
                )
            for variant in variants:
                time.sleep(1)
                other, _, _, cpu_other = run_recorded(
                    loadgen, port + variant.port_offset, args.clients, args.seconds, workdir,
                    *variant.options,
                )  # fmt: skip
                variant.ratios.append(other.rate / base.rate)
                variant.cpu.append(cpu_other)
                print(
                    f"round {round_number + 1}: recorded with {variant.options[0]} "
                    f"{other.rate:,.0f} conn/s, ratio {variant.ratios[-1]:.3f}, "
                    f"recorder CPU {cpu_other:.0f}%",
                    flush=True,
                )
            alone.append(base.rate)
            recorded.append(result.rate)
            ratios.append(result.rate / base.rate)
            cpu.append(cpu_pct)
            cost_alone.append(base.cpu_us_per_conn)
            cost_recorded.append(result.cpu_us_per_conn)
            captured_total += captured
            expected_total += 4 * result.completed
            lost_total += lost
            print(
                f"round {round_number + 1}: alone {base.rate:,.0f} conn/s, "
                f"recorded {result.rate:,.0f} conn/s ({result.failed} failed), "
                f"ratio {ratios[-1]:.3f}, events {captured:,}/{4 * result.completed:,}, "
                f"lost {lost}, recorder CPU {cpu_pct:.0f}%, machine CPU per connection "
                f"{cost_alone[-1]:.1f} us alone, {cost_recorded[-1]:.1f} us recorded",
                flush=True,
            )
            time.sleep(1)
    # The ratio is the median of each round's side-by-side ratio: the machine's speed drifts
    # between rounds (alone rates move by 10-20 %), and each round's pair shares its moment.
    print(
        f"RESULT conns_per_s_alone={statistics.median(alone):.0f} "
        f"conns_per_s_recorded={statistics.median(recorded):.0f} "
        f"ratio={statistics.median(ratios):.3f} events_captured={captured_total} "
        f"events_expected={expected_total} lost={lost_total} "
        f"recorder_cpu_pct={statistics.median(cpu):.1f} "
        f"cpu_us_per_conn_alone={statistics.median(cost_alone):.1f} "
        f"cpu_us_per_conn_recorded={statistics.median(cost_recorded):.1f} "
        f"conntrack_active={int(args.conntrack_active)}"
        + "".join(
            f" ratio_{v.key}={statistics.median(v.ratios):.3f} "
            f"recorder_cpu_pct_{v.key}={statistics.median(v.cpu):.1f}"
            for v in variants
        )
    )


if __name__ == "__main__":
    main()
