"""Topology views on hand-written logs, one rule each, against golden JSON and DOT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eventlog.events import TCP_LISTEN, CgroupIds, ConntrackEntry, ContainerRecord
from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log
from replay.views.api import topology_at
from replay.views.render import render_dot, render_json, render_table
from replay.views.topology import Options, View
from tests.factories import ROOT_NETNS, ip
from tests.golden import check_golden
from tests.logbuilder import Builder, built_log
from tests.scenarios import IPS_DNAT

DOCKER = "d0" * 32
CONTAINERD = "c1" * 32
CRIO = "e2" * 32
PODMAN = "f3" * 32


def topology(
    location: LogLocation, view: View, options: Options | None = None, name: str | None = None
) -> dict[str, Any]:
    with open_log(location, Purpose.READ) as store:
        result = topology_at(store, "+5s", "15s", view, options)
    text = render_json(result)
    if name:
        check_golden(f"view-{name}.json", text)
        check_golden(f"view-{name}.dot", render_dot(result))
    return json.loads(text)  # type: ignore[no-any-return]


def scenario(b: Builder) -> None:
    """A host 10.0.0.2 running nginx (docker), api x2 (containerd), a cron job (cri-o),
    a podman worker, and sshd outside any container."""
    b.snapshot(
        0.5,
        [
            ("0.0.0.0:443", "0.0.0.0:0", TCP_LISTEN, 10),
            ("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 20),
        ],
        processes=[
            (10, "nginx", f"0::/system.slice/docker-{DOCKER}.scope"),
            (
                20,
                "api",
                f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CONTAINERD}.scope",
            ),
            (
                21,
                "api",
                f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CONTAINERD}.scope",
            ),
            (30, "cron", f"0::/kubepods.slice/kubepods-pod2.slice/crio-{CRIO}.scope"),
            (40, "worker", f"0::/machine.slice/libpod-{PODMAN}.scope"),
            (50, "sshd", "0::/system.slice/ssh.service"),
            (60, "idle", "0::/system.slice/idle.service"),
        ],
    )
    # The Internet connects to nginx; nginx calls both api processes over loopback.
    b.accept(1.0, 1, 10, "nginx", "10.0.0.2:443", "93.184.216.34:50001")
    b.connect(1.1, 2, 10, "nginx", "127.0.0.1:40001", "127.0.0.1:8080")
    b.accept(1.1, 3, 20, "api", "127.0.0.1:8080", "127.0.0.1:40001")
    b.connect(1.2, 4, 10, "nginx", "127.0.0.1:40002", "127.0.0.1:8080")
    b.accept(1.2, 5, 21, "api", "127.0.0.1:8080", "127.0.0.1:40002")
    # api calls out to the Internet and to an unrecorded database on the LAN.
    b.connect(1.3, 6, 20, "api", "10.0.0.2:41000", "140.82.112.3:443")
    b.connect(1.4, 7, 21, "api", "10.0.0.2:41001", "10.0.0.9:5432")
    # cron (cri-o) calls api; the worker (podman) calls the Internet; sshd takes an inbound.
    b.connect(1.5, 8, 30, "cron", "127.0.0.1:40003", "127.0.0.1:8080")
    b.accept(1.5, 9, 20, "api", "127.0.0.1:8080", "127.0.0.1:40003")
    b.connect(1.6, 10, 40, "worker", "10.0.0.2:41002", "140.82.112.4:443")
    b.accept(1.7, 11, 50, "sshd", "10.0.0.2:22", "8.8.4.4:60000")
    b.exec(9.0, 999, "end-marker")


def test_processes_view(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    document = topology(location, View.processes, name="processes")
    nodes = document["nodes"]
    assert sorted(nodes) == [
        "in-theinternet",
        "out-theinternet",
        "testhost;10",
        "testhost;20",
        "testhost;21",
        "testhost;30",
        "testhost;40",
        "testhost;50",
    ]
    assert nodes["in-theinternet"]["adjacency"] == ["testhost;10", "testhost;50"]
    assert nodes["testhost;10"]["adjacency"] == ["testhost;20", "testhost;21"]
    assert nodes["testhost;20"]["adjacency"] == ["out-theinternet"]
    assert nodes["testhost;21"]["adjacency"] == []  # its only peer is an unknown LAN host
    assert (
        nodes["testhost;10"]["label"],
        nodes["testhost;10"]["labelMinor"],
        nodes["testhost;10"]["shape"],
    ) == ("nginx", "testhost (10)", "square")
    assert (
        nodes["out-theinternet"]["labelMinor"] == "Outbound connections"
        and nodes["out-theinternet"]["pseudo"]
    )
    assert {p["topologyId"] for p in nodes["testhost;20"]["parents"]} == {"containers", "hosts"}
    # Hidden: the unknown LAN address, and the process without connections (idle).
    assert document["stats"] == {
        "node_count": 8,
        "nonpseudo_node_count": 6,
        "edge_count": 7,
        "filtered_nodes": 2,
    }


def test_unconnected_and_unknown_lan_shown_on_request(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    shown = topology(
        location, View.processes, Options(show_unconnected=True, show_unknown_lan=True)
    )
    assert "testhost;60" in shown["nodes"]
    assert "testhost;999" not in shown["nodes"]  # it only starts after T
    assert shown["nodes"]["testhost;21"]["adjacency"] == ["pseudo:lan:10.0.0.9"]
    assert shown["nodes"]["pseudo:lan:10.0.0.9"]["pseudo"] is True
    assert shown["stats"]["filtered_nodes"] == 0


def test_processes_by_name_groups(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    nodes = topology(location, View.processes_by_name, name="processes-by-name")["nodes"]
    assert nodes["nginx"]["adjacency"] == ["api"]
    assert nodes["cron"]["adjacency"] == ["api"]
    assert nodes["api"]["stack"] is True
    assert sorted(nodes) == [
        "api",
        "cron",
        "in-theinternet",
        "nginx",
        "out-theinternet",
        "sshd",
        "worker",
    ]


def test_containers_from_each_runtime(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    document = topology(location, View.containers, name="containers")
    nodes = document["nodes"]
    docker, containerd, crio, podman = (
        f"{i};<container>" for i in (DOCKER, CONTAINERD, CRIO, PODMAN)
    )
    assert nodes[docker]["adjacency"] == [containerd]
    assert nodes[crio]["adjacency"] == [containerd]
    assert nodes[containerd]["adjacency"] == ["out-theinternet"]
    assert nodes[podman]["adjacency"] == ["out-theinternet"]
    assert nodes["in-theinternet"]["adjacency"] == [docker]  # sshd's side is uncontained: hidden
    assert nodes[docker]["label"] == DOCKER[:12] and nodes[docker]["shape"] == "hexagon"
    assert not any(n.startswith("pseudo:uncontained") for n in nodes)
    shown = topology(location, View.containers, Options(show_uncontained=True))["nodes"]
    assert shown["in-theinternet"]["adjacency"] == [docker, "pseudo:uncontained:testhost"]
    assert shown["pseudo:uncontained:testhost"]["label"] == "Uncontained"


def test_hosts_view(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    document = topology(location, View.hosts, name="hosts")
    nodes = document["nodes"]
    assert sorted(nodes) == ["in-theinternet", "out-theinternet", "testhost;<host>"]
    assert nodes["in-theinternet"]["adjacency"] == ["testhost;<host>"]
    assert nodes["testhost;<host>"]["adjacency"] == ["out-theinternet", "testhost;<host>"]
    assert nodes["testhost;<host>"]["shape"] == "circle"


def test_endpoints_view(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    nodes = topology(location, View.endpoints, name="endpoints")["nodes"]
    loopback_server = "testhost-4026531833;127.0.0.1;8080"
    assert nodes["testhost-4026531833;127.0.0.1;40001"]["adjacency"] == [loopback_server]
    assert nodes[";93.184.216.34;50001"]["adjacency"] == ["testhost;10.0.0.2;443"]


def test_edges_carry_their_connections(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    document = topology(location, View.processes_by_name)
    (edge,) = [e for e in document["edges"] if (e["source"], e["target"]) == ("nginx", "api")]
    assert edge["connections"] == 2 and len(edge["connection_ids"]) == 2


def test_edges_count_their_open_connections(tmp_path: Path) -> None:
    """Of an edge's connections, those still open at T: one closed in the window, one open."""
    with built_log(tmp_path / "v.db") as (location, b):
        b.exec(0.5, 5, "start-marker")
        for sock, port in ((1, 40001), (3, 40002)):
            b.connect(1.0, sock, 10, "nginx", f"127.0.0.1:{port}", "127.0.0.1:8080")
            b.accept(1.0, sock + 1, 20, "api", "127.0.0.1:8080", f"127.0.0.1:{port}")
        b.close(2.0, 1, 10, "nginx", "127.0.0.1:40001", "127.0.0.1:8080")
        b.close(2.0, 2, 20, "api", "127.0.0.1:8080", "127.0.0.1:40001")
        b.exec(9.0, 999, "end-marker")
    (edge,) = topology(location, View.processes_by_name)["edges"]
    assert (edge["connections"], edge["open_connections"]) == (2, 1)
    with open_log(location, Purpose.READ) as store:
        table = render_table(topology_at(store, "+5s", "15s", View.processes_by_name))
    assert table.splitlines()[-1].split()[:4] == ["nginx", "api", "2", "1"]


def test_no_inbound_to_outbound_internet_edge_and_no_lonely_pseudo_nodes(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        b.exec(0.5, 5, "start-marker")
        # A connection whose both ends are public and not ours (a proxied peer seen raw).
        b.accept(1.0, 1, 77, "proxy", "10.0.0.2:3128", "93.184.216.34:50002")
        b.exec(9.0, 999, "end-marker")
    document = topology(location, View.hosts)
    assert ("in-theinternet", "out-theinternet") not in {
        (e["source"], e["target"]) for e in document["edges"]
    }
    assert "out-theinternet" not in document["nodes"]


def test_views_are_byte_identical_across_runs(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        scenario(b)
    for view in View:
        with open_log(location, Purpose.READ) as store:
            first = render_json(topology_at(store, "+5s", "15s", view))
            second = render_json(topology_at(store, "+5s", "15s", view))
        assert first == second


WEB_1, WEB_2, DB = ("a1" * 32, "a2" * 32, "b3" * 32)
NS_WEB_1, NS_WEB_2, NS_DB = 4026532101, 4026532102, 4026532103
WEB_IMAGE = "registry.example:5000/shop/web:1.2"
VIP = "10.96.0.10"


def _container(action: str, cid: str, name: str, image: str, labels: dict[str, str],
               netns: int, cgroups: CgroupIds) -> ContainerRecord:  # fmt: skip
    return ContainerRecord(
        action, cid, name, image, f"sha256:{image[-3:]}", labels, None, netns, cgroups.unified,
        "", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "podman", cgroups.v1,
    )  # fmt: skip


def _pod(name: str) -> dict[str, str]:
    return {"app": "web", "io.kubernetes.container.name": "web",
            "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": f"uid-{name}"}  # fmt: skip


def _dnat(b: Builder, at: float, port: int, backend: str, ct_id: int) -> None:
    """The host's conntrack: 10.0.0.2:port -> VIP:80, sent to backend:8080."""
    b.conntrack(at, ConntrackEntry(
        ROOT_NETNS, ip("10.0.0.2"), ip(VIP), port, 80, ip(backend), ip("10.0.0.2"), 8080, port,
        IPS_DNAT, 3, ct_id, 0, 0,
    ))  # fmt: skip


def services_scenario(b: Builder) -> None:
    """Two replicas of one image in two pods, behind a DNAT-ed virtual address, and a
    database renamed during the recording. No /proc snapshot sees any of them: their
    processes are placed by the cgroup ids their EXECs carried (web-2's a v1 one only)."""
    web_1, web_2, db = CgroupIds(101, None), CgroupIds(None, 302), CgroupIds(103, 303)
    b.container(
        0.1, _container("listed", WEB_1, "web-1", WEB_IMAGE, _pod("web-1"), NS_WEB_1, web_1)
    )
    b.container(
        0.1, _container("listed", WEB_2, "web-2", WEB_IMAGE, _pod("web-2"), NS_WEB_2, web_2)
    )
    b.container(0.1, _container("listed", DB, "db", "db@sha256:abc", {}, NS_DB, db))
    b.exec(0.2, 10, "web", netns=NS_WEB_1, cgroups=web_1)
    b.exec(0.2, 11, "web", netns=NS_WEB_2, cgroups=web_2)
    b.exec(0.2, 20, "postgres", netns=NS_DB, cgroups=db)
    b.exec(0.3, 30, "curl", cgroups=CgroupIds(1, 1))  # the roots: no container's
    # curl calls the service twice; DNAT sends one call to each replica.
    for port, (backend, pid, netns, sock), ct_id in zip(
        (50001, 50002),
        (("10.88.0.2", 10, NS_WEB_1, 2), ("10.88.0.3", 11, NS_WEB_2, 4)),
        (7001, 7002), strict=True,
    ):  # fmt: skip
        _dnat(b, 1.0, port, backend, ct_id)
        b.connect(1.0, sock - 1, 30, "curl", f"10.0.0.2:{port}", f"{VIP}:80")
        b.accept(1.0, sock, pid, "web", f"{backend}:8080", f"10.0.0.2:{port}", netns=netns)
    # Both replicas use the database; one also calls out to the Internet.
    b.connect(1.5, 5, 10, "web", "10.88.0.2:41000", "10.88.0.4:5432", netns=NS_WEB_1)
    b.accept(1.5, 6, 20, "postgres", "10.88.0.4:5432", "10.88.0.2:41000", netns=NS_DB)
    b.connect(1.6, 7, 11, "web", "10.88.0.3:41001", "10.88.0.4:5432", netns=NS_WEB_2)
    b.accept(1.6, 8, 20, "postgres", "10.88.0.4:5432", "10.88.0.3:41001", netns=NS_DB)
    b.connect(1.7, 9, 11, "web", "10.88.0.3:41002", "140.82.112.3:443", netns=NS_WEB_2)
    b.container(3.0, _container("rename", DB, "db-primary", "db@sha256:abc", {}, NS_DB, db))
    b.exec(9.0, 999, "end-marker")


def test_containers_by_name_as_of_t_and_by_image(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        services_scenario(b)
    nodes = topology(location, View.containers, name="containers-named")["nodes"]
    web_1, web_2, db = (f"{i};<container>" for i in (WEB_1, WEB_2, DB))
    assert [nodes[n]["label"] for n in (web_1, web_2, db)] == ["web-1", "web-2", "db-primary"]
    assert nodes[web_2]["adjacency"] == [db, "out-theinternet"]
    by_image = topology(location, View.containers_by_image, name="containers-by-image")["nodes"]
    web = "registry.example:5000/shop/web;<container_image>"
    assert by_image[web]["label"] == "registry.example:5000/shop/web"
    assert by_image[web]["adjacency"] == ["db;<container_image>", "out-theinternet"]


def test_pods_from_kubelet_labels(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        services_scenario(b)
    nodes = topology(location, View.pods, Options(show_uncontained=True), name="pods")["nodes"]
    assert nodes["uid-web-1;<pod>"]["label"] == "web-1"
    assert nodes["uid-web-1;<pod>"]["adjacency"] == ["pseudo:unmanaged:testhost"]


def test_a_dnat_address_with_two_backends_is_one_service(tmp_path: Path) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        services_scenario(b)
    nodes = topology(location, View.services, name="services")["nodes"]
    (service,) = [n for n in nodes if VIP in n]
    assert nodes[service]["label"] == "web"  # the app label both backends carry
    assert nodes[service]["labelMinor"] == "2 backends"
