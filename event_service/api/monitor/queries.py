"""Read-only queries over the ledger's ranges, transitions, workers and catalog for the monitoring views."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    case,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from event_service.api.monitor.models import (
    AttemptCount,
    CpuEfficiency,
    Durations,
    FailureCount,
    HistogramBin,
    MergedOutput,
    RateBin,
    TaskDetail,
    TaskList,
    TaskSummary,
    WorkerView,
)
from event_service.ledger import Ledger, TaskRecord
from event_service.ledger.schema import ranges, tasks, transitions, workers
from event_service.merge.register import catalog_entries
from event_service.statuses import (
    FINAL,
    IN_FLIGHT,
    WITH_OUTPUT,
    RangeStatus,
    TaskState,
)
from event_service.statuses import task_state as task_state_of

S = RangeStatus
DEFAULT_WINDOW_S = 300.0
DEFAULT_DURATION_BINS = 20
MAX_RATE_BINS = 2000
NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
TARGET_RATE_BINS = 120
EFFICIENCY_STEP = 0.1
EFFICIENCY_BINS = 10  # [0, 0.1) … [0.9, 1.0), then one bin for 1.0 and above (several threads per range)

EVENTS = ranges.c.last_event - ranges.c.first_event + 1
_OUTPUT = [s.value for s in WITH_OUTPUT]
_NOT_FINAL = [s.value for s in S if s not in FINAL]


def dag_id(task: str) -> str:
    """The Airflow DAG of a task (see the DAG factory)."""
    return f"es_{task}"


def redact_url(url: str) -> str:
    """A URL without user name, password or query (a catalog location is shown, its credentials never)."""
    parts = urlsplit(url)
    if not parts.netloc or ("@" not in parts.netloc and not parts.query):
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", parts.fragment))


def _floor(conn: Connection, expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """floor() of a non-negative number as an integer (SQLite's CAST truncates, PostgreSQL's rounds)."""
    if conn.dialect.name == "postgresql":
        return cast(func.floor(expr), BigInteger)
    return cast(expr, BigInteger)


def _failure(t: Any) -> ColumnElement[bool]:
    """A transition that records a lost attempt: a failed or fatal report, a corrupted output, or the ledger
    taking a range back from its holder (lapsed lease, restarted worker). The steps that follow a recorded
    failure (failed → ready or fatal) are not counted again."""
    return and_(t.c.from_status != S.FAILED.value, or_(
        t.c.to_status.in_([S.FAILED.value, S.FATAL.value, S.CORRUPTED.value]),
        and_(t.c.to_status == S.READY.value, t.c.from_status.in_([s.value for s in IN_FLIGHT]),
             t.c.worker.is_(None))))


# -- the task list ------------------------------------------------------------------------------------------

def _summaries(conn: Connection, records: Sequence[tuple[TaskRecord, str]], now: float,
               window_s: float) -> list[TaskSummary]:
    ids = [record.id for record, _ in records]
    if not ids:
        return []
    counts: dict[int, dict[S, int]] = {i: {s: 0 for s in S} for i in ids}
    done: dict[int, int] = dict.fromkeys(ids, 0)
    remaining: dict[int, int] = dict.fromkeys(ids, 0)
    for task_id, status, count, events in conn.execute(
            select(ranges.c.task_id, ranges.c.status, func.count(), func.sum(EVENTS))
            .where(ranges.c.task_id.in_(ids)).group_by(ranges.c.task_id, ranges.c.status)).all():
        counts[task_id][S(status)] = count
        if status in _OUTPUT:
            done[task_id] += int(events or 0)
        if status in _NOT_FINAL:
            remaining[task_id] += int(events or 0)
    recent = dict(conn.execute(
        select(transitions.c.task_id, func.sum(EVENTS))
        .select_from(transitions.join(ranges, ranges.c.id == transitions.c.range_pk))
        .where(transitions.c.task_id.in_(ids), transitions.c.to_status == S.FINISHED.value,
               transitions.c.at >= now - window_s, transitions.c.at <= now)
        .group_by(transitions.c.task_id)).all())
    live = dict(conn.execute(
        select(workers.c.task_id, func.count())
        .select_from(workers.join(tasks, tasks.c.id == workers.c.task_id))
        .where(workers.c.task_id.in_(ids), workers.c.last_heartbeat >= now - tasks.c.lease_seconds)
        .group_by(workers.c.task_id)).all())
    last = dict(conn.execute(select(transitions.c.task_id, func.max(transitions.c.at))
                             .where(transitions.c.task_id.in_(ids)).group_by(transitions.c.task_id)).all())
    found = []
    for record, state in records:
        window = min(window_s, max(now - record.created_at, 0.0))
        rate = int(recent.get(record.id) or 0) / window if window > 0 else 0.0
        if state == TaskState.CANCELLED:
            task_state, eta = TaskState.CANCELLED, None
        else:
            task_state = task_state_of(False, counts[record.id], record.max_fatal_ranges)
            left = remaining[record.id]
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        found.append(TaskSummary(
            task=record.name, dag_id=dag_id(record.name), state=task_state, ranges=record.n_ranges,
            counts=counts[record.id], events_total=record.n_events, events_done=done[record.id],
            events_remaining=remaining[record.id], events_per_s=rate, rate_window_s=window, eta_s=eta,
            live_workers=int(live.get(record.id, 0)), created_at=record.created_at, last_activity=last.get(record.id)))
    return found


def _records(ledger: Ledger, conn: Connection, names: Sequence[str] | None) -> list[tuple[TaskRecord, str]]:
    query = select(tasks.c.name, tasks.c.state).order_by(tasks.c.id)
    if names is not None:
        query = query.where(tasks.c.name.in_(list(names)))
    return [(ledger.task(name), state) for name, state in conn.execute(query).all()]


def task_list(ledger: Ledger, now: float, window_s: float = DEFAULT_WINDOW_S) -> TaskList:
    """Every task's summary, oldest task first."""
    return ledger.transaction(  # the ledger's retries; an outage is LedgerUnavailableError (503)
        lambda conn: TaskList(now=now, tasks=_summaries(conn, _records(ledger, conn, None), now, window_s)))


# -- the task page ------------------------------------------------------------------------------------------

def auto_bin_s(span_s: float) -> float:
    """A round bin width giving at most about TARGET_RATE_BINS bins over ``span_s``."""
    for width in NICE_BINS_S:
        if span_s / width <= TARGET_RATE_BINS:
            return float(width)
    return float(86400 * math.ceil(span_s / TARGET_RATE_BINS / 86400))


def _rate(conn: Connection, record: TaskRecord, now: float, bin_s: float) -> list[RateBin]:
    start = record.created_at
    span = max(now - start, 0.0)
    n = max(1, math.ceil(span / bin_s))
    bucket = _floor(conn, (transitions.c.at - start) / bin_s).label("bucket")
    rows = conn.execute(
        select(bucket, func.sum(EVENTS), func.count())
        .select_from(transitions.join(ranges, ranges.c.id == transitions.c.range_pk))
        .where(transitions.c.task_id == record.id, transitions.c.to_status == S.FINISHED.value,
               transitions.c.at >= start, transitions.c.at <= now)
        .group_by(bucket)).all()
    found = {min(int(b), n - 1): (int(e or 0), int(c)) for b, e, c in rows}
    bins = []
    for i in range(n):
        events, count = found.get(i, (0, 0))
        elapsed = min(bin_s, now - (start + i * bin_s))
        bins.append(RateBin(start=start + i * bin_s, events=events, ranges=count,
                            events_per_s=events / elapsed if elapsed > 0 else 0.0))
    return bins


def _with_output(record: TaskRecord) -> ColumnElement[bool]:
    return and_(ranges.c.task_id == record.id, ranges.c.status.in_(_OUTPUT))


def _durations(conn: Connection, record: TaskRecord, n_bins: int) -> Durations:
    where = and_(_with_output(record), ranges.c.wall_s.is_not(None))
    count, low, high, mean = conn.execute(
        select(func.count(), func.min(ranges.c.wall_s), func.max(ranges.c.wall_s), func.avg(ranges.c.wall_s))
        .where(where)).one()
    if not count:
        return Durations(ranges=0, min_s=None, max_s=None, mean_s=None, bins=[])
    width = (high - low) / n_bins
    if width == 0:
        return Durations(ranges=count, min_s=low, max_s=high, mean_s=mean,
                         bins=[HistogramBin(low=low, high=high, count=count)])
    bucket = _floor(conn, (ranges.c.wall_s - low) / width).label("bucket")
    counts = [0] * n_bins
    for b, c in conn.execute(select(bucket, func.count()).where(where).group_by(bucket)).all():
        counts[min(int(b), n_bins - 1)] += c
    return Durations(ranges=count, min_s=low, max_s=high, mean_s=mean, bins=[
        HistogramBin(low=low + i * width, high=high if i == n_bins - 1 else low + (i + 1) * width, count=c)
        for i, c in enumerate(counts)])


def _efficiency(conn: Connection, record: TaskRecord) -> CpuEfficiency:
    where = and_(_with_output(record), ranges.c.cpu_s.is_not(None), ranges.c.wall_s > 0)
    count, cpu, wall = conn.execute(
        select(func.count(), func.sum(ranges.c.cpu_s), func.sum(ranges.c.wall_s)).where(where)).one()
    ratio = ranges.c.cpu_s / ranges.c.wall_s
    bucket = case((ratio >= 1.0, EFFICIENCY_BINS),
                  else_=_floor(conn, ratio / EFFICIENCY_STEP)).label("bucket")
    counts = [0] * (EFFICIENCY_BINS + 1)
    for b, c in conn.execute(select(bucket, func.count()).where(where).group_by(bucket)).all():
        counts[min(int(b), EFFICIENCY_BINS)] += c
    bins = [HistogramBin(low=round(i * EFFICIENCY_STEP, 10),
                         high=round((i + 1) * EFFICIENCY_STEP, 10) if i < EFFICIENCY_BINS else None, count=c)
            for i, c in enumerate(counts)]
    return CpuEfficiency(ranges=count, overall=cpu / wall if count else None, bins=bins)


def _failures(conn: Connection, record: TaskRecord) -> tuple[int, list[FailureCount], list[FailureCount]]:
    t = transitions.alias("t")
    before = aliased(transitions, name="before")
    # The ledger records a lapsed lease without a worker: the holder is the worker of the range's latest
    # transition before it that names one (its claim).
    holder = (select(before.c.worker).where(before.c.range_pk == t.c.range_pk, before.c.id < t.c.id,
                                            before.c.worker.is_not(None))
              .order_by(before.c.id.desc()).limit(1).scalar_subquery())
    failed = (select(t.c.error_code.label("code"), func.coalesce(t.c.worker, holder).label("worker"))
              .where(t.c.task_id == record.id, _failure(t)).subquery("failed"))
    by_code = [FailureCount(key=code, failures=n) for code, n in conn.execute(
        select(failed.c.code, func.count()).group_by(failed.c.code)).all()]
    by_host = [FailureCount(key=host, failures=n) for host, n in conn.execute(
        select(workers.c.host, func.count())
        .select_from(failed.outerjoin(workers, and_(workers.c.task_id == record.id,
                                                    workers.c.worker == failed.c.worker)))
        .group_by(workers.c.host)).all()]
    return sum(f.failures for f in by_code), sorted(by_code, key=_most_first), sorted(by_host, key=_most_first)


def _most_first(count: FailureCount) -> tuple[int, bool, str]:
    return -count.failures, count.key is None, count.key or ""


def _attempts(conn: Connection, record: TaskRecord) -> list[AttemptCount]:
    return [AttemptCount(attempts=a, ranges=n) for a, n in conn.execute(
        select(ranges.c.attempt, func.count()).where(ranges.c.task_id == record.id)
        .group_by(ranges.c.attempt).order_by(ranges.c.attempt)).all()]


def _workers(conn: Connection, record: TaskRecord, now: float, limit: int) -> list[WorkerView]:
    held = (select(func.count()).where(ranges.c.task_id == record.id, ranges.c.worker == workers.c.worker,
                                       ranges.c.status.in_([s.value for s in IN_FLIGHT]))
            .scalar_subquery())
    finished = (select(func.count()).where(transitions.c.task_id == record.id,
                                           transitions.c.worker == workers.c.worker,
                                           transitions.c.to_status == S.FINISHED.value).scalar_subquery())
    rows = conn.execute(
        select(workers.c.worker, workers.c.host, workers.c.first_seen, workers.c.last_heartbeat,
               held.label("held"), finished.label("finished"))
        .where(workers.c.task_id == record.id)
        .order_by(workers.c.last_heartbeat.desc(), workers.c.worker).limit(limit)).all()
    return [WorkerView(worker=r.worker, host=r.host, first_seen=r.first_seen, last_heartbeat=r.last_heartbeat,
                       live=r.last_heartbeat >= now - record.lease_seconds, held=r.held, finished=r.finished)
            for r in rows]


def _outputs(ledger: Ledger, task: str) -> list[MergedOutput]:
    found = []
    for entry in catalog_entries(ledger, task=task):
        validation = getattr(entry, "validation", None)
        found.append(MergedOutput(
            dataset=entry.dataset, file_name=entry.file_name, events=entry.events, size=entry.size,
            adler32=entry.adler32, location=redact_url(entry.location), first_range=entry.first_range,
            last_range=entry.last_range, registered_at=entry.registered_at,
            certification=getattr(entry, "certification", None),
            validation=redact_url(validation) if validation else None))
    return found


def task_detail(ledger: Ledger, task: str, now: float, *, window_s: float = DEFAULT_WINDOW_S,
                bin_s: float | None = None, duration_bins: int = DEFAULT_DURATION_BINS,
                max_workers: int = 500) -> TaskDetail:
    """What the task page shows. ``bin_s``: width of the rate series' bins (chosen from the task's age when
    None, and widened when it would give more than MAX_RATE_BINS bins)."""
    record = ledger.task(task)
    span = max(now - record.created_at, 0.0)
    width = auto_bin_s(span) if bin_s is None else bin_s
    width = max(width, span / MAX_RATE_BINS)
    outputs = _outputs(ledger, task)

    def read(conn: Connection) -> TaskDetail:
        summary = _summaries(conn, _records(ledger, conn, [task]), now, window_s)[0]
        total, by_code, by_host = _failures(conn, record)
        return TaskDetail(
            now=now, summary=summary, bin_s=width, rate=_rate(conn, record, now, width),
            durations=_durations(conn, record, duration_bins), cpu_efficiency=_efficiency(conn, record),
            failures=total, failures_by_code=by_code, failures_by_host=by_host,
            attempts=_attempts(conn, record), workers=_workers(conn, record, now, max_workers), outputs=outputs)

    return ledger.transaction(read)
