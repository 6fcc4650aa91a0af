"""The ledger's prebuilt SQL statements (SQLAlchemy Core): claims, batch reads and compare-and-swap writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    bindparam,
    column,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)

from event_service.ledger.schema import ranges, transitions
from event_service.statuses import RangeStatus

S = RangeStatus

READY = literal_column("'ready'")  # a literal, so that the planner can use the partial index of ready ranges
ROW_COLUMNS = (
    ranges.c.id, ranges.c.range_id, ranges.c.status, ranges.c.attempt, ranges.c.queue_seq, ranges.c.worker,
    ranges.c.lease_expires, ranges.c.output_key, ranges.c.output_store, ranges.c.adler32, ranges.c.size,
    ranges.c.output_member, ranges.c.cpu_s, ranges.c.wall_s, ranges.c.error_code, ranges.c.error,
)
MUTABLE = ("status", "attempt", "queue_seq", "worker", "lease_expires", "output_key", "output_store", "adler32",
            "size", "output_member", "cpu_s", "wall_s", "error_code", "error")


def pg_record_set(param: str, name: str, columns: Sequence[tuple[str, Any]]) -> Any:
    """``json_to_recordset(:param) AS name(col type, …)``: many rows in one bound parameter."""
    return func.json_to_recordset(bindparam(param)).table_valued(
        *(column(col, type_) for col, type_ in columns)).render_derived(name=name, with_types=True)


TRANSITION_COLUMNS = ("task_id", "range_pk", "from_status", "to_status", "worker", "at", "attempt", "cpu_s",
                       "wall_s", "error_code", "error")
# A row is rewritten only if it is still as it was read (compare and swap); anything else is a conflict.
EXPECTED = (("pk", BigInteger()), ("old_status", String()), ("old_worker", String()), ("old_attempt", Integer()))


def _pg_bulk_write() -> Any:
    """New row states and their transitions in one PostgreSQL statement; returns the rows written."""
    new = pg_record_set("b_rows", "new", [*EXPECTED, *((n, ranges.c[n].type) for n in MUTABLE)])
    written = (update(ranges)
               .where(ranges.c.id == new.c.pk, ranges.c.status == new.c.old_status,
                      ranges.c.attempt == new.c.old_attempt, ranges.c.worker.is_not_distinct_from(new.c.old_worker))
               .values({**{n: new.c[n] for n in MUTABLE}, "updated_at": bindparam("b_now")})
               .returning(ranges.c.id).cte("written"))
    moves = pg_record_set("b_journal", "moves", [(n, transitions.c[n].type) for n in TRANSITION_COLUMNS])
    journal = insert(transitions).from_select(TRANSITION_COLUMNS, select(*moves.c)).cte("journal")
    return select(func.count()).select_from(written).add_cte(journal)


def _bulk_write() -> Any:
    return (update(ranges)
            .where(ranges.c.id == bindparam("pk"), ranges.c.status == bindparam("old_status"),
                   ranges.c.attempt == bindparam("old_attempt"),
                   ranges.c.worker.is_not_distinct_from(bindparam("old_worker")))
            .values({**{n: bindparam(n) for n in MUTABLE}, "updated_at": bindparam("b_now")}))


PG_BULK_WRITE = _pg_bulk_write()
BULK_WRITE = _bulk_write()
CLAIMED = (ranges.c.id, ranges.c.range_id, ranges.c.lfn, ranges.c.guid, ranges.c.url, ranges.c.first_event,
            ranges.c.last_event, ranges.c.attempt, ranges.c.queue_seq)


def _claim_statement() -> Any:
    """Hand out the next ready ranges in dispatch order after a position, skipping rows others hold."""
    pick = ranges.alias("pick")
    picked = (select(pick.c.id)
              .where(pick.c.task_id == bindparam("b_task"), pick.c.status == READY,
                     pick.c.queue_seq > bindparam("b_after"))
              .order_by(pick.c.queue_seq).limit(bindparam("b_n")).with_for_update(skip_locked=True))
    return (update(ranges).where(ranges.c.id.in_(picked))
            .values(status=S.SENT.value, worker=bindparam("b_worker"), lease_expires=bindparam("b_lease"),
                    attempt=ranges.c.attempt + 1, error_code=None, error=None, updated_at=bindparam("b_now"))
            .returning(*CLAIMED))


def _pg_claim_statement() -> Any:
    """The claim and its journal entries as one PostgreSQL statement (a data-modifying CTE)."""
    claimed = CLAIM.cte("claimed")
    journal = insert(transitions).from_select(
        ["task_id", "range_pk", "from_status", "to_status", "worker", "at", "attempt"],
        select(bindparam("b_task"), claimed.c.id, literal(S.READY.value), literal(S.SENT.value),
               bindparam("b_worker"), bindparam("b_now"), claimed.c.attempt)).cte("journal")
    return select(*claimed.c).add_cte(journal)


CLAIM = _claim_statement()
# The rows a batch of reports is about. Not locked: the write that follows checks they did not change.
READ_RANGES = (select(*ROW_COLUMNS)
                .where(ranges.c.task_id == bindparam("b_task"),
                       ranges.c.range_id.in_(bindparam("b_range_ids", expanding=True)))
                .order_by(ranges.c.id))
PG_CLAIM = _pg_claim_statement()
