"""The event ledger: tasks and their event ranges, atomic claims, leases, idempotent updates."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from event_service.ledger.engine import (
    MAX_OVERFLOW,
    POOL_SIZE,
    create_ledger_engine,
    is_retryable,
)
from event_service.ledger.errors import (
    LedgerSchemaError,
    LedgerUnavailableError,
    RangeNotFoundError,
    TaskExistsError,
    TaskNotFoundError,
    TokenRejectedError,
    _Conflict,
)
from event_service.ledger.outputs import LedgerResults, row_of
from event_service.ledger.records import TaskRecord, hash_token
from event_service.ledger.rules import (
    Decision,
    RangeRow,
    Step,
    WorkerHistory,
    decide,
    fail_or_requeue,
)
from event_service.ledger.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    catalog,
    ledger_meta,
    metadata,
    migrate,
    panda_jobs,
    ranges,
    tasks,
    transitions,
    workers,
)
from event_service.ledger.statements import (
    BULK_WRITE,
    CLAIM,
    CLAIMED,
    MUTABLE,
    PG_BULK_WRITE,
    PG_CLAIM,
    READ_RANGES,
    ROW_COLUMNS,
)
from event_service.messages import (
    ClaimedRange,
    ClaimReply,
    HeartbeatReply,
    RangeUpdate,
    TaskStatus,
    UpdateResult,
)
from event_service.spec import TaskSpec
from event_service.statuses import IN_FLIGHT, OPEN, WITH_OUTPUT, RangeStatus, TaskState, task_state
from event_service.urls import same_store

log = logging.getLogger(__name__)
T = TypeVar("T")
S = RangeStatus

RETRIES = 4
EXPIRY_INTERVAL_S = 1.0  # how often one process looks for lapsed leases of a task
FULL_SCAN_INTERVAL_S = 0.5  # how often a claim also looks behind its remembered dispatch position
WORKER_SEEN_INTERVAL_S = 5.0  # how often a claim refreshes its worker's last-seen time
CREATE_CHUNK = 5000


class Ledger(LedgerResults):
    """One ledger database (PostgreSQL or SQLite) holding any number of tasks."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> None:
        self.url = url
        self.engine: Engine = create_ledger_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self.dialect = self.engine.dialect.name
        self._records: dict[str, TaskRecord] = {}
        self._hints: dict[int, int] = {}
        self._last_full_scan: dict[int, float] = {}
        self._last_expiry: dict[int, float] = {}
        self._seen: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()
        self._ensure_schema()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------------

    def now(self) -> float:
        """The ledger's clock (Unix seconds)."""
        return time.time()

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction, retrying on lost connections, deadlocks and busy databases."""
        for attempt in range(1, RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except _Conflict as exc:
                if attempt == RETRIES:
                    raise LedgerUnavailableError(f"ledger rows kept changing under a write: {exc}") from None
                continue
            except DBAPIError as exc:
                if isinstance(exc, IntegrityError) or not is_retryable(exc):
                    raise
                if attempt == RETRIES:
                    raise LedgerUnavailableError(
                        f"the ledger at {self.engine.url.render_as_string(hide_password=True)} kept failing "
                        f"after {RETRIES} attempts: {exc.orig}") from exc
                log.warning("ledger transaction failed (%s); retrying", exc.orig)
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one ledger transaction (with the ledger's retries), for tables kept beside it."""
        return self._transaction(work)

    def _ensure_schema(self) -> None:
        def work(conn: Connection) -> None:
            if self.dialect == "postgresql":
                # Serialize schema creation between API processes that start at the same moment.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243095211)")
            metadata.create_all(conn)
            version = conn.execute(select(ledger_meta.c.value).where(ledger_meta.c.key == "schema_version")).scalar()
            if version is None:
                conn.execute(insert(ledger_meta).values(key="schema_version", value=SCHEMA_VERSION))
            elif version in MIGRATIONS:
                migrate(conn, version)
            elif version != SCHEMA_VERSION:
                raise LedgerSchemaError(
                    f"the ledger database holds schema version {version}; this package uses {SCHEMA_VERSION}")

        try:
            self._transaction(work)
        except DBAPIError as exc:
            raise LedgerUnavailableError(
                f"cannot open the ledger at {self.engine.url.render_as_string(hide_password=True)}: {exc.orig}"
            ) from exc

    def _worker_seen(self, record: TaskRecord, worker: str, now: float) -> bool:
        """True when the worker's last-seen time is due for a write (claims come too often to write each)."""
        key = (record.id, worker)
        if now - self._seen.get(key, 0.0) < min(WORKER_SEEN_INTERVAL_S, record.lease_seconds / 4):
            return False
        self._seen[key] = now
        return True

    def _upsert_worker(self, conn: Connection, task_id: int, worker: str, host: str | None, now: float,
                       claim: tuple[str, float] | None = None) -> tuple[str | None, float | None] | None:
        """Record the worker as seen (and its claim); returns its last claim id and time as they were committed
        (the row stays locked until the transaction ends)."""
        dialect_insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        claimed = {"last_claim_id": claim[0], "last_claim_at": claim[1]} if claim else {}
        stmt = dialect_insert(workers).values(task_id=task_id, worker=worker, host=host, first_seen=now,
                                              last_heartbeat=now, **claimed)
        changes: dict[str, Any] = {"last_heartbeat": now, **claimed}
        if host is not None:
            changes["host"] = host
        row = conn.execute(stmt.on_conflict_do_update(index_elements=["task_id", "worker"], set_=changes)
                           .returning(workers.c.last_claim_id, workers.c.last_claim_at)).first()
        return None if row is None else (row.last_claim_id, row.last_claim_at)

    # -- tasks ----------------------------------------------------------------------------------------

    def create_task(self, spec: TaskSpec) -> tuple[TaskRecord, str]:
        """Create a task and all its ranges in one transaction; returns the record and the task token."""
        token = "est_" + secrets.token_urlsafe(32)  # never starts with "-", which a command line would misread
        now = time.time()
        n_ranges = spec.total_ranges

        def work(conn: Connection) -> TaskRecord:
            try:
                task_id = conn.execute(insert(tasks).values(
                    name=spec.name, state=TaskState.RUNNING.value, spec=spec.to_json(),
                    token_hash=hash_token(token), max_attempts=spec.max_attempts,
                    lease_seconds=spec.lease_seconds, n_ranges=n_ranges, n_events=spec.total_events,
                    next_seq=n_ranges + 1, created_at=now, updated_at=now,
                ).returning(tasks.c.id)).scalar_one()
            except IntegrityError:
                raise TaskExistsError(spec.name) from None
            batch: list[dict[str, Any]] = []
            for seq, plan in enumerate(spec.event_ranges(), start=1):
                batch.append({
                    "task_id": task_id, "range_id": plan.range_id, "file_number": plan.file_number,
                    "lfn": plan.lfn, "guid": plan.guid, "url": plan.url, "first_event": plan.first_event,
                    "last_event": plan.last_event, "status": S.READY.value, "attempt": 0, "queue_seq": seq,
                    "updated_at": now,
                })
                if len(batch) == CREATE_CHUNK:
                    conn.execute(insert(ranges), batch)
                    batch = []
            if batch:
                conn.execute(insert(ranges), batch)
            return TaskRecord(task_id, spec.name, hash_token(token), spec.max_attempts, spec.lease_seconds,
                              n_ranges, spec.total_events, now, spec.max_fatal_ranges)

        record = self._transaction(work)
        if self.dialect == "postgresql":
            # Fresh statistics, so that the planner looks ranges up by id rather than scanning the task.
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE es_ranges")
        with self._lock:
            self._records[spec.name] = record
        log.info("created task %s with %d event ranges", spec.name, n_ranges)
        return record, token

    def task(self, name: str) -> TaskRecord:
        """The task's fixed facts (cached: they never change)."""
        record = self._records.get(name)
        if record is not None:
            return record
        row = self._transaction(lambda conn: conn.execute(select(tasks).where(tasks.c.name == name)).first())
        if row is None:
            raise TaskNotFoundError(name)
        record = TaskRecord(row.id, row.name, row.token_hash, row.max_attempts, row.lease_seconds, row.n_ranges,
                            row.n_events, row.created_at, int(json.loads(row.spec).get("max_fatal_ranges", 0)))
        with self._lock:
            self._records[name] = record
        return record

    def task_spec(self, name: str) -> TaskSpec:
        """The task's normalized spec as stored at creation."""
        record = self.task(name)
        text = self._transaction(
            lambda conn: conn.execute(select(tasks.c.spec).where(tasks.c.id == record.id)).scalar_one())
        return TaskSpec.parse(json.loads(text), f"stored spec of task {name!r}")

    def task_names(self) -> list[str]:
        return list(self._transaction(
            lambda conn: conn.execute(select(tasks.c.name).order_by(tasks.c.id)).scalars().all()))

    def authorize(self, name: str, token: str) -> TaskRecord:
        """The record of task ``name`` when ``token`` is its token and the task is not cancelled: cancelling a
        task revokes its token. Raises TokenRejectedError saying which; an unknown task is a wrong token too,
        so that a token does not tell which other tasks exist."""
        try:
            record = self.task(name)
        except TaskNotFoundError:
            raise TokenRejectedError(name, revoked=False) from None
        # The state is read before the token is compared: an unknown name costs a database query (its lookup),
        # and so does a wrong token for a known task, whose record is cached; the answer's timing does not tell
        # which tasks exist.
        state = self._transaction(
            lambda conn: conn.execute(select(tasks.c.state).where(tasks.c.id == record.id)).scalar_one())
        if not hmac.compare_digest(record.token_hash, hash_token(token)):
            raise TokenRejectedError(name, revoked=False)
        if state == TaskState.CANCELLED:
            raise TokenRejectedError(name, revoked=True)
        return record

    def status(self, name: str) -> TaskStatus:
        """Ranges per status, events done and total, live workers, and the task's state."""
        record = self.task(name)
        now = time.time()
        self._maybe_expire(record, now)

        def work(conn: Connection) -> TaskStatus:
            state = conn.execute(select(tasks.c.state).where(tasks.c.id == record.id)).scalar_one()
            events = (ranges.c.last_event - ranges.c.first_event + 1)
            rows = conn.execute(
                select(ranges.c.status, func.count(), func.sum(events))
                .where(ranges.c.task_id == record.id).group_by(ranges.c.status)).all()
            counts = {status: 0 for status in S}
            done = 0
            for status, count, n_events in rows:
                counts[S(status)] = count
                if status in WITH_OUTPUT:
                    done += int(n_events or 0)
            live = conn.execute(select(func.count()).select_from(workers).where(
                workers.c.task_id == record.id,
                workers.c.last_heartbeat >= now - record.lease_seconds)).scalar_one()
            cancelled = state == TaskState.CANCELLED
            return TaskStatus(task=name, state=task_state(cancelled, counts, record.max_fatal_ranges),
                              ranges=record.n_ranges, counts=counts, events_total=record.n_events, events_done=done,
                              live_workers=live, created_at=record.created_at)

        return self._transaction(work)

    def cancel(self, name: str, by: str | None = None) -> int:
        """Cancel a task: its open ranges become cancelled; finished outputs stay. Returns ranges cancelled."""
        record = self.task(name)
        now = time.time()

        def work(conn: Connection) -> int:
            conn.execute(update(tasks).where(tasks.c.id == record.id)
                         .values(state=TaskState.CANCELLED.value, updated_at=now))
            rows = [row_of(r) for r in conn.execute(
                select(*ROW_COLUMNS).where(ranges.c.task_id == record.id,
                                            ranges.c.status.in_([s.value for s in OPEN]))
                .order_by(ranges.c.id).with_for_update()).all()]
            self._apply(conn, record, now, [
                (row, Decision("accepted", replace(row, status=S.CANCELLED, worker=None, lease_expires=None),
                               (Step(row.status, S.CANCELLED, by),))) for row in rows])
            return len(rows)

        count = self._transaction(work)
        log.info("cancelled task %s: %d open ranges cancelled", name, count)
        return count

    # -- claims ---------------------------------------------------------------------------------------

    def _claim_rows(self, conn: Connection, record: TaskRecord, worker: str, n: int, now: float,
                    after_seq: int) -> list[Any]:
        params = {"b_task": record.id, "b_after": after_seq, "b_n": n, "b_worker": worker,
                  "b_lease": now + record.lease_seconds, "b_now": now}
        if self.dialect == "postgresql":
            return list(conn.execute(PG_CLAIM, params).all())  # claim and journal in one statement
        rows = list(conn.execute(CLAIM, params).all())
        self._journal(conn, [{"task_id": record.id, "range_pk": r.id, "from_status": S.READY.value,
                              "to_status": S.SENT.value, "worker": worker, "at": now, "attempt": r.attempt}
                             for r in rows])
        return rows

    def claim(self, name: str, worker: str, n: int = 1, host: str | None = None,
              claim_id: str | None = None) -> ClaimReply:
        """Atomically hand up to ``n`` ready ranges to ``worker`` under a lease; never one range to two.

        With ``claim_id``, a claim that repeats the worker's last claim id is a retry whose reply was lost: it
        gets the ranges that claim handed out which the worker still holds, and nothing new."""
        record = self.task(name)
        now = time.time()
        self._maybe_expire(record, now)
        hint = self._hints.get(record.id, 0)
        full_scan = hint > 0 and now - self._last_full_scan.get(record.id, 0.0) >= FULL_SCAN_INTERVAL_S

        def work(conn: Connection) -> tuple[list[Any], TaskState]:
            if claim_id is not None:
                # Lock the worker's row first: a retry arriving while the first try still runs waits for it,
                # then sees its claim id and answers with its ranges.
                last = self._upsert_worker(conn, record.id, worker, host, now)
                if last is not None and last[0] == claim_id:
                    replayed = self._replayed_claim(conn, record, worker, claim_id, last[1])
                    return replayed, TaskState.RUNNING if replayed else self._state(conn, record)
            rows = self._claim_rows(conn, record, worker, n, now, hint)
            if len(rows) < n and full_scan:
                # Ranges behind the remembered position are rare (a claim rolled back); look now and then.
                rows += self._claim_rows(conn, record, worker, n - len(rows), now, 0)
            if claim_id is not None:
                self._upsert_worker(conn, record.id, worker, host, now, claim=(claim_id, now))
            elif self._worker_seen(record, worker, now):
                self._upsert_worker(conn, record.id, worker, host, now)
            state = TaskState.RUNNING if rows else self._state(conn, record)
            return rows, state

        rows, state = self._transaction(work)
        if full_scan and len(rows) < n:
            self._last_full_scan[record.id] = now
        if rows:
            top = max(r.queue_seq for r in rows)
            with self._lock:
                self._hints[record.id] = max(self._hints.get(record.id, 0), top)
        rows.sort(key=lambda r: r.queue_seq)
        return ClaimReply(
            lease_seconds=record.lease_seconds, state=state,
            ranges=[ClaimedRange.model_construct(range_id=r.range_id, lfn=r.lfn, guid=r.guid, url=r.url,
                                                 first_event=r.first_event, last_event=r.last_event,
                                                 attempt=r.attempt) for r in rows])

    def _replayed_claim(self, conn: Connection, record: TaskRecord, worker: str, claim_id: str,
                        claimed_at: float) -> list[Any]:
        """The ranges the worker's claim ``claim_id``, made at ``claimed_at``, handed out and it still holds."""
        sent = (select(transitions.c.range_pk, transitions.c.attempt)
                .where(transitions.c.task_id == record.id, transitions.c.worker == worker,
                       transitions.c.to_status == S.SENT.value, transitions.c.at == claimed_at)
                .subquery())
        log.info("task %s: worker %s repeated claim %s; answering with its ranges again", record.name, worker,
                 claim_id)
        return list(conn.execute(
            select(*CLAIMED).join(sent, (sent.c.range_pk == ranges.c.id) & (sent.c.attempt == ranges.c.attempt))
            .where(ranges.c.task_id == record.id, ranges.c.worker == worker,
                   ranges.c.status.in_([s.value for s in IN_FLIGHT]))).all())

    def _state(self, conn: Connection, record: TaskRecord) -> TaskState:
        if conn.execute(select(tasks.c.state).where(tasks.c.id == record.id)).scalar_one() == TaskState.CANCELLED:
            return TaskState.CANCELLED
        still_open = conn.execute(select(ranges.c.id).where(
            ranges.c.task_id == record.id, ranges.c.status.in_([s.value for s in OPEN])).limit(1)).first()
        if still_open:
            return TaskState.RUNNING
        fatal = conn.execute(select(func.count()).select_from(ranges).where(
            ranges.c.task_id == record.id, ranges.c.status == S.FATAL.value)).scalar_one()
        return TaskState.INCOMPLETE if fatal > record.max_fatal_ranges else TaskState.DONE

    # -- leases ---------------------------------------------------------------------------------------

    def heartbeat(self, name: str, worker: str, host: str | None = None,
                  restarted: bool = False) -> HeartbeatReply:
        """Renew every lease ``worker`` holds in the task; says ``stop`` when the task was cancelled.

        ``restarted``: the worker lost its state (a runner started again under the same id); what it held
        goes back to ready like a lapsed lease, instead of being kept alive by its new heartbeats.
        """
        record = self.task(name)
        now = time.time()
        released = 0

        def work(conn: Connection) -> tuple[int, str]:
            nonlocal released
            if restarted:
                rows = [row_of(r) for r in conn.execute(
                    select(*ROW_COLUMNS).where(ranges.c.task_id == record.id, ranges.c.worker == worker,
                                                ranges.c.status.in_([s.value for s in IN_FLIGHT]))
                    .order_by(ranges.c.id)).all()]
                self._apply(conn, record, now, [(row, fail_or_requeue(
                    row, record.max_attempts, None, "worker_restarted",
                    f"worker {worker!r} restarted and no longer holds the range", None)) for row in rows])
                released = len(rows)
            renewed = conn.execute(
                update(ranges).where(ranges.c.task_id == record.id, ranges.c.worker == worker,
                                     ranges.c.status.in_([s.value for s in IN_FLIGHT]))
                .values(lease_expires=now + record.lease_seconds)).rowcount
            self._upsert_worker(conn, record.id, worker, host, now)
            state = conn.execute(select(tasks.c.state).where(tasks.c.id == record.id)).scalar_one()
            return renewed, state

        renewed, state = self._transaction(work)
        cancelled = state == TaskState.CANCELLED
        return HeartbeatReply(renewed=renewed, released=released, lease_seconds=record.lease_seconds,
                              state=TaskState.CANCELLED if cancelled else TaskState.RUNNING,
                              command="stop" if cancelled else None)

    def _maybe_expire(self, record: TaskRecord, now: float) -> None:
        if now - self._last_expiry.get(record.id, 0.0) >= EXPIRY_INTERVAL_S:
            self._last_expiry[record.id] = now
            self.expire_leases(record.name, now=now)

    def expire_leases(self, name: str, now: float | None = None) -> int:
        """Return the ranges of lapsed leases to ready (the attempt counts), or end them fatal."""
        record = self.task(name)
        now = time.time() if now is None else now

        def work(conn: Connection) -> int:
            rows = [row_of(r) for r in conn.execute(
                select(*ROW_COLUMNS).where(ranges.c.task_id == record.id,
                                            ranges.c.status.in_([s.value for s in IN_FLIGHT]),
                                            ranges.c.lease_expires < now)
                .order_by(ranges.c.id).with_for_update(skip_locked=True)).all()]
            self._apply(conn, record, now, [(row, fail_or_requeue(
                row, record.max_attempts, None, "lease_expired", f"the lease of worker {row.worker!r} expired", None))
                for row in rows])
            return len(rows)

        count = self._transaction(work)
        if count:
            log.info("task %s: %d leases expired", name, count)
        return count

    # -- updates --------------------------------------------------------------------------------------

    def update(self, name: str, worker: str, items: Sequence[RangeUpdate], *,
               own_keys: bool = True) -> list[UpdateResult]:
        """Apply a batch of worker reports; each item is accepted, a harmless duplicate, or rejected.

        With ``own_keys`` (workers choose their keys), an output must lie under ``<task>/`` in the task's store
        or its failover store; callers that build the keys themselves (the PanDA routes) pass False."""
        record = self.task(name)
        now = time.time()
        wanted = [item.range_id for item in items]
        if own_keys:
            items, misplaced = self._placed_outputs(name, items)
        else:
            misplaced = {}

        def work(conn: Connection) -> list[Decision]:
            rows = {r.range_id: r for r in map(row_of, conn.execute(
                READ_RANGES, {"b_task": record.id, "b_range_ids": wanted}).all())}
            missing = [range_id for range_id in wanted if range_id not in rows]
            if missing:
                raise RangeNotFoundError(name, missing)
            history = self._history(conn, record, worker, [
                rows[item.range_id].pk for item in items
                if rows[item.range_id].worker != worker or rows[item.range_id].status not in IN_FLIGHT
                or item.attempt not in (None, rows[item.range_id].attempt)])
            decisions = [Decision("rejected", rows[item.range_id], reason=misplaced[item.range_id])
                         if item.range_id in misplaced else
                         decide(rows[item.range_id], item, worker, max_attempts=record.max_attempts,
                                lease_seconds=record.lease_seconds, now=now,
                                history=history.get(rows[item.range_id].pk, WorkerHistory()))
                         for item in items]
            self._apply(conn, record, now, [(rows[item.range_id], d) for item, d in zip(items, decisions, strict=True)])
            return decisions

        decisions = self._transaction(work)
        # Built from values the ledger has just checked: no second validation.
        return [UpdateResult.model_construct(range_id=d.row.range_id, result=d.verdict, status=d.row.status,
                                             reason=d.reason) for d in decisions]

    def _placed_outputs(self, name: str, items: Sequence[RangeUpdate]) -> tuple[list[RangeUpdate], dict[str, str]]:
        """The reports with each failover output's store named as the spec names it, and the reports whose output
        lies outside the task's prefix or stores, with the reason for each."""
        prefix = f"{name}/"
        found = {item.range_id: f"output key {item.output.key!r} lies outside the task's prefix {prefix!r}"
                 for item in items if item.output is not None and not item.output.key.startswith(prefix)}
        if not any(item.output is not None and item.output.store is not None for item in items):
            return list(items), found
        failover = self.task_spec(name).object_store.failover
        placed = []
        for item in items:
            out = item.output
            if out is not None and out.store is not None:
                if failover is not None and same_store(out.store, failover.url):
                    # Stores name themselves in a normal form (no trailing '/', no 'localhost'): keep the spec's.
                    item = item.model_copy(update={"output": out.model_copy(update={"store": failover.url})})
                else:
                    found.setdefault(item.range_id, (
                        f"output store {out.store!r} is not a store of task {name!r} (its failover: "
                        f"{failover.url if failover else 'none'})"))
            placed.append(item)
        return placed, found

    def _history(self, conn: Connection, record: TaskRecord, worker: str,
                 pks: list[int]) -> dict[int, WorkerHistory]:
        if not pks:
            return {}
        found: dict[int, WorkerHistory] = {}
        for pk, to_status in conn.execute(
                select(transitions.c.range_pk, transitions.c.to_status)
                .where(transitions.c.task_id == record.id, transitions.c.worker == worker,
                       transitions.c.range_pk.in_(pks)).order_by(transitions.c.id)).all():
            seen = found.get(pk, WorkerHistory())
            found[pk] = WorkerHistory(ever_held=seen.ever_held or to_status == S.SENT, last_status=S(to_status))
        return found

    def _apply(self, conn: Connection, record: TaskRecord, now: float,
               changes: Iterable[tuple[RangeRow, Decision]]) -> None:
        """Write accepted decisions and their transitions; a row changed since it was read is a conflict."""
        accepted = [(old, d) for old, d in changes if d.verdict == "accepted"]
        if not accepted:
            return
        requeued = sum(d.requeue for _, d in accepted)
        if requeued:
            top = conn.execute(update(tasks).where(tasks.c.id == record.id)
                               .values(next_seq=tasks.c.next_seq + requeued, updated_at=now)
                               .returning(tasks.c.next_seq)).scalar_one()
            seqs = iter(range(top - requeued, top))
            accepted = [(old, replace(d, row=replace(d.row, queue_seq=next(seqs))) if d.requeue else d)
                        for old, d in accepted]
        rows = [{"pk": old.pk, "old_status": old.status.value, "old_worker": old.worker, "old_attempt": old.attempt,
                 **{name: getattr(d.row, name) for name in MUTABLE}} for old, d in accepted]
        moves = [{"task_id": record.id, "range_pk": d.row.pk, "from_status": step.from_status.value,
                  "to_status": step.to_status.value, "worker": step.worker, "at": now, "attempt": d.row.attempt,
                  "cpu_s": d.row.cpu_s if step.with_metrics else None,
                  "wall_s": d.row.wall_s if step.with_metrics else None,
                  "error_code": d.row.error_code if step.to_status not in WITH_OUTPUT else None,
                  "error": d.row.error if step.to_status not in WITH_OUTPUT else None}
                 for _, d in accepted for step in d.steps]
        if self.dialect == "postgresql":
            written = conn.execute(PG_BULK_WRITE, {"b_rows": json.dumps(rows), "b_journal": json.dumps(moves),
                                                    "b_now": now}).scalar_one()
        else:
            written = conn.execute(BULK_WRITE.values(), [{**row, "b_now": now} for row in rows]).rowcount
            self._journal(conn, moves)
        if written != len(rows):
            raise _Conflict(f"task {record.name!r}: {len(rows) - written} of {len(rows)} ranges changed meanwhile")

    def _journal(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(transitions), rows)

    def delete_task(self, name: str) -> None:
        """Remove a task and everything the ledger holds about it (pre-production tests clean up this way)."""
        record = self.task(name)

        def work(conn: Connection) -> None:
            for table in (transitions, workers, catalog, panda_jobs, ranges):
                conn.execute(table.delete().where(table.c.task_id == record.id))
            conn.execute(tasks.delete().where(tasks.c.id == record.id))

        self._transaction(work)
        with self._lock:
            self._records.pop(name, None)
            self._hints.pop(record.id, None)
        log.info("deleted task %s from the ledger", name)
