"""The PostgreSQL URLs users paste reach the same server: postgres://, postgresql://, and the
psycopg 2 form of SQLAlchemy applications; another driver is refused by name."""

from __future__ import annotations

import pytest

from tests.cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2",
                                    "postgresql+psycopg"])  # fmt: skip
def test_each_form_reaches_the_server(pg_url: str, scheme: str) -> None:
    url = scheme + pg_url[pg_url.index("://") :]
    upgraded = run_cli("scope-replay", "db", "upgrade", "--db", url)
    assert upgraded.returncode == 0, upgraded.stderr
    current = run_cli("scope-replay", "db", "current", "--db", url)
    assert current.returncode == 0, current.stderr
    assert "(current;" in current.stdout, current.stdout


def test_another_driver_is_refused_by_name(pg_url: str) -> None:
    url = "postgresql+asyncpg" + pg_url[pg_url.index("://") :]
    result = run_cli("scope-replay", "db", "current", "--db", url)
    assert_one_line_error(result, 2, "unsupported PostgreSQL driver 'asyncpg'", "psycopg 3")
