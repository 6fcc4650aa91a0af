"""The completion trigger: waits in the triggerer until every range of a task is final and its output verified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

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


class TaskCompleteTrigger(BaseTrigger):
    """Polls the ledger from the triggerer until the task is complete, failed, or stalled with no workers.

    Fires once, with ``status`` ``success``, ``failed`` or ``error`` and a ``message``. Rows that name it by its
    former path, ``event_service_airflow.sensors.completion.TaskCompleteTrigger``, still resume: that module
    imports it.

    :param task_name: the event-service task to wait for
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the task's object stores, whose outputs are verified
    :param poll_interval: seconds between two looks at the ledger
    :param stall_timeout: seconds with open ranges, no live worker and no change before the trigger gives up
    """

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
