"""Where a drawn map's nodes go, said as the few constraints Graphviz's ``dot`` takes.

``dot`` draws a left-to-right map in ranks, one column each. Three things make a map one tall
column, and each has its remedy here:

- the many leaves of one node (the clients of a server, each seen once) share the rank next
  to it: their edges are lengthened in turn (``minlen``), so they stand in a few short
  columns;
- unconnected nodes all go to the first rank: they are chained into rows (invisible edges);
- the parts of a map that are not connected to each other are stacked one under another:
  they are chained, largest first, into rows whose length makes the whole page about half
  again as wide as it is tall. Graphviz's own ``pack`` would place them, but the Graphviz of
  Debian (2.43) drops every edge label of a packed graph.

Sizes are estimates in inches (the caller's, from label lengths); only their proportions
matter. Everything is sorted: the same input gives the same constraints.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

RANK_GAP = 0.45  # inches between ranks (Graphviz's ranksep)
NODE_GAP = 0.2  # inches between nodes of a rank (nodesep)
PASSING = 0.3  # inches an edge passing through a rank takes there
ASPECT = 1.5  # the page's width over its height, sought when arranging the parts
# From this many leaves on one side of a node, they are spread over several ranks.
STAGGER_FROM = 6
# From this many unconnected nodes in one cluster, they are chained into rows.
ROWS_FROM = 4


@dataclass(frozen=True)
class Box:
    """A node as the layout sees it."""

    id: str
    width: float
    height: float
    unit: str | None = None  # nodes of one unit (a cluster, the legend) are placed together


@dataclass(frozen=True)
class Link:
    """An edge as the layout sees it: ``minlen`` ranks at least from source to target."""

    source: str
    target: str
    minlen: int = 1


# -- many leaves ----------------------------------------------------------------------------
def staggered(links: list[Link]) -> dict[tuple[str, str], int]:
    """The ``minlen`` of the edges that need more than 1: those of a node's many leaves get
    1, 2, ... k in turn (k about the square root of half their number), so that the leaves
    stand in k columns rather than one. dot draws the edges of the far columns straight
    through the near ones, which keeps the block taller than wide, but a third shorter."""
    degree: dict[str, int] = defaultdict(int)
    for link in links:
        if link.source != link.target:
            degree[link.source] += 1
            degree[link.target] += 1
    leaves: dict[tuple[str, bool], list[Link]] = defaultdict(list)  # (hub, leaf is source)
    for link in sorted(links, key=lambda link: (link.source, link.target)):
        if link.source == link.target:
            continue
        if degree[link.source] == 1 and degree[link.target] > 1:
            leaves[(link.target, True)].append(link)
        elif degree[link.target] == 1 and degree[link.source] > 1:
            leaves[(link.source, False)].append(link)
    minlen: dict[tuple[str, str], int] = {}
    for hub_links in leaves.values():
        if len(hub_links) < STAGGER_FROM:
            continue
        columns = max(2, round(math.sqrt(len(hub_links) / 2)))
        for turn, link in enumerate(hub_links):
            if turn % columns:
                minlen[(link.source, link.target)] = 1 + turn % columns
    return minlen


# -- unconnected nodes ----------------------------------------------------------------------
def rows_of(ids: list[str]) -> list[Link]:
    """Invisible links chaining ``ids`` (unconnected nodes of one cluster) into rows about
    as many as long; left alone, Graphviz puts them all in the first rank, one column."""
    if len(ids) < ROWS_FROM:
        return []
    length = math.ceil(math.sqrt(len(ids)))
    ordered = sorted(ids)
    return [
        Link(source, target)
        for start in range(0, len(ordered), length)
        for source, target in itertools.pairwise(ordered[start : start + length])
    ]


# -- parts not connected to each other ------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """A set of nodes placed together: what links or a unit join."""

    first: str  # a node of its first rank, where the link from the part before arrives
    last: str  # a node of its last rank, where the link to the part after leaves
    width: float
    height: float


def parts_of(boxes: list[Box], links: list[Link]) -> list[list[str]]:
    """The node ids joined by links or by a unit, each part sorted, parts by first id."""
    parent = {box.id: box.id for box in boxes}

    def root(node_id: str) -> str:
        while parent[node_id] != node_id:
            parent[node_id] = parent[parent[node_id]]
            node_id = parent[node_id]
        return node_id

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    units: dict[str, str] = {}
    for box in boxes:
        if box.unit is not None:
            join(units.setdefault(box.unit, box.id), box.id)
    for link in links:
        join(link.source, link.target)
    members: dict[str, list[str]] = defaultdict(list)
    for box in sorted(boxes, key=lambda box: box.id):
        members[root(box.id)].append(box.id)
    return sorted(members.values())


def ranks_of(ids: list[str], links: list[Link]) -> dict[str, int]:
    """Each node's rank as the longest path to it (edges closing a cycle left out, as
    ``dot`` reverses them): near enough to ``dot``'s ranks to measure a part."""
    inside = set(ids)
    targets: dict[str, list[Link]] = defaultdict(list)
    for link in links:
        if link.source in inside and link.source != link.target:
            targets[link.source].append(link)
    order: list[str] = []  # reverse topological, of the edges kept
    kept: list[Link] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for start in ids:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, _by_target(targets[start]))]
        while stack:
            node_id, pending = stack[-1]
            step = next(pending, None)
            if step is None:
                state[node_id] = 2
                order.append(node_id)
                stack.pop()
            elif state.get(step.target) != 1:  # not back to the path: a forward edge
                kept.append(step)
                if step.target not in state:
                    state[step.target] = 1
                    stack.append((step.target, _by_target(targets[step.target])))
    incoming: dict[str, list[Link]] = defaultdict(list)
    for link in kept:
        incoming[link.target].append(link)
    rank: dict[str, int] = {}
    for node_id in reversed(order):
        rank[node_id] = max((rank[k.source] + k.minlen for k in incoming[node_id]), default=0)
    # dot keeps edges short: a source sits just before the nearest of its targets (the
    # leaves of a node in the columns their minlen gives them), not in the first rank.
    outgoing: dict[str, list[Link]] = defaultdict(list)
    for link in kept:
        outgoing[link.source].append(link)
    for node_id in order:
        if not incoming[node_id] and outgoing[node_id]:
            rank[node_id] = min(rank[k.target] - k.minlen for k in outgoing[node_id])
    lowest = min(rank.values())
    return {node_id: value - lowest for node_id, value in rank.items()}


def _by_target(links: list[Link]) -> Iterator[Link]:
    return iter(sorted(links, key=lambda link: link.target))


def measured(ids: list[str], sizes: dict[str, Box], links: list[Link]) -> Part:
    """A part's extent: its ranks side by side, each as tall as its nodes and the edges
    passing through it (those of far leaves: dot draws them straight, and nodes keep clear)."""
    rank = ranks_of(ids, links)
    widths: dict[int, float] = defaultdict(float)
    heights: dict[int, float] = defaultdict(float)
    for node_id in ids:
        widths[rank[node_id]] = max(widths[rank[node_id]], sizes[node_id].width)
        heights[rank[node_id]] += sizes[node_id].height + NODE_GAP
    for link in links:
        if link.source in rank:
            low, high = sorted((rank[link.source], rank[link.target]))
            for passed in range(low + 1, high):
                heights[passed] += PASSING
    last_rank = max(rank.values())
    return Part(
        first=min(n for n in ids if rank[n] == 0),
        last=min(n for n in ids if rank[n] == last_rank),
        width=sum(widths.values()) + RANK_GAP * last_rank,
        height=max(heights.values()),
    )


def shelves(parts: list[Part], row_width: float) -> list[list[Part]]:
    """``parts`` in order, in rows no wider than ``row_width`` (a wider part alone)."""
    rows: list[list[Part]] = []
    width = 0.0
    for part in parts:
        if rows and width + RANK_GAP + part.width <= row_width:
            rows[-1].append(part)
            width += RANK_GAP + part.width
        else:
            rows.append([part])
            width = part.width
    return rows


def page_of(rows: list[list[Part]]) -> tuple[float, float]:
    width = max(sum(p.width for p in row) + RANK_GAP * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + NODE_GAP * (len(rows) - 1)
    return width, height


def best_rows(parts: list[Part], trailing: Part | None = None) -> list[list[Part]]:
    """The rows of ``parts`` (largest first, then ``trailing``) whose page comes nearest to
    ASPECT, among row lengths growing by a quarter from the widest part's to all in one."""
    ordered = sorted(parts, key=lambda p: (-p.width * p.height, p.first))
    ordered += [trailing] if trailing is not None else []
    if not ordered:
        return []
    widest = max(p.width for p in ordered)
    everything = sum(p.width for p in ordered) + RANK_GAP * (len(ordered) - 1)
    best: tuple[float, list[list[Part]]] | None = None
    row_width = widest
    while True:
        rows = shelves(ordered, row_width)
        width, height = page_of(rows)
        miss = abs(math.log(width / height / ASPECT))
        if best is None or miss < best[0]:
            best = (miss, rows)
        if row_width >= everything:
            return best[1]
        row_width *= 1.25


def arranged(boxes: list[Box], links: list[Link], last_unit: str | None = None) -> list[Link]:
    """Invisible links chaining the parts of the map into rows, the part of ``last_unit``
    (the legend) last."""
    sizes = {box.id: box for box in boxes}
    parts: list[Part] = []
    trailing: Part | None = None
    for group in parts_of(boxes, links):
        part = measured(group, sizes, links)
        if last_unit is not None and sizes[group[0]].unit == last_unit:
            trailing = part
        else:
            parts.append(part)
    rows = best_rows(parts, trailing)
    return [
        Link(before.last, after.first) for row in rows for before, after in itertools.pairwise(row)
    ]
