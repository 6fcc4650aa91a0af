"""Prometheus metrics read from the ledger at scrape time: ranges per status, events, workers, transition counts."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from event_service.api.auth import Reader
from event_service.api.responses import ErrorReply
from event_service.ledger import Ledger
from event_service.ledger.schema import ranges, tasks, transitions, workers
from event_service.statuses import WITH_OUTPUT, RangeStatus, TaskState, task_state

# The code payload_runner reports for an output it could not store (payload_runner/runner.py).
STAGEOUT_ERROR = "ERR_STAGEOUT"
LEASE_EXPIRED = "lease_expired"
# What a worker's report can move a range to (``ready``: a range given back unstarted).
WORKER_STATUSES = frozenset({RangeStatus.RUNNING, RangeStatus.FINISHED, RangeStatus.FAILED, RangeStatus.FATAL,
                             RangeStatus.READY})
UPDATE_LABELS = tuple(sorted(s.value for s in WORKER_STATUSES))
NO_CODE = "none"
# Error codes are the workers' and payloads' own words, so their number is open-ended; a time series per code
# would be too. Each task keeps its most frequent codes as labels and counts the rest under OTHER_CODES.
MAX_ERROR_CODES = 20
OTHER_CODES = "other"


@dataclass
class _Task:
    name: str
    cancelled: bool
    events: int
    max_fatal_ranges: int = 0
    ranges: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in RangeStatus})
    events_done: int = 0
    live_workers: int = 0
    claims: int = 0
    updates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UPDATE_LABELS, 0))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stageout_failures: int = 0
    lease_expiries: int = 0
    corrupted: int = 0

    @property
    def state(self) -> TaskState:
        return task_state(self.cancelled, self.ranges, self.max_fatal_ranges)

    def count_transitions(self, to_status: str, with_worker: bool, code: str | None, count: int) -> None:
        """Add ``count`` transitions to ``to_status`` (by a worker or by the ledger, with error ``code``)."""
        if to_status == RangeStatus.SENT:
            self.claims += count
        if with_worker and to_status in WORKER_STATUSES:
            self.updates[to_status] += count
        if to_status == RangeStatus.FAILED:
            self.failures[code or NO_CODE] += count
            if code == STAGEOUT_ERROR:
                self.stageout_failures += count
        if to_status in (RangeStatus.READY, RangeStatus.FATAL) and not with_worker and code == LEASE_EXPIRED:
            self.lease_expiries += count
        if to_status == RangeStatus.CORRUPTED:
            self.corrupted += count


def read_ledger(conn: Connection, now: float) -> list[_Task]:
    """Every task's figures in four grouped queries (no per-task round trips, nothing written)."""
    found: dict[int, _Task] = {}
    for task_id, name, state, n_events, spec in conn.execute(
            select(tasks.c.id, tasks.c.name, tasks.c.state, tasks.c.n_events, tasks.c.spec).order_by(tasks.c.name)):
        found[task_id] = _Task(name, state == TaskState.CANCELLED, int(n_events),
                               max_fatal_ranges=int(json.loads(spec).get("max_fatal_ranges", 0)))

    events = ranges.c.last_event - ranges.c.first_event + 1
    for task_id, status, count, n_events in conn.execute(
            select(ranges.c.task_id, ranges.c.status, func.count(), func.sum(events))
            .group_by(ranges.c.task_id, ranges.c.status)):
        if (task := found.get(task_id)) is not None:
            task.ranges[status] = int(count)
            if status in WITH_OUTPUT:
                task.events_done += int(n_events or 0)

    for task_id, count in conn.execute(
            select(workers.c.task_id, func.count())
            .select_from(workers.join(tasks, tasks.c.id == workers.c.task_id))
            .where(workers.c.last_heartbeat >= now - tasks.c.lease_seconds)
            .group_by(workers.c.task_id)):
        if (task := found.get(task_id)) is not None:
            task.live_workers = int(count)

    by_worker = transitions.c.worker.is_not(None)
    for task_id, to_status, with_worker, code, count in conn.execute(
            select(transitions.c.task_id, transitions.c.to_status, by_worker, transitions.c.error_code, func.count())
            .group_by(transitions.c.task_id, transitions.c.to_status, by_worker, transitions.c.error_code)):
        if (task := found.get(task_id)) is not None:
            task.count_transitions(to_status, bool(with_worker), code, int(count))
    return list(found.values())


def bounded_codes(counts: Mapping[str, int], most: int = MAX_ERROR_CODES) -> dict[str, int]:
    """The ``most`` most frequent codes (ties by name) as they are, the rest summed under OTHER_CODES; sorted."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:most])
    if len(ranked) > most:
        kept[OTHER_CODES] = kept.get(OTHER_CODES, 0) + sum(count for _, count in ranked[most:])
    return dict(sorted(kept.items()))


class LedgerCollector(Collector):
    """Reads the ledger on every scrape, so every API process serving it gives the same numbers."""

    def __init__(self, open_ledger: Callable[[], Ledger]) -> None:
        self.open_ledger = open_ledger

    def describe(self) -> list[Metric]:
        return []  # the families depend on the ledger's contents: no reading at registration

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        found = self.open_ledger().transaction(lambda conn: read_ledger(conn, now))
        info = GaugeMetricFamily("event_service_task_state",
                                 "1 for the task's state (running, done, incomplete, cancelled)",
                                 labels=["task", "state"])
        range_counts = GaugeMetricFamily("event_service_ranges", "Event ranges of the task in each status",
                                         labels=["task", "status"])
        events = GaugeMetricFamily("event_service_events", "Events in the task", labels=["task"])
        done = GaugeMetricFamily("event_service_events_done", "Events of the task whose output is stored",
                                 labels=["task"])
        live = GaugeMetricFamily("event_service_live_workers", "Workers seen within the task's lease time",
                                 labels=["task"])
        claims = CounterMetricFamily("event_service_claims", "Event ranges handed to workers", labels=["task"])
        updates = CounterMetricFamily("event_service_updates", "Range reports accepted from workers, by new status",
                                      labels=["task", "status"])
        failures = CounterMetricFamily("event_service_failures", "Failed attempts of ranges, by error code",
                                       labels=["task", "error_code"])
        stageout = CounterMetricFamily("event_service_stageout_failures",
                                       f"Failed attempts whose output could not be stored ({STAGEOUT_ERROR})",
                                       labels=["task"])
        expiries = CounterMetricFamily("event_service_lease_expiries", "Leases that lapsed (a worker vanished)",
                                       labels=["task"])
        corrupted = CounterMetricFamily("event_service_corrupted_outputs",
                                        "Stored outputs that failed verification", labels=["task"])
        for task in found:
            info.add_metric([task.name, task.state.value], 1)
            for status, count in task.ranges.items():
                range_counts.add_metric([task.name, status], count)
            events.add_metric([task.name], task.events)
            done.add_metric([task.name], task.events_done)
            live.add_metric([task.name], task.live_workers)
            claims.add_metric([task.name], task.claims)
            for status, count in task.updates.items():
                updates.add_metric([task.name, status], count)
            for code, count in bounded_codes(task.failures).items():
                failures.add_metric([task.name, code], count)
            stageout.add_metric([task.name], task.stageout_failures)
            expiries.add_metric([task.name], task.lease_expiries)
            corrupted.add_metric([task.name], task.corrupted)
        yield from (info, range_counts, events, done, live, claims, updates, failures, stageout, expiries, corrupted)


def metrics_router(open_ledger: Callable[[], Ledger]) -> APIRouter:
    """``GET /metrics`` in Prometheus' text format, for the admin or the read-only monitor token."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(open_ledger))
    router = APIRouter()

    @router.get("/metrics", tags=["service"], response_class=Response, responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition format"},
        401: {"model": ErrorReply, "description": "no bearer token"},
        403: {"model": ErrorReply, "description": "the token is neither the admin nor the monitor token"}})
    def metrics(_reader: Reader) -> Response:
        """Prometheus metrics of every task, read from the ledger now: ranges per status, events done and total,
        live workers; counters of claims, worker reports, failures by error code, stage-out failures, lapsed
        leases and corrupted outputs. Needs the admin or the monitor token (``EVENT_SERVICE_MONITOR_TOKEN``)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
