"""The views as library calls: a topology at a moment, a node of it in detail, and the
difference between two moments."""

from __future__ import annotations

from typing import Any

from eventlog.batch import gc_paused
from eventlog.store import LogStore
from eventlog.timefmt import format_ns
from replay.derived.store import Derived, open_derived
from replay.moment import Moment, resolve_moment
from replay.table import ConnectionRow, connection_rows, moment_warnings, row_document
from replay.timespec import format_duration
from replay.views.diff import topology_diff
from replay.views.render import node_summary
from replay.views.scene import build_scene
from replay.views.topology import Options, Topology, View, build_topology


def topology_in(
    derived: Derived, at_text: str, window_text: str, view: View, options: Options | None = None
) -> Topology:
    return _topology(derived, resolve_moment(derived, at_text, window_text), view, options)


def topology_and_warnings(
    derived: Derived, at_text: str, window_text: str, view: View, options: Options | None = None
) -> tuple[Topology, list[str]]:
    """The map at a moment, and what its reader must know of that moment (replay.table)."""
    moment = resolve_moment(derived, at_text, window_text)
    return _topology(derived, moment, view, options), moment_warnings(derived, moment)


def _topology(derived: Derived, moment: Moment, view: View, options: Options | None) -> Topology:
    # Tens of thousands of acyclic objects are made and dropped: a collection during it
    # (a full one, in a server whose heap has grown) finds nothing and costs 50-120 ms.
    with gc_paused():
        return build_topology(build_scene(derived, moment), view, options)


def topology_at(
    log: LogStore, at_text: str, window_text: str, view: View, options: Options | None = None
) -> Topology:
    with open_derived(log) as derived:
        return topology_in(derived, at_text, window_text, view, options)


def diff_between(
    log: LogStore,
    before_text: str,
    after_text: str,
    window_text: str,
    view: View,
    options: Options | None = None,
) -> dict[str, Any]:
    with open_derived(log) as derived:
        before = topology_in(derived, before_text, window_text, view, options)
        after = topology_in(derived, after_text, window_text, view, options)
    return topology_diff(before, after)


def node_details(
    derived: Derived,
    at_text: str,
    window_text: str,
    view: View,
    node_id: str,
    options: Options | None = None,
) -> dict[str, Any] | None:
    """A node of the map at a moment as its detail panel shows it: its summary (processes,
    command lines as metadata), and the connections of its edges, inbound (it is the server)
    and outbound (it is the client), each with the log positions that made it. None if the
    map has no such node then."""
    moment = resolve_moment(derived, at_text, window_text)
    with gc_paused():  # as _topology's
        scene = build_scene(derived, moment, ConnectionRow._fields)  # its rows are shown whole
        topology = build_topology(scene, view, options)
    node = topology.nodes.get(node_id)
    if node is None:
        return None
    rows = {row.id: row for row in connection_rows(scene.connections)}
    labels = {n.id: n.label for n in topology.nodes.values()}

    def connections(inbound: bool) -> list[dict[str, Any]]:
        listed = []
        for (source, target), edge in topology.edges.items():
            if (target if inbound else source) != node_id:
                continue
            peer = source if inbound else target
            for connection_id in edge.connection_ids:
                document = row_document(rows[connection_id])
                document["peer"] = peer
                document["peer_label"] = labels.get(peer, peer)
                listed.append(document)
        return listed

    return {
        "view": topology.view,
        "at": format_ns(topology.at_ns),
        "window": format_duration(topology.window_ns),
        "node": node_summary(topology, node),
        "inbound": connections(inbound=True),
        "outbound": connections(inbound=False),
        "warnings": moment_warnings(derived, moment),
    }
