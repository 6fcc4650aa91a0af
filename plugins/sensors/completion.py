"""The completion sensor: defers to the completion trigger, then hands the merge its parts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException

from event_service.merge.plan import plan_task_merge
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook

# The trigger's home is event_service_airflow.triggers; importing it here also keeps its former class path,
# event_service_airflow.sensors.completion.TaskCompleteTrigger, importable for trigger rows written under it.
from event_service_airflow.triggers.completion import TaskCompleteTrigger, judge

__all__ = ["TaskCompleteSensor", "TaskCompleteTrigger", "merge_parts"]


def merge_parts(task_name: str, ledger_conn_id: str) -> list[int]:
    """The part numbers the merge is mapped over: the parts of the task's merge plan that hold outputs."""
    with LedgerHook(ledger_conn_id).get_conn() as ledger:
        plan = plan_task_merge(ledger, ledger.task_spec(task_name))
    return [part.index for part in plan if part.outputs]


class TaskCompleteSensor(BaseSensorOperator):
    """Waits, deferred in the triggerer, until every range of the task is final and its output verified.

    Returns the merge part numbers, so that the merge can be mapped over them. Fails with the trigger's
    message when more ranges are fatal than the task tolerates, when outputs fail verification (they are
    sent back to ready for the next run), or when the task stalls with open ranges and no live worker.

    :param task_name: the event-service task to wait for (templated)
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the task's object stores, whose outputs are verified
    :param poll_interval: seconds between two looks at the ledger (also the poke interval without deferral)
    :param stall_timeout: seconds with open ranges, no live worker and no change before the sensor fails
    :param deferrable: wait in the triggerer (the default), or poke from a worker slot
    :param kwargs: passed on to ``BaseSensorOperator`` (``timeout`` defaults to 7 days)
    """

    template_fields = ("task_name",)

    def __init__(self, *, task_name: str, ledger_conn_id: str = LedgerHook.default_conn_name,
                 store_conn_id: str = ObjectStoreHook.default_conn_name, poll_interval: float = 10.0,
                 stall_timeout: float = 600.0, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", timedelta(days=7).total_seconds())
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.task_name = task_name
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self._parts()
        # Look once before deferring: the sensor usually starts when the pilots are done, and a trigger that
        # fires at once races Airflow's bookkeeping of the deferral (apache/airflow#67287).
        if self.poke(context):
            return self._parts()
        self.defer(trigger=TaskCompleteTrigger(self.task_name, self.ledger_conn_id, self.store_conn_id,
                                               self.poll_interval, self.stall_timeout),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[int]:
        if event.get("status") != "success":
            raise AirflowException(event.get("message") or f"the completion trigger said {event!r}")
        self.log.info("%s", event["message"])
        return self._parts()

    def _parts(self) -> list[int]:
        parts = merge_parts(self.task_name, self.ledger_conn_id)
        self.log.info("merge plan: %d output files", len(parts))
        return parts

    def poke(self, context: Context) -> bool:
        """Without deferral (``deferrable=False`` runs): one look, failing on a failed verdict."""
        verdict = judge(self.task_name, self.ledger_conn_id, self.store_conn_id)
        if verdict.state == "failed":
            raise AirflowException(verdict.message)
        self.log.info("%s", verdict.message)
        return verdict.state == "complete"
