"""Benchmark: `scope-replay serve` over the large synthetic log (bench/synthetic.py,
10,000,000 events), through HTTP, as the page uses it.

The server runs as the command does (a child process, `scope-replay serve`), over the cached
log (read only; never written) with its derived store kept in the bench cache directory
(built once, in ~40 s, on the first run; a later run finds it current). Measured, at 50
random moments (seeded, a 15 s window):

- ``GET /api/topology/processes?stack=true``: the map as the page asks for it, alike
  processes stacked (``topology_p50_s``, ``topology_p95_s``);
- ``GET /api/connections``: the connection table (``connections_p50_s``);
- ``GET /api/span``: the slider's extent and event density, its first (uncached) answer
  (``span_s``);
- loading the page in Debian's headless Chromium until the first map is drawn, median of 5
  loads at random moments (``page_load_s``: the page's own clock, from navigation to the map).

Then, once the server has stopped (one process at a time opens a store's file), where a map's
time goes, through the library in this process at the same moments (medians, printed, not in
the RESULT): the connection query alone, the scene (that query and what is read alongside
it), the map built from the scene, and the map stacked and written as JSON.

Last line:
RESULT topology_p50_s=<n> topology_p95_s=<n> connections_p50_s=<n> span_s=<n> page_load_s=<n>
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.synthetic import cache_dir, ensure_log

WINDOW = "15s"
VIEW = "processes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def store_directory() -> Path:
    """Where the server keeps the benchmark log's derived store, run after run."""
    return cache_dir() / "serve-store"


@contextmanager
def server(db: Path) -> Iterator[str]:
    """`scope-replay serve` over ``db``, until the block ends; its base URL."""
    port = free_port()
    environment = {**os.environ, "SCOPE_CACHE_DIR": str(store_directory())}
    command = [sys.executable, "-c", "from replay.cli import main; main()", "serve",
               "--db", str(db), "--bind", f"127.0.0.1:{port}"]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert child.poll() is None, "scope-replay serve exited"
            try:
                httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        print(f"server ready in {time.perf_counter() - started:.1f} s", flush=True)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=60)


def timed(client: httpx.Client, path: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = client.get(path, params=params)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def page_loads(url: str, moments: list[int]) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "needs chromium and chromium-driver (make host-test)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,860"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    loads = []
    try:
        for at_ns in moments:
            driver.get(f"{url}/?view={VIEW}&window={WINDOW}&t={at_ns / 1e9:.3f}")
            deadline = time.monotonic() + 60
            while True:
                drawn = driver.execute_script("return document.body.dataset.firstDrawnMs")
                if drawn:
                    break
                assert time.monotonic() < deadline, "the page drew no map"
                time.sleep(0.02)
            nodes = driver.execute_script("return window.scopeMap.cy.nodes().length")
            loads.append(float(drawn) / 1000)
            print(f"page at {at_ns}: {nodes} nodes drawn after {loads[-1]:.3f} s", flush=True)
    finally:
        driver.quit()
    return loads


def breakdown(db: Path, moments: list[int]) -> str:
    """Where the time of ``GET /api/topology`` goes at ``moments``, as replay.serve.documents
    spends it, over the store the server kept (see the module doc)."""
    from eventlog.batch import gc_paused
    from eventlog.location import resolve
    from eventlog.store import Purpose, open_log
    from replay.derived.store import open_derived
    from replay.moment import resolve_moment
    from replay.serve.documents import compact_json, stacked_document
    from replay.table import read_connections
    from replay.views.scene import MAP_FIELDS, build_scene
    from replay.views.topology import Options, View, build_topology

    os.environ["SCOPE_CACHE_DIR"] = str(store_directory())
    phases: dict[str, list[float]] = {"query": [], "scene": [], "map": [], "stacked JSON": []}

    def timed_phase(name: str, started: float) -> float:
        now = time.perf_counter()
        phases[name].append(now - started)
        return now

    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        for at_ns in moments:
            moment = resolve_moment(derived, str(at_ns), WINDOW)
            with gc_paused():  # as documents.topology runs them
                started = time.perf_counter()
                read_connections(derived, moment.at_ns, moment.window_ns, MAP_FIELDS)
                started = timed_phase("query", started)
                scene = build_scene(derived, moment)
                started = timed_phase("scene", started)
                found = build_topology(scene, View(VIEW), Options())
                started = timed_phase("map", started)
                compact_json(stacked_document(found))
                timed_phase("stacked JSON", started)
                del scene, found
    return "in-process medians: " + ", ".join(
        f"{name} {statistics.median(values):.3f} s" for name, values in phases.items()
    )


def measure(events: int, count: int, loads: int) -> str:
    db = ensure_log(events)
    with server(db) as url, httpx.Client(base_url=url, timeout=120) as client:
        span_s = timed(client, "/api/span", {})
        span = client.get("/api/span").json()
        rng = random.Random(50)
        low, high = span["start_ns"] + 20 * 10**9, span["end_ns"]
        moments = [rng.randrange(low, high) for _ in range(count)]
        topology, connections = [], []
        for at_ns in moments:
            topology.append(
                timed(
                    client,
                    f"/api/topology/{VIEW}",
                    {"timestamp": str(at_ns), "window": WINDOW, "stack": "true"},
                )
            )
            connections.append(
                timed(client, "/api/connections", {"at": str(at_ns), "window": WINDOW})
            )
            print(
                f"at {at_ns}: topology {topology[-1]:.3f} s, connections {connections[-1]:.3f} s",
                flush=True,
            )
        page = page_loads(url, [rng.randrange(low, high) for _ in range(loads)])
    print(breakdown(db, moments), flush=True)
    return (
        f"RESULT topology_p50_s={statistics.median(topology):.3f} "
        f"topology_p95_s={p95(topology):.3f} "
        f"connections_p50_s={statistics.median(connections):.3f} span_s={span_s:.3f} "
        f"page_load_s={statistics.median(page):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--moments", type=int, default=50)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    print(measure(args.events, args.moments, args.loads))


if __name__ == "__main__":
    main()
