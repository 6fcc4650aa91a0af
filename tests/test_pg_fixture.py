"""The PostgreSQL fixtures give each test a schema of its own, and clean it up even if connections leak."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import pg


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


def _schema_exists(server_url: str, name: str) -> bool:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :name")
            return bool(conn.execute(query, {"name": name}).scalar_one())
    finally:
        engine.dispose()


def test_tables_land_in_the_test_schema_and_are_invisible_elsewhere(pg_server: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe (id int)"))
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
        located = conn.execute(
            sa.text("SELECT table_schema FROM information_schema.tables WHERE table_name = 'probe'")
        ).scalars()
        assert schema.startswith("t_")
        assert list(located) == [schema]

    with pg.fresh_schema(pg_server) as other:
        other_engine = sa.create_engine(other.url)
        try:
            assert not sa.inspect(other_engine).has_table("probe")
            with other_engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="does not exist"):
                conn.execute(sa.text("SELECT * FROM probe"))
        finally:
            other_engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_starts_empty(engine: sa.Engine, run: int) -> None:
    assert sa.inspect(engine).get_table_names() == []
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE same_name_every_time (run int)"))
        conn.execute(sa.text("INSERT INTO same_name_every_time VALUES (:run)"), {"run": run})


def test_schema_is_dropped_despite_a_leaked_transaction(pg_server: str) -> None:
    with pg.fresh_schema(pg_server) as schema:
        engine = sa.create_engine(schema.url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE held (id int)"))
        leaked = engine.connect()
        leaked.execute(sa.text("SELECT * FROM held"))  # idle in transaction, holding a lock on `held`
    assert not _schema_exists(pg_server, schema.name)
    leaked.invalidate()
    engine.dispose()


def test_lock_holders_outside_the_schema_url_are_terminated_too(pg_server: str) -> None:
    # A connection that did not come through schema.url (other application_name) but locks one of its tables.
    began = time.monotonic()
    with pg.fresh_schema(pg_server, lock_timeout_ms=300) as schema:
        setup = sa.create_engine(schema.url)
        with setup.begin() as conn:
            conn.execute(sa.text("CREATE TABLE held (id int)"))
        setup.dispose()
        stranger = sa.create_engine(pg_server)
        leaked = stranger.connect()
        leaked.execute(sa.text(f'LOCK TABLE "{schema.name}".held IN ACCESS SHARE MODE'))
    assert not _schema_exists(pg_server, schema.name)
    assert time.monotonic() - began < 30
    leaked.invalidate()
    stranger.dispose()


def test_sqlite_url_points_into_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
    finally:
        engine.dispose()
    assert (tmp_path / "ledger.sqlite").is_file()


def test_postgres_marker_is_added(request: pytest.FixtureRequest, pg_url: str) -> None:
    assert request.node.get_closest_marker("postgres") is not None


def test_missing_binaries_give_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version dir without initdb/pg_ctl
    monkeypatch.setattr(pg, "PG_LIB_DIR", tmp_path)
    monkeypatch.setenv(pg.ENV_MODE, "throwaway")
    with pytest.raises(pg.PgUnavailable, match="install Debian's `postgresql` package"), pg.server():
        pass
