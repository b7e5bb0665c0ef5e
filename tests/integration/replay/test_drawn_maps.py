"""The drawn maps (DOT, and SVG and PNG through the real Graphviz) of a busy moment: alike
processes stacked, a title, open and closed edges apart, and a page that is not a column."""

from __future__ import annotations

import json
import re
import shutil
import struct

import pytest

from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log
from replay.views.api import topology_at
from replay.views.dot import OWN
from replay.views.render import render_dot, render_graphviz, render_json, render_table
from replay.views.topology import Topology, View
from tests.logbuilder import Builder, built_log

CURLS = 30
OUTBOUND = 11
needs_graphviz = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed (make setup)"
)


def busy_moment(b: Builder) -> None:
    """30 short-lived curl processes, each one connection to api, all closed by T; api with
    11 open connections to the Internet; sshd with one open inbound. Its endpoints map has
    55 nodes: 30 curl ends and api's, 11 pairs to the Internet, and sshd's pair."""
    b.exec(0.5, 5, "start-marker")
    sock = 1
    for i in range(CURLS):
        at, client = 1.0 + i * 0.01, f"127.0.0.1:{50000 + i}"
        b.connect(at, sock, 100 + i, "curl", client, "127.0.0.1:8080")
        b.accept(at, sock + 1, 20, "api", "127.0.0.1:8080", client)
        b.close(at + 0.005, sock, 100 + i, "curl", client, "127.0.0.1:8080")
        b.close(at + 0.005, sock + 1, 20, "api", "127.0.0.1:8080", client)
        sock += 2
    for i in range(OUTBOUND):
        b.connect(
            2.0 + i * 0.01, sock + i, 20, "api", f"10.0.0.2:{41000 + i}", f"140.82.112.{i + 1}:443"
        )
    b.accept(2.5, 999, 50, "sshd", "10.0.0.2:22", "8.8.4.4:60000")
    b.exec(9.0, 9999, "end-marker")


@pytest.fixture(scope="module")
def busy_log(tmp_path_factory: pytest.TempPathFactory) -> LogLocation:
    with built_log(tmp_path_factory.mktemp("maps") / "busy.db") as (location, b):
        busy_moment(b)
    return location


def map_at(location: LogLocation, view: View) -> Topology:
    with open_log(location, Purpose.READ) as store:
        return topology_at(store, "+5s", "15s", view)


NODE = re.compile(r'^\s*"([^"]+)" \[label="([^"]*)"([^\]]*)\];$', re.M)
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[([^\]]*)\])?;$', re.M)


def drawn_nodes(dot: str) -> dict[str, tuple[str, str]]:
    """The DOT text's nodes: their label and other attributes, by id."""
    return {node_id: (label, rest) for node_id, label, rest in NODE.findall(dot)}


def drawn_edges(dot: str) -> dict[tuple[str, str], str]:
    """The DOT text's edges (and invisible ones) and their attributes."""
    return {(source, target): rest for source, target, rest in EDGE.findall(dot)}


def test_alike_processes_are_drawn_as_one_stack(busy_log: LogLocation) -> None:
    topology = map_at(busy_log, View.processes)
    dot = render_dot(topology)
    curls = {i: label for i, (label, _) in drawn_nodes(dot).items() if label.startswith("curl")}
    assert curls == {"testhost;100": f"curl\n{CURLS} processes"}
    into_api = {pair: rest for pair, rest in drawn_edges(dot).items() if pair[1] == "testhost;20"}
    assert list(into_api) == [("testhost;100", "testhost;20")]
    assert f'label="{CURLS}"' in into_api[("testhost;100", "testhost;20")]
    # The machines' formats keep every process and connection.
    document = json.loads(render_json(topology))
    assert sum(1 for node in document["nodes"].values() if node["label"] == "curl") == CURLS
    assert sum(1 for e in document["edges"] if e["target"] == "testhost;20") == CURLS
    assert render_table(topology).count("\ncurl ") == 2 * CURLS  # a node's row, an edge's


def test_the_title_names_the_moment_and_the_window(busy_log: LogLocation) -> None:
    dot = render_dot(map_at(busy_log, View.processes))
    assert 'label="processes at 2025-11-25T12:00:05.000000000Z, window 15.000s"' in dot


def test_an_edge_with_no_open_connection_is_drawn_closed(busy_log: LogLocation) -> None:
    edges = drawn_edges(render_dot(map_at(busy_log, View.processes)))
    closed = edges[("testhost;100", "testhost;20")]  # curl's: all closed by T
    still_open = edges[("testhost;20", "out-theinternet")]
    assert "style=dashed" in closed and 'color="#aaaaaa"' in closed
    assert "style=dashed" not in still_open and "#aaaaaa" not in still_open
    assert f'label="{OUTBOUND}"' in still_open


def test_the_legend_names_what_is_drawn(busy_log: LogLocation) -> None:
    nodes = drawn_nodes(render_dot(map_at(busy_log, View.processes)))
    legend = {label for node_id, (label, _) in nodes.items() if node_id.startswith(OWN)}
    assert {"process", "the Internet", "processes alike"} <= legend
    assert {"connections, some open", "connections, all closed"} <= legend


def test_drawings_are_byte_identical_across_runs(busy_log: LogLocation) -> None:
    for view in View:
        assert render_dot(map_at(busy_log, view)) == render_dot(map_at(busy_log, view))


@needs_graphviz
def test_a_large_endpoints_map_is_wider_than_tall(busy_log: LogLocation) -> None:
    """Drawn as one column, it was 492 x 9555 pixels; its parts now stand in rows."""
    topology = map_at(busy_log, View.endpoints)
    assert len(topology.nodes) >= 50
    png = render_graphviz(topology, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert height <= width, (width, height)


@needs_graphviz
def test_graphviz_draws_every_edge_label(busy_log: LogLocation) -> None:
    """Graphviz 2.43 drops the edge labels of a ``pack``ed graph: the counts must survive."""
    svg = render_graphviz(map_at(busy_log, View.processes), "svg").decode()
    edge_texts = re.findall(r'class="edge">.*?</g>', svg, re.S)
    labels = sorted(re.findall(r">([^<]+)</text>", "".join(edge_texts)))
    assert labels == sorted(["30", str(OUTBOUND), "n", "n"])  # the legend's samples too
