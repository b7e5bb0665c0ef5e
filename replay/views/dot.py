"""A drawing (replay.views.drawing) as Graphviz DOT text.

Left to right: clients on the left, their servers to the right, the inbound Internet at the
left edge and the outbound Internet at the right one (where their edges put them). The
constraints that keep a large map from becoming one tall column are replay.views.layout's.
``newrank`` and ``pack`` are not used: the Graphviz of Debian (2.43) crashes laying out a
packed graph with ``newrank``, and drops the edge labels of a packed one.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import NamedTuple

from replay.views import layout
from replay.views.drawing import PLURALS, Cluster, Drawing, DrawnEdge, DrawnNode, Kind

GRAPH = (
    f"rankdir=LR nodesep={layout.NODE_GAP} ranksep={layout.RANK_GAP} "
    'fontname="Helvetica" fontsize=14 labelloc=t'
)
NODE_FONT_SIZE = 11
LEGEND_FONT_SIZE = 9
NODE = f'fontname="Helvetica" fontsize={NODE_FONT_SIZE}'
EDGE = 'fontname="Helvetica" fontsize=9 color="#555555" arrowsize=0.7'

# Scope's shapes in Graphviz terms. Graphviz has no cloud: the Internet is a dashed, filled
# ellipse. Endpoints are ellipses, not Scope's circles: a circle around "10.0.0.2:41000" is
# as tall as it is wide, and a left-to-right map of endpoints is mostly their height.
KIND_SHAPES = {
    Kind.endpoint: "ellipse",
    Kind.process: "box",
    Kind.process_name: "box",
    Kind.container: "hexagon",
    Kind.container_image: "hexagon",
    Kind.pod: "septagon",
    Kind.service: "septagon",
    Kind.host: "circle",
    Kind.internet: "ellipse",
    Kind.uncontained: "hexagon",
    Kind.unmanaged: "hexagon",
    Kind.lan: "ellipse",
}
KIND_STYLES = {
    Kind.internet: 'style="dashed,filled" fillcolor="#e8f1fb"',
    Kind.uncontained: 'style="dashed"',
    Kind.unmanaged: 'style="dashed"',
    Kind.service: 'style="filled" fillcolor="#f3f0e6"',
    Kind.lan: 'style="dashed"',
}
STACK_LOOK = "peripheries=2"  # a stack: its shape drawn twice, as Scope drew one several
CLOSED_LOOK = 'style=dashed color="#aaaaaa" fontcolor="#888888"'
CLUSTER_LOOKS = {
    "hosts": 'style="rounded" color="#999999" fontsize=11',
    "containers": 'style="rounded,dashed" color="#999999" fontsize=10',
}
CLUSTER_WORDS = {"hosts": "host", "containers": "container"}
POINT_LOOK = "shape=point width=0.05"
LEGEND_LOOK = 'label="legend" style="rounded" color="#cccccc" fontsize=10'
# The ids of the legend's nodes and of the note on an empty map: longer than any process
# name (15 bytes) and shaped unlike the ids of the views' nodes, so they cannot meet one.
OWN = "scope-map-own;"
LEGEND_UNIT = "legend"


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- nodes ----------------------------------------------------------------------------------
def node_text(node: DrawnNode) -> str:
    return node.label + (f"\n{node.label_minor}" if node.label_minor else "")


def looks_of(kind: Kind, stacked: bool = False) -> str:
    """How a node of ``kind`` is drawn: its shape and style."""
    looks = [f"shape={KIND_SHAPES[kind]}"]
    if kind in KIND_STYLES:
        looks.append(KIND_STYLES[kind])
    if stacked:
        looks.append(STACK_LOOK)
    return " ".join(looks)


def node_line(node: DrawnNode, indent: str) -> str:
    looks = looks_of(node.kind, node.members > 1)
    return f"{indent}{quote(node.id)} [label={quote(node_text(node))} {looks}];"


def estimated_box(
    node_id: str, text: str, shape: str, font_size: float, unit: str | None
) -> layout.Box:
    """A node's size in inches, near what Graphviz makes of it (Helvetica is about half as
    wide as high; a round shape takes more room around its text than a box)."""
    lines = text.split("\n")
    width = max(len(line) for line in lines) * font_size * 0.55 / 72 + 0.3
    height = len(lines) * font_size * 1.2 / 72 + 0.2
    width, height = {
        "ellipse": (width * 1.3, height * 1.1),
        "hexagon": (width * 1.7, height * 1.25),
        "circle": (max(width, height) * 1.15, max(width, height) * 1.15),
    }.get(shape, (width, height))
    return layout.Box(node_id, max(width, 0.75), max(height, 0.5), unit)


def node_box(node: DrawnNode) -> layout.Box:
    unit = node.clusters[0].id if node.clusters else None  # a host's cluster stays whole
    return estimated_box(node.id, node_text(node), KIND_SHAPES[node.kind], NODE_FONT_SIZE, unit)


def clustered_node_lines(nodes: list[DrawnNode]) -> list[str]:
    """The nodes, each inside the subgraphs of its clusters (outermost first)."""
    inside: dict[tuple[Cluster, ...], list[DrawnNode]] = defaultdict(list)
    for node in nodes:
        inside[node.clusters].append(node)
    paths = sorted(
        {node.clusters[:depth] for node in nodes for depth in range(len(node.clusters) + 1)},
        key=lambda path: [(c.topology_id, c.id) for c in path],
    )
    lines: list[str] = []
    for index, path in enumerate(paths):
        following = paths[index + 1] if index + 1 < len(paths) else ()
        indent = "  " * (len(path) + 1)
        if path:
            cluster = path[-1]
            # Named by the whole path: one container id may be seen on two hosts.
            name = quote("cluster:" + "/".join(f"{c.topology_id}:{c.id}" for c in path))
            label = quote(f"{CLUSTER_WORDS[cluster.topology_id]} {cluster.label}")
            looks = CLUSTER_LOOKS[cluster.topology_id]
            lines.append(f"{indent[2:]}subgraph {name} {{")
            lines.append(f"{indent}graph [label={label} {looks}];")
        lines += [node_line(node, indent) for node in inside[path]]
        # Close this cluster and those of its parents that the next path leaves.
        common = _common_depth(path, following)
        lines += ["  " * depth + "}" for depth in range(len(path), common, -1)]
    return lines


def _common_depth(path: tuple[Cluster, ...], other: tuple[Cluster, ...]) -> int:
    depth = 0
    while depth < min(len(path), len(other)) and path[depth] == other[depth]:
        depth += 1
    return depth


# -- edges ----------------------------------------------------------------------------------
def edge_label(edge: DrawnEdge) -> str:
    """The connections of an edge when more than one (most edges have one: their labels
    would only be noise), and how many are open when some are and some are not."""
    if 0 < edge.open_connections < edge.connections:
        return f"{edge.connections} ({edge.open_connections} open)"
    return str(edge.connections) if edge.connections > 1 else ""


def edge_line(edge: DrawnEdge, minlen: int) -> str:
    attributes = []
    label = edge_label(edge)
    if label:
        attributes.append(f"label={quote(label)}")
    if minlen > 1:
        attributes.append(f"minlen={minlen}")
    if edge.closed:
        attributes.append(CLOSED_LOOK)
    suffix = f" [{' '.join(attributes)}]" if attributes else ""
    return f"  {quote(edge.source)} -> {quote(edge.target)}{suffix};"


def invisible_line(link: layout.Link) -> str:
    return f"  {quote(link.source)} -> {quote(link.target)} [style=invis];"


# -- the legend -----------------------------------------------------------------------------
class LegendNode(NamedTuple):
    id: str
    label: str
    shape: str  # for the layout's estimate of its size
    looks: str  # shape and style


def legend_nodes(drawing: Drawing) -> tuple[list[LegendNode], list[LegendNode]]:
    """The legend's two rows: a node of each kind drawn (and a stack, if any), and a sample
    of each edge style (a point and the words its edge points at)."""
    kinds = [
        LegendNode(OWN + kind, str(kind), KIND_SHAPES[kind], looks_of(kind))
        for kind in drawing.legend
    ]
    if drawing.stacked is not None:
        label = f"{PLURALS[drawing.stacked]} alike"
        shape = KIND_SHAPES[drawing.stacked]
        kinds.append(LegendNode(OWN + "stack", label, shape, looks_of(drawing.stacked, True)))
    samples: list[LegendNode] = []
    if drawing.edges:
        for name, text in (
            ("open", "connections, some open"),
            ("closed", "connections, all closed"),
        ):
            samples.append(LegendNode(f"{OWN}{name}:from", "", "point", POINT_LOOK))
            samples.append(LegendNode(OWN + name, text, "plaintext", "shape=plaintext"))
    return kinds, samples


def legend_lines(drawing: Drawing) -> tuple[list[str], list[layout.Box], list[layout.Link]]:
    """The legend, a small cluster apart; with its nodes and edges as the layout sees them."""
    kinds, samples = legend_nodes(drawing)
    lines = [f"  subgraph {quote('cluster:' + OWN + 'legend')} {{", f"    graph [{LEGEND_LOOK}];"]
    lines.append(f"    node [fontsize={LEGEND_FONT_SIZE} height=0.3];")
    lines += [f"    {quote(n.id)} [label={quote(n.label)} {n.looks}];" for n in kinds + samples]
    # The kinds in a row, chained left to right so that they keep their order; the two
    # edge samples under them, one above the other.
    chains = [layout.Link(a.id, b.id) for a, b in itertools.pairwise(kinds)]
    samples_drawn: list[layout.Link] = []
    if samples:
        open_from, open_words, closed_from, closed_words = samples
        lines.append(f'    {quote(open_from.id)} -> {quote(open_words.id)} [label="n"];')
        lines.append(
            f'    {quote(closed_from.id)} -> {quote(closed_words.id)} [label="n" {CLOSED_LOOK}];'
        )
        samples_drawn = [
            layout.Link(open_from.id, open_words.id),
            layout.Link(closed_from.id, closed_words.id),
        ]
    lines += [f"  {invisible_line(link)}" for link in chains]
    lines.append("  }")
    boxes = [
        estimated_box(n.id, n.label, n.shape, LEGEND_FONT_SIZE, LEGEND_UNIT)
        for n in kinds + samples
    ]
    return lines, boxes, samples_drawn + chains


# -- the whole ------------------------------------------------------------------------------
def unconnected_rows(drawing: Drawing) -> list[layout.Link]:
    connected = {edge.source for edge in drawing.edges} | {edge.target for edge in drawing.edges}
    by_cluster: dict[tuple[Cluster, ...], list[str]] = defaultdict(list)
    for node in drawing.nodes:
        if node.id not in connected:
            by_cluster[node.clusters].append(node.id)
    return [link for ids in by_cluster.values() for link in layout.rows_of(ids)]


def dot_text(drawing: Drawing) -> str:
    lines = [
        f"digraph {quote(drawing.view)} {{",
        f"  graph [{GRAPH} label={quote(drawing.title)}];",
        f"  node [{NODE}];",
        f"  edge [{EDGE}];",
    ]
    if not drawing.nodes:
        lines.append(f'  {quote(OWN + "empty")} [label="nothing to draw" shape=plaintext];')
        return "\n".join([*lines, "}"]) + "\n"
    links = [layout.Link(edge.source, edge.target) for edge in drawing.edges]
    minlen = layout.staggered(links)
    links = [layout.Link(k.source, k.target, minlen.get((k.source, k.target), 1)) for k in links]
    rows = unconnected_rows(drawing)
    legend, legend_boxes, legend_links = legend_lines(drawing)
    boxes = [node_box(node) for node in drawing.nodes] + legend_boxes
    chains = layout.arranged(boxes, links + rows + legend_links, last_unit=LEGEND_UNIT)
    # dot stacks the parts of a left-to-right map that nothing joins from the bottom up, in
    # the order their nodes come: the legend first is at the bottom when it is a row apart.
    lines += legend
    lines += clustered_node_lines(drawing.nodes)
    lines += [edge_line(edge, minlen.get((edge.source, edge.target), 1)) for edge in drawing.edges]
    lines += [invisible_line(link) for link in rows + chains]
    lines.append("}")
    return "\n".join(lines) + "\n"
