"""A map as a person reads it: what the drawn formats (DOT, SVG, PNG) show of a topology.

The JSON and the table give the topology whole, every node, for machines. A drawing of a
busy host would be a wall of alike boxes and one tall column, so before anything is drawn:

- nodes alike (the same label and kind, in the same cluster, with the same neighbours both
  ways) become one stack, as Scope stacked them: ``curl`` over ``30 processes``, with their
  edges merged and the connections summed;
- nodes are drawn inside clusters of their parents (host, then container);
- a legend names the kinds of node drawn, stacks and the two edge styles.

Where things go on the page is replay.views.layout's.

Everything is sorted: the same topology gives the same drawing.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from eventlog.timefmt import format_ns
from replay.timespec import format_duration
from replay.views.topology import INTERNET_IN, INTERNET_OUT, Node, Topology, View


class Kind(StrEnum):
    """What a drawn node stands for, in the legend's words (and in the legend's order)."""

    endpoint = "endpoint"
    process = "process"
    process_name = "process name"
    container = "container"
    container_image = "container image"
    pod = "pod"
    service = "service"
    host = "host"
    internet = "the Internet"
    uncontained = "uncontained processes"
    unmanaged = "containers in no pod"
    lan = "unknown LAN address"


VIEW_KINDS = {
    View.endpoints: Kind.endpoint,
    View.processes: Kind.process,
    View.processes_by_name: Kind.process_name,
    View.containers: Kind.container,
    View.containers_by_image: Kind.container_image,
    View.pods: Kind.pod,
    View.services: Kind.container,
    View.hosts: Kind.host,
}
PLURALS = {
    Kind.endpoint: "endpoints",
    Kind.process: "processes",
    Kind.process_name: "process names",
    Kind.container: "containers",
    Kind.container_image: "images",
    Kind.pod: "pods",
    Kind.service: "services",
    Kind.host: "hosts",
}
CLUSTER_TOPOLOGIES = ("hosts", "containers")  # outermost first


@dataclass(frozen=True)
class Cluster:
    id: str  # the parent node's id
    label: str
    topology_id: str  # hosts or containers


@dataclass(frozen=True)
class DrawnNode:
    id: str
    label: str
    label_minor: str
    kind: Kind
    members: int  # nodes of the topology drawn as this one: more than one is a stack
    clusters: tuple[Cluster, ...]  # outermost first


@dataclass(frozen=True)
class DrawnEdge:
    source: str
    target: str
    connections: int
    open_connections: int

    @property
    def closed(self) -> bool:
        """No connection of it open at T: all closed in the window (or of unknown state)."""
        return self.open_connections == 0


@dataclass(frozen=True)
class Drawing:
    view: str
    title: str
    nodes: list[DrawnNode]  # by id
    edges: list[DrawnEdge]  # by (source, target)
    legend: list[Kind]  # the kinds drawn, in Kind's order
    stacked: Kind | None  # the kind of the stacks drawn, if any (for the legend)


def drawing_of(topology: Topology) -> Drawing:
    view = View(topology.view)
    stacks = alike_stacks(topology)
    drawn_as = {member: stack_id for stack_id, members in stacks.items() for member in members}
    nodes = [drawn_node(view, topology.nodes, members) for _, members in sorted(stacks.items())]
    edges = merged_edges(topology, drawn_as)
    kinds = {node.kind for node in nodes}
    return Drawing(
        view=str(view),
        title=title_of(topology),
        nodes=nodes,
        edges=edges,
        legend=[kind for kind in Kind if kind in kinds],
        stacked=next((node.kind for node in nodes if node.members > 1), None),
    )


def title_of(topology: Topology) -> str:
    window = format_duration(topology.window_ns)
    return f"{topology.view} at {format_ns(topology.at_ns)}, window {window}"


def kind_of(view: View, node: Node) -> Kind:
    if node.id in (INTERNET_IN, INTERNET_OUT):
        return Kind.internet
    if node.id.startswith("pseudo:uncontained:"):
        return Kind.uncontained
    if node.id.startswith("pseudo:unmanaged:"):
        return Kind.unmanaged
    if node.id.endswith(";<service>"):
        return Kind.service
    if node.id.endswith(";<container>"):
        return Kind.container  # a container with no image known, in the images view
    if node.id.startswith("pseudo:lan:"):
        return Kind.lan
    return VIEW_KINDS[view]


def clusters_of(node: Node) -> tuple[Cluster, ...]:
    return _clusters(tuple(node.parents))


@functools.lru_cache(maxsize=4096)  # thousands of nodes, a few distinct sets of parents
def _clusters(parents: tuple[tuple[str, str, str], ...]) -> tuple[Cluster, ...]:
    by_topology = {topology_id: Cluster(i, label, topology_id) for i, label, topology_id in parents}
    return tuple(by_topology[t] for t in CLUSTER_TOPOLOGIES if t in by_topology)


# -- stacks ---------------------------------------------------------------------------------
Neighbours = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def neighbours(topology: Topology) -> Neighbours:
    """Each node's sources and targets, sorted."""
    sources: dict[str, list[str]] = defaultdict(list)
    targets: dict[str, list[str]] = defaultdict(list)
    # The edges in order make every list sorted as it grows: one sort, not two per node.
    for source, target in sorted(topology.edges):
        targets[source].append(target)
        sources[target].append(source)
    return {
        node_id: (tuple(sources[node_id]), tuple(targets[node_id])) for node_id in topology.nodes
    }


def alike_stacks(topology: Topology, around: Neighbours | None = None) -> dict[str, list[str]]:
    """The topology's nodes in stacks of alike ones, by the first member's id (most stacks
    hold one node). Pseudo nodes are never stacked: each stands for something of its own
    (a host's uncontained processes, one LAN address). ``around``: the topology's
    ``neighbours``, when the caller has them."""
    view = View(topology.view)
    if around is None:
        around = neighbours(topology)
    groups: dict[object, list[str]] = {}
    for node_id in sorted(topology.nodes):
        node = topology.nodes[node_id]
        key: object = (
            ("alone", node_id)
            if node.pseudo
            else (node.label, node.shape, kind_of(view, node), clusters_of(node), around[node_id])
        )
        groups.setdefault(key, []).append(node_id)
    return {members[0]: members for members in groups.values()}


def drawn_node(view: View, nodes: dict[str, Node], members: list[str]) -> DrawnNode:
    first = nodes[members[0]]
    kind = kind_of(view, first)
    minor = first.label_minor if len(members) == 1 else f"{len(members)} {PLURALS[kind]}"
    return DrawnNode(first.id, first.label, minor, kind, len(members), clusters_of(first))


def merged_edges(topology: Topology, drawn_as: dict[str, str]) -> list[DrawnEdge]:
    """The topology's edges between the stacks, their connections summed."""
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for (source, target), edge in topology.edges.items():
        pair = (drawn_as[source], drawn_as[target])
        connections, open_connections = counts.get(pair, (0, 0))
        counts[pair] = (
            connections + len(edge.connection_ids),
            open_connections + edge.open_connections,
        )
    return [DrawnEdge(s, t, c, o) for (s, t), (c, o) in sorted(counts.items())]
