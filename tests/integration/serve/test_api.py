"""The API of `scope-replay serve` through HTTP (httpx against a real server over the real
recorded log): the same answers as the CLI's, 400s for bad parameters, and the safety rules."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventlog.errors import UsageError
from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay import table
from replay.derived.store import open_derived
from replay.serve.app import Limits
from replay.serve.server import IDLE_S, Bind, chosen_token, parse_bind
from replay.serve.session import REMEMBERED
from replay.views.api import topology_in
from replay.views.diff import topology_diff
from replay.views.render import to_document
from replay.views.topology import View
from tests.integration.serve.conftest import Served, serving

AT = "+3.5s"


def get(served: Served, path: str, **params: Any) -> httpx.Response:
    with served.client() as client:
        return client.get(path, params=params)


def test_a_view_is_the_document_the_cli_prints(served: Served, real_log: Path) -> None:
    answer = get(served, "/api/topology/processes", timestamp=AT, window="15s")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    warnings = document.pop("warnings")
    assert warnings == []
    with open_log(resolve(str(real_log)), Purpose.READ) as log, open_derived(log) as derived:
        expected = to_document(topology_in(derived, AT, "15s", View.processes))
    assert document == json.loads(json.dumps(expected))
    labels = {node["label"] for node in document["nodes"].values()}
    assert {"gold-srv", "gold-held", "gold-burst", "gold-six"} <= labels


def test_a_map_asked_again_is_the_same_answer_kept_apart_from_other_questions(
    served: Served,
) -> None:
    first = get(served, "/api/topology/processes", timestamp=AT, window="15s")
    again = get(served, "/api/topology/processes", timestamp=AT, window="15s")
    assert again.content == first.content
    others = [
        get(served, "/api/topology/processes", timestamp=AT, window="15s", stack="true"),
        get(served, "/api/topology/processes", timestamp=AT, window="2s"),
        get(served, "/api/topology/hosts", timestamp=AT, window="15s"),
    ]
    assert len({first.content, *(answer.content for answer in others)}) == 4


def test_the_server_keeps_the_answers_last_asked_for(served: Served) -> None:
    session = served.session
    with session.reading():
        for number in range(REMEMBERED + 2):
            session.remember(f"test:{number}", number)
            assert session.cached("test:0") == 0  # asked for again: kept
        assert session.cached("test:1") is None
        assert session.cached(f"test:{REMEMBERED + 1}") == REMEMBERED + 1


def test_the_views_are_listed_with_their_counts(served: Served) -> None:
    listing = get(served, "/api/topology", timestamp=AT).json()
    names = [t["name"] for t in listing["topologies"]]
    assert names == [str(view) for view in View]
    for entry in listing["topologies"]:
        view = get(served, entry["url"], timestamp=AT).json()
        assert entry["stats"] == view["stats"]


def test_connections_are_the_cli_table_byte_for_byte(served: Served, real_log: Path) -> None:
    answer = get(served, "/api/connections", at=AT, window="2s")
    with open_log(resolve(str(real_log)), Purpose.READ) as log:
        expected = table.render(table.replay_table(log, AT, "2s"), "json")
    assert answer.text == expected


def test_a_node_lists_its_connections_with_their_positions(served: Served) -> None:
    view = get(served, "/api/topology/processes", timestamp=AT).json()
    server = next(n for n in view["nodes"].values() if n["label"] == "gold-srv")
    details = get(served, f"/api/node/processes/{server['id']}", timestamp=AT).json()
    assert details["node"] == server
    assert details["outbound"] == []
    peers = {row["peer_label"] for row in details["inbound"]}
    assert peers == {"gold-held", "gold-burst", "gold-six"}
    held = next(row for row in details["inbound"] if row["peer_label"] == "gold-held")
    assert held["server_comm"] == "gold-srv" and held["positions"]
    edge_ids = {cid for edge in view["edges"] for cid in edge["connection_ids"]}
    assert {row["id"] for row in details["inbound"]} == edge_ids


def test_an_unknown_node_is_a_404(served: Served) -> None:
    answer = get(served, "/api/node/processes/vm;999999", timestamp=AT)
    assert answer.status_code == 404
    assert "no node" in answer.json()["error"]


def test_diff_is_what_scope_replay_diff_prints(served: Served, real_log: Path) -> None:
    answer = get(served, "/api/diff/processes", **{"from": "+1s", "to": AT, "window": "1s"})
    assert answer.status_code == 200
    with open_log(resolve(str(real_log)), Purpose.READ) as log, open_derived(log) as derived:
        before = topology_in(derived, "+1s", "1s", View.processes)
        after = topology_in(derived, AT, "1s", View.processes)
    assert answer.json() == json.loads(json.dumps(topology_diff(before, after)))
    assert {node["label"] for node in answer.json()["add"]} >= {"gold-srv", "gold-held"}


def test_span_counts_every_event_once(served: Served) -> None:
    span = get(served, "/api/span", buckets=50).json()
    assert span["events"] == 386
    assert len(span["event_counts"]) == 50
    assert sum(span["event_counts"]) == 386  # all the events are inside the extent
    assert span["start_ns"] < span["end_ns"]
    assert [r["host"] for r in span["recordings"]] == ["vm"]
    assert span["losses"] == []


@pytest.mark.parametrize(
    ("path", "params", "says"),
    [
        ("/api/topology/processes", {"timestamp": "yesterday"}, "invalid time"),
        ("/api/topology/processes", {"timestamp": "2001-01-01T00:00:00Z"}, "outside the log"),
        ("/api/topology/processes", {"window": "forever"}, "invalid window"),
        ("/api/topology/nope", {}, "view"),
        ("/api/topology/processes", {"pseudo": "maybe"}, "pseudo"),
        ("/api/connections", {"at": "+1y"}, "invalid"),
        ("/api/diff/processes", {"from": "+1s"}, "to"),
        ("/api/span", {"buckets": "0"}, "buckets"),
        ("/api/span", {"buckets": "many"}, "buckets"),
        ("/api/node/hosts/x", {"timestamp": "-1"}, "invalid time"),
        # a zone offset from the first or the last day a calendar has
        ("/api/topology/processes", {"timestamp": "9999-12-31T23:59:59-23:59"}, "outside"),
        ("/api/node/hosts/x", {"timestamp": "0001-01-01T00:00:00+01:00"}, "outside"),
        ("/api/connections", {"at": "2026-01-01T00:00:00+99:99"}, "zone offset"),
    ],
)
def test_bad_parameters_are_400_with_one_json_line(
    served: Served, path: str, params: dict[str, str], says: str
) -> None:
    answer = get(served, path, **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error


def test_every_response_carries_the_security_policy(served: Served) -> None:
    for path in ("/", "/static/app.js", "/api/span", "/api/topology/nope", "/openapi.json"):
        answer = get(served, path)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_nothing_writes(served: Served) -> None:
    schema = get(served, "/openapi.json").json()
    assert {method for item in schema["paths"].values() for method in item} == {"get"}
    with served.client() as client:
        for path in schema["paths"]:
            concrete = path.replace("{view}", "processes").replace("{node_id}", "x")
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert client.request(method, concrete).status_code == 405


@pytest.mark.parametrize("host", ["attacker.example:4040", "127.0.0.1.nip.io:4040", "10.0.0.1"])
def test_another_host_name_is_refused_without_a_token(served: Served, host: str) -> None:
    """A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) gets nothing."""
    with served.client() as client:
        answer = client.get("/api/span", headers={"Host": host})
    assert answer.status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.2:4040", "[::1]:4040", "localhost:4040", "127.0.0.1"])
def test_any_loopback_address_is_answered_without_a_token(served: Served, host: str) -> None:
    """A server bound to another loopback address than 127.0.0.1 (any of 127/8 is) answers
    its page there."""
    with served.client() as client:
        assert client.get("/api/span", headers={"Host": host}).status_code == 200


def test_with_a_token_the_api_asks_for_it(real_log: Path) -> None:
    token = "t0ken-for-the-test-only"
    with serving(real_log, token=token) as running:
        with running.client() as anonymous:
            assert anonymous.get("/api/span").status_code == 401
            assert anonymous.get("/").status_code == 200  # the page itself holds no data
        with running.client("wrong-token-xxxxxxxx") as wrong:
            assert wrong.get("/api/span").status_code == 401
        with running.client(token) as right:
            assert right.get("/api/span").status_code == 200


def test_an_address_other_than_loopback_gets_a_token() -> None:
    assert chosen_token(Bind("127.0.0.1", 4040), None) == (None, False)
    assert chosen_token(Bind("::1", 4040), None) == (None, False)
    token, generated = chosen_token(Bind("0.0.0.0", 4040), None)
    assert generated and token is not None and len(token) >= 16
    assert chosen_token(Bind("0.0.0.0", 4040), "x" * 20) == ("x" * 20, False)
    with pytest.raises(UsageError):
        chosen_token(Bind("0.0.0.0", 4040), "short")


@pytest.mark.parametrize("text", ["4040", "host:4040", "127.0.0.1:0x10", "127.0.0.1:70000", ":80"])
def test_bad_bind_addresses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_bind(text)


def test_parse_bind() -> None:
    assert parse_bind("[::1]:8080") == Bind("::1", 8080)
    assert parse_bind("0.0.0.0:4040") == Bind("0.0.0.0", 4040)


def test_survives_clients_that_go_away(served: Served) -> None:
    """Clients that close mid-request or mid-response, then one that waits for its answer."""
    host, port = served.url.removeprefix("http://").split(":")
    request = f"GET /api/connections?at=-0s&window=1h HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for read_some in (False, True):
        for _ in range(5):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(request)
                if read_some:
                    sock.recv(64)
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
    assert get(served, "/api/span").status_code == 200


def test_a_flood_is_bounded_and_the_server_answers_after(real_log: Path) -> None:
    """More requests at once than the server takes: the rest are told to retry (503), none
    fails otherwise, and the server answers normally afterwards."""
    statuses: list[int] = []
    lock = threading.Lock()
    with serving(real_log, limits=Limits(active=1, pending=2)) as running:

        def one() -> None:
            with running.client() as client:
                status = client.get("/api/connections", params={"window": "1h"}).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=one) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(statuses) <= {200, 503}
        assert 200 in statuses
        assert get(running, "/api/span").status_code == 200


def test_idle_connections_neither_keep_others_out_nor_stay(served: Served) -> None:
    """Connections that send nothing, or the start of a request and no more: more of them
    than the server answers at once. Others are answered meanwhile, and the server closes
    them once they have been idle for IDLE_S."""
    host, port = served.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(100)]
    partial = socket.create_connection((host, int(port)))
    partial.sendall(f"GET /api/span HTTP/1.1\r\nHost: {host}\r\n".encode())
    try:
        assert get(served, "/api/span").status_code == 200
        for sock in [*idle, partial]:
            sock.settimeout(IDLE_S * 6)
            assert sock.recv(1) == b"", "the server kept an idle connection"
    finally:
        for sock in [*idle, partial]:
            sock.close()
