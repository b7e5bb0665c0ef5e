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

from dataclasses import dataclass, field
from enum import StrEnum

from eventlog.addresses import is_loopback, is_public
from replay.table import ConnectionRow
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


@dataclass
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


@dataclass
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


def _sides(row: ConnectionRow) -> tuple[_Side, _Side]:
    client = _Side(
        row.client_local,
        row.client_ip,
        row.client_port,
        row.client,
        row.client_pid,
        row.client_comm,
        row.client_netns,
    )
    server = _Side(
        row.server_local,
        row.server_ip,
        row.server_port,
        row.nat_destination or row.server,  # the real backend's, when DNAT sent it there
        row.server_pid,
        row.server_comm,
        row.server_netns,
    )
    return client, server


# What the node of a side depends on: (host, pid, comm, netns) for a socket of this host,
# (host, address, inbound) for a remote one.
_SideKey = tuple[str, int | None, str | None, int | None] | tuple[str, str, bool]


class _Builder:
    def __init__(self, scene: Scene, view: View, options: Options) -> None:
        self.scene = scene
        self.view = view
        self.options = options
        self.topology = Topology(str(view), scene.at_ns, scene.window_ns)
        self.hidden_lan: set[str] = set()
        self.members: dict[str, set[str]] = {}  # image and pod nodes: their containers' ids
        self.backends: dict[str, dict[str, str | None]] = {}  # service -> backend -> its node
        # The node of each side mapped so far, by what its mapping reads (local_side,
        # remote_side): the connections of a map have far fewer distinct sides than rows.
        self.mapped: dict[_SideKey, str | None] = {}

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
        own = self.scene.own if not self.options.show_self else set()
        endpoints = self.view == View.endpoints
        services = self.view == View.services
        mapped = self.mapped
        for row in self.scene.connections:
            if row.state == "failed":
                continue  # an attempt, not a connection: the table shows it
            # Each side on the host that recorded it; a side no recording has, as the other
            # side's host saw it.
            client_host = row.client_host or row.host
            server_host = row.server_host or row.host
            if own and (
                (client_host, row.client_pid) in own or (server_host, row.server_pid) in own
            ):
                continue  # a recorder's own (see _own)
            source: str | None
            target: str | None
            if endpoints:
                client, server = _sides(row)
                source = self.endpoint(client_host, client)
                target = self.endpoint(server_host, server)
            else:
                # Each side by what its mapping reads: a side mapped before is looked up.
                if row.client_local:
                    key: _SideKey = (client_host, row.client_pid, row.client_comm, row.client_netns)
                    source = mapped[key] if key in mapped else self.local_side(*key)
                else:
                    key = (server_host, row.client_ip, True)
                    source = mapped[key] if key in mapped else self.remote_side(*key)
                if row.server_local:
                    key = (server_host, row.server_pid, row.server_comm, row.server_netns)
                    target = mapped[key] if key in mapped else self.local_side(*key)
                else:
                    key = (client_host, row.server_ip, False)
                    target = mapped[key] if key in mapped else self.remote_side(*key)
            if services and row.nat_destination and source is not None:
                service = self.service(row.server)
                self.backends.setdefault(service, {})[row.nat_destination] = target
                self._connect(source, service, row)
                source = service
            if source is None or target is None:
                continue
            self._connect(source, target, row)
        self.topology.filtered_nodes += len(self.hidden_lan)
        self._unconnected()
        self._rules()
        self._summaries()
        for edge in self.topology.edges.values():
            edge.connection_ids.sort()
        return self.topology

    def local_side(
        self, host: str, pid: int | None, comm: str | None, netns: int | None
    ) -> str | None:
        """``local``'s node, remembered (mapping a side again would change nothing), but for
        a side of no known process: that is counted each time."""
        node = self.local(host, pid, comm, netns)
        if pid is not None or self.view == View.hosts:
            self.mapped[(host, pid, comm, netns)] = node
        return node

    def remote_side(self, host: str, ip: str, inbound: bool) -> str | None:
        """``remote``'s node, remembered."""
        node = self.mapped[(host, ip, inbound)] = self.remote(host, ip, inbound)
        return node

    def _connect(self, source: str, target: str, row: ConnectionRow) -> None:
        edge = self.topology.edges.get((source, target))
        if edge is None:
            edge = self.topology.edges[(source, target)] = Edge(source, target)
        edge.connection_ids.append(row.id)
        if row.state == "open":
            edge.open_connections += 1

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
            alive = {
                f"{host};{pid}" if by_pid else info.comm
                for (host, pid), info in self.scene.processes.items()
                if (host, pid) not in own
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
