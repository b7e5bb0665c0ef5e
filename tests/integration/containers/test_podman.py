"""Real Podman containers, recorded host-wide, replayed by name, image, pod and service.

The containers start after the recording's only /proc snapshot: what places their processes
in them is what the kernel's EXEC events carried and what the runtime's API said. Every
assertion looks at this test's own containers (named with its process id) only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventlog.events import Kind
from eventlog.location import LogLocation, resolve
from eventlog.store import Purpose, open_log
from recorder.cgroups import hierarchies
from replay.derived.store import open_derived
from replay.views.scene import processes_at
from tests import podman
from tests.cli import run_cli
from tests.ebpf import require_ebpf
from tests.recording import RecordingRun, recording, wait_for

pytestmark = [pytest.mark.ebpf, pytest.mark.root, pytest.mark.slow]

P = podman.PREFIX
IMAGE = f"localhost/{P}-server"
CLIENT_IMAGE = f"localhost/{P}-client"
VIP = f"10.97.{os.getpid() % 250}.10"
POD = {
    "io.kubernetes.pod.name": "checkout-7f9c",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.container.name": "api",
    "app": "checkout",
}
SERVE = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
CLIENT = f"sleep 2; while true; do wget -q -O /dev/null http://{VIP}/; sleep 0.2; done"


@dataclass
class Recorded:
    location: LogLocation
    run: RecordingRun
    ids: dict[str, str]  # container name (at start) -> id
    addresses: dict[str, str]
    before_rename_ns: int
    after_rename_ns: int
    restarted_ns: int
    v1_only_pid: int  # a process placed in the worker's v1 cgroup only
    v1_only_ns: int  # a moment it was alive


def dnat(pid: str, *backends: str) -> None:
    """In the network namespace of ``pid``: ``VIP:80`` sent to each backend in turn."""
    for index, backend in enumerate(backends):
        subprocess.run(
            ["nsenter", "-t", pid, "-n", "iptables", "-t", "nat", "-A", "OUTPUT", "-d", VIP,
             "-p", "tcp", "--dport", "80", "-m", "statistic", "--mode", "nth",
             "--every", str(len(backends) - index), "--packet", "0",
             "-j", "DNAT", "--to-destination", f"{backend}:8080"],
            check=True, capture_output=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    require_ebpf()
    podman.require_podman()
    workdir = tmp_path_factory.mktemp("podman")
    location = resolve(str(workdir / "scope.db"))
    socket_path = workdir / "podman.sock"
    names = [f"{P}-api", f"{P}-worker", f"{P}-client-old", f"{P}-client-new", f"{P}-late",
             f"{P}-spare"]  # fmt: skip
    podman.build_image(workdir, IMAGE, CLIENT_IMAGE)
    service = podman.start_service(socket_path)
    try:
        with recording(
            location, container_sockets=(str(socket_path),), snapshot_interval_s=0
        ) as run:
            ids = {
                names[0]: podman.run(names[0], IMAGE, "sh", "-c", SERVE, labels=POD),
                names[1]: podman.run(names[1], IMAGE, "sh", "-c", SERVE, labels={"app": "checkout"}),
                names[2]: podman.run(names[2], CLIENT_IMAGE, "sh", "-c", CLIENT),
                names[5]: podman.run(names[5], IMAGE, "sleep", "60"),
            }  # fmt: skip
            addresses = {
                name: podman.inspect(name, "{{.NetworkSettings.IPAddress}}") for name in names[:2]
            }
            dnat(podman.inspect(names[2], "{{.State.Pid}}"), *addresses.values())
            v1_only = enter_v1_cgroup_only(int(podman.inspect(names[1], "{{.State.Pid}}")))
            time.sleep(4)
            before = time.time_ns()
            podman.podman("rename", names[2], names[3])
            time.sleep(2)
            after = time.time_ns()
            # The runtime's API goes away and comes back: followed again, capture goes on.
            podman.stop_service(service)
            podman.remove(names[5])  # unseen by the API: found gone when it is back
            time.sleep(1.5)
            service = podman.start_service(socket_path)
            restarted = time.time_ns()
            ids[names[4]] = podman.run(names[4], IMAGE, "sleep", "60")
            wait_for(lambda: _records_of(run, ids[names[4]]), timeout=30)
            time.sleep(1)
            v1_only.kill()
            v1_only.wait()
        yield Recorded(location, run, ids, addresses, before, after, restarted, v1_only.pid, before)
    finally:
        podman.remove(*names)
        podman.stop_service(service)
        podman.remove_images(IMAGE, CLIENT_IMAGE)


def enter_v1_cgroup_only(container_pid: int) -> subprocess.Popen[bytes]:
    """A host process that joins the v1 cgroup (of the controller the recorder follows) of
    ``container_pid``'s container, and only that one, before it execs: what a cgroup driver
    that manages v1 controllers only does, as on a v1-only host. Its unified cgroup stays
    this test's own, its network namespace the host's: only its v1 id can place it."""
    where = hierarchies()
    assert where.v1_controller is not None and where.v1_root is not None
    cgroup = Path(f"/proc/{container_pid}/cgroup").read_text()
    path = next(
        line.split(":", 2)[2]
        for line in cgroup.splitlines()
        if where.v1_controller in line.split(":", 2)[1].split(",")
    )
    procs = f"{where.v1_root}{path}/cgroup.procs"
    return subprocess.Popen(["sh", "-c", f"echo $$ > {procs} && exec sleep 60"])


def _records_of(run: RecordingRun, container_id: str) -> list[dict[str, Any]]:
    return [
        e.extra
        for e in run.events()
        if e.kind == Kind.CONTAINER and e.extra is not None and e.extra.get("id") == container_id
    ]


def topology(recorded: Recorded, view: str, at_ns: int, *options: str) -> dict[str, Any]:
    result = run_cli(
        "scope-replay", "--db", str(recorded.location.path), "--at", str(at_ns),
        "--window", "3s", "--view", view, "--format", "json", *options,
        env={"SCOPE_CACHE_DIR": str(Path(str(recorded.location.path)).parent / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def own_nodes(document: dict[str, Any], ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The nodes of this test's containers, by their id."""
    wanted = {f"{cid};<container>": cid for cid in ids.values()}
    return {wanted[n]: node for n, node in document["nodes"].items() if n in wanted}


def metadata(node: dict[str, Any]) -> dict[str, str]:
    return {row["id"]: row["value"] for row in node["metadata"]}


def test_containers_are_named_as_of_the_moment(recorded: Recorded) -> None:
    api, worker, old, new = (f"{P}-api", f"{P}-worker", f"{P}-client-old", f"{P}-client-new")
    ids = recorded.ids
    before = own_nodes(topology(recorded, "containers", recorded.before_rename_ns), ids)
    after = own_nodes(topology(recorded, "containers", recorded.after_rename_ns), ids)
    assert {before[ids[n]]["label"] for n in (api, worker, old)} == {api, worker, old}
    assert after[ids[old]]["label"] == new  # renamed between the two moments
    assert metadata(before[ids[api]])["image"] == f"{IMAGE}:latest"
    assert metadata(before[ids[old]])["image"] == f"{CLIENT_IMAGE}:latest"
    assert metadata(before[ids[api]])["label_io.kubernetes.pod.name"] == "checkout-7f9c"
    # The client reached both backends through the virtual address.
    client = f"{ids[old]};<container>"
    assert {f"{ids[api]};<container>", f"{ids[worker]};<container>"} <= set(
        before[ids[old]]["adjacency"]
    ), before[ids[old]]
    assert client not in before[ids[api]]["adjacency"]


def test_images_and_pods(recorded: Recorded) -> None:
    at = recorded.before_rename_ns
    images = topology(recorded, "containers-by-image", at)["nodes"]
    server = images[f"{IMAGE};<container_image>"]
    assert (server["label"], server["labelMinor"]) == (IMAGE, "2 containers")
    assert f"{IMAGE};<container_image>" in images[f"{CLIENT_IMAGE};<container_image>"]["adjacency"]
    pods = topology(recorded, "pods", at, "--pseudo", "show")["nodes"]
    pod = pods["shop/checkout-7f9c;<pod>"]
    assert (pod["label"], pod["labelMinor"]) == ("checkout-7f9c", "shop")
    # The client and the other backend are in no pod: the host's unmanaged node.
    unmanaged = [n for n in pods.values() if n["id"].startswith("pseudo:unmanaged:")]
    assert len(unmanaged) == 1
    assert "shop/checkout-7f9c;<pod>" in unmanaged[0]["adjacency"]


def test_a_dnat_address_in_front_of_two_backends_is_one_service(recorded: Recorded) -> None:
    document = topology(recorded, "services", recorded.before_rename_ns)
    service = document["nodes"][f"{VIP}:80;<service>"]
    assert service["label"] == "checkout"  # both backends' containers say app=checkout
    assert service["labelMinor"] == "2 backends"
    backends = {row["value"] for row in service["metadata"] if row["label"] == "Backend"}
    assert backends == {f"{address}:8080" for address in recorded.addresses.values()}
    ids = recorded.ids
    assert sorted(service["adjacency"]) == sorted(
        f"{ids[name]};<container>" for name in recorded.addresses
    )
    client = document["nodes"][f"{ids[f'{P}-client-old']};<container>"]
    assert client["adjacency"] == [f"{VIP}:80;<service>"]


def test_scope_query_names_containers_as_of_t(recorded: Recorded) -> None:
    client = recorded.ids[f"{P}-client-old"]
    names = []
    for at in (recorded.before_rename_ns, recorded.after_rename_ns):
        moment = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at / 1e9))
        result = run_cli(
            "scope-query", "--db", str(recorded.location.path), "--format", "json",
            f"SELECT name, image FROM containers_at(TIMESTAMP '{moment}') WHERE id = '{client}'",
            env={"SCOPE_CACHE_DIR": str(Path(str(recorded.location.path)).parent / "cache")},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        names.append(json.loads(result.stdout))
    assert names == [
        [{"name": f"{P}-client-old", "image": f"{CLIENT_IMAGE}:latest"}],
        [{"name": f"{P}-client-new", "image": f"{CLIENT_IMAGE}:latest"}],
    ]


def test_processes_know_their_container_from_their_exec(recorded: Recorded) -> None:
    """A container's first process carried, in its EXEC, the cgroup id that the runtime's
    record of the container holds: no /proc walk was needed to place it."""
    events = recorded.run.events()
    for name in (f"{P}-api", f"{P}-worker", f"{P}-client-old"):
        record = next(
            e for e in events
            if e.kind == Kind.CONTAINER and e.extra and e.extra["id"] == recorded.ids[name]
        )  # fmt: skip
        assert record.pid is not None and record.extra is not None
        execs = [e for e in events if e.kind == Kind.EXEC and e.pid == record.pid]
        assert execs, name
        assert {e.extra["cgroup_id"] for e in execs if e.extra} == {record.extra["cgroup_id"]}
        assert {e.extra["cgroup_v1_id"] for e in execs if e.extra} == {record.extra["cgroup_v1_id"]}


def test_a_process_in_a_containers_v1_cgroup_only_is_placed_in_it(recorded: Recorded) -> None:
    """Where the unified hierarchy does not place a container (a v1-only host, or a v1-only
    cgroup driver on a hybrid one), the v1 id its EXEC carried places the process."""
    events = recorded.run.events()
    worker = recorded.ids[f"{P}-worker"]
    record = next(
        e.extra for e in events
        if e.kind == Kind.CONTAINER and e.extra and e.extra["id"] == worker
    )  # fmt: skip
    # Its shell's EXEC came before it moved; the command it then ran is the last.
    execed = [e for e in events if e.kind == Kind.EXEC and e.pid == recorded.v1_only_pid][-1]
    assert execed.extra is not None and execed.netns == os.stat("/proc/self/ns/net").st_ino
    assert execed.extra.get("cgroup_id") != record["cgroup_id"]
    assert execed.extra["cgroup_v1_id"] == record["cgroup_v1_id"]
    with (
        open_log(recorded.location, Purpose.READ) as log,
        open_derived(log, Path(str(recorded.location.path)).parent / "v1.duckdb") as derived,
    ):
        processes = processes_at(derived, recorded.v1_only_ns)
    (placed,) = [p for (_h, pid), p in processes.items() if pid == recorded.v1_only_pid]
    assert placed.container is not None and placed.container.id == worker


def test_the_runtime_going_away_and_back_is_followed(recorded: Recorded) -> None:
    counters = recorded.run.recording().counters or {}
    assert counters["container_api_connects"] >= 2
    notes = recorded.run.notes
    assert sum("lost the container runtime" in note for note in notes) == 1, notes
    assert any(note.startswith("following podman at ") for note in notes), notes
    late = _records_of(recorded.run, recorded.ids[f"{P}-late"])
    assert late and late[0]["name"] == f"{P}-late"
    spare = _records_of(recorded.run, recorded.ids[f"{P}-spare"])
    assert [r["action"] for r in spare] == ["start", "die"]
    # Capture went on meanwhile: the client's connections after the restart are recorded.
    vip = ipaddress.ip_address(VIP).packed
    assert any(
        e.kind == Kind.CONNECT and e.raddr == vip and e.wall_ns > recorded.restarted_ns
        for e in recorded.run.events()
    )
