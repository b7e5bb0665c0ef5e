"""What each endpoint of `scope-replay serve` answers, as library calls over a derived store.

Every document is made by the functions the CLI uses (replay.table, replay.views.api,
replay.views.render, replay.views.diff, replay.info): the page shows what `scope-replay`
prints, and the same question gives the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from eventlog.batch import gc_paused
from eventlog.errors import UsageError
from eventlog.timefmt import format_ns
from replay import info, table
from replay.derived.store import Derived
from replay.moment import log_span, resolve_moment
from replay.output import to_json
from replay.views.api import node_details, topology_and_warnings
from replay.views.diff import topology_diff
from replay.views.drawing import alike_stacks, drawn_node, merged_edges, neighbours
from replay.views.render import node_summary, to_document, to_document_head
from replay.views.scene import build_scene
from replay.views.topology import Options, Topology, View, build_topology

MAX_BUCKETS = 2000


def topologies(derived: Derived, at_text: str, window_text: str, options: Options) -> str:
    """Scope's ``/api/topology``: each view, with its node and edge counts at the moment."""
    moment = resolve_moment(derived, at_text, window_text)
    listed = []
    with gc_paused():  # as replay.views.api's: nothing made here outlives the answer
        scene = build_scene(derived, moment)
        for view in View:
            stats = build_topology(scene, view, options).stats()
            listed.append(
                {"name": str(view), "url": f"/api/topology/{view}", "stats": stats},
            )
    return to_json(
        {"at": format_ns(moment.at_ns), "window_ns": moment.window_ns, "topologies": listed}
    )


def topology(
    derived: Derived,
    at_text: str,
    window_text: str,
    view: View,
    options: Options,
    stacked: bool = False,
) -> str:
    """Scope's ``/api/topology/<view>``: the document ``--format json`` prints, and the
    warnings the CLI prints on stderr beside it. ``stacked``: alike nodes as one, as the
    drawn maps show them (replay.views.drawing), each with its members' ids."""
    with gc_paused():  # as replay.views.api's: nothing made here outlives the answer
        found, warnings = topology_and_warnings(derived, at_text, window_text, view, options)
        document = stacked_document(found) if stacked else to_document(found)
        document["warnings"] = warnings
        text = compact_json(document)
        # Dropped while the collector is paused: alive when it resumes, the map's objects
        # would all be walked by the young collection that its first allocation starts
        # (10-20 ms, to find nothing).
        del found, document
    return text


def compact_json(document: Any) -> str:
    """JSON without indentation: written by the C encoder, several times faster than the
    CLI's indented form on a map of thousands of nodes (the content is the same)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def stacked_document(found: Topology) -> dict[str, Any]:
    """The topology with alike nodes stacked (replay.views.drawing's rule): a stack is
    summarised as its first member, with ``members`` and its count as ``labelMinor``."""
    document = to_document_head(found)
    around = neighbours(found)
    view = View(found.view)
    nodes: dict[str, Any] = {}
    for stack_id, members in sorted(alike_stacks(found, around).items()):
        drawn = drawn_node(view, found.nodes, members)
        # its adjacency: its targets, as neighbours has them (sorted)
        adjacency = {stack_id: list(around[stack_id][1])}
        summary = node_summary(found, found.nodes[stack_id], adjacency)
        summary["labelMinor"] = drawn.label_minor
        summary["stack"] = len(members) > 1 or summary.get("stack", False)
        summary["members"] = members
        nodes[stack_id] = summary
    drawn_as = {member: stack_id for stack_id, s in nodes.items() for member in s["members"]}
    document["nodes"] = nodes
    document["edges"] = [
        {"source": e.source, "target": e.target, "connections": e.connections,
         "open_connections": e.open_connections}
        for e in merged_edges(found, drawn_as)
    ]  # fmt: skip
    return document


def connections(derived: Derived, at_text: str, window_text: str) -> str:
    """The connection table, as ``scope-replay --at T --format json`` prints it."""
    return table.render(table.table_at(derived, at_text, window_text), "json")


def node(
    derived: Derived, at_text: str, window_text: str, view: View, node_id: str, options: Options
) -> str | None:
    details = node_details(derived, at_text, window_text, view, node_id, options)
    return None if details is None else to_json(details)


def diff(
    derived: Derived,
    before_text: str,
    after_text: str,
    window_text: str,
    view: View,
    options: Options,
) -> str:
    """What ``scope-replay diff --format json`` prints."""
    before, _ = topology_and_warnings(derived, before_text, window_text, view, options)
    after, _ = topology_and_warnings(derived, after_text, window_text, view, options)
    return to_json(topology_diff(before, after))


def span(derived: Derived, location: str, buckets: int) -> str:
    """The log's extent for a time slider: its recordings (as ``scope-replay info`` gives
    them, without the per-kind counts), its losses, and its events counted in ``buckets``
    equal slices of the extent. The events are counted by the log's batches (each about
    200 ms of log time), a batch in the slice of its middle: a picture of the density
    without reading every event.

    Where the log's history was dropped (``--archive none``), ``dropped_to`` says up to when,
    and a slice that ends by then counts null, not the few batches the cut kept: how busy the
    host was then is no longer known, and no moment there can be answered."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise UsageError(f"buckets must be between 1 and {MAX_BUCKETS}, not {buckets}")
    extent = log_span(derived)
    if extent is None:
        raise UsageError("the log holds no events yet")
    log = info.log_info(derived, location, events=False)
    document = info.document(log)
    for recording in document["recordings"]:
        del recording["events"], recording["snapshots"]
    slice_ns = -(-(extent.end_ns - extent.start_ns + 1) // buckets)  # rounded up
    dropped = derived.dropped_wall_ns
    counts: list[int | None] = [0] * buckets
    rows = derived.con.execute(
        "SELECT least(greatest((middle - ?) // ?, 0), ?) AS slice, sum(events) "
        "FROM (SELECT min_wall_ns // 2 + max_wall_ns // 2 AS middle, "
        "      last_position - first_position + 1 AS events FROM batches "
        "      WHERE min_wall_ns IS NOT NULL AND max_wall_ns IS NOT NULL) "
        "WHERE middle > ? GROUP BY slice",
        [extent.start_ns, slice_ns, buckets - 1, -1 if dropped is None else dropped],
    ).fetchall()
    for index, count in rows:
        counts[int(index)] = int(count)
    if dropped is not None:
        for index in range(buckets):
            if extent.start_ns + (index + 1) * slice_ns - 1 <= dropped:
                counts[index] = None
    document["dropped_to"] = None if dropped is None else format_ns(dropped)
    document["dropped_to_ns"] = dropped
    document["start"] = format_ns(extent.start_ns)
    document["end"] = format_ns(extent.end_ns)
    document["start_ns"] = extent.start_ns
    document["end_ns"] = extent.end_ns
    document["bucket_ns"] = slice_ns
    document["event_counts"] = counts
    for loss, (_, found, _) in zip(document["losses"], log.losses, strict=True):
        loss["from_ns"] = found.first_wall_ns
        loss["to_ns"] = found.last_wall_ns
    return to_json(document)
