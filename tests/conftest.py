"""Fixtures shared by all tests: log locations on both backends, a real PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog.location import LogLocation, resolve
from tests.capabilities import SKIP_PREFIX, in_ci, postgres_bindir, require
from tests.postgres import PostgresServer, postgres_server

_database_numbers = itertools.count(1)


def _server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    require(bindir is not None, "PostgreSQL server binaries (apt-get install postgresql)")
    assert bindir is not None
    with postgres_server(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    yield from _server()


@pytest.fixture
def own_pg_server() -> Iterator[PostgresServer]:
    """A server of the test's own, which it may stop and start under its recorders."""
    yield from _server()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the test server."""
    return pg_server.create_database(f"scope_test_{next(_database_numbers)}")


@pytest.fixture
def sqlite_location(tmp_path: Path) -> LogLocation:
    return resolve(str(tmp_path / "scope.db"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def log_location(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> LogLocation:
    """A location for a new log, on each backend in turn."""
    if backend == "sqlite":
        return resolve(str(tmp_path / "scope.db"))
    return resolve(request.getfixturevalue("pg_url"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """In CI, list capability skips loudly (the report check in .ci/run fails on them)."""
    if not in_ci():
        return
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r for r in skipped if SKIP_PREFIX in str(getattr(r, "longrepr", ""))]
    if missing:
        terminalreporter.write_line(f"CI: {len(missing)} tests skipped for missing capabilities")
