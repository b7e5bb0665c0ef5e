"""Scope's topologies from a scene: endpoints, processes, processes by name, containers,
containers by image, pods, services, hosts.

Each connection becomes an edge from the node of its client side to the node of its server
side, once each side is mapped to a node of the view. A side that is a socket of this host
maps to its process (and up, to the process's container or host). A remote side maps to the
Internet when its address is public: ``in-theinternet`` when it connected to us,
``out-theinternet`` when we connected to it. A remote private address that is not ours is an
unknown machine on the LAN: left out unless asked for (Scope never showed them).

Afterwards, always: edges from the inbound to the outbound Internet go, pseudo nodes left
without edges go. Options: unconnected processes shown or hidden, the uncontained pseudo
node of the containers views shown or hidden (and the pods view's unmanaged one, for
containers in no pod). Every node a rule or filter removes is counted.

A container is labelled by its name as of T (its short id when no runtime named it), with its
image in its details. The services view needs no Kubernetes API: an address conntrack
translated (DNAT, as kube-proxy and published ports do) is one service node, named by the
address (or by the ``app`` label its backends' containers agree on); its clients' edges go to
it, and its edges go on to the containers (or processes) behind it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eventlog.addresses import is_loopback, is_public
from replay.views import columns
from replay.views.containers import Container
from replay.views.scene import ProcessInfo, Scene

INTERNET_IN = "in-theinternet"
INTERNET_OUT = "out-theinternet"


class View(StrEnum):
    endpoints = "endpoints"
    processes = "processes"
    processes_by_name = "processes-by-name"
    containers = "containers"
    containers_by_image = "containers-by-image"
    pods = "pods"
    services = "services"
    hosts = "hosts"


# The views that map processes to their containers (and the rest to the uncontained node).
CONTAINER_VIEWS = frozenset({View.containers, View.containers_by_image, View.pods, View.services})
SERVICE_LABEL = "app"  # the label that names a service when its backends agree on it


@dataclass(frozen=True)
class Options:
    show_unconnected: bool = False  # processes (and by name) with no connection at T
    show_uncontained: bool = False  # the containers view's pseudo node for the rest
    show_unknown_lan: bool = False  # remote private addresses that are not ours
    show_self: bool = False  # the recorders' own processes and connections (scene.own)


@dataclass(slots=True)  # a map of a busy host has thousands
class Node:
    id: str
    label: str
    label_minor: str
    rank: str
    shape: str
    pseudo: bool = False
    stack: bool = False
    metadata: list[tuple[str, str, str]] = field(default_factory=list)  # (id, label, value)
    parents: list[tuple[str, str, str]] = field(default_factory=list)  # (id, label, topologyId)


@dataclass(slots=True)
class Edge:
    source: str
    target: str
    connection_ids: list[str] = field(default_factory=list)
    # Of those, the ones open at T (the rest closed in the window, or of unknown state since
    # their recording ended): a map draws an edge with none open as a past one.
    open_connections: int = 0


@dataclass
class Topology:
    view: str
    at_ns: int
    window_ns: int
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    filtered_nodes: int = 0
    unattributed_connections: int = 0  # a local side whose process is unknown

    def adjacency(self, node_id: str) -> list[str]:
        return sorted(target for (source, target) in self.edges if source == node_id)

    def adjacencies(self) -> dict[str, list[str]]:
        """Every node's ``adjacency`` at once: one pass over the edges, not one per node (a
        busy host's map has thousands of each)."""
        targets: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        for source, target in self.edges:
            targets.setdefault(source, []).append(target)
        return {node_id: sorted(found) for node_id, found in targets.items()}

    def stats(self) -> dict[str, int]:
        return {
            "node_count": len(self.nodes),
            "nonpseudo_node_count": sum(1 for node in self.nodes.values() if not node.pseudo),
            "edge_count": len(self.edges),
            "filtered_nodes": self.filtered_nodes,
        }


# -- nodes of each kind ------------------------------------------------------------------
def host_node(host: str) -> Node:
    return Node(f"{host};<host>", host, "", host, "circle")


def internet_node(inbound: bool) -> Node:
    if inbound:
        return Node(
            INTERNET_IN, "The Internet", "Inbound connections", "theinternet", "cloud", pseudo=True
        )
    return Node(
        INTERNET_OUT, "The Internet", "Outbound connections", "theinternet", "cloud", pseudo=True
    )


def lan_node(address: str) -> Node:
    return Node(
        f"pseudo:lan:{address}", address, "Unknown (not recorded)", "lan", "circle", pseudo=True
    )


UNNAMED = "?"  # a process whose name nothing recorded


def process_node(host: str, pid: int, comm: str | None, info: ProcessInfo | None) -> Node:
    name = comm or (info.comm if info else UNNAMED)
    metadata = [("pid", "PID", str(pid))]
    parents = [(f"{host};<host>", host, "hosts")]
    if info is not None:
        if info.ppid is not None:
            metadata.append(("ppid", "Parent PID", str(info.ppid)))
        if info.cmdline:
            metadata.append(("cmdline", "Command", info.cmdline))
        if info.netns is not None:
            metadata.append(("netns", "Network namespace", str(info.netns)))
        container = info.container
        if container is not None:
            parents.insert(0, (container.node_id, container.label, "containers"))
    return Node(
        f"{host};{pid}", name, f"{host} ({pid})", name, "square", metadata=metadata, parents=parents
    )


# -- mapping connection sides to nodes ---------------------------------------------------
@dataclass
class _Side:
    local: bool
    ip: str
    port: int
    label: str  # the endpoint as the table writes it
    pid: int | None
    comm: str | None
    netns: int | None


# Edges to be: for each leg, the source and target node number of each connection (-1: none),
# and which connections take that leg.
_Legs = list[tuple[columns.Codes, columns.Codes, columns.Flags]]


def _either(first: pa.ChunkedArray, other: pa.ChunkedArray) -> pa.Array:
    """``first`` where it says something, else ``other`` (``first or other``)."""
    return pc.if_else(pa.array(columns.present(first)), first, other)


def _sides(rows: pa.Table) -> pa.Table:
    """The two sides of each connection of ``rows``, a row each, the client's first: each
    with the host that recorded it (``own_host``) and the other side's (``other_host``)."""
    client_host = _either(rows["client_host"], rows["host"])
    server_host = _either(rows["server_host"], rows["host"])
    # the server as the map shows it: the real backend's, when DNAT sent the connection there
    server_label = _either(rows["nat_destination"], rows["server"])
    count = rows.num_rows
    client = pa.table({
        "local": rows["client_local"], "own_host": client_host, "other_host": server_host,
        "ip": rows["client_ip"], "port": rows["client_port"], "label": rows["client"],
        "pid": rows["client_pid"], "comm": rows["client_comm"], "netns": rows["client_netns"],
        "is_client": pa.repeat(True, count),
    })  # fmt: skip
    server = pa.table({
        "local": rows["server_local"], "own_host": server_host, "other_host": client_host,
        "ip": rows["server_ip"], "port": rows["server_port"], "label": server_label,
        "pid": rows["server_pid"], "comm": rows["server_comm"], "netns": rows["server_netns"],
        "is_client": pa.repeat(False, count),
    })  # fmt: skip
    interleaved = np.empty(2 * count, np.int64)
    interleaved[0::2] = np.arange(count)
    interleaved[1::2] = np.arange(count) + count
    return pa.concat_tables([client, server.cast(client.schema)]).take(interleaved)


def _side_keys(sides: pa.Table, view: View) -> list[columns.Codes]:
    """What the node of a side depends on: in the endpoints view, all of the side; in the
    others, (host, pid, comm, netns) for a socket of this host, and (the other side's host,
    address, inbound) for a remote one."""
    if view == View.endpoints:
        names = ("own_host", "local", "ip", "port", "netns", "pid", "comm", "label")
        return [columns.codes(sides[name]) for name in names]
    local = columns.flags(sides["local"])
    host = pc.if_else(sides["local"].fill_null(False), sides["own_host"], sides["other_host"])
    only_local = [
        np.where(local, columns.codes(sides[name]), -1) for name in ("pid", "comm", "netns")
    ]
    only_remote = [np.where(local, -1, columns.codes(sides[name])) for name in ("ip", "is_client")]
    return [local.astype(np.int64), columns.codes(host), *only_local, *only_remote]


class _Builder:
    def __init__(self, scene: Scene, view: View, options: Options) -> None:
        self.scene = scene
        self.view = view
        self.options = options
        self.topology = Topology(str(view), scene.at_ns, scene.window_ns)
        self.hidden_lan: set[str] = set()
        self.members: dict[str, set[str]] = {}  # image and pod nodes: their containers' ids
        self.backends: dict[str, dict[str, str | None]] = {}  # service -> backend -> its node

    def add(self, node: Node) -> str:
        """``node``, unless the topology has it already, named or as unnamed as this one: a
        process is named by whichever of its connections knows its name, in any order."""
        known = self.topology.nodes.get(node.id)
        if known is None or (known.label == UNNAMED and node.label != UNNAMED):
            self.topology.nodes[node.id] = node
        return node.id

    def remote(self, host: str, ip: str, inbound: bool) -> str | None:
        """The node of a side that is not a socket of this host (``ip``: its address)."""
        if self.scene.is_local_address(host, ip):
            # Ours, but no socket of ours shows it: a process we do not know.
            return self.add(host_node(host)) if self.view == View.hosts else None
        if is_public(ip) and not self.scene.in_local_network(host, ip):
            return self.add(internet_node(inbound))
        if self.options.show_unknown_lan:
            return self.add(lan_node(ip))
        self.hidden_lan.add(ip)
        return None

    def local(self, host: str, pid: int | None, comm: str | None, netns: int | None) -> str | None:
        """The node of a side that is a socket of this host, owned by ``pid`` (as its
        connection knew it: ``comm``, in ``netns``)."""
        view = self.view
        if view == View.hosts:
            return self.add(host_node(host))
        if pid is None:
            self.topology.unattributed_connections += 1
            return None
        info = self.scene.processes.get((host, pid))
        comm = comm or (info.comm if info else None)
        if view == View.processes:
            known = self.topology.nodes.get(f"{host};{pid}")
            if known is not None and known.label != UNNAMED:
                return known.id  # as add() would: a named node stays (saves making one)
            return self.add(process_node(host, pid, comm, info))
        if view == View.processes_by_name:
            return self.add(self.by_name(comm or UNNAMED))
        container = info.container if info is not None else None
        if container is None and info is None:
            container = self.scene.container_of_side(host, pid, netns)
        if view == View.containers_by_image and container is not None:
            return self.add(self.image(host, container))
        if view == View.pods and container is not None:
            return self.add(self.pod(host, container))
        return self.add(self.container(host, container))

    def by_name(self, name: str) -> Node:
        return Node(name, name, "", name, "square", stack=True)

    def container(self, host: str, container: Container | None) -> Node:
        if container is None:
            return Node(
                f"pseudo:uncontained:{host}",
                "Uncontained",
                host,
                "uncontained",
                "hexagon",
                pseudo=True,
            )
        metadata = [("runtime", "Runtime", container.runtime), ("id", "ID", container.id)]
        if container.image:
            metadata.append(("image", "Image", container.image))
        if container.image_id:
            metadata.append(("image_id", "Image ID", container.image_id))
        metadata += [(f"label_{k}", k, v) for k, v in container.labels]
        parents = [(f"{host};<host>", host, "hosts")]
        pod = container.pod
        if pod is not None:
            parents.append((pod.node_id, pod.name, "pods"))
        if container.image:
            parents.append(
                (self.image(host, container).id, container.image_name, "containers-by-image")
            )
        return Node(
            container.node_id,
            container.label,
            host,
            container.image_name or container.short_id,
            "hexagon",
            metadata=metadata,
            parents=parents,
        )

    def image(self, host: str, container: Container) -> Node:
        """Scope's container image node: ``<image>;<container_image>``, its containers
        counted in its minor label once the map is built."""
        if not container.image:
            return self.container(host, container)  # no runtime named its image
        node_id = f"{container.image_name};<container_image>"
        self.members.setdefault(node_id, set()).add(container.id)
        metadata = [("image", "Image", container.image_name)]
        if container.image_id:
            metadata.append(("image_id", "Image ID", container.image_id))
        return Node(
            node_id,
            container.image_name,
            "",
            container.image_name,
            "hexagon",
            stack=True,
            metadata=metadata,
        )

    def pod(self, host: str, container: Container) -> Node:
        pod = container.pod
        if pod is None:
            return Node(
                f"pseudo:unmanaged:{host}", "Unmanaged", host, "unmanaged", "hexagon", pseudo=True
            )
        self.members.setdefault(pod.node_id, set()).add(container.id)
        metadata = [("namespace", "Namespace", pod.namespace), ("name", "Name", pod.name)]
        if pod.uid:
            metadata.append(("uid", "UID", pod.uid))
        return Node(
            pod.node_id, pod.name, pod.namespace, pod.namespace, "heptagon", metadata=metadata,
            parents=[(f"{host};<host>", host, "hosts")],
        )  # fmt: skip

    def service(self, address: str) -> str:
        """The node of an address conntrack translated: ``<ip>:<port>;<service>``."""
        node_id = f"{address};<service>"
        return self.add(Node(node_id, address, "", "service", "heptagon"))

    def endpoint(self, host: str, side: _Side) -> str:
        """Scope's endpoint id: the address scoped by host if private, by netns if loopback."""
        if self.scene.is_local_address(host, side.ip) and is_loopback(side.ip):
            scope = f"{host}-{side.netns or 0}"
        elif not is_public(side.ip):
            scope = host
        else:
            scope = ""
        node_id = f"{scope};{side.ip};{side.port}"
        if side.local:
            minor = f"{side.comm} ({side.pid})" if side.pid is not None else host
        else:
            minor = "remote"
        self.add(
            Node(
                node_id,
                side.label,
                minor,
                side.ip,
                "circle",
                metadata=[("host", "Host", host)] if side.local else [],
            )
        )
        return node_id

    def build(self) -> Topology:
        """The map. A moment has many connections and far fewer distinct sides: the sides
        are told apart and the connections grouped into edges on whole columns
        (replay.views.columns), and each distinct side is mapped to its node once."""
        rows = self._kept(self.scene.connections)
        sides = _sides(rows)
        first, side_of = columns.first_seen(_side_keys(sides, self.view))
        uses = np.bincount(side_of, minlength=len(first))
        names: dict[str, int] = {}  # the nodes, numbered
        distinct = sides.take(first)
        nodes = self._nodes(
            zip(*(column.to_pylist() for column in distinct.columns), strict=True), uses
        )
        node_of_side = np.array(
            [-1 if node is None else names.setdefault(node, len(names)) for node in nodes],
            np.int64,
        )
        node_of = node_of_side[side_of]
        sources, targets = node_of[0::2], node_of[1::2]
        legs: _Legs = [(sources, targets, (sources >= 0) & (targets >= 0))]
        if self.view == View.services:
            legs = self._service_legs(rows, sources, targets, names)
        self._edges(rows, legs, list(names))
        self.topology.filtered_nodes += len(self.hidden_lan)
        self._unconnected()
        self._rules()
        self._summaries()
        return self.topology

    def _kept(self, rows: pa.Table) -> pa.Table:
        """The connections the map shows: not failed connects (the table shows those), and
        not the recorders' own (see _own) unless asked for."""
        keep = ~columns.flags(pc.equal(rows["state"], "failed"))
        own = self.scene.own if not self.options.show_self else set()
        if own:
            client_host = _either(rows["client_host"], rows["host"])
            server_host = _either(rows["server_host"], rows["host"])
            for host, pid in own:
                for side_host, side_pid in (
                    (client_host, "client_pid"),
                    (server_host, "server_pid"),
                ):
                    keep &= ~(
                        columns.flags(pc.equal(side_host, host))
                        & columns.flags(pc.equal(rows[side_pid], pid))
                    )
        return rows.filter(pa.array(keep))

    def _service_legs(
        self, rows: pa.Table, sources: columns.Codes, targets: columns.Codes, names: dict[str, int]
    ) -> _Legs:
        """The services view: a connection conntrack translated goes from its client's node
        to the service of the address it called, and from there to its backend's node; the
        service learns its backends (the node of the last connection to each)."""
        served = columns.present(rows["nat_destination"]) & (sources >= 0)
        servers = rows["server"].filter(pa.array(served))
        first, service_of = columns.first_seen([columns.codes(servers)])
        numbered = np.array(
            [
                names.setdefault(self.service(a), len(names))
                for a in servers.take(first).to_pylist()
            ],
            np.int64,
        )
        services = np.full(len(sources), -1, np.int64)
        services[served] = numbered[service_of]
        reached = served & (targets >= 0)
        plain = ~served & (sources >= 0) & (targets >= 0)
        # each (service, backend) once, at its last connection
        backends = rows["nat_destination"].filter(pa.array(served))
        last, _ = columns.first_seen([service_of[::-1], columns.codes(backends)[::-1]])
        last = len(service_of) - 1 - last
        node_names = list(names)
        backend_targets = targets[served][last]
        for service, backend, target in zip(
            numbered[service_of[last]],
            backends.take(last).to_pylist(),
            backend_targets,
            strict=True,
        ):
            node = node_names[target] if target >= 0 else None
            self.backends.setdefault(node_names[service], {})[backend] = node
        return [
            (sources, targets, plain),
            (sources, services, served),
            (services, targets, reached),
        ]

    def _edges(
        self,
        rows: pa.Table,
        legs: _Legs,
        node_names: list[str],
    ) -> None:
        """The edges: the connections grouped by the nodes of their ``legs`` (source and
        target node numbers of each connection, and which connections have that leg), each
        with its connections' ids in order and how many of them were open."""
        count = np.int64(max(len(node_names), 1))
        # the nodes renumbered in the order of their ids: the edges come out sorted, as the
        # map keeps them
        by_id = sorted(range(len(node_names)), key=node_names.__getitem__)
        node_names = [node_names[number] for number in by_id]
        renumbered = np.empty(len(by_id), np.int64)
        renumbered[by_id] = np.arange(len(by_id))
        where = [np.flatnonzero(taken) for _, _, taken in legs]
        row = np.concatenate(where)
        pair = np.concatenate(
            [
                renumbered[s[w]] * count + renumbered[t[w]]
                for (s, t, _), w in zip(legs, where, strict=True)
            ]
        )
        order = columns.sorted_by(pair, columns.text_order(rows["id"])[row])
        row, pair = row[order], pair[order]
        starts, ends = columns.runs(pair)
        ids = rows["id"].take(row).to_pylist()
        is_open = columns.flags(pc.equal(rows["state"], "open"))[row].astype(np.int64)
        opened = np.add.reduceat(is_open, starts) if len(starts) else is_open[:0]
        edges = self.topology.edges
        for source_number, target_number, start, end, open_count in zip(
            (pair[starts] // count).tolist(), (pair[starts] % count).tolist(),
            starts.tolist(), ends.tolist(), opened.tolist(), strict=True,
        ):  # fmt: skip
            source, target = node_names[source_number], node_names[target_number]
            edges[(source, target)] = Edge(source, target, ids[start:end], open_count)

    def _nodes(self, sides: Iterable[tuple[Any, ...]], uses: columns.Codes) -> list[str | None]:
        """The node of each distinct side (a row of ``_sides``, seen ``uses`` times), in the
        order the connections first show them: that order names a process whose
        connections disagree on its name."""
        nodes: list[str | None] = []
        for side, seen in zip(sides, uses.tolist(), strict=True):
            local, own_host, other_host, ip, port, label, pid, comm, netns, is_client = side
            if self.view == View.endpoints:
                side_ = _Side(local, ip, port, label, pid, comm, netns)
                nodes.append(self.endpoint(own_host, side_))
            elif local:
                nodes.append(self.local(own_host, pid, comm, netns))
                if pid is None and self.view != View.hosts:
                    # local() counted one of its connections as unattributed: all are
                    self.topology.unattributed_connections += seen - 1
            else:
                nodes.append(self.remote(other_host, ip, is_client))
        return nodes

    def _summaries(self) -> None:
        """What a node stands for, said once the map is whole: how many containers an image
        or a pod node has, which backends a service has (and its name, when their
        containers agree on an ``app`` label)."""
        nodes = self.topology.nodes
        for node_id, members in sorted(self.members.items()):
            node = nodes.get(node_id)
            if node is None:
                continue
            count = f"{len(members)} container" + "s" * (len(members) != 1)
            if node_id.endswith(";<pod>"):
                node.metadata.append(("containers", "Containers", str(len(members))))
            else:
                node.label_minor = count
        for node_id, backends in sorted(self.backends.items()):
            node = nodes.get(node_id)
            if node is None:
                continue
            node.label_minor = f"{len(backends)} backend" + "s" * (len(backends) != 1)
            node.metadata = [("address", "Address", node.label)] + [
                (f"backend_{i}", "Backend", backend) for i, backend in enumerate(sorted(backends))
            ]
            names = {self._app_label(target) for target in backends.values()}
            if len(names) == 1 and None not in names:
                node.label = str(names.pop())

    def _app_label(self, node_id: str | None) -> str | None:
        node = self.topology.nodes.get(node_id) if node_id is not None else None
        if node is None:
            return None
        return next((v for k, _, v in node.metadata if k == f"label_{SERVICE_LABEL}"), None)

    def _own(self, host: str, pid: int | None) -> bool:
        """Whether ``pid`` is a recorder's own process, left out of the maps."""
        return not self.options.show_self and (host, pid) in self.scene.own

    def _unconnected(self) -> None:
        """Processes alive at T with no connection: shown only when asked for."""
        if self.view not in (View.processes, View.processes_by_name):
            return
        connected = {node_id for pair in self.topology.edges for node_id in pair}
        nodes = self.topology.nodes
        by_pid = self.view == View.processes
        unconnected = {
            node_id: node
            for node_id, node in nodes.items()
            if node_id not in connected and not node.pseudo
        }
        for node_id in unconnected:
            del nodes[node_id]
        if not self.options.show_unconnected:
            # Only counted: no node is made (a busy host has tens of thousands of processes
            # and a few hundred connected).
            own = self.scene.own if not self.options.show_self else set()
            processes = self.scene.processes
            alive = {
                f"{key[0]};{key[1]}" if by_pid else processes.comm(key)
                for key in processes
                if key not in own
            }
            self.topology.filtered_nodes += len(alive.difference(connected, nodes, unconnected))
            self.topology.filtered_nodes += len(unconnected)
            return
        for (host, pid), info in sorted(self.scene.processes.items()):
            node_id = f"{host};{pid}" if by_pid else info.comm
            if self._own(host, pid) or node_id in connected or node_id in nodes:
                continue
            if node_id in unconnected:
                continue  # the map has it already: put back below
            if by_pid:
                nodes[node_id] = process_node(host, pid, info.comm, info)
            else:
                nodes[node_id] = self.by_name(info.comm)
        nodes.update(unconnected)

    def _rules(self) -> None:
        topology = self.topology
        topology.edges.pop((INTERNET_IN, INTERNET_OUT), None)
        if self.view in CONTAINER_VIEWS and not self.options.show_uncontained:
            hidden = ("pseudo:uncontained:", "pseudo:unmanaged:")
            for node_id in [n for n in topology.nodes if n.startswith(hidden)]:
                del topology.nodes[node_id]
                topology.filtered_nodes += 1
                for pair in [p for p in topology.edges if node_id in p]:
                    del topology.edges[pair]
        connected = {node_id for pair in topology.edges for node_id in pair}
        for node_id in [
            n for n, node in topology.nodes.items() if node.pseudo and n not in connected
        ]:
            del topology.nodes[node_id]
            topology.filtered_nodes += 1
        topology.nodes = dict(sorted(topology.nodes.items()))
        topology.edges = dict(sorted(topology.edges.items()))


def build_topology(scene: Scene, view: View, options: Options | None = None) -> Topology:
    return _Builder(scene, view, options or Options()).build()


def connection_counts(topology: Topology) -> dict[tuple[str, str], int]:
    return {pair: len(edge.connection_ids) for pair, edge in topology.edges.items()}
