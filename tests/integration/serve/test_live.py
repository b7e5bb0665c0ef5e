"""A log still being written: the server follows it (the page's live mode asks /api/span
and the map at the log's end again and again), and losses show on the timeline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from eventlog.recordings import STOP_SIGNAL, end_recording
from eventlog.store import Purpose, open_log
from tests.integration.serve.conftest import serving
from tests.logbuilder import built_log, mono, wall

SERVER = "10.0.0.2:8080"


def test_the_server_follows_a_log_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    with built_log(tmp_path / "live.db") as (_, log):
        log.connect(1.0, 1, 100, "early", "10.0.0.2:40000", SERVER)
        log.accept(1.0, 2, 200, "srv", SERVER, "10.0.0.2:40000")
        log.loss(1.5, 1.8, 7)
        log.flush()
        with serving(tmp_path / "live.db") as served, served.client() as client:
            first = client.get("/api/span").json()
            assert first["losses"][0]["lost"] == 7
            assert first["losses"][0]["from_ns"] == wall(1.5)
            assert first["losses"][0]["to_ns"] == wall(1.8)
            labels = {
                n["label"] for n in client.get("/api/topology/processes").json()["nodes"].values()
            }
            assert labels == {"early", "srv"}

            log.connect(5.0, 3, 300, "late", "10.0.0.2:40001", SERVER)
            log.accept(5.0, 4, 200, "srv", SERVER, "10.0.0.2:40001")
            log.flush()
            deadline = time.monotonic() + 60
            while client.get("/api/span").json()["end_ns"] == first["end_ns"]:
                assert time.monotonic() < deadline, "the server did not see the new events"
                time.sleep(0.2)
            latest = client.get("/api/topology/processes", params={"window": "1s"}).json()
            # the early connection was never closed: it is still open at the end
            assert {n["label"] for n in latest["nodes"].values()} == {"early", "late", "srv"}


def test_a_recording_that_stops_without_a_further_event_is_seen_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stop changes no event: the server notices it by the recordings' ends, and the
    span (kept while the log does not move) is answered again."""
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    with built_log(tmp_path / "live.db") as (location, log):
        log.connect(1.0, 1, 100, "early", "10.0.0.2:40000", SERVER)
        log.flush()
        with serving(tmp_path / "live.db") as served, served.client() as client:
            (running,) = client.get("/api/span").json()["recordings"]
            assert running["stop_reason"] is None
            with open_log(location, Purpose.RECORD) as store:
                end_recording(store, running["id"], mono(2.0), STOP_SIGNAL)
            deadline = time.monotonic() + 60
            while (stopped := client.get("/api/span").json()["recordings"][0])[
                "stop_reason"
            ] is None:
                assert time.monotonic() < deadline, "the server did not see the recording stop"
                time.sleep(0.2)
            assert stopped["stop_reason"] == STOP_SIGNAL
