"""What a drawn map shows of a topology (stacks, merged edges) and where its nodes go."""

from __future__ import annotations

import math

from replay.views import layout
from replay.views.drawing import Kind, drawing_of
from replay.views.topology import INTERNET_OUT, Edge, Node, Topology, internet_node

HOST = ("h;<host>", "h", "hosts")


def process(pid: int, name: str, container: str | None = None) -> Node:
    parents = [HOST] if container is None else [(container, container, "containers"), HOST]
    return Node(f"h;{pid}", name, f"h ({pid})", name, "square", parents=parents)


def topology_of(nodes: list[Node], edges: list[tuple[str, str, int, int]]) -> Topology:
    """A processes map of ``nodes`` and edges (source, target, connections, open ones)."""
    topology = Topology("processes", 0, 15_000_000_000)
    topology.nodes = {node.id: node for node in nodes}
    for source, target, connections, open_connections in edges:
        ids = [f"{source}>{target}#{i}" for i in range(connections)]
        topology.edges[(source, target)] = Edge(source, target, ids, open_connections)
    return topology


def test_alike_nodes_stack_and_their_edges_sum() -> None:
    curls = [process(100 + i, "curl") for i in range(5)]
    server = process(20, "api")
    topology = topology_of(
        [*curls, server], [(c.id, server.id, 2, 1 if c.id == "h;100" else 0) for c in curls]
    )
    drawing = drawing_of(topology)
    assert [(n.id, n.label, n.label_minor, n.members) for n in drawing.nodes] == [
        ("h;100", "curl", "5 processes", 5),
        ("h;20", "api", "h (20)", 1),
    ]
    (edge,) = drawing.edges
    assert (edge.source, edge.target, edge.connections, edge.open_connections) == (
        "h;100",
        "h;20",
        10,
        1,
    )
    assert not edge.closed
    assert drawing.stacked == Kind.process


def test_nodes_apart_unless_label_cluster_and_neighbours_agree() -> None:
    api, db = process(20, "api"), process(30, "db")
    other_peer = process(101, "curl")
    elsewhere = process(102, "curl", container="c1")
    alike = [process(103, "curl"), process(104, "curl")]
    edges = [(n.id, api.id, 1, 0) for n in [elsewhere, *alike]] + [(other_peer.id, db.id, 1, 0)]
    drawing = drawing_of(topology_of([api, db, other_peer, elsewhere, *alike], edges))
    assert {n.id: n.members for n in drawing.nodes} == {
        "h;101": 1,  # another server
        "h;102": 1,  # another container
        "h;103": 2,
        "h;20": 1,
        "h;30": 1,
    }


def test_pseudo_nodes_are_never_stacked_and_edges_closed_alike() -> None:
    internet = internet_node(inbound=False)
    a, b = process(1, "x"), process(2, "y")
    drawing = drawing_of(topology_of([a, b, internet], [(a.id, INTERNET_OUT, 3, 0)]))
    assert [n.kind for n in drawing.nodes] == [Kind.process, Kind.process, Kind.internet]
    assert drawing.legend == [Kind.process, Kind.internet]
    (edge,) = drawing.edges
    assert edge.closed
    assert drawing.title == "processes at 1970-01-01T00:00:00.000000000Z, window 15.000s"


def test_many_leaves_stand_in_several_ranks() -> None:
    leaves = [layout.Link(f"leaf{i:02}", "hub") for i in range(30)]
    minlen = layout.staggered([*leaves, layout.Link("hub", "db")])
    columns = round(math.sqrt(30 / 2))
    assert sorted({minlen.get((k.source, k.target), 1) for k in leaves}) == list(
        range(1, columns + 1)
    )
    assert ("hub", "db") not in minlen
    assert layout.staggered(leaves[: layout.STAGGER_FROM - 1]) == {}


def test_unconnected_nodes_are_chained_into_rows() -> None:
    rows = layout.rows_of([f"n{i}" for i in range(9)])
    assert rows == [
        layout.Link("n0", "n1"),
        layout.Link("n1", "n2"),
        layout.Link("n3", "n4"),
        layout.Link("n4", "n5"),
        layout.Link("n6", "n7"),
        layout.Link("n7", "n8"),
    ]
    assert layout.rows_of(["a", "b", "c"]) == []


def test_parts_not_connected_are_chained_into_rows_of_a_wide_page() -> None:
    pairs = [(f"c{i:02}", f"s{i:02}") for i in range(20)]
    boxes = [layout.Box(node_id, 2.0, 0.6) for pair in pairs for node_id in pair]
    links = [layout.Link(client, server) for client, server in pairs]
    chains = layout.arranged(boxes, links)
    # Each chain joins a server to the next pair's client: rows, not one column.
    assert chains and all(k.source.startswith("s") and k.target.startswith("c") for k in chains)
    rows = len(pairs) - len(chains)
    per_row = math.ceil(len(pairs) / rows)
    width = per_row * (2 * 2.0 + layout.RANK_GAP) - layout.RANK_GAP
    height = rows * (0.6 + layout.NODE_GAP)
    assert 1 <= width / height <= 3
    # The same parts in another order give the same rows.
    assert layout.arranged(boxes[::-1], links[::-1]) == chains


def test_a_cluster_is_one_part_and_the_legend_comes_last() -> None:
    boxes = [
        layout.Box("a", 1, 0.5, unit="host"),
        layout.Box("b", 1, 0.5, unit="host"),  # joined to a by their cluster alone
        layout.Box("x", 1, 0.5),
        layout.Box("legend", 1, 0.5, unit="legend"),
    ]
    groups = layout.parts_of(boxes, [])
    assert groups == [["a", "b"], ["legend"], ["x"]]
    chains = layout.arranged(boxes, [], last_unit="legend")
    assert all(k.source != "legend" for k in chains)
