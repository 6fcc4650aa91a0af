"""Shared pytest fixtures: a PostgreSQL server with a fresh schema per test, and SQLite ledger URLs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg

PG_FIXTURES = frozenset({"pg_server", "pg_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that (directly or through other fixtures) needs PostgreSQL with ``postgres``."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Base SQLAlchemy URL of the session's PostgreSQL server (a running one, or a throw-away cluster)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(pg.server())
        except pg.PgUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """SQLAlchemy URL whose connections use a fresh schema ``t_<hex>`` (search_path); dropped after the test."""
    with pg.fresh_schema(pg_server) as schema:
        yield schema.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a not-yet-existing SQLite ledger file in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
