"""Consumer jobs: the PanDA jobs handed to pilots by getJob, kept in the ledger database beside the ranges."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from event_service.api.errors import PandaRequestError
from event_service.ledger import Ledger
from event_service.ledger.schema import panda_jobs, tasks

# The states a pilot reports with updateJob; the last four end the job.
JOB_STATES = frozenset({"sent", "starting", "running", "holding", "transferring", "finished", "failed",
                        "cancelled", "closed"})
FINAL_JOB_STATES = frozenset({"finished", "failed", "cancelled", "closed"})


@dataclass(frozen=True, slots=True)
class ConsumerJob:
    """One consumer job: which task, which queue, where it runs and how it stands."""

    panda_id: int
    task_id: int
    queue: str
    node: str | None
    prod_source_label: str | None
    state: str
    n_events: int | None
    error_code: str | None
    error: str | None

    @property
    def worker(self) -> str:
        """The worker name under which the ledger records what this job holds and reports."""
        return f"panda-{self.panda_id}"

    @property
    def final(self) -> bool:
        return self.state in FINAL_JOB_STATES


_COLUMNS = (panda_jobs.c.panda_id, panda_jobs.c.task_id, panda_jobs.c.queue, panda_jobs.c.node,
            panda_jobs.c.prod_source_label, panda_jobs.c.state, panda_jobs.c.n_events, panda_jobs.c.error_code,
            panda_jobs.c.error)


def _read(conn: Connection, panda_id: int) -> ConsumerJob:
    row = conn.execute(select(*_COLUMNS).where(panda_jobs.c.panda_id == panda_id)).first()
    if row is None:
        raise PandaRequestError(f"no consumer job with PandaID {panda_id}")
    return ConsumerJob(*row)


def create_job(ledger: Ledger, task_id: int, queue: str, node: str | None, label: str | None) -> ConsumerJob:
    """Record a new consumer job of a task for a pilot of ``queue``; its PandaID is new."""
    now = time.time()

    def work(conn: Connection) -> ConsumerJob:
        panda_id = conn.execute(insert(panda_jobs).values(
            task_id=task_id, queue=queue, node=node, prod_source_label=label, state="sent", created_at=now,
            updated_at=now).returning(panda_jobs.c.panda_id)).scalar_one()
        return _read(conn, panda_id)

    return ledger.transaction(work)


def get_job(ledger: Ledger, panda_id: int) -> ConsumerJob:
    """The consumer job ``panda_id``; PandaRequestError when there is none."""
    return ledger.transaction(lambda conn: _read(conn, panda_id))


def set_state(ledger: Ledger, panda_id: int, state: str, *, node: str | None = None, n_events: int | None = None,
              error_code: str | None = None, error: str | None = None) -> tuple[ConsumerJob, ConsumerJob]:
    """Record a state the pilot reported; returns the job before and after. A job that ended keeps its state
    (a repeated final report is accepted, a different one is refused)."""
    if state not in JOB_STATES:
        raise PandaRequestError(f"state {state!r} is not one of {', '.join(sorted(JOB_STATES))}")

    def work(conn: Connection) -> tuple[ConsumerJob, ConsumerJob]:
        before = _read(conn, panda_id)
        if before.final:
            if state != before.state:
                raise PandaRequestError(f"consumer job {panda_id} already ended {before.state}; it cannot become "
                                        f"{state}")
            return before, before
        changes: dict[str, object] = {"state": state, "updated_at": time.time()}
        for name, value in (("node", node), ("n_events", n_events), ("error_code", error_code), ("error", error)):
            if value is not None:
                changes[name] = value
        conn.execute(update(panda_jobs).where(panda_jobs.c.panda_id == panda_id).values(changes))
        return before, _read(conn, panda_id)

    return ledger.transaction(work)


def task_name(ledger: Ledger, task_id: int) -> str:
    """The name of the task with ledger id ``task_id``; PandaRequestError when there is none."""
    name = ledger.transaction(lambda conn: conn.execute(select(tasks.c.name).where(tasks.c.id == task_id)).scalar())
    if name is None:
        raise PandaRequestError(f"no task with taskID {task_id}")
    return str(name)


def jobs_of_task(ledger: Ledger, task_id: int) -> list[ConsumerJob]:
    """Every consumer job of a task, oldest first."""
    return ledger.transaction(lambda conn: [ConsumerJob(*row) for row in conn.execute(
        select(*_COLUMNS).where(panda_jobs.c.task_id == task_id).order_by(panda_jobs.c.panda_id)).all()])
