"""The event ledger's tables (SQLAlchemy Core), the same for PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Connection

SCHEMA_VERSION = "3"

metadata = MetaData()

# Times are Unix seconds (UTC) as double precision: exact enough, cheap to compare and to plot.
Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

ledger_meta = Table(
    "es_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tasks = Table(
    "es_tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("spec", Text, nullable=False, comment="normalized task spec as JSON"),
    Column("token_hash", String(64), nullable=False, comment="sha256 hex of the task token"),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_seconds", Integer, nullable=False),
    Column("n_ranges", Integer, nullable=False),
    Column("n_events", BigInteger, nullable=False),
    Column("next_seq", BigInteger, nullable=False, comment="next dispatch position for a returned range"),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

ranges = Table(
    "es_ranges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("es_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("range_id", String(256), nullable=False),
    Column("file_number", Integer, nullable=False),
    Column("lfn", String(255), nullable=False),
    Column("guid", String(36), nullable=False),
    Column("url", Text, nullable=False),
    Column("first_event", BigInteger, nullable=False),
    Column("last_event", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("queue_seq", BigInteger, nullable=False, comment="dispatch order; a returned range goes last"),
    Column("worker", String(128)),
    Column("lease_expires", Double),
    Column("output_key", String(1024)),
    Column("output_store", Text, comment="the store holding the output when not the task's own"),
    Column("output_member", String(255), comment="the range's file inside output_key when that is an archive"),
    Column("adler32", String(8)),
    Column("size", BigInteger),
    Column("cpu_s", Double),
    Column("wall_s", Double),
    Column("error_code", String(64)),
    Column("error", Text),
    Column("updated_at", Double, nullable=False),
    UniqueConstraint("task_id", "range_id", name="uq_es_ranges_task_range"),
    # The claim scans only ready ranges in dispatch order, from a remembered position.
    Index(
        "ix_es_ranges_ready",
        "task_id",
        "queue_seq",
        postgresql_where=text("status = 'ready'"),
        sqlite_where=text("status = 'ready'"),
    ),
    Index("ix_es_ranges_task_status", "task_id", "status"),
    Index("ix_es_ranges_task_worker", "task_id", "worker"),
)

# An append-only journal. No foreign keys: a per-row key check on every claim and report would cost more
# than the whole insert; only the ledger writes here, with ids it has just read under lock.
transitions = Table(
    "es_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, nullable=False),
    Column("range_pk", Id, nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("worker", String(128), comment="the worker that caused it; NULL for the ledger itself"),
    Column("at", Double, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("cpu_s", Double),
    Column("wall_s", Double),
    Column("error_code", String(64)),
    Column("error", Text),
    Index("ix_es_transitions_task_at", "task_id", "at"),
    Index("ix_es_transitions_range", "range_pk"),
)

workers = Table(
    "es_workers",
    metadata,
    Column("task_id", Id, ForeignKey("es_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("worker", String(128), primary_key=True),
    Column("host", String(255)),
    Column("first_seen", Double, nullable=False),
    Column("last_heartbeat", Double, nullable=False),
    Column("last_claim_id", String(64), comment="the id of the worker's last claim: a retried claim is replayed"),
    Column("last_claim_at", Double, comment="when that claim was made (the time of its ranges' sent transitions)"),
)

# The file catalog: merged files registered in normal storage, one row per file.
catalog = Table(
    "es_catalog",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("dataset", String(255), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("task_id", Id, ForeignKey("es_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("adler32", String(8), nullable=False),
    Column("location", Text, nullable=False, comment="URL of the file in normal storage"),
    Column("first_range", String(256), nullable=False),
    Column("last_range", String(256), nullable=False),
    Column("registered_at", Double, nullable=False),
    Column("certification", String(16), comment="certified or suspect against the task's reference; NULL: none"),
    Column("validation", Text, comment="URL of the file's validation histograms (JSON; the PNG lies beside it)"),
    UniqueConstraint("dataset", "file_name", name="uq_es_catalog_dataset_file"),
    Index("ix_es_catalog_task", "task_id"),
)


# PanDA consumer jobs: what a PanDA pilot got from getJob. Its PandaID is this table's key; in the ranges
# and transitions its worker is ``panda-<PandaID>``.
panda_jobs = Table(
    "es_panda_jobs",
    metadata,
    Column("panda_id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("es_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("queue", String(128), nullable=False),
    Column("node", String(255)),
    Column("prod_source_label", String(64)),
    Column("state", String(32), nullable=False),
    Column("n_events", BigInteger),
    Column("error_code", String(64)),
    Column("error", Text),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index("ix_es_panda_jobs_task", "task_id"),
)

# -- upgrades of an existing ledger --------------------------------------------------------------------
# Each step takes a database from the version named to the next; ``create_all`` has already added any new
# table, so a step only changes tables that existed before it.

def _add_output_member(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE es_ranges ADD COLUMN output_member VARCHAR(255)"))


def _add_certification_and_claim_ids(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE es_catalog ADD COLUMN certification VARCHAR(16)"))
    conn.execute(text("ALTER TABLE es_catalog ADD COLUMN validation TEXT"))
    conn.execute(text("ALTER TABLE es_workers ADD COLUMN last_claim_id VARCHAR(64)"))
    conn.execute(text("ALTER TABLE es_workers ADD COLUMN last_claim_at DOUBLE PRECISION"))


MIGRATIONS: dict[str, tuple[str, Callable[[Connection], None]]] = {
    "1": ("2", _add_output_member),
    "2": ("3", _add_certification_and_claim_ids),
}


def migrate(conn: Connection, version: str) -> None:
    """Upgrade the ledger in ``conn`` from ``version`` to SCHEMA_VERSION, one step at a time."""
    while version != SCHEMA_VERSION:
        target, step = MIGRATIONS[version]
        step(conn)
        conn.execute(ledger_meta.update().where(ledger_meta.c.key == "schema_version").values(value=target))
        version = target
