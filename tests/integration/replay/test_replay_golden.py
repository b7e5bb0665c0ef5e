"""The connection table on small hand-written logs, one rule each, against golden JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eventlog.events import TCP_ESTABLISHED, TCP_LISTEN
from eventlog.store import Purpose, open_log
from replay.table import render, replay_table
from tests.golden import check_golden
from tests.logbuilder import Builder, built_log

CLIENT, SERVER = "127.0.0.1:40000", "127.0.0.1:8080"


def table(location: Any, at: str, window: str = "15s") -> dict[str, Any]:
    with open_log(location, Purpose.READ) as store:
        document: dict[str, Any] = json.loads(render(replay_table(store, at, window), "json"))
    return document


def golden(location: Any, name: str, at: str, window: str = "15s") -> list[dict[str, Any]]:
    with open_log(location, Purpose.READ) as store:
        text = render(replay_table(store, at, window), "json")
    check_golden(f"replay-{name}.json", text)
    return json.loads(text)["connections"]  # type: ignore[no-any-return]


def local_pair(b: Builder, at: float, sock: int, client_port: int = 40000) -> None:
    client = f"127.0.0.1:{client_port}"
    b.connect(at, sock, 100, "curl", client, SERVER)
    b.accept(at + 0.0001, sock + 1, 200, "nginx", SERVER, client)


def test_open_at_t_shows_both_local_sides(tmp_path: Path) -> None:
    with built_log(tmp_path / "a.db") as (location, b):
        local_pair(b, 1.0, 1)
        b.exec(9.0, 999, "end-marker")
    (row,) = golden(location, "open-at-t", "+5s")
    assert (row["state"], row["direction"], row["client"], row["server"]) == (
        "open",
        "local",
        CLIENT,
        SERVER,
    )
    assert (row["client_pid"], row["client_comm"], row["server_pid"], row["server_comm"]) == (
        100,
        "curl",
        200,
        "nginx",
    )
    assert row["closed_at"] == "" and row["positions"] == [1, 2]


def test_closed_inside_the_window_and_before_it(tmp_path: Path) -> None:
    with built_log(tmp_path / "b.db") as (location, b):
        local_pair(b, 1.0, 1)
        b.close(3.0, 1, 100, "curl", CLIENT, SERVER, bytes_sent=10, bytes_received=20)
        b.close(3.0001, 2, 200, "nginx", SERVER, CLIENT)
        b.exec(30.0, 999, "end-marker")
    (row,) = golden(location, "closed-in-window", "+5s")
    assert row["state"] == "closed" and row["duration"] == "2.000s"
    assert (row["bytes_sent"], row["bytes_received"]) == (10, 20)
    assert table(location, "+20s")["connections"] == []  # window (5s, 20s] starts after the close
    assert len(table(location, "+20s", window="17s")["connections"]) == 1


def test_opened_after_t_is_not_there(tmp_path: Path) -> None:
    with built_log(tmp_path / "c.db") as (location, b):
        b.exec(0.5, 999, "start-marker")
        local_pair(b, 10.0, 1)
    assert table(location, "+5s")["connections"] == []
    assert len(table(location, "+10.0001s")["connections"]) == 1


def test_close_without_open_is_kept(tmp_path: Path) -> None:
    with built_log(tmp_path / "d.db") as (location, b):
        b.exec(0.5, 999, "start-marker")
        b.close(3.0, None, None, None, "10.0.0.5:51000", "93.184.216.34:443")
        b.exec(9.0, 998, "end-marker")
    (row,) = golden(location, "close-without-open", "+5s")
    assert row["state"] == "closed" and row["opened_at"] == ""
    assert (row["client"], row["server"], row["direction"]) == (
        "10.0.0.5:51000",
        "93.184.216.34:443",
        "outbound",
    )
    assert "opened before" in row["note"]


def test_snapshot_and_events_merge_without_duplicates(tmp_path: Path) -> None:
    with built_log(tmp_path / "e.db") as (location, b):
        b.snapshot(
            1.0,
            [
                ("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 200),
                (SERVER, "127.0.0.1:39000", TCP_ESTABLISHED, 200),  # old, server side (listener)
                ("127.0.0.1:39000", SERVER, TCP_ESTABLISHED, 100),  # old, client side
                ("10.0.0.5:22", "10.0.0.9:50000", TCP_ESTABLISHED, None),  # lower port: server
                # The recorder leaves out what opened during the walk: its event says it all.
            ],
            processes=[(100, "curl"), (200, "nginx")],
            walk_ms=50,
        )
        b.connect(1.02, 7, 100, "curl", CLIENT, SERVER)  # opened while the walk ran
        b.close(4.0, None, None, None, "127.0.0.1:39000", SERVER)  # the old client closes
        b.exec(8.0, 999, "end-marker")
    rows = golden(location, "snapshot-merge", "+5s")
    by_client = {row["client"]: row for row in rows}
    assert sorted(by_client) == ["10.0.0.9:50000", "127.0.0.1:39000", CLIENT]
    old = by_client["127.0.0.1:39000"]
    # Its client side closed at 4 s, its server side is still open: one row, still open.
    assert (old["state"], old["direction"], old["client_pid"], old["server_pid"]) == (
        "open",
        "local",
        100,
        200,
    )
    assert (old["source"], old["opened_at"]) == ("snapshot", "")
    walk = by_client[CLIENT]
    assert (walk["source"], walk["client_pid"], walk["state"]) == ("events", 100, "open")
    ssh = by_client["10.0.0.9:50000"]
    assert (ssh["direction"], ssh["server"], ssh["source"]) == (
        "inbound",
        "10.0.0.5:22",
        "snapshot",
    )
    # Once the window no longer holds the client's close, only the server side is left.
    later = [
        r for r in table(location, "+8s", window="2s")["connections"] if "39000" in r["client"]
    ]
    assert [(r["client_pid"], r["server_pid"], r["direction"]) for r in later] == [
        (None, 200, "inbound")
    ]


def test_snapshot_reconciles_a_close_that_was_never_captured(tmp_path: Path) -> None:
    with built_log(tmp_path / "f.db") as (location, b):
        local_pair(b, 1.0, 1)
        b.snapshot(5.0, [(SERVER, CLIENT, TCP_ESTABLISHED, 200)], processes=[(200, "nginx")])
        b.exec(8.0, 999, "end-marker")
    # The client side's close was never captured; the snapshot at 5 s no longer shows it.
    (row,) = table(location, "+6s")["connections"]
    assert (row["direction"], row["state"], row["client_pid"], row["server_pid"]) == (
        "local",
        "open",
        100,
        200,
    )
    assert "snapshot" in row["note"]
    (later,) = table(location, "+8s", window="1s")["connections"]
    assert (later["direction"], later["client_pid"], later["server_pid"]) == ("inbound", None, 200)


def test_failed_connect_appears_in_the_window(tmp_path: Path) -> None:
    with built_log(tmp_path / "g.db") as (location, b):
        b.exec(0.5, 999, "start-marker")
        b.failed(2.0, 3, 100, "curl", "127.0.0.1:41000", "127.0.0.1:1")
        b.exec(9.0, 998, "end-marker")
    (row,) = golden(location, "failed-connect", "+3s")
    assert (row["state"], row["client_pid"], row["server"]) == ("failed", 100, "127.0.0.1:1")
    assert table(location, "+3s", window="0.5s")["connections"] == []


def test_pid_reuse_keeps_processes_apart(tmp_path: Path) -> None:
    from replay.derived.store import open_derived
    from replay.views.scene import processes_at
    from tests.logbuilder import wall

    with built_log(tmp_path / "h.db") as (location, b):
        b.exec(1.0, 100, "first")
        b.connect(1.5, 1, 100, "first", CLIENT, "10.0.0.1:80")
        b.exit(2.0, 100, "first")
        b.exec(3.0, 100, "second")
        b.connect(3.5, 2, 100, "second", "127.0.0.1:40001", "10.0.0.1:80")
        b.exec(9.0, 999, "end-marker")
    rows = table(location, "+4s")["connections"]
    assert [(r["client_pid"], r["client_comm"]) for r in rows] == [(100, "first"), (100, "second")]
    with open_log(location, Purpose.READ) as store, open_derived(store) as derived:
        early, late = processes_at(derived, wall(1.6)), processes_at(derived, wall(3.6))
        gone = processes_at(derived, wall(2.5))
    assert (early[("testhost", 100)].comm, late[("testhost", 100)].comm) == ("first", "second")
    assert ("testhost", 100) not in gone


def test_window_overlapping_a_loss_warns(tmp_path: Path) -> None:
    with built_log(tmp_path / "i.db") as (location, b):
        b.exec(0.5, 999, "start-marker")
        b.loss(2.0, 2.5, 17)
        b.exec(9.0, 998, "end-marker")
    document = table(location, "+5s")
    assert document["losses"] == [
        {
            "lost": 17,
            "from": document["losses"][0]["from"],
            "to": document["losses"][0]["to"],
            "reason": "ring buffer full",
        }
    ]
    assert "17 events were lost" in document["warnings"][0]
    assert table(location, "+9s", window="1s")["warnings"] == []


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_output_is_byte_identical_across_runs_and_stores(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with built_log(tmp_path / "j.db") as (location, b):
        for i in range(30):
            local_pair(b, 1.0 + i * 0.1, 10 + 2 * i, client_port=41000 + i)
            if i % 3:
                b.close(1.05 + i * 0.1, 10 + 2 * i, 100, "curl", f"127.0.0.1:{41000 + i}", SERVER)
            b.flush()
        b.exec(9.0, 999, "end-marker")
    outputs = set()
    for cache in ("a", "a", "b"):  # built, then current, then built again elsewhere
        monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / cache))
        with open_log(location, Purpose.READ) as store:
            outputs.add(render(replay_table(store, "+4s", "15s"), fmt))
    assert len(outputs) == 1
