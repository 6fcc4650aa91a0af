"""The completion sensor: defers to a trigger that waits until every range is final and verified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from event_service.merge.completion import Completion, check_completion
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook


def judge(task_name: str, ledger_conn_id: str, store_conn_id: str) -> Completion:
    """One look at the task through the Airflow connections (blocking: run it in a thread)."""
    with LedgerHook(ledger_conn_id).get_conn() as ledger:
        spec = ledger.task_spec(task_name)
        stores = ObjectStoreHook(store_conn_id).get_stores(spec.object_store, spec.object_store.failover)
        try:
            return check_completion(ledger, task_name, stores)
        finally:
            for store in stores.values():
                store.close()


def merge_parts(task_name: str, ledger_conn_id: str) -> list[int]:
    """The part numbers the merge is mapped over, from the merge plan of the finished ranges."""
    from event_service.merge.plan import plan_merge

    with LedgerHook(ledger_conn_id).get_conn() as ledger:
        spec = ledger.task_spec(task_name)
        plan = plan_merge(ledger.outputs(task_name), task_name, spec.merge.max_events_per_file,
                          ranges=spec.event_ranges())
    return [part.index for part in plan if part.outputs]


class TaskCompleteTrigger(BaseTrigger):
    """Polls the ledger from the triggerer until the task is complete, failed, or stalled with no workers."""

    def __init__(self, task_name: str, ledger_conn_id: str, store_conn_id: str, poll_interval: float = 10.0,
                 stall_timeout: float = 600.0) -> None:
        super().__init__()
        self.task_name = task_name
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "task_name": self.task_name, "ledger_conn_id": self.ledger_conn_id,
            "store_conn_id": self.store_conn_id, "poll_interval": self.poll_interval,
            "stall_timeout": self.stall_timeout})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        progress_at = time.monotonic()
        last_open: int | None = None
        while True:
            try:
                verdict = await asyncio.to_thread(judge, self.task_name, self.ledger_conn_id, self.store_conn_id)
            except Exception as exc:  # reported to the task, which fails with it
                yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
                return
            if verdict.state != "waiting":
                yield TriggerEvent({"status": "success" if verdict.state == "complete" else "failed",
                                    "message": verdict.message, "counts": verdict.counts,
                                    "corrupted": verdict.corrupted})
                return
            now = time.monotonic()
            if verdict.live_workers or verdict.open_ranges != last_open:
                progress_at = now
            last_open = verdict.open_ranges
            if now - progress_at > self.stall_timeout:
                yield TriggerEvent({"status": "failed", "counts": verdict.counts, "corrupted": [], "message": (
                    f"{verdict.message}; no worker has been alive and nothing has moved for "
                    f"{self.stall_timeout:.0f} s: start runners or run the DAG again")})
                return
            self.log.info("%s", verdict.message)
            await asyncio.sleep(self.poll_interval)


class TaskCompleteSensor(BaseSensorOperator):
    """Waits, deferred in the triggerer, until every range of the task is final and its output verified.

    Returns the merge part numbers, so that the merge can be mapped over them. Fails with the trigger's
    message when more ranges are fatal than the task tolerates, when outputs fail verification (they are
    sent back to ready for the next run), or when the task stalls with open ranges and no live worker.
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
