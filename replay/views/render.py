"""Topologies as Scope's API JSON, a table, or Graphviz (DOT, SVG, PNG).

JSON and the table give the whole topology (machines read them); the drawn formats show it
as replay.views.drawing makes it readable (alike nodes stacked, a title and a legend), laid
out by replay.views.layout and written by replay.views.dot."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from eventlog.errors import UsageError
from eventlog.timefmt import format_ns
from replay.output import to_json, to_table
from replay.timespec import format_duration
from replay.views.dot import dot_text
from replay.views.drawing import drawing_of
from replay.views.topology import Node, Topology


def node_summary(
    topology: Topology, node: Node, adjacencies: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """A node as Scope's ``/api/topology/<view>`` summarised it (camelCase and all);
    ``adjacencies``: the topology's, when summarising many nodes."""
    summary: dict[str, Any] = {
        "id": node.id,
        "label": node.label,
        "labelMinor": node.label_minor,
        "rank": node.rank,
        "shape": node.shape,
        "pseudo": node.pseudo,
    }
    if node.stack:
        summary["stack"] = True
    summary["metadata"] = [
        {"id": i, "label": label, "value": value} for i, label, value in node.metadata
    ]
    summary["parents"] = [
        {"id": i, "label": label, "topologyId": t} for i, label, t in node.parents
    ]
    summary["adjacency"] = (
        adjacencies[node.id] if adjacencies is not None else topology.adjacency(node.id)
    )
    return summary


def to_document_head(topology: Topology) -> dict[str, Any]:
    """What a topology's document says before its nodes: the view, moment and counts."""
    return {
        "view": topology.view,
        "at": format_ns(topology.at_ns),
        "window": format_duration(topology.window_ns),
        "stats": topology.stats(),
    }


def to_document(topology: Topology) -> dict[str, Any]:
    adjacencies = topology.adjacencies()
    return {
        **to_document_head(topology),
        "nodes": {
            node_id: node_summary(topology, node, adjacencies)
            for node_id, node in topology.nodes.items()
        },
        "edges": [
            {
                "source": edge.source,
                "target": edge.target,
                "connections": len(edge.connection_ids),
                "open_connections": edge.open_connections,
                "connection_ids": edge.connection_ids,
            }
            for edge in topology.edges.values()
        ],
    }


def render_json(topology: Topology) -> str:
    return to_json(to_document(topology))


def render_table(topology: Topology) -> str:
    stats = topology.stats()
    window = format_duration(topology.window_ns)
    head = (
        f"{topology.view} at {format_ns(topology.at_ns)} (window {window}): "
        f"{stats['node_count']} nodes ({stats['nonpseudo_node_count']} not pseudo), "
        f"{stats['edge_count']} edges, {stats['filtered_nodes']} filtered\n"
    )
    nodes = [
        [n.label, n.label_minor, n.shape, "yes" if n.pseudo else "", n.id]
        for n in topology.nodes.values()
    ]
    labels = {n.id: n.label for n in topology.nodes.values()}
    edges = [
        [
            labels.get(e.source, e.source),
            labels.get(e.target, e.target),
            len(e.connection_ids),
            e.open_connections,
            e.source,
            e.target,
        ]
        for e in topology.edges.values()
    ]
    return (
        head
        + "\n"
        + to_table(["node", "detail", "shape", "pseudo", "id"], nodes)
        + "\n"
        + to_table(["from", "to", "connections", "open", "from_id", "to_id"], edges, "(no edges)")
    )


def render_dot(topology: Topology) -> str:
    """The map for a person: alike nodes stacked, a title, a legend (replay.views.drawing)."""
    return dot_text(drawing_of(topology))


def render_graphviz(topology: Topology, fmt: str) -> bytes:
    """SVG or PNG through Graphviz's ``dot``."""
    dot = shutil.which("dot")
    if dot is None:
        raise UsageError(
            f"--format {fmt} needs Graphviz's dot (apt-get install graphviz); "
            "--format dot works without it"
        )
    result = subprocess.run(
        [dot, f"-T{fmt}"], input=render_dot(topology).encode(), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise UsageError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout
