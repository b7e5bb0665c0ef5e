"""What changed in a view between two moments, as Scope's live updates: add, update, remove."""

from __future__ import annotations

from typing import Any

from eventlog.timefmt import format_ns
from replay.output import to_json, to_table
from replay.views.render import node_summary
from replay.views.topology import Topology


def topology_diff(before: Topology, after: Topology) -> dict[str, Any]:
    before_adjacent, after_adjacent = before.adjacencies(), after.adjacencies()
    old = {
        node_id: node_summary(before, node, before_adjacent)
        for node_id, node in before.nodes.items()
    }
    new = {
        node_id: node_summary(after, node, after_adjacent) for node_id, node in after.nodes.items()
    }
    old_edges = {pair: len(edge.connection_ids) for pair, edge in before.edges.items()}
    new_edges = {pair: len(edge.connection_ids) for pair, edge in after.edges.items()}
    return {
        "view": after.view,
        "from": format_ns(before.at_ns),
        "to": format_ns(after.at_ns),
        "add": [new[node_id] for node_id in sorted(new.keys() - old.keys())],
        "update": [
            new[node_id]
            for node_id in sorted(new.keys() & old.keys())
            if new[node_id] != old[node_id]
        ],
        "remove": [old[node_id] for node_id in sorted(old.keys() - new.keys())],
        "edges": {
            "add": [
                {"source": s, "target": t, "connections": new_edges[(s, t)]}
                for s, t in sorted(new_edges.keys() - old_edges.keys())
            ],
            "update": [
                {
                    "source": s,
                    "target": t,
                    "connections_before": old_edges[(s, t)],
                    "connections": new_edges[(s, t)],
                }
                for s, t in sorted(new_edges.keys() & old_edges.keys())
                if new_edges[(s, t)] != old_edges[(s, t)]
            ],
            "remove": [
                {"source": s, "target": t, "connections_before": old_edges[(s, t)]}
                for s, t in sorted(old_edges.keys() - new_edges.keys())
            ],
        },
    }


def render_diff(document: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return to_json(document)
    rows = [
        [sign, "node", node["id"], node["label"]]
        for sign, key in (("+", "add"), ("~", "update"), ("-", "remove"))
        for node in document[key]
    ]
    edges = document["edges"]
    rows += [["+", "edge", _edge(e), _connections(e["connections"])] for e in edges["add"]]
    rows += [
        ["~", "edge", _edge(e), f"{e['connections_before']} -> {_connections(e['connections'])}"]
        for e in edges["update"]
    ]
    rows += [
        ["-", "edge", _edge(e), f"had {_connections(e['connections_before'])}"]
        for e in edges["remove"]
    ]
    head = f"{document['view']}: {document['from']} -> {document['to']}\n"
    return head + to_table(["", "what", "id", "detail"], rows, "(no change)")


def _edge(edge: dict[str, Any]) -> str:
    return f"{edge['source']} -> {edge['target']}"


def _connections(count: int) -> str:
    return f"{count} connection" if count == 1 else f"{count} connections"
