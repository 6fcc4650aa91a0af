"""After the workers: a task's outputs read back for verification and merge, verdicts on them (corrupted,
merged), one range's state, and the journal of transitions. Mixed into Ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, and_, select

from event_service.ledger.errors import RangeNotFoundError
from event_service.ledger.records import RangeOutput, TaskRecord
from event_service.ledger.rules import Decision, RangeRow, Step, fail_or_requeue
from event_service.ledger.schema import ranges, transitions
from event_service.ledger.statements import READ_RANGES, ROW_COLUMNS
from event_service.messages import OutputRef, RangeInfo
from event_service.statuses import WITH_OUTPUT, RangeStatus

T = TypeVar("T")
S = RangeStatus


def row_of(record: Any) -> RangeRow:
    # ROW_COLUMNS lists the columns in RangeRow's field order.
    return RangeRow(record[0], record[1], S(record[2]), *record[3:])


class _LedgerCore(Protocol):
    """What these methods use of the Ledger they are mixed into."""

    def task(self, name: str) -> TaskRecord: ...

    def now(self) -> float: ...

    def _transaction(self, work: Callable[[Connection], T]) -> T: ...

    def _apply(self, conn: Connection, record: TaskRecord, now: float,
               changes: Iterable[tuple[RangeRow, Decision]]) -> None: ...


def _verdict(ledger: _LedgerCore, name: str, range_ids: Sequence[str], by: str | None,
             rule: Callable[[RangeRow], Decision | None]) -> int:
    """Apply ``rule`` to each named range in one transaction; returns the ranges it changed."""
    record = ledger.task(name)
    now = ledger.now()

    def work(conn: Connection) -> int:
        rows = {r.range_id: r for r in map(row_of, conn.execute(
            READ_RANGES, {"b_task": record.id, "b_range_ids": list(range_ids)}).all())}
        missing = [r for r in range_ids if r not in rows]
        if missing:
            raise RangeNotFoundError(name, missing)
        changes = [(row, d) for row in rows.values() if (d := rule(row)) is not None]
        ledger._apply(conn, record, now, changes)
        return len(changes)

    return ledger._transaction(work)


class LedgerResults:
    """Reads and verdicts on finished work (see the module docstring)."""

    def ranges_with_status(self: _LedgerCore, name: str, status: RangeStatus,
                           limit: int | None = None) -> list[RangeRow]:
        """Ranges in one status, in range order (for reports: which are fatal, and why)."""
        record = self.task(name)
        query = (select(*ROW_COLUMNS).where(ranges.c.task_id == record.id, ranges.c.status == status.value)
                 .order_by(ranges.c.id).limit(limit))
        return self._transaction(lambda conn: [row_of(r) for r in conn.execute(query).all()])

    def finished_ranges(self: _LedgerCore, name: str) -> list[RangeRow]:
        """Every range that holds a verified-size output, in range order."""
        record = self.task(name)
        return self._transaction(lambda conn: [row_of(r) for r in conn.execute(
            select(*ROW_COLUMNS).where(ranges.c.task_id == record.id,
                                        ranges.c.status.in_([s.value for s in WITH_OUTPUT]))
            .order_by(ranges.c.id)).all()])

    def outputs(self: _LedgerCore, name: str) -> list[RangeOutput]:
        """Every range holding an output (finished or merged), in event order, with where its events sit."""
        record = self.task(name)
        query = (select(ranges.c.range_id, ranges.c.file_number, ranges.c.lfn, ranges.c.first_event,
                        ranges.c.last_event, ranges.c.status, ranges.c.attempt, ranges.c.output_key,
                        ranges.c.output_store, ranges.c.adler32, ranges.c.size, ranges.c.output_member)
                 .where(ranges.c.task_id == record.id, ranges.c.status.in_([s.value for s in WITH_OUTPUT]))
                 .order_by(ranges.c.file_number, ranges.c.first_event))
        return self._transaction(lambda conn: [
            RangeOutput(r.range_id, r.file_number, r.lfn, r.first_event, r.last_event, S(r.status), r.attempt,
                        r.output_key, r.output_store, r.adler32, r.size, r.output_member)
            for r in conn.execute(query).all()])

    def mark_corrupted(self: _LedgerCore, name: str, range_ids: Sequence[str], reason: str,
                       by: str | None = None) -> int:
        """Outputs that failed verification: recorded ``corrupted``, then re-dispatched (or fatal)."""
        return _verdict(self, name, range_ids, by, lambda row: fail_or_requeue(
            row, self.task(name).max_attempts, None, "corrupted", reason,
            Step(row.status, S.CORRUPTED, by)) if row.status == S.FINISHED else None)

    def mark_merged(self: _LedgerCore, name: str, range_ids: Sequence[str], by: str | None = None) -> int:
        """Finished ranges whose outputs are now in a registered merged file."""
        return _verdict(self, name, range_ids, by, lambda row: Decision(
            "accepted", replace(row, status=S.MERGED), (Step(S.FINISHED, S.MERGED, by),))
            if row.status == S.FINISHED else None)

    def range_info(self: _LedgerCore, name: str, range_id: str) -> RangeInfo:
        """One range's status, attempt, holder and output."""
        record = self.task(name)
        rows = self._transaction(lambda conn: conn.execute(
            READ_RANGES, {"b_task": record.id, "b_range_ids": [range_id]}).all())
        if not rows:
            raise RangeNotFoundError(name, [range_id])
        row = row_of(rows[0])
        output = None
        if row.output_key is not None and row.adler32 is not None and row.size is not None:
            output = OutputRef(key=row.output_key, adler32=row.adler32, size=row.size, store=row.output_store,
                               member=row.output_member)
        return RangeInfo(range_id=row.range_id, status=row.status, attempt=row.attempt, worker=row.worker,
                         output=output)

    def transitions(self: _LedgerCore, name: str, range_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded transitions of a task (or one range), oldest first."""
        record = self.task(name)
        query = (select(ranges.c.range_id, transitions.c.from_status, transitions.c.to_status,
                        transitions.c.worker, transitions.c.at, transitions.c.attempt, transitions.c.cpu_s,
                        transitions.c.wall_s, transitions.c.error_code, transitions.c.error)
                 .select_from(transitions.join(ranges, and_(ranges.c.id == transitions.c.range_pk)))
                 .where(transitions.c.task_id == record.id).order_by(transitions.c.id))
        if range_id is not None:
            query = query.where(ranges.c.range_id == range_id)
        return self._transaction(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
