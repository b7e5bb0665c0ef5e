"""Records the real log behind the engine's golden answers (tests/golden/engine/real.db.gz).

A few seconds of a real recorder (eBPF, /proc snapshots every second, conntrack) around a
workload of this machine: loopback clients and a server over IPv4 and IPv6, a burst of
short-lived connections, a connection held across snapshots, a refused connect, and clients
in a network namespace reaching a server in another through DNAT and SNAT. Run as root:

    python -m tests.make_real_log tests/golden/engine/real.db.gz

The log is committed: a recording cannot be made twice the same.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from eventlog.location import resolve
from recorder.workload import closed_port, refused, run_client, running_server
from tests.netns import in_netns, veth_pair
from tests.recording import recording


def workload(workdir: Path) -> None:
    with running_server("gold-srv", hosts=("127.0.0.1", "::1"), workdir=workdir) as server:
        held = run_client("gold-held", "127.0.0.1", server.port, count=1, hold_ms=2500)
        burst = run_client("gold-burst", "127.0.0.1", server.port, count=40)
        six = run_client("gold-six", "::1", server.port, count=5, hold_ms=30)
        for child in (burst, six):
            assert child.wait(timeout=60) == 0
        refused("127.0.0.1", closed_port())
        with veth_pair("10.217") as (left, right):
            with running_server("gold-nat-srv", hosts=(right.address,), netns=right.name,
                                workdir=workdir) as backend:  # fmt: skip
                device = f"va{left.name.split('-')[-1]}"
                in_netns(left.name, "ip", "route", "add", "10.98.0.0/24", "dev", device)
                in_netns(left.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d",
                         "10.98.0.10", "--dport", "80", "-j", "DNAT", "--to-destination",
                         f"{right.address}:{backend.port}")  # fmt: skip
                in_netns(left.name, "ip", "addr", "add", "10.217.0.3/24", "dev", device)
                in_netns(left.name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp",
                         "-d", right.address, "--dport", str(backend.port), "-j", "SNAT",
                         "--to-source", "10.217.0.3")  # fmt: skip
                time.sleep(1.5)  # the recorder follows the new namespaces' conntrack
                dnat = run_client("gold-dnat", "10.98.0.10", 80, count=4, hold_ms=400,
                                  netns=left.name)  # fmt: skip
                assert dnat.wait(timeout=60) == 0
                time.sleep(1.2)
        assert held.wait(timeout=60) == 0
        time.sleep(1.2)


def main() -> None:
    target = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="scope-real-") as tmp:
        db = Path(tmp) / "real.db"
        with recording(resolve(str(db)), snapshot_interval_s=1.0):
            time.sleep(1.2)
            workload(Path(tmp))
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("VACUUM")
        with db.open("rb") as raw, target.open("wb") as out:
            with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as packed:
                shutil.copyfileobj(raw, packed)
    print(f"{target}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
