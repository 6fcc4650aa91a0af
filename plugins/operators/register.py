"""register_task: put the task and its event ranges in the ledger, or resume the task already there."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from event_service.errors import SpecError
from event_service.inputs.check import require_readable_inputs
from event_service.inputs.errors import InputCheckError
from event_service.ledger.errors import TaskNotFoundError
from event_service.spec import TaskSpec
from event_service.statuses import TaskState
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook


class RegisterTaskOperator(BaseOperator):
    """Creates the task in the ledger (all ranges or none) or resumes it; returns the pilot slots to map over.

    ``workers`` and ``events_per_range`` may be templated from the DAG's params; ``events_per_range``
    applies when the task is created (a resumed task keeps the cut it was created with).

    :param spec: the task spec, as a mapping (templated)
    :param workers: the number of pilot slots to return (templated)
    :param events_per_range: overrides the spec's when the task is created; None or empty: the spec's (templated)
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the object stores, whose reachability is checked first
    :param check_inputs: open every input before creating the task (s3:// inputs are not opened)
    :param kwargs: passed on to ``BaseOperator``
    """

    template_fields = ("spec", "workers", "events_per_range")

    def __init__(self, *, spec: dict[str, Any], workers: int | str, events_per_range: int | str | None = None,
                 ledger_conn_id: str = LedgerHook.default_conn_name,
                 store_conn_id: str = ObjectStoreHook.default_conn_name, check_inputs: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.workers = workers
        self.events_per_range = events_per_range
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id
        self.check_inputs = check_inputs

    def _check_reachable(self, spec: TaskSpec) -> None:
        """Before a task is created: its inputs readable (``[event_service] check_inputs``), its stores answer."""
        if self.check_inputs:
            try:
                checked = require_readable_inputs(spec.name, spec.inputs)
            except InputCheckError as exc:
                raise AirflowFailException(f"{exc}\nNothing was created.") from None
            self.log.info("task %s: %d inputs checked%s", spec.name, len(spec.inputs) - len(checked.unchecked),
                          f", {len(checked.unchecked)} s3:// inputs not opened" if checked.unchecked else "")
        hook = ObjectStoreHook(self.store_conn_id)
        failover = spec.object_store.failover
        places = [("object_store", spec.object_store.url, spec.object_store.endpoint_url),
                  *([("object_store.failover", failover.url, failover.endpoint_url)] if failover else []),
                  ("merge.output_url", spec.merge.output_url, spec.merge.endpoint_url)]
        for name, url, endpoint_url in places:
            try:
                with hook.get_store(url, endpoint_url) as store:
                    store.head(f"{spec.name}/reachability-probe")
            except OSError as exc:  # the stores' errors
                raise AirflowFailException(f"task {spec.name!r}: {name} {url} cannot be used: {exc}\n"
                                           "Nothing was created.") from None

    def _spec(self) -> TaskSpec:
        data = dict(self.spec)
        if self.events_per_range not in (None, ""):
            data["events_per_range"] = int(self.events_per_range)  # type: ignore[arg-type]
        try:
            return TaskSpec.parse(data, f"task {data.get('name')!r} with this run's params")
        except SpecError as exc:
            raise AirflowFailException(str(exc)) from None

    def execute(self, context: Context) -> list[int]:
        spec = self._spec()
        slots = int(self.workers)
        if slots < 1:
            raise AirflowFailException(f"workers must be at least 1, got {slots}")
        with LedgerHook(self.ledger_conn_id).get_conn() as ledger:
            try:
                record = ledger.task(spec.name)
            except TaskNotFoundError:
                self._check_reachable(spec)
                record, _ = ledger.create_task(spec)
                self.log.info("created task %s: %d events in %d ranges of %d", spec.name, record.n_events,
                              record.n_ranges, spec.events_per_range)
            else:
                stored = ledger.task_spec(spec.name)
                if stored.inputs != spec.inputs:
                    raise AirflowFailException(
                        f"the ledger already holds a task {spec.name!r} with other inputs; give this spec "
                        "another name, or cancel the old task")
                if stored.events_per_range != spec.events_per_range:
                    self.log.warning("task %s was created with %d events per range; resuming it as it is",
                                     spec.name, stored.events_per_range)
            status = ledger.status(spec.name)
        if status.state == TaskState.CANCELLED:
            raise AirflowFailException(f"task {spec.name!r} was cancelled; nothing to run")
        self.log.info("task %s: %s; %d of %d events done; %d pilot slots", spec.name,
                      ", ".join(f"{n} {s}" for s, n in status.counts.items() if n), status.events_done,
                      status.events_total, slots)
        return list(range(slots))
