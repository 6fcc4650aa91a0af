"""Database engines for the ledger: PostgreSQL through psycopg2, or SQLite as the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool

from event_service.ledger.errors import LedgerURLError

SQLITE_BUSY_TIMEOUT_S = 30.0


# A fixed pool: connections beyond the pool ("overflow") are closed when handed back, and under load the API
# then opened thousands of PostgreSQL backends a minute; 20 kept connections, no overflow, served 1.5x the
# calls/s at half the latency (benchmarks/loadtest.py, 2026-11-22). Threads beyond 20 wait for a connection.
POOL_SIZE = 20
MAX_OVERFLOW = 0


def create_ledger_engine(url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> Engine:
    """An engine for ``postgresql://…`` or ``sqlite:///path`` with the settings the ledger relies on."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerURLError(f"{url!r} is not a database URL (postgresql://… or sqlite:///path)") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername not in ("postgresql", "postgresql+psycopg2"):
            raise LedgerURLError(f"{url!r}: the ledger talks to PostgreSQL through psycopg2 (postgresql://…)")
        return create_engine(
            parsed.set(drivername="postgresql+psycopg2"),
            # Batch UPDATE executemany into pages: one round trip per 100 rows, not one per row.
            executemany_mode="values_plus_batch",
            executemany_batch_page_size=500,
            insertmanyvalues_page_size=1000,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_recycle=3600,
        )
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    raise LedgerURLError(f"{url!r}: the ledger supports postgresql:// and sqlite:/// databases, not {backend!r}")


def _sqlite_engine(parsed: Any) -> Engine:
    database = parsed.database
    memory = database in (None, "", ":memory:")
    if not memory:
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise LedgerURLError(f"the SQLite ledger's folder {parent} does not exist")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, so that each one can be BEGIN IMMEDIATE:
        # the write lock is taken up front and concurrent claims serialize instead of deadlocking.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# What drivers say when the database is down, restarting or out of reach (psycopg2 gives these no SQLSTATE).
OUTAGE_MESSAGES = ("database is locked", "server closed the connection", "connection refused",
                   "could not connect", "connection to server", "terminating connection", "the database system is",
                   "no connection to the server", "ssl connection has been closed", "connection already closed",
                   "could not receive data", "could not send data", "unable to open database file")


def is_retryable(exc: DBAPIError) -> bool:
    """True for errors a fresh transaction can cure: lost connections, deadlocks, serialization, busy."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code in ("40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006"):
        return True
    message = str(exc.orig).lower()
    return any(sign in message for sign in OUTAGE_MESSAGES)
